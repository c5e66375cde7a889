//! BatchSequence rollouts against a real Kubernetes API server
//! (`testkit::kube`, binaries from `KUBEBUILDER_ASSETS`) with the real
//! `kubectl` (`testkit::kubectl`), a real nats-server and the operator's
//! controller loop running as the service account of
//! `deploy/operator.yaml`; three simulated devices answer their
//! desired-state keys with status reports as the agent writes them.
//!
//! What the mocked tests (`tests/rollout.rs`) cannot show: `kubectl wait
//! --for=condition=Ready` as a CI pipeline runs it returns after a good
//! rollout and only once the new generation is rolled out (the server's
//! copy of the condition, its `observedGeneration` against the object's
//! `generation`), times out on a halted one, and the revision history is
//! ControllerRevision objects the server stores and the operator prunes.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{desired, nats_env, podman, publish_heartbeat, put_status};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use operator::crd::{Deployment, Device, revision_string};
use operator::history::DEPLOYMENT_LABEL;
use operator::nats::Nats;
use operator::{Context, ControllerConfig, StatusCache};
use protocol::{Capabilities, DesiredState, Heartbeat, Phase, Text};
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;

const DEVICES: [(&str, &str); 3] = [("pi-1", "canary"), ("pi-2", "canary"), ("pi-3", "prod")];
const NS: &str = "fleet";
const NAME: &str = "web";

/// How long a simulated device takes from seeing a new revision on its key
/// to reporting on it, so that a rollout of two batches lasts about a
/// second: long enough for `kubectl wait` to look while it runs.
const REPORT_DELAY: Duration = Duration::from_millis(400);

/// The simulated devices: what each reports for a revision (Healthy unless
/// scripted otherwise), and what they saw and did, in order
/// (`saw <device> <rev>`, `Healthy <device> <rev>`, `Failed <device> <rev>`).
#[derive(Default)]
struct Devices {
    scripts: Mutex<HashMap<(String, u64), Phase>>,
    log: Mutex<Vec<String>>,
}

impl Devices {
    fn script(&self, device: &str, revision: u64, phase: Phase) {
        self.scripts
            .lock()
            .unwrap()
            .insert((device.into(), revision), phase);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The devices that saw `revision` on their key.
    fn saw(&self, revision: u64) -> BTreeSet<String> {
        let rev = revision_string(revision);
        self.log()
            .iter()
            .filter_map(|l| {
                let mut words = l.split(' ');
                (words.next() == Some("saw") && l.ends_with(&rev))
                    .then(|| words.next().unwrap().to_string())
            })
            .collect()
    }

    /// Where `line` first appears in the log.
    fn position(&self, line: &str) -> Option<usize> {
        self.log().iter().position(|l| l == line)
    }
}

/// The revision a desired-state key holds, when it is live.
async fn key_revision(nats: &Nats, device: &str) -> Option<u64> {
    let rec = desired(nats, device, NAME).await.filter(|r| !r.deleted)?;
    Some(
        protocol::wire::decode::<DesiredState<'_>>(&rec.value)
            .unwrap()
            .revision,
    )
}

/// A heartbeat of an agent of this build: it reads what the operator
/// writes (the rollout policy needs DesiredState format 2; an older agent's
/// target would be held back).
async fn heartbeat(client: &async_nats::Client, device: &str) {
    let hb = Heartbeat {
        agent_version: Text::borrowed("0.3.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 5,
        capabilities: Capabilities::this_build(),
        ..Heartbeat::default()
    };
    publish_heartbeat(client, device, &hb).await;
}

/// Every device, as an agent would: polls its key and, for a revision it
/// has not reported on yet, reports Healthy (or its script) at that
/// revision after [`REPORT_DELAY`].
async fn simulate(devices: Arc<Devices>, nats: Nats, client: async_nats::Client) {
    let mut reported: HashMap<&str, u64> = HashMap::new();
    let mut beat = std::time::Instant::now();
    loop {
        // Fresh heartbeats: a stale one would count the device offline.
        if beat.elapsed() > Duration::from_secs(10) {
            for (device, _) in DEVICES {
                heartbeat(&client, device).await;
            }
            beat = std::time::Instant::now();
        }
        for (device, _) in DEVICES {
            let Some(rev) = key_revision(&nats, device).await else {
                continue;
            };
            if reported.get(device) == Some(&rev) {
                continue;
            }
            devices
                .log
                .lock()
                .unwrap()
                .push(format!("saw {device} {}", revision_string(rev)));
            tokio::time::sleep(REPORT_DELAY).await;
            let phase = devices
                .scripts
                .lock()
                .unwrap()
                .get(&(device.to_string(), rev))
                .copied()
                .unwrap_or(Phase::Healthy);
            let message = if phase == Phase::Healthy {
                ""
            } else {
                "health check failed"
            };
            put_status(&client, device, NAME, rev, phase, message).await;
            devices
                .log
                .lock()
                .unwrap()
                .push(format!("{phase:?} {device} {}", revision_string(rev)));
            reported.insert(device, rev);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `kubectl -n fleet <args>` off the async runtime.
async fn kubectl(kubectl: &Arc<Kubectl>, args: &[&str]) -> Output {
    let kubectl = kubectl.clone();
    let mut all = vec!["-n".to_string(), NS.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        kubectl.run(&args).expect("run kubectl")
    })
    .await
    .unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl wait --for=condition=Ready iotdeploy/web` that must succeed:
/// the object as kubectl saw it when the condition was met (`-o json`).
async fn wait_ready(k: &Arc<Kubectl>, timeout: &str) -> Value {
    let out = kubectl(
        k,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("iotdeploy/{NAME}"),
            &format!("--timeout={timeout}"),
            "-o",
            "json",
        ],
    )
    .await;
    if !out.status.success() {
        let now = kubectl(k, &["get", &format!("iotdeploy/{NAME}"), "-o", "json"]).await;
        panic!(
            "kubectl wait: {}\nthe object now: {}",
            show(&out),
            String::from_utf8_lossy(&now.stdout)
        );
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

/// The revisions the history holds for `web`, from the objects' names,
/// checked against their labels' spelling: `web-<16 hex>`.
async fn history(client: &Client) -> BTreeSet<String> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), NS);
    let list = api
        .list(&ListParams::default().labels(&format!("{DEPLOYMENT_LABEL}={NAME}")))
        .await
        .unwrap();
    list.items
        .iter()
        .map(|cr| {
            let name = cr.name_any();
            let rev = name
                .strip_prefix("web-")
                .unwrap_or_else(|| panic!("{name}"));
            assert!(
                rev.len() == 16 && rev.chars().all(|c| c.is_ascii_hexdigit()),
                "{name}"
            );
            rev.to_string()
        })
        .collect()
}

fn revs(revisions: &[u64]) -> BTreeSet<String> {
    revisions.iter().copied().map(revision_string).collect()
}

/// Sets the image (a new score: a new revision and generation) and returns
/// the new revision.
async fn set_image(api: &Api<Deployment>, image: &str) -> u64 {
    let patch = json!({"spec": {"score": {"data": podman(image)}}});
    let d = api
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    operator::plan(&d).unwrap().revision
}

async fn keys(nats: &Nats) -> BTreeMap<&'static str, Option<u64>> {
    let mut out = BTreeMap::new();
    for (device, _) in DEVICES {
        out.insert(device, key_revision(nats, device).await);
    }
    out
}

fn all_on(revision: u64) -> BTreeMap<&'static str, Option<u64>> {
    DEVICES.iter().map(|(d, _)| (*d, Some(revision))).collect()
}

/// The operator's controller loop and its watch of the reports, as
/// `iot-operator run` starts them.
struct Operator {
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Operator {
    fn start(env: &common::Env, client: &Client) -> Operator {
        let (cache, changes) = StatusCache::new(Duration::from_secs(90));
        let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
        let ctx = Arc::new(Context::new(
            client.clone(),
            env.nats.clone(),
            cache,
            ControllerConfig::default(),
        ));
        let controller = tokio::spawn(operator::controller::run(ctx, changes));
        Operator { controller, watch }
    }

    /// Stops both, and waits until they are gone.
    async fn stop(self) {
        self.controller.abort();
        self.watch.abort();
        let _ = self.controller.await;
        let _ = self.watch.await;
    }
}

/// One server for the whole story, as a fleet lives it: a first rollout, a
/// good update, a bad one halted and rolled back, a fixed one; `kubectl
/// wait` after each, and the history after each.
#[tokio::test]
async fn kubectl_wait_follows_batch_rollouts_and_the_history_is_pruned() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let Some(k) = Kubectl::for_apiserver(&server) else {
        return;
    };
    let k = Arc::new(k);
    let admin = server.client().await;
    install_crds(&server).await;
    create_namespace(&admin, NS).await;
    let operator_client = operator_identity(&server, &admin).await;

    // Devices with their stage, for the canary batch's selector.
    let device_api: Api<Device> = Api::all(admin.clone());
    for (name, stage) in DEVICES {
        let d: Device = serde_json::from_value(json!({
            "apiVersion": "iot.nationtech.io/v1alpha1",
            "kind": "Device",
            "metadata": {"name": name, "labels": {"stage": stage}},
            "spec": {},
        }))
        .unwrap();
        device_api.create(&Default::default(), &d).await.unwrap();
        heartbeat(&env.client, name).await;
    }

    let mut operator = Operator::start(&env, &operator_client);
    let devices = Arc::new(Devices::default());
    let sim = tokio::spawn(simulate(
        devices.clone(),
        env.nats.clone(),
        env.client.clone(),
    ));

    // Batch 1: one canary (of two); the implicit batch 2: the other two.
    let ar = ApiResource::erase::<Deployment>(&());
    let dyn_api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &ar);
    let mut body = deployment_json(
        NS,
        NAME,
        json!(DEVICES.iter().map(|(d, _)| *d).collect::<Vec<_>>()),
        "PodmanV0",
    );
    body["spec"]["rollout"] = json!({
        "strategy": "BatchSequence",
        "autoRollback": true,
        "progressDeadlineSeconds": 60,
        "revisionHistoryLimit": 2,
        "batches": [{"selector": {"matchLabels": {"stage": "canary"}}, "limit": 1}],
    });
    create(&dyn_api, body).await.unwrap();
    let api: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let r1 = operator::plan(&api.get(NAME).await.unwrap())
        .unwrap()
        .revision;

    // 1. The first rollout: kubectl wait returns once it is done.
    let seen = wait_ready(&k, "60s").await;
    assert_eq!(seen["status"]["rollout"]["revision"], revision_string(r1));
    assert_eq!(seen["status"]["rollout"]["phase"], "Healthy", "{seen}");
    assert_eq!(seen["status"]["rollout"]["batches"], 2, "{seen}");
    assert_eq!(keys(&env.nats).await, all_on(r1));
    // The canary's report came before the other two saw the revision.
    let r = revision_string(r1);
    let canary_healthy = devices.position(&format!("Healthy pi-1 {r}")).unwrap();
    for later in ["pi-2", "pi-3"] {
        let saw = devices.position(&format!("saw {later} {r}")).unwrap();
        assert!(canary_healthy < saw, "{:?}", devices.log());
    }
    assert_eq!(history(&admin).await, revs(&[r1]));

    // An update while the operator is down, so that the server holds
    // generation 2 beside generation 1's Ready=True for as long as it
    // takes: a wait started now must not take that for this generation's.
    operator.stop().await;
    let r2 = set_image(&api, "nginx:2").await;
    let stale = api.get(NAME).await.unwrap();
    let stale = serde_json::to_value(&stale).unwrap();
    let ready = condition(&stale, "Ready").unwrap();
    assert_eq!(
        (&ready["status"], &ready["observedGeneration"]),
        (&json!("True"), &json!(1)),
        "{ready}"
    );
    // A restarted operator reconciles `web` before its Device list is in
    // (the usual order); the list's arrival must wake it at once
    // (`TargetIndex::synced_or_wait`), not at the 30 s SELECTOR_WAIT. The
    // rollout itself takes about 1.5 s; 20 s is the slack a loaded CI
    // machine needs, and less than that wait.
    let wait = {
        let k = k.clone();
        tokio::spawn(async move { wait_ready(&k, "20s").await })
    };
    // kubectl has looked (it starts in well under this) and waits on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !wait.is_finished(),
        "kubectl wait returned on generation 1's Ready: {:?}",
        wait.await
    );
    // The operator back (a restart): it rolls r2 out, and only then does
    // the wait return.
    operator = Operator::start(&env, &operator_client);
    let seen = wait.await.unwrap_or_else(|e| {
        panic!("after the operator's restart (woken by the Device list?): {e}")
    });
    assert_eq!(seen["metadata"]["generation"], 2);
    let rollout = &seen["status"]["rollout"];
    assert_eq!(
        rollout["revision"],
        revision_string(r2),
        "stale Ready: {seen}"
    );
    assert_eq!(rollout["phase"], "Healthy", "{seen}");
    assert_eq!(rollout["stableRevision"], revision_string(r2), "{seen}");
    let ready = condition(&seen, "Ready").unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["observedGeneration"], 2, "{ready}");
    assert_eq!(devices.saw(r2).len(), 3, "{:?}", devices.log());
    assert_eq!(keys(&env.nats).await, all_on(r2));
    assert_eq!(history(&admin).await, revs(&[r1, r2]));

    // 2. A revision the canary reports Failed: the wait times out, the
    // rollout is halted and rolled back.
    let r3 = {
        let mut d = api.get(NAME).await.unwrap();
        d.spec.score.data = podman("nginx:3");
        operator::plan(&d).unwrap().revision
    };
    devices.script("pi-1", r3, Phase::Failed);
    assert_eq!(set_image(&api, "nginx:3").await, r3);
    let out = kubectl(
        &k,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("iotdeploy/{NAME}"),
            "--timeout=8s",
        ],
    )
    .await;
    assert!(!out.status.success(), "a halted rollout: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{}",
        show(&out)
    );
    // What a pipeline waits for instead: Degraded, which does come.
    let out = kubectl(
        &k,
        &[
            "wait",
            "--for=condition=Degraded",
            &format!("iotdeploy/{NAME}"),
            "--timeout=30s",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl wait Degraded: {}",
        show(&out)
    );
    let v = deployment_where(&api, NAME, "halted and rolled back", |v| {
        v["status"]["rollout"]["phase"] == "Degraded"
    })
    .await;
    let rollout = &v["status"]["rollout"];
    assert_eq!(rollout["revision"], revision_string(r3), "{v}");
    assert_eq!(rollout["failedRevision"], revision_string(r3), "{v}");
    assert_eq!(rollout["stableRevision"], revision_string(r2), "{v}");
    assert_eq!(rollout["currentBatch"], 0, "{v}");
    assert_eq!(rollout["lastBatch"]["result"], "Failed", "{v}");
    let degraded = condition(&v, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True", "{degraded}");
    assert_eq!(degraded["reason"], "RolledBack", "{degraded}");
    assert_eq!(degraded["observedGeneration"], 3, "{degraded}");
    let ready = condition(&v, "Ready").unwrap();
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["observedGeneration"], 3, "{ready}");
    // The canary is back on the stable revision; the others never saw r3.
    eventually("every key on the stable revision", || async {
        let now = keys(&env.nats).await;
        if now == all_on(r2) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    assert_eq!(
        devices.saw(r3),
        BTreeSet::from(["pi-1".to_string()]),
        "{:?}",
        devices.log()
    );

    // 3. The history under revisionHistoryLimit 2: r3 recorded beside the
    // stable r2, and r1 (neither) pruned.
    assert_eq!(history(&admin).await, revs(&[r2, r3]));

    // A fixed revision: it rolls out, Degraded clears, and the failed r3
    // is pruned while the older stable r2 is kept.
    let r4 = set_image(&api, "nginx:4").await;
    let seen = wait_ready(&k, "60s").await;
    assert_eq!(seen["metadata"]["generation"], 4);
    assert_eq!(seen["status"]["rollout"]["revision"], revision_string(r4));
    assert_eq!(seen["status"]["rollout"]["phase"], "Healthy", "{seen}");
    let degraded = condition(&seen, "Degraded").unwrap();
    assert_eq!(degraded["status"], "False", "{degraded}");
    assert_eq!(degraded["observedGeneration"], 4, "{degraded}");
    assert_eq!(keys(&env.nats).await, all_on(r4));
    assert_eq!(history(&admin).await, revs(&[r2, r4]));

    // What `kubectl get` shows: the printer columns, computed by the server.
    let out = kubectl(&k, &["get", "iotdeploy", NAME]).await;
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| r[..r.len() - 1].to_vec())
            .collect::<Vec<_>>(),
        [
            vec![
                "NAME",
                "TYPE",
                "TARGETS",
                "UP-TO-DATE",
                "HEALTHY",
                "BATCH",
                "PHASE"
            ],
            vec![NAME, "PodmanV0", "3", "3", "3", "2", "Healthy"],
        ],
        "{table}"
    );
    assert_eq!(rows[0].last(), Some(&"AGE"), "{table}");

    // An Event for each step, published under the operator's RBAC.
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    eventually("the rollout's events", || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: BTreeSet<&str> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
            .filter_map(|e| e.reason.as_deref())
            .collect();
        let missing: Vec<&str> = [
            "BatchStarted",
            "BatchSucceeded",
            "RolloutComplete",
            "BatchFailed",
            "RolledBack",
        ]
        .into_iter()
        .filter(|r| !reasons.contains(r))
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{missing:?} missing from {reasons:?}"))
        }
    })
    .await;

    sim.abort();
    operator.stop().await;
}
