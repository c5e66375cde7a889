//! A BatchSequence rollout whose devices hold the revision back (update
//! lock, maintenance window): the real reconcile over a mock API server
//! and a real nats-server, with device reports fed to the status cache as
//! the operator's watch would. A waiting device neither fails nor passes
//! its batch and does not time out; its deadline starts when it stops
//! waiting; an update lock held past its timeout is a failure.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use operator::crd::{Batch, Deployment, IntOrString, RolloutStrategy};
use operator::status::{StatusCache, now_ns};
use operator::targeting::TargetIndex;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::{DesiredState, Phase, Reason, Waiting};
use serde_json::json;

/// 2026-12-06T09:03:11Z, in ms.
const SINCE_MS: u64 = 1_796_547_791_000;

struct Rollout {
    env: Env,
    api: MockApiServer,
    cache: Arc<StatusCache>,
    ctx: Arc<Context>,
}

impl Rollout {
    async fn new() -> Option<Rollout> {
        let env = nats_env().await?;
        let (client, api) = MockApiServer::start();
        let cache = StatusCache::detached(Duration::from_secs(90));
        let index = Arc::new(TargetIndex::new());
        index.replace_all(
            [("canary", "canary"), ("prod", "prod")]
                .into_iter()
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
        let ctx = Arc::new(
            Context::new(
                client,
                env.nats.clone(),
                cache.clone(),
                ControllerConfig::default(),
            )
            .with_target_index(index),
        );
        Some(Rollout {
            env,
            api,
            cache,
            ctx,
        })
    }

    fn get(&self) -> Deployment {
        self.api.get("fleet", "kiosk").unwrap()
    }

    async fn reconcile(&self) -> serde_json::Value {
        reconcile(Arc::new(self.get()), self.ctx.clone())
            .await
            .unwrap();
        serde_json::to_value(self.get().status).unwrap()
    }

    /// The revision `device`'s key holds.
    async fn key(&self, device: &str) -> Option<u64> {
        desired(&self.env.nats, device, "kiosk")
            .await
            .filter(|r| !r.deleted)
            .map(|r| {
                protocol::wire::decode::<DesiredState<'_>>(&r.value)
                    .unwrap()
                    .revision
            })
    }

    fn report(&self, device: &str, revision: u64, phase: Phase, reason: Reason) {
        let held = matches!(reason, Reason::UpdateLocked | Reason::UpdateLockTimeout);
        let value = protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
            revision,
            phase,
            containers: protocol::BoundedVec::new(),
            message: protocol::Text::borrowed(""),
            timestamp_ms: 0,
            reason,
            running_revision: held.then_some(1),
            waiting: held.then_some(Waiting {
                since_ms: SINCE_MS,
                until_ms: None,
            }),
        })
        .unwrap();
        self.cache
            .ingest_status(&format!("{device}.kiosk"), &value, false, now_ns());
    }
}

fn kiosk() -> Deployment {
    let mut d = with_finalizer(deployment(
        "fleet",
        "kiosk",
        &["canary", "prod"],
        "PodmanV0",
        podman("kiosk:1"),
    ));
    d.spec.rollout.strategy = RolloutStrategy::BatchSequence;
    d.spec.rollout.progress_deadline_seconds = 1;
    d.spec.rollout.batches = vec![Batch {
        selector: Some(
            serde_json::from_value(json!({"matchLabels": {"stage": "canary"}})).unwrap(),
        ),
        limit: Some(IntOrString::Int(1)),
        success_threshold: None,
    }];
    d
}

fn condition<'a>(s: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn device<'a>(s: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {s}"))
}

#[tokio::test]
async fn a_locked_canary_holds_its_batch_without_timing_out() {
    let Some(r) = Rollout::new().await else {
        return;
    };
    let d = kiosk();
    let rev = operator::plan(&d).unwrap().revision;
    r.api.insert(&d);
    r.reconcile().await;
    assert_eq!(r.key("canary").await, Some(rev));
    assert_eq!(r.key("prod").await, None, "the canary batch first");

    // The canary's kiosk holds the update lock, longer than the deadline.
    r.report("canary", rev, Phase::Waiting, Reason::UpdateLocked);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = r.reconcile().await;
    let ro = &s["rollout"];
    assert_eq!(ro["phase"], "Progressing", "{s}");
    assert_eq!(ro["currentBatch"], 0, "{s}");
    assert!(ro["lastBatch"].is_null(), "neither passed nor failed: {s}");
    assert_eq!(
        [&ro["waiting"], &ro["gated"], &ro["timedOut"], &ro["failed"]],
        [1, 1, 0, 0].map(serde_json::Value::from).each_ref(),
        "{s}"
    );
    assert_eq!(r.key("prod").await, None);
    let progressing = condition(&s, "Progressing");
    assert_eq!(progressing["status"], "True");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .ends_with("; 1 device waiting: 1 UpdateLocked (since 2026-12-06T09:03:11Z)"),
        "{progressing}"
    );
    assert_eq!(condition(&s, "Ready")["status"], "False");
    assert_eq!(s["waiting"], 1, "{s}");
    let canary = device(&s, "canary");
    assert_eq!(canary["phase"], "Waiting");
    assert_eq!(canary["reason"], "UpdateLocked");
    assert_eq!(canary["waitingSince"], "2026-12-06T09:03:11Z");

    // Released: it applies. Its deadline starts now, not at the write.
    r.report("canary", rev, Phase::Starting, Reason::None);
    let s = r.reconcile().await;
    assert_eq!(s["rollout"]["timedOut"], 0, "{s}");
    assert_eq!(s["rollout"]["gated"], 0, "{s}");
    assert_eq!(s["rollout"]["phase"], "Progressing", "{s}");
    r.report("canary", rev, Phase::Healthy, Reason::None);
    let s = r.reconcile().await;
    assert_eq!(s["rollout"]["lastBatch"]["result"], "Succeeded", "{s}");
    assert_eq!(r.key("prod").await, Some(rev), "the next batch is written");
    r.report("prod", rev, Phase::Healthy, Reason::None);
    let s = r.reconcile().await;
    assert_eq!(s["rollout"]["phase"], "Healthy", "{s}");

    // A new revision whose canary lock outlives its timeout (onTimeout:
    // Fail): the batch fails and the rollout halts.
    let mut d2 = r.get();
    d2.spec.score.data = podman("kiosk:2");
    d2.metadata.generation = Some(2);
    r.api.insert(&d2);
    let rev2 = operator::plan(&d2).unwrap().revision;
    r.reconcile().await;
    assert_eq!(r.key("canary").await, Some(rev2));
    r.report("canary", rev2, Phase::Failed, Reason::UpdateLockTimeout);
    let s = r.reconcile().await;
    let ro = &s["rollout"];
    assert_eq!(ro["phase"], "Degraded", "{s}");
    assert_eq!(ro["failed"], 1, "{s}");
    assert_eq!(ro["lastBatch"]["failed"], 1, "{s}");
    assert_eq!(
        r.key("prod").await,
        Some(rev),
        "prod keeps the stable revision"
    );
    let canary = device(&s, "canary");
    assert_eq!(
        (&canary["phase"], &canary["reason"]),
        (&json!("Failed"), &json!("UpdateLockTimeout")),
        "{s}"
    );
}
