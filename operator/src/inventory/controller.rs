//! The inventory's loop: creates a Device at a board's first heartbeat,
//! keeps its labels and status current under the write policy, notices
//! silence, and decommissions a board whose Device is deleted.
//!
//! A kube-runtime `Controller<Device>` reconciles each Device when the
//! object changes, when the [`StatusCache`] says the board's inventory may
//! have changed ([`StatusCache::subscribe_devices`]), when the capability
//! gate names it, and on a timer per object (when Ready would turn Unknown,
//! or `lastSeen` is due a refresh). A router task in front of it creates
//! the objects the controller cannot reconcile yet (boards heard of but
//! without a Device), and every `sweep` retries those it could not create.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use protocol::keys::{
    DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET, DeviceFilter,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::labels::{self, BOARD_LABELS_ANNOTATION, InvalidLabel, Labels};
use super::{policy, state};
use crate::capability_gate::CapabilityGate;
use crate::controller::Clock;
use crate::crd::device::{DEVICE_FINALIZER, DeviceState, is_device_object_name};
use crate::crd::{Device, DeviceSpec};
use crate::metrics::Metrics;
use crate::nats::{KvRecord, KvWrite, Nats, NatsError};
use crate::status::{StatusCache, now_ns};
use error_report::Chain;

/// Settings of the inventory.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// Silence after which a Device's Ready turns Unknown (HeartbeatMissing).
    pub silence: Duration,
    /// Longest time the written `lastSeen` may lag while nothing else
    /// changes: the steady-state write rate is one status patch per device
    /// per `refresh`.
    pub refresh: Duration,
    /// How often boards heard of but without a Device are created again
    /// (after a create that failed or raced a deletion).
    pub sweep: Duration,
    /// Device creations in flight at once (a fleet's first start).
    pub create_concurrency: usize,
    /// Longest back-off after repeated transient failures.
    pub max_backoff: Duration,
    /// Least time between two writes for one Device caused by what its
    /// board reports (labels, versions, warnings, counts): a board that
    /// changes its heartbeat at every put costs at most one write per
    /// interval, not one per put. Ready turning and the first write are
    /// not held back.
    pub min_write_interval: Duration,
    /// The name events are reported under.
    pub reporter: String,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            silence: Duration::from_secs(300),
            refresh: Duration::from_secs(300),
            sweep: Duration::from_secs(30),
            create_concurrency: 16,
            max_backoff: Duration::from_secs(300),
            min_write_interval: Duration::from_secs(10),
            reporter: "iot-operator".into(),
        }
    }
}

/// Everything the inventory needs, shared by its tasks.
pub struct Inventory {
    /// The Kubernetes client.
    pub client: Client,
    /// The NATS connection (decommissioning).
    pub nats: Nats,
    /// The devices' last reports.
    pub cache: Arc<StatusCache>,
    /// What the Deployment controller holds back from which device.
    pub gate: Arc<CapabilityGate>,
    /// Counters (API writes: `device_creates`, `device_status_patches`,
    /// `device_metadata_patches`).
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: InventoryConfig,
    reporter: Reporter,
    clock: Clock,
    failures: Mutex<HashMap<String, u32>>,
    /// The status last written, by object uid: the watch may lag behind
    /// our own writes, and a stale view would write the same status again.
    written: Mutex<HashMap<String, DeviceState>>,
    /// Invalid board labels last reported, by device (reported once).
    invalid: Mutex<HashMap<String, Vec<InvalidLabel>>>,
    /// When each Device was last written by this loop (nanoseconds, the
    /// loop's clock), for `min_write_interval`.
    last_write: Mutex<HashMap<String, i128>>,
    /// Devices whose id cannot name a Device (logged once).
    unnamed: Mutex<HashSet<String>>,
    /// Creations in flight.
    creating: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inventory {
    /// An inventory with the system clock.
    pub fn new(
        client: Client,
        nats: Nats,
        cache: Arc<StatusCache>,
        gate: Arc<CapabilityGate>,
        metrics: Arc<Metrics>,
        config: InventoryConfig,
    ) -> Inventory {
        let reporter = Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Inventory {
            client,
            nats,
            cache,
            gate,
            metrics,
            config,
            reporter,
            clock: Arc::new(now_ns),
            failures: Mutex::default(),
            written: Mutex::default(),
            invalid: Mutex::default(),
            last_write: Mutex::default(),
            unnamed: Mutex::default(),
            creating: Mutex::default(),
        }
    }

    /// The same inventory with another clock (nanoseconds since the epoch).
    pub fn with_clock(mut self, clock: Clock) -> Inventory {
        self.clock = clock;
        self
    }

    fn api(&self) -> Api<Device> {
        Api::all(self.client.clone())
    }

    /// Logs (and records as an Event on the Device) the board labels
    /// dropped as invalid, once per distinct set.
    async fn report_invalid(&self, device: &Device, invalid: Vec<InvalidLabel>) {
        let name = device.name_any();
        {
            let mut seen = lock(&self.invalid);
            if seen
                .get(&name)
                .map_or(invalid.is_empty(), |s| *s == invalid)
            {
                return;
            }
            seen.insert(name.clone(), invalid.clone());
        }
        if invalid.is_empty() {
            return;
        }
        for l in &invalid {
            tracing::warn!(device = %name, key = %l.key, value = %l.value, reason = %l.reason, "board label is not a valid Kubernetes label; ignored");
        }
        let list: Vec<String> = invalid
            .iter()
            .map(|l| format!("{:?}={:?} ({})", l.key, l.value, l.reason))
            .collect();
        self.warn(
            device,
            "InvalidBoardLabel",
            "MergeLabels",
            format!("board labels ignored: {}", list.join(", ")),
        )
        .await;
    }

    /// Records a Warning Event on the Device (logged when it cannot be).
    async fn warn(&self, device: &Device, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &device.object_ref(&())).await {
            tracing::warn!(device = %device.name_any(), error = %Chain(&e), "cannot publish event");
        }
    }

    /// Creates the Device of `device` from its last heartbeat (board labels
    /// merged in, finalizer set). `Ok(false)` when there is nothing to do:
    /// no heartbeat, or the object exists (perhaps still being deleted).
    pub async fn create_from_heartbeat(&self, device: &str) -> Result<bool, kube::Error> {
        let Some(seen) = self.cache.heartbeat(device) else {
            return Ok(false);
        };
        let (board, invalid) = labels::board_labels(&seen.heartbeat);
        for l in &invalid {
            tracing::warn!(device, key = %l.key, value = %l.value, reason = %l.reason, "board label is not a valid Kubernetes label; ignored");
        }
        let object = Device {
            metadata: ObjectMeta {
                name: Some(device.to_string()),
                labels: (!board.is_empty()).then(|| board.clone()),
                annotations: Some(
                    [(
                        BOARD_LABELS_ANNOTATION.to_string(),
                        labels::annotation_value(&board),
                    )]
                    .into(),
                ),
                finalizers: Some(vec![DEVICE_FINALIZER.to_string()]),
                ..ObjectMeta::default()
            },
            spec: DeviceSpec::default(),
            status: None,
        };
        match self.api().create(&PostParams::default(), &object).await {
            Ok(_) => {
                Metrics::add(&self.metrics.device_creates, 1);
                tracing::info!(device, "Device created at the board's first heartbeat");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Why a reconcile failed; all are retried with back-off except a bad
/// NATS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS could not be read or written (decommissioning).
    #[error("NATS")]
    Nats(#[from] NatsError),
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Whether retrying can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Nats(e) => !e.is_permanent(),
            Error::Kube(_) => true,
        }
    }
}

/// What [`decommission`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decommissioned {
    /// Desired-state keys deleted (every deployment's).
    pub desired: usize,
    /// Status keys deleted.
    pub status: usize,
    /// Whether the heartbeat key was deleted.
    pub heartbeat: bool,
}

/// Removes what NATS holds for `device`: its desired-state keys of every
/// deployment (its agent stops their workloads), its status keys and its
/// heartbeat. A device id that cannot make a key has none.
pub async fn decommission(nats: &Nats, device: &str) -> Result<Decommissioned, NatsError> {
    let Ok(filter) = DeviceFilter::new(device) else {
        return Ok(Decommissioned::default());
    };
    let filter = filter.to_string();
    let deletes = |records: Vec<KvRecord>| -> Vec<KvWrite> {
        records
            .into_iter()
            .filter(|r| !r.deleted)
            .map(|r| KvWrite::Delete { key: r.key })
            .collect()
    };
    let desired = deletes(nats.scan(DESIRED_STATE_BUCKET, &filter).await?);
    let desired = nats.write(DESIRED_STATE_BUCKET, desired).await?;
    let status = deletes(nats.scan(DEVICE_STATUS_BUCKET, &filter).await?);
    let status = nats.write(DEVICE_STATUS_BUCKET, status).await?;
    let heartbeat = deletes(nats.scan(DEVICE_HEARTBEAT_BUCKET, device).await?);
    let heartbeat = nats.write(DEVICE_HEARTBEAT_BUCKET, heartbeat).await? > 0;
    Ok(Decommissioned {
        desired,
        status,
        heartbeat,
    })
}

/// Reconciles one Device: on deletion, decommissions the board and
/// releases the finalizer; otherwise merges the board's labels, adds the
/// finalizer if missing, and writes the status when the write policy says
/// so ([`policy::status_patch_needed`]).
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Inventory>) -> Result<Action, Error> {
    let result = reconcile_inner(&device, &ctx).await;
    match &result {
        Ok(_) => {
            lock(&ctx.failures).remove(&device.name_any());
        }
        Err(e) => {
            tracing::warn!(device = %device.name_any(), error = %Chain(e), "Device reconcile failed")
        }
    }
    result
}

async fn reconcile_inner(device: &Device, ctx: &Inventory) -> Result<Action, Error> {
    let name = device.name_any();
    let api = ctx.api();
    let has_finalizer = device.finalizers().iter().any(|f| f == DEVICE_FINALIZER);
    if device.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            let done = match decommission(&ctx.nats, &name).await {
                Ok(done) => done,
                Err(e) => {
                    // Else the object stays Terminating with only a log
                    // line to say why.
                    let note = format!(
                        "cannot remove the board's keys from NATS, so the Device stays until they are: {}",
                        Chain(&e)
                    );
                    ctx.warn(device, "DecommissionFailed", "Decommission", note)
                        .await;
                    return Err(e.into());
                }
            };
            // Forgotten now, not when the watch brings the delete: a sweep
            // or notification in between would recreate the Device from
            // the board's last heartbeat.
            ctx.cache.forget_heartbeat(&name);
            Metrics::add(
                &ctx.metrics.kv_writes,
                (done.desired + done.status + usize::from(done.heartbeat)) as u64,
            );
            tracing::info!(device = %name, desired = done.desired, status = done.status, heartbeat = done.heartbeat, "board decommissioned");
            let rest: Vec<&String> = device
                .finalizers()
                .iter()
                .filter(|f| *f != DEVICE_FINALIZER)
                .collect();
            let patch = json!({"metadata": {
                "finalizers": rest,
                "resourceVersion": device.resource_version(),
            }});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Metrics::add(&ctx.metrics.device_metadata_patches, 1);
        }
        if let Some(uid) = device.uid() {
            lock(&ctx.written).remove(&uid);
        }
        lock(&ctx.invalid).remove(&name);
        lock(&ctx.last_write).remove(&name);
        return Ok(Action::await_change());
    }

    let now = (ctx.clock)();
    let heartbeat = ctx.cache.heartbeat(&name);
    let remembered = device
        .uid()
        .and_then(|uid| lock(&ctx.written).get(&uid).cloned());
    let prev = remembered.as_ref().or(device.status.as_ref());
    let (board, invalid) = match &heartbeat {
        Some(seen) => labels::board_labels(&seen.heartbeat),
        None => (
            prev.map(|p| p.board_labels.clone()).unwrap_or_default(),
            Vec::new(),
        ),
    };
    let held = ctx.gate.for_device(&name);
    let next = state::device_state(
        prev,
        device.metadata.generation,
        state::Inputs {
            heartbeat: heartbeat.as_ref(),
            deployments: ctx.cache.device_summary(&name),
            held: &held,
            board_labels: &board,
            silence: ctx.config.silence,
            now_ns: now,
        },
    );
    // A board cannot buy writes by changing its heartbeat at every put.
    let ready = |s: Option<&DeviceState>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    let last = lock(&ctx.last_write).get(&name).copied();
    if let Some(last) = last
        && has_finalizer
        && ready(prev) == ready(Some(&next))
    {
        let due = last + ctx.config.min_write_interval.as_nanos() as i128;
        if now < due {
            let wait = u64::try_from(due - now).unwrap_or(0);
            return Ok(Action::requeue(Duration::from_nanos(wait)));
        }
    }
    ctx.report_invalid(device, invalid).await;
    let metadata_written = patch_metadata(device, &api, ctx, &board, has_finalizer).await?;

    let written = if policy::status_patch_needed(prev, &next, ctx.config.refresh, now) {
        let mut status = serde_json::to_value(&next).unwrap_or(Value::Null);
        // A merge patch merges maps: board labels the board dropped must
        // be removed by name.
        if let Some(old) = prev {
            for key in old.board_labels.keys() {
                if !next.board_labels.contains_key(key) {
                    status["boardLabels"][key] = Value::Null;
                }
            }
        }
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
        Metrics::add(&ctx.metrics.device_status_patches, 1);
        if let Some(uid) = device.uid() {
            lock(&ctx.written).insert(uid, next.clone());
        }
        lock(&ctx.last_write).insert(name.clone(), now);
        next
    } else {
        if metadata_written {
            lock(&ctx.last_write).insert(name.clone(), now);
        }
        prev.cloned().unwrap_or_default()
    };
    Ok(Action::requeue(policy::next_check(
        &written,
        heartbeat.map(|h| h.stored_at_ns),
        ctx.config.silence,
        ctx.config.refresh,
        now,
    )))
}

/// Merges the board's labels into `metadata.labels` (see
/// [`labels::merge`]), records them in the annotation and adds the
/// finalizer, in one patch conditional on the object's resourceVersion
/// (an administrator's concurrent edit makes it fail and retry). Whether it
/// wrote.
async fn patch_metadata(
    device: &Device,
    api: &Api<Device>,
    ctx: &Inventory,
    board: &Labels,
    has_finalizer: bool,
) -> Result<bool, Error> {
    let current: Labels = device.labels().clone();
    let annotation = device.annotations().get(BOARD_LABELS_ANNOTATION);
    let last = labels::recorded(annotation.map(String::as_str));
    let merged = labels::merge(&current, &last, board);
    let value = labels::annotation_value(&merged.owned);
    if merged.labels == current && annotation == Some(&value) && has_finalizer {
        return Ok(false);
    }
    let mut label_patch = serde_json::Map::new();
    for (k, v) in &merged.labels {
        if current.get(k) != Some(v) {
            label_patch.insert(k.clone(), Value::String(v.clone()));
        }
    }
    for k in current.keys() {
        if !merged.labels.contains_key(k) {
            label_patch.insert(k.clone(), Value::Null);
        }
    }
    let mut finalizers = device.finalizers().to_vec();
    if !has_finalizer {
        finalizers.push(DEVICE_FINALIZER.to_string());
    }
    let patch = json!({"metadata": {
        "resourceVersion": device.resource_version(),
        "labels": label_patch,
        "annotations": {BOARD_LABELS_ANNOTATION: value},
        "finalizers": finalizers,
    }});
    api.patch(
        &device.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Metrics::add(&ctx.metrics.device_metadata_patches, 1);
    Ok(true)
}

/// After a failed reconcile: transient errors are retried with exponential
/// back-off (1 s doubling to `max_backoff`); permanent ones wait for a change.
pub fn error_policy(device: Arc<Device>, err: &Error, ctx: Arc<Inventory>) -> Action {
    if !err.is_transient() {
        return Action::await_change();
    }
    let mut failures = lock(&ctx.failures);
    let n = failures.entry(device.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = retry_backoff::Backoff::new(Duration::from_secs(1), ctx.config.max_backoff)
        .with_jitter(retry_backoff::Jitter::None)
        .delay(*n - 1);
    Action::requeue(delay)
}

/// Runs the inventory until a shutdown signal. `gate_changes` is the
/// receiver of [`CapabilityGate::new`] for `ctx.gate`.
pub async fn run(
    ctx: Arc<Inventory>,
    gate_changes: mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<()> {
    let api = ctx.api();
    if let Err(e) = api.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list iot.nationtech.io Devices ({}); is the CRD installed (kubectl apply -f deploy/crd.yaml) and may this service account list them (deploy/operator.yaml)?",
            Chain(&e)
        );
    }
    let devices = ctx.cache.subscribe_devices(ctx.config.silence);
    // Every heartbeat read before the first reconcile: otherwise a restart
    // would see no heartbeat and turn every Device Unknown, then back.
    let mut attempt = 0u32;
    while let Err(e) = ctx.cache.load(&ctx.nats).await {
        attempt = attempt.saturating_add(1);
        tracing::warn!(error = %Chain(&e), "cannot read the device reports yet; retrying");
        tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(15)))).await;
    }
    // The controller's own reflector, built here to learn when its store
    // holds every Device: kube-runtime 5's `Store::wait_until_ready` wakes
    // only the last of several waiters, and the controller waits too.
    let (store, writer) = reflector::store();
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect(move |e| {
            if matches!(e, Ok(watcher::Event::InitDone)) {
                let _ = ready_tx.send(true);
            }
        })
        .applied_objects();
    let controller = Controller::for_stream(objects, store.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let router = tokio::spawn(route(ctx.clone(), store, ready, devices, gate_changes, tx));
    let triggers =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    tracing::info!("inventory starting");
    controller
        .reconcile_on(triggers)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(device = %obj.name, "Device reconciled"),
                Err(e) => tracing::debug!(error = %Chain(&e), "Device reconcile error"),
            }
        })
        .await;
    router.abort();
    Ok(())
}

/// Turns device news into reconciles of existing Devices, and creations of
/// missing ones; every `sweep`, creates those still missing.
async fn route(
    ctx: Arc<Inventory>,
    store: Store<Device>,
    mut ready: tokio::sync::watch::Receiver<bool>,
    mut devices: mpsc::UnboundedReceiver<String>,
    mut gate: mpsc::UnboundedReceiver<String>,
    tx: mpsc::UnboundedSender<ObjectRef<Device>>,
) {
    // Until the store holds every Device, a missing one may exist.
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let limit = Arc::new(Semaphore::new(ctx.config.create_concurrency.max(1)));
    let mut sweep = tokio::time::interval(ctx.config.sweep);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let id = tokio::select! {
            Some(id) = devices.recv() => id,
            Some(id) = gate.recv() => id,
            _ = sweep.tick() => {
                for id in ctx.cache.heartbeat_devices() {
                    if store.get(&ObjectRef::new(&id)).is_none() {
                        spawn_create(&ctx, &limit, id);
                    }
                }
                continue;
            }
        };
        if store.get(&ObjectRef::new(&id)).is_some() {
            if tx.send(ObjectRef::new(&id)).is_err() {
                return;
            }
        } else if ctx.cache.heartbeat(&id).is_some() {
            spawn_create(&ctx, &limit, id);
        }
    }
}

fn spawn_create(ctx: &Arc<Inventory>, limit: &Arc<Semaphore>, id: String) {
    if !is_device_object_name(&id) {
        if lock(&ctx.unnamed).insert(id.clone()) {
            tracing::warn!(device = %id, "this device id cannot name a Device object (uppercase, '_' or too long): the board has no Device, and only Deployments naming it in targetDevices reach it");
        }
        return;
    }
    if !lock(&ctx.creating).insert(id.clone()) {
        return;
    }
    let (ctx, limit) = (ctx.clone(), limit.clone());
    tracing::debug!(device = %id, "creating the Device");
    tokio::spawn(async move {
        let _permit = limit.acquire_owned().await;
        if let Err(e) = ctx.create_from_heartbeat(&id).await {
            tracing::warn!(device = %id, error = %Chain(&e), "cannot create the Device; retrying at the next sweep");
        }
        lock(&ctx.creating).remove(&id);
    });
}
