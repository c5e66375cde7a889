//! Which Deployments the operator holds back from which devices because the
//! device's agent said (in its heartbeat's capabilities) that it cannot read
//! them. The Deployment controller records them; the inventory shows them
//! on each Device (condition `Unsupported`), so the reason is visible from
//! both sides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Deployment owner (`namespace/name`) to the reason it is held back.
pub type Held = BTreeMap<String, String>;

/// The held-back pairs, shared by the controllers.
#[derive(Debug, Default)]
pub struct CapabilityGate {
    by_device: Mutex<HashMap<String, Held>>,
    changed: Option<mpsc::UnboundedSender<String>>,
}

impl CapabilityGate {
    /// An empty gate that sends a device id whenever what is held back from
    /// that device changes.
    pub fn new() -> (Arc<CapabilityGate>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = CapabilityGate {
            by_device: Mutex::default(),
            changed: Some(tx),
        };
        (Arc::new(gate), rx)
    }

    /// An empty gate that notifies nobody.
    pub fn detached() -> Arc<CapabilityGate> {
        Arc::new(CapabilityGate::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.by_device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `owner` is held back from exactly the devices in
    /// `held` (device id to reason), replacing what was recorded for it.
    pub fn set(&self, owner: &str, held: &BTreeMap<String, String>) {
        let mut changed = Vec::new();
        {
            let mut map = self.lock();
            for (device, entries) in map.iter_mut() {
                if !held.contains_key(device) && entries.remove(owner).is_some() {
                    changed.push(device.clone());
                }
            }
            for (device, reason) in held {
                let entries = map.entry(device.clone()).or_default();
                if entries.get(owner) != Some(reason) {
                    entries.insert(owner.to_string(), reason.clone());
                    changed.push(device.clone());
                }
            }
            map.retain(|_, entries| !entries.is_empty());
        }
        if let Some(tx) = &self.changed {
            for device in changed {
                let _ = tx.send(device);
            }
        }
    }

    /// Forgets `owner` (its Deployment was deleted).
    pub fn remove_owner(&self, owner: &str) {
        self.set(owner, &BTreeMap::new());
    }

    /// What is held back from `device`, by Deployment owner.
    pub fn for_device(&self, device: &str) -> Held {
        self.lock().get(device).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replaces_and_notifies_per_device() {
        let (gate, mut rx) = CapabilityGate::new();
        let held = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(d, r)| (d.to_string(), r.to_string()))
                .collect()
        };
        gate.set(
            "ns/web",
            &held(&[("pi-1", "PodmanV1 unknown"), ("pi-2", "x")]),
        );
        let mut got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        got.sort();
        assert_eq!(got, ["pi-1", "pi-2"]);
        gate.set("ns/web", &held(&[("pi-1", "PodmanV1 unknown")]));
        assert_eq!(rx.try_recv().unwrap(), "pi-2");
        assert!(rx.try_recv().is_err(), "pi-1 is unchanged");
        assert_eq!(
            gate.for_device("pi-1").get("ns/web").map(String::as_str),
            Some("PodmanV1 unknown")
        );
        assert!(gate.for_device("pi-2").is_empty());
        gate.remove_owner("ns/web");
        assert_eq!(rx.try_recv().unwrap(), "pi-1");
        assert!(gate.for_device("pi-1").is_empty());
    }
}
