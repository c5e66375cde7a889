//! End to end, revoking a board that holds a Secret: the fleet's NATS
//! identities and sealing keys from `cargo xtask creds` (the server on its
//! nkey authorization), a real kube-apiserver, the real `iot-operator`
//! binary on its own identity, two real `iot-agent` processes on theirs
//! with their baked sealing keys, and real Podman.
//!
//! Both boards run a workload that takes a Secret's key as an environment
//! variable. Board B is revoked (`cargo xtask creds --revoke`, the server
//! reloaded) and its Device deleted, then the Secret is rotated. Board A
//! runs the new value; B cannot connect, and with B's own sealing key
//! (which a thief of B's disk holds) nothing in the desired-state stream,
//! every message of it, opens to the new value: nothing new was sealed to
//! B at all.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use operator::crd::{Deployment, Device};
use protocol::keys::{KvSubject, StreamName};
use protocol::sealed::{Binding, Purpose};
use protocol::{DeploymentKey, DesiredState, Text};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;
use testkit::least_privilege::xtask_creds;
use testkit::{NatsOptions, NatsServer, PodmanService, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(90);
const OLD_VALUE: &str = "db-before-revocation-31f0";
const NEW_VALUE: &str = "db-after-revocation-9c2e";
const NAME: &str = "vault-app";

struct World {
    nats: NatsServer,
    podman: PodmanService,
    kube: KubeApiServer,
    kubectl: Kubectl,
    /// The fleet's identities and keys (`cargo xtask creds --out`).
    fleet: PathBuf,
    dir: tempfile::TempDir,
    /// The operator, then the agents.
    children: Vec<Child>,
    a: String,
    b: String,
}

impl World {
    async fn start() -> Option<World> {
        let dir = tempfile::tempdir().unwrap();
        let fleet = dir.path().join("fleet");
        let (a, b) = (unique("keep"), unique("lost"));
        xtask_creds(&fleet, &["--device", &a, "--device", &b]);
        let nats = NatsServer::start_reloadable(NatsOptions {
            config_file: Some(fleet.join("nats-server.conf")),
            ..Default::default()
        })?;
        let (podman, kube, kubectl) = e2e::podman_and_apiserver(IMAGE).await?;
        // The buckets, made once by the one identity allowed to.
        let operator = e2e::operator_binary().unwrap_or_else(|e| panic!("{e}"));
        let init = Command::new(operator)
            .args(["init", "--nats-url", &nats.url(), "--nats-nkey"])
            .arg(fleet.join("admin.nk"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "iot-operator init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let nkey = fleet.join("operator.nk").display().to_string();
        let operator = e2e::spawn_operator(
            &nats.url(),
            &kube.kubeconfig(),
            &dir.path().join("operator.log"),
            &["--nats-nkey", &nkey, "--resync-secs", "2"],
        )
        .unwrap_or_else(|e| panic!("{}", error_report::Chain(&e)));
        eprintln!("e2e against {}", nats.version());
        let mut w = World {
            nats,
            podman,
            kube,
            kubectl,
            fleet,
            dir,
            children: vec![operator],
            a,
            b,
        };
        let agent = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
        for device in [w.a.clone(), w.b.clone()] {
            let log = w.dir.path().join(format!("{device}.log"));
            let nkey = w.fleet.join(format!("{device}.nk"));
            let key = w.fleet.join(format!("{device}.xk"));
            let spec = e2e::AgentSpec {
                device: &device,
                nats_url: &w.nats.url(),
                podman_uri: &w.podman.uri(),
                containers_conf: &PodmanService::containers_conf(),
                labels: &[("site", "vault")],
                log: Some(&log),
                nats_nkey: Some(&nkey),
                sealing_key: Some(&key),
            };
            let child =
                e2e::spawn_agent(&[agent.display().to_string()], w.dir.path(), &spec).unwrap();
            w.children.push(child);
        }
        Some(w)
    }

    async fn until<T, F, Fut>(&self, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let logs = [
            "operator.log",
            &format!("{}.log", self.a),
            &format!("{}.log", self.b),
        ]
        .map(|f| self.dir.path().join(f));
        e2e::until(what, WAIT, &logs, probe).await
    }

    /// Sets Secret `db`'s `password` to `value` (creating it).
    async fn db_secret(&self, value: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.kube.client().await, "default");
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db"},
            "type": "Opaque",
            "stringData": {"password": value},
        }))
        .unwrap();
        match secrets.get_opt("db").await.unwrap() {
            Some(_) => {
                secrets
                    .patch("db", &PatchParams::apply("e2e").force(), &Patch::Apply(&s))
                    .await
                    .unwrap();
            }
            None => {
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        }
    }

    /// Every board labelled `site=vault` runs a container that prints the
    /// Secret's value.
    async fn apply(&self) {
        let api: Api<Deployment> = Api::namespaced(self.kube.client().await, "default");
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "iot.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {
                "targetSelector": {"matchLabels": {"site": "vault"}},
                "score": {"type": "PodmanV1", "data": {"containers": [{
                    "name": "app",
                    "image": IMAGE,
                    "command": ["sh", "-c", "echo env=$DB_PASSWORD; exec sleep 3600"],
                    "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
                }]}}
            }
        }))
        .unwrap();
        api.patch(NAME, &PatchParams::apply("e2e").force(), &Patch::Apply(&d))
            .await
            .unwrap();
    }

    /// Waits until `targets` boards run the Deployment at one revision
    /// other than `not`; returns it.
    async fn ready(&self, targets: u64, not: Option<&str>) -> String {
        self.until(&format!("{NAME}: ready on {targets}"), || async {
            let s = e2e::kubectl_status(&self.kubectl, NAME)?;
            let revision = s["revision"].as_str().unwrap_or_default().to_string();
            let counts = |f: &str| s[f].as_u64() == Some(targets);
            if counts("targeted")
                && counts("ready")
                && counts("upToDate")
                && Some(revision.as_str()) != not
            {
                Ok(revision)
            } else {
                Err(s.to_string())
            }
        })
        .await
    }

    /// Waits until `device`'s container prints `value`.
    async fn prints(&self, device: &str, value: &str) {
        let want = format!("env={value}");
        self.until(&format!("{device} runs with {value}"), || async {
            let logs: Vec<String> = self
                .podman
                .running_labelled("io.nationtech.iot.device", device)
                .iter()
                .map(|(_, id)| self.podman.run(&["logs", id]))
                .collect();
            if logs.iter().any(|l| l.contains(&want)) {
                Ok(())
            } else {
                Err(format!("{logs:?}"))
            }
        })
        .await
    }

    /// The admin's client: it may read every message of every bucket.
    async fn admin(&self) -> async_nats::jetstream::Context {
        let seed = std::fs::read_to_string(self.fleet.join("admin.nk")).unwrap();
        let seed = seed
            .lines()
            .find(|l| l.starts_with("SU"))
            .unwrap()
            .to_string();
        let client = async_nats::ConnectOptions::with_nkey(seed)
            .connect(self.nats.url())
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for device in [&self.a, &self.b] {
            self.podman
                .remove_labelled("io.nationtech.iot.device", device);
            e2e::remove_secrets_dir(device);
        }
    }
}

/// Whether a client with the nkey seed in `file` can connect to `url`.
async fn connects(url: &str, file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap();
    let seed = text.lines().find(|l| l.starts_with("SU")).unwrap();
    async_nats::ConnectOptions::with_nkey(seed.to_string())
        .connect(url)
        .await
        .is_ok()
}

/// What `key` (a board's sealing key) makes of every message the
/// desired-state stream holds, from its first sequence to its last: per
/// message sealed to it, the key it was written under, its revision and
/// each value it opens to.
async fn opened_by(
    js: &async_nats::jetstream::Context,
    key: &sealing::DeviceKey,
) -> Vec<(String, u64, Vec<String>)> {
    let bucket = protocol::keys::DESIRED_STATE_BUCKET;
    let mut stream = js.get_stream(StreamName(bucket).to_string()).await.unwrap();
    let info = stream.info().await.unwrap().state.clone();
    let mut found = Vec::new();
    for seq in info.first_sequence..=info.last_sequence {
        // A sequence the bucket has dropped (history, deletes) is gone for
        // everyone, a thief too; any other failure would hide a message.
        let message = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
            Err(e) => panic!("reading message {seq} of the desired-state stream: {e}"),
        };
        if message.payload.is_empty() {
            continue;
        }
        let subject = message.subject.to_string();
        let kv_key = KvSubject::parse(&subject).unwrap().key.to_string();
        let parsed = DeploymentKey::parse(&kv_key).unwrap();
        let desired: DesiredState<'_> = protocol::wire::decode(&message.payload).unwrap();
        let binding = |purpose| Binding {
            device: Text::borrowed(parsed.device_id()),
            deployment: Text::borrowed(parsed.deployment()),
            revision: desired.revision,
            purpose,
        };
        let mut opened = Vec::new();
        let mut sealed_to_key = false;
        for v in desired.secrets.values.iter() {
            sealed_to_key |= v.sealed.recipient.as_str() == key.public_key();
            let purpose = Purpose::Value {
                secret: v.secret.clone(),
                key: v.key.clone(),
            };
            if let Ok(plain) = key.open(&v.sealed, &binding(purpose)) {
                opened.push(String::from_utf8_lossy(&plain).into_owned());
            }
        }
        for p in desired.secrets.pull.iter() {
            sealed_to_key |= p.sealed.recipient.as_str() == key.public_key();
        }
        if sealed_to_key {
            found.push((kv_key, desired.revision, opened));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_board_cannot_read_a_secret_rotated_after() {
    let Some(w) = World::start().await else {
        return;
    };
    w.db_secret(OLD_VALUE).await;
    w.apply().await;
    let first = w.ready(2, None).await;
    w.prints(&w.a, OLD_VALUE).await;
    w.prints(&w.b, OLD_VALUE).await;

    // B's key, as a thief of its disk would hold it, opens what was sealed
    // to it so far: the check below can see a value sealed to B.
    let b_key = sealing::DeviceKey::load(&w.fleet.join(format!("{}.xk", w.b))).unwrap();
    let js = w.admin().await;
    let before = opened_by(&js, &b_key).await;
    assert!(
        before
            .iter()
            .any(|(_, _, opened)| opened.iter().any(|v| v == OLD_VALUE)),
        "B's key opens nothing before the revocation: {before:?}"
    );

    // Revoke B and reload: it is shut out.
    xtask_creds(&w.fleet, &["--revoke", &w.b]);
    w.nats.reload();
    let revoked_nkey = w.fleet.join(format!("revoked/{}.nk", w.b));
    let url = w.nats.url();
    w.until("B shut out", || async {
        if connects(&url, &revoked_nkey).await {
            Err("B's identity still connects".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let a_nkey = w.fleet.join(format!("{}.nk", w.a));
    assert!(connects(&url, &a_nkey).await, "A is shut out too");

    // Delete its Device: the operator removes its keys and, its heartbeat
    // gone, knows no key to seal anything new to it.
    let devices: Api<Device> = Api::all(w.kube.client().await);
    devices
        .delete(&w.b, &DeleteParams::default())
        .await
        .unwrap();
    w.until("B's Device gone", || async {
        match devices.get_opt(&w.b).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Rotate: A runs the new value at a new revision.
    w.db_secret(NEW_VALUE).await;
    let second = w.ready(1, Some(&first)).await;
    w.prints(&w.a, NEW_VALUE).await;

    // Nothing in the stream, the history included, opens to the new value
    // with B's key, and nothing was sealed to B at the new revision.
    let after = opened_by(&js, &b_key).await;
    for (key, revision, opened) in &after {
        assert!(
            !opened.iter().any(|v| v == NEW_VALUE),
            "B's key opens the rotated value at {key}"
        );
        assert_ne!(
            operator::crd::revision_string(*revision),
            second,
            "{key} was sealed to B at the new revision"
        );
    }
    // And B did not come back as a Device: it cannot heartbeat.
    assert!(
        devices.get_opt(&w.b).await.unwrap().is_none(),
        "B's Device returned"
    );
    let status: Value = e2e::kubectl_status(&w.kubectl, NAME).unwrap();
    assert!(
        !status.to_string().contains(&w.b),
        "B still listed in the status: {status}"
    );
}
