//! End to end, a private workload as a platform team ships it: a real
//! kube-apiserver with the CRDs and two Kubernetes Secrets (a
//! `kubernetes.io/dockerconfigjson` made the way `kubectl create secret
//! docker-registry` makes it, and an Opaque one), the real `iot-operator`
//! binary, a real nats-server, a real `iot-agent`, real Podman, and a real
//! registry over verified TLS with password logins.
//!
//! The Deployment pulls from the registry with `imagePullSecrets` and hands
//! the container a Secret key as an environment variable and as a file.
//! Then the clear-text values are searched for everywhere they must not
//! be: the NATS server's store, the KV values as the admin reads them, the
//! agent's state directory, the CR status, the operator's and the agent's
//! logs, and `podman inspect`. A wrong password gives `ImagePullBackOff`
//! without the password in any message; a rotated password, once the
//! registry only takes the new one, rolls out and pulls with it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::crd::Deployment;
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;
use testkit::registry::Registry;
use testkit::{NatsServer, PodmanService, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(90);
const USER: &str = "fleet";
const PASSWORD: &str = "reg-pass-8d1f0c";
const NEW_PASSWORD: &str = "reg-pass-rotated-77aa";
const DB_PASSWORD: &str = "db-s3cret-5be2917";
/// Only in a file: Podman 4.3 shows an environment variable's value in
/// `podman inspect` however it is passed (agent-linux/README.md), files
/// the agent keeps on its tmpfs do not show there.
const DB_TOKEN: &str = "db-token-0c41aa9e";

struct World {
    nats: NatsServer,
    podman: PodmanService,
    kube: KubeApiServer,
    kubectl: Kubectl,
    registry: Registry,
    dir: tempfile::TempDir,
    /// The operator, then the agent.
    children: Vec<Child>,
    device: String,
    /// The image in the registry.
    image: String,
}

impl World {
    /// Starts everything, the board being `agent` (a command line: the
    /// binary, or qemu and the aarch64 binary).
    async fn start(agent: Option<Vec<String>>) -> Option<World> {
        let agent = agent?;
        let nats = NatsServer::start()?;
        let podman = PodmanService::start()?;
        let kube = KubeApiServer::start().await?;
        let kubectl = Kubectl::for_apiserver(&kube)?;
        let registry = Registry::start_secure(&[(USER, PASSWORD)])?;
        podman.ensure_busybox_image(IMAGE);
        let image = registry.push_as(&podman, IMAGE, "team/app:1", USER, PASSWORD);
        kube.install_crds(&testkit::repo_root().join("deploy/crd.yaml"))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let operator = e2e::spawn_operator(
            &nats.url(),
            &kube.kubeconfig(),
            &dir.path().join("operator.log"),
            &["--resync-secs", "2"],
        )
        .unwrap_or_else(|e| panic!("{}", error_report::Chain(&e)));
        eprintln!("e2e against {}", nats.version());
        let device = unique("vault");
        let log = dir.path().join("agent.log");
        let spec = e2e::AgentSpec {
            device: &device,
            nats_url: &nats.url(),
            podman_uri: &podman.uri(),
            containers_conf: &PodmanService::containers_conf(),
            labels: &[],
            log: Some(&log),
            nats_nkey: None,
            sealing_key: None,
        };
        let agent = e2e::spawn_agent(&agent, dir.path(), &spec).unwrap();
        Some(World {
            nats,
            podman,
            kube,
            kubectl,
            registry,
            dir,
            children: vec![operator, agent],
            device,
            image,
        })
    }

    /// [`e2e::until`] with the operator's and the agent's logs.
    async fn until<T, F, Fut>(&self, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let logs = ["operator.log", "agent.log"].map(|f| self.dir.path().join(f));
        e2e::until(what, WAIT, &logs, probe).await
    }

    async fn secret(&self, name: &str, type_: &str, data: &[(&str, &[u8])]) {
        let secrets: Api<Secret> = Api::namespaced(self.kube.client().await, "default");
        let mut s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": type_,
        }))
        .unwrap();
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
                .collect(),
        );
        match secrets.get_opt(name).await.unwrap() {
            Some(old) => {
                s.metadata.resource_version = old.metadata.resource_version;
                secrets
                    .replace(name, &PostParams::default(), &s)
                    .await
                    .unwrap();
            }
            None => {
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        }
    }

    /// A `kubernetes.io/dockerconfigjson` Secret for the registry, as
    /// `kubectl create secret docker-registry` writes it.
    async fn registry_secret(&self, name: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        let config = json!({"auths": {self.registry.host(): {
            "username": USER, "password": password, "auth": auth
        }}});
        self.secret(
            name,
            "kubernetes.io/dockerconfigjson",
            &[(".dockerconfigjson", config.to_string().as_bytes())],
        )
        .await;
    }

    /// Applies Deployment `name` of the private image, pulling with the
    /// login in Secret `pull_secret` (none: without `imagePullSecrets`).
    async fn apply(&self, name: &str, pull_secret: Option<&str>, tag: &str) {
        let api: Api<Deployment> = Api::namespaced(self.kube.client().await, "default");
        let d = json!({
            "apiVersion": "iot.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "targetDevices": [self.device],
                "score": {"type": "PodmanV1", "data": {"containers": [{
                    "name": "app",
                    "image": self.image,
                    "pullPolicy": "Always",
                    "command": ["sh", "-c", format!(
                        "echo env=$DB_PASSWORD; echo file=$(cat /etc/db/token); echo tag={tag}; exec sleep 3600"
                    )],
                    "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                    "volumes": [{"mountPath": "/etc/db", "secret": {"secretName": "db", "defaultMode": 256}}]
                }]}}
            }
        });
        let mut d = d;
        if let Some(secret) = pull_secret {
            d["spec"]["imagePullSecrets"] = json!([{"name": secret}]);
        }
        let d: Deployment = serde_json::from_value(d).unwrap();
        api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&d))
            .await
            .unwrap();
    }

    /// Waits until `name` is ready on the board and returns its revision.
    async fn ready(&self, name: &str, not: Option<&str>) -> String {
        self.until(&format!("{name}: ready"), || async {
            let s = e2e::kubectl_status(&self.kubectl, name)?;
            let revision = s["revision"].as_str().unwrap_or_default().to_string();
            if s["ready"] == 1 && s["upToDate"] == 1 && Some(revision.as_str()) != not {
                Ok(revision)
            } else {
                Err(s.to_string())
            }
        })
        .await
    }

    /// Applies `name` pulling with `pull_secret`, and waits until the
    /// board reports `ImagePullBackOff` for it with the registry's
    /// `unauthorized`; returns the board's entry.
    async fn pull_refused(&self, name: &str, pull_secret: Option<&str>) -> Value {
        self.apply(name, pull_secret, "1").await;
        let entry = self
            .until(&format!("{name}: ImagePullBackOff"), || async {
                let s = e2e::kubectl_status(&self.kubectl, name)?;
                let entry = e2e::device_entry(&s, &self.device);
                match entry {
                    Some(e) if e["reason"] == "ImagePullBackOff" => Ok(e),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        let message = entry["message"].as_str().unwrap_or_default();
        assert!(message.contains("unauthorized"), "{name}: {entry}");
        entry
    }

    /// The board's container of deployment `name`: its log.
    fn container_log(&self, name: &str) -> String {
        let running = self
            .podman
            .running_labelled("io.nationtech.iot.deployment", name);
        let Some((_, id)) = running.first() else {
            return String::new();
        };
        self.podman.run(&["logs", id])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.podman
            .remove_labelled("io.nationtech.iot.device", &self.device);
        e2e::remove_secrets_dir(&self.device);
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path);
        }
    }
    found
}

/// The x86_64 agent.
fn native_agent() -> Option<Vec<String>> {
    let bin = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
    Some(vec![bin.display().to_string()])
}

/// The static aarch64 agent under qemu-aarch64-static (what boards run);
/// `None` (a skip outside CI) when either is missing.
fn qemu_agent() -> Option<Vec<String>> {
    let Some(bin) = std::env::var_os("IOT_AGENT_AARCH64_BIN").map(PathBuf::from) else {
        return testkit::missing(
            "IOT_AGENT_AARCH64_BIN is not set (build with `cargo xtask dist --board rpi4` and point it at target/dist/rpi4/iot-agent)",
        );
    };
    let qemu = testkit::find_binary("QEMU_AARCH64", "qemu-aarch64-static")
        .or_else(|| testkit::missing::<PathBuf>("qemu-aarch64-static is not installed"))?;
    Some(vec![qemu.display().to_string(), bin.display().to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_with_secrets_runs_and_no_clear_text_leaks() {
    private_flow(native_agent()).await;
}

/// The same with the static aarch64 agent under qemu: the board's binary
/// opens the sealed values and pulls from the authenticated registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_aarch64_agent_under_qemu() {
    private_flow(qemu_agent()).await;
}

async fn private_flow(agent: Option<Vec<String>>) {
    let Some(mut w) = World::start(agent).await else {
        return;
    };
    w.registry_secret("regcred", PASSWORD).await;
    w.secret(
        "db",
        "Opaque",
        &[
            ("password", DB_PASSWORD.as_bytes()),
            ("token", DB_TOKEN.as_bytes()),
        ],
    )
    .await;
    w.apply("vault-app", Some("regcred"), "1").await;
    let first = w.ready("vault-app", None).await;
    // The container got the value both ways.
    w.until("the container prints the secret", || async {
        let log = w.container_log("vault-app");
        if log.contains(&format!("env={DB_PASSWORD}")) && log.contains(&format!("file={DB_TOKEN}"))
        {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    // Where clear text must not be.
    for secret in [DB_PASSWORD, DB_TOKEN, PASSWORD] {
        let needle = secret.as_bytes();
        assert_eq!(
            files_containing(w.nats.store_dir(), needle),
            Vec::<PathBuf>::new(),
            "the NATS store holds {secret}"
        );
        let state = w.dir.path().join(&w.device);
        assert_eq!(
            files_containing(&state, needle),
            Vec::<PathBuf>::new(),
            "the agent's state_dir holds {secret}"
        );
        for log in ["operator.log", "agent.log"] {
            let text = std::fs::read(w.dir.path().join(log)).unwrap();
            assert!(
                !text.windows(needle.len()).any(|x| x == needle),
                "{log} holds {secret}"
            );
        }
        let status = e2e::kubectl_status(&w.kubectl, "vault-app")
            .unwrap()
            .to_string();
        assert!(!status.contains(secret), "the CR status holds {secret}");
        if secret != DB_PASSWORD {
            for (_, id) in w
                .podman
                .running_labelled("io.nationtech.iot.deployment", "vault-app")
            {
                let inspect = w.podman.run(&["inspect", &id]);
                assert!(!inspect.contains(secret), "podman inspect shows {secret}");
            }
        }
    }
    // The KV values as the admin reads them: sealed only.
    let nats = async_nats::connect(w.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let kv = js
        .get_key_value(protocol::keys::DESIRED_STATE_BUCKET)
        .await
        .unwrap();
    let key = protocol::DeploymentKey::new(&w.device, "vault-app")
        .unwrap()
        .to_string();
    let value = kv.get(&key).await.unwrap().expect("the device's value");
    assert_eq!(value[0], protocol::wire::FORMAT_VERSION_5);
    for secret in [DB_PASSWORD, DB_TOKEN, PASSWORD, USER] {
        assert!(
            !value.windows(secret.len()).any(|x| x == secret.as_bytes()),
            "the KV value holds {secret} in clear"
        );
    }

    // No login, then a wrong one: ImagePullBackOff naming the registry's
    // refusal, and the password nowhere.
    let entry = w.pull_refused("vault-none", None).await;
    assert!(!entry.to_string().contains(PASSWORD), "{entry}");
    w.registry_secret("badcred", "not-the-password").await;
    let entry = w.pull_refused("vault-bad", Some("badcred")).await;
    assert!(!entry.to_string().contains("not-the-password"), "{entry}");
    let agent_log = std::fs::read_to_string(w.dir.path().join("agent.log")).unwrap();
    assert!(!agent_log.contains("not-the-password"));

    // Rotation: the registry takes only the new password; the Secret gets
    // it; the operator sees a new revision and the device pulls with it.
    w.registry.set_password(USER, NEW_PASSWORD);
    w.registry_secret("regcred", NEW_PASSWORD).await;
    let second = w.ready("vault-app", Some(&first)).await;
    assert_ne!(first, second);
    w.until("the new container runs", || async {
        let log = w.container_log("vault-app");
        if log.contains(&format!("env={DB_PASSWORD}")) {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    let agent_log = std::fs::read_to_string(w.dir.path().join("agent.log")).unwrap();
    assert!(!agent_log.contains(NEW_PASSWORD));
}
