//! End to end, when a board may change, as a platform team sees it: a real
//! kube-apiserver with the CRDs, the real `iot-operator` binary, a real
//! nats-server, a real `iot-agent` and real Podman.
//!
//! A host process holds the board's update lock: a new revision waits, and
//! `kubectl get` and `iot-operator status` say `Waiting`/`UpdateLocked` with
//! since when, while the old container keeps running. A Deployment whose
//! maintenance window is closed waits with `OutsideMaintenanceWindow` and
//! the window's next start, until `force` lets it through. Once the holder
//! dies (SIGKILL: flock releases with the process) the held revision
//! applies and the Deployment becomes Ready.
#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::crd::{Deployment, revision_string};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;
use testkit::{NatsServer, PodmanService, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(90);

struct World {
    nats: NatsServer,
    podman: PodmanService,
    kube: KubeApiServer,
    kubectl: Kubectl,
    dir: tempfile::TempDir,
    /// The operator, then the agent.
    children: Vec<Child>,
    /// A host process holding the update lock, in a process group of its own.
    holder: Option<Child>,
    device: String,
}

impl World {
    async fn start() -> Option<World> {
        let nats = NatsServer::start()?;
        let (podman, kube, kubectl) = e2e::podman_and_apiserver(IMAGE).await?;
        let dir = tempfile::tempdir().unwrap();
        let operator = e2e::spawn_operator(
            &nats.url(),
            &kube.kubeconfig(),
            &dir.path().join("operator.log"),
            &["--resync-secs", "2"],
        )
        .unwrap_or_else(|e| panic!("{}", error_report::Chain(&e)));
        eprintln!("e2e against {}", nats.version());
        let device = unique("kiosk");
        let agent = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
        let spec = e2e::AgentSpec {
            device: &device,
            nats_url: &nats.url(),
            podman_uri: &podman.uri(),
            containers_conf: &PodmanService::containers_conf(),
            labels: &[("site", "lab")],
            log: None,
            nats_nkey: None,
            sealing_key: None,
        };
        let agent = e2e::spawn_agent(&[agent.display().to_string()], dir.path(), &spec).unwrap();
        Some(World {
            nats,
            podman,
            kube,
            kubectl,
            dir,
            children: vec![operator, agent],
            holder: None,
            device,
        })
    }

    /// [`e2e::until`] with the operator's log.
    async fn until<T, F, Fut>(&self, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let logs = [self.dir.path().join("operator.log")];
        e2e::until(what, WAIT, &logs, probe).await
    }

    /// Waits until `name`'s status says the board runs `revision` (ready
    /// devices are counted, not listed).
    async fn ready_at(&self, name: &str, revision: u64) {
        let want = revision_string(revision);
        self.until(&format!("{name}: ready at {want}"), || async {
            let s = e2e::kubectl_status(&self.kubectl, name)?;
            if s["revision"] == want.as_str() && s["ready"] == 1 && s["upToDate"] == 1 {
                Ok(())
            } else {
                Err(s.to_string())
            }
        })
        .await
    }

    /// Waits until the board's entry in `name`'s `.status.devices` (where
    /// devices that are not ready are listed) satisfies `ok`; returns it.
    async fn device_status(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.until(&format!("{name}: {what}"), || async {
            let s = e2e::kubectl_status(&self.kubectl, name)?;
            let entry = e2e::device_entry(&s, &self.device);
            match entry {
                Some(e) if ok(&e) => Ok(e),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// `iot-operator status NAME` against the nats-server: the table a user
    /// without kubectl reads.
    fn cli_status(&self, name: &str) -> String {
        let bin = e2e::operator_binary().unwrap();
        let out = Command::new(bin)
            .args(["status", name, "--nats-url", &self.nats.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A host process holding the board's update lock, as a maintenance
    /// script would (`flock -o FILE CMD`: `-o` so that the lock is
    /// `flock`'s alone, not inherited by the command).
    async fn hold_lock(&mut self) {
        let dir = e2e::lock_dir(self.dir.path(), &self.device);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("update.lock");
        let child = Command::new("flock")
            .arg("-o")
            .arg(&file)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        self.holder = Some(child);
        // Held once a non-blocking attempt fails.
        self.until("the host process holds the lock", || async {
            let free = Command::new("flock")
                .args(["-n", "-E", "99"])
                .arg(&file)
                .arg("true")
                .status()
                .map_err(|e| e.to_string())?;
            if free.code() == Some(99) {
                Ok(())
            } else {
                Err(format!("flock -n: {free}"))
            }
        })
        .await;
    }

    /// SIGKILLs the lock holder's process group: nothing releases the lock
    /// but the kernel, as when a workload crashes.
    fn kill_holder(&mut self) {
        if let Some(mut child) = self.holder.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }

    /// The running container of `deployment`'s `app`: its id and `TAG`.
    fn running_app(&self, deployment: &str) -> (String, String) {
        let name = format!("{}_{deployment}_app", self.device);
        let out = self.podman.run(&[
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}} {{.Config.Env}}",
            &name,
        ]);
        let mut parts = out.trim().splitn(3, ' ');
        let id = parts.next().unwrap_or_default().to_string();
        assert_eq!(parts.next(), Some("running"), "{name}: {out}");
        let env = parts.next().unwrap_or_default();
        let tag = env
            .split([' ', '[', ']'])
            .find_map(|kv| kv.strip_prefix("TAG="))
            .unwrap_or_default()
            .to_string();
        (id, tag)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_holder();
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.podman
            .remove_labelled("io.nationtech.iot.device", &self.device);
    }
}

/// A Deployment of one busybox sleeper `app` tagged `tag` on the board,
/// with `rollout` as its rollout.
fn manifest(name: &str, device: &str, tag: &str, rollout: Value) -> Value {
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetDevices": [device],
            "rollout": rollout,
            "score": {"type": "PodmanV1", "data": {"containers": [{
                "name": "app",
                "image": IMAGE,
                "command": ["sleep", "3600"],
                "env": [{"name": "TAG", "value": tag}],
                "pullPolicy": "Never",
            }]}},
        },
    })
}

fn is(e: &Value, field: &str, want: &str) -> bool {
    e[field].as_str() == Some(want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_update_and_a_closed_window_show_in_kubectl_and_the_cli() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let client = w.kube.client().await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let device = w.device.clone();

    // (a) The kiosk runs revision 1; it honours the board's update lock.
    let lock = json!({"updateLock": {"timeoutSeconds": 0}});
    let kiosk: Deployment =
        serde_json::from_value(manifest("kiosk", &device, "one", lock.clone())).unwrap();
    api.create(&PostParams::default(), &kiosk).await.unwrap();
    let rev1 = operator::plan(&api.get("kiosk").await.unwrap())
        .unwrap()
        .revision;
    w.ready_at("kiosk", rev1).await;
    let (id1, tag) = w.running_app("kiosk");
    assert_eq!(tag, "one");

    // (b) A host process takes the lock; revision 2 waits for it.
    w.hold_lock().await;
    let patch =
        json!({"spec": {"score": manifest("kiosk", &device, "two", lock)["spec"]["score"]}});
    api.patch("kiosk", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rev2 = operator::plan(&api.get("kiosk").await.unwrap())
        .unwrap()
        .revision;
    assert_ne!(rev1, rev2);
    let waiting = w
        .device_status("kiosk", "Waiting/UpdateLocked at revision 2", |e| {
            is(e, "phase", "Waiting")
                && is(e, "reason", "UpdateLocked")
                && is(e, "revision", &revision_string(rev2))
        })
        .await;
    assert_eq!(
        waiting["runningRevision"],
        revision_string(rev1),
        "{waiting}"
    );
    assert!(waiting["waitingSince"].is_string(), "{waiting}");
    let table = w.cli_status("kiosk");
    assert!(
        table.contains("Waiting") && table.contains("UpdateLocked"),
        "iot-operator status:\n{table}"
    );
    // The old container still runs, untouched.
    assert_eq!(w.running_app("kiosk"), (id1.clone(), "one".to_string()));
    let d = serde_json::to_value(api.get("kiosk").await.unwrap().status).unwrap();
    let ready = d["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["status"], "False", "{d}");

    // (c) A Deployment whose only window is closed (1 January, 03:00 UTC)
    // waits, with the window's next start...
    let window =
        json!({"maintenanceWindows": [{"at": "0 3 1 1 *", "timeZone": "UTC", "duration": "1h"}]});
    let nightly: Deployment =
        serde_json::from_value(manifest("nightly", &device, "n", window)).unwrap();
    api.create(&PostParams::default(), &nightly).await.unwrap();
    let held = w
        .device_status("nightly", "Waiting/OutsideMaintenanceWindow", |e| {
            is(e, "phase", "Waiting") && is(e, "reason", "OutsideMaintenanceWindow")
        })
        .await;
    let until = held["waitingUntil"].as_str().unwrap_or_default();
    assert!(until.ends_with("-01-01T03:00:00Z"), "{held}");
    let table = w.cli_status("nightly");
    assert!(
        table.contains("OutsideMaintenanceWindow"),
        "iot-operator status:\n{table}"
    );
    let running = w
        .podman
        .running_labelled("io.nationtech.iot.device", &device);
    assert!(
        running.iter().all(|(n, _)| !n.contains("_nightly_")),
        "nightly runs outside its window: {running:?}"
    );
    // ... until the team forces it.
    let force = json!({"spec": {"rollout": {"force": true}}});
    api.patch("nightly", &PatchParams::default(), &Patch::Merge(&force))
        .await
        .unwrap();
    let nightly_rev = operator::plan(&api.get("nightly").await.unwrap())
        .unwrap()
        .revision;
    w.ready_at("nightly", nightly_rev).await;

    // (d) The holder dies: the lock goes with it and revision 2 applies.
    w.kill_holder();
    w.ready_at("kiosk", rev2).await;
    let (id2, tag) = w.running_app("kiosk");
    assert_eq!(tag, "two");
    assert_ne!(id1, id2);
    let out = w
        .kubectl
        .run(&[
            "-n",
            "default",
            "wait",
            "--for=condition=Ready",
            "iotdeploy/kiosk",
            "--timeout=60s",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
