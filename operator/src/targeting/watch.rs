//! Keeps a [`TargetIndex`] current from a watch on Device objects (their
//! metadata only: labels and deletion are all targeting needs), and says
//! which Deployments each change concerns.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::index::{DeploymentRef, TargetIndex};
use super::selector::Labels;
use crate::crd::Device;
use error_report::Chain;

/// The Device's labels, `None` once it is being deleted: its keys are being
/// removed (decommission), so no selector may write them again.
fn labels_of(d: &PartialObjectMeta<Device>) -> Option<Labels> {
    d.metadata
        .deletion_timestamp
        .is_none()
        .then(|| d.labels().clone())
}

/// Takes one watch event into `index`; returns the Deployments whose
/// selection it changed. `relist` buffers a (re)list until it is complete.
pub fn take_event(
    index: &TargetIndex,
    relist: &mut Option<Vec<(String, Labels)>>,
    event: watcher::Event<PartialObjectMeta<Device>>,
) -> Vec<DeploymentRef> {
    match event {
        watcher::Event::Init => {
            *relist = Some(Vec::new());
            Vec::new()
        }
        watcher::Event::InitApply(d) => {
            if let Some(labels) = labels_of(&d) {
                relist
                    .get_or_insert_with(Vec::new)
                    .push((d.name_any(), labels));
            }
            Vec::new()
        }
        watcher::Event::InitDone => {
            let devices = relist.take().unwrap_or_default();
            tracing::info!(
                devices = devices.len(),
                "Device labels listed for targetSelector"
            );
            index.replace_all(devices)
        }
        watcher::Event::Apply(d) => index.set_device(&d.name_any(), labels_of(&d)),
        watcher::Event::Delete(d) => index.set_device(&d.name_any(), None),
    }
}

/// Watches every Device (with back-off after errors) into `index`, and
/// yields the Deployments to reconcile again.
pub fn watch(client: Client, index: Arc<TargetIndex>) -> impl Stream<Item = DeploymentRef> + Send {
    // Metadata-only requests: labels and deletion are all that is needed.
    let api: Api<PartialObjectMeta<Device>> = Api::all(client);
    let mut relist = None;
    watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .flat_map(move |event| {
            let refs = match event {
                Ok(event) => take_event(&index, &mut relist, event),
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot watch Device objects; targetSelector is not evaluated until this recovers (is the Device CRD installed, and may the operator list and watch devices.iot.nationtech.io?)");
                    Vec::new()
                }
            };
            futures::stream::iter(refs)
        })
}
