//! Secrets sealed per device against a real Kubernetes API server
//! (`testkit::kube`) and a real nats-server: the real controller loop, as
//! the service account of `deploy/operator.yaml` (whose RBAC gives `get`
//! on Secrets and nothing more), reads the Secrets a Deployment references
//! and writes each device a format-5 value that only its key opens; a
//! device without a key is held; a missing Secret is named in a condition
//! and nothing is written; a rotated Secret or a new device key re-seals,
//! and a re-reconcile writes nothing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use common::{desired, desired_seq, nats_env, put_heartbeat_with_key};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::crd::Deployment;
use operator::{Context, ControllerConfig, StatusCache};
use protocol::sealed::{Binding, Purpose, RegistryLogin};
use protocol::{DesiredState, Text};
use sealing::DeviceKey;
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

fn sealed_deployment(name: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": {
            "targetDevices": ["pi-1", "pi-2"],
            "imagePullSecrets": [{"name": "regcred"}],
            "score": {"type": "PodmanV1", "data": {"containers": [{
                "name": "web",
                "image": "registry.example.com/team/web:1",
                "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}],
            }]}},
        },
    })
}

fn secret(name: &str, type_: &str, string_data: Value) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "fleet"},
        "type": type_,
        "stringData": string_data,
    }))
    .unwrap()
}

fn binding(device: &str, name: &str, revision: u64, purpose: Purpose<'static>) -> Binding<'static> {
    Binding {
        device: Text::owned(device.into()),
        deployment: Text::owned(name.into()),
        revision,
        purpose,
    }
}

fn db_password() -> Purpose<'static> {
    Purpose::Value {
        secret: Text::borrowed("db"),
        key: Text::borrowed("password"),
    }
}

/// The value of `device`'s key of `name`, once it holds a format-5 value
/// sealed to `key` (and, when given, at a revision other than `not`).
async fn sealed_value(
    env: &common::Env,
    device: &str,
    name: &str,
    key: &DeviceKey,
    not: Option<u64>,
) -> DesiredState<'static> {
    eventually(&format!("{device}.{name} sealed to its key"), || async {
        let rec = desired(&env.nats, device, name)
            .await
            .filter(|r| !r.deleted)
            .ok_or("no key")?;
        let d: DesiredState<'_> = protocol::wire::decode(&rec.value).map_err(|e| e.to_string())?;
        let d = d.into_owned();
        let to_key = d
            .secrets
            .values
            .iter()
            .all(|v| v.sealed.recipient.as_str() == key.public_key());
        if d.format_version() == 5 && to_key && Some(d.revision) != not {
            Ok(d)
        } else {
            Err(format!(
                "format {}, revision {:016x}",
                d.format_version(),
                d.revision
            ))
        }
    })
    .await
}

#[tokio::test]
async fn secrets_are_sealed_to_each_device_and_rotate() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    create_namespace(&client, "fleet").await;
    let operator_client = operator_identity(&server, &client).await;

    let pi1 = DeviceKey::generate();
    put_heartbeat_with_key(&env.client, "pi-1", pi1.public_key()).await;
    // An agent with no `[secrets] key_file`: it reports no key.
    put_heartbeat_with_key(&env.client, "pi-2", "").await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "fleet");
    let config = json!({"auths": {"https://registry.example.com": {
        "auth": base64::engine::general_purpose::STANDARD.encode("robot:s3cret-pull")
    }}});
    for s in [
        secret("db", "Opaque", json!({"password": "hunter2-db"})),
        secret(
            "regcred",
            "kubernetes.io/dockerconfigjson",
            json!({".dockerconfigjson": config.to_string()}),
        ),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }

    let Running {
        ctx,
        controller,
        watch,
    } = start_controller(&env, operator_client);

    let api: Api<Deployment> = Api::namespaced(client.clone(), "fleet");
    let d: Deployment = serde_json::from_value(sealed_deployment("web", "db")).unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    let unsealed_revision = operator::plan(&created).unwrap().revision;

    // pi-1: its own value, format 5, that its key opens to the Secret's
    // value and the registry login; another key does not open it.
    let first = sealed_value(&env, "pi-1", "web", &pi1, None).await;
    assert_ne!(
        first.revision, unsealed_revision,
        "the Secrets are in the revision"
    );
    assert_eq!(open_password_of(&pi1, &first, "pi-1", "web"), "hunter2-db");
    let pull = first.secrets.pull_for("registry.example.com").unwrap();
    let login = pi1
        .open(
            &pull.sealed,
            &binding(
                "pi-1",
                "web",
                first.revision,
                Purpose::Pull {
                    registry: Text::borrowed("registry.example.com"),
                },
            ),
        )
        .unwrap();
    let login: RegistryLogin<'_> = postcard::from_bytes(&login).unwrap();
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("robot", "s3cret-pull")
    );
    let stranger = DeviceKey::generate();
    let v = first.secrets.value_for("db", "password").unwrap();
    assert!(
        stranger
            .open(
                &v.sealed,
                &binding("pi-1", "web", first.revision, db_password())
            )
            .is_err()
    );
    let raw = desired(&env.nats, "pi-1", "web").await.unwrap().value;
    assert!(!raw.windows(10).any(|w| w == b"hunter2-db"));

    // pi-2 reports no key: held, saying what to do; nothing written.
    let rev = operator::crd::revision_string(first.revision);
    let v = deployment_where(&api, "web", "pi-2 held for its missing key", |v| {
        v["status"]["revision"] == rev.as_str()
            && v["status"]["devices"].as_array().is_some_and(|ds| {
                ds.iter().any(|e| {
                    e["device"] == "pi-2"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("reports no sealing key"))
                })
            })
    })
    .await;
    assert!(desired(&env.nats, "pi-2", "web").await.is_none());
    let shown = v.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );

    // Reconciled again and again (the Secrets re-read, the keys scanned
    // and compared): nothing is rewritten, though each seal differs.
    let seq = desired_seq(&env.client).await;
    nothing_written_in_three_reconciles(&env, &ctx, seq, "a no-op reconcile wrote").await;
    // Restarted (a fresh Context: no sets cached): everything sealed
    // anew, each compared as equivalent to what the keys hold, nothing
    // written.
    controller.abort();
    watch.abort();
    let Running {
        ctx,
        controller,
        watch,
    } = start_controller(&env, ctx.client.clone());
    nothing_written_in_three_reconciles(&env, &ctx, seq, "a restarted controller wrote").await;

    // The Secret rotated: a new revision, sealed anew.
    let patch = json!({"stringData": {"password": "hunter3-db"}});
    secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rotated = sealed_value(&env, "pi-1", "web", &pi1, Some(first.revision)).await;
    assert_eq!(
        open_password_of(&pi1, &rotated, "pi-1", "web"),
        "hunter3-db"
    );
    // The old value's binding does not open the new one.
    let v = rotated.secrets.value_for("db", "password").unwrap();
    assert!(
        pi1.open(
            &v.sealed,
            &binding("pi-1", "web", first.revision, db_password())
        )
        .is_err()
    );

    // pi-1 got a new key: re-sealed to it, same revision.
    let pi1_new = DeviceKey::generate();
    put_heartbeat_with_key(&env.client, "pi-1", pi1_new.public_key()).await;
    let resealed = sealed_value(&env, "pi-1", "web", &pi1_new, None).await;
    assert_eq!(resealed.revision, rotated.revision);
    assert_eq!(
        open_password_of(&pi1_new, &resealed, "pi-1", "web"),
        "hunter3-db"
    );

    // A Deployment naming a Secret that does not exist: a condition names
    // it, no key is written; once it exists, the key is written.
    let broken: Deployment =
        serde_json::from_value(sealed_deployment("broken", "missing")).unwrap();
    api.create(&PostParams::default(), &broken).await.unwrap();
    let v = deployment_where(&api, "broken", "a condition naming the Secret", |v| {
        condition(v, "Degraded").is_some_and(|c| {
            c["status"] == "True"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("Secret \"missing\"") && m.contains("does not exist")
                })
        })
    })
    .await;
    assert_eq!(condition(&v, "Degraded").unwrap()["reason"], "InvalidSpec");
    assert!(desired(&env.nats, "pi-1", "broken").await.is_none());
    secrets
        .create(
            &PostParams::default(),
            &secret("missing", "Opaque", json!({"password": "late"})),
        )
        .await
        .unwrap();
    let late = sealed_value(&env, "pi-1", "broken", &pi1_new, None).await;
    let v = late.secrets.value_for("missing", "password").unwrap();
    let b = binding(
        "pi-1",
        "broken",
        late.revision,
        Purpose::Value {
            secret: Text::borrowed("missing"),
            key: Text::borrowed("password"),
        },
    );
    assert_eq!(&pi1_new.open(&v.sealed, &b).unwrap()[..], b"late");

    // A wrong-typed imagePullSecret: named; the keys written keep what
    // they hold.
    let held_seq = desired(&env.nats, "pi-1", "web").await.unwrap().value;
    let patch = json!({"spec": {"imagePullSecrets": [{"name": "db"}]}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    deployment_where(&api, "web", "a condition naming the wrong type", |v| {
        condition(v, "Degraded").is_some_and(|c| {
            c["message"].as_str().is_some_and(|m| {
                m.contains("Secret \"db\" in spec.imagePullSecrets is of type \"Opaque\"")
            })
        })
    })
    .await;
    assert_eq!(
        desired(&env.nats, "pi-1", "web").await.unwrap().value,
        held_seq
    );

    controller.abort();
    watch.abort();
}

/// A rollback cannot put back a rotated Secret: when the stable
/// revision's Secrets changed since it rolled out, the halt stays, nothing
/// is written back (the key keeps the failed revision rather than a
/// revision that is neither), and the Deployment says why and what to do.
#[tokio::test]
async fn a_rollback_after_a_rotation_is_refused_not_faked() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    create_namespace(&client, "fleet").await;
    let operator_client = operator_identity(&server, &client).await;
    let pi1 = DeviceKey::generate();
    put_heartbeat_with_key(&env.client, "pi-1", pi1.public_key()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "fleet");
    secrets
        .create(
            &PostParams::default(),
            &secret("db", "Opaque", json!({"password": "one"})),
        )
        .await
        .unwrap();
    let Running {
        ctx,
        controller,
        watch,
    } = start_controller(&env, operator_client);

    let mut body = sealed_deployment("roll", "db");
    body["spec"]["targetDevices"] = json!(["pi-1"]);
    body["spec"]["imagePullSecrets"] = json!([]);
    body["spec"]["rollout"] = json!({
        "strategy": "BatchSequence",
        "autoRollback": true,
        "progressDeadlineSeconds": 60,
        "batches": [{"limit": 1}],
    });
    let api: Api<Deployment> = Api::namespaced(client.clone(), "fleet");
    let d: Deployment = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let stable = sealed_value(&env, "pi-1", "roll", &pi1, None).await;
    common::put_status(
        &env.client,
        "pi-1",
        "roll",
        stable.revision,
        protocol::Phase::Healthy,
        "",
    )
    .await;
    let a = operator::crd::revision_string(stable.revision);
    deployment_where(&api, "roll", "the first revision healthy", |v| {
        v["status"]["rollout"]["revision"] == a.as_str()
            && v["status"]["rollout"]["phase"] == "Healthy"
    })
    .await;

    // A new score, and the Secret rotated: the new revision fails.
    let patch = json!({"spec": {"score": {"type": "PodmanV1", "data": {"containers": [{
        "name": "web",
        "image": "registry.example.com/team/web:2",
        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
    }]}}}});
    api.patch("roll", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let patch = json!({"stringData": {"password": "two"}});
    secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let failing = eventually("the new score with the rotated Secret", || async {
        let d = sealed_value(&env, "pi-1", "roll", &pi1, Some(stable.revision)).await;
        if open_password_of(&pi1, &d, "pi-1", "roll") == "two" {
            Ok(d)
        } else {
            Err("not rotated yet".to_string())
        }
    })
    .await;
    let seq = desired_seq(&env.client).await;
    common::put_status(
        &env.client,
        "pi-1",
        "roll",
        failing.revision,
        protocol::Phase::Failed,
        "health check failed",
    )
    .await;
    let v = deployment_where(&api, "roll", "the rollback refused, saying why", |v| {
        condition(v, "Degraded").is_some_and(|c| {
            c["message"].as_str().is_some_and(|m| {
                m.contains("Secrets changed since it rolled out")
                    && m.contains("fix the Secret and retry")
            })
        })
    })
    .await;
    assert!(!v.to_string().contains("\"two\""), "{v}");
    // Nothing was written back, in this reconcile or the next ones: the
    // key still holds the failed revision.
    nothing_written_in_three_reconciles(&env, &ctx, seq, "the refused rollback wrote").await;
    let rec = desired(&env.nats, "pi-1", "roll").await.unwrap();
    let now: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert_eq!(now.revision, failing.revision);

    controller.abort();
    watch.abort();
}

/// A controller with its status watch, reconciling every second.
struct Running {
    ctx: Arc<Context>,
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
    watch: tokio::task::JoinHandle<()>,
}

/// Starts the real controller as `client`, with a fresh [`Context`] (no
/// sealed sets cached: what a restarted operator has).
fn start_controller(env: &common::Env, client: kube::Client) -> Running {
    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        client,
        env.nats.clone(),
        cache,
        ControllerConfig {
            resync: Duration::from_secs(1),
            secrets_reread: Duration::from_secs(1),
            ..ControllerConfig::default()
        },
    ));
    let controller = tokio::spawn(operator::controller::run(ctx.clone(), changes));
    Running {
        ctx,
        controller,
        watch,
    }
}

/// Waits for three more scans of the keys (each reconcile scans them),
/// then asserts the bucket still holds `seq` messages: nothing was written.
async fn nothing_written_in_three_reconciles(
    env: &common::Env,
    ctx: &Context,
    seq: u64,
    what: &str,
) {
    let scans = ctx.metrics.kv_scans.load(Ordering::Relaxed);
    eventually("three more scans of the keys", || async {
        let now = ctx.metrics.kv_scans.load(Ordering::Relaxed);
        if now >= scans + 3 {
            Ok(())
        } else {
            Err(format!("{now} scans"))
        }
    })
    .await;
    assert_eq!(desired_seq(&env.client).await, seq, "{what}");
}

/// The `db` Secret's `password` as `key` opens it from `d`, device
/// `device`'s value of Deployment `name`.
fn open_password_of(key: &DeviceKey, d: &DesiredState<'_>, device: &str, name: &str) -> String {
    let v = d.secrets.value_for("db", "password").unwrap();
    let b = binding(device, name, d.revision, db_password());
    String::from_utf8(key.open(&v.sealed, &b).unwrap().to_vec()).unwrap()
}
