//! End to end: a Deployment through the operator's real reconcile (kube
//! `Client` over the mock API server) into a real nats-server, the real
//! `iot-agent` binary as a separate process (x86_64, and the static aarch64
//! build under qemu), real Podman, and the device's reports folded back
//! into the CR status.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use operator::crd::{Deployment, DeploymentSpec, FINALIZER, Rollout, Score, revision_string};
use operator::status::StatusCache;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, Nats, reconcile};
use protocol::{DeploymentKey, DeploymentStatus, Phase};
use serde_json::json;
use testkit::{NatsServer, PodmanService, http_get, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
/// How long any one step of a flow may take.
const WAIT: Duration = Duration::from_secs(60);

/// One nats-server, one Podman service, the operator's NATS access and
/// reconcile context over a mock API server; agents are added per device.
struct World {
    nats: NatsServer,
    podman: PodmanService,
    ops: Nats,
    api: MockApiServer,
    ctx: Arc<Context>,
    dir: tempfile::TempDir,
    agents: Vec<(String, Child)>,
}

impl World {
    async fn start() -> Option<World> {
        let nats = NatsServer::start()?;
        let podman = PodmanService::start()?;
        podman.ensure_busybox_image(IMAGE);
        let client = async_nats::connect(nats.url()).await.unwrap();
        let ops = Nats::from_client(client);
        ops.ensure_buckets(true).await.unwrap();
        let (cache, _changes) = StatusCache::new(Duration::from_secs(30));
        tokio::spawn(cache.clone().watch(ops.clone()));
        let (kube, api) = MockApiServer::start();
        let ctx = Arc::new(Context::new(
            kube,
            ops.clone(),
            cache,
            ControllerConfig::default(),
        ));
        eprintln!("e2e against {}", nats.version());
        Some(World {
            nats,
            podman,
            ops,
            api,
            ctx,
            dir: tempfile::tempdir().unwrap(),
            agents: Vec::new(),
        })
    }

    /// Starts the real agent for `device`: the x86_64 binary, or with
    /// `qemu` the static aarch64 build under qemu-aarch64-static.
    fn spawn_agent(&mut self, device: &str, agent: &[String]) {
        let spec = e2e::AgentSpec {
            device,
            nats_url: &self.nats.url(),
            podman_uri: &self.podman.uri(),
            containers_conf: &PodmanService::containers_conf(),
            labels: &[],
            log: None,
            nats_nkey: None,
            sealing_key: None,
        };
        let child = e2e::spawn_agent(agent, self.dir.path(), &spec).unwrap();
        self.agents.push((device.to_string(), child));
    }

    /// Reconciles the object as the API server holds it, until the
    /// finalizer is on and the status describes its generation, like the
    /// controller does on successive watch events.
    async fn reconcile(&self, ns: &str, name: &str) -> Deployment {
        for _ in 0..3 {
            let d = self.api.get(ns, name).unwrap();
            reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
            let d = self.api.get(ns, name).unwrap();
            let has_finalizer = d
                .metadata
                .finalizers
                .as_deref()
                .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
            let observed = d.status.as_ref().and_then(|s| s.observed_generation);
            if has_finalizer && observed == d.metadata.generation {
                return d;
            }
        }
        panic!("{ns}/{name} did not settle after three reconciles");
    }

    /// Creates or updates the CR on the API server (bumping generation on
    /// spec changes) and reconciles it.
    async fn apply(
        &self,
        ns: &str,
        name: &str,
        targets: &[&str],
        data: serde_json::Value,
    ) -> Deployment {
        self.apply_typed(ns, name, targets, "PodmanV0", data).await
    }

    /// [`World::apply`] with a score of type `type_name`.
    async fn apply_typed(
        &self,
        ns: &str,
        name: &str,
        targets: &[&str],
        type_name: &str,
        data: serde_json::Value,
    ) -> Deployment {
        self.apply_rollout(ns, name, targets, type_name, data, Rollout::default())
            .await
    }

    /// [`World::apply_typed`] with a rollout policy.
    async fn apply_rollout(
        &self,
        ns: &str,
        name: &str,
        targets: &[&str],
        type_name: &str,
        data: serde_json::Value,
        rollout: Rollout,
    ) -> Deployment {
        let mut d = match self.api.get(ns, name) {
            Some(mut old) => {
                old.metadata.generation = old.metadata.generation.map(|g| g + 1);
                old
            }
            None => {
                let mut d = Deployment::new(
                    name,
                    DeploymentSpec {
                        target_devices: vec![],
                        target_selector: None,
                        image_pull_secrets: Vec::new(),
                        rollout: Rollout::default(),
                        score: Score {
                            type_name: "PodmanV0".into(),
                            data: json!({}),
                        },
                    },
                );
                d.metadata.namespace = Some(ns.into());
                d.metadata.uid = Some(format!("uid-{ns}-{name}"));
                d.metadata.generation = Some(1);
                d
            }
        };
        d.spec.target_devices = targets.iter().map(|s| s.to_string()).collect();
        d.spec.rollout = rollout;
        d.spec.score.type_name = type_name.into();
        d.spec.score.data = data;
        self.api.insert(&d);
        self.reconcile(ns, name).await
    }

    /// Marks the CR deleted and reconciles: cleanup, then finalizer release.
    async fn delete(&self, ns: &str, name: &str) -> Deployment {
        let mut d = self.api.get(ns, name).unwrap();
        d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        self.api.insert(&d);
        reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
        self.api.get(ns, name).unwrap()
    }

    async fn device_status(&self, device: &str, name: &str) -> Option<DeploymentStatus<'static>> {
        let key = DeploymentKey::new(device, name).unwrap().to_string();
        let rec = self
            .ops
            .scan(protocol::keys::DEVICE_STATUS_BUCKET, &key)
            .await
            .ok()?
            .into_iter()
            .next()?;
        if rec.deleted {
            return None;
        }
        Some(
            protocol::wire::decode::<DeploymentStatus>(&rec.value)
                .ok()?
                .into_owned(),
        )
    }

    /// Waits until `device` reports `phase` for `name`, at `revision` when given.
    async fn wait_phase(&self, device: &str, name: &str, revision: Option<u64>, phase: Phase) {
        let mut last = None;
        let deadline = std::time::Instant::now() + WAIT;
        let mut ok = false;
        while std::time::Instant::now() < deadline {
            last = self.device_status(device, name).await;
            if last
                .as_ref()
                .is_some_and(|s| revision.is_none_or(|r| s.revision == r) && s.phase == phase)
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ok,
            "{device}/{name}: never {phase} at {revision:x?}; last {last:?}"
        );
    }

    /// Waits until the CR status (after a reconcile that folds the reports
    /// in) satisfies `pred`.
    async fn wait_cr(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        pred: impl Fn(&operator::DeploymentStatus) -> bool,
    ) {
        let mut last = None;
        for _ in 0..(WAIT.as_millis() / 100) {
            let d = self.api.get(ns, name).unwrap();
            reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
            last = self.api.get(ns, name).unwrap().status;
            if last.as_ref().is_some_and(&pred) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ns}/{name}: CR status never {what}; last {last:?}");
    }

    /// Running containers of `device`: (name, id).
    fn containers(&self, device: &str) -> Vec<(String, String)> {
        self.podman
            .running_labelled("io.nationtech.iot.device", device)
    }

    async fn wait_containers(&self, device: &str, names: &[&str]) -> Vec<(String, String)> {
        let mut last = Vec::new();
        let ok = testkit::wait_until_async(WAIT, || {
            last = self.containers(device);
            let ok = last
                .iter()
                .map(|(n, _)| n.as_str())
                .eq(names.iter().copied());
            async move { ok }
        })
        .await;
        assert!(ok, "{device}: expected {names:?} running, have {last:?}");
        last
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (device, mut child) in self.agents.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            self.podman
                .remove_labelled("io.nationtech.iot.device", &device);
        }
    }
}

/// A score: busybox httpd on `port`, with `greeting` in its environment so
/// that changing it changes the spec.
fn web(port: u16, greeting: &str) -> serde_json::Value {
    json!({"containers": [{
        "name": "web",
        "image": IMAGE,
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "env": [{"name": "GREETING", "value": greeting}],
        "ports": [{"containerPort": 8080, "hostPort": port, "hostIP": "127.0.0.1"}],
        "pullPolicy": "Never"
    }]})
}

fn revision(d: &Deployment) -> u64 {
    u64::from_str_radix(d.status.as_ref().unwrap().revision.as_deref().unwrap(), 16).unwrap()
}

fn native_agent() -> Vec<String> {
    let bin = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
    vec![bin.display().to_string()]
}

/// Create -> running, answering and 1/1 ready; update -> replaced; delete ->
/// keys and container gone, finalizer released.
async fn full_flow(agent: Vec<String>, tag: &str) {
    let Some(mut w) = World::start().await else {
        return;
    };
    let device = unique(tag);
    w.spawn_agent(&device, &agent);
    let port = testkit::free_port();

    // 1. Created: key written, container runs and answers, CR 1/1 ready.
    let d = w
        .apply("fleet", "hello", &[&device], web(port, "one"))
        .await;
    let rev1 = revision(&d);
    let key = DeploymentKey::new(&device, "hello").unwrap().to_string();
    let stored = w
        .ops
        .scan(protocol::keys::DESIRED_STATE_BUCKET, &key)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "the operator wrote {key}");
    w.wait_phase(&device, "hello", Some(rev1), Phase::Healthy)
        .await;
    let first = w
        .wait_containers(&device, &[&format!("{device}_hello_web")])
        .await;
    let mut answer = None;
    assert!(
        testkit::wait_until_async(WAIT, || {
            answer = http_get(port);
            let ok = answer
                .as_deref()
                .is_some_and(|a| a.contains("hello from busybox"));
            async move { ok }
        })
        .await,
        "no answer on 127.0.0.1:{port}: {answer:?}"
    );
    let rev1_hex = revision_string(rev1);
    w.wait_cr("fleet", "hello", "1/1 ready at the first revision", |s| {
        s.targeted == 1
            && s.ready == 1
            && s.up_to_date == 1
            && s.revision.as_deref() == Some(&rev1_hex)
    })
    .await;

    // 2. Score changed: new revision, container replaced, status follows.
    let d = w
        .apply("fleet", "hello", &[&device], web(port, "two"))
        .await;
    let rev2 = revision(&d);
    assert_ne!(rev1, rev2);
    w.wait_phase(&device, "hello", Some(rev2), Phase::Healthy)
        .await;
    let second = w
        .wait_containers(&device, &[&format!("{device}_hello_web")])
        .await;
    assert_ne!(first[0].1, second[0].1, "the container was replaced");
    let rev2_hex = revision_string(rev2);
    w.wait_cr("fleet", "hello", "1/1 ready at the second revision", |s| {
        s.ready == 1 && s.revision.as_deref() == Some(&rev2_hex)
    })
    .await;

    // 4. Deleted: keys removed, container removed, finalizer released.
    let d = w.delete("fleet", "hello").await;
    assert!(
        d.metadata
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "finalizer released: {:?}",
        d.metadata.finalizers
    );
    let rec = w
        .ops
        .scan(protocol::keys::DESIRED_STATE_BUCKET, &key)
        .await
        .unwrap();
    assert!(rec.iter().all(|r| r.deleted), "key deleted: {rec:?}");
    w.wait_containers(&device, &[]).await;
    // A delete marker carries no revision; the agent reports Removed.
    w.wait_phase(&device, "hello", None, Phase::Removed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_to_running_container_to_ready_and_back() {
    full_flow(native_agent(), "e2e").await;
}

/// 5. The same flow with the static aarch64 agent under qemu-aarch64-static.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_with_the_aarch64_agent_under_qemu() {
    let Some(agent) = qemu_agent() else { return };
    full_flow(agent, "e2e-arm").await;
}

/// The static aarch64 agent under qemu-aarch64-static, as a command line;
/// `None` (a skip outside CI) when either is missing.
fn qemu_agent() -> Option<Vec<String>> {
    let Some(bin) = std::env::var_os("IOT_AGENT_AARCH64_BIN").map(PathBuf::from) else {
        return testkit::missing(
            "IOT_AGENT_AARCH64_BIN is not set (build with `cargo xtask dist --board rpi4` and point it at target/dist/rpi4/iot-agent)",
        );
    };
    let qemu = testkit::find_binary("QEMU_AARCH64", "qemu-aarch64-static").or_else(|| {
        testkit::missing::<std::path::PathBuf>("qemu-aarch64-static is not installed")
    })?;
    Some(vec![qemu.display().to_string(), bin.display().to_string()])
}

/// 3. A device removed from the targets loses the container; the other
/// device's container is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_target_removes_the_container_on_that_device_only() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let (a, b) = (unique("e2e-a"), unique("e2e-b"));
    w.spawn_agent(&a, &native_agent());
    w.spawn_agent(&b, &native_agent());
    let d = w
        .apply("fleet", "shared", &[&a, &b], web(0, "x").pipe(no_ports))
        .await;
    let rev = revision(&d);
    w.wait_phase(&a, "shared", Some(rev), Phase::Healthy).await;
    w.wait_phase(&b, "shared", Some(rev), Phase::Healthy).await;
    let on_a = w.wait_containers(&a, &[&format!("{a}_shared_web")]).await;
    w.wait_containers(&b, &[&format!("{b}_shared_web")]).await;

    w.apply("fleet", "shared", &[&a], web(0, "x").pipe(no_ports))
        .await;
    w.wait_containers(&b, &[]).await;
    assert_eq!(w.containers(&a), on_a, "device a untouched");
    w.wait_cr("fleet", "shared", "1/1 ready", |s| {
        s.targeted == 1 && s.ready == 1
    })
    .await;
}

/// 6. Two agents on one Podman each run only their own deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_only_their_own_deployments() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let (a, b) = (unique("e2e-own-a"), unique("e2e-own-b"));
    w.spawn_agent(&a, &native_agent());
    w.spawn_agent(&b, &native_agent());
    let da = w
        .apply("fleet", "only-a", &[&a], web(0, "a").pipe(no_ports))
        .await;
    let db = w
        .apply("fleet", "only-b", &[&b], web(0, "b").pipe(no_ports))
        .await;
    w.wait_phase(&a, "only-a", Some(revision(&da)), Phase::Healthy)
        .await;
    w.wait_phase(&b, "only-b", Some(revision(&db)), Phase::Healthy)
        .await;
    w.wait_containers(&a, &[&format!("{a}_only-a_web")]).await;
    w.wait_containers(&b, &[&format!("{b}_only-b_web")]).await;
    assert!(w.device_status(&a, "only-b").await.is_none());
    assert!(w.device_status(&b, "only-a").await.is_none());
}

fn no_ports(mut v: serde_json::Value) -> serde_json::Value {
    v["containers"][0]["ports"] = json!([]);
    v
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// A PodmanV1 container that exits 1 at once: the agent restarts it with
/// back-off, and the CR status shows the device CrashLoopBackOff with its
/// reason, neither ready nor healthy, and says so in the Degraded message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_on_the_device_shows_in_the_cr_status() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let device = unique("e2e-crash");
    w.spawn_agent(&device, &native_agent());
    let data = json!({"containers": [{
        "name": "crash",
        "image": IMAGE,
        "command": ["sh", "-c", "exit 1"],
        "pullPolicy": "Never"
    }]});
    let d = w
        .apply_typed("fleet", "crasher", &[&device], "PodmanV1", data)
        .await;
    let rev = revision(&d);
    w.wait_phase(&device, "crasher", Some(rev), Phase::CrashLoopBackOff)
        .await;
    // The device cycles (exit, back-off, restart, running, exit...), so a
    // single report may be any step of it: wait for one in back-off after
    // a restart.
    let deadline = std::time::Instant::now() + WAIT;
    let mut status = w.device_status(&device, "crasher").await.unwrap();
    while !(status.phase == Phase::CrashLoopBackOff
        && status.reason == protocol::Reason::CrashLoopBackOff
        && status.containers[0].restart_count >= 1)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = w.device_status(&device, "crasher").await.unwrap();
    }
    assert_eq!(
        status.reason,
        protocol::Reason::CrashLoopBackOff,
        "{status:?}"
    );
    let c = &status.containers[0];
    assert_eq!(c.exit_code, Some(1));
    assert!(c.restart_count >= 1, "{c:?}");
    w.wait_cr("fleet", "crasher", "CrashLoopBackOff", |s| {
        s.ready == 0
            && s.healthy == 0
            && s.devices.iter().any(|e| {
                e.device == device
                    && e.phase == operator::crd::DevicePhase::CrashLoopBackOff
                    && e.reason.as_deref() == Some("CrashLoopBackOff")
            })
            && s.conditions.iter().any(|c| {
                c.type_ == "Degraded"
                    && c.status == "True"
                    && c.message.contains("CrashLoopBackOff")
            })
    })
    .await;
}

/// A PodmanV1 sleeper whose environment tags the revision.
fn sleeper_v1(tag: &str) -> serde_json::Value {
    json!({"containers": [{
        "name": "app",
        "image": IMAGE,
        "command": ["sleep", "3600"],
        "env": [{"name": "TAG", "value": tag}],
        "pullPolicy": "Never"
    }]})
}

/// Rollback on the device, through the whole system: revision 1 proves
/// healthy (its progress deadline passes while it is Healthy), revision 2
/// crash-loops, the device runs revision 1 again by itself and the CR
/// shows the device RolledBack to it; revision 3 then applies.
async fn rollback_flow(agent: Vec<String>, tag: &str) {
    let Some(mut w) = World::start().await else {
        return;
    };
    let device = unique(tag);
    w.spawn_agent(&device, &agent);
    let rollout = Rollout {
        auto_rollback: true,
        progress_deadline_seconds: 3,
        ..Rollout::default()
    };
    let targets = [device.as_str()];
    let apply = |data| {
        w.apply_rollout(
            "fleet",
            "rollme",
            &targets,
            "PodmanV1",
            data,
            rollout.clone(),
        )
    };
    let rev1 = revision(&apply(sleeper_v1("one")).await);
    w.wait_phase(&device, "rollme", Some(rev1), Phase::Healthy)
        .await;
    // Proven: the agent keeps it as the revision to go back to.
    let proven = w.dir.path().join(&device).join("healthy").join("rollme");
    assert!(
        testkit::wait_until_async(WAIT, || {
            let ok = proven.exists();
            async move { ok }
        })
        .await,
        "revision 1 never proved healthy ({} missing)",
        proven.display()
    );
    let name = format!("{device}_rollme_app");
    let first = w.wait_containers(&device, &[&name]).await;

    let crash = json!({"containers": [{
        "name": "app",
        "image": IMAGE,
        "command": ["sh", "-c", "exit 1"],
        "pullPolicy": "Never"
    }]});
    let rev2 = revision(&apply(crash).await);
    assert_ne!(rev1, rev2);
    w.wait_phase(&device, "rollme", Some(rev2), Phase::RolledBack)
        .await;
    let status = w.device_status(&device, "rollme").await.unwrap();
    assert_eq!(status.running_revision, Some(rev1), "{status:?}");
    assert_eq!(status.reason, protocol::Reason::CrashLoopBackOff);
    w.wait_cr("fleet", "rollme", "RolledBack to revision 1", |s| {
        s.failed == 1
            && s.devices.iter().any(|e| {
                e.device == device
                    && e.phase == operator::crd::DevicePhase::RolledBack
                    && e.running_revision.as_deref() == Some(revision_string(rev1).as_str())
            })
    })
    .await;
    // Revision 1's container runs again, under its name.
    let again = w.wait_containers(&device, &[&name]).await;
    assert_eq!(again.len(), first.len());
    let label = w.podman.run(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"io.nationtech.iot.revision\"}}",
        &name,
    ]);
    assert_eq!(label.trim(), rev1.to_string(), "the running revision");

    // A good revision 3 applies.
    let rev3 = revision(&apply(sleeper_v1("three")).await);
    w.wait_phase(&device, "rollme", Some(rev3), Phase::Healthy)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_revision_is_rolled_back_on_the_device() {
    rollback_flow(native_agent(), "e2e-rb").await;
}

/// The rollback with the static aarch64 agent under qemu-aarch64-static.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_with_the_aarch64_agent_under_qemu() {
    let Some(agent) = qemu_agent() else { return };
    rollback_flow(agent, "e2e-rb-arm").await;
}
