//! Keeps a [`TargetIndex`] current from a watch on Device objects (their
//! labels, their own maintenance windows, their deletion), and says which
//! Deployments each change concerns.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::index::{DeploymentRef, TargetIndex};
use super::selector::Labels;
use crate::crd::{Device, MaintenanceWindowSpec};
use error_report::Chain;

/// What a Device event means for the Deployments.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceChange {
    /// This Deployment's selection changed: reconcile it.
    Selection(DeploymentRef),
    /// This Device's own maintenance windows changed: every Deployment
    /// targeting it (by name or by selector) writes it a new value.
    Windows {
        /// The device id.
        device: String,
        /// Its windows now (empty: none, the Deployments' apply).
        windows: Vec<MaintenanceWindowSpec>,
    },
}

/// The Device's labels, `None` once it is being deleted: its keys are being
/// removed (decommission), so no selector may write them again.
fn labels_of(d: &Device) -> Option<Labels> {
    d.metadata
        .deletion_timestamp
        .is_none()
        .then(|| d.labels().clone())
}

/// A full list being taken in.
#[derive(Debug, Default)]
pub struct Relist {
    labels: Vec<(String, Labels)>,
    windows: HashMap<String, Vec<MaintenanceWindowSpec>>,
}

/// Takes one watch event into `index`; returns what it changed. `relist`
/// buffers a (re)list until it is complete.
pub fn take_event(
    index: &TargetIndex,
    relist: &mut Option<Relist>,
    event: watcher::Event<Device>,
) -> Vec<DeviceChange> {
    let selection = |refs: Vec<DeploymentRef>| refs.into_iter().map(DeviceChange::Selection);
    match event {
        watcher::Event::Init => {
            *relist = Some(Relist::default());
            Vec::new()
        }
        watcher::Event::InitApply(d) => {
            let r = relist.get_or_insert_with(Relist::default);
            if let Some(labels) = labels_of(&d) {
                r.labels.push((d.name_any(), labels));
                r.windows.insert(d.name_any(), d.spec.windows().to_vec());
            }
            Vec::new()
        }
        watcher::Event::InitDone => {
            let Relist { labels, windows } = relist.take().unwrap_or_default();
            tracing::info!(
                devices = labels.len(),
                "Device labels and maintenance windows listed"
            );
            // Windows first: the Deployments the list wakes read them.
            let changed = index.replace_all_windows(windows);
            let mut out: Vec<DeviceChange> = changed
                .into_iter()
                .map(|device| DeviceChange::Windows {
                    windows: index.windows(&device).unwrap_or_default(),
                    device,
                })
                .collect();
            out.extend(selection(index.replace_all(labels)));
            out
        }
        watcher::Event::Apply(d) => {
            let name = d.name_any();
            let labels = labels_of(&d);
            let windows = if labels.is_some() {
                d.spec.windows().to_vec()
            } else {
                Vec::new()
            };
            let mut out = Vec::new();
            if index.set_windows(&name, windows.clone()) {
                out.push(DeviceChange::Windows {
                    device: name.clone(),
                    windows,
                });
            }
            out.extend(selection(index.set_device(&name, labels)));
            out
        }
        watcher::Event::Delete(d) => {
            index.set_windows(&d.name_any(), Vec::new());
            selection(index.set_device(&d.name_any(), None)).collect()
        }
    }
}

/// Watches every Device (with back-off after errors) into `index`, and
/// yields what changed for the Deployments.
pub fn watch(client: Client, index: Arc<TargetIndex>) -> impl Stream<Item = DeviceChange> + Send {
    // Whole objects: the windows are in the spec. The index keeps only
    // labels and windows, not the objects.
    let api: Api<Device> = Api::all(client);
    index.watch_started();
    let mut relist = None;
    watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .flat_map(move |event| {
            let changes = match event {
                Ok(event) => take_event(&index, &mut relist, event),
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot watch Device objects; targetSelector and Devices' maintenance windows are not evaluated until this recovers (is the Device CRD installed, and may the operator list and watch devices.iot.nationtech.io?)");
                    index
                        .watch_failed()
                        .into_iter()
                        .map(DeviceChange::Selection)
                        .collect()
                }
            };
            futures::stream::iter(changes)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeviceSpec;

    fn device(name: &str, site: &str, at: Option<&str>) -> Device {
        let mut spec = DeviceSpec::default();
        if let Some(at) = at {
            spec.maintenance = Some(crate::crd::device::DeviceMaintenance {
                windows: vec![MaintenanceWindowSpec {
                    at: at.into(),
                    time_zone: "UTC".into(),
                    duration: "1h".into(),
                }],
            });
        }
        let mut d = Device::new(name, spec);
        d.metadata.labels = Some([("site".to_string(), site.to_string())].into());
        d
    }

    #[test]
    fn windows_changes_are_reported_and_labels_alone_are_not() {
        let index = TargetIndex::new();
        let mut relist = None;
        take_event(&index, &mut relist, watcher::Event::Init);
        for d in [
            device("pi-1", "lyon", Some("0 2 * * *")),
            device("pi-2", "oslo", None),
        ] {
            take_event(&index, &mut relist, watcher::Event::InitApply(d));
        }
        let got = take_event(&index, &mut relist, watcher::Event::InitDone);
        assert!(
            matches!(&got[..], [DeviceChange::Windows { device, windows }] if device == "pi-1" && windows.len() == 1),
            "{got:?}"
        );
        assert!(index.is_synced());
        assert_eq!(index.windows("pi-1").unwrap()[0].at, "0 2 * * *");
        assert_eq!(index.windows("pi-2"), None);
        // A label change (no selector registered): nothing to do.
        let got = take_event(
            &index,
            &mut relist,
            watcher::Event::Apply(device("pi-1", "paris", Some("0 2 * * *"))),
        );
        assert!(got.is_empty(), "{got:?}");
        // New windows, then none.
        let got = take_event(
            &index,
            &mut relist,
            watcher::Event::Apply(device("pi-1", "paris", Some("0 3 * * *"))),
        );
        assert!(matches!(&got[..], [DeviceChange::Windows { device, .. }] if device == "pi-1"));
        let got = take_event(
            &index,
            &mut relist,
            watcher::Event::Apply(device("pi-1", "paris", None)),
        );
        assert!(
            matches!(&got[..], [DeviceChange::Windows { device, windows }] if device == "pi-1" && windows.is_empty())
        );
        assert_eq!(index.windows("pi-1"), None);
        // A relist that drops pi-2 and gives it windows again reports it.
        take_event(&index, &mut relist, watcher::Event::Init);
        take_event(
            &index,
            &mut relist,
            watcher::Event::InitApply(device("pi-2", "oslo", Some("0 4 * * *"))),
        );
        let got = take_event(&index, &mut relist, watcher::Event::InitDone);
        assert!(matches!(&got[..], [DeviceChange::Windows { device, .. }] if device == "pi-2"));
    }

    #[test]
    fn only_a_watched_index_waits_for_the_windows() {
        let index = TargetIndex::new();
        let d = crate::targeting::deployment_ref("fleet", "web");
        assert!(
            index.windows_known_or_wait(&d),
            "no watch: no Device windows"
        );
        index.watch_started();
        assert!(!index.windows_known_or_wait(&d));
        let woken = index.replace_all(Vec::new());
        assert_eq!(woken, std::slice::from_ref(&d), "the first list wakes it");
        assert!(index.windows_known_or_wait(&d));
        assert!(index.watch_failed().is_empty(), "too late to matter");
        // A watch that cannot list: the waiting end, once.
        let index = TargetIndex::new();
        index.watch_started();
        assert!(!index.windows_known_or_wait(&d));
        assert_eq!(index.watch_failed(), std::slice::from_ref(&d));
        assert!(index.watch_failed().is_empty());
        assert!(index.windows_known_or_wait(&d));
    }
}
