//! End to end, the whole system as a platform team runs it: a real
//! kube-apiserver with both CRDs, the real `iot-operator` binary running its
//! controllers against it, a real nats-server, two real `iot-agent`
//! processes with different `[labels]`, and real Podman.
//!
//! The boards appear as Device objects with their labels; a Deployment that
//! targets a label runs on both; an administrator relabels one board and its
//! container goes away while the other keeps running, untouched.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Child;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use operator::crd::{Deployment, Device};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::{NatsServer, PodmanService, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(90);

struct World {
    nats: NatsServer,
    podman: PodmanService,
    kube: KubeApiServer,
    dir: tempfile::TempDir,
    operator: Option<Child>,
    agents: Vec<(String, Child)>,
}

impl World {
    async fn start() -> Option<World> {
        let nats = NatsServer::start()?;
        let podman = PodmanService::start()?;
        let kube = KubeApiServer::start().await?;
        podman.ensure_busybox_image(IMAGE);
        kube.install_crds(&testkit::repo_root().join("deploy/crd.yaml"))
            .await;
        let mut w = World {
            nats,
            podman,
            kube,
            dir: tempfile::tempdir().unwrap(),
            operator: None,
            agents: Vec::new(),
        };
        w.spawn_operator();
        Some(w)
    }

    /// The real operator binary, as a cluster would run it (KUBECONFIG in
    /// place of the in-cluster configuration), with short intervals.
    fn spawn_operator(&mut self) {
        let child = e2e::spawn_operator(
            &self.nats.url(),
            &self.kube.kubeconfig(),
            &self.dir.path().join("operator.log"),
            &["--heartbeat-timeout-secs", "20", "--resync-secs", "5"],
        )
        .unwrap_or_else(|e| panic!("{}", error_report::Chain(&e)));
        self.operator = Some(child);
    }

    fn spawn_agent(&mut self, device: &str, labels: &[(&str, &str)]) {
        let bin = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
        let spec = e2e::AgentSpec {
            device,
            nats_url: &self.nats.url(),
            podman_uri: &self.podman.uri(),
            containers_conf: &PodmanService::containers_conf(),
            labels,
            log: None,
            nats_nkey: None,
            sealing_key: None,
        };
        let child = e2e::spawn_agent(&[bin.display().to_string()], self.dir.path(), &spec).unwrap();
        self.agents.push((device.to_string(), child));
    }

    /// Running containers of `device`: (name, id).
    fn containers(&self, device: &str) -> Vec<(String, String)> {
        self.podman
            .running_labelled("io.nationtech.iot.device", device)
    }

    /// Polls `probe` until it gives `Ok`; panics after [`WAIT`] with what it
    /// saw last and the operator's log.
    async fn eventually<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let start = Instant::now();
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(last) if start.elapsed() > WAIT => {
                    let log = std::fs::read_to_string(self.dir.path().join("operator.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "{what}: not so within {WAIT:?}; last seen: {last}\noperator log (last lines, newest first):\n{}",
                        tail.join("\n")
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn wait_containers(&self, device: &str, names: &[String]) -> Vec<(String, String)> {
        self.eventually(&format!("{device} runs {names:?}"), || async {
            let have = self.containers(device);
            if have.iter().map(|(n, _)| n).eq(names.iter()) {
                Ok(have)
            } else {
                Err(format!("{have:?}"))
            }
        })
        .await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill();
            let _ = op.wait();
        }
        for (device, mut child) in self.agents.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            self.podman
                .remove_labelled("io.nationtech.iot.device", &device);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_appear_with_their_labels_and_a_selector_follows_a_relabel() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let client = w.kube.client().await;
    let (a, b) = (unique("inv-a"), unique("inv-b"));
    w.spawn_agent(&a, &[("site", "lyon"), ("board", "rpi4")]);
    w.spawn_agent(&b, &[("site", "lyon"), ("board", "rpi5")]);

    // Both boards are in the inventory with their own labels, and a label
    // selector (what `kubectl get iotdev -l site=lyon` sends) finds them.
    let devices: Api<Device> = Api::all(client.clone());
    let both = {
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        want
    };
    w.eventually("both boards listed under site=lyon", || async {
        let list = devices
            .list(&ListParams::default().labels("site=lyon"))
            .await
            .map_err(|e| e.to_string())?;
        // The object is created at the first heartbeat and its status
        // patched after it: wait for both, as what follows reads both.
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(|s| s.system_info.is_some()))
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        names.sort();
        if names == both {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let dev_a = devices.get(&a).await.unwrap();
    let labels = dev_a.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("board").map(String::as_str), Some("rpi4"));
    let status = dev_a.status.clone().unwrap();
    let info = status.system_info.unwrap();
    assert_eq!(info.architecture, std::env::consts::ARCH);
    assert!(!info.kernel_version.is_empty() && !info.boot_id.is_empty());
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    let rpi5 = devices
        .list(&ListParams::default().labels("board in (rpi5)"))
        .await
        .unwrap();
    assert_eq!(rpi5.items.len(), 1);

    // A Deployment that targets the label, and names no device.
    let ar = ApiResource::erase::<Deployment>(&());
    let deployments: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let body = json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": "sensor", "namespace": "default"},
        "spec": {
            "targetSelector": {"matchLabels": {"site": "lyon"}},
            "score": {"type": "PodmanV0", "data": {"containers": [{
                "name": "main",
                "image": IMAGE,
                "command": ["sleep", "3600"],
                "pullPolicy": "Never"
            }]}},
        },
    });
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    let on_a = w.wait_containers(&a, &[format!("{a}_sensor_main")]).await;
    w.wait_containers(&b, &[format!("{b}_sensor_main")]).await;

    // The administrator moves board b: its label wins over the board's own,
    // the selector no longer matches, and only b's container goes.
    devices
        .patch(
            &b,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"site": "paris"}}})),
        )
        .await
        .unwrap();
    w.wait_containers(&b, &[]).await;
    assert_eq!(w.containers(&a), on_a, "board a untouched");
    let typed: Api<Deployment> = Api::namespaced(client.clone(), "default");
    w.eventually("the Deployment counts one target", || async {
        let d = typed.get("sensor").await.map_err(|e| e.to_string())?;
        let s = d.status.unwrap_or_default();
        if s.targeted == 1 && s.ready == 1 {
            Ok(())
        } else {
            Err(format!("targeted {} ready {}", s.targeted, s.ready))
        }
    })
    .await;
    // The board's own label did not come back over the administrator's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dev_b = devices.get(&b).await.unwrap();
    let site: Option<Value> = dev_b
        .metadata
        .labels
        .and_then(|l| l.get("site").cloned())
        .map(Value::String);
    assert_eq!(site, Some(json!("paris")));
}
