//! Helpers for the tests against a real API server (`testkit::kube`):
//! installing the CRDs, applying objects, waiting for what the controller
//! does.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, ResourceExt};
use operator::crd::Deployment;

use super::{desired, podman};
use serde::Deserialize;
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

/// Longest wait for the controller to act on a change.
pub const SETTLE: Duration = Duration::from_secs(30);
pub const MANAGER: &str = "operator-tests";

pub fn repo() -> &'static Path {
    testkit::repo_root()
}

/// Every document of a multi-document YAML file (empty ones skipped).
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .map(|doc| doc.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Installs every CRD of `deploy/crd.yaml` and waits until the server
/// reports each Established; in file order.
pub async fn install_crds(server: &KubeApiServer) -> Vec<CustomResourceDefinition> {
    server.install_crds(&repo().join("deploy/crd.yaml")).await
}

/// Server-side apply as our field manager, refusing unknown fields.
pub fn strict_apply() -> PatchParams {
    PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply(MANAGER).force()
    }
}

pub async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.patch(name, &strict_apply(), &Patch::Apply(&ns))
        .await
        .unwrap();
}

/// Polls `probe` every 100 ms until it gives `Ok`, or panics after
/// `SETTLE` with `what` and the last `Err` (what it saw instead).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            start.elapsed() < SETTLE,
            "{what}: not so within {SETTLE:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Deployment as JSON, once `pred` holds for it.
pub async fn deployment_where(
    api: &Api<Deployment>,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let d = api.get(name).await.map_err(|e| e.to_string())?;
        let mut v = serde_json::to_value(&d).unwrap();
        if pred(&v) {
            return Ok(v);
        }
        // What the failure message shows: the object without the noise.
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        Err(v.to_string())
    })
    .await
}

pub fn condition<'a>(d: &'a Value, type_: &str) -> Option<&'a Value> {
    d["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn device_phases(d: &Value) -> Vec<(String, String)> {
    d["status"]["devices"]
        .as_array()
        .map(|devices| {
            devices
                .iter()
                .map(|e| {
                    (
                        e["device"].as_str().unwrap_or_default().to_string(),
                        e["phase"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A live desired-state key (written, not deleted).
pub async fn key_live(env: &super::Env, device: &str, name: &str) -> bool {
    desired(&env.nats, device, name)
        .await
        .is_some_and(|r| !r.deleted)
}

pub fn deployment_json(ns: &str, name: &str, targets: Value, score_type: &str) -> Value {
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "targetDevices": targets,
            "score": {"type": score_type, "data": podman("nginx:1")},
        },
    })
}

/// Creates the PodmanV0 Deployment `name` on `targets` in `api`'s
/// namespace; the revision it plans to, as a number and as the status
/// shows it.
pub async fn create_web(api: &Api<Deployment>, name: &str, targets: Value) -> (u64, String) {
    let ns = api.namespace().unwrap_or("default").to_string();
    let d: Deployment =
        serde_json::from_value(deployment_json(&ns, name, targets, "PodmanV0")).unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    let revision = operator::plan(&created).unwrap().revision;
    (revision, operator::crd::revision_string(revision))
}

pub async fn create(api: &Api<DynamicObject>, body: Value) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &obj).await
}

/// Creating `body` fails with 422 and a message containing `message`.
pub async fn refused(api: &Api<DynamicObject>, body: Value, message: &str) {
    let what = body.to_string();
    match create(api, body).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{what}: {s:?}");
            assert!(
                s.message.contains(message),
                "{what}: the server's message {:?} lacks {message:?}",
                s.message
            );
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

/// Creates the operator's Namespace, ServiceAccount, ClusterRole and
/// ClusterRoleBinding from `deploy/operator.yaml`, and returns a client
/// acting as that service account.
pub async fn operator_identity(server: &KubeApiServer, client: &Client) -> Client {
    let docs = documents(&repo().join("deploy/operator.yaml"));
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        let doc = docs.iter().find(|d| d["kind"] == kind).unwrap();
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(&obj.name_any(), &strict_apply(), &Patch::Apply(&obj))
            .await
            .unwrap();
    }
    server
        .client_as(
            "system:serviceaccount:iot-system:iot-operator",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:iot-system",
                "system:authenticated",
            ],
        )
        .await
}
