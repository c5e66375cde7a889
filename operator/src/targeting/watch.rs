//! Keeps a [`TargetIndex`] current from a watch on Device objects (their
//! labels, their own maintenance windows, their deletion), and says which
//! Deployments each change concerns.

use std::collections::{HashMap, HashSet};
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
    terminating: HashSet<String>,
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
            // A Device being deleted keeps its windows: its keys are kept
            // as they are, not rewritten with other windows.
            r.windows.insert(d.name_any(), d.spec.windows().to_vec());
            match labels_of(&d) {
                Some(labels) => r.labels.push((d.name_any(), labels)),
                None => {
                    r.terminating.insert(d.name_any());
                }
            }
            Vec::new()
        }
        watcher::Event::InitDone => {
            let Relist {
                labels,
                windows,
                terminating,
            } = relist.take().unwrap_or_default();
            index.replace_terminating(terminating);
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
            let mut out = Vec::new();
            // Being deleted: its keys are being removed (decommission).
            // Its windows stay and nothing is sent: the Deployments naming
            // it keep its keys as they are from now on, rather than write
            // them again with the Deployment's windows.
            if labels.is_none() {
                index.set_terminating(&name, true);
                out.extend(selection(index.set_device(&name, None)));
                return out;
            }
            index.set_terminating(&name, false);
            let windows = d.spec.windows().to_vec();
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
            // Gone: the Deployments that name it write it as any device
            // without a Device object (their own windows).
            let name = d.name_any();
            let was_terminating = index.set_terminating(&name, false);
            let mut out = Vec::new();
            if index.set_windows(&name, Vec::new()) || was_terminating {
                out.push(DeviceChange::Windows {
                    device: name.clone(),
                    windows: Vec::new(),
                });
            }
            out.extend(selection(index.set_device(&name, None)));
            out
        }
    }
}

/// Whether a watch error lasts until someone acts: the Device CRD is not
/// installed (404) or the operator may not list Devices (403). Anything
/// else (a 5xx, a timeout, a dropped connection) is retried by the watch.
fn is_permanent(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        },
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::NoResourceVersion => None,
    };
    matches!(code, Some(403 | 404))
}

/// Takes one watch error: logs it and, when it is permanent
/// ([`is_permanent`]), stops the Deployments waiting for the first list
/// ([`TargetIndex::watch_failed`]); returns what to reconcile now. After a
/// transient error they keep waiting: written without the Devices' own
/// windows, a board with windows would get the Deployment's, and could
/// apply at once a revision its owner wants only in its windows.
pub fn take_error(index: &TargetIndex, e: &watcher::Error) -> Vec<DeviceChange> {
    if is_permanent(e) {
        tracing::warn!(error = %Chain(e), "cannot watch Device objects; targetSelector and Devices' maintenance windows are not evaluated until this recovers (is the Device CRD installed, and may the operator list and watch devices.iot.nationtech.io?)");
        return index
            .watch_failed()
            .into_iter()
            .map(DeviceChange::Selection)
            .collect();
    }
    tracing::warn!(error = %Chain(e), "Device watch failed; retried with back-off (until its first list is in, Deployments wait)");
    Vec::new()
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
                Err(e) => take_error(&index, &e),
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

    fn api_error(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn only_a_missing_crd_or_rbac_ends_the_wait_for_the_first_list() {
        let d = crate::targeting::deployment_ref("fleet", "web");
        for transient in [
            api_error(500),
            api_error(504),
            watcher::Error::WatchError(
                kube::core::Status::failure("gone", "Expired")
                    .with_code(410)
                    .boxed(),
            ),
        ] {
            let index = TargetIndex::new();
            index.watch_started();
            assert!(!index.windows_known_or_wait(&d));
            assert!(take_error(&index, &transient).is_empty(), "{transient}");
            assert!(!index.windows_known_or_wait(&d), "still waits: {transient}");
            assert!(!index.waited_longer_than(std::time::Duration::from_secs(60)));
            assert!(index.waited_longer_than(std::time::Duration::ZERO));
        }
        for permanent in [api_error(403), api_error(404)] {
            let index = TargetIndex::new();
            index.watch_started();
            assert!(!index.windows_known_or_wait(&d));
            assert_eq!(
                take_error(&index, &permanent),
                [DeviceChange::Selection(d.clone())]
            );
            assert!(index.windows_known_or_wait(&d));
        }
    }

    fn terminating(mut d: Device) -> Device {
        d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
        ));
        d
    }

    #[test]
    fn a_device_being_deleted_keeps_its_windows_and_its_deletion_says_so() {
        let index = TargetIndex::new();
        let mut relist = None;
        take_event(&index, &mut relist, watcher::Event::Init);
        let pi1 = device("pi-1", "lyon", Some("0 2 * * *"));
        take_event(&index, &mut relist, watcher::Event::InitApply(pi1.clone()));
        take_event(&index, &mut relist, watcher::Event::InitDone);
        let got = take_event(
            &index,
            &mut relist,
            watcher::Event::Apply(terminating(pi1.clone())),
        );
        assert!(got.is_empty(), "{got:?}");
        assert!(index.is_terminating("pi-1"));
        assert_eq!(index.windows("pi-1").unwrap()[0].at, "0 2 * * *");
        // A relist meanwhile keeps it so.
        take_event(&index, &mut relist, watcher::Event::Init);
        take_event(
            &index,
            &mut relist,
            watcher::Event::InitApply(terminating(pi1.clone())),
        );
        let got = take_event(&index, &mut relist, watcher::Event::InitDone);
        assert!(got.is_empty(), "{got:?}");
        assert!(index.is_terminating("pi-1"));
        // Gone: the Deployments naming it hear of it.
        let got = take_event(&index, &mut relist, watcher::Event::Delete(pi1));
        assert!(
            matches!(&got[..], [DeviceChange::Windows { device, windows }] if device == "pi-1" && windows.is_empty()),
            "{got:?}"
        );
        assert!(!index.is_terminating("pi-1"));
        assert_eq!(index.windows("pi-1"), None);
        // A Device without windows deleted: its deletion was not waited on,
        // nothing to say.
        let got = take_event(
            &index,
            &mut relist,
            watcher::Event::Delete(device("pi-2", "oslo", None)),
        );
        assert!(got.is_empty(), "{got:?}");
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
