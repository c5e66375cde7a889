//! The inventory against a real Kubernetes API server (`testkit::kube`,
//! binaries from `KUBEBUILDER_ASSETS`) and a real nats-server, as the
//! service account of `deploy/operator.yaml` (so its RBAC rules must allow
//! what the inventory does): the Device CRD is established as a
//! cluster-scoped `iotdev` with its printer columns, a heartbeat (encoded
//! as the agent encodes it) creates a Device, `kubectl get iotdev -l
//! site=lyon` selects it, an invalid board label is an Event, and the
//! status write rate stays bounded.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use common::apiserver::{eventually, install_crds, operator_identity};
use common::nats_env;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use operator::capability_gate::CapabilityGate;
use operator::crd::Device;
use operator::inventory::{Inventory, InventoryConfig};
use operator::metrics::Metrics;
use operator::status::StatusCache;
use protocol::keys::DEVICE_HEARTBEAT_BUCKET;
use protocol::{Capabilities, Heartbeat, Text};
use serde_json::Value;
use testkit::kube::KubeApiServer;

async fn heartbeat(
    client: &async_nats::Client,
    device: &str,
    uptime: u64,
    labels: &[(&str, &str)],
) {
    let mut hb = Heartbeat {
        agent_version: Text::borrowed("0.3.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        kernel: Text::borrowed("6.1.0"),
        boot_id: Text::borrowed("boot-1"),
        uptime_secs: uptime,
        capabilities: Capabilities::this_build(),
        ..Heartbeat::default()
    };
    for (k, v) in labels {
        hb.labels
            .insert(Text::borrowed(k), Text::borrowed(v))
            .unwrap();
    }
    let value = protocol::wire::encode_to_vec(&hb).unwrap();
    jetstream::new(client.clone())
        .publish(
            format!("$KV.{DEVICE_HEARTBEAT_BUCKET}.{device}"),
            value.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// `kubectl get iotdev -l SELECTOR`: the server's table (printer columns).
async fn table(client: &Client, selector: &str) -> Value {
    let uri = format!(
        "/apis/iot.nationtech.io/v1alpha1/devices?labelSelector={}",
        selector.replace('=', "%3D")
    );
    let req = http::Request::get(uri)
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
    serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap()
}

#[tokio::test]
async fn devices_from_heartbeats_are_listed_selected_and_cheap() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let admin = server.client().await;
    let crds = install_crds(&server).await;
    let crd = crds
        .iter()
        .find(|c| c.spec.names.kind == "Device")
        .expect("the Device CRD");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["iotdev".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["iot".to_string()][..])
    );
    let established = crd.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let operator_client = operator_identity(&server, &admin).await;
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let (gate, gate_changes) = CapabilityGate::new();
    let metrics = Arc::new(Metrics::default());
    // Silence far above the 0.5 s beat, so that a stalled machine does not
    // turn Ready (and add writes) during the count.
    let (silence, refresh) = (Duration::from_secs(6), Duration::from_secs(3));
    let inventory = Arc::new(Inventory::new(
        operator_client,
        env.nats.clone(),
        cache,
        gate,
        metrics.clone(),
        InventoryConfig {
            silence,
            refresh,
            sweep: Duration::from_secs(1),
            min_write_interval: Duration::from_millis(500),
            ..InventoryConfig::default()
        },
    ));
    let run = tokio::spawn(operator::inventory::run(inventory, gate_changes));

    // Both boards beat every 0.5 s until told to stop.
    let beats = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let beating = {
        let (c, beats) = (env.client.clone(), beats.clone());
        tokio::spawn(async move {
            while !*stopped.borrow() {
                let n = beats.fetch_add(1, Ordering::Relaxed);
                heartbeat(
                    &c,
                    "pi-lyon",
                    n,
                    &[("site", "lyon"), ("board", "rpi4"), ("bad key", "x")],
                )
                .await;
                heartbeat(&c, "pi-paris", n, &[("site", "paris")]).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), stopped.changed()).await;
            }
        })
    };
    let api: Api<Device> = Api::all(admin.clone());
    for name in ["pi-lyon", "pi-paris"] {
        eventually(&format!("{name} created and Ready"), || async {
            let d = api.get_opt(name).await.map_err(|e| e.to_string())?;
            let ready = d.as_ref().and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready { Ok(()) } else { Err(format!("{d:?}")) }
        })
        .await;
    }
    // kubectl get iotdev -l site=lyon
    let selected = api
        .list(&ListParams::default().labels("site=lyon"))
        .await
        .unwrap();
    let names: Vec<String> = selected.items.iter().map(|d| d.name_any()).collect();
    assert_eq!(names, ["pi-lyon"]);
    let t = table(&admin, "site=lyon").await;
    let columns: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Ready",
            "Agent",
            "Arch",
            "Last-Seen",
            "Deployments",
            "Age"
        ]
    );
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{t}");
    let cells = &rows[0]["cells"];
    assert_eq!(
        (&cells[0], &cells[1], &cells[2], &cells[3], &cells[5]),
        (
            &Value::from("pi-lyon"),
            &Value::from("True"),
            &Value::from("0.3.0"),
            &Value::from("aarch64"),
            &Value::from(0)
        )
    );
    // The invalid board label is dropped, and said in an Event.
    let lyon = api.get("pi-lyon").await.unwrap();
    assert!(!lyon.labels().contains_key("bad key"));
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    eventually("InvalidBoardLabel event", || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let hit = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("InvalidBoardLabel")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pi-lyon")
        });
        if hit {
            Ok(())
        } else {
            Err(format!("{} events", list.items.len()))
        }
    })
    .await;

    // Steady state: 9 s more of heartbeats. Status patches are bounded by
    // one per device per refresh (3 s), not one per heartbeat.
    let before = metrics.device_status_patches.load(Ordering::Relaxed);
    let beats_before = beats.load(Ordering::Relaxed);
    let span = Duration::from_secs(9);
    tokio::time::sleep(span).await;
    let patches = metrics.device_status_patches.load(Ordering::Relaxed) - before;
    let beats = beats.load(Ordering::Relaxed) - beats_before;
    stop.send(true).unwrap();
    beating.await.unwrap();
    // One per device per refresh, and one more each at the edges.
    let bound = 2 * (span.as_secs() / refresh.as_secs() + 2);
    eprintln!(
        "{} heartbeats -> {patches} status patches (bound {bound})",
        2 * beats
    );
    assert!(
        beats >= 10,
        "the loop was too slow to mean anything: {beats}"
    );
    assert!(
        patches <= bound,
        "{patches} status patches for {} heartbeats",
        2 * beats
    );
    assert!(patches >= 2, "lastSeen was never refreshed: {patches}");
    assert_eq!(metrics.device_creates.load(Ordering::Relaxed), 2);

    // Silence: Ready turns Unknown (HeartbeatMissing).
    eventually("pi-paris Ready Unknown", || async {
        let d = api.get("pi-paris").await.map_err(|e| e.to_string())?;
        let s = d.status.unwrap_or_default();
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").cloned();
        match ready {
            Some(c) if c.status == "Unknown" && c.reason.as_str() == "HeartbeatMissing" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    run.abort();
    watch.abort();
}
