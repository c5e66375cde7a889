//! The labels of every Device object, indexed both ways: label to Devices
//! (to find a selector's Devices without scanning the fleet) and label to
//! the Deployments whose selector is anchored on it (to find which
//! Deployments one Device's change concerns without testing every
//! selector). Beside the labels, each Device's own maintenance windows
//! (`spec.maintenance.windows`), which win over a Deployment's.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::runtime::reflector::ObjectRef;

use super::selector::{Anchor, Labels, TargetSelector};
use crate::crd::{Deployment, MaintenanceWindowSpec};

/// A Deployment, as the controller's queue names it.
pub type DeploymentRef = ObjectRef<Deployment>;

/// The reference the index files the Deployment `namespace/name` under.
pub fn deployment_ref(namespace: &str, name: &str) -> DeploymentRef {
    ObjectRef::new(name).within(namespace)
}

/// label key -> label value -> members.
type ByLabel<T> = HashMap<String, HashMap<String, HashSet<T>>>;

#[derive(Debug, Default)]
struct Inner {
    /// Device id -> its labels.
    devices: HashMap<String, Labels>,
    devices_by_label: ByLabel<String>,
    /// Every Deployment with a selector.
    selectors: HashMap<DeploymentRef, TargetSelector>,
    /// Deployments by their selector's anchor (key, each anchor value).
    anchored: ByLabel<DeploymentRef>,
    /// Deployments whose anchor is a key with any value (`Exists`).
    anchored_keys: HashMap<String, HashSet<DeploymentRef>>,
    /// Deployments whose selector has no anchor: tested on every change.
    unanchored: HashSet<DeploymentRef>,
    /// The first full list of Devices has been taken in.
    synced: bool,
    /// Deployments that wait for the first list for another reason than a
    /// target selector (a BatchSequence batch's selector, Devices'
    /// maintenance windows).
    awaiting_sync: HashSet<DeploymentRef>,
    /// A Device watch feeds this index ([`TargetIndex::watch_started`]):
    /// until its first list is in, no target's own windows are known.
    watched: bool,
    /// The watch cannot list Devices before its first list (no Device CRD,
    /// no RBAC): Deployments do not wait for it any longer. Other errors
    /// (a 5xx, a timeout) are retried by the watch, and they wait.
    watch_failing: bool,
    /// When [`TargetIndex::watch_started`] was called.
    watch_started_at: Option<std::time::Instant>,
    /// Devices being deleted (their deletion timestamp is set): their keys
    /// are being removed (decommission), so Deployments keep them as they
    /// are rather than write them again.
    terminating: HashSet<String>,
    /// Device id -> its own maintenance windows; Devices without any are
    /// absent.
    windows: HashMap<String, Vec<MaintenanceWindowSpec>>,
}

fn add<T: std::hash::Hash + Eq>(map: &mut ByLabel<T>, key: &str, value: &str, member: T) {
    map.entry(key.to_string())
        .or_default()
        .entry(value.to_string())
        .or_default()
        .insert(member);
}

fn remove<T: std::hash::Hash + Eq>(map: &mut ByLabel<T>, key: &str, value: &str, member: &T) {
    if let Some(values) = map.get_mut(key) {
        if let Some(set) = values.get_mut(value) {
            set.remove(member);
            if set.is_empty() {
                values.remove(value);
            }
        }
        if values.is_empty() {
            map.remove(key);
        }
    }
}

fn members<'a, T>(map: &'a ByLabel<T>, key: &str, value: &str) -> Option<&'a HashSet<T>> {
    map.get(key).and_then(|values| values.get(value))
}

impl Inner {
    /// The Devices `selector` selects, sorted.
    fn select(&self, selector: &TargetSelector) -> Vec<String> {
        let matching = |id: &&String| self.devices.get(*id).is_some_and(|l| selector.matches(l));
        let carrying = |anchor: &Anchor<'_>| -> Vec<&HashSet<String>> {
            match *anchor {
                Anchor::Values(key, values) => values
                    .iter()
                    .filter_map(|v| members(&self.devices_by_label, key, v))
                    .collect(),
                Anchor::Key(key) => self
                    .devices_by_label
                    .get(key)
                    .into_iter()
                    .flat_map(|values| values.values())
                    .collect(),
            }
        };
        // Through the label fewest Devices carry: counting is a few lookups.
        let fewest = selector
            .anchors()
            .map(|a| carrying(&a))
            .min_by_key(|sets| sets.iter().map(|s| s.len()).sum::<usize>());
        let mut out: Vec<String> = match fewest {
            Some(sets) => sets
                .into_iter()
                .flatten()
                .filter(matching)
                .cloned()
                .collect(),
            None => self
                .devices
                .iter()
                .filter(|(_, l)| selector.matches(l))
                .map(|(id, _)| id.clone())
                .collect(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The Deployments whose selection changes when a Device's labels go
    /// from `before` to `after` (`None`: no such Device).
    fn affected(&self, before: Option<&Labels>, after: Option<&Labels>) -> Vec<DeploymentRef> {
        let mut candidates = HashSet::new();
        for labels in [before, after].into_iter().flatten() {
            self.candidates(labels, &mut candidates);
        }
        candidates
            .into_iter()
            .filter(|d| {
                let Some(s) = self.selectors.get(*d) else {
                    return false;
                };
                before.is_some_and(|l| s.matches(l)) != after.is_some_and(|l| s.matches(l))
            })
            .cloned()
            .collect()
    }

    /// The Deployments that may select a Device with `labels`: those
    /// anchored on one of its labels, and those without an anchor.
    fn candidates<'a>(&'a self, labels: &Labels, out: &mut HashSet<&'a DeploymentRef>) {
        out.extend(self.unanchored.iter());
        for (k, v) in labels {
            out.extend(members(&self.anchored, k, v).into_iter().flatten());
            out.extend(self.anchored_keys.get(k).into_iter().flatten());
        }
    }

    fn set_device(&mut self, id: &str, labels: Option<Labels>) -> Option<Labels> {
        let old = match labels {
            Some(l) => self.devices.insert(id.to_string(), l),
            None => self.devices.remove(id),
        };
        let new = self.devices.get(id).cloned();
        for (k, v) in old.iter().flatten() {
            if new.as_ref().and_then(|n| n.get(k)) != Some(v) {
                remove(&mut self.devices_by_label, k, v, &id.to_string());
            }
        }
        for (k, v) in new.iter().flatten() {
            if old.as_ref().and_then(|o| o.get(k)) != Some(v) {
                add(&mut self.devices_by_label, k, v, id.to_string());
            }
        }
        old
    }

    fn unregister(&mut self, d: &DeploymentRef) {
        if let Some(old) = self.selectors.remove(d) {
            match old.anchor() {
                Some(Anchor::Values(k, values)) => {
                    for v in values {
                        remove(&mut self.anchored, k, v, d);
                    }
                }
                Some(Anchor::Key(k)) => {
                    if let Some(set) = self.anchored_keys.get_mut(k) {
                        set.remove(d);
                        if set.is_empty() {
                            self.anchored_keys.remove(k);
                        }
                    }
                }
                None => {
                    self.unanchored.remove(d);
                }
            }
        }
    }

    fn register(&mut self, d: &DeploymentRef, selector: Option<&TargetSelector>) {
        if self.selectors.get(d) == selector {
            return;
        }
        self.unregister(d);
        let Some(s) = selector else { return };
        match s.anchor() {
            Some(Anchor::Values(k, values)) => {
                for v in values {
                    add(&mut self.anchored, k, v, d.clone());
                }
            }
            Some(Anchor::Key(k)) => {
                self.anchored_keys
                    .entry(k.to_string())
                    .or_default()
                    .insert(d.clone());
            }
            None => {
                self.unanchored.insert(d.clone());
            }
        }
        self.selectors.insert(d.clone(), s.clone());
    }
}

/// The Devices' labels and the Deployments' selectors, shared by the
/// Device watch and the reconciles.
#[derive(Debug, Default)]
pub struct TargetIndex {
    inner: RwLock<Inner>,
}

impl TargetIndex {
    /// An empty index, not yet synced.
    pub fn new() -> TargetIndex {
        TargetIndex::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the first full list of Devices has been taken in: before
    /// that, a selector would select too little, and applying it would
    /// remove keys.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Records `d`'s selector (or that it has none), so that Device changes
    /// trigger it, and returns the Devices it selects now; `None` while the
    /// index is not synced.
    pub fn resolve(
        &self,
        d: &DeploymentRef,
        selector: Option<&TargetSelector>,
    ) -> Option<Vec<String>> {
        let mut inner = self.write();
        inner.register(d, selector);
        if !inner.synced {
            return None;
        }
        Some(selector.map(|s| inner.select(s)).unwrap_or_default())
    }

    /// Forgets `d` (deleted).
    pub fn forget(&self, d: &DeploymentRef) {
        let mut inner = self.write();
        inner.unregister(d);
        inner.awaiting_sync.remove(d);
    }

    /// Whether the index is synced; when not, `d` is returned by the first
    /// [`Self::replace_all`], so that its reconcile runs as soon as the
    /// Device list is in (rather than at its next resync).
    pub fn synced_or_wait(&self, d: &DeploymentRef) -> bool {
        let mut inner = self.write();
        if !inner.synced {
            inner.awaiting_sync.insert(d.clone());
        }
        inner.synced
    }

    /// The Devices `selector` selects now, sorted.
    pub fn select(&self, selector: &TargetSelector) -> Vec<String> {
        self.read().select(selector)
    }

    /// The Deployments whose selector selects `device` now.
    pub fn selecting(&self, device: &str) -> Vec<DeploymentRef> {
        let inner = self.read();
        let Some(labels) = inner.devices.get(device) else {
            return Vec::new();
        };
        let mut candidates = HashSet::new();
        inner.candidates(labels, &mut candidates);
        candidates
            .into_iter()
            .filter(|d| inner.selectors.get(*d).is_some_and(|s| s.matches(labels)))
            .cloned()
            .collect()
    }

    /// A Device was created or its labels changed (`Some`), or it was
    /// deleted (`None`); returns the Deployments whose selection changed.
    pub fn set_device(&self, id: &str, labels: Option<Labels>) -> Vec<DeploymentRef> {
        let mut inner = self.write();
        if inner.devices.get(id) == labels.as_ref() {
            return Vec::new();
        }
        let old = inner.set_device(id, labels);
        if !inner.synced {
            return Vec::new();
        }
        let new = inner.devices.get(id);
        inner.affected(old.as_ref(), new)
    }

    /// Replaces every Device with `devices` (a full list: the watch's
    /// start or restart) and marks the index synced; returns the
    /// Deployments whose selection changed (all with a selector, the first
    /// time, since they could not be resolved before).
    pub fn replace_all(&self, devices: Vec<(String, Labels)>) -> Vec<DeploymentRef> {
        let mut inner = self.write();
        let first = !inner.synced;
        inner.synced = true;
        let mut affected: BTreeSet<(Option<String>, String)> = BTreeSet::new();
        let mut refs = HashMap::new();
        let mut note = |changed: Vec<DeploymentRef>| {
            for d in changed {
                affected.insert((d.namespace.clone(), d.name.clone()));
                refs.insert((d.namespace.clone(), d.name.clone()), d);
            }
        };
        let listed: HashSet<String> = devices.iter().map(|(id, _)| id.clone()).collect();
        let gone: Vec<String> = inner
            .devices
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let old = inner.set_device(&id, None);
            note(inner.affected(old.as_ref(), None));
        }
        for (id, labels) in devices {
            if inner.devices.get(&id) == Some(&labels) {
                continue;
            }
            let old = inner.set_device(&id, Some(labels.clone()));
            note(inner.affected(old.as_ref(), Some(&labels)));
        }
        if first {
            note(inner.selectors.keys().cloned().collect());
            note(inner.awaiting_sync.drain().collect());
        }
        affected
            .into_iter()
            .filter_map(|k| refs.remove(&k))
            .collect()
    }

    /// How many Devices are known.
    pub fn devices(&self) -> usize {
        self.read().devices.len()
    }

    /// Says that a Device watch feeds this index: from now on
    /// [`Self::windows_known_or_wait`] waits for its first list.
    pub fn watch_started(&self) {
        let mut inner = self.write();
        inner.watched = true;
        inner.watch_started_at = Some(std::time::Instant::now());
    }

    /// Whether Deployments have waited for the Device watch's first list
    /// longer than `bound` since it started (it keeps failing, or the
    /// list is slow): said in a warning, so that nobody wonders why
    /// nothing is written.
    pub fn waited_longer_than(&self, bound: std::time::Duration) -> bool {
        let inner = self.read();
        !inner.synced && inner.watch_started_at.is_some_and(|t| t.elapsed() > bound)
    }

    /// Whether the Devices' maintenance windows are known: always when no
    /// Device watch feeds the index (no Device objects are used), else once
    /// its first list is in. When not, `d` is returned by the first
    /// [`Self::replace_all`]: writing before would give a board that has
    /// windows of its own the Deployment's (or none), and it could apply
    /// at once a change its owner wants only in its windows.
    ///
    /// A watch that fails before its first list ([`Self::watch_failed`])
    /// waits no one: Deployments that name their targets are written as
    /// they were before Devices had windows (the Deployment's windows),
    /// and each Device's own windows reach its keys once the list is in.
    pub fn windows_known_or_wait(&self, d: &DeploymentRef) -> bool {
        {
            let inner = self.read();
            if !inner.watched || inner.watch_failing {
                return true;
            }
        }
        self.synced_or_wait(d)
    }

    /// The Device watch cannot list Devices for good (no CRD, no RBAC);
    /// before its first list, that ends the wait of
    /// [`Self::windows_known_or_wait`]: returns the Deployments waiting (the
    /// first time), to reconcile now. Not for transient errors: writing
    /// without the Devices' windows would give windowed boards the
    /// Deployment's, and a held revision could apply at once.
    pub fn watch_failed(&self) -> Vec<DeploymentRef> {
        let mut inner = self.write();
        if inner.synced || inner.watch_failing {
            return Vec::new();
        }
        inner.watch_failing = true;
        inner.awaiting_sync.drain().collect()
    }

    /// Whether the Device `device` is being deleted: its keys are left as
    /// they are ([`crate::apply::Plan::kept`]).
    pub fn is_terminating(&self, device: &str) -> bool {
        self.read().terminating.contains(device)
    }

    /// The Device `device` is being deleted (`true`) or is not (`false`,
    /// also once it is gone); returns whether that changed.
    pub fn set_terminating(&self, device: &str, terminating: bool) -> bool {
        let mut inner = self.write();
        if terminating {
            inner.terminating.insert(device.to_string())
        } else {
            inner.terminating.remove(device)
        }
    }

    /// Replaces the Devices being deleted with `all` (a full list).
    pub fn replace_terminating(&self, all: HashSet<String>) {
        self.write().terminating = all;
    }

    /// A Device's own maintenance windows, `None` when it has none (or no
    /// Device object is known).
    pub fn windows(&self, device: &str) -> Option<Vec<MaintenanceWindowSpec>> {
        self.read().windows.get(device).cloned()
    }

    /// A Device's own maintenance windows are now `windows` (empty: none,
    /// or the Device was deleted); returns whether they changed.
    pub fn set_windows(&self, device: &str, windows: Vec<MaintenanceWindowSpec>) -> bool {
        let mut inner = self.write();
        let changed = inner.windows.get(device).map_or(&[][..], Vec::as_slice) != windows;
        if changed {
            if windows.is_empty() {
                inner.windows.remove(device);
            } else {
                inner.windows.insert(device.to_string(), windows);
            }
        }
        changed
    }

    /// Replaces every Device's windows with `all` (a full list); returns
    /// the Devices whose windows changed, sorted.
    pub fn replace_all_windows(
        &self,
        all: HashMap<String, Vec<MaintenanceWindowSpec>>,
    ) -> Vec<String> {
        let mut inner = self.write();
        let all: HashMap<String, Vec<MaintenanceWindowSpec>> =
            all.into_iter().filter(|(_, w)| !w.is_empty()).collect();
        let mut changed: Vec<String> = inner
            .windows
            .iter()
            .filter(|(id, w)| all.get(*id) != Some(*w))
            .map(|(id, _)| id.clone())
            .chain(
                all.iter()
                    .filter(|(id, _)| !inner.windows.contains_key(*id))
                    .map(|(id, _)| id.clone()),
            )
            .collect();
        changed.sort_unstable();
        changed.dedup();
        inner.windows = all;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn by_labels(pairs: &[(&str, &str)]) -> TargetSelector {
        TargetSelector::new(&LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        })
        .unwrap()
    }

    fn exists(key: &str) -> TargetSelector {
        TargetSelector::new(&LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: "Exists".into(),
                values: None,
            }]),
        })
        .unwrap()
    }

    fn dref(name: &str) -> DeploymentRef {
        ObjectRef::new(name).within("fleet")
    }

    fn names(mut refs: Vec<DeploymentRef>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_deployment_waiting_for_the_first_list_is_triggered_by_it() {
        let index = TargetIndex::new();
        assert!(!index.synced_or_wait(&dref("batches")));
        // Named targets only: nothing registered as a selector.
        assert_eq!(index.resolve(&dref("batches"), None), None);
        let first = index.replace_all(vec![("pi-1".into(), labels(&[("stage", "canary")]))]);
        assert_eq!(names(first), ["batches"]);
        assert!(index.synced_or_wait(&dref("batches")));
        let again = index.replace_all(vec![("pi-1".into(), labels(&[("stage", "canary")]))]);
        assert!(again.is_empty(), "only the first list wakes it");
    }

    #[test]
    fn resolves_only_once_synced_and_follows_label_changes() {
        let index = TargetIndex::new();
        let lyon = by_labels(&[("site", "lyon")]);
        assert_eq!(index.resolve(&dref("web"), Some(&lyon)), None);
        assert!(
            index
                .set_device("pi-1", Some(labels(&[("site", "lyon")])))
                .is_empty()
        );
        let first = index.replace_all(vec![
            ("pi-1".into(), labels(&[("site", "lyon")])),
            ("pi-2".into(), labels(&[("site", "paris"), ("gpu", "yes")])),
            ("pi-3".into(), labels(&[("site", "lyon"), ("gpu", "yes")])),
        ]);
        assert_eq!(names(first), ["web"], "waiting selectors run once synced");
        assert_eq!(
            index.resolve(&dref("web"), Some(&lyon)).unwrap(),
            ["pi-1", "pi-3"]
        );
        assert_eq!(
            index.resolve(&dref("gpu"), Some(&exists("gpu"))).unwrap(),
            ["pi-2", "pi-3"]
        );
        assert_eq!(
            index.resolve(&dref("plain"), None).unwrap(),
            Vec::<String>::new()
        );

        // pi-2 moves to lyon: web gains it, gpu still selects it.
        let changed = index.set_device("pi-2", Some(labels(&[("site", "lyon"), ("gpu", "yes")])));
        assert_eq!(names(changed), ["web"]);
        // pi-1 gains gpu: only gpu.
        assert_eq!(
            names(index.set_device("pi-1", Some(labels(&[("site", "lyon"), ("gpu", "no")])))),
            ["gpu"]
        );
        // The same labels again: nothing.
        assert!(
            index
                .set_device("pi-1", Some(labels(&[("site", "lyon"), ("gpu", "no")])))
                .is_empty()
        );
        // A device nobody selects comes and goes: nothing.
        assert!(
            index
                .set_device("x", Some(labels(&[("site", "oslo")])))
                .is_empty()
        );
        assert!(index.set_device("x", None).is_empty());
        // pi-3 deleted: both lose it.
        assert_eq!(names(index.set_device("pi-3", None)), ["gpu", "web"]);
        assert_eq!(index.select(&lyon), ["pi-1", "pi-2"]);
        assert_eq!(names(index.selecting("pi-1")), ["gpu", "web"]);
        // A changed selector replaces the old one; a forgotten one is gone.
        let paris = by_labels(&[("site", "paris")]);
        assert_eq!(
            index.resolve(&dref("web"), Some(&paris)).unwrap(),
            Vec::<String>::new()
        );
        assert!(
            index
                .set_device("pi-1", Some(labels(&[("site", "lyon")])))
                .iter()
                .all(|d| d.name != "web")
        );
        index.forget(&dref("gpu"));
        assert!(
            index
                .set_device("pi-9", Some(labels(&[("gpu", "yes")])))
                .is_empty()
        );
        // A relist drops what disappeared and reports who it concerned.
        let relist = index.replace_all(vec![("pi-9".into(), labels(&[("site", "paris")]))]);
        assert_eq!(names(relist), ["web"]);
        assert_eq!(index.devices(), 1);
    }
}
