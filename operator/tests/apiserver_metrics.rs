//! `/healthz`, `/readyz` and `/metrics` as `iot-operator run` serves them,
//! against a real Kubernetes API server (`testkit::kube`, binaries from
//! `KUBEBUILDER_ASSETS`) and a real nats-server, with the controller
//! running as the service account of `deploy/operator.yaml`, scraped over
//! TCP: not ready until the controller runs and the status watch has
//! replayed the buckets (no device gauges meanwhile); ready with both up
//! and the history counted; the Deployment's counts, the fleet's and the
//! device's gauges after a Deployment is applied and a device reports;
//! not ready, naming the API server, once it stops, and naming NATS once
//! that stops too, while liveness stays 200 throughout.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::apiserver::{
    create_web, deployment_where, eventually, install_crds, operator_identity,
};
use common::{nats_env, put_heartbeat, put_status};
use kube::api::Api;
use operator::crd::Deployment;
use operator::metrics::fleet::FleetConfig;
use operator::metrics::server::{Endpoints, serve};
use operator::{Context, ControllerConfig, StatusCache};
use protocol::Phase;
use serde_json::json;
use testkit::kube::KubeApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET over a new TCP connection: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or(raw.clone())?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(head.to_string())?;
    Ok((code, body.to_string()))
}

/// The samples of an exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn readiness_and_fleet_metrics_against_real_servers() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    install_crds(&server).await;
    let operator_client = operator_identity(&server, &admin).await;

    // What `iot-operator run` assembles (src/main.rs), with a short ttl on
    // the API server's answer so that its loss shows within the test.
    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let ctx = Arc::new(Context::new(
        operator_client.clone(),
        env.nats.clone(),
        cache.clone(),
        ControllerConfig {
            resync: Duration::from_secs(1),
            ..ControllerConfig::default()
        },
    ));
    let endpoints =
        Endpoints::of_operator(&ctx, FleetConfig::default(), Duration::from_millis(200));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::spawn(serve(listener, endpoints));

    // Before the controller runs: live, not ready, saying why.
    assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
    let (code, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("controller not running"), "{body}");
    assert!(
        body.contains("status watch replaying device reports"),
        "{body}"
    );

    let controller = tokio::spawn(operator::controller::run(ctx.clone(), changes));
    // The controller up, the status watch not yet: still not ready, for
    // that alone, and no device gauges (they would count nobody).
    eventually("/readyz 503 waiting for the status watch", || async {
        match get(addr, "/readyz").await? {
            (503, body) if body == "not ready: status watch replaying device reports\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, body) = get(addr, "/metrics").await.unwrap();
    assert!(!body.contains("iot_operator_devices{"), "{body}");
    // A heartbeat stored before the watch starts: history to replay.
    put_heartbeat(&env.client, "pi-1").await;
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    eventually("/readyz 200 with NATS and the API server up", || async {
        match get(addr, "/readyz").await? {
            (200, body) if body == "ready\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Ready: the replayed heartbeat is counted.
    let (_, body) = get(addr, "/metrics").await.unwrap();
    assert_eq!(
        samples(&body).get("iot_operator_devices{state=\"online\"}"),
        Some(&1.0),
        "{body}"
    );

    // A Deployment on two devices; one reports it running.
    let api: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let (revision, rev) = create_web(&api, "web", json!(["pi-1", "pi-2"])).await;
    deployment_where(&api, "web", "the revision written", |v| {
        v["status"]["revision"] == rev.as_str()
    })
    .await;
    put_heartbeat(&env.client, "pi-1").await;
    put_status(&env.client, "pi-1", "web", revision, Phase::Running, "").await;

    let wanted = [
        (
            "iot_operator_deployment_targeted_devices{namespace=\"default\",deployment=\"web\"}",
            2.0,
        ),
        (
            "iot_operator_deployment_up_to_date_devices{namespace=\"default\",deployment=\"web\"}",
            1.0,
        ),
        (
            "iot_operator_deployment_ready_devices{namespace=\"default\",deployment=\"web\"}",
            1.0,
        ),
        (
            "iot_operator_deployment_failed_devices{namespace=\"default\",deployment=\"web\"}",
            0.0,
        ),
        ("iot_operator_devices{state=\"online\"}", 1.0),
        ("iot_operator_devices{state=\"offline\"}", 0.0),
        ("iot_operator_devices_reporting", 1.0),
        // common::put_heartbeat's agent.
        (
            "iot_operator_devices_by_agent_version{version=\"0.1.0\"}",
            1.0,
        ),
        ("iot_operator_device_online{device=\"pi-1\"}", 1.0),
        ("iot_operator_device_deployments{device=\"pi-1\"}", 1.0),
        (
            "iot_operator_device_deployments_not_ready{device=\"pi-1\"}",
            0.0,
        ),
        ("iot_operator_reconcile_errors_total", 0.0),
    ];
    let s = eventually("the fleet and Deployment gauges", || async {
        let (code, body) = get(addr, "/metrics").await?;
        if code != 200 {
            return Err(format!("{code}: {body}"));
        }
        let s = samples(&body);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(series, value)| s.get(*series) != Some(value))
            .map(|(series, value)| format!("{series} {value} (got {:?})", s.get(*series)))
            .collect();
        if missing.is_empty() {
            Ok(s)
        } else {
            Err(format!("{missing:?} in\n{body}"))
        }
    })
    .await;
    // The operator's own work, as it went.
    assert!(s["iot_operator_reconciles_total"] >= 1.0);
    assert!(
        s["iot_operator_kv_writes_total"] >= 2.0,
        "one key per target"
    );
    assert!(s["iot_operator_reconcile_duration_seconds_count"] >= 1.0);
    assert_eq!(
        s["iot_operator_reconcile_duration_seconds_count"],
        s["iot_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"}"]
    );
    // The report was stored after the watch started: its delay is lag.
    assert!(
        s["iot_operator_status_watch_lag_seconds_count{bucket=\"device-status\"}"] >= 1.0,
        "{s:?}"
    );
    assert!(
        !s.contains_key("iot_operator_device_online{device=\"pi-2\"}"),
        "no heartbeat, no device series"
    );

    // The API server goes: not ready, naming it; still live.
    drop(server);
    eventually("/readyz 503 naming the API server", || async {
        match get(addr, "/readyz").await? {
            (503, body) if body.starts_with("not ready: API server unreachable: ") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));

    // NATS goes too: both named.
    drop(env.server);
    eventually("/readyz 503 naming NATS", || async {
        match get(addr, "/readyz").await? {
            (503, body)
                if body.starts_with("not ready: NATS not connected")
                    && body.contains("API server unreachable") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));

    for task in [
        http.abort_handle(),
        controller.abort_handle(),
        watch.abort_handle(),
    ] {
        task.abort();
    }
}
