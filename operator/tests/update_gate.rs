//! Update locks, maintenance windows and force through the real reconcile,
//! a mock API server and a real nats-server: what each device's key holds
//! (the Deployment's gate, or the Device's own windows), who is held back
//! for not reading DesiredState format 4, and the force header on deletes.
//! Device objects reach the index the way the Device watch feeds it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use kube::runtime::watcher;
use operator::crd::device::DeviceMaintenance;
use operator::crd::{
    Deployment, Device, DeviceSpec, MaintenanceWindowSpec, OnLockTimeout, RolloutStrategy,
    UpdateLock,
};
use operator::status::StatusCache;
use operator::targeting::TargetIndex;
use operator::targeting::watch::{DeviceChange, Relist, take_event};
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::kv::{FORCE_HEADER, FORCE_VALUE, OPERATION_HEADER};
use protocol::{BoundedVec, Capabilities, DesiredState, Heartbeat, LockTimeout, Text};

struct Rig {
    env: Env,
    api: MockApiServer,
    ctx: Arc<Context>,
    index: Arc<TargetIndex>,
    cache: Arc<StatusCache>,
    relist: Option<Relist>,
}

async fn rig() -> Option<Rig> {
    let env = nats_env().await?;
    let (client, api) = MockApiServer::start();
    let cache = StatusCache::detached(Duration::from_secs(90));
    let index = Arc::new(TargetIndex::new());
    let ctx = Context::new(
        client,
        env.nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    )
    .with_clock(Arc::new(|| T0_NS))
    .with_target_index(index.clone());
    Some(Rig {
        env,
        api,
        ctx: Arc::new(ctx),
        index,
        cache,
        relist: None,
    })
}

fn window(at: &str, tz: &str, duration: &str) -> MaintenanceWindowSpec {
    MaintenanceWindowSpec {
        at: at.into(),
        time_zone: tz.into(),
        duration: duration.into(),
    }
}

fn device(name: &str, windows: Vec<MaintenanceWindowSpec>) -> Device {
    let spec = DeviceSpec {
        maintenance: (!windows.is_empty()).then_some(DeviceMaintenance { windows }),
        ..Default::default()
    };
    Device::new(name, spec)
}

impl Rig {
    /// The Device watch's first list.
    fn list(&mut self, devices: Vec<Device>) -> Vec<DeviceChange> {
        take_event(&self.index, &mut self.relist, watcher::Event::Init);
        for d in devices {
            take_event(&self.index, &mut self.relist, watcher::Event::InitApply(d));
        }
        take_event(&self.index, &mut self.relist, watcher::Event::InitDone)
    }

    /// A Device edited.
    fn edit(&mut self, d: Device) -> Vec<DeviceChange> {
        take_event(&self.index, &mut self.relist, watcher::Event::Apply(d))
    }

    /// Reconciles `d` as the server holds it; returns the status patched, if any.
    async fn step(&self, d: &Deployment) -> Option<serde_json::Value> {
        self.api.insert(d);
        reconcile(Arc::new(d.clone()), self.ctx.clone())
            .await
            .unwrap();
        self.api
            .take()
            .into_iter()
            .find(|r| r.path.ends_with("/status"))
            .map(|r| r.body["status"].clone())
    }

    /// The current object, reconciled again.
    async fn again(&self, name: &str) -> Option<serde_json::Value> {
        let d = self.api.get("default", name).unwrap();
        self.step(&d).await
    }

    /// The value of `device`'s key for `name`, decoded; `None` when absent
    /// or deleted.
    async fn value(&self, device: &str, name: &str) -> Option<DesiredState<'static>> {
        let rec = desired(&self.env.nats, device, name)
            .await
            .filter(|r| !r.deleted)?;
        Some(
            protocol::wire::decode::<DesiredState<'_>>(&rec.value)
                .unwrap()
                .into_owned(),
        )
    }

    async fn seq(&self) -> u64 {
        desired_seq(&self.env.client).await
    }
}

/// `(at, timeZone, seconds)` of each window of a value.
fn windows_of(v: &DesiredState<'_>) -> Vec<(String, String, u32)> {
    v.gate
        .windows
        .iter()
        .map(|w| {
            (
                w.at.as_str().to_string(),
                w.time_zone.as_str().to_string(),
                w.duration_seconds,
            )
        })
        .collect()
}

fn paris() -> (String, String, u32) {
    ("0 2 * * *".into(), "Europe/Paris".into(), 7200)
}

/// `default/kiosk` on `targets`, updated only 02:00-04:00 Paris time and
/// honouring the update lock.
fn kiosk(targets: &[&str]) -> Deployment {
    let mut d = with_finalizer(deployment(
        "default",
        "kiosk",
        targets,
        "PodmanV1",
        podman("kiosk:1"),
    ));
    d.spec.rollout.maintenance_windows = vec![window("0 2 * * *", "Europe/Paris", "2h")];
    d.spec.rollout.update_lock = Some(UpdateLock {
        timeout_seconds: 600,
        on_timeout: OnLockTimeout::Force,
    });
    d
}

#[tokio::test]
async fn windows_reach_each_device_and_a_devices_own_win() {
    let Some(mut r) = rig().await else { return };
    let lisbon = || vec![window("30 3 * * SAT,SUN", "Europe/Lisbon", "90m")];
    let changes = r.list(vec![device("pi-1", lisbon()), device("pi-2", vec![])]);
    assert!(
        matches!(&changes[..], [DeviceChange::Windows { device, .. }] if device == "pi-1"),
        "{changes:?}"
    );
    // pi-3 has no Device object: the Deployment's windows.
    let d = kiosk(&["pi-1", "pi-2", "pi-3"]);
    r.step(&d).await.unwrap();
    let revision = operator::plan(&d).unwrap().revision;
    for dev in ["pi-2", "pi-3"] {
        let v = r.value(dev, "kiosk").await.unwrap();
        assert_eq!(v.format_version(), 4, "{dev}");
        assert_eq!(v.revision, revision);
        assert_eq!(windows_of(&v), [paris()], "{dev}");
        assert_eq!(
            v.gate.update_lock,
            Some(protocol::UpdateLockPolicy {
                timeout_seconds: 600,
                on_timeout: LockTimeout::Force
            })
        );
        assert!(!v.gate.force);
    }
    let own = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!(own.revision, revision, "the same revision");
    assert_eq!(
        windows_of(&own),
        [(
            "30 3 * * SAT,SUN".to_string(),
            "Europe/Lisbon".to_string(),
            5400
        )]
    );
    assert!(
        own.gate.update_lock.is_some(),
        "the lock is the Deployment's"
    );

    // Nothing changed: nothing written.
    let before = r.seq().await;
    r.again("kiosk").await;
    assert_eq!(r.seq().await, before);

    // pi-1's windows change: the watch says so, and only its key is
    // rewritten.
    let changes = r.edit(device("pi-1", vec![window("0 4 * * *", "UTC", "1h")]));
    assert!(
        matches!(&changes[..], [DeviceChange::Windows { device, windows }] if device == "pi-1" && windows.len() == 1),
        "{changes:?}"
    );
    let pi2 = desired(&r.env.nats, "pi-2", "kiosk").await.unwrap();
    r.again("kiosk").await;
    assert_eq!(r.seq().await, before + 1, "one key rewritten");
    let own = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!(
        windows_of(&own),
        [("0 4 * * *".to_string(), "UTC".to_string(), 3600)]
    );
    let pi2_after = desired(&r.env.nats, "pi-2", "kiosk").await.unwrap();
    assert_eq!(pi2_after.stored_at_ns, pi2.stored_at_ns, "pi-2 untouched");

    // Invalid windows on pi-1: its key keeps what it holds.
    let changes = r.edit(device(
        "pi-1",
        vec![window("0 2 * * *", "Mars/Olympus", "1h")],
    ));
    assert_eq!(changes.len(), 1);
    let before = r.seq().await;
    r.again("kiosk").await;
    assert_eq!(r.seq().await, before, "nothing written");
    assert_eq!(
        windows_of(&r.value("pi-1", "kiosk").await.unwrap()),
        [("0 4 * * *".to_string(), "UTC".to_string(), 3600)]
    );
    // A new revision meanwhile reaches the others, not pi-1.
    let mut d = r.api.get("default", "kiosk").unwrap();
    d.spec.score.data = podman("kiosk:2");
    r.step(&d).await;
    let new = operator::plan(&d).unwrap().revision;
    assert_eq!(r.value("pi-2", "kiosk").await.unwrap().revision, new);
    assert_eq!(r.value("pi-1", "kiosk").await.unwrap().revision, revision);

    // Windows removed from the Device: the Deployment's apply to pi-1.
    r.edit(device("pi-1", vec![]));
    r.again("kiosk").await;
    let v = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!((v.revision, windows_of(&v)), (new, vec![paris()]));
}

#[tokio::test]
async fn batch_sequence_writes_each_device_its_own_value() {
    let Some(mut r) = rig().await else { return };
    r.list(vec![device("pi-1", vec![window("0 3 * * *", "UTC", "1h")])]);
    let mut d = kiosk(&["pi-1", "pi-2"]);
    d.spec.rollout.strategy = RolloutStrategy::BatchSequence;
    r.step(&d).await;
    assert_eq!(
        windows_of(&r.value("pi-1", "kiosk").await.unwrap()),
        [("0 3 * * *".to_string(), "UTC".to_string(), 3600)]
    );
    assert_eq!(
        windows_of(&r.value("pi-2", "kiosk").await.unwrap()),
        [paris()]
    );
    // New windows on pi-1: its key is refreshed at once, the same revision.
    r.edit(device("pi-1", vec![window("0 5 * * *", "UTC", "1h")]));
    let before = r.seq().await;
    r.again("kiosk").await;
    assert_eq!(r.seq().await, before + 1);
    let v = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!(
        windows_of(&v),
        [("0 5 * * *".to_string(), "UTC".to_string(), 3600)]
    );
    assert_eq!(v.revision, operator::plan(&d).unwrap().revision);
}

fn heartbeat(desired_state_versions: &[u8]) -> Vec<u8> {
    let mut caps = Capabilities::this_build();
    caps.desired_state_versions =
        BoundedVec::try_from_iter(desired_state_versions.iter().copied()).unwrap();
    protocol::wire::encode_to_vec(&Heartbeat {
        agent_version: Text::borrowed("0.3.0"),
        capabilities: caps,
        ..Heartbeat::default()
    })
    .unwrap()
}

#[tokio::test]
async fn an_agent_that_cannot_read_format_4_is_held_back() {
    let Some(mut r) = rig().await else { return };
    // "own": an old agent whose Device has windows; "old" an old agent,
    // "new" this build's.
    r.list(vec![device("own", vec![window("0 3 * * *", "UTC", "1h")])]);
    r.cache
        .ingest_heartbeat("new", &heartbeat(&[1, 2, 3, 4]), false, T0_NS);
    r.cache
        .ingest_heartbeat("old", &heartbeat(&[1, 2, 3]), false, T0_NS);
    r.cache
        .ingest_heartbeat("own", &heartbeat(&[1, 2, 3]), false, T0_NS);
    // No gate on the Deployment: only the Device with windows needs 4.
    let plain = with_finalizer(deployment(
        "default",
        "web",
        &["new", "old", "own"],
        "PodmanV1",
        podman("nginx:1"),
    ));
    let status = r.step(&plain).await.unwrap();
    assert_eq!(r.value("new", "web").await.unwrap().format_version(), 1);
    assert_eq!(r.value("old", "web").await.unwrap().format_version(), 1);
    assert!(r.value("own", "web").await.is_none(), "held back");
    let entry = |status: &serde_json::Value, dev: &str| {
        status["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["device"] == dev)
            .cloned()
            .unwrap_or_else(|| panic!("{dev} not in {status}"))
    };
    let own = entry(&status, "own");
    assert_eq!(own["phase"], "Unsupported");
    let message = own["message"].as_str().unwrap();
    assert!(
        message.contains(
            "agent 0.3.0 reads DesiredState format 1, 2, 3 and cannot receive an update gate"
        ) && message.contains("needs format 4; update the agent"),
        "{message}"
    );
    // A gate on the Deployment: every old agent is held back, and what it
    // ran before stays.
    let mut gated = r.api.get("default", "web").unwrap();
    gated.spec.rollout.update_lock = Some(UpdateLock::default());
    let status = r.step(&gated).await.unwrap();
    assert_eq!(r.value("new", "web").await.unwrap().format_version(), 4);
    let old = r.value("old", "web").await.unwrap();
    assert_eq!(old.format_version(), 1, "its key is not written");
    assert_eq!(entry(&status, "old")["phase"], "Unsupported");
}

/// The force header of the last record of `device`'s key, and its operation.
async fn delete_headers(env: &Env, device: &str, name: &str) -> (Option<String>, Option<String>) {
    let js = jetstream::new(env.client.clone());
    let stream = js.get_stream("KV_desired-state").await.unwrap();
    let m = stream
        .get_last_raw_message_by_subject(&format!("$KV.desired-state.{device}.{name}"))
        .await
        .unwrap();
    let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
    (header(OPERATION_HEADER), header(FORCE_HEADER))
}

fn deleting(mut d: Deployment) -> Deployment {
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    d
}

#[tokio::test]
async fn deletes_carry_the_force_header_only_when_forced() {
    let Some(mut r) = rig().await else { return };
    r.list(vec![]);
    let del = Some("DEL".to_string());
    let forced = Some(FORCE_VALUE.to_string());
    // Not forced: a target dropped, then the Deployment deleted.
    let d = kiosk(&["a", "b"]);
    r.step(&d).await;
    let mut d = r.api.get("default", "kiosk").unwrap();
    d.spec.target_devices = vec!["a".into()];
    r.step(&d).await;
    assert_eq!(
        delete_headers(&r.env, "b", "kiosk").await,
        (del.clone(), None)
    );
    r.step(&deleting(r.api.get("default", "kiosk").unwrap()))
        .await;
    assert_eq!(
        delete_headers(&r.env, "a", "kiosk").await,
        (del.clone(), None)
    );

    // Forced: the same, each delete with Iot-Force: true.
    let mut d = kiosk(&["c", "e"]);
    d.metadata.name = Some("urgent".into());
    d.spec.rollout.force = true;
    r.step(&d).await;
    let v = r.value("c", "urgent").await.unwrap();
    assert!(v.gate.force, "the value says so too");
    let mut d = r.api.get("default", "urgent").unwrap();
    d.spec.target_devices = vec!["c".into()];
    r.step(&d).await;
    assert_eq!(
        delete_headers(&r.env, "e", "urgent").await,
        (del.clone(), forced.clone())
    );
    r.step(&deleting(r.api.get("default", "urgent").unwrap()))
        .await;
    assert!(r.value("c", "urgent").await.is_none());
    assert_eq!(delete_headers(&r.env, "c", "urgent").await, (del, forced));
}

/// `d` with strategy BatchSequence.
fn batches(mut d: Deployment) -> Deployment {
    d.spec.rollout.strategy = RolloutStrategy::BatchSequence;
    d
}

#[tokio::test]
async fn a_rollout_does_not_refresh_the_key_of_a_held_device() {
    let Some(mut r) = rig().await else { return };
    r.list(vec![device("old", vec![]), device("new", vec![])]);
    r.cache
        .ingest_heartbeat("old", &heartbeat(&[1, 2, 3]), false, T0_NS);
    r.cache
        .ingest_heartbeat("new", &heartbeat(&[1, 2, 3, 4]), false, T0_NS);
    let d = batches(with_finalizer(deployment(
        "default",
        "web",
        &["new", "old"],
        "PodmanV1",
        podman("nginx:1"),
    )));
    r.step(&d).await;
    let before = desired(&r.env.nats, "old", "web").await.unwrap();
    assert_eq!(r.value("old", "web").await.unwrap().format_version(), 1);
    // The owner gives old's Device windows: its value would be format 4,
    // which its agent cannot read. Its key is left as it is.
    r.edit(device("old", vec![window("0 3 * * *", "UTC", "1h")]));
    r.again("web").await;
    let after = desired(&r.env.nats, "old", "web").await.unwrap();
    assert_eq!(after.stored_at_ns, before.stored_at_ns, "not rewritten");
    assert_eq!(r.value("old", "web").await.unwrap().format_version(), 1);
    // And windows on the Deployment: the same.
    let mut gated = r.api.get("default", "web").unwrap();
    gated.spec.rollout.maintenance_windows = vec![window("0 2 * * *", "Europe/Paris", "2h")];
    r.step(&gated).await;
    assert_eq!(r.value("new", "web").await.unwrap().format_version(), 4);
    let after = desired(&r.env.nats, "old", "web").await.unwrap();
    assert_eq!(after.stored_at_ns, before.stored_at_ns, "not rewritten");
}

#[tokio::test]
async fn a_device_with_bad_windows_holds_a_rollout_without_failing_it() {
    let Some(mut r) = rig().await else { return };
    let bad = || vec![window("0 2 * * *", "Mars/Olympus", "1h")];
    r.list(vec![device("pi-1", bad())]);
    let d = batches(kiosk(&["pi-1", "pi-2"]));
    let s = r.step(&d).await.unwrap();
    assert!(r.value("pi-1", "kiosk").await.is_none(), "not written");
    assert!(r.value("pi-2", "kiosk").await.is_some());
    let ro = &s["rollout"];
    assert_eq!(ro["phase"], "Progressing", "{s}");
    assert_eq!(ro["failed"], 0, "{s}");
    assert!(ro["lastBatch"].is_null(), "{s}");
    let pi1 = s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["device"] == "pi-1")
        .unwrap_or_else(|| panic!("pi-1 not listed: {s}"));
    assert_ne!(pi1["phase"], "Unsupported", "{pi1}");
    let message = pi1["message"].as_str().unwrap();
    assert!(
        message.starts_with("Device pi-1: spec.maintenance.windows[0].timeZone"),
        "{message}"
    );
    let warn = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DeviceWarnings")
        .unwrap();
    assert_eq!(warn["status"], "True", "{warn}");
    // Fixed: it is written.
    r.edit(device("pi-1", vec![window("0 3 * * *", "UTC", "1h")]));
    r.again("kiosk").await;
    assert!(r.value("pi-1", "kiosk").await.is_some());
}

fn terminating(mut d: Device) -> Device {
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap(),
    ));
    d
}

#[tokio::test]
async fn the_keys_of_a_device_being_deleted_are_not_written_again() {
    let Some(mut r) = rig().await else { return };
    let lisbon = || vec![window("30 3 * * SAT,SUN", "Europe/Lisbon", "90m")];
    r.list(vec![device("pi-1", lisbon())]);
    let d = kiosk(&["pi-1", "pi-2"]);
    r.step(&d).await;
    let revision = operator::plan(&d).unwrap().revision;
    let lisbon_wire = windows_of(&r.value("pi-1", "kiosk").await.unwrap());
    // Its Device is being deleted: nothing to reconcile, and a reconcile
    // (any other reason) leaves its key as it is.
    let changes = r.edit(terminating(device("pi-1", lisbon())));
    assert!(changes.is_empty(), "{changes:?}");
    let before = r.seq().await;
    r.again("kiosk").await;
    assert_eq!(r.seq().await, before, "nothing written");
    // A new revision reaches pi-2, not pi-1.
    let mut d = r.api.get("default", "kiosk").unwrap();
    d.spec.score.data = podman("kiosk:2");
    r.step(&d).await;
    let new = operator::plan(&d).unwrap().revision;
    assert_eq!(r.value("pi-2", "kiosk").await.unwrap().revision, new);
    let v = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!((v.revision, windows_of(&v)), (revision, lisbon_wire));
    // Gone: the Deployments naming it hear of it, and write it as a
    // device without a Device object.
    let changes = take_event(
        &r.index,
        &mut r.relist,
        watcher::Event::Delete(device("pi-1", lisbon())),
    );
    assert!(
        matches!(&changes[..], [DeviceChange::Windows { device, .. }] if device == "pi-1"),
        "{changes:?}"
    );
    r.again("kiosk").await;
    let v = r.value("pi-1", "kiosk").await.unwrap();
    assert_eq!((v.revision, windows_of(&v)), (new, vec![paris()]));
}

/// A report of `device` for `kiosk`, stored now.
fn report(r: &Rig, device: &str, revision: u64, phase: protocol::Phase, reason: protocol::Reason) {
    let value = protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::borrowed(""),
        timestamp_ms: 0,
        reason,
        running_revision: None,
        waiting: None,
    })
    .unwrap();
    r.cache.ingest_status(
        &format!("{device}.kiosk"),
        &value,
        false,
        operator::status::now_ns(),
    );
}

#[tokio::test]
async fn a_failure_stands_when_new_windows_refresh_the_key() {
    let Some(mut r) = rig().await else { return };
    r.list(vec![]);
    let mut d = batches(kiosk(&["a", "b"]));
    d.spec.rollout.success_threshold = 50;
    r.step(&d).await;
    let revision = operator::plan(&d).unwrap().revision;
    report(
        &r,
        "a",
        revision,
        protocol::Phase::Failed,
        protocol::Reason::UpdateLockTimeout,
    );
    report(
        &r,
        "b",
        revision,
        protocol::Phase::Healthy,
        protocol::Reason::None,
    );
    let s = r.again("kiosk").await.unwrap();
    assert_eq!(s["rollout"]["failed"], 1, "{s}");
    // New windows on the Deployment: both keys are refreshed, the same
    // revision and attempt; a does not try again, its failure stands.
    let before = r.seq().await;
    let mut d = r.api.get("default", "kiosk").unwrap();
    d.spec.rollout.maintenance_windows = vec![window("0 4 * * *", "UTC", "1h")];
    r.step(&d).await;
    assert_eq!(r.seq().await, before + 2, "both refreshed");
    let s = r.again("kiosk").await.unwrap_or_else(|| {
        serde_json::to_value(r.api.get("default", "kiosk").unwrap().status).unwrap()
    });
    assert_eq!(
        (&s["rollout"]["failed"], &s["rollout"]["waiting"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{s}"
    );
}
