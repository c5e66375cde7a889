//! The reconcile loop: a kube-runtime `Controller` over Deployments, with a
//! finalizer so that deleting a Deployment removes its keys first.
//!
//! [`reconcile`] and [`Context`] are public so that tests elsewhere (the
//! end-to-end suite, the fleet bench) drive the real function through a
//! mocked API server.
//!
//! The targets of a Deployment are its `targetDevices` and the Devices its
//! `targetSelector` selects ([`crate::targeting`]); a Device whose labels
//! change re-reconciles exactly the Deployments whose selection it changes.
//! Targets whose agent cannot read the score are held back: not written,
//! shown `Unsupported`, and recorded in the [`CapabilityGate`] for the
//! Device inventory.
//!
//! A Device with maintenance windows of its own gets them instead of the
//! Deployment's ([`apply::Plan::set_device_windows`]); a change of them
//! re-reconciles every Deployment targeting the Device, and invalid ones
//! are logged and reported by an Event on the Device (its keys keep what
//! they hold). The keys of a Device being deleted are kept as they are too:
//! its decommission removes them.
//!
//! A Deployment that references Secrets ([`crate::secrets`]) has them read
//! at every reconcile, and is reconciled at least every
//! [`secrets::resolve::REREAD`] (`ControllerConfig::secrets_reread`): the operator may only `get` Secrets, not
//! watch them, and a rotated Secret (a new resourceVersion) is a new
//! revision. A missing or unusable Secret writes nothing for the new
//! revision (the keys keep what they hold) and says which in the status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use protocol::kv::{Owner, OwnerBuf};
use tokio::sync::mpsc;

use crate::apply::{self, PlanError};
use crate::capability_gate::CapabilityGate;
use crate::crd::{ConditionReason, Deployment, DeploymentStatus, FINALIZER};
use crate::history::History;
use crate::metrics::Metrics;
use crate::nats::{Nats, NatsError};
use crate::rollout::{self, RolloutSpec, step};
use crate::secrets::{self, References, Resolved};
use crate::status::{
    Change, Observed, StatusCache, conditions, fold_status, now_ns, set_condition,
};
use crate::targeting::{self, DeploymentRef, TargetIndex};
use error_report::Chain;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS could not be read or written; retried with back-off.
    #[error("NATS")]
    Nats(#[from] NatsError),
    /// A BatchSequence rollout step failed (NATS, or the revision history).
    #[error("rollout")]
    Rollout(#[from] step::StepError),
    /// The Kubernetes API refused or failed a request; retried.
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
    /// A referenced Secret could not be read (the API server failed);
    /// retried. A missing or unusable one is shown in the status instead.
    #[error(transparent)]
    Secrets(#[from] secrets::resolve::ResolveError),
    /// Adding or removing the finalizer, or the wrapped apply/cleanup, failed.
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Whether retrying can help. A bad NATS configuration cannot be fixed
    /// by retrying; everything else (unreachable NATS or API server,
    /// conflicts) can.
    pub fn is_transient(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Nats(e) => !e.is_permanent(),
            Error::Rollout(step::StepError::Nats(e)) => !e.is_permanent(),
            Error::Rollout(_) => true,
            Error::Kube(_) | Error::Secrets(_) => true,
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_transient(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => true,
                F::UnnamedObject | F::InvalidFinalizer => false,
            },
        }
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often a Deployment is looked at again without a change (to
    /// notice stale heartbeats).
    pub resync: Duration,
    /// Longest back-off after repeated transient failures.
    pub max_backoff: Duration,
    /// The name events are reported under.
    pub reporter: String,
    /// How often a Deployment that references Secrets reads them again
    /// (the operator cannot watch Secrets): at most this long after a
    /// rotation, the new revision is written.
    pub secrets_reread: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            resync: Duration::from_secs(60),
            max_backoff: Duration::from_secs(300),
            reporter: "iot-operator".into(),
            secrets_reread: secrets::resolve::REREAD,
        }
    }
}

/// The operator's clock, replaceable so tests get exact status bodies.
pub type Clock = Arc<dyn Fn() -> i128 + Send + Sync>;

/// Everything a reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The NATS connection.
    pub nats: Nats,
    /// The devices' last reports.
    pub status: Arc<StatusCache>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: ControllerConfig,
    /// The Devices' labels and the Deployments' selectors; resolved only
    /// once synced by the Device watch that [`run`] starts.
    pub targets: Arc<TargetIndex>,
    /// Where held-back targets are recorded for the Device inventory.
    pub capability_gate: Arc<CapabilityGate>,
    /// Every Deployment as the controller's watch sees it, once [`run`]
    /// starts (the metrics and `/readyz` read it).
    pub deployments: Deployments,
    reporter: Reporter,
    clock: Clock,
    failures: Mutex<HashMap<String, u32>>,
    applied: Mutex<HashMap<String, Applied>>,
    /// Each Deployment's sets as its last plan sealed them.
    sealed: secrets::seal::SealCache,
}

/// What the last successful apply of a Deployment found, so that reconciles
/// caused only by device reports fold status without re-reading NATS. The
/// keys are read again at least every `resync` (to repair keys changed
/// behind the operator's back).
#[derive(Debug, Clone)]
struct Applied {
    /// The values written ([`plan_hash`]): the revision is the score's
    /// alone, and a change of `spec.rollout` or of a Device's windows must
    /// reach the devices at once too.
    value: u64,
    owner: OwnerBuf,
    targets: Vec<String>,
    held: Vec<String>,
    conflicts: Vec<apply::Conflict>,
    at: std::time::Instant,
}

/// What tells two plans' values apart in [`Applied`]: the common value,
/// every per-device value and the targets kept as they are.
fn plan_hash(plan: &apply::Plan) -> u64 {
    let mut h = protocol::wire::Fnv1a64::new();
    h.write(&plan.value);
    for (device, value) in &plan.device_values {
        h.write(&[0]);
        h.write(device.as_bytes());
        h.write(&[0]);
        // Sealed values differ at every seal; what they were sealed for
        // and to which key does not.
        let comparable = (value.first() == Some(&protocol::wire::FORMAT_VERSION_5))
            .then(|| secrets::seal::comparable(value))
            .flatten()
            .and_then(|c| protocol::wire::encode_to_vec(&c).ok());
        h.write(comparable.as_deref().unwrap_or(value));
    }
    for device in plan.unsealed.keys() {
        h.write(&[2]);
        h.write(device.as_bytes());
    }
    for device in plan.kept.keys() {
        h.write(&[1]);
        h.write(device.as_bytes());
    }
    h.finish()
}

/// The controller's cache of every Deployment (its watch's reflector
/// store), shared once [`run`] starts. The fleet metrics read each
/// Deployment's `.status` from it at scrape time (the counts the
/// controller last wrote, as the API server has them: no second fold that
/// could disagree with `kubectl get iotdeploy`), and `/readyz` asks whether
/// its first list is in.
#[derive(Clone, Default)]
pub struct Deployments(Arc<RwLock<Option<Store<Deployment>>>>);

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments")
            .field("started", &self.store().is_some())
            .finish()
    }
}

impl Deployments {
    /// Publishes the store of a controller that starts.
    pub(crate) fn set(&self, store: Store<Deployment>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Drops the store of a controller that stopped: its watch no longer
    /// keeps it current, so nothing should be read from it, and
    /// [`Deployments::synced`] says `None` again (the store's own
    /// readiness, once reached, never goes back).
    pub(crate) fn clear(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn store(&self) -> Option<Store<Deployment>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every Deployment the controller's watch holds; `None` before
    /// [`run`] starts and after it stops.
    pub fn state(&self) -> Option<Vec<Arc<Deployment>>> {
        self.store().map(|s| s.state())
    }

    /// `None` before [`run`] starts and after it stops (or its future is
    /// dropped); in between, whether its watch has listed the Deployments
    /// once.
    pub fn synced(&self) -> Option<bool> {
        let store = self.store()?;
        let ready = futures::FutureExt::now_or_never(store.wait_until_ready());
        Some(matches!(ready, Some(Ok(()))))
    }
}

impl Context {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        nats: Nats,
        status: Arc<StatusCache>,
        config: ControllerConfig,
    ) -> Context {
        let reporter = Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            client,
            nats,
            status,
            metrics: Arc::default(),
            config,
            targets: Arc::new(TargetIndex::new()),
            capability_gate: CapabilityGate::detached(),
            deployments: Deployments::default(),
            reporter,
            clock: Arc::new(now_ns),
            failures: Mutex::default(),
            applied: Mutex::default(),
            sealed: secrets::seal::SealCache::default(),
        }
    }

    /// The same context recording held-back targets in `gate` (the one the
    /// Device inventory reads).
    pub fn with_capability_gate(mut self, gate: Arc<CapabilityGate>) -> Context {
        self.capability_gate = gate;
        self
    }

    /// The same context resolving selectors with `targets`.
    pub fn with_target_index(mut self, targets: Arc<TargetIndex>) -> Context {
        self.targets = targets;
        self
    }

    /// The same context with another clock (nanoseconds since the epoch).
    pub fn with_clock(mut self, clock: Clock) -> Context {
        self.clock = clock;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, Applied>> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `plan` unless the same plan was applied less than `resync` ago.
    async fn apply_plan(
        &self,
        key: &str,
        plan: &apply::Plan,
    ) -> Result<apply::ApplyOutcome, NatsError> {
        let fresh = self
            .applied()
            .get(key)
            .filter(|a| {
                a.value == plan_hash(plan)
                    && a.owner == plan.owner
                    && a.targets == plan.targets
                    && a.held.iter().eq(plan.held.keys())
                    && a.at.elapsed() < self.config.resync
            })
            .cloned();
        if let Some(a) = fresh {
            let unchanged = plan
                .targets
                .iter()
                .filter(|t| !a.conflicts.iter().any(|c| &c.device == *t))
                .filter(|t| !plan.held.contains_key(*t) && !plan.kept.contains_key(*t))
                .cloned()
                .collect();
            return Ok(apply::ApplyOutcome {
                unchanged,
                conflicts: a.conflicts,
                ..Default::default()
            });
        }
        self.applied().remove(key);
        Metrics::add(&self.metrics.kv_scans, 1);
        let outcome = apply::apply(&self.nats, plan).await?;
        self.applied().insert(
            key.to_string(),
            Applied {
                value: plan_hash(plan),
                owner: plan.owner.clone(),
                targets: plan.targets.clone(),
                held: plan.held.keys().cloned().collect(),
                conflicts: outcome.conflicts.clone(),
                at: std::time::Instant::now(),
            },
        );
        Ok(outcome)
    }
}

fn object_key(d: &Deployment) -> String {
    format!("{}/{}", d.namespace_or_default(), d.name_str())
}

/// The reference the target index files `d` under.
fn index_ref(d: &Deployment) -> DeploymentRef {
    targeting::deployment_ref(d.namespace_or_default(), d.name_str())
}

/// How long a Deployment with a selector waits, at most, for the Device
/// list before looking again (the list's arrival triggers it sooner).
const SELECTOR_WAIT: Duration = Duration::from_secs(30);

/// How long Deployments wait for the Device watch's first list before the
/// wait is logged as a warning (they go on waiting: see
/// [`targeting::watch::take_error`]).
const DEVICE_LIST_PATIENCE: Duration = Duration::from_secs(60);

/// Reconciles one Deployment: adds the finalizer, writes the desired state
/// and folds device status into `.status`; on deletion removes every key it
/// wrote, then releases the finalizer.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    Metrics::add(&ctx.metrics.reconciles, 1);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), d.namespace_or_default());
    let key = object_key(&d);
    let result = finalizer(&api, FINALIZER, d, |event| async {
        match event {
            FinalizerEvent::Apply(d) => apply_deployment(&d, &api, &ctx).await,
            FinalizerEvent::Cleanup(d) => cleanup(&d, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key);
        }
        Err(e) => {
            Metrics::add(&ctx.metrics.reconcile_errors, 1);
            tracing::warn!(deployment = %key, error = %Chain(&e), "reconcile failed");
        }
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// After a failed reconcile: transient errors are retried with exponential
/// back-off (1 s doubling to `max_backoff`); permanent ones wait for a change.
pub fn error_policy(d: Arc<Deployment>, err: &Error, ctx: Arc<Context>) -> Action {
    if !err.is_transient() {
        return Action::await_change();
    }
    let mut failures = ctx.failures();
    let n = failures.entry(object_key(&d)).or_insert(0);
    *n = n.saturating_add(1);
    // No jitter: these retries are one process's own queue, not a fleet
    // hitting a shared server at once, and an exact schedule is what
    // `max_backoff` documents.
    let delay = retry_backoff::Backoff::new(Duration::from_secs(1), ctx.config.max_backoff)
        .with_jitter(retry_backoff::Jitter::None)
        .delay(*n - 1);
    Action::requeue(delay)
}

async fn apply_deployment(
    d: &Deployment,
    api: &Api<Deployment>,
    ctx: &Context,
) -> Result<Action, Error> {
    let prev = d.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let (planned, resolved) = match apply::plan(d) {
        Ok(plan) => match resolve_secrets(d, ctx, &plan).await? {
            Some(Err(e)) => (Err(PlanError::Secret(e)), None),
            resolved => (Ok(plan), resolved.and_then(Result::ok)),
        },
        Err(e) => (Err(e), None),
    };
    let (observed, action) = match planned {
        Ok(mut plan) => {
            match ctx.targets.resolve(&index_ref(d), plan.selector.as_ref()) {
                Some(selected) => plan.add_targets(selected),
                None if plan.selector.is_some() => {
                    tracing::info!(deployment = %object_key(d), "waiting for the list of Device objects to resolve targetSelector; nothing written yet");
                    return Ok(Action::requeue(SELECTOR_WAIT));
                }
                None => {}
            }
            if !ctx.targets.windows_known_or_wait(&index_ref(d)) {
                if ctx.targets.waited_longer_than(DEVICE_LIST_PATIENCE) {
                    tracing::warn!(deployment = %object_key(d), waited_secs = DEVICE_LIST_PATIENCE.as_secs(), "still no list of Device objects (see the Device watch's errors): the targets' own maintenance windows are unknown, so nothing is written until it arrives");
                } else {
                    tracing::info!(deployment = %object_key(d), "waiting for the list of Device objects to learn the targets' own maintenance windows; nothing written yet");
                }
                return Ok(Action::requeue(SELECTOR_WAIT));
            }
            let mut resync = ctx.config.resync;
            if let Some(resolved) = resolved {
                resync = resync.min(ctx.config.secrets_reread);
                // The key of each target's latest heartbeat: a new key
                // (a new heartbeat) re-seals its values, same revision.
                let seal = || {
                    plan.set_secrets_reusing(
                        resolved,
                        |t| {
                            ctx.status
                                .heartbeat(t)
                                .map(|seen| seen.heartbeat.sealing_key.as_str().to_string())
                        },
                        &ctx.sealed,
                    )
                };
                // A rotation at 10,000 devices is seconds of X25519.
                let sealed = secrets::seal::off_runtime(seal);
                if let Err(e) = sealed {
                    let (observed, action) = rejected(d, ctx, &prev, e);
                    return finish_observed(d, api, ctx, &prev, observed, action, events).await;
                }
            } else {
                // No Secrets (any more): nothing of it to keep.
                ctx.sealed.forget(plan.owner.as_ref());
            }
            if plan.batch_sequence.is_some()
                && let Err(e) = plan.set_attempt(rollout::attempt(d, plan.revision))
            {
                tracing::warn!(deployment = %object_key(d), error = %Chain(&e), "cannot mark the value as a retry; written as the first attempt");
            }
            // Invalid windows are logged and reported on the Device by
            // the Device watch, once per change; here they only keep the
            // device's key as it is.
            for e in plan.set_device_windows(|device| ctx.targets.windows(device)) {
                tracing::debug!(deployment = %object_key(d), error = %e, "key kept as it is");
            }
            // A Device being deleted: its keys are being removed
            // (decommission), not to be written again meanwhile.
            for t in &plan.targets {
                if ctx.targets.is_terminating(t) && !plan.kept.contains_key(t) {
                    plan.kept.insert(
                        t.clone(),
                        format!(
                            "Device {t} is being deleted: its keys are left to its decommission"
                        ),
                    );
                }
            }
            plan.held =
                targeting::capabilities::held_back(&plan, |device| ctx.status.heartbeat(device));
            ctx.capability_gate.set(plan.owner.as_str(), &plan.held);
            if let Some(spec) = plan.batch_sequence.clone() {
                return rollout_step(d, api, ctx, &plan, &spec, &prev, resync).await;
            }
            let outcome = ctx.apply_plan(&object_key(d), &plan).await?;
            Metrics::add(&ctx.metrics.kv_writes, outcome.writes() as u64);
            if outcome.writes() > 0 {
                events.push(event(
                    EventType::Normal,
                    "DesiredStateWritten",
                    "Apply",
                    apply::summary(&plan, &outcome),
                ));
            }
            let observed = Observed {
                revision: Some(plan.revision),
                score_json: Some(plan.score_json.clone()),
                targets: plan.targets.clone(),
                conflicts: outcome.conflicts.clone(),
                held: plan.held.clone(),
                kept: plan.kept.clone(),
                invalid: None,
                unknown_type: plan.unknown_type.clone(),
            };
            (observed, Action::requeue(resync))
        }
        Err(e) => rejected(d, ctx, &prev, e),
    };
    finish_observed(d, api, ctx, &prev, observed, action, events).await
}

/// The Secrets `plan` references, read from the Deployment's namespace:
/// `None` when it references none; `Some(Err)` when one is missing or
/// unusable (the user's to fix). A failed read is an error (retried).
async fn resolve_secrets(
    d: &Deployment,
    ctx: &Context,
    plan: &apply::Plan,
) -> Result<Option<Result<Resolved, secrets::SecretError>>, Error> {
    let refs = References::of(plan.score(), &d.spec.image_pull_secrets);
    if refs.is_empty() {
        return Ok(None);
    }
    match secrets::resolve::resolve(&ctx.client, d.namespace_or_default(), &refs).await {
        Ok(resolved) => Ok(Some(Ok(resolved))),
        Err(secrets::resolve::ResolveError::Secret(e)) => Ok(Some(Err(e))),
        Err(e) => Err(e.into()),
    }
}

/// A spec that cannot be written: nothing is written, the status says why.
/// A Secret that is missing or unusable is looked for again every
/// `secrets_reread` (the operator cannot watch Secrets); any
/// other error waits for a change of the spec.
fn rejected(
    d: &Deployment,
    ctx: &Context,
    prev: &DeploymentStatus,
    e: PlanError,
) -> (Observed, Action) {
    ctx.applied().remove(&object_key(d));
    ctx.capability_gate.remove_owner(&object_key(d));
    // Its old selector no longer stands for it.
    ctx.targets.forget(&index_ref(d));
    tracing::info!(deployment = %object_key(d), error = %Chain(&e), "spec rejected; nothing written");
    let action = if matches!(e, PlanError::Secret(_)) {
        Action::requeue(ctx.config.secrets_reread)
    } else {
        Action::await_change()
    };
    (invalid_observed(d, prev, e), action)
}

/// Folds `observed` into the status and finishes the reconcile.
async fn finish_observed(
    d: &Deployment,
    api: &Api<Deployment>,
    ctx: &Context,
    prev: &DeploymentStatus,
    observed: Observed,
    action: Action,
    events: Vec<Event>,
) -> Result<Action, Error> {
    let mut status = fold_status(d, &observed, &ctx.status, (ctx.clock)());
    if observed.invalid.is_some() {
        // A rejected edit writes nothing; the rollout's state (the stable
        // revision, a halt, the batch reached) waits for a valid spec.
        status.rollout = prev.rollout.clone();
    }
    finish(d, api, ctx, prev, status, events).await?;
    Ok(action)
}

/// Publishes the events the reconcile gathered, and patches the status when
/// it changed (after the warning events its conditions call for).
async fn finish(
    d: &Deployment,
    api: &Api<Deployment>,
    ctx: &Context,
    prev: &DeploymentStatus,
    status: DeploymentStatus,
    mut events: Vec<Event>,
) -> Result<(), Error> {
    for (type_, reason) in [
        (conditions::INVALID_SCORE, "InvalidScore"),
        (conditions::UNKNOWN_SCORE_TYPE, "UnknownScoreType"),
        (conditions::CONFLICT, "Conflict"),
        (conditions::DEGRADED, "Degraded"),
    ] {
        if let Some(note) = newly_true(prev, &status, type_) {
            events.push(event(EventType::Warning, reason, "Reconcile", note));
        }
    }
    if d.status.as_ref() != Some(&status) {
        let mut patch = serde_json::json!({ "status": status });
        if prev.rollout.is_some() && status.rollout.is_none() {
            // Back to AllAtOnce: a merge patch removes only what is null.
            patch["status"]["rollout"] = serde_json::Value::Null;
        }
        api.patch_status(d.name_str(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let reference = d.object_ref(&());
    // One recorder per reconcile, as kube documents: its cache would
    // otherwise fold a later event into the first one's series, note and all.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for ev in events {
        // An event is worth less than the reconcile: log and go on.
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(deployment = %object_key(d), error = %Chain(&e), "cannot publish event");
        }
    }
    Ok(())
}

/// How long after a device's deadline the rollout looks again, so that a
/// device that never reports is counted timed out soon after it.
const DEADLINE_SLACK: Duration = Duration::from_millis(500);

/// A reconcile of a BatchSequence Deployment: one [`rollout::step::step`],
/// its decision folded into the status (`status.rollout`, and Ready,
/// Progressing, Degraded and Paused stated by the rollout).
async fn rollout_step(
    d: &Deployment,
    api: &Api<Deployment>,
    ctx: &Context,
    plan: &apply::Plan,
    spec: &RolloutSpec,
    prev: &DeploymentStatus,
    resync: Duration,
) -> Result<Action, Error> {
    // The AllAtOnce cache must not vouch for keys this path rewrites.
    ctx.applied().remove(&object_key(d));
    // A batch's selector resolved before the Device list arrived would
    // take nothing, and its devices would go with the last batch.
    if spec.batches.iter().any(|b| b.selector.is_some())
        && !ctx.targets.synced_or_wait(&index_ref(d))
    {
        tracing::info!(deployment = %object_key(d), "waiting for the list of Device objects to resolve the batches' selectors; nothing written yet");
        return Ok(Action::requeue(SELECTOR_WAIT));
    }
    let now = (ctx.clock)();
    let history = History::new(ctx.client.clone());
    let io = step::Io {
        nats: &ctx.nats,
        history: &history,
        cache: &ctx.status,
    };
    let outcome = step::step(
        io,
        d,
        plan,
        spec,
        |selector| ctx.targets.select(selector),
        now,
    )
    .await?;
    Metrics::add(&ctx.metrics.kv_scans, 1);
    Metrics::add(&ctx.metrics.kv_writes, outcome.writes as u64);
    let decision = outcome.decision;
    let mut events: Vec<Event> = decision
        .notes
        .iter()
        .map(|n| {
            let type_ = if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            event(type_, n.reason, "Rollout", n.message.clone())
        })
        .collect();
    for w in &outcome.warnings {
        if !prev
            .conditions
            .iter()
            .any(|c| c.message.contains(w.as_str()))
        {
            events.push(event(
                EventType::Warning,
                "BatchesMismatchTargets",
                "Rollout",
                w.clone(),
            ));
        }
    }
    let observed = Observed {
        revision: Some(plan.revision),
        score_json: Some(plan.score_json.clone()),
        targets: plan.targets.clone(),
        conflicts: outcome.conflicts,
        held: plan.held.clone(),
        kept: plan.kept.clone(),
        invalid: None,
        unknown_type: plan.unknown_type.clone(),
    };
    let mut status = fold_status(d, &observed, &ctx.status, now);
    for v in decision.verdicts {
        set_condition(
            &mut status,
            prev,
            now,
            (v.type_, v.status, v.reason, v.message),
        );
    }
    if let Some(e) = &outcome.roll_back_error {
        let message = format!(
            "revision {} halted; the stable revision cannot be written back yet (retried at every reconcile): {e}",
            decision.status.revision
        );
        set_condition(
            &mut status,
            prev,
            now,
            (
                conditions::DEGRADED,
                true,
                ConditionReason::BatchFailed,
                message,
            ),
        );
    }
    let (warn, reason, message) = if outcome.warnings.is_empty() {
        (
            false,
            ConditionReason::BatchesFitTargets,
            "every batch takes targets within its limit".to_string(),
        )
    } else {
        (
            true,
            ConditionReason::BatchesMismatchTargets,
            outcome.warnings.join("; "),
        )
    };
    let batch_warnings = (conditions::BATCH_WARNINGS, warn, reason, message);
    set_condition(&mut status, prev, now, batch_warnings);
    status.rollout = Some(decision.status);
    finish(d, api, ctx, prev, status, events).await?;
    // Only now that the status records the halt (see step::step).
    if !outcome.roll_back.is_empty() {
        let n = outcome.roll_back.len();
        ctx.nats
            .write(protocol::keys::DESIRED_STATE_BUCKET, outcome.roll_back)
            .await?;
        Metrics::add(&ctx.metrics.kv_writes, n as u64);
    }
    let next = decision
        .next_deadline_ns
        .map(|at| Duration::from_nanos(at.saturating_sub(now).max(0) as u64) + DEADLINE_SLACK)
        .filter(|d| *d < resync);
    Ok(Action::requeue(next.unwrap_or(resync)))
}

/// What the status shows when the spec cannot be written: the last revision
/// written stays, with the reason in a condition.
fn invalid_observed(d: &Deployment, prev: &DeploymentStatus, e: PlanError) -> Observed {
    Observed {
        revision: prev
            .revision
            .as_deref()
            .and_then(|r| u64::from_str_radix(r, 16).ok()),
        score_json: prev.observed_score_string.clone(),
        targets: d
            .spec
            .target_devices
            .iter()
            .filter(|t| protocol::keys::validate_device_id(t).is_ok())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        conflicts: Vec::new(),
        held: Default::default(),
        kept: Default::default(),
        invalid: Some(e),
        unknown_type: None,
    }
}

/// The condition's message when it became True (or its message changed
/// while True) between `prev` and `next`.
fn newly_true(prev: &DeploymentStatus, next: &DeploymentStatus, type_: &str) -> Option<String> {
    let find = |s: &DeploymentStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .cloned()
    };
    let now = find(next)?;
    match find(prev) {
        Some(before) if before.message == now.message => None,
        _ => Some(now.message),
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

async fn cleanup(d: &Deployment, ctx: &Context) -> Result<Action, Error> {
    let Ok(owner) = Owner::new(d.namespace_or_default(), d.name_str()) else {
        // Nothing can have been written under a name that is not a token.
        return Ok(Action::await_change());
    };
    ctx.applied().remove(&object_key(d));
    // Forced: the devices remove at once, whatever their update lock and
    // maintenance windows say.
    let removed = if d.spec.rollout.force {
        apply::remove_forced(&ctx.nats, &owner.to_string(), owner.name()).await?
    } else {
        apply::remove(&ctx.nats, &owner.to_string(), owner.name()).await?
    };
    ctx.targets.forget(&index_ref(d));
    ctx.sealed.forget(&owner.to_string());
    ctx.capability_gate.remove_owner(&owner.to_string());
    Metrics::add(&ctx.metrics.kv_writes, removed.len() as u64);
    tracing::info!(deployment = %owner, removed = removed.len(), "desired state removed");
    Ok(Action::await_change())
}

/// Runs the controller until a shutdown signal: watches Deployments in all
/// namespaces and reconciles them, and also when a device report or
/// heartbeat concerns one, or a Device's labels change its selection.
pub async fn run(
    ctx: Arc<Context>,
    changes: mpsc::UnboundedReceiver<Change>,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::all(ctx.client.clone());
    if let Err(e) = api.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list iot.nationtech.io Deployments ({}); is the CRD installed (kubectl apply -f deploy/crd.yaml) and may this service account list them?",
            Chain(&e)
        );
    }
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    ctx.deployments.set(store.clone());
    // Whether the stream ends (a shutdown signal) or this future is
    // dropped, the store is no longer kept current: withdraw it.
    let _withdraw = ClearOnDrop(ctx.deployments.clone());
    let triggers = change_triggers(changes, store.clone(), ctx.targets.clone());
    let device_triggers = device_triggers(
        targeting::watch::watch(ctx.client.clone(), ctx.targets.clone()),
        store,
        ctx.clone(),
    );
    let triggers = futures::stream::select(triggers, device_triggers);
    controller
        .reconcile_on(triggers)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(deployment = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %Chain(&e), "reconcile error"),
            }
        })
        .await;
    Ok(())
}

/// Clears its [`Deployments`] when dropped.
struct ClearOnDrop(Deployments);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// Maps Device changes to the Deployments they concern: a changed selection
/// names them; changed maintenance windows concern every Deployment
/// targeting the Device (invalid ones are also logged and reported by a
/// warning Event on the Device).
fn device_triggers(
    changes: impl futures::Stream<Item = targeting::watch::DeviceChange> + Send + 'static,
    store: Store<Deployment>,
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<Deployment>> + Send + 'static {
    use targeting::watch::DeviceChange;
    changes.flat_map(move |change| {
        let refs = match change {
            DeviceChange::Selection(r) => vec![r],
            DeviceChange::Windows { device, windows } => {
                if let Err(e) = apply::check_windows("spec.maintenance.windows", &windows) {
                    report_bad_windows(&ctx, &device, &e);
                }
                targeting_device(&store, &ctx.targets, &device)
            }
        };
        futures::stream::iter(refs)
    })
}

/// Logs that `device`'s own windows are invalid and says so in a warning
/// Event on the Device (in the background: the event is worth less than
/// the reconciles waiting on this stream).
fn report_bad_windows(ctx: &Arc<Context>, device: &str, e: &PlanError) {
    let note = format!(
        "{e}; this Device's keys keep what they hold (every Deployment's value for it, windows included) until this is fixed"
    );
    tracing::warn!(device, error = %e, "a Device's maintenance windows are invalid; its keys keep what they hold");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(format!("{}/v1alpha1", crate::crd::GROUP)),
        kind: Some("Device".into()),
        name: Some(device.to_string()),
        ..Default::default()
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let device = device.to_string();
    tokio::spawn(async move {
        let ev = event(
            EventType::Warning,
            "InvalidMaintenanceWindows",
            "Reconcile",
            note,
        );
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(device, error = %Chain(&e), "cannot publish event");
        }
    });
}

/// Every Deployment targeting `device`: by name in `targetDevices`, or by
/// selector.
fn targeting_device(
    store: &Store<Deployment>,
    targets: &TargetIndex,
    device: &str,
) -> Vec<ObjectRef<Deployment>> {
    let mut refs: Vec<ObjectRef<Deployment>> = store
        .state()
        .iter()
        .filter(|d| d.spec.target_devices.iter().any(|t| t == device))
        .map(|d| index_ref(d))
        .collect();
    for r in targets.selecting(device) {
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    refs
}

/// Maps device reports to the Deployments they concern: a status names the
/// deployment (in any namespace); a device that comes back concerns every
/// Deployment targeting it, by name or by selector. Reports for unknown
/// deployments are dropped.
fn change_triggers(
    changes: mpsc::UnboundedReceiver<Change>,
    store: Store<Deployment>,
    targets: Arc<TargetIndex>,
) -> impl futures::Stream<Item = ObjectRef<Deployment>> + Send + 'static {
    futures::stream::unfold(
        changes,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    )
    .flat_map(move |change| {
        let refs: Vec<ObjectRef<Deployment>> = match &change {
            Change::Deployment(name) => store
                .state()
                .iter()
                .filter(|d| d.name_any() == *name)
                .map(|d| index_ref(d))
                .collect(),
            Change::Device(dev) => targeting_device(&store, &targets, dev),
        };
        if refs.is_empty() {
            tracing::debug!(?change, "report for no known Deployment ignored");
        }
        futures::stream::iter(refs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Score;
    use kube::runtime::reflector::store::Writer;

    fn d(ns: &str, name: &str, targets: &[&str]) -> Deployment {
        Deployment::for_test(ns, name, targets, "PodmanV0", serde_json::json!({}))
    }

    #[tokio::test]
    async fn reports_trigger_the_deployments_they_concern() {
        let mut writer: Writer<Deployment> = Writer::default();
        for obj in [
            d("a", "web", &["pi-1"]),
            d("b", "web", &["pi-2"]),
            d("a", "db", &["pi-1", "pi-3"]),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut refs = Box::pin(change_triggers(
            rx,
            writer.as_reader(),
            Arc::new(TargetIndex::new()),
        ));
        let mut next = async || {
            let r = refs.next().await.unwrap();
            let namespace = r.namespace.unwrap_or_default();
            Owner::new(&namespace, &r.name).unwrap().to_string()
        };
        tx.send(Change::Deployment("ghost".into())).unwrap();
        tx.send(Change::Deployment("db".into())).unwrap();
        assert_eq!(next().await, "a/db", "unknown names are dropped");
        tx.send(Change::Deployment("web".into())).unwrap();
        let mut got = vec![next().await, next().await];
        got.sort();
        assert_eq!(got, ["a/web", "b/web"], "a name maps to every namespace");
        tx.send(Change::Device("pi-3".into())).unwrap();
        assert_eq!(next().await, "a/db");
        tx.send(Change::Device("pi-1".into())).unwrap();
        let mut got = vec![next().await, next().await];
        got.sort();
        assert_eq!(got, ["a/db", "a/web"]);
    }

    #[tokio::test]
    async fn a_device_back_triggers_the_deployments_selecting_it() {
        let mut writer: Writer<Deployment> = Writer::default();
        writer.apply_watcher_event(&watcher::Event::Apply(d("a", "named", &["pi-1"])));
        let index = Arc::new(TargetIndex::new());
        let labels = |v: &str| [("site".to_string(), v.to_string())].into_iter().collect();
        index.replace_all(vec![
            ("pi-1".into(), labels("lyon")),
            ("pi-2".into(), labels("oslo")),
        ]);
        let selector = crate::targeting::TargetSelector::new(
            &serde_json::from_value(serde_json::json!({"matchLabels": {"site": "lyon"}})).unwrap(),
        )
        .unwrap();
        let lyon = ObjectRef::new("lyon").within("b");
        index.resolve(&lyon, Some(&selector));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut refs = Box::pin(change_triggers(rx, writer.as_reader(), index));
        tx.send(Change::Device("pi-1".into())).unwrap();
        let mut got = vec![refs.next().await.unwrap(), refs.next().await.unwrap()];
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, [lyon, ObjectRef::new("named").within("a")]);
        tx.send(Change::Device("pi-2".into())).unwrap();
        tx.send(Change::Deployment("named".into())).unwrap();
        assert_eq!(
            refs.next().await.unwrap().name,
            "named",
            "pi-2 concerns nobody"
        );
    }

    /// A plan of `d` whose Secret `db` holds `password`, sealed to `key`
    /// for every target.
    fn sealed(d: &Deployment, password: &str, key: &str) -> apply::Plan {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "db", "uid": "u", "resourceVersion": "1"}, "stringData": {"password": password}}),
        )
        .unwrap();
        let mut plan = apply::plan(d).unwrap();
        let refs = References::of(plan.score(), &[]);
        let resolved = secrets::resolve_from(
            &refs,
            "a",
            |_| Some(&secret),
            secrets::Fingerprint::Versions,
        )
        .unwrap();
        plan.set_secrets(resolved, |_| Some(key.to_string()))
            .unwrap();
        plan
    }

    #[test]
    fn sealing_again_does_not_change_what_the_apply_cache_compares() {
        let mut dep = d("a", "web", &["pi-1", "pi-2"]);
        dep.spec.score = Score {
            type_name: "PodmanV1".into(),
            data: serde_json::json!({"containers": [{"name": "web", "image": "nginx", "env": [
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
            ]}]}),
        };
        let key = sealing::DeviceKey::generate();
        let (p1, p2) = (
            sealed(&dep, "x", key.public_key()),
            sealed(&dep, "x", key.public_key()),
        );
        assert_ne!(p1.value_for("pi-1"), p2.value_for("pi-1"), "sealed anew");
        assert_eq!(plan_hash(&p1), plan_hash(&p2));
        let other = sealing::DeviceKey::generate();
        assert_ne!(
            plan_hash(&p1),
            plan_hash(&sealed(&dep, "x", other.public_key()))
        );
    }

    #[test]
    fn permanent_errors_wait_for_a_change() {
        let e = Error::Nats(NatsError::NoServer);
        assert!(!e.is_transient());
        let e = Error::Nats(NatsError::Timeout {
            op: "scan",
            bucket: "desired-state".into(),
        });
        assert!(e.is_transient());
    }
}
