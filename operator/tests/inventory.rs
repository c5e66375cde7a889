//! The inventory's controller (`operator::inventory::run`) against a real
//! nats-server and a real kube-apiserver (`testkit::kube`, binaries from
//! `KUBEBUILDER_ASSETS`; the mocked API server of `operator::testing`
//! knows only Deployments): a board's first heartbeat creates its Device;
//! board and administrator labels merge as documented; deleting a Device
//! decommissions the board; a steady heartbeat stream costs no writes.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::apiserver::{eventually, install_crds};
use common::{Env, desired, nats_env, put_status};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use operator::capability_gate::CapabilityGate;
use operator::crd::Device;
use operator::crd::device::{BOARD_LABELS_ANNOTATION, DEVICE_FINALIZER};
use operator::inventory::{Inventory, InventoryConfig};
use operator::metrics::Metrics;
use operator::nats::KvWrite;
use operator::status::StatusCache;
use protocol::keys::{DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET};
use protocol::{Capabilities, Heartbeat, Phase, Text};
use serde_json::json;
use testkit::kube::KubeApiServer;

/// What a board says in one heartbeat.
#[derive(Clone, Default)]
struct Board<'a> {
    uptime: u64,
    labels: &'a [(&'a str, &'a str)],
    warning: Option<&'a str>,
    agent: &'a str,
}

/// Writes a heartbeat (format version 3) as the agent does.
async fn heartbeat(client: &async_nats::Client, device: &str, b: &Board<'_>) {
    let mut hb = Heartbeat {
        agent_version: Text::borrowed(if b.agent.is_empty() { "0.3.0" } else { b.agent }),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        kernel: Text::borrowed("6.1.0-rpi"),
        boot_id: Text::borrowed("b-1"),
        uptime_secs: b.uptime,
        capabilities: Capabilities::this_build(),
        ..Heartbeat::default()
    };
    for (k, v) in b.labels {
        hb.labels
            .insert(Text::borrowed(k), Text::borrowed(v))
            .unwrap();
    }
    if let Some(w) = b.warning {
        hb.warnings.push(Text::borrowed(w)).unwrap();
    }
    common::publish_heartbeat(client, device, &hb).await;
}

struct Fleet {
    env: Env,
    // Dropped last: stops etcd and kube-apiserver.
    _server: KubeApiServer,
    client: Client,
    metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    fn api(&self) -> Api<Device> {
        Api::all(self.client.clone())
    }

    fn writes(&self) -> (u64, u64, u64) {
        let m = &self.metrics;
        (
            m.device_creates.load(Ordering::Relaxed),
            m.device_status_patches.load(Ordering::Relaxed),
            m.device_metadata_patches.load(Ordering::Relaxed),
        )
    }

    /// The Device as JSON once `pred` holds for it.
    async fn device_where(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let api = self.api();
        eventually(what, || async {
            let d = api.get_opt(name).await.map_err(|e| e.to_string())?;
            let v = serde_json::to_value(&d).unwrap();
            if pred(&v) { Ok(v) } else { Err(v.to_string()) }
        })
        .await
    }
}

async fn start(config: InventoryConfig) -> Option<Fleet> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let env = nats_env().await?;
    let server = KubeApiServer::start().await?;
    let client = server.client().await;
    install_crds(&server).await;
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let (gate, gate_changes) = CapabilityGate::new();
    let metrics = Arc::new(Metrics::default());
    let inventory = Arc::new(Inventory::new(
        client.clone(),
        env.nats.clone(),
        cache,
        gate,
        metrics.clone(),
        config,
    ));
    let run = tokio::spawn(async move {
        operator::inventory::run(inventory, gate_changes)
            .await
            .unwrap();
    });
    Some(Fleet {
        env,
        _server: server,
        client,
        metrics,
        tasks: vec![watch, run],
    })
}

fn labels_of(v: &serde_json::Value) -> serde_json::Value {
    v["metadata"]["labels"].clone()
}

fn condition<'a>(v: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn first_heartbeat_creates_the_device_and_labels_merge() {
    let Some(fleet) = start(InventoryConfig {
        // Each step below is a board-driven change right after the last.
        min_write_interval: Duration::from_millis(200),
        ..InventoryConfig::default()
    })
    .await
    else {
        return;
    };
    let c = &fleet.env.client;
    // A board with two good labels and a bad one.
    let board = Board {
        uptime: 5,
        labels: &[("board", "rpi4"), ("site", "lyon"), ("Bad Key", "x")],
        ..Board::default()
    };
    heartbeat(c, "pi-1", &board).await;
    let v = fleet
        .device_where("pi-1", "Device created and Ready", |v| {
            condition(v, "Ready")["status"] == "True"
        })
        .await;
    assert_eq!(labels_of(&v), json!({"board": "rpi4", "site": "lyon"}));
    assert_eq!(v["metadata"]["finalizers"], json!([DEVICE_FINALIZER]));
    assert_eq!(condition(&v, "Ready")["reason"], "HeartbeatReceived");
    assert_eq!(condition(&v, "Warnings")["status"], "False");
    assert_eq!(condition(&v, "Unsupported")["status"], "False");
    let s = &v["status"];
    assert_eq!(s["systemInfo"]["agentVersion"], "0.3.0");
    assert_eq!(s["systemInfo"]["kernelVersion"], "6.1.0-rpi");
    assert_eq!(s["capabilities"]["scoreTypes"][0]["type"], "PodmanV0");
    assert_eq!(s["boardLabels"], json!({"board": "rpi4", "site": "lyon"}));
    assert_eq!(s["deployments"], json!({"total": 0, "notReady": 0}));
    assert!(s["lastSeen"].is_string());

    // An administrator sets site and adds a label of their own.
    let patch = json!({"metadata": {"labels": {"site": "paris", "team": "ops"}}});
    fleet
        .api()
        .patch("pi-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // The board moves: new board value, new site; the admin's site wins.
    let board = Board {
        uptime: 35,
        labels: &[("board", "rpi5"), ("site", "nice")],
        ..Board::default()
    };
    heartbeat(c, "pi-1", &board).await;
    let v = fleet
        .device_where("pi-1", "board label updated, admin label kept", |v| {
            // Labels and status are two patches: wait for both.
            v["metadata"]["labels"]["board"] == "rpi5"
                && v["status"]["boardLabels"]["board"] == "rpi5"
        })
        .await;
    assert_eq!(
        labels_of(&v),
        json!({"board": "rpi5", "site": "paris", "team": "ops"})
    );
    assert_eq!(
        v["metadata"]["annotations"][BOARD_LABELS_ANNOTATION],
        r#"{"board":"rpi5"}"#
    );
    assert_eq!(
        v["status"]["boardLabels"],
        json!({"board": "rpi5", "site": "nice"})
    );
    // The board drops its labels: its own goes, the admin's stay.
    heartbeat(
        c,
        "pi-1",
        &Board {
            uptime: 65,
            ..Board::default()
        },
    )
    .await;
    let v = fleet
        .device_where("pi-1", "board label removed", |v| {
            v["metadata"]["labels"].get("board").is_none()
                && v["status"].get("boardLabels").is_none()
        })
        .await;
    assert_eq!(labels_of(&v), json!({"site": "paris", "team": "ops"}));
    assert!(v["status"].get("boardLabels").is_none(), "{}", v["status"]);

    // A board whose id cannot name an object gets no Device.
    heartbeat(c, "Pi_2", &board).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet
            .api()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // An administrator's Device made before the board boots: NeverSeen,
    // then the finalizer is added.
    let pre: Device = serde_json::from_value(json!({
        "apiVersion": "iot.nationtech.io/v1alpha1", "kind": "Device",
        "metadata": {"name": "pi-3", "labels": {"site": "lyon"}},
        "spec": {"description": "shelf 2"},
    }))
    .unwrap();
    fleet.api().create(&Default::default(), &pre).await.unwrap();
    let v = fleet
        .device_where("pi-3", "admin-made Device NeverSeen", |v| {
            condition(v, "Ready")["reason"] == "NeverSeen"
        })
        .await;
    assert_eq!(v["metadata"]["finalizers"], json!([DEVICE_FINALIZER]));
    heartbeat(
        c,
        "pi-3",
        &Board {
            labels: &[("board", "rpi4")],
            ..Board::default()
        },
    )
    .await;
    let v = fleet
        .device_where("pi-3", "admin-made Device hears its board", |v| {
            condition(v, "Ready")["status"] == "True"
        })
        .await;
    assert_eq!(labels_of(&v), json!({"board": "rpi4", "site": "lyon"}));
}

#[tokio::test]
async fn a_deleted_device_loses_its_keys_and_a_live_board_reappears() {
    let Some(fleet) = start(InventoryConfig {
        sweep: Duration::from_secs(1),
        ..InventoryConfig::default()
    })
    .await
    else {
        return;
    };
    let (c, nats) = (&fleet.env.client, &fleet.env.nats);
    for name in ["web", "db"] {
        nats.write(
            DESIRED_STATE_BUCKET,
            vec![KvWrite::Put {
                key: format!("pi-2.{name}"),
                value: vec![1u8, 2, 3].into(),
                owner: format!("default/{name}"),
            }],
        )
        .await
        .unwrap();
        put_status(c, "pi-2", name, 1, Phase::Running, "").await;
    }
    // Another board's keys stay.
    put_status(c, "pi-9", "web", 1, Phase::Running, "").await;
    heartbeat(
        c,
        "pi-2",
        &Board {
            labels: &[("site", "lyon")],
            ..Board::default()
        },
    )
    .await;
    let v = fleet
        .device_where("pi-2", "Device with 2 deployments", |v| {
            v["status"]["deployments"]["total"] == 2
        })
        .await;
    let uid = v["metadata"]["uid"].clone();
    // The administrator adds a label, then decommissions the board.
    let patch = json!({"metadata": {"labels": {"team": "ops"}}});
    fleet
        .api()
        .patch("pi-2", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    fleet
        .api()
        .delete("pi-2", &DeleteParams::default())
        .await
        .unwrap();
    eventually("keys removed", || async {
        let live = |recs: Vec<operator::nats::KvRecord>| recs.iter().filter(|r| !r.deleted).count();
        let d = live(nats.scan(DESIRED_STATE_BUCKET, "pi-2.>").await.unwrap());
        let s = live(nats.scan(DEVICE_STATUS_BUCKET, "pi-2.>").await.unwrap());
        let h = live(nats.scan(DEVICE_HEARTBEAT_BUCKET, "pi-2").await.unwrap());
        if (d, s, h) == (0, 0, 0) {
            Ok(())
        } else {
            Err(format!("live keys: {d} desired, {s} status, {h} heartbeat"))
        }
    })
    .await;
    assert!(desired(nats, "pi-2", "web").await.unwrap().deleted);
    let other = nats.scan(DEVICE_STATUS_BUCKET, "pi-9.>").await.unwrap();
    assert!(other.iter().all(|r| !r.deleted), "{other:?}");
    let api = fleet.api();
    eventually("Device gone", || async {
        match api.get_opt("pi-2").await.unwrap() {
            None => Ok(()),
            Some(d) => Err(format!("still there: {:?}", d.metadata.finalizers)),
        }
    })
    .await;
    // The board is still alive: it reappears, with its own labels only and
    // no deployments.
    heartbeat(
        c,
        "pi-2",
        &Board {
            labels: &[("site", "lyon")],
            ..Board::default()
        },
    )
    .await;
    let v = fleet
        .device_where("pi-2", "Device recreated", |v| {
            condition(v, "Ready")["status"] == "True"
        })
        .await;
    assert_ne!(v["metadata"]["uid"], uid);
    assert_eq!(labels_of(&v), json!({"site": "lyon"}));
    assert_eq!(v["status"]["deployments"]["total"], 0);
}

#[tokio::test]
async fn a_steady_heartbeat_stream_costs_no_writes() {
    // Far above the 2 s the 50 heartbeats take, so a stalled CI machine
    // does not turn Ready Unknown midway.
    let silence = Duration::from_secs(10);
    let Some(fleet) = start(InventoryConfig {
        silence,
        refresh: Duration::from_secs(600),
        ..InventoryConfig::default()
    })
    .await
    else {
        return;
    };
    let c = &fleet.env.client;
    let board = |uptime| Board {
        uptime,
        labels: &[("site", "lyon")],
        ..Board::default()
    };
    heartbeat(c, "pi-4", &board(0)).await;
    fleet
        .device_where("pi-4", "Device Ready", |v| {
            condition(v, "Ready")["status"] == "True"
        })
        .await;
    // Let the watch events of our own writes settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = fleet.writes();
    assert_eq!(before.0, 1, "one create");
    assert!(before.1 <= 2, "status patches at creation: {before:?}");
    // 50 heartbeats, only the uptime changing, faster than the silence.
    for n in 1..=50 {
        heartbeat(c, "pi-4", &board(n)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.writes(), before, "50 unchanged heartbeats wrote");
    // A change is written: a warning (within the minimum write interval).
    heartbeat(
        c,
        "pi-4",
        &Board {
            warning: Some("disk full"),
            ..board(60)
        },
    )
    .await;
    fleet
        .device_where("pi-4", "Warnings True", |v| {
            condition(v, "Warnings")["status"] == "True"
        })
        .await;
    let after = fleet.writes();
    assert_eq!(after.1, before.1 + 1, "{before:?} -> {after:?}");
    // A board flipping its warning at every put buys no writes: at most one
    // per `min_write_interval` (10 s), and none here, since the flips end
    // where the written status is.
    for n in 0..20 {
        let warning = (n % 2 == 1).then_some("disk full");
        heartbeat(
            c,
            "pi-4",
            &Board {
                warning,
                ..board(61 + n)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.writes(), after, "20 flipping heartbeats wrote");
    // Silence: Ready turns Unknown after `silence`, one write.
    let v = fleet
        .device_where("pi-4", "Ready Unknown after silence", |v| {
            condition(v, "Ready")["status"] == "Unknown"
        })
        .await;
    assert_eq!(condition(&v, "Ready")["reason"], "HeartbeatMissing");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.writes().1, after.1 + 1);
    assert_eq!(
        fleet.writes().2,
        0,
        "no metadata patch: labels set at creation"
    );
}
