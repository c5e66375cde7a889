//! The real reconcile function, driven through a kube `Client` over a mock
//! API server that records every request, against a real nats-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kube::runtime::controller::Action;
use operator::crd::{Deployment, FINALIZER, revision_string};
use operator::status::StatusCache;
use operator::testing::{MockApiServer, deployment_path, events_path};
use operator::{Context, ControllerConfig, error_policy, reconcile};
use protocol::DesiredState;
use serde_json::json;

fn context(client: kube::Client, env: &Env, config: ControllerConfig) -> Arc<Context> {
    let cache = StatusCache::detached(Duration::from_secs(90));
    Arc::new(Context::new(client, env.nats.clone(), cache, config).with_clock(Arc::new(|| T0_NS)))
}

/// A fresh mock API server and a controller context on `env`'s NATS.
fn controller(env: &Env) -> (MockApiServer, Arc<Context>) {
    let (client, api) = MockApiServer::start();
    (api, context(client, env, ControllerConfig::default()))
}

/// Reconciles `d` and forgets the requests it made: the applied state the
/// later steps of a test start from.
async fn applied(api: &MockApiServer, ctx: &Arc<Context>, d: &Deployment) {
    step(api, ctx, d).await.unwrap();
    api.take();
}

/// Reconciles `d` as the server holds it after the call, like the
/// controller does on the next watch event.
async fn step(
    api: &MockApiServer,
    ctx: &Arc<Context>,
    d: &Deployment,
) -> Result<Action, operator::Error> {
    api.insert(d);
    reconcile(Arc::new(d.clone()), ctx.clone()).await
}

fn revision_of(d: &Deployment) -> u64 {
    operator::plan(d).unwrap().revision
}

fn cond<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn create_adds_the_finalizer_then_writes_and_patches_status() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d = deployment(
        "default",
        "hello-web",
        &["pi-2", "pi-1"],
        "PodmanV0",
        podman("nginx:1"),
    );
    let path = deployment_path("default", "hello-web");

    // First pass: only the finalizer, nothing in NATS yet.
    let action = step(&api, &ctx, &d).await.unwrap();
    assert_eq!(action, Action::await_change());
    let reqs = api.take();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].line(), format!("PATCH {path}"));
    assert_eq!(
        reqs[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        ])
    );
    assert!(desired(&env.nats, "pi-1", "hello-web").await.is_none());

    // Second pass: keys written, status patched, event posted.
    let d = api.get("default", "hello-web").unwrap();
    assert_eq!(
        d.metadata.finalizers.as_deref(),
        Some(&[FINALIZER.to_string()][..])
    );
    let action = step(&api, &ctx, &d).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let rev = revision_of(&d);
    let hex = revision_string(rev);
    let reqs = api.take();
    assert_eq!(lines(&reqs), status_patch_and_event("default", "hello-web"));
    let score_json = serde_json::to_string(&d.spec.score).unwrap();
    let c = |t: &str, s: &str, reason: &str, msg: &str| json!({"type": t, "status": s, "lastTransitionTime": T0, "observedGeneration": 1, "reason": reason, "message": msg});
    let unknown = |dev: &str| json!({"device": dev, "phase": "Unknown", "revision": null, "message": "no status reported yet", "lastReportTime": null});
    assert_eq!(
        reqs[0].body,
        json!({"status": {
            "observedGeneration": 1,
            "observedScoreString": score_json,
            "revision": hex,
            "conditions": [
                c("Ready", "False", "TargetsNotReady", "0/2 targets run the current revision"),
                c("Progressing", "True", "RollingOut", "0/2 targets report the current revision"),
                c("Degraded", "False", "Healthy", "no target failed, unhealthy or unreachable"),
                c("InvalidScore", "False", "ScoreValid", "the score is valid"),
                c("Conflict", "False", "NoConflict", "no other Deployment of this name targets these devices"),
                c("DeviceWarnings", "False", "NoDeviceWarnings", "no target reports a warning"),
            ],
            "devices": [unknown("pi-1"), unknown("pi-2")],
            "devicesOmitted": 0,
            "targeted": 2, "upToDate": 0, "ready": 0, "healthy": 0, "failed": 0, "waiting": 0
        }})
    );
    let ev = &reqs[1].body;
    assert_eq!(ev["type"], "Normal");
    assert_eq!(ev["reason"], "DesiredStateWritten");
    assert_eq!(
        ev["note"],
        format!("revision {hex}: 2 written, 0 unchanged, 0 removed")
    );
    assert_eq!(ev["regarding"]["name"], "hello-web");
    assert_eq!(ev["regarding"]["kind"], "Deployment");

    for dev in ["pi-1", "pi-2"] {
        let rec = desired(&env.nats, dev, "hello-web").await.unwrap();
        assert_eq!(rec.owner.as_deref(), Some("default/hello-web"));
        let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
        assert_eq!(value.revision, rev);
        assert_eq!(value.deployment.as_str(), "hello-web");
        assert_eq!(value.score.type_name.as_str(), "PodmanV0");
    }
    assert_eq!(
        ctx.metrics
            .kv_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn unchanged_spec_writes_nothing_and_patches_nothing() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d = web(&["a", "b"], "nginx:1");
    step(&api, &ctx, &d).await.unwrap();
    assert_eq!(api.take().len(), 2, "status patch and event");
    let seq = desired_seq(&env.client).await;

    // The controller sees the object with the status it just patched.
    let d = api.get("default", "web").unwrap();
    assert!(d.status.is_some());
    for _ in 0..3 {
        step(&api, &ctx, &d).await.unwrap();
    }
    assert_eq!(api.take(), vec![], "no status churn, no events");
    assert_eq!(desired_seq(&env.client).await, seq, "zero KV writes");
    let scans = |c: &Context| {
        c.metrics
            .kv_scans
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        scans(&ctx),
        1,
        "unchanged plans are not re-read within the resync period"
    );

    // With the keys re-read every time, still nothing is written.
    let (client, api2) = MockApiServer::start();
    let config = ControllerConfig {
        resync: Duration::ZERO,
        ..ControllerConfig::default()
    };
    let eager = context(client, &env, config);
    for _ in 0..2 {
        step(&api2, &eager, &d).await.unwrap();
    }
    assert_eq!(scans(&eager), 2);
    assert_eq!(api2.take(), vec![]);
    assert_eq!(desired_seq(&env.client).await, seq, "zero KV writes");
}

#[tokio::test]
async fn updated_score_writes_a_new_revision() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d1 = web(&["a"], "nginx:1");
    applied(&api, &ctx, &d1).await;
    let mut d2 = api.get("default", "web").unwrap();
    d2.spec.score.data = podman("nginx:2");
    d2.metadata.generation = Some(2);
    let (r1, r2) = (revision_of(&d1), revision_of(&d2));
    assert_ne!(r1, r2);
    step(&api, &ctx, &d2).await.unwrap();
    let reqs = api.take();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let status = &reqs[0].body["status"];
    assert_eq!(status["revision"], revision_string(r2));
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        status["observedScoreString"],
        serde_json::to_string(&d2.spec.score).unwrap()
    );
    assert_eq!(
        reqs[1].body["note"],
        format!(
            "revision {}: 1 written, 0 unchanged, 0 removed",
            revision_string(r2)
        )
    );
    let rec = desired(&env.nats, "a", "web").await.unwrap();
    let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert_eq!(value.revision, r2);
}

/// The revision is the score's hash; a change of `spec.rollout` alone keeps
/// it, yet reaches the devices at once, not at the next resync.
#[tokio::test]
async fn a_rollout_policy_change_alone_is_written_at_once() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d1 = web(&["a"], "nginx:1");
    applied(&api, &ctx, &d1).await;
    let mut d2 = api.get("default", "web").unwrap();
    d2.spec.rollout.auto_rollback = true;
    d2.metadata.generation = Some(2);
    assert_eq!(revision_of(&d1), revision_of(&d2));
    step(&api, &ctx, &d2).await.unwrap();
    let rec = desired(&env.nats, "a", "web").await.unwrap();
    let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert!(
        value.rollout.auto_rollback,
        "the new policy was not written"
    );
    assert_eq!(rec.value[0], protocol::wire::FORMAT_VERSION_2);
}

#[tokio::test]
async fn removed_target_loses_its_key_only() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d = web(&["a", "b"], "nginx:1");
    applied(&api, &ctx, &d).await;
    let mut d = api.get("default", "web").unwrap();
    d.spec.target_devices = vec!["a".into()];
    d.metadata.generation = Some(2);
    step(&api, &ctx, &d).await.unwrap();
    let reqs = api.take();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let status = &reqs[0].body["status"];
    assert_eq!(status["targeted"], 1);
    assert_eq!(status["devices"].as_array().unwrap().len(), 1);
    assert_eq!(
        reqs[1].body["note"],
        format!(
            "revision {}: 0 written, 1 unchanged, 1 removed",
            revision_string(revision_of(&d))
        )
    );
    assert!(desired(&env.nats, "b", "web").await.unwrap().deleted);
    assert!(!desired(&env.nats, "a", "web").await.unwrap().deleted);
}

#[tokio::test]
async fn invalid_score_sets_the_condition_and_writes_nothing() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let bad = json!({"containers": [{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 0}]}]});
    let d = with_finalizer(deployment("default", "web", &["a"], "PodmanV0", bad));
    let seq = desired_seq(&env.client).await;
    let action = step(&api, &ctx, &d).await.unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "a bad spec waits for a change"
    );
    assert_eq!(desired_seq(&env.client).await, seq, "nothing written");
    let reqs = api.take();
    assert_eq!(lines(&reqs), status_patch_and_event("default", "web"));
    let status = &reqs[0].body["status"];
    let invalid = cond(status, "InvalidScore");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "ScoreRejected");
    let msg = invalid["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.score.data.containers[0].ports[0].containerPort: "),
        "{msg}"
    );
    assert_eq!(status["revision"], serde_json::Value::Null);
    assert_eq!(reqs[1].body["type"], "Warning");
    assert_eq!(reqs[1].body["reason"], "InvalidScore");
    assert_eq!(reqs[1].body["note"], msg);

    // Unchanged bad spec: no new event, no patch.
    let d = api.get("default", "web").unwrap();
    step(&api, &ctx, &d).await.unwrap();
    assert_eq!(api.take(), vec![]);
}

#[tokio::test]
async fn unknown_score_type_is_routed_with_a_warning() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d = with_finalizer(deployment(
        "default",
        "web",
        &["a"],
        "PdomanV0",
        json!({"anything": [1, 2]}),
    ));
    step(&api, &ctx, &d).await.unwrap();
    let reqs = api.take();
    let reasons: Vec<&str> = reqs[1..]
        .iter()
        .map(|r| r.body["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["DesiredStateWritten", "UnknownScoreType"]);
    let c = cond(&reqs[0].body["status"], "UnknownScoreType");
    assert_eq!(c["status"], "True");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `PodmanV0`?"),
        "{c}"
    );
    let rec = desired(&env.nats, "a", "web").await.unwrap();
    let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert_eq!(value.score.encoding, protocol::PayloadEncoding::Json);
    assert_eq!(&value.score.data[..], br#"{"anything":[1,2]}"#);
}

#[tokio::test]
async fn same_name_in_another_namespace_conflicts_on_shared_devices() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let first = with_finalizer(deployment(
        "team-a",
        "web",
        &["shared", "a-only"],
        "PodmanV0",
        podman("nginx:1"),
    ));
    applied(&api, &ctx, &first).await;
    let first_value = desired(&env.nats, "shared", "web").await.unwrap();

    let second = with_finalizer(deployment(
        "team-b",
        "web",
        &["shared", "b-only"],
        "PodmanV0",
        podman("nginx:2"),
    ));
    step(&api, &ctx, &second).await.unwrap();
    let reqs = api.take();
    assert_eq!(
        lines(&reqs),
        [
            format!("PATCH {}/status", deployment_path("team-b", "web")),
            format!("POST {}", events_path("team-b")),
            format!("POST {}", events_path("team-b")),
        ]
    );
    let status = &reqs[0].body["status"];
    let c = cond(status, "Conflict");
    assert_eq!(c["status"], "True");
    assert!(c["message"].as_str().unwrap().contains("team-a/web"), "{c}");
    let shared = status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "shared")
        .unwrap();
    assert_eq!(shared["phase"], "Conflict");
    assert_eq!(reqs[2].body["reason"], "Conflict");
    // The first owner's key is untouched; the second wrote its own device.
    assert_eq!(
        desired(&env.nats, "shared", "web").await.unwrap(),
        first_value
    );
    assert_eq!(
        desired(&env.nats, "b-only", "web")
            .await
            .unwrap()
            .owner
            .as_deref(),
        Some("team-b/web")
    );

    // Deleting the second leaves the first's keys alone.
    let gone = deleting(api.get("team-b", "web").unwrap());
    step(&api, &ctx, &gone).await.unwrap();
    assert!(desired(&env.nats, "b-only", "web").await.unwrap().deleted);
    assert_eq!(
        desired(&env.nats, "shared", "web").await.unwrap(),
        first_value
    );
    assert!(!desired(&env.nats, "a-only", "web").await.unwrap().deleted);
}

fn deleting(mut d: Deployment) -> Deployment {
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    d
}

#[tokio::test]
async fn delete_removes_keys_then_the_finalizer() {
    let Some(env) = nats_env().await else { return };
    let (api, ctx) = controller(&env);
    let d = web(&["a", "b"], "nginx:1");
    applied(&api, &ctx, &d).await;
    let d = deleting(api.get("default", "web").unwrap());
    let action = step(&api, &ctx, &d).await.unwrap();
    assert_eq!(action, Action::await_change());
    let reqs = api.take();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].line(),
        format!("PATCH {}", deployment_path("default", "web"))
    );
    assert_eq!(
        reqs[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ])
    );
    for dev in ["a", "b"] {
        assert!(
            desired(&env.nats, dev, "web").await.unwrap().deleted,
            "{dev}"
        );
    }
    // Idempotent: a repeated cleanup writes nothing more.
    let seq = desired_seq(&env.client).await;
    let again = deleting(web(&["a", "b"], "nginx:1"));
    step(&api, &ctx, &again).await.unwrap();
    assert_eq!(desired_seq(&env.client).await, seq);
}

#[tokio::test]
async fn delete_with_nats_down_keeps_the_finalizer() {
    let Some(mut env) = nats_env().await else {
        return;
    };
    let (api, ctx) = controller(&env);
    let d = web(&["a"], "nginx:1");
    applied(&api, &ctx, &d).await;
    let d = deleting(api.get("default", "web").unwrap());
    env.server.stop();
    let err = step(&api, &ctx, &d).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(api.take(), vec![], "the finalizer stays");
    let first = error_policy(Arc::new(d.clone()), &err, ctx.clone());
    let second = error_policy(Arc::new(d.clone()), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)), "backs off");

    // NATS back: the retry removes the key and releases the finalizer.
    env.server.restart();
    let ok = testkit::wait_until_async(Duration::from_secs(20), || async {
        reconcile(Arc::new(d.clone()), ctx.clone()).await.is_ok()
    })
    .await;
    assert!(ok, "cleanup did not succeed after NATS came back");
    let reqs = api.take();
    let last = reqs.last().unwrap();
    assert_eq!(
        last.line(),
        format!("PATCH {}", deployment_path("default", "web"))
    );
    assert_eq!(last.body[1]["op"], "remove");
    assert!(desired(&env.nats, "a", "web").await.unwrap().deleted);
}
