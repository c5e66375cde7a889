//! A Deployment's rollout history: the scores of its last revisions, kept
//! where the operator can write one back (a rollback) after its own restart.
//!
//! Each revision is a ControllerRevision (apps/v1), as the StatefulSet and
//! DaemonSet controllers keep theirs: the Kubernetes idiom for "the
//! versions of a spec this controller has rolled out", shown by
//! `kubectl get controllerrevisions`. Being API objects they outlive the
//! operator's process (nothing to rebuild from the devices), and their
//! controller ownerReference makes Kubernetes' garbage collector delete
//! them with the Deployment, so the operator never has to clean up after a
//! Deployment that is gone.
//!
//! One object per revision, named `<deployment>-<revision as 16 hex>` (a
//! Deployment name is a lowercase DNS label, so this is a valid object
//! name), labelled [`DEPLOYMENT_LABEL`]`=<deployment>`, holding
//! `data: {"score": <spec.score>}`. Its `.revision` orders the history:
//! 1 + the highest of the Deployment's other objects, as the apps/v1
//! controllers number theirs.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::crd::{Deployment, revision_string};

/// The label that ties a ControllerRevision to its Deployment (by name);
/// the history is listed by it.
pub const DEPLOYMENT_LABEL: &str = "iot.nationtech.io/deployment";

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The Deployment was not read from the API server (it has no uid), so
    /// no object can name it as its owner.
    #[error(
        "Deployment {namespace}/{name} has no uid: only a Deployment read from the API server can own its history"
    )]
    NoOwner {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment's name.
        name: String,
    },
    /// The API server refused or failed a request.
    #[error("{action} ControllerRevision {namespace}/{name}")]
    Api {
        /// `create`, `get`, `list` or `delete`.
        action: &'static str,
        /// The namespace.
        namespace: String,
        /// The object's name (for a list, the label selector).
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Where a Deployment's revisions are kept: ControllerRevision objects
/// (apps/v1).
pub struct History {
    client: Client,
}

/// One of the Deployment's objects: its `.revision` (the order) and the
/// Deployment revision its name carries.
struct Entry {
    order: i64,
    revision: u64,
    name: String,
}

impl History {
    /// The history behind `client`.
    pub fn new(client: Client) -> History {
        History { client }
    }

    /// The client it reads and writes with (a rollback re-reads the
    /// Secrets the stable revision references with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Records `score` (the `spec.score` as JSON) under `revision` unless
    /// already recorded; then prunes to `limit` objects, oldest `.revision`
    /// first, never pruning any revision in `keep` nor `revision` itself
    /// (a record that deletes what it recorded would be of no use).
    pub async fn record(
        &self,
        d: &Deployment,
        revision: u64,
        score: &Value,
        limit: u32,
        keep: &[u64],
    ) -> Result<(), HistoryError> {
        let ns = d.namespace_or_default();
        let mut entries = self.entries(d).await?;
        if !entries.iter().any(|e| e.revision == revision) {
            let created = self.create(d, revision, score, &entries).await?;
            match created {
                Some(entry) => entries.push(entry),
                // Someone recorded it since the list: read what is there now.
                None => entries = self.entries(d).await?,
            }
        }
        entries.sort_by_key(|e| e.order);
        let mut excess = entries.len().saturating_sub(limit as usize);
        let api = self.api(ns);
        for e in &entries {
            if excess == 0 {
                break;
            }
            if e.revision == revision || keep.contains(&e.revision) {
                continue;
            }
            match api.delete(&e.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => return Err(api_error("delete", ns, &e.name, source)),
            }
            excess -= 1;
        }
        Ok(())
    }

    /// The score recorded for `revision`, if any.
    pub async fn score(
        &self,
        d: &Deployment,
        revision: u64,
    ) -> Result<Option<Value>, HistoryError> {
        let ns = d.namespace_or_default();
        let name = object_name(d, revision);
        let found = self
            .api(ns)
            .get_opt(&name)
            .await
            .map_err(|source| api_error("get", ns, &name, source))?;
        Ok(found
            .and_then(|cr| cr.data)
            .and_then(|RawExtension(mut data)| data.get_mut("score").map(Value::take)))
    }

    /// The recorded revisions, oldest first (for tests and the CLI).
    pub async fn list(&self, d: &Deployment) -> Result<Vec<u64>, HistoryError> {
        let mut entries = self.entries(d).await?;
        entries.sort_by_key(|e| e.order);
        Ok(entries.into_iter().map(|e| e.revision).collect())
    }

    fn api(&self, namespace: &str) -> Api<ControllerRevision> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The Deployment's objects; those whose name carries no revision
    /// (not written by us, though labelled so) are left alone.
    async fn entries(&self, d: &Deployment) -> Result<Vec<Entry>, HistoryError> {
        let ns = d.namespace_or_default();
        let selector = format!("{DEPLOYMENT_LABEL}={}", d.name_str());
        let list = self
            .api(ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| api_error("list", ns, &selector, source))?;
        let prefix = format!("{}-", d.name_str());
        Ok(list
            .items
            .into_iter()
            .filter_map(|cr| {
                let name = cr.metadata.name?;
                let hex = name.strip_prefix(&prefix)?;
                let revision = (hex.len() == 16)
                    .then(|| u64::from_str_radix(hex, 16).ok())
                    .flatten()?;
                Some(Entry {
                    order: cr.revision,
                    revision,
                    name,
                })
            })
            .collect())
    }

    /// Creates the object for `revision` after `existing`; `None` when it
    /// exists already.
    async fn create(
        &self,
        d: &Deployment,
        revision: u64,
        score: &Value,
        existing: &[Entry],
    ) -> Result<Option<Entry>, HistoryError> {
        let ns = d.namespace_or_default();
        let name = object_name(d, revision);
        let mut owner = d
            .controller_owner_ref(&())
            .ok_or_else(|| HistoryError::NoOwner {
                namespace: ns.to_string(),
                name: d.name_str().to_string(),
            })?;
        // A foreground deletion of the Deployment then waits for its
        // history to be gone, as it does for a ReplicaSet's Pods.
        owner.block_owner_deletion = Some(true);
        let order = existing
            .iter()
            .map(|e| e.order)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let cr = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_string()),
                labels: Some([(DEPLOYMENT_LABEL.to_string(), d.name_str().to_string())].into()),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(json!({ "score": score }))),
            revision: order,
        };
        match self.api(ns).create(&PostParams::default(), &cr).await {
            Ok(_) => Ok(Some(Entry {
                order,
                revision,
                name,
            })),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(None),
            Err(source) => Err(api_error("create", ns, &name, source)),
        }
    }
}

/// `<deployment>-<revision as 16 hex>`.
fn object_name(d: &Deployment, revision: u64) -> String {
    format!("{}-{}", d.name_str(), revision_string(revision))
}

fn api_error(
    action: &'static str,
    namespace: &str,
    name: &str,
    source: kube::Error,
) -> HistoryError {
    HistoryError::Api {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::{ApiRequest, MockApiServer};

    const REVISIONS: &str = "/apis/apps/v1/namespaces/lab/controllerrevisions";

    fn deployment(name: &str) -> Deployment {
        let mut d: Deployment = serde_json::from_value(json!({
            "apiVersion": "iot.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "lab", "uid": format!("uid-{name}")},
            "spec": {"targetDevices": ["pi-1"], "score": {"type": "PodmanV0", "data": {}}},
        }))
        .unwrap();
        d.metadata.generation = Some(1);
        d
    }

    fn score(image: &str) -> Value {
        json!({"type": "PodmanV0", "data": {"containers": [{"name": "web", "image": image}]}})
    }

    fn lines(reqs: &[ApiRequest]) -> Vec<String> {
        reqs.iter().map(ApiRequest::line).collect()
    }

    #[tokio::test]
    async fn records_prunes_oldest_first_and_keeps_what_it_is_told() {
        let (client, server) = MockApiServer::start();
        let history = History::new(client.clone());
        let web = deployment("web");
        let other = deployment("web-2");
        let (a, b, c, e) = (0xa1, 0xb2, 0xc3, 0xe5);
        history
            .record(&other, a, &score("other"), 1, &[])
            .await
            .unwrap();
        server.take();

        history.record(&web, a, &score("a"), 2, &[]).await.unwrap();
        let reqs = server.take();
        assert_eq!(
            lines(&reqs),
            [format!("GET {REVISIONS}"), format!("POST {REVISIONS}")]
        );
        let body = &reqs[1].body;
        assert_eq!(body["metadata"]["name"], "web-00000000000000a1");
        assert_eq!(body["metadata"]["labels"], json!({DEPLOYMENT_LABEL: "web"}));
        assert_eq!(body["data"], json!({"score": score("a")}));
        assert_eq!(
            body["revision"], 1,
            "the other Deployment's objects do not count"
        );
        assert_eq!(
            body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "iot.nationtech.io/v1alpha1", "kind": "Deployment",
                    "name": "web", "uid": "uid-web", "controller": true,
                    "blockOwnerDeletion": true}])
        );

        // Under the limit nothing is pruned; over it, the oldest not kept.
        history.record(&web, b, &score("b"), 2, &[a]).await.unwrap();
        history.record(&web, c, &score("c"), 2, &[a]).await.unwrap();
        assert_eq!(history.list(&web).await.unwrap(), [a, c]);
        server.take();
        history.record(&web, e, &score("e"), 2, &[a]).await.unwrap();
        assert_eq!(
            lines(&server.take()),
            [
                format!("GET {REVISIONS}"),
                format!("POST {REVISIONS}"),
                format!("DELETE {REVISIONS}/web-00000000000000c3"),
            ]
        );
        assert_eq!(history.list(&web).await.unwrap(), [a, e]);
        let objects: Api<ControllerRevision> = Api::namespaced(client, "lab");
        assert_eq!(
            objects.get("web-00000000000000e5").await.unwrap().revision,
            4
        );

        // Recorded already: nothing is written, nothing is renumbered.
        server.take();
        history.record(&web, a, &score("a"), 2, &[]).await.unwrap();
        assert_eq!(lines(&server.take()), [format!("GET {REVISIONS}")]);
        assert_eq!(history.list(&web).await.unwrap(), [a, e]);

        // The revision being recorded is never pruned, even past `keep`.
        history.record(&web, b, &score("b"), 1, &[e]).await.unwrap();
        assert_eq!(history.list(&web).await.unwrap(), [e, b]);

        assert_eq!(history.score(&web, b).await.unwrap(), Some(score("b")));
        assert_eq!(history.score(&web, a).await.unwrap(), None);
        assert_eq!(history.list(&other).await.unwrap(), [a]);
        assert_eq!(
            history.score(&other, a).await.unwrap(),
            Some(score("other"))
        );
    }

    #[tokio::test]
    async fn a_deployment_not_read_from_the_server_owns_nothing() {
        let (client, server) = MockApiServer::start();
        let mut web = deployment("web");
        web.metadata.uid = None;
        let err = History::new(client)
            .record(&web, 1, &score("a"), 10, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, HistoryError::NoOwner { .. }), "{err:?}");
        assert_eq!(lines(&server.take()), [format!("GET {REVISIONS}")]);
    }
}
