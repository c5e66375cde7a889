//! `targetSelector` against a real Kubernetes API server (`testkit::kube`,
//! binaries from `KUBEBUILDER_ASSETS`): the server refuses what the CRD's
//! rules refuse, and the real controller loop follows Device labels with
//! its Device watch, writing and removing keys in a real nats-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use std::sync::Arc;
use std::time::Duration;

use common::{nats_env, podman};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use operator::crd::{
    Deployment, Device, SELECTOR_KEY_RULE_MESSAGE, SELECTOR_VALUE_RULE_MESSAGE,
    SELECTOR_VALUES_RULE_MESSAGE, TARGETS_RULE_MESSAGE,
};
use operator::{Context, ControllerConfig, StatusCache};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

fn selecting(name: &str, targets: Option<Value>, selector: Option<Value>) -> Value {
    let mut spec = json!({"score": {"type": "PodmanV0", "data": podman("nginx:1")}});
    if let Some(t) = targets {
        spec["targetDevices"] = t;
    }
    if let Some(s) = selector {
        spec["targetSelector"] = s;
    }
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

#[tokio::test]
async fn the_server_refuses_bad_selectors_and_no_targets() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    let ar = ApiResource::erase::<Deployment>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);

    refused(&api, selecting("none", None, None), TARGETS_RULE_MESSAGE).await;
    refused(
        &api,
        selecting("empty", Some(json!([])), None),
        TARGETS_RULE_MESSAGE,
    )
    .await;
    let expr = |key: &str, op: &str, values: Option<Value>| {
        let mut e = json!({"key": key, "operator": op});
        if let Some(v) = values {
            e["values"] = v;
        }
        json!({"matchExpressions": [e]})
    };
    refused(
        &api,
        selecting(
            "op",
            None,
            Some(expr("site", "Equals", Some(json!(["lyon"])))),
        ),
        "spec.targetSelector.matchExpressions[0].operator: Unsupported value: \"Equals\"",
    )
    .await;
    refused(
        &api,
        selecting(
            "ex",
            None,
            Some(expr("site", "Exists", Some(json!(["lyon"])))),
        ),
        SELECTOR_VALUES_RULE_MESSAGE,
    )
    .await;
    refused(
        &api,
        selecting("in", None, Some(expr("site", "In", None))),
        SELECTOR_VALUES_RULE_MESSAGE,
    )
    .await;
    refused(
        &api,
        selecting("key", None, Some(expr("bad key", "Exists", None))),
        SELECTOR_KEY_RULE_MESSAGE,
    )
    .await;
    refused(
        &api,
        selecting("lkey", None, Some(json!({"matchLabels": {"Bad/x": "y"}}))),
        SELECTOR_KEY_RULE_MESSAGE,
    )
    .await;
    refused(
        &api,
        selecting("lval", None, Some(json!({"matchLabels": {"site": "-x"}}))),
        SELECTOR_VALUE_RULE_MESSAGE,
    )
    .await;

    // Accepted: a selector alone, an empty selector, both kinds of target.
    for (name, targets, selector) in [
        ("only", None, json!({"matchLabels": {"site": "lyon"}})),
        ("all", None, json!({})),
        (
            "both",
            Some(json!(["pi-1"])),
            json!({"matchExpressions": [{"key": "example.com/board", "operator": "In", "values": ["rpi4", "rpi5"]}, {"key": "retired", "operator": "DoesNotExist"}]}),
        ),
    ] {
        let made = create(&api, selecting(name, targets, Some(selector))).await;
        assert!(made.is_ok(), "{name}: {made:?}");
    }
}

fn device(name: &str, labels: Value) -> Device {
    serde_json::from_value(json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    }))
    .unwrap()
}

async fn key_is(env: &common::Env, device: &str, live: bool) {
    eventually(
        &format!(
            "key {device}.web {}",
            if live { "written" } else { "removed" }
        ),
        || async {
            if key_live(env, device, "web").await == live {
                Ok(())
            } else {
                Err(format!("live = {}", !live))
            }
        },
    )
    .await;
}

/// The real controller loop with its Device watch: a Deployment with only
/// a selector reaches the labelled Devices, follows relabelling both ways,
/// and drops a deleted Device.
#[tokio::test]
async fn a_selector_follows_device_labels() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    let devices: Api<Device> = Api::all(client.clone());
    let pp = kube::api::PostParams::default();
    devices
        .create(&pp, &device("pi-1", json!({"site": "lyon"})))
        .await
        .unwrap();
    devices
        .create(&pp, &device("pi-2", json!({"site": "paris"})))
        .await
        .unwrap();

    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let ctx = Arc::new(Context::new(
        client.clone(),
        env.nats.clone(),
        cache,
        ControllerConfig::default(),
    ));
    let controller = tokio::spawn(operator::controller::run(ctx.clone(), changes));

    let ar = ApiResource::erase::<Deployment>(&());
    let dyn_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    create(
        &dyn_api,
        selecting("web", None, Some(json!({"matchLabels": {"site": "lyon"}}))),
    )
    .await
    .unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    key_is(&env, "pi-1", true).await;
    deployment_where(&api, "web", "one target", |v| v["status"]["targeted"] == 1).await;
    assert!(!key_live(&env, "pi-2", "web").await);

    // pi-2 moves to lyon: it gains the key.
    let relabel = |site: &str| json!({"metadata": {"labels": {"site": site}}});
    devices
        .patch(
            "pi-2",
            &PatchParams::default(),
            &Patch::Merge(&relabel("lyon")),
        )
        .await
        .unwrap();
    key_is(&env, "pi-2", true).await;
    deployment_where(&api, "web", "two targets", |v| v["status"]["targeted"] == 2).await;

    // pi-1 leaves lyon: its key is removed.
    devices
        .patch(
            "pi-1",
            &PatchParams::default(),
            &Patch::Merge(&relabel("oslo")),
        )
        .await
        .unwrap();
    key_is(&env, "pi-1", false).await;

    // pi-2 deleted: its key is removed too.
    devices
        .delete("pi-2", &DeleteParams::default())
        .await
        .unwrap();
    key_is(&env, "pi-2", false).await;
    deployment_where(&api, "web", "no target", |v| v["status"]["targeted"] == 0).await;

    // A new Device with the label gets it.
    devices
        .create(&pp, &device("pi-3", json!({"site": "lyon"})))
        .await
        .unwrap();
    key_is(&env, "pi-3", true).await;
    controller.abort();
}
