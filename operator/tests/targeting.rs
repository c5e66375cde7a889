//! Selector targeting and capability gating through the real reconcile, a
//! mock API server and a real nats-server: the Device index is fed the way
//! the Device watch feeds it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kube::runtime::controller::Action;
use operator::capability_gate::CapabilityGate;
use operator::crd::Deployment;
use operator::status::StatusCache;
use operator::targeting::{DeploymentRef, Labels, TargetIndex};
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::{BoundedVec, Capabilities, DesiredState, Heartbeat, ScoreTypeSupport, Text};
use serde_json::json;

struct Rig {
    api: MockApiServer,
    ctx: Arc<Context>,
    index: Arc<TargetIndex>,
    cache: Arc<StatusCache>,
    gate: Arc<CapabilityGate>,
}

fn rig(env: &Env) -> Rig {
    let (client, api) = MockApiServer::start();
    let cache = StatusCache::detached(Duration::from_secs(90));
    let index = Arc::new(TargetIndex::new());
    let gate = CapabilityGate::detached();
    let ctx = Context::new(
        client,
        env.nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    )
    .with_clock(Arc::new(|| T0_NS))
    .with_target_index(index.clone())
    .with_capability_gate(gate.clone());
    Rig {
        api,
        ctx: Arc::new(ctx),
        index,
        cache,
        gate,
    }
}

impl Rig {
    /// Reconciles `d` as the server holds it; returns the status patched, if any.
    async fn step(&self, d: &Deployment) -> (Action, Option<serde_json::Value>) {
        self.api.insert(d);
        let action = reconcile(Arc::new(d.clone()), self.ctx.clone())
            .await
            .unwrap();
        let status = self
            .api
            .take()
            .into_iter()
            .find(|r| r.path.ends_with("/status"))
            .map(|r| r.body["status"].clone());
        (action, status)
    }

    /// The current object, then reconciled.
    async fn again(&self) -> Option<serde_json::Value> {
        let d = self.api.get("default", "web").unwrap();
        self.step(&d).await.1
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `default/web` targeting `targets` and the Devices `selector` selects.
fn web_selecting(targets: &[&str], selector: serde_json::Value) -> Deployment {
    let mut d = web(targets, "nginx:1");
    d.spec.target_selector = Some(serde_json::from_value(selector).unwrap());
    d
}

async fn live(env: &Env, device: &str) -> bool {
    desired(&env.nats, device, "web")
        .await
        .is_some_and(|r| !r.deleted)
}

async fn live_set(env: &Env, devices: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for d in devices {
        if live(env, d).await {
            out.push(d.to_string());
        }
    }
    out
}

fn names(refs: Vec<DeploymentRef>) -> Vec<String> {
    let mut v: Vec<String> = refs
        .into_iter()
        .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
        .collect();
    v.sort();
    v
}

const ALL: [&str; 5] = ["pi-1", "pi-2", "pi-3", "pi-4", "flashed"];

#[tokio::test]
async fn selector_add_relabel_and_remove_follow_the_labels() {
    let Some(env) = nats_env().await else { return };
    let r = rig(&env);
    r.index.replace_all(vec![
        ("pi-1".into(), labels(&[("site", "lyon")])),
        ("pi-2".into(), labels(&[("site", "paris")])),
        (
            "pi-3".into(),
            labels(&[("site", "lyon"), ("board", "rpi4")]),
        ),
        ("pi-4".into(), labels(&[])),
    ]);

    // Names only, first: the flashed board without a Device object.
    let d = web(&["flashed"], "nginx:1");
    r.step(&d).await;
    assert_eq!(live_set(&env, &ALL).await, ["flashed"]);

    // Adding a selector adds the selected Devices.
    let mut d = r.api.get("default", "web").unwrap();
    d.spec.target_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"site": "lyon"}})).unwrap());
    d.metadata.generation = Some(2);
    let (_, status) = r.step(&d).await;
    assert_eq!(live_set(&env, &ALL).await, ["pi-1", "pi-3", "flashed"]);
    assert_eq!(
        status.unwrap()["targeted"],
        3,
        "status counts the resolved targets"
    );

    // pi-2 moves to lyon: the index names web, whose reconcile writes pi-2.
    let changed = r
        .index
        .set_device("pi-2", Some(labels(&[("site", "lyon")])));
    assert_eq!(names(changed), ["default/web"]);
    let status = r.again().await.unwrap();
    assert_eq!(status["targeted"], 4);
    assert_eq!(
        live_set(&env, &ALL).await,
        ["pi-1", "pi-2", "pi-3", "flashed"]
    );

    // pi-1 relabelled away: its key is removed, the others stay.
    let changed = r
        .index
        .set_device("pi-1", Some(labels(&[("site", "oslo")])));
    assert_eq!(names(changed), ["default/web"]);
    let status = r.again().await.unwrap();
    assert_eq!(status["targeted"], 3);
    assert_eq!(live_set(&env, &ALL).await, ["pi-2", "pi-3", "flashed"]);
    assert!(desired(&env.nats, "pi-1", "web").await.unwrap().deleted);

    // A label nobody selects: no Deployment to reconcile.
    assert!(
        r.index
            .set_device("pi-4", Some(labels(&[("board", "rpi5")])))
            .is_empty()
    );

    // An expression selector (no anchor: scanned).
    let mut d = r.api.get("default", "web").unwrap();
    d.spec.target_selector = Some(
        serde_json::from_value(
            json!({"matchExpressions": [{"key": "board", "operator": "Exists"}]}),
        )
        .unwrap(),
    );
    d.metadata.generation = Some(3);
    r.step(&d).await;
    assert_eq!(live_set(&env, &ALL).await, ["pi-3", "pi-4", "flashed"]);

    // Removing the selector keeps only the named device.
    let mut d = r.api.get("default", "web").unwrap();
    d.spec.target_selector = None;
    d.metadata.generation = Some(4);
    let (_, status) = r.step(&d).await;
    assert_eq!(live_set(&env, &ALL).await, ["flashed"]);
    assert_eq!(status.unwrap()["targeted"], 1);
    // ...and its selector no longer reacts to Device changes.
    assert!(
        r.index
            .set_device("pi-3", Some(labels(&[("board", "rpi5")])))
            .is_empty()
    );
}

#[tokio::test]
async fn a_deleted_device_loses_selector_keys_but_named_devices_keep_theirs() {
    let Some(env) = nats_env().await else { return };
    let r = rig(&env);
    r.index.replace_all(vec![
        ("pi-1".into(), labels(&[("site", "lyon")])),
        ("pi-2".into(), labels(&[("site", "lyon")])),
    ]);
    let d = web_selecting(&["pi-2"], json!({"matchLabels": {"site": "lyon"}}));
    r.step(&d).await;
    assert_eq!(live_set(&env, &ALL).await, ["pi-1", "pi-2"]);
    // Both Devices deleted: pi-1 was only selected, pi-2 is also named.
    assert_eq!(names(r.index.set_device("pi-1", None)), ["default/web"]);
    assert_eq!(names(r.index.set_device("pi-2", None)), ["default/web"]);
    let status = r.again().await.unwrap();
    assert_eq!(live_set(&env, &ALL).await, ["pi-2"]);
    assert_eq!(status["targeted"], 1);
    // Deleting the Deployment forgets its selector.
    let mut gone = r.api.get("default", "web").unwrap();
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    r.step(&gone).await;
    assert_eq!(live_set(&env, &ALL).await, Vec::<String>::new());
    assert!(
        r.index
            .set_device("pi-1", Some(labels(&[("site", "lyon")])))
            .is_empty()
    );
}

#[tokio::test]
async fn selectors_wait_for_the_device_list() {
    let Some(env) = nats_env().await else { return };
    let r = rig(&env);
    let seq = desired_seq(&env.client).await;
    let d = web_selecting(&["pi-9"], json!({"matchLabels": {"site": "lyon"}}));
    let (action, status) = r.step(&d).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(status, None, "no status before the targets are known");
    assert_eq!(
        desired_seq(&env.client).await,
        seq,
        "nothing written, nothing removed"
    );
    // The list arrives: the waiting Deployment is named.
    let listed = r
        .index
        .replace_all(vec![("pi-1".into(), labels(&[("site", "lyon")]))]);
    assert_eq!(names(listed), ["default/web"]);
    r.again().await;
    assert_eq!(live_set(&env, &["pi-1", "pi-9"]).await, ["pi-1", "pi-9"]);
}

fn heartbeat(caps: Capabilities<'static>) -> Vec<u8> {
    protocol::wire::encode_to_vec(&Heartbeat {
        agent_version: Text::borrowed("9.9.9"),
        capabilities: caps,
        ..Heartbeat::default()
    })
    .unwrap()
}

/// An agent that runs only `OtherV1`.
fn other_only() -> Capabilities<'static> {
    Capabilities {
        desired_state_versions: BoundedVec::try_from_iter([1]).unwrap(),
        score_types: BoundedVec::try_from_iter([ScoreTypeSupport {
            type_name: Text::borrowed("OtherV1"),
            versions: BoundedVec::try_from_iter([1]).unwrap(),
        }])
        .unwrap(),
    }
}

#[tokio::test]
async fn devices_that_cannot_read_the_score_are_held_back() {
    let Some(env) = nats_env().await else { return };
    let r = rig(&env);
    r.index.replace_all(Vec::new());
    // "v1": an agent of the first release (a version-1 heartbeat);
    // "v3": this build's; "odd": says it runs no PodmanV0; "silent": none.
    let v1 = protocol::wire::encode_to_vec(&Heartbeat {
        agent_version: Text::borrowed("0.1.0"),
        ..Heartbeat::default()
    })
    .unwrap();
    assert_eq!(v1[0], 1, "a first-release heartbeat");
    r.cache.ingest_heartbeat("v1", &v1, false, T0_NS);
    r.cache
        .ingest_heartbeat("v3", &heartbeat(Capabilities::this_build()), false, T0_NS);
    r.cache
        .ingest_heartbeat("odd", &heartbeat(other_only()), false, T0_NS);
    let d = web(&["v1", "v3", "odd", "silent"], "nginx:1");
    let (_, status) = r.step(&d).await;
    let status = status.unwrap();
    assert_eq!(
        live_set(&env, &["v1", "v3", "odd", "silent"]).await,
        ["v1", "v3", "silent"]
    );
    let rec = desired(&env.nats, "v1", "web").await.unwrap();
    let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert_eq!(value.score.type_name.as_str(), "PodmanV0");
    let odd = status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["device"] == "odd")
        .unwrap();
    assert_eq!(odd["phase"], "Unsupported");
    let message = odd["message"].as_str().unwrap();
    assert!(
        message.contains("agent 9.9.9 reads DesiredState format 1 and score types OtherV1 (format 1), not PodmanV0 format 1")
            && message.contains("update the agent"),
        "{message}"
    );
    assert_eq!(
        (status["targeted"].as_i64(), status["failed"].as_i64()),
        (Some(4), Some(1))
    );
    let recorded: BTreeMap<String, String> = r.gate.for_device("odd");
    assert_eq!(recorded.keys().collect::<Vec<_>>(), ["default/web"]);
    assert!(r.gate.for_device("v1").is_empty());

    // "v3" is downgraded to an agent that cannot read it: its key stays
    // (what it runs keeps running), nothing is written to it.
    r.cache
        .ingest_heartbeat("v3", &heartbeat(other_only()), false, T0_NS);
    let before = desired(&env.nats, "v3", "web").await.unwrap();
    let status = r.again().await.unwrap();
    assert_eq!(desired(&env.nats, "v3", "web").await.unwrap(), before);
    assert_eq!(status["failed"], 2);
    assert_eq!(r.gate.for_device("v3").len(), 1);

    // Updated: written again (same value, so unchanged) and released.
    r.cache
        .ingest_heartbeat("odd", &heartbeat(Capabilities::this_build()), false, T0_NS);
    r.again().await;
    assert!(live(&env, "odd").await);
    assert!(r.gate.for_device("odd").is_empty());

    // Deleting the Deployment clears what it held back.
    let mut gone = r.api.get("default", "web").unwrap();
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    r.step(&gone).await;
    assert!(r.gate.for_device("v3").is_empty());
}

/// `iot-operator apply` without a cluster applies the same gate, from the
/// heartbeats in NATS, and says what it held back.
#[tokio::test]
async fn the_cli_holds_back_too() {
    let Some(env) = nats_env().await else { return };
    let js = async_nats::jetstream::new(env.client.clone());
    js.publish(
        format!("$KV.{}.odd", protocol::keys::DEVICE_HEARTBEAT_BUCKET),
        heartbeat(other_only()).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(
        &file,
        "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  targetDevices: [odd, silent]\n  score: {type: PodmanV0, data: {containers: [{name: web, image: nginx:1}]}}\n",
    )
    .unwrap();
    let out = cli(
        &env.server.url(),
        None,
        &["apply", "-f", file.to_str().unwrap()],
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains("1 written") && stdout.contains("1 held back"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: default/web: device odd: held back: agent 9.9.9"),
        "{stderr}"
    );
    assert_eq!(live_set(&env, &["odd", "silent"]).await, ["silent"]);
}
