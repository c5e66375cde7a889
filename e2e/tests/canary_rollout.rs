//! End to end, a canary rollout as a platform team runs one: a real
//! kube-apiserver with the CRDs, the real `iot-operator` binary, a real
//! nats-server, three real `iot-agent` processes whose `[labels]` say
//! `stage: canary`, `prod`, `prod`, real Podman, and the real `kubectl wait`.
//!
//! A good revision reaches the prod boards only after the canary reported it
//! Healthy; a revision whose health check fails stops at the canary, the
//! rollout halts Degraded/RolledBack, and every board runs the good revision
//! again. The order is read from a watch on the desired-state and status
//! buckets (the server's own timestamps), so a prod key that held the bad
//! revision even for a moment fails the test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use operator::crd::{Deployment, Device, revision_string};
use protocol::keys::{DESIRED_STATE_BUCKET, DEVICE_STATUS_BUCKET};
use protocol::{DeploymentStatus, DesiredState, Phase};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;
use testkit::{NatsServer, PodmanService, unique};

const IMAGE: &str = "localhost/iot-e2e:busybox";
const NAME: &str = "web";
/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(90);
/// The rollout's progressDeadlineSeconds: the operator's per-device
/// deadline, and when the canary proves the good revision (so that it can
/// go back to it by itself).
const DEADLINE_SECS: u64 = 8;

/// A write seen on the bus: a key written (`phase` None) or a report.
#[derive(Debug, Clone)]
struct Seen {
    /// The server's timestamp of the write.
    at_ns: i128,
    device: String,
    revision: u64,
    phase: Option<Phase>,
}

struct World {
    nats: NatsServer,
    podman: PodmanService,
    kube: KubeApiServer,
    kubectl: Kubectl,
    dir: tempfile::TempDir,
    /// The operator, then the agents.
    children: Vec<Child>,
    devices: Vec<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
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
        Some(World {
            nats,
            podman,
            kube,
            kubectl,
            dir,
            children: vec![operator],
            devices: Vec::new(),
            seen: Arc::default(),
        })
    }

    fn spawn_agent(&mut self, device: &str, stage: &str) {
        let bin = e2e::agent_binary().unwrap_or_else(|e| panic!("building iot-agent: {e}"));
        let spec = e2e::AgentSpec {
            device,
            nats_url: &self.nats.url(),
            podman_uri: &self.podman.uri(),
            containers_conf: &PodmanService::containers_conf(),
            labels: &[("site", "lab"), ("stage", stage)],
            log: None,
            nats_nkey: None,
            sealing_key: None,
        };
        let child = e2e::spawn_agent(&[bin.display().to_string()], self.dir.path(), &spec).unwrap();
        self.children.push(child);
        self.devices.push(device.to_string());
    }

    /// Records every write to `bucket` for this Deployment from now on (the
    /// operator creates the buckets as it starts).
    async fn record(&self, bucket: &'static str) {
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        let kv = self
            .until(&format!("bucket {bucket} exists"), || async {
                js.get_key_value(bucket).await.map_err(|e| e.to_string())
            })
            .await;
        let mut watch = kv.watch_all().await.unwrap();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = watch.next().await {
                let Some((device, NAME)) = e.key.rsplit_once('.') else {
                    continue;
                };
                let decoded = if bucket == DESIRED_STATE_BUCKET {
                    protocol::wire::decode::<DesiredState>(&e.value).map(|d| (d.revision, None))
                } else {
                    protocol::wire::decode::<DeploymentStatus>(&e.value)
                        .map(|s| (s.revision, Some(s.phase)))
                };
                // Deletes carry no value; nothing here deletes.
                let Ok((revision, phase)) = decoded else {
                    continue;
                };
                seen.lock().unwrap().push(Seen {
                    at_ns: e.created.unix_timestamp_nanos(),
                    device: device.to_string(),
                    revision,
                    phase,
                });
            }
        });
    }

    fn seen(&self, pred: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut v: Vec<Seen> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| pred(s))
            .cloned()
            .collect();
        v.sort_by_key(|s| s.at_ns);
        v
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

    /// Waits until `device`'s last report is `phase` at `revision`.
    async fn reports(&self, device: &str, revision: u64, phase: Phase) {
        self.until(&format!("{device} {phase:?} at {revision:x}"), || async {
            match self.seen(|s| s.device == device && s.phase.is_some()).pop() {
                Some(s) if s.revision == revision && s.phase == Some(phase) => Ok(()),
                last => Err(format!("{last:?}")),
            }
        })
        .await
    }

    /// `kubectl wait --for=condition=Ready iotdeploy/web`, as a CI pipeline
    /// runs it: whether it returned success within `timeout`.
    fn kubectl_wait_ready(&self, timeout: &str) -> bool {
        let out = self
            .kubectl
            .run(&[
                "-n",
                "default",
                "wait",
                "--for=condition=Ready",
                &format!("iotdeploy/{NAME}"),
                &format!("--timeout={timeout}"),
            ])
            .unwrap();
        eprintln!(
            "kubectl wait: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for device in &self.devices {
            self.podman
                .remove_labelled("io.nationtech.iot.device", device);
        }
    }
}

/// The Deployment: every `site: lab` board, the canary first; a PodmanV1
/// sleeper whose exec check reads `probe`, tagged `tag`.
fn manifest(probe: &str, tag: &str) -> Value {
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "targetSelector": {"matchLabels": {"site": "lab"}},
            "rollout": {
                "strategy": "BatchSequence",
                "batches": [{"selector": {"matchLabels": {"stage": "canary"}}}],
                "autoRollback": true,
                "progressDeadlineSeconds": DEADLINE_SECS,
            },
            "score": {"type": "PodmanV1", "data": {"containers": [{
                "name": "app",
                "image": IMAGE,
                "command": ["sleep", "3600"],
                "env": [{"name": "TAG", "value": tag}],
                "pullPolicy": "Never",
                "healthCheck": {
                    "exec": {"command": ["cat", probe]},
                    "intervalSeconds": 1,
                    "failureThreshold": 1,
                },
            }]}},
        },
    })
}

/// Condition `type_` of a status.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// `(status, reason)` of condition `type_`.
fn verdict<'a>(status: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = condition(status, type_);
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gates_the_rollout_and_a_failing_revision_stops_there() {
    let Some(mut w) = World::start().await else {
        return;
    };
    let client = w.kube.client().await;
    let canary = unique("canary");
    let prods = [unique("prod-a"), unique("prod-b")];
    w.spawn_agent(&canary, "canary");
    for p in &prods {
        w.spawn_agent(p, "prod");
    }
    // The batches select by the Device objects' labels: all three must be
    // in the inventory first (a board that appears mid-rollout is put in
    // the last batch, which is not what this test is about).
    let devices: Api<Device> = Api::all(client.clone());
    w.until("three boards listed under site=lab", || async {
        let list = devices
            .list(&ListParams::default().labels("site=lab,stage in (canary,prod)"))
            .await
            .map_err(|e| e.to_string())?;
        if list.items.len() == 3 {
            Ok(())
        } else {
            Err(format!("{} boards", list.items.len()))
        }
    })
    .await;
    w.record(DESIRED_STATE_BUCKET).await;
    w.record(DEVICE_STATUS_BUCKET).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let is_prod = |d: &str| prods.iter().any(|p| p == d);

    // (a) The good revision: canary first, then the prod boards.
    let good: Deployment = serde_json::from_value(manifest("/www/index.html", "good")).unwrap();
    api.create(&PostParams::default(), &good).await.unwrap();
    let rev1 = operator::plan(&api.get(NAME).await.unwrap())
        .unwrap()
        .revision;
    assert!(w.kubectl_wait_ready("90s"), "kubectl wait: never Ready");
    for d in std::iter::once(&canary).chain(&prods) {
        w.reports(d, rev1, Phase::Healthy).await;
    }
    let status = serde_json::to_value(api.get(NAME).await.unwrap().status).unwrap();
    let r = &status["rollout"];
    assert_eq!(r["phase"], "Healthy", "{status}");
    assert_eq!(r["stableRevision"], revision_string(rev1), "{status}");
    assert_eq!(
        (r["batches"].as_i64(), r["currentBatch"].as_i64()),
        (Some(2), Some(2)),
        "{status}"
    );
    assert_eq!(
        verdict(&status, "Ready"),
        ("True", "RolloutComplete"),
        "{status}"
    );
    let canary_healthy = w
        .seen(|s| s.device == canary && s.revision == rev1 && s.phase == Some(Phase::Healthy))[0]
        .at_ns;
    let prod_keys = w.seen(|s| is_prod(&s.device) && s.phase.is_none());
    assert_eq!(
        prod_keys.len(),
        2,
        "one write per prod board: {prod_keys:?}"
    );
    assert!(
        prod_keys
            .iter()
            .all(|k| k.revision == rev1 && k.at_ns > canary_healthy),
        "a prod key was written before the canary reported Healthy at {canary_healthy}: {prod_keys:?}"
    );

    // The canary proves the good revision (Healthy at its deadline), so it
    // can go back to it by itself.
    let proven = w.dir.path().join(&canary).join("healthy").join(NAME);
    w.until("the canary proved the good revision", || async {
        if proven.exists() {
            Ok(())
        } else {
            Err(format!("no {}", proven.display()))
        }
    })
    .await;

    // (b) A revision whose check fails on the device: it halts at the canary.
    let patch = json!({"spec": {"score": manifest("/www/missing.html", "bad")["spec"]["score"]}});
    let d = api
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rev2 = operator::plan(&d).unwrap().revision;
    assert_ne!(rev1, rev2);
    let status = w
        .until("the rollout Degraded", || async {
            let d = api.get(NAME).await.map_err(|e| e.to_string())?;
            let s = serde_json::to_value(&d.status).unwrap();
            let degraded = s["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Degraded"
                        && c["status"] == "True"
                        && c["observedGeneration"].as_i64() == d.metadata.generation
                })
            });
            if s["rollout"]["phase"] == "Degraded" && degraded {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
        .await;
    let r = &status["rollout"];
    assert_eq!(r["revision"], revision_string(rev2), "{status}");
    assert_eq!(r["failedRevision"], revision_string(rev2), "{status}");
    assert_eq!(r["stableRevision"], revision_string(rev1), "{status}");
    assert_eq!(r["currentBatch"], 0, "{status}");
    assert_eq!(r["lastBatch"]["result"], "Failed", "{status}");
    assert_eq!(
        verdict(&status, "Degraded"),
        ("True", "RolledBack"),
        "{status}"
    );
    // BatchFailed when the canary reported its failure, or
    // ProgressDeadlineExceeded on a slow machine where the deadline came first.
    let progressing = verdict(&status, "Progressing");
    assert!(
        [
            ("False", "BatchFailed"),
            ("False", "ProgressDeadlineExceeded")
        ]
        .contains(&progressing),
        "{status}"
    );
    // Ready is False for this generation: `kubectl wait` times out.
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["observedGeneration"].as_i64(), d.metadata.generation);
    assert!(
        !w.kubectl_wait_ready("3s"),
        "kubectl wait returned on a halted rollout"
    );

    // Every board ends on the good revision: the canary (its key written
    // back by the operator) and the prod boards (never given the bad one).
    for dev in std::iter::once(&canary).chain(&prods) {
        w.reports(dev, rev1, Phase::Healthy).await;
        let name = format!("{dev}_{NAME}_app");
        let running = w.podman.running_labelled("io.nationtech.iot.device", dev);
        assert_eq!(running.iter().map(|(n, _)| n).collect::<Vec<_>>(), [&name]);
        let inspect = w.podman.run(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"io.nationtech.iot.revision\"}} {{.Config.Env}}",
            &name,
        ]);
        assert!(inspect.starts_with(&format!("{rev1} ")), "{dev}: {inspect}");
        assert!(inspect.contains("TAG=good"), "{dev}: {inspect}");
    }
    let canary_keys: Vec<u64> = w
        .seen(|s| s.device == canary && s.phase.is_none())
        .iter()
        .map(|s| s.revision)
        .collect();
    assert_eq!(
        canary_keys,
        [rev1, rev2, rev1],
        "the canary's key: good, bad, good again"
    );
    let failed = w.seen(|s| s.device == canary && s.revision == rev2 && s.phase.is_some());
    // Its check failed there (it rolled back by itself, or the operator's
    // write came first): never Healthy at the bad revision.
    assert!(
        !failed.is_empty() && failed.iter().all(|s| s.phase != Some(Phase::Healthy)),
        "the canary's reports at the bad revision: {failed:?}"
    );
    // A few resyncs later the rollout is still halted and no prod key ever
    // held the bad revision.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let prod_bad = w.seen(|s| is_prod(&s.device) && s.revision == rev2);
    assert!(
        prod_bad.is_empty(),
        "a prod board got the bad revision: {prod_bad:?}"
    );
    let status = serde_json::to_value(api.get(NAME).await.unwrap().status).unwrap();
    assert_eq!(status["rollout"]["phase"], "Degraded", "{status}");
}
