//! BatchSequence rollouts: the real reconcile over a mock API server and a
//! real nats-server, with simulated devices whose reports are scripted per
//! device (Healthy, Failed, or silent) and fed to the status cache as the
//! operator's watch would.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use operator::crd::{Batch, Deployment, IntOrString, RolloutStrategy, revision_string};
use operator::history::History;
use operator::status::{StatusCache, now_ns};
use operator::targeting::TargetIndex;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::{DesiredState, Phase};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Healthy,
    Fails,
    Silent,
}

/// A Deployment, its operator and its simulated devices.
struct Fleet {
    env: Env,
    api: MockApiServer,
    client: kube::Client,
    cache: Arc<StatusCache>,
    index: Arc<TargetIndex>,
    ctx: Arc<Context>,
    name: String,
    /// What each device does with a revision it receives, by revision.
    scripts: HashMap<(String, u64), Script>,
    /// The revision each device reported last.
    reported: HashMap<String, u64>,
    /// Writes and reports in the order they happened: `W dev rev` /
    /// `H dev rev` / `F dev rev`.
    log: Vec<String>,
}

fn new_context(
    client: kube::Client,
    env: &Env,
    cache: Arc<StatusCache>,
    index: Arc<TargetIndex>,
) -> Arc<Context> {
    Arc::new(
        Context::new(client, env.nats.clone(), cache, ControllerConfig::default())
            .with_target_index(index),
    )
}

impl Fleet {
    /// `devices` with their `stage` label.
    async fn new(name: &str, devices: &[(&str, &str)]) -> Option<Fleet> {
        let env = nats_env().await?;
        let (client, api) = MockApiServer::start();
        let cache = StatusCache::detached(Duration::from_secs(90));
        let index = Arc::new(TargetIndex::new());
        index.replace_all(
            devices
                .iter()
                .map(|(d, stage)| {
                    (
                        d.to_string(),
                        [("stage".to_string(), stage.to_string())]
                            .into_iter()
                            .collect(),
                    )
                })
                .collect(),
        );
        let ctx = new_context(client.clone(), &env, cache.clone(), index.clone());
        Some(Fleet {
            env,
            api,
            client,
            cache,
            index,
            ctx,
            name: name.into(),
            scripts: HashMap::new(),
            reported: HashMap::new(),
            log: Vec::new(),
        })
    }

    /// The Deployment as the server holds it.
    fn get(&self) -> Deployment {
        self.api.get("fleet", &self.name).unwrap()
    }

    /// Puts a new spec (generation + 1), as `kubectl apply` would.
    fn update(&self, change: impl FnOnce(&mut Deployment)) -> Deployment {
        let mut d = self.get();
        change(&mut d);
        d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
        self.api.insert(&d);
        d
    }

    /// One reconcile of the server's object, then every device acts on its
    /// key as scripted.
    async fn round(&mut self) {
        let d = self.get();
        reconcile(Arc::new(d.clone()), self.ctx.clone())
            .await
            .unwrap();
        let targets = d.spec.target_devices.clone();
        for device in targets {
            let Some(rec) = desired(&self.env.nats, &device, &self.name).await else {
                continue;
            };
            if rec.deleted {
                continue;
            }
            let desired: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
            let rev = desired.revision;
            if self.reported.get(&device) == Some(&rev) {
                continue;
            }
            let script = self
                .scripts
                .get(&(device.clone(), rev))
                .copied()
                .unwrap_or(Script::Healthy);
            let phase = match script {
                Script::Healthy => Phase::Healthy,
                Script::Fails => Phase::Failed,
                Script::Silent => continue,
            };
            self.log.push(format!(
                "{} {device} {}",
                if phase == Phase::Healthy { "H" } else { "F" },
                revision_string(rev)
            ));
            self.reported.insert(device.clone(), rev);
            let value = protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
                revision: rev,
                phase,
                containers: protocol::BoundedVec::new(),
                message: protocol::Text::borrowed(""),
                timestamp_ms: 0,
                reason: protocol::Reason::None,
                running_revision: None,
                waiting: None,
            })
            .unwrap();
            self.cache
                .ingest_status(&format!("{device}.{}", self.name), &value, false, now_ns());
        }
    }

    /// Which revision each device's key holds.
    async fn keys(&self) -> BTreeMap<String, Option<u64>> {
        let mut out = BTreeMap::new();
        for device in self.get().spec.target_devices {
            let rev = desired(&self.env.nats, &device, &self.name)
                .await
                .filter(|r| !r.deleted)
                .map(|r| {
                    protocol::wire::decode::<DesiredState<'_>>(&r.value)
                        .unwrap()
                        .revision
                });
            out.insert(device, rev);
        }
        out
    }

    /// Rounds until `done` holds on the status, at most `max` rounds.
    async fn until(&mut self, max: usize, done: impl Fn(&serde_json::Value) -> bool) {
        for _ in 0..max {
            self.round().await;
            if done(&self.status()) {
                return;
            }
        }
        panic!("not reached after {max} rounds: {}", self.status());
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.get().status).unwrap()
    }

    /// Starts a new context on the same server, NATS and reports, as an
    /// operator restart does (its memory is gone).
    fn restart_operator(&mut self) {
        self.ctx = new_context(
            self.client.clone(),
            &self.env,
            self.cache.clone(),
            self.index.clone(),
        );
    }
}

fn canary_batch(limit: i32) -> Batch {
    Batch {
        selector: Some(
            serde_json::from_value(json!({"matchLabels": {"stage": "canary"}})).unwrap(),
        ),
        limit: Some(IntOrString::Int(limit)),
        success_threshold: None,
    }
}

fn batch_deployment(name: &str, targets: &[&str], image: &str) -> Deployment {
    let mut d = with_finalizer(deployment(
        "fleet",
        name,
        targets,
        "PodmanV0",
        podman(image),
    ));
    d.spec.rollout.strategy = RolloutStrategy::BatchSequence;
    d.spec.rollout.auto_rollback = true;
    d
}

fn rollout(status: &serde_json::Value) -> &serde_json::Value {
    &status["rollout"]
}

fn cond<'a>(status: &'a serde_json::Value, type_: &str) -> (&'a str, &'a str) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"));
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
}

fn phase_is(phase: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |s| rollout(s)["phase"] == phase
}

const CANARIES: [&str; 5] = ["c1", "c2", "c3", "c4", "c5"];
const PRODS: [&str; 5] = ["p1", "p2", "p3", "p4", "p5"];

fn ten() -> Vec<(&'static str, &'static str)> {
    CANARIES
        .iter()
        .map(|c| (*c, "canary"))
        .chain(PRODS.iter().map(|p| (*p, "prod")))
        .collect()
}

fn all_ten() -> Vec<&'static str> {
    CANARIES.iter().chain(PRODS.iter()).copied().collect()
}

/// Scenario 1: five canaries, one fails: the batch ends at 80 % < 100 %,
/// the prod keys never get the new revision, the rollout halts and every
/// canary gets the stable revision back.
#[tokio::test]
async fn a_failing_canary_halts_the_rollout_and_rolls_the_canaries_back() {
    let Some(mut f) = Fleet::new("web", &ten()).await else {
        return;
    };
    let mut d = batch_deployment("web", &all_ten(), "nginx:1");
    d.spec.rollout.batches = vec![canary_batch(5)];
    f.api.insert(&d);
    f.until(10, phase_is("Healthy")).await;
    let stable = operator::plan(&f.get()).unwrap().revision;
    let s = f.status();
    assert_eq!(rollout(&s)["stableRevision"], revision_string(stable));
    assert_eq!(cond(&s, "Ready"), ("True", "RolloutComplete"));
    // Canaries first: every canary was reported Healthy before any prod key
    // was written.
    let first_prod = f.log.iter().position(|l| l.contains(" p")).unwrap();
    let last_canary = f.log.iter().rposition(|l| l.contains(" c")).unwrap();
    assert!(last_canary < first_prod, "{:?}", f.log);

    let d2 = f.update(|d| d.spec.score.data = podman("nginx:2"));
    let bad = operator::plan(&d2).unwrap().revision;
    f.scripts.insert(("c3".into(), bad), Script::Fails);
    f.until(10, phase_is("Degraded")).await;
    // A few more rounds change nothing: the rollout stays halted.
    for _ in 0..3 {
        f.round().await;
    }
    let s = f.status();
    let r = rollout(&s);
    assert_eq!(r["revision"], revision_string(bad));
    assert_eq!(r["stableRevision"], revision_string(stable), "{s}");
    assert_eq!(r["failedRevision"], revision_string(bad));
    assert_eq!(r["currentBatch"], 0);
    assert_eq!(r["lastBatch"]["result"], "Failed");
    assert_eq!(r["lastBatch"]["healthy"], 4);
    assert_eq!(r["lastBatch"]["failed"], 1);
    assert_eq!(cond(&s, "Progressing"), ("False", "BatchFailed"));
    assert_eq!(cond(&s, "Degraded"), ("True", "RolledBack"));
    assert_eq!(cond(&s, "Ready"), ("False", "BatchFailed"));
    let keys = f.keys().await;
    for (device, rev) in &keys {
        assert_eq!(
            *rev,
            Some(stable),
            "{device} should run the stable revision: {keys:?}"
        );
    }
    assert!(
        !f.log
            .iter()
            .any(|l| l.contains(" p") && l.ends_with(&revision_string(bad))),
        "a prod device got the bad revision: {:?}",
        f.log
    );
    // Both revisions are kept, where a restarted operator finds them.
    let history = History::new(f.client.clone());
    assert_eq!(history.list(&f.get()).await.unwrap(), vec![stable, bad]);
    // Events for the batch result and the rollback.
    let reasons: Vec<String> = f
        .api
        .take()
        .iter()
        .filter(|r| r.path.ends_with("/events"))
        .filter_map(|r| r.body["reason"].as_str().map(str::to_string))
        .collect();
    for reason in [
        "BatchStarted",
        "BatchSucceeded",
        "RolloutComplete",
        "BatchFailed",
        "RolloutHalted",
        "RolledBack",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} missing from {reasons:?}"
        );
    }
}

/// Scenario 2: at no moment are more than `maxUnavailable` devices between
/// their write and their Healthy report.
#[tokio::test]
async fn max_unavailable_bounds_the_devices_in_flight() {
    let devices: Vec<(&str, &str)> = ["d1", "d2", "d3", "d4", "d5", "d6", "d7"]
        .iter()
        .map(|d| (*d, "prod"))
        .collect();
    let Some(mut f) = Fleet::new("api", &devices).await else {
        return;
    };
    let ids: Vec<&str> = devices.iter().map(|(d, _)| *d).collect();
    let mut d = batch_deployment("api", &ids, "nginx:1");
    d.spec.rollout.max_unavailable = Some(IntOrString::Int(2));
    f.api.insert(&d);
    // Record writes as they land: the keys before and after each round.
    let mut seen: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..20 {
        let before = f.log.len();
        f.round().await;
        let keys = f.keys().await;
        for (dev, rev) in &keys {
            if rev.is_some() && seen.get(dev).copied().flatten() != *rev {
                order.push(format!("W {dev}"));
            }
        }
        // Reports made this round come after the writes they answer.
        for l in &f.log[before..] {
            order.push(format!("H {}", l.split(' ').nth(1).unwrap()));
        }
        seen = keys;
        if rollout(&f.status())["phase"] == "Healthy" {
            break;
        }
    }
    assert_eq!(rollout(&f.status())["phase"], "Healthy", "{}", f.status());
    let mut inflight = 0i32;
    let mut most = 0;
    for e in &order {
        if e.starts_with('W') {
            inflight += 1;
        } else {
            inflight -= 1;
        }
        most = most.max(inflight);
    }
    assert_eq!(most, 2, "{order:?}");
    assert_eq!(order.iter().filter(|e| e.starts_with('W')).count(), 7);
}

/// Scenario 3: a device that never reports counts as timed out after the
/// deadline, and the batch decides by its threshold.
#[tokio::test]
async fn a_silent_device_times_out_and_the_threshold_decides() {
    let devices = [("s1", "prod"), ("s2", "prod"), ("s3", "prod")];
    let Some(mut f) = Fleet::new("db", &devices).await else {
        return;
    };
    let mut d = batch_deployment("db", &["s1", "s2", "s3"], "redis:7");
    d.spec.rollout.progress_deadline_seconds = 2;
    d.spec.rollout.success_threshold = 60;
    let rev = operator::plan(&d).unwrap().revision;
    f.scripts.insert(("s2".into(), rev), Script::Silent);
    f.api.insert(&d);
    f.round().await;
    f.round().await;
    let s = f.status();
    assert_eq!(rollout(&s)["phase"], "Progressing", "{s}");
    assert_eq!(rollout(&s)["waiting"], 1, "{s}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    f.round().await;
    let s = f.status();
    let r = rollout(&s);
    assert_eq!(r["phase"], "Healthy", "2/3 Healthy meets 60 %: {s}");
    assert_eq!(r["timedOut"], 1, "{s}");
    assert_eq!(r["lastBatch"]["timedOut"], 1, "{s}");

    // The same with 100 %: the deadline halts it.
    let d2 = f.update(|d| {
        d.spec.score.data = podman("redis:8");
        d.spec.rollout.success_threshold = 100;
    });
    let rev2 = operator::plan(&d2).unwrap().revision;
    f.scripts.insert(("s2".into(), rev2), Script::Silent);
    f.round().await;
    f.round().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    f.round().await;
    let s = f.status();
    assert_eq!(rollout(&s)["phase"], "Degraded", "{s}");
    assert_eq!(
        cond(&s, "Progressing"),
        ("False", "ProgressDeadlineExceeded")
    );
    // Back on the stable revision, rev, everywhere.
    assert!(
        f.keys().await.values().all(|r| *r == Some(rev)),
        "{:?}",
        f.keys().await
    );
}

/// Scenario 4: pause, resume, the retry annotation, a new spec
/// mid-rollout, and an operator restart mid-rollout.
#[tokio::test]
async fn pause_resume_retry_new_spec_and_restart() {
    let Some(mut f) = Fleet::new("cam", &ten()).await else {
        return;
    };
    let mut d = batch_deployment("cam", &all_ten(), "cam:1");
    d.spec.rollout.batches = vec![canary_batch(2)];
    d.spec.rollout.paused = true;
    f.api.insert(&d);
    f.round().await;
    let s = f.status();
    assert_eq!(rollout(&s)["phase"], "Paused", "{s}");
    assert_eq!(cond(&s, "Paused"), ("True", "RolloutPaused"));
    assert!(
        f.keys().await.values().all(Option::is_none),
        "paused writes nothing"
    );

    f.update(|d| d.spec.rollout.paused = false);
    f.round().await;
    let keys = f.keys().await;
    let written: Vec<&String> = keys
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(d, _)| d)
        .collect();
    assert_eq!(written, ["c1", "c2"], "the canary batch first");
    assert_eq!(cond(&f.status(), "Paused"), ("False", "RolloutResumed"));

    // Operator restart mid-rollout: the new one rebuilds its state from the
    // status and the keys and rewrites nothing that is right.
    // (The canaries reported Healthy at the end of that round.)
    f.restart_operator();
    let seq = desired_seq(&f.env.client).await;
    let d_now = f.get();
    reconcile(Arc::new(d_now), f.ctx.clone()).await.unwrap();
    let s = f.status();
    assert_eq!(rollout(&s)["currentBatch"], 1, "{s}");
    // It went on with batch 2 (8 keys), and only those.
    assert_eq!(desired_seq(&f.env.client).await, seq + 8);
    f.until(5, phase_is("Healthy")).await;

    // A new spec mid-rollout starts again from batch 0.
    let d2 = f.update(|d| d.spec.score.data = podman("cam:2"));
    let rev2 = operator::plan(&d2).unwrap().revision;
    f.scripts.insert(("c1".into(), rev2), Script::Fails);
    f.round().await; // c1, c2 written
    let d3 = f.update(|d| d.spec.score.data = podman("cam:3"));
    let rev3 = operator::plan(&d3).unwrap().revision;
    f.scripts.insert(("c2".into(), rev3), Script::Fails);
    f.round().await;
    let s = f.status();
    assert_eq!(rollout(&s)["revision"], revision_string(rev3));
    assert_eq!(rollout(&s)["currentBatch"], 0, "{s}");
    f.until(5, phase_is("Degraded")).await;

    // Retry without a spec change: the annotation starts it again; c2 now
    // comes up Healthy.
    f.scripts.remove(&("c2".to_string(), rev3));
    f.reported.remove("c2");
    f.reported.remove("c1");
    f.update(|d| {
        d.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(operator::rollout::RETRY_ANNOTATION.into(), "1".into());
    });
    f.until(10, phase_is("Healthy")).await;
    let s = f.status();
    assert_eq!(rollout(&s)["retry"], "1");
    // The retry is a new value (attempt 1) of the same revision, which a
    // device that rolled the revision back tries again.
    assert_eq!(rollout(&s)["attempt"], 1);
    let rec = desired(&f.env.nats, "c2", "cam").await.unwrap();
    let value: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    assert_eq!((value.revision, value.attempt), (rev3, 1));
    assert_eq!(rollout(&s)["stableRevision"], revision_string(rev3));
    assert!(f.keys().await.values().all(|r| *r == Some(rev3)));
}

/// A batch that takes nothing is skipped, and a condition names it.
#[tokio::test]
async fn a_batch_that_matches_nothing_is_named_and_skipped() {
    let devices = [("q1", "prod"), ("q2", "prod")];
    let Some(mut f) = Fleet::new("ui", &devices).await else {
        return;
    };
    let mut d = batch_deployment("ui", &["q1", "q2"], "ui:1");
    d.spec.rollout.batches = vec![canary_batch(1)];
    f.api.insert(&d);
    f.until(5, phase_is("Healthy")).await;
    let s = f.status();
    assert_eq!(
        cond(&s, "BatchWarnings"),
        ("True", "BatchesMismatchTargets")
    );
    let message = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "BatchWarnings")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("spec.rollout.batches[0]"), "{message}");
}

/// A rollout policy change rewrites the keys at the same revision; the
/// agents, which report only what changes, say nothing new, and their
/// Healthy still counts.
#[tokio::test]
async fn a_policy_change_at_the_same_revision_keeps_healthy_devices_healthy() {
    let devices = [("h1", "canary"), ("h2", "prod")];
    let Some(mut f) = Fleet::new("tv", &devices).await else {
        return;
    };
    let mut d = batch_deployment("tv", &["h1", "h2"], "tv:1");
    d.spec.rollout.batches = vec![canary_batch(1)];
    d.spec.rollout.progress_deadline_seconds = 1;
    f.api.insert(&d);
    f.until(5, phase_is("Healthy")).await;
    let seq = desired_seq(&f.env.client).await;
    f.update(|d| d.spec.rollout.min_healthy_seconds = 5);
    f.round().await;
    assert_eq!(
        desired_seq(&f.env.client).await,
        seq + 2,
        "both keys rewritten: {}",
        f.status()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.round().await;
    let s = f.status();
    assert_eq!(rollout(&s)["phase"], "Healthy", "{s}");
    assert_eq!(rollout(&s)["healthy"], 2, "{s}");
    assert_eq!(rollout(&s)["timedOut"], 0, "{s}");
}

/// Switching to BatchSequence at the revision that runs: a canary that
/// fails it halts the rollout, and since no other revision was stable,
/// nothing is written back and no key is removed. A rejected spec edit
/// afterwards keeps the rollout's state.
#[tokio::test]
async fn a_halt_without_another_stable_revision_removes_nothing() {
    let Some(mut f) = Fleet::new("gw", &ten()).await else {
        return;
    };
    let mut d = with_finalizer(deployment(
        "fleet",
        "gw",
        &all_ten(),
        "PodmanV0",
        podman("gw:1"),
    ));
    d.spec.rollout.auto_rollback = true;
    f.api.insert(&d);
    f.round().await;
    let rev = operator::plan(&f.get()).unwrap().revision;
    assert!(f.keys().await.values().all(|r| *r == Some(rev)));
    // c3 crash-loops now; then the strategy changes, not the score.
    let value = protocol::wire::encode_to_vec(&common::health_status(
        rev,
        Phase::CrashLoopBackOff,
        protocol::Reason::CrashLoopBackOff,
        None,
        protocol::ContainerState::Waiting,
        None,
        3,
    ))
    .unwrap();
    f.cache.ingest_status("c3.gw", &value, false, now_ns());
    f.update(|d| {
        d.spec.rollout.strategy = RolloutStrategy::BatchSequence;
        d.spec.rollout.batches = vec![canary_batch(5)];
    });
    f.until(3, phase_is("Degraded")).await;
    let s = f.status();
    assert_eq!(cond(&s, "Degraded"), ("True", "BatchFailed"), "{s}");
    assert!(
        f.keys().await.values().all(|r| *r == Some(rev)),
        "every key still holds the running revision: {:?}",
        f.keys().await
    );
    // A rejected edit: nothing written, the halt and its state kept.
    f.update(|d| d.spec.score.data = json!({"containers": [{"name": "web"}]}));
    f.round().await;
    let s = f.status();
    assert_eq!(cond(&s, "InvalidScore").0, "True", "{s}");
    assert_eq!(rollout(&s)["failedRevision"], revision_string(rev), "{s}");
    assert!(f.keys().await.values().all(|r| *r == Some(rev)));
}

/// A stable revision that can no longer be planned (its recorded score is
/// refused): the halt is recorded all the same, Degraded says why, and
/// nothing is written back.
#[tokio::test]
async fn an_unusable_stable_revision_is_reported_not_retried_blindly() {
    use k8s_openapi::api::apps::v1::ControllerRevision;
    let Some(mut f) = Fleet::new("ap", &ten()).await else {
        return;
    };
    let mut d = batch_deployment("ap", &all_ten(), "ap:1");
    d.spec.rollout.batches = vec![canary_batch(5)];
    f.api.insert(&d);
    f.until(10, phase_is("Healthy")).await;
    let stable = operator::plan(&f.get()).unwrap().revision;
    // The recorded score is replaced by one the operator refuses.
    let api: kube::Api<ControllerRevision> = kube::Api::namespaced(f.client.clone(), "fleet");
    api.delete(
        &format!("ap-{}", revision_string(stable)),
        &Default::default(),
    )
    .await
    .unwrap();
    History::new(f.client.clone())
        .record(
            &f.get(),
            stable,
            &json!({"type": "PodmanV0", "data": {"containers": [{"name": "web"}]}}),
            10,
            &[],
        )
        .await
        .unwrap();
    let d2 = f.update(|d| d.spec.score.data = podman("ap:2"));
    let bad = operator::plan(&d2).unwrap().revision;
    f.scripts.insert(("c1".into(), bad), Script::Fails);
    f.until(10, phase_is("Degraded")).await;
    let s = f.status();
    assert_eq!(cond(&s, "Degraded"), ("True", "BatchFailed"), "{s}");
    let message = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()["message"]
        .to_string();
    assert!(message.contains("cannot be written back"), "{message}");
    // The canaries keep the halted revision; prod never got it.
    let keys = f.keys().await;
    assert_eq!(keys["c2"], Some(bad), "{keys:?}");
    assert_eq!(keys["p1"], Some(stable), "{keys:?}");
}
