//! The operator against a real Kubernetes API server: etcd and
//! kube-apiserver on loopback (`testkit::kube`, binaries from
//! `KUBEBUILDER_ASSETS`; `scripts/kube-assets.sh` puts them there).
//!
//! What the mocked tests cannot show: the server accepts our CRD (its
//! structural schema, and the CEL rules within the server's cost limits),
//! refuses what the CEL rules must refuse, the real controller loop's
//! finalizer, status subresource patches, watches and Events work against
//! it under the RBAC rules of `deploy/operator.yaml`, and every manifest in
//! `deploy/` passes the server's validation.
//!
//! Each test starts its own server (3-15 s), so tests share nothing: the
//! controller watches every namespace, and two controllers on one server
//! would reconcile each other's Deployments.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{desired, nats_env, put_heartbeat, put_status};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Client, ResourceExt};
use operator::crd::{
    DEVICE_RULE_MESSAGE, Deployment, FINALIZER, NAME_RULE_MESSAGE, SCORE_TYPE_RULE_MESSAGE,
};
use operator::{Context, ControllerConfig, StatusCache};
use protocol::Phase;
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

#[tokio::test]
async fn the_generated_crd_is_accepted_and_established() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    let crds = install_crds(&server).await;
    assert_eq!(crds.len(), 2, "Deployment and Device");
    let crd = crds.into_iter().next().unwrap();
    let conds = crd.status.unwrap().conditions.unwrap_or_default();
    for type_ in ["NamesAccepted", "Established"] {
        assert!(
            conds.iter().any(|c| c.type_ == type_ && c.status == "True"),
            "{type_}: {conds:?}"
        );
    }
    assert!(
        !conds
            .iter()
            .any(|c| c.type_ == "NonStructuralSchema" && c.status == "True"),
        "{conds:?}"
    );
    // The resource is served: list it, and its short name is known.
    let api: Api<Deployment> = Api::all(client.clone());
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let (ar, caps) = kube::discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("iot.nationtech.io", "v1alpha1", "Deployment"),
    )
    .await
    .unwrap();
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
}

/// What the CRD's schema and CEL rules must refuse, refused by the server
/// with the rule's message; a valid Deployment beside them is accepted.
#[tokio::test]
async fn the_server_refuses_what_the_cel_rules_refuse() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    let ar = ApiResource::erase::<Deployment>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);

    let ok = create(
        &api,
        deployment_json("default", "web", json!(["pi-1"]), "PodmanV0"),
    )
    .await;
    assert!(ok.is_ok(), "a valid Deployment: {ok:?}");
    // The server fills in the rollout policy's defaults, the ones the
    // operator reads for an absent field.
    let stored = ok.unwrap();
    assert_eq!(
        stored.data["spec"]["rollout"],
        json!({"strategy": "AllAtOnce", "autoRollback": false, "progressDeadlineSeconds": 600, "minHealthySeconds": 0})
    );
    let stored: Deployment =
        serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
    assert_eq!(stored.spec.rollout, operator::crd::Rollout::default());

    // The rollout policy's bounds, each refused naming the field.
    for (field, value, message) in [
        (
            "progressDeadlineSeconds",
            0,
            "should be greater than or equal to 1",
        ),
        (
            "progressDeadlineSeconds",
            86_401,
            "should be less than or equal to 86400",
        ),
        (
            "minHealthySeconds",
            86_401,
            "should be less than or equal to 86400",
        ),
        (
            "minHealthySeconds",
            -1,
            "should be greater than or equal to 0",
        ),
    ] {
        let mut d = deployment_json("default", "r", json!(["pi-1"]), "PodmanV0");
        d["spec"]["rollout"] = json!({ field: value });
        refused(&api, d.clone(), &format!("spec.rollout.{field}")).await;
        refused(&api, d, message).await;
    }

    // BatchSequence counts: at least 1, or 1% to 100%.
    for (rollout, field) in [
        (json!({"maxUnavailable": 0}), "spec.rollout.maxUnavailable"),
        (
            json!({"maxUnavailable": "150%"}),
            "spec.rollout.maxUnavailable",
        ),
        (
            json!({"batches": [{"limit": "0%"}]}),
            "spec.rollout.batches[0].limit",
        ),
        (
            json!({"batches": [{"limit": -2}]}),
            "spec.rollout.batches[0].limit",
        ),
    ] {
        let mut d = deployment_json("default", "b", json!(["pi-1"]), "PodmanV0");
        d["spec"]["rollout"] = rollout;
        refused(&api, d.clone(), field).await;
        refused(&api, d, operator::crd::COUNT_OR_PERCENT_RULE_MESSAGE).await;
    }
    let mut d = deployment_json("default", "b", json!(["pi-1"]), "PodmanV0");
    d["spec"]["rollout"] = json!({"batches": [{"successThreshold": 101}]});
    refused(&api, d, "spec.rollout.batches[0].successThreshold").await;
    let mut d = deployment_json("default", "b", json!(["pi-1"]), "PodmanV0");
    d["spec"]["rollout"] = json!({"strategy": "BatchSequence", "maxUnavailable": "25%",
        "batches": [{"selector": {"matchLabels": {"stage": "canary"}}, "limit": 5}, {"limit": "50%"}]});
    let ok = create(&api, d).await;
    assert!(ok.is_ok(), "a valid BatchSequence: {ok:?}");

    for bad_type in ["has space", "Podman.V0"] {
        refused(
            &api,
            deployment_json("default", "t", json!(["pi-1"]), bad_type),
            SCORE_TYPE_RULE_MESSAGE,
        )
        .await;
    }
    refused(
        &api,
        deployment_json("default", "d", json!(["pi-1", "pi*"]), "PodmanV0"),
        DEVICE_RULE_MESSAGE,
    )
    .await;
    // A valid Kubernetes name, but not one NATS key token.
    refused(
        &api,
        deployment_json("default", "hello.web", json!(["pi-1"]), "PodmanV0"),
        NAME_RULE_MESSAGE,
    )
    .await;
    // A Deployment that targets nothing: an empty list, or none at all.
    refused(
        &api,
        deployment_json("default", "e", json!([]), "PodmanV0"),
        operator::crd::TARGETS_RULE_MESSAGE,
    )
    .await;
    let mut no_targets = deployment_json("default", "n", json!([]), "PodmanV0");
    no_targets["spec"]
        .as_object_mut()
        .unwrap()
        .remove("targetDevices");
    refused(&api, no_targets, operator::crd::TARGETS_RULE_MESSAGE).await;

    // The rules hold on updates too: a merge patch adding a bad device.
    let patch = json!({"spec": {"targetDevices": ["pi-1", "a.b"]}});
    match api
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains(DEVICE_RULE_MESSAGE), "{}", s.message);
        }
        other => panic!("the patch was not refused: {other:?}"),
    }
}

/// Every manifest in `deploy/` and `deploy/examples/` passes a server-side
/// dry run (schema, unknown fields, RBAC objects, the CRD's rules). The CRD
/// and the Namespaces are created for real first: objects in them depend on
/// them.
#[tokio::test]
async fn every_manifest_in_deploy_passes_a_server_side_dry_run() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    let mut files = Vec::new();
    for dir in ["deploy", "deploy/nats", "deploy/examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    for must in ["crd.yaml", "operator.yaml", "nats.yaml", "hello.yaml"] {
        assert!(
            files.iter().any(|f| f.ends_with(must)),
            "{must} not among {files:?}"
        );
    }
    let docs: Vec<(PathBuf, Value)> = files
        .iter()
        .flat_map(|f| documents(f).into_iter().map(move |d| (f.clone(), d)))
        .collect();
    for (_, doc) in docs.iter().filter(|(_, d)| d["kind"] == "Namespace") {
        create_namespace(&client, doc["metadata"]["name"].as_str().unwrap()).await;
    }
    let dry_run = PatchParams {
        dry_run: true,
        ..strict_apply()
    };
    let mut checked = 0;
    for (file, doc) in &docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{}: {e}: {doc}", file.display()));
        let types = obj.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (ar, caps) = kube::discovery::pinned_kind(&client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{}: {gvk:?} is not served: {e}", file.display()));
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let name = obj.name_any();
        let result = api.patch(&name, &dry_run, &Patch::Apply(&obj)).await;
        if let Err(e) = result {
            panic!(
                "{}: {} {name}: the server refused it: {e}",
                file.display(),
                types.kind
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} objects in {files:?}");
    // A dry run stores nothing: the example Deployment does not exist.
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    assert!(api.get_opt("hello-web").await.unwrap().is_none());
}

/// Creates for real the operator's identity from `deploy/operator.yaml`
/// (its Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding) and
/// returns a client acting as that service account.
async fn operator_identity(server: &KubeApiServer, client: &Client) -> Client {
    let docs = documents(&repo().join("deploy/operator.yaml"));
    let mut account = None;
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/operator.yaml"));
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(&obj.name_any(), &strict_apply(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("deploy/operator.yaml {kind}: {e}"));
        if kind == "ServiceAccount" {
            account = Some((obj.namespace().unwrap(), obj.name_any()));
        }
    }
    let (ns, name) = account.unwrap();
    server
        .client_as(
            &format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
                "system:authenticated",
            ],
        )
        .await
}

/// The real controller loop (`operator::controller::run`) against the
/// server and a real nats-server, as the service account of
/// `deploy/operator.yaml` (so its RBAC rules must allow everything the
/// controller does): finalizer, keys, status with observedGeneration and
/// device phases, an Event, pruning when a target is removed, and cleanup
/// on delete.
#[tokio::test]
async fn the_controller_runs_against_a_real_api_server() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    create_namespace(&client, "fleet").await;
    let operator_client = operator_identity(&server, &client).await;

    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        operator_client,
        env.nats.clone(),
        cache,
        ControllerConfig::default(),
    ));
    let controller = tokio::spawn(operator::controller::run(ctx.clone(), changes));

    let api: Api<Deployment> = Api::namespaced(client.clone(), "fleet");
    let (revision, rev) = create_web(&api, "web", json!(["pi-1", "pi-2"])).await;

    // Keys written for both targets, the finalizer on, the status folded
    // for generation 1 with both devices not reported yet.
    for device in ["pi-1", "pi-2"] {
        eventually(&format!("key {device}.web written"), || async {
            if key_live(&env, device, "web").await {
                Ok(())
            } else {
                Err("no key".into())
            }
        })
        .await;
    }
    let rec = desired(&env.nats, "pi-1", "web").await.unwrap();
    assert_eq!(rec.owner.as_deref(), Some("fleet/web"));
    let v = deployment_where(&api, "web", "status of generation 1", |v| {
        v["status"]["observedGeneration"] == 1 && v["status"]["revision"] == rev.as_str()
    })
    .await;
    assert_eq!(v["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(v["status"]["targeted"], 2);
    assert_eq!(
        device_phases(&v),
        [
            ("pi-1".into(), "Unknown".into()),
            ("pi-2".into(), "Unknown".into())
        ]
    );

    // The agents report: pi-1 runs it, pi-2 failed.
    put_heartbeat(&env.client, "pi-1").await;
    put_heartbeat(&env.client, "pi-2").await;
    put_status(&env.client, "pi-1", "web", revision, Phase::Running, "").await;
    put_status(
        &env.client,
        "pi-2",
        "web",
        revision,
        Phase::Failed,
        "image nginx:1 not found",
    )
    .await;
    let v = deployment_where(&api, "web", "device reports folded", |v| {
        v["status"]["ready"] == 1 && v["status"]["failed"] == 1
    })
    .await;
    assert_eq!(device_phases(&v), [("pi-2".into(), "Failed".into())]);
    assert_eq!(
        v["status"]["devices"][0]["message"],
        "image nginx:1 not found"
    );
    assert_eq!(v["status"]["upToDate"], 2);
    let degraded = condition(&v, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True", "{degraded}");
    assert_eq!(degraded["observedGeneration"], 1);

    // An Event for the write, recorded by the server.
    let events: Api<Event> = Api::namespaced(client.clone(), "fleet");
    eventually("a DesiredStateWritten event", || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("DesiredStateWritten")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
        });
        let reasons: Vec<_> = list.items.iter().map(|e| e.reason.clone()).collect();
        if found {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;

    // A target removed: its key is pruned, generation 2 observed, and the
    // remaining device is ready.
    let patch = json!({"spec": {"targetDevices": ["pi-1"]}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("key pi-2.web pruned", || async {
        if key_live(&env, "pi-2", "web").await {
            Err("still there".into())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(key_live(&env, "pi-1", "web").await);
    let v = deployment_where(&api, "web", "status of generation 2", |v| {
        v["status"]["observedGeneration"] == 2 && v["status"]["targeted"] == 1
    })
    .await;
    assert_eq!(v["metadata"]["generation"], 2);
    assert_eq!(device_phases(&v), Vec::<(String, String)>::new());
    assert_eq!(v["status"]["ready"], 1);
    let ready = condition(&v, "Ready").unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["observedGeneration"], 2);

    // Deleted: the finalizer holds the object until the keys are gone.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("web deleted", || async {
        match api.get_opt("web").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(d) => Err(format!("still there, finalizers {:?}", d.finalizers())),
        }
    })
    .await;
    assert!(!key_live(&env, "pi-1", "web").await, "pi-1.web left behind");

    controller.abort();
    watch.abort();
}
