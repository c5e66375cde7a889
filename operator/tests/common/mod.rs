//! Shared helpers: a real nats-server with the buckets, Deployments, and
//! agent-style reports.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub mod apiserver;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use async_nats::jetstream;
use operator::crd::{Deployment, DeploymentSpec, FINALIZER, Rollout, Score};
use operator::nats::{KvRecord, Nats};
use operator::testing::{ApiRequest, deployment_path, events_path};
use protocol::keys::{DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET};
use protocol::{BoundedVec, Heartbeat, Phase, Text};
use testkit::NatsServer;

/// 2026-01-01T00:00:00Z.
pub const T0_NS: i128 = 1_767_225_600_000_000_000;
pub const T0: &str = "2026-01-01T00:00:00Z";

pub struct Env {
    pub server: NatsServer,
    pub nats: Nats,
    pub client: async_nats::Client,
}

/// A fresh server with the buckets created by the operator's own code; a
/// short request timeout so that "NATS down" fails fast.
pub async fn nats_env() -> Option<Env> {
    let server = NatsServer::start()?;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(server.url())
        .await
        .unwrap();
    let nats = Nats::from_client(client.clone());
    let created = nats.ensure_buckets(true).await.unwrap();
    assert_eq!(created.len(), 3);
    Some(Env {
        server,
        nats,
        client,
    })
}

pub fn podman(image: &str) -> serde_json::Value {
    serde_json::json!({"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 80, "hostPort": 8080}]}]})
}

pub fn deployment(
    ns: &str,
    name: &str,
    targets: &[&str],
    score_type: &str,
    data: serde_json::Value,
) -> Deployment {
    let mut d = Deployment::new(
        name,
        DeploymentSpec {
            target_devices: targets.iter().map(|s| s.to_string()).collect(),
            image_pull_secrets: Vec::new(),
            target_selector: None,
            rollout: Rollout::default(),
            score: Score {
                type_name: score_type.into(),
                data,
            },
        },
    );
    d.metadata.namespace = Some(ns.into());
    d.metadata.uid = Some(format!("uid-{ns}-{name}"));
    d.metadata.generation = Some(1);
    d.metadata.resource_version = Some("1".into());
    d
}

pub fn with_finalizer(mut d: Deployment) -> Deployment {
    d.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    d
}

/// `default/web` running `image` on `targets`, its finalizer already added.
pub fn web(targets: &[&str], image: &str) -> Deployment {
    with_finalizer(deployment(
        "default",
        "web",
        targets,
        "PodmanV0",
        podman(image),
    ))
}

/// Each recorded request as `METHOD path`.
pub fn lines(reqs: &[ApiRequest]) -> Vec<String> {
    reqs.iter().map(ApiRequest::line).collect()
}

/// The two requests of a reconcile that changed something: the status patch
/// and the event.
pub fn status_patch_and_event(ns: &str, name: &str) -> [String; 2] {
    [
        format!("PATCH {}/status", deployment_path(ns, name)),
        format!("POST {}", events_path(ns)),
    ]
}

/// The last record of one desired-state key.
pub async fn desired(nats: &Nats, device: &str, name: &str) -> Option<KvRecord> {
    nats.scan(DESIRED_STATE_BUCKET, &format!("{device}.{name}"))
        .await
        .unwrap()
        .into_iter()
        .next()
}

/// Messages ever stored in a bucket: unchanged means nothing was written.
pub async fn last_seq(client: &async_nats::Client, bucket: &str) -> u64 {
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

pub async fn desired_seq(client: &async_nats::Client) -> u64 {
    last_seq(client, DESIRED_STATE_BUCKET).await
}

/// Writes a status report as the agent does.
pub async fn put_status(
    client: &async_nats::Client,
    device: &str,
    name: &str,
    revision: u64,
    phase: Phase,
    message: &str,
) {
    let status = protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::borrowed(message),
        timestamp_ms: 0,
        reason: protocol::Reason::None,
        running_revision: None,
        waiting: None,
    };
    publish_status(client, device, name, &status).await;
}

/// Stores `status` as `device`'s report on deployment `name`, encoded as
/// the agent does (format version 2 when it says anything version 1
/// cannot: health, a reason, a rollback).
pub async fn publish_status(
    client: &async_nats::Client,
    device: &str,
    name: &str,
    status: &protocol::DeploymentStatus<'_>,
) {
    let value = protocol::wire::encode_to_vec(status).unwrap();
    let js = jetstream::new(client.clone());
    js.publish(
        format!("$KV.{DEVICE_STATUS_BUCKET}.{device}.{name}"),
        value.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// What an agent with health checks reports: `phase` for `reason`,
/// running `running` after a rollback, one container `web` in `state` with
/// `health` and `restarts`.
pub fn health_status(
    revision: u64,
    phase: Phase,
    reason: protocol::Reason,
    running: Option<u64>,
    state: protocol::ContainerState,
    health: Option<protocol::Health>,
    restarts: u32,
) -> protocol::DeploymentStatus<'static> {
    let mut web = protocol::ContainerStatus::new(Text::borrowed("web"), state);
    web.health = health;
    web.reason = reason;
    web.restart_count = restarts;
    web.exit_code = (restarts > 0).then_some(137);
    protocol::DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::try_from_iter([web]).unwrap(),
        message: Text::borrowed(""),
        timestamp_ms: 0,
        reason,
        running_revision: running,
        waiting: None,
    }
}

/// Writes a heartbeat as the agent does.
pub async fn put_heartbeat(client: &async_nats::Client, device: &str) {
    let hb = Heartbeat {
        agent_version: Text::borrowed("0.1.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 5,
        deployments: 1,
        timestamp_ms: 0,
        ..Heartbeat::default()
    };
    publish_heartbeat(client, device, &hb).await;
}

/// Stores `hb` as `device`'s heartbeat, encoded as the agent does.
pub async fn publish_heartbeat(client: &async_nats::Client, device: &str, hb: &Heartbeat<'_>) {
    let value = protocol::wire::encode_to_vec(hb).unwrap();
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

/// Writes the heartbeat of an agent of this build (it reads every
/// DesiredState format, PodmanV0 and PodmanV1) that reports the sealing
/// key `key` (`X...`; empty: none), as the agent does.
#[allow(dead_code)]
pub async fn put_heartbeat_with_key(client: &async_nats::Client, device: &str, key: &str) {
    let hb = Heartbeat {
        agent_version: Text::borrowed("0.3.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 5,
        deployments: 1,
        capabilities: protocol::Capabilities::this_build(),
        sealing_key: Text::borrowed(key),
        ..Heartbeat::default()
    };
    publish_heartbeat(client, device, &hb).await;
}

/// Writes a heartbeat (format version 3) declaring the board `labels`, as
/// the agent does; `labels` may break the label rules (the wire checks only
/// their lengths).
pub async fn put_heartbeat_with_labels(
    client: &async_nats::Client,
    device: &str,
    labels: &[(&str, &str)],
) {
    let mut map = protocol::BoundedMap::new();
    for (k, v) in labels {
        map.insert(Text::borrowed(k), Text::borrowed(v)).unwrap();
    }
    let hb = Heartbeat {
        agent_version: Text::borrowed("0.2.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 5,
        deployments: 1,
        labels: map,
        ..Heartbeat::default()
    };
    publish_heartbeat(client, device, &hb).await;
}

/// Runs `iot-operator args` against `url`, as the nkey identity in `seed`
/// when one is given (and never with credentials from the caller's
/// environment).
pub fn cli(url: &str, seed: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iot-operator"));
    cmd.args(args)
        .env("NATS_URL", url)
        .env_remove("NATS_NKEY")
        .env_remove("NATS_CREDS")
        .env_remove("RUST_LOG");
    if let Some(seed) = seed {
        cmd.env("NATS_NKEY", seed);
    }
    cmd.output().unwrap()
}

/// The standard output of a run that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}
