//! The gate's decisions, without I/O or clock reads: every call is given
//! what the agent observes ([`Senses`]: the time, whether the clock can be
//! trusted, the update lock) and returns the [`Effect`]s to carry out, in
//! order, as `rollback::Supervisor` does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use maintenance_window::{Schedule, Window, WindowState, format_duration};
use protocol::status::clip_message;
use protocol::{
    DeploymentStatus, DesiredState, IotScore, LockTimeout, PayloadEncoding, Phase, Reason,
    UpdateLockPolicy, Waiting,
};

use super::clock::Trust;
use crate::reconcile::StatusReport;

/// How long the agent keeps the update lock after it admits a change under
/// it, or after the reconciler last said the change is still being pulled
/// or started: until the reconciler reports the change past
/// `Pending`/`Pulling`/`Starting` (which it does once the replaced
/// containers are gone), so a workload cannot take the lock half-way
/// through the replacement.
pub const APPLY_HOLD: Duration = Duration::from_secs(120);

/// The longest the agent keeps the update lock for one change, however
/// long the reconciler says it is pulling or starting.
pub const APPLY_HOLD_MAX: Duration = Duration::from_secs(600);

/// The first wait before a failed prefetch is tried again; it doubles up
/// to [`PREFETCH_RETRY_MAX`].
pub const PREFETCH_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two prefetch attempts.
pub const PREFETCH_RETRY_MAX: Duration = Duration::from_secs(300);

/// The longest sleep while a change waits for a window (or for a clock
/// that may never be trusted): the wall clock may be stepped (NTP) while
/// the agent sleeps on the monotonic one.
pub const WINDOW_RECHECK: Duration = Duration::from_secs(60);

/// What the update lock's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it: the agent holds it now (the caller keeps the
    /// lock while [`Gate::holds_lock`] says so).
    Free,
    /// Someone holds it; who, as the status message says it.
    Held(String),
    /// It cannot be checked (why): changes are not held for it.
    Unknown(String),
}

/// What the agent observes, as the gate asks for it.
pub trait Senses {
    /// The wall clock.
    fn now(&self) -> Timestamp;
    /// The monotonic clock (lock timeouts, retries, since when a change
    /// waits: immune to clock steps).
    fn monotonic(&self) -> Instant;
    /// Whether the wall clock can be trusted for maintenance windows.
    fn clock(&self) -> Trust;
    /// Checks the update lock, taking it when it is free. Asked only when
    /// a change needs it.
    fn lock(&mut self) -> LockState;
}

/// What the gate asks of the agent, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand a status report to the status writer.
    Publish(StatusReport),
    /// Store this value as the deployment's admitted one, durably, before
    /// the [`Effect::Admit`] that follows.
    StoreAdmitted(String, Bytes),
    /// The deployment is deleted: drop its admitted value.
    ForgetAdmitted(String),
    /// Store the deployment's held change durably (`None`: a delete), so
    /// that it waits again after a reboot.
    StoreHeld(String, Option<Bytes>),
    /// The deployment's held change is no more (admitted or withdrawn):
    /// drop it from the held store.
    ForgetHeld(String),
    /// Give this value (`None`: delete) to the deployment's reconciler,
    /// through the rollback supervisor.
    Admit(String, Option<Bytes>),
    /// Pull the images of this held value (a report comes back through
    /// [`Gate::prefetched`]); a prefetch of the deployment still running
    /// is stopped.
    Prefetch {
        /// The deployment.
        deployment: String,
        /// The held revision.
        revision: u64,
        /// The held value.
        value: Bytes,
    },
    /// Stop the deployment's prefetch: its value was replaced, withdrawn
    /// or admitted.
    CancelPrefetch(String),
}

/// A desired-state value and what the gate reads from it.
#[derive(Debug, Clone)]
struct Value {
    bytes: Bytes,
    /// `None` when it does not decode: the reconciler says so and touches
    /// nothing, so nothing holds it.
    info: Option<Info>,
}

#[derive(Debug, Clone)]
struct Info {
    revision: u64,
    force: bool,
    lock_policy: Option<UpdateLockPolicy>,
    /// Its running containers are protected by the update lock.
    honours_lock: bool,
    /// Its windows, or why one is invalid (the field named).
    schedule: Result<Schedule, String>,
    /// What the containers are made of: two values that differ only in
    /// their gate or rollout policy replace nothing.
    content: Content,
}

/// The part of a desired value that makes the containers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    deployment: String,
    score_type: String,
    encoding: PayloadEncoding,
    score: Vec<u8>,
    attempt: u32,
}

impl Value {
    fn read(bytes: Bytes) -> Value {
        let info = protocol::wire::decode::<DesiredState<'_>>(&bytes)
            .ok()
            .map(|d| {
                let containers_lock = match d.score.decode() {
                    Ok(IotScore::PodmanV1(s)) => s.containers.iter().any(|c| c.update_lock),
                    _ => false,
                };
                Info {
                    revision: d.revision,
                    force: d.gate.force,
                    lock_policy: d.gate.update_lock,
                    honours_lock: d.gate.update_lock.is_some() || containers_lock,
                    schedule: schedule(&d),
                    content: Content {
                        deployment: d.deployment.as_str().to_string(),
                        score_type: d.score.type_name.as_str().to_string(),
                        encoding: d.score.encoding,
                        score: d.score.data.to_vec(),
                        attempt: d.attempt,
                    },
                }
            });
        Value { bytes, info }
    }
}

/// The maintenance windows of `d`, or the first invalid one's field and
/// what is wrong with it.
fn schedule(d: &DesiredState<'_>) -> Result<Schedule, String> {
    let mut windows = Vec::new();
    for (i, w) in d.gate.windows.iter().enumerate() {
        let duration = Duration::from_secs(u64::from(w.duration_seconds));
        let window = Window::parse(w.at.as_str(), w.time_zone.as_str(), duration)
            .map_err(|e| format!("gate.windows[{i}].{}: {e}", e.field()))?;
        windows.push(window);
    }
    Ok(Schedule::new(windows))
}

/// A change that waits.
#[derive(Debug, Clone)]
enum Change {
    Put(Value),
    Delete { force: bool },
}

/// Why a change waits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    /// Outside its maintenance windows.
    Window { opens: Option<Timestamp> },
    /// The clock cannot be trusted yet (`until`: the agent stops waiting
    /// for it), or ever (`None`).
    Clock { until: Option<Timestamp> },
    /// The update is under the update lock: its images are pulled before
    /// the lock is checked, so the agent holds the lock only while it
    /// replaces containers.
    Prefetching,
    /// The update lock is held (`holder`: by whom).
    Lock { holder: String },
    /// The update lock outlasted its timeout, with `onTimeout: Fail`.
    LockTimedOut { holder: String, after: u32 },
    /// The value cannot be applied as sent (an invalid window): only a new
    /// value changes that.
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefetch {
    /// Nothing to pull (a delete, an invalid value), or not started.
    Idle,
    Pulling,
    Pulled,
    Failed {
        error: String,
        retry_at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Held {
    change: Change,
    /// When the device started waiting (monotonic: the wall clock may be
    /// wrong then; the status shows it on the clock of the time).
    since: Instant,
    /// When the update lock first held it back (monotonic, for the
    /// timeout and the status).
    lock_since: Option<Instant>,
    block: Option<Block>,
    prefetch: Prefetch,
    /// Failed prefetches in a row (the back-off).
    prefetch_failures: u32,
    /// What was last published about it, but the time: published again
    /// only when this changes.
    shown: Option<DeploymentStatus<'static>>,
    /// The lock's failed check was said.
    lock_unknown_said: bool,
}

/// A change admitted under the update lock, which the agent keeps until
/// the change is done.
#[derive(Debug, Clone, Copy)]
struct Applying {
    /// The revision admitted; `None` for a delete.
    revision: Option<u64>,
    /// The hold ends then, unless the reconciler says it still pulls or
    /// starts the change.
    until: Instant,
    /// The hold ends then at the latest.
    cap: Instant,
}

impl Applying {
    fn new(revision: Option<u64>, mono: Instant) -> Applying {
        Applying {
            revision,
            until: mono + APPLY_HOLD,
            cap: mono + APPLY_HOLD_MAX,
        }
    }

    fn ends(&self) -> Instant {
        self.until.min(self.cap)
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// What the reconciler runs (but the rollback's own going back).
    admitted: Option<Value>,
    held: Option<Held>,
    /// A change admitted under the update lock, which the agent keeps
    /// until the change is done.
    applying: Option<Applying>,
    /// The reconciler's last report.
    last: Option<DeploymentStatus<'static>>,
}

impl Entry {
    fn admitted_revision(&self) -> Option<u64> {
        self.admitted.as_ref()?.info.as_ref().map(|i| i.revision)
    }

    fn is_empty(&self) -> bool {
        self.admitted.is_none() && self.held.is_none() && self.applying.is_none()
    }
}

/// The verdict on a held change.
enum Verdict {
    Admit { with_lock: bool },
    Hold(Block),
}

/// The update gate: for each deployment, the admitted value (what the
/// reconciler runs) and the change that waits, if any.
#[derive(Debug, Default)]
pub struct Gate {
    deployments: BTreeMap<String, Entry>,
}

impl Gate {
    /// At boot: the reconcilers run the `admitted` values, and the `held`
    /// changes (`None`: a delete) go through the gate again. The gate's
    /// own stores are the truth (see the module doc, "power cuts"); the
    /// desired-state cache (`cached`) is read only at the first start of
    /// an agent with a gate (`gated_before` false): what it holds was
    /// running already, so it is admitted at once.
    pub fn restore(
        &mut self,
        admitted: BTreeMap<String, Bytes>,
        held: BTreeMap<String, Option<Bytes>>,
        cached: Option<BTreeMap<String, Bytes>>,
        gated_before: bool,
        senses: &mut dyn Senses,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (d, bytes) in &admitted {
            self.deployments.entry(d.clone()).or_default().admitted =
                Some(Value::read(bytes.clone()));
            effects.push(Effect::Admit(d.clone(), Some(bytes.clone())));
        }
        if !gated_before {
            for (d, bytes) in cached.iter().flatten() {
                if admitted.contains_key(d) {
                    continue;
                }
                self.deployments.entry(d.clone()).or_default().admitted =
                    Some(Value::read(bytes.clone()));
                effects.push(Effect::StoreAdmitted(d.clone(), bytes.clone()));
                effects.push(Effect::Admit(d.clone(), Some(bytes.clone())));
            }
        }
        for (d, change) in held {
            effects.extend(self.arrive(&d, change, false, true, senses));
        }
        effects
    }

    /// `deployment`'s desired value arrived (`None`: deleted; `force`: the
    /// delete carried the override).
    pub fn arrived(
        &mut self,
        deployment: &str,
        value: Option<Bytes>,
        force: bool,
        senses: &mut dyn Senses,
    ) -> Vec<Effect> {
        self.arrive(deployment, value, force, false, senses)
    }

    /// [`Self::arrived`]; `stored`: the change comes from the held store.
    fn arrive(
        &mut self,
        deployment: &str,
        value: Option<Bytes>,
        force: bool,
        stored: bool,
        senses: &mut dyn Senses,
    ) -> Vec<Effect> {
        let mono = senses.monotonic();
        let d = deployment.to_string();
        let e = self.deployments.entry(d.clone()).or_default();
        let mut effects = Vec::new();
        // A newer change replaces the one that waits, but not since when
        // the device waits.
        let (since, lock_since) = e
            .held
            .as_ref()
            .map_or((mono, None), |h| (h.since, h.lock_since));
        match value {
            Some(bytes) => {
                if let Some(Held {
                    change: Change::Put(v),
                    ..
                }) = &e.held
                    && v.bytes == bytes
                {
                    // A resync: it waits as it did.
                    return Vec::new();
                }
                if e.admitted.as_ref().is_some_and(|a| a.bytes == bytes) {
                    // Back to what runs: nothing waits any more.
                    return match e.held.take() {
                        Some(h) => {
                            crate::info!("{deployment}: the held change was withdrawn");
                            if h.prefetch == Prefetch::Pulling {
                                effects.push(Effect::CancelPrefetch(d.clone()));
                            }
                            effects.push(Effect::ForgetHeld(d.clone()));
                            effects.extend(e.last.clone().map(|s| Effect::Publish((d, s))));
                            effects
                        }
                        None if stored => vec![Effect::ForgetHeld(d)],
                        None => Vec::new(),
                    };
                }
                if let Some(h) = &e.held
                    && h.prefetch == Prefetch::Pulling
                {
                    effects.push(Effect::CancelPrefetch(d.clone()));
                }
                e.held = Some(Held::new(
                    Change::Put(Value::read(bytes)),
                    since,
                    lock_since,
                ));
            }
            None => {
                if e.admitted.is_none() {
                    // Nothing runs: nothing to wait for.
                    if e.held
                        .take()
                        .is_some_and(|h| h.prefetch == Prefetch::Pulling)
                    {
                        effects.push(Effect::CancelPrefetch(d.clone()));
                    }
                    effects.extend([
                        Effect::ForgetAdmitted(d.clone()),
                        Effect::ForgetHeld(d.clone()),
                        Effect::Admit(d, None),
                    ]);
                    if e.is_empty() {
                        self.deployments.remove(deployment);
                    }
                    return effects;
                }
                match &mut e.held {
                    Some(Held {
                        change: Change::Delete { force: was },
                        ..
                    }) => {
                        if *was || !force {
                            return Vec::new();
                        }
                        *was = true;
                    }
                    held => {
                        if held
                            .as_ref()
                            .is_some_and(|h| h.prefetch == Prefetch::Pulling)
                        {
                            effects.push(Effect::CancelPrefetch(d.clone()));
                        }
                        *held = Some(Held::new(Change::Delete { force }, since, lock_since));
                    }
                }
            }
        }
        let settled = self.settle(deployment, senses);
        // Still held: on disk before it is said, so that it waits again
        // after a reboot.
        if let Some(h) = self
            .deployments
            .get(deployment)
            .and_then(|e| e.held.as_ref())
        {
            let change = match &h.change {
                Change::Put(v) => Some(v.bytes.clone()),
                Change::Delete { .. } => None,
            };
            effects.push(Effect::StoreHeld(d, change));
        }
        effects.extend(settled);
        effects
    }

    /// A report of `deployment`'s reconciler (after the rollback's relay).
    pub fn report(
        &mut self,
        deployment: &str,
        status: DeploymentStatus<'static>,
        senses: &dyn Senses,
    ) -> Vec<Effect> {
        let Some(e) = self.deployments.get_mut(deployment) else {
            return vec![Effect::Publish((deployment.to_string(), status))];
        };
        if let Some(a) = &mut e.applying {
            match a.revision {
                // A delete is done when its containers are gone.
                None if status.phase == Phase::Removed => {
                    crate::debug!("{deployment}: removed: update lock released");
                    e.applying = None;
                }
                None => {}
                Some(r) if status.revision != r => {}
                Some(_)
                    if matches!(
                        status.phase,
                        Phase::Pending | Phase::Pulling | Phase::Starting
                    ) =>
                {
                    // Still under way: a slow pull or start keeps the
                    // lock, up to APPLY_HOLD_MAX.
                    a.until = senses.monotonic() + APPLY_HOLD;
                }
                Some(r) => {
                    // The reconciler reports past Starting once the
                    // containers it replaced are gone.
                    crate::debug!(
                        "{deployment}: revision {r} is {}: update lock released",
                        status.phase
                    );
                    e.applying = None;
                }
            }
        }
        e.last = Some(status.clone());
        if e.held.is_some() {
            return publish_held(deployment, e, senses, true);
        }
        if e.is_empty() {
            self.deployments.remove(deployment);
        }
        vec![Effect::Publish((deployment.to_string(), status))]
    }

    /// Checks every held change again (the lock, the windows, the clock),
    /// retries failed prefetches, and ends the lock holds that timed out.
    pub fn tick(&mut self, senses: &mut dyn Senses) -> Vec<Effect> {
        let mono = senses.monotonic();
        let mut effects = Vec::new();
        let names: Vec<String> = self.deployments.keys().cloned().collect();
        for d in names {
            let Some(e) = self.deployments.get_mut(&d) else {
                continue;
            };
            if let Some(a) = e.applying
                && a.ends() <= mono
            {
                crate::warn!(
                    "{d}: the change admitted under the update lock is not done after {}s: update lock released",
                    APPLY_HOLD.as_secs()
                );
                e.applying = None;
            }
            let Some(h) = &mut e.held else {
                if e.is_empty() {
                    self.deployments.remove(&d);
                }
                continue;
            };
            if matches!(h.block, Some(Block::Invalid(_))) {
                continue;
            }
            if let (Prefetch::Failed { retry_at, .. }, Change::Put(v)) = (&h.prefetch, &h.change)
                && *retry_at <= mono
                && let Some(info) = &v.info
            {
                effects.push(Effect::Prefetch {
                    deployment: d.clone(),
                    revision: info.revision,
                    value: v.bytes.clone(),
                });
                h.prefetch = Prefetch::Pulling;
            }
            effects.extend(self.settle(&d, senses));
        }
        effects
    }

    /// The prefetch of `deployment`'s held `revision` ended: `Ok` with the
    /// images pulled, or why it failed.
    pub fn prefetched(
        &mut self,
        deployment: &str,
        revision: u64,
        result: Result<Vec<String>, String>,
        senses: &mut dyn Senses,
    ) -> Vec<Effect> {
        let mono = senses.monotonic();
        let Some(e) = self.deployments.get_mut(deployment) else {
            return Vec::new();
        };
        let Some(h) = &mut e.held else {
            return Vec::new();
        };
        let Change::Put(v) = &h.change else {
            return Vec::new();
        };
        if v.info.as_ref().map(|i| i.revision) != Some(revision) {
            return Vec::new();
        }
        h.prefetch = match result {
            Ok(_) => Prefetch::Pulled,
            Err(error) => {
                let delay = PREFETCH_RETRY
                    .saturating_mul(1 << h.prefetch_failures.min(16))
                    .min(PREFETCH_RETRY_MAX);
                h.prefetch_failures += 1;
                Prefetch::Failed {
                    error,
                    retry_at: mono + delay,
                }
            }
        };
        if h.block == Some(Block::Prefetching) {
            // The update lock is checked now.
            return self.settle(deployment, senses);
        }
        publish_held(deployment, e, senses, false)
    }

    /// Whether the agent must keep the update lock it took: a change
    /// admitted under it is not done yet.
    pub fn holds_lock(&self) -> bool {
        self.deployments.values().any(|e| e.applying.is_some())
    }

    /// How long until something needs checking again, `tick` being the
    /// period of the checks of the lock and the clock; `None`: nothing
    /// waits.
    pub fn next_check(&self, now: Timestamp, mono: Instant, tick: Duration) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut at = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        for e in self.deployments.values() {
            if let Some(a) = e.applying {
                at(a.ends().saturating_duration_since(mono));
            }
            let Some(h) = &e.held else { continue };
            if let Prefetch::Failed { retry_at, .. } = h.prefetch {
                at(retry_at.saturating_duration_since(mono).max(tick));
            }
            match &h.block {
                Some(Block::Window { opens }) => {
                    // An opening already passed (the agent was not
                    // scheduled meanwhile): at once.
                    let until = opens
                        .map(|o| {
                            if o > now {
                                o.duration_since(now).unsigned_abs()
                            } else {
                                Duration::ZERO
                            }
                        })
                        .unwrap_or(WINDOW_RECHECK);
                    at(until.min(WINDOW_RECHECK));
                }
                // Trusted only once the kernel says it is synchronized:
                // no hurry (NTP takes seconds to minutes).
                Some(Block::Clock { until: None }) => at(WINDOW_RECHECK),
                // The prefetch's end settles it.
                Some(Block::Invalid(_) | Block::Prefetching) => {}
                Some(_) | None => at(tick),
            }
        }
        next
    }

    /// The deployments desired: admitted and not deleted, or waiting to
    /// be installed.
    pub fn desired(&self) -> BTreeSet<String> {
        self.deployments
            .iter()
            .filter(|(_, e)| match &e.held {
                Some(h) => matches!(h.change, Change::Put(_)),
                None => e.admitted.is_some(),
            })
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Whether a change of `deployment` waits.
    pub fn is_held(&self, deployment: &str) -> bool {
        self.deployments
            .get(deployment)
            .is_some_and(|e| e.held.is_some())
    }

    /// Decides on `deployment`'s held change.
    fn settle(&mut self, deployment: &str, senses: &mut dyn Senses) -> Vec<Effect> {
        let Some(e) = self.deployments.get_mut(deployment) else {
            return Vec::new();
        };
        let Some(h) = &mut e.held else {
            return Vec::new();
        };
        let verdict = judge(deployment, e.admitted.as_ref(), h, senses);
        match verdict {
            Verdict::Admit { with_lock } => admit(deployment, e, with_lock, senses.monotonic()),
            Verdict::Hold(block) => {
                let mut effects = Vec::new();
                if h.block.is_none() {
                    crate::info!("{deployment}: {} held: {block:?}", h.what());
                }
                let invalid = matches!(block, Block::Invalid(_));
                h.block = Some(block);
                if !invalid
                    && h.prefetch == Prefetch::Idle
                    && let Change::Put(v) = &h.change
                    && let Some(info) = &v.info
                {
                    h.prefetch = Prefetch::Pulling;
                    effects.push(Effect::Prefetch {
                        deployment: deployment.to_string(),
                        revision: info.revision,
                        value: v.bytes.clone(),
                    });
                }
                effects.extend(publish_held(deployment, e, senses, false));
                effects
            }
        }
    }
}

impl Held {
    fn new(change: Change, since: Instant, lock_since: Option<Instant>) -> Held {
        Held {
            change,
            since,
            lock_since,
            block: None,
            prefetch: Prefetch::Idle,
            prefetch_failures: 0,
            shown: None,
            lock_unknown_said: false,
        }
    }

    fn what(&self) -> &'static str {
        match self.change {
            Change::Put(_) => "the update",
            Change::Delete { .. } => "the delete",
        }
    }

    /// The first pull of its images ended (pulled, or failed: the
    /// reconciler pulls again and says why).
    fn prefetch_done(&self) -> bool {
        matches!(self.prefetch, Prefetch::Pulled | Prefetch::Failed { .. })
            || self.prefetch_failures > 0
    }
}

/// Whether `held` may be applied now over `admitted`.
fn judge(
    deployment: &str,
    admitted: Option<&Value>,
    held: &mut Held,
    senses: &mut dyn Senses,
) -> Verdict {
    let admitted_info = admitted.and_then(|a| a.info.as_ref());
    let (force, schedule, policy) = match &held.change {
        Change::Put(v) => {
            let Some(info) = &v.info else {
                // The reconciler refuses it and touches nothing.
                return Verdict::Admit { with_lock: false };
            };
            let schedule = match &info.schedule {
                Ok(s) => Some(s),
                Err(why) if !info.force => return Verdict::Hold(Block::Invalid(why.clone())),
                Err(_) => None,
            };
            if admitted_info.is_some_and(|a| a.content == info.content) {
                // Only the gate or the rollout policy changed: nothing is
                // replaced, so nothing waits.
                return Verdict::Admit { with_lock: false };
            }
            let policy = info
                .lock_policy
                .or(admitted_info.and_then(|a| a.lock_policy));
            (info.force, schedule, policy)
        }
        Change::Delete { force } => (
            *force,
            // An admitted value's windows are valid, but when forced in.
            admitted_info.and_then(|a| a.schedule.as_ref().ok()),
            admitted_info.and_then(|a| a.lock_policy),
        ),
    };
    if force {
        return Verdict::Admit { with_lock: false };
    }
    if let Some(schedule) = schedule
        && !schedule.is_empty()
    {
        match senses.clock() {
            Trust::NotYet { until } => {
                let left = until.saturating_duration_since(senses.monotonic());
                let until = senses
                    .now()
                    .checked_add(left)
                    .unwrap_or_else(|_| senses.now());
                return Verdict::Hold(Block::Clock { until: Some(until) });
            }
            Trust::Never => return Verdict::Hold(Block::Clock { until: None }),
            Trust::Trusted => {}
        }
        if let WindowState::Closed { opens } = schedule.state(senses.now()) {
            return Verdict::Hold(Block::Window { opens });
        }
    }
    // The lock protects what runs: a first install does not wait for it.
    if !admitted_info.is_some_and(|a| a.honours_lock) {
        return Verdict::Admit { with_lock: false };
    }
    // The images first: the agent then holds the lock only while it
    // replaces the containers, not through a download.
    if matches!(held.change, Change::Put(_)) && !held.prefetch_done() {
        return Verdict::Hold(Block::Prefetching);
    }
    let mono = senses.monotonic();
    let since = *held.lock_since.get_or_insert(mono);
    match senses.lock() {
        LockState::Free => Verdict::Admit { with_lock: true },
        LockState::Unknown(why) => {
            if !held.lock_unknown_said {
                crate::warn!(
                    "{deployment}: cannot check the update lock ({why}); applying without it"
                );
                held.lock_unknown_said = true;
            }
            Verdict::Admit { with_lock: false }
        }
        LockState::Held(holder) => {
            let policy = policy.unwrap_or_default();
            let timeout = Duration::from_secs(u64::from(policy.timeout_seconds));
            if policy.timeout_seconds == 0 || mono.saturating_duration_since(since) < timeout {
                return Verdict::Hold(Block::Lock { holder });
            }
            match policy.on_timeout {
                LockTimeout::Force => {
                    crate::warn!(
                        "{deployment}: update lock held by {holder} for more than {}s: applying anyway (onTimeout: Force)",
                        policy.timeout_seconds
                    );
                    Verdict::Admit { with_lock: false }
                }
                LockTimeout::Fail => Verdict::Hold(Block::LockTimedOut {
                    holder,
                    after: policy.timeout_seconds,
                }),
            }
        }
    }
}

/// Lets `e`'s held change through.
fn admit(deployment: &str, e: &mut Entry, with_lock: bool, mono: Instant) -> Vec<Effect> {
    let Some(held) = e.held.take() else {
        return Vec::new();
    };
    let d = deployment.to_string();
    let mut effects = Vec::new();
    if held.prefetch == Prefetch::Pulling {
        effects.push(Effect::CancelPrefetch(d.clone()));
    }
    match held.change {
        Change::Put(v) => {
            let revision = v.info.as_ref().map(|i| i.revision);
            if held.block.is_some() {
                crate::info!(
                    "{deployment}: the update to revision {} may apply now",
                    revision.unwrap_or_default()
                );
            }
            if with_lock && let Some(revision) = revision {
                e.applying = Some(Applying::new(Some(revision), mono));
            }
            effects.extend([
                Effect::StoreAdmitted(d.clone(), v.bytes.clone()),
                Effect::ForgetHeld(d.clone()),
                Effect::Admit(d, Some(v.bytes.clone())),
            ]);
            e.admitted = Some(v);
        }
        Change::Delete { .. } => {
            if held.block.is_some() {
                crate::info!("{deployment}: the delete may apply now");
            }
            if with_lock {
                e.applying = Some(Applying::new(None, mono));
            }
            e.admitted = None;
            effects.extend([
                Effect::ForgetAdmitted(d.clone()),
                Effect::ForgetHeld(d.clone()),
                Effect::Admit(d, None),
            ]);
        }
    }
    effects
}

/// The status of `e`'s held change, published when it says something new
/// (`always`: a report of the running containers came, which may change
/// them).
fn publish_held(deployment: &str, e: &mut Entry, senses: &dyn Senses, always: bool) -> Vec<Effect> {
    let Some(status) = held_status(e, senses.now(), senses.monotonic()) else {
        return Vec::new();
    };
    let Some(h) = &mut e.held else {
        return Vec::new();
    };
    let same = h.shown.as_ref().is_some_and(|s| {
        s.revision == status.revision
            && s.phase == status.phase
            && s.reason == status.reason
            && s.waiting == status.waiting
            && s.message == status.message
            && s.running_revision == status.running_revision
            && s.containers == status.containers
    });
    if same && !always {
        return Vec::new();
    }
    h.shown = Some(status.clone());
    vec![Effect::Publish((deployment.to_string(), status))]
}

/// `then` (monotonic) on the wall clock of `now`/`mono`: the clock may
/// have been set (NTP) since.
fn wall(then: Instant, now: Timestamp, mono: Instant) -> Timestamp {
    let ago = mono.saturating_duration_since(then);
    now.checked_sub(ago).unwrap_or(now)
}

/// What the device says while `e`'s change is held: the held revision,
/// waiting (or failed), with the running revision and its containers.
fn held_status(e: &Entry, now: Timestamp, mono: Instant) -> Option<DeploymentStatus<'static>> {
    let h = e.held.as_ref()?;
    let block = h.block.as_ref()?;
    let admitted = e.admitted_revision();
    let revision = match &h.change {
        Change::Put(v) => v.info.as_ref()?.revision,
        Change::Delete { .. } => admitted?,
    };
    // After the rollback's going back, the containers are of the revision
    // it restored.
    let running = match &e.last {
        Some(l) if l.phase == Phase::RolledBack => l.running_revision.or(admitted),
        _ => admitted,
    };
    let containers = e
        .last
        .as_ref()
        .map(|l| l.containers.clone())
        .unwrap_or_default();
    let since_at = wall(h.since, now, mono);
    let since = fmt_time(since_at);
    let what = h.what();
    let pulled = match (&h.change, &h.prefetch) {
        (Change::Delete { .. }, _) => String::new(),
        (_, Prefetch::Idle) => String::new(),
        (_, Prefetch::Pulling) => "; pulling the new images".to_string(),
        (_, Prefetch::Pulled) => "; new images pulled".to_string(),
        (_, Prefetch::Failed { error, .. }) => {
            format!("; pulling the new images failed ({error}), retrying")
        }
    };
    let (phase, reason, until, message) = match block {
        Block::Window { opens } => {
            let windows = match &h.change {
                Change::Put(v) => v.info.as_ref().and_then(|i| i.schedule.as_ref().ok()),
                Change::Delete { .. } => e
                    .admitted
                    .as_ref()
                    .and_then(|a| a.info.as_ref())
                    .and_then(|i| i.schedule.as_ref().ok()),
            };
            let windows = windows.map(describe_windows).unwrap_or_default();
            let next = match opens {
                Some(o) => format!("the next opens at {}", fmt_time(*o)),
                None => "none opens within a year".to_string(),
            };
            (
                Phase::Waiting,
                Reason::OutsideMaintenanceWindow,
                *opens,
                format!(
                    "{what} waits for a maintenance window ({windows}); {next}; waiting since {since}{pulled}"
                ),
            )
        }
        Block::Clock { until: Some(until) } => (
            Phase::Waiting,
            Reason::ClockNotSynchronized,
            None,
            format!(
                "{what} waits for the clock to be synchronized (maintenance windows need the time), until {} at most; waiting since {since}{pulled}",
                fmt_time(*until)
            ),
        ),
        Block::Clock { until: None } => (
            Phase::Waiting,
            Reason::ClockNotSynchronized,
            None,
            format!(
                "{what} waits: the clock is not synchronized and no real-time clock set it at boot, so maintenance windows cannot be evaluated (synchronize the clock, or force the change); waiting since {since}{pulled}"
            ),
        ),
        Block::Prefetching => {
            let runs = running
                .map(|r| format!("; revision {r} runs"))
                .unwrap_or_default();
            (
                Phase::Pulling,
                Reason::None,
                None,
                format!(
                    "pulling the new images before the update (under the update lock, which is checked once they are here){runs}"
                ),
            )
        }
        Block::Lock { holder } => {
            let held_since = h
                .lock_since
                .map(|t| format!(" since {}", fmt_time(wall(t, now, mono))))
                .unwrap_or_default();
            (
                Phase::Waiting,
                Reason::UpdateLocked,
                None,
                format!(
                    "update lock held by {holder}{held_since}; {what} waits since {since}{pulled}"
                ),
            )
        }
        Block::LockTimedOut { holder, after } => (
            Phase::Failed,
            Reason::UpdateLockTimeout,
            None,
            format!(
                "update lock held by {holder} for more than {after}s (onTimeout: Fail); {what} waits since {since} and applies when the lock is released{pulled}"
            ),
        ),
        Block::Invalid(why) => (
            Phase::Failed,
            Reason::Error,
            None,
            format!("{why}; {what} is not applied"),
        ),
    };
    let waiting = (!matches!(block, Block::Invalid(_) | Block::Prefetching)).then(|| Waiting {
        since_ms: millis(since_at),
        until_ms: until.map(millis),
    });
    Some(DeploymentStatus {
        revision,
        phase,
        containers,
        message: protocol::Text::owned(clip_message(&message).to_string()),
        timestamp_ms: millis(now),
        reason,
        running_revision: running,
        waiting,
    })
}

fn describe_windows(s: &Schedule) -> String {
    s.windows()
        .iter()
        .map(|w| {
            format!(
                "\"{}\" {} for {}",
                w.at(),
                w.time_zone(),
                format_duration(w.duration())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn millis(t: Timestamp) -> u64 {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}

/// A time as status messages show it: UTC, to the second.
fn fmt_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::{
        BoundedVec, ContainerState, ContainerStatus, ContainerV1, MaintenanceWindow, PodmanV1Score,
        RolloutPolicy, Text, UpdateGate,
    };

    const R1: u64 = 0xf3a9_1c2e_77d0_4b15;
    const R2: u64 = 0x0b7e_52a1_9c3d_e860;
    const R3: u64 = 0x05d2_1e0f_438a_bc97;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The agent's observations, set by the test: the wall clock moves
    /// with the monotonic one.
    struct Fake {
        base: Instant,
        /// The monotonic clock's time since `base`.
        elapsed: Duration,
        now: Timestamp,
        trust: Trust,
        lock: LockState,
        /// How many times the lock was checked.
        checks: u32,
    }

    impl Fake {
        fn at(now: &str) -> Fake {
            let now = ts(now);
            Fake {
                base: Instant::now(),
                elapsed: Duration::ZERO,
                now,
                trust: Trust::Trusted,
                lock: LockState::Free,
                checks: 0,
            }
        }

        /// Time passes until `now`.
        fn set(&mut self, now: &str) {
            let now = ts(now);
            assert!(now >= self.now);
            self.elapsed += now.duration_since(self.now).unsigned_abs();
            self.now = now;
        }

        fn advance(&mut self, secs: i64) {
            self.elapsed += Duration::from_secs(secs.unsigned_abs());
            self.now = self
                .now
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .unwrap();
        }

        /// The wall clock is set (NTP), time does not pass.
        fn step(&mut self, now: &str) {
            self.now = ts(now);
        }
    }

    impl Senses for Fake {
        fn now(&self) -> Timestamp {
            self.now
        }
        fn monotonic(&self) -> Instant {
            self.base + self.elapsed
        }
        fn clock(&self) -> Trust {
            self.trust
        }
        fn lock(&mut self) -> LockState {
            self.checks += 1;
            self.lock.clone()
        }
    }

    fn window(at: &str, tz: &str, secs: u32) -> MaintenanceWindow<'static> {
        MaintenanceWindow {
            at: Text::owned(at.to_string()),
            time_zone: Text::owned(tz.to_string()),
            duration_seconds: secs,
        }
    }

    fn paris_2am() -> UpdateGate<'static> {
        UpdateGate {
            windows: BoundedVec::try_from_iter([window("0 2 * * *", "Europe/Paris", 7200)])
                .unwrap(),
            ..UpdateGate::default()
        }
    }

    fn locked(timeout_seconds: u32, on_timeout: LockTimeout) -> UpdateGate<'static> {
        UpdateGate {
            update_lock: Some(UpdateLockPolicy {
                timeout_seconds,
                on_timeout,
            }),
            ..UpdateGate::default()
        }
    }

    /// A value of deployment `web` at `revision` with `gate`; its
    /// container takes the update lock when `lock_container`.
    fn value_with(revision: u64, gate: UpdateGate<'static>, lock_container: bool) -> Bytes {
        value_of(revision, revision, 0, gate, lock_container)
    }

    /// A value at `revision` whose image is tagged `tag`.
    fn value_of(
        revision: u64,
        tag: u64,
        attempt: u32,
        gate: UpdateGate<'static>,
        lock_container: bool,
    ) -> Bytes {
        let mut c = ContainerV1::new(
            Text::borrowed("c"),
            Text::owned(format!("localhost/x:{tag:x}")),
        );
        c.update_lock = lock_container;
        let score = IotScore::PodmanV1(PodmanV1Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        Bytes::from(
            protocol::wire::encode_to_vec(&DesiredState {
                deployment: Text::borrowed("web"),
                revision,
                score: score.to_payload().unwrap(),
                rollout: RolloutPolicy::default(),
                attempt,
                gate,
                secrets: Default::default(),
            })
            .unwrap(),
        )
    }

    fn value(revision: u64, gate: UpdateGate<'static>) -> Bytes {
        value_with(revision, gate, false)
    }

    fn running(revision: u64) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision,
            phase: Phase::Running,
            containers: BoundedVec::try_from_iter([ContainerStatus::new(
                Text::borrowed("c"),
                ContainerState::Running,
            )])
            .unwrap(),
            message: Text::borrowed(""),
            timestamp_ms: 7,
            reason: Reason::None,
            running_revision: None,
            waiting: None,
        }
    }

    fn admits(effects: &[Effect], v: &Bytes) -> bool {
        effects.contains(&Effect::StoreAdmitted("web".into(), v.clone()))
            && effects.contains(&Effect::Admit("web".into(), Some(v.clone())))
            && effects
                .iter()
                .position(|e| matches!(e, Effect::StoreAdmitted(..)))
                < effects.iter().position(|e| matches!(e, Effect::Admit(..)))
    }

    fn admits_delete(effects: &[Effect]) -> bool {
        effects
            == [
                Effect::ForgetAdmitted("web".into()),
                Effect::ForgetHeld("web".into()),
                Effect::Admit("web".into(), None),
            ]
    }

    fn stores_held(effects: &[Effect], change: Option<&Bytes>) -> bool {
        effects.contains(&Effect::StoreHeld("web".into(), change.cloned()))
    }

    fn prefetches(effects: &[Effect], revision: u64) -> bool {
        effects
            .iter()
            .any(|e| matches!(e, Effect::Prefetch { revision: r, .. } if *r == revision))
    }

    fn published(effects: &[Effect]) -> Vec<&DeploymentStatus<'static>> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish((d, s)) if d == "web" => Some(s),
                _ => None,
            })
            .collect()
    }

    fn one_published(effects: &[Effect]) -> &DeploymentStatus<'static> {
        match published(effects)[..] {
            [s] => s,
            _ => panic!("expected one publish, got {effects:?}"),
        }
    }

    fn millis_of(s: &str) -> u64 {
        millis(ts(s))
    }

    /// R1 runs (admitted before, reported Running).
    fn running_r1(gate: UpdateGate<'static>, lock_container: bool, fake: &mut Fake) -> Gate {
        let mut g = Gate::default();
        let v1 = value_with(R1, gate, lock_container);
        let admitted = BTreeMap::from([("web".to_string(), v1.clone())]);
        let e = g.restore(admitted, BTreeMap::new(), None, true, fake);
        assert_eq!(e, [Effect::Admit("web".into(), Some(v1))]);
        let e = g.report("web", running(R1), fake);
        assert_eq!(e, [Effect::Publish(("web".into(), running(R1)))]);
        assert!(!g.holds_lock());
        g
    }

    #[test]
    fn without_a_gate_a_value_is_admitted_at_once() {
        let mut f = Fake::at("2026-06-01T10:00:00Z");
        let mut g = running_r1(UpdateGate::default(), false, &mut f);
        let v2 = value(R2, UpdateGate::default());
        assert!(admits(
            &g.arrived("web", Some(v2.clone()), false, &mut f),
            &v2
        ));
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
        assert_eq!(f.checks, 0, "the lock is not checked");
        assert_eq!(g.desired(), BTreeSet::from(["web".to_string()]));
        // The same value again (a resync) does nothing.
        assert_eq!(g.arrived("web", Some(v2), false, &mut f), []);
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// Written at 10:00 Paris time with a 02:00 window: held, Waiting
    /// until the next 02:00, prefetched, and admitted then.
    #[test]
    fn a_revision_written_at_10_is_applied_at_the_next_2am_in_paris() {
        // 10:00 CEST = 08:00 UTC.
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let v2 = value(R2, paris_2am());
        let e = g.arrived("web", Some(v2.clone()), false, &mut f);
        let [
            Effect::StoreHeld(_, Some(_)),
            Effect::Prefetch {
                deployment,
                revision,
                value,
            },
            Effect::Publish((_, s)),
        ] = &e[..]
        else {
            panic!("{e:?}")
        };
        assert_eq!((deployment.as_str(), *revision, value), ("web", R2, &v2));
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision),
            (
                R2,
                Phase::Waiting,
                Reason::OutsideMaintenanceWindow,
                Some(R1)
            )
        );
        // 02:00 CEST = 00:00 UTC.
        assert_eq!(
            s.waiting,
            Some(Waiting {
                since_ms: millis_of("2026-06-01T08:00:00Z"),
                until_ms: Some(millis_of("2026-06-02T00:00:00Z")),
            })
        );
        assert_eq!(s.containers, running(R1).containers, "the running ones");
        assert_eq!(
            s.message.as_str(),
            "the update waits for a maintenance window (\"0 2 * * *\" Europe/Paris for 2h); \
             the next opens at 2026-06-02T00:00:00Z; waiting since 2026-06-01T08:00:00Z; \
             pulling the new images"
        );
        assert!(g.is_held("web"));
        assert_eq!(g.desired(), BTreeSet::from(["web".to_string()]));
        // The images are pulled: said once.
        let e = g.prefetched("web", R2, Ok(vec!["localhost/x".into()]), &mut f);
        assert!(one_published(&e).message.ends_with("; new images pulled"));
        // A report of the running revision is shown as the held one's.
        let e = g.report("web", running(R1), &f);
        let s = one_published(&e);
        assert_eq!((s.revision, s.phase), (R2, Phase::Waiting));
        // Ticks do not publish again, and sleep at most a minute.
        f.advance(3600);
        assert_eq!(g.tick(&mut f), []);
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(WINDOW_RECHECK)
        );
        f.set("2026-06-01T23:59:30Z");
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(Duration::from_secs(30))
        );
        // Asked late, after the opening: at once.
        assert_eq!(
            g.next_check(ts("2026-06-02T00:00:05Z"), f.monotonic(), SECOND),
            Some(Duration::ZERO)
        );
        assert_eq!(g.tick(&mut f), []);
        // 02:00 in Paris: admitted.
        f.set("2026-06-02T00:00:00Z");
        let e = g.tick(&mut f);
        assert!(admits(&e, &v2), "{e:?}");
        assert!(!g.is_held("web"));
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
        assert_eq!(f.checks, 0, "no lock to honour");
        // From now on, reports pass as they are.
        let e = g.report("web", running(R2), &f);
        assert_eq!(e, [Effect::Publish(("web".into(), running(R2)))]);
    }

    /// Across the DST changes: the spring-forward night has no 02:00 (the
    /// window opens at 03:00 CEST), the fall-back night has two (it opens
    /// at the first).
    #[test]
    fn the_2am_window_across_daylight_saving_changes() {
        for (written, before, opens) in [
            // 10:00 CET = 09:00 UTC; 03:00 CEST = 01:00 UTC.
            (
                "2026-03-28T09:00:00Z",
                "2026-03-29T00:59:59Z",
                "2026-03-29T01:00:00Z",
            ),
            // 10:00 CEST = 08:00 UTC; the first 02:00 (CEST) = 00:00 UTC.
            (
                "2026-10-24T08:00:00Z",
                "2026-10-24T23:59:59Z",
                "2026-10-25T00:00:00Z",
            ),
        ] {
            let mut f = Fake::at(written);
            let mut g = running_r1(paris_2am(), false, &mut f);
            let v2 = value(R2, paris_2am());
            let e = g.arrived("web", Some(v2.clone()), false, &mut f);
            let s = one_published(&e);
            assert_eq!(s.reason, Reason::OutsideMaintenanceWindow);
            assert_eq!(
                s.waiting.unwrap().until_ms,
                Some(millis_of(opens)),
                "{written}"
            );
            f.set(before);
            assert_eq!(g.tick(&mut f), [], "{written}");
            f.set(opens);
            assert!(admits(&g.tick(&mut f), &v2), "{written}");
        }
    }

    /// The windows of the new value govern: a value without windows over
    /// one with windows applies at once; a first install waits for its
    /// window; a value arriving inside its window applies at once.
    #[test]
    fn the_new_values_windows_govern() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let v2 = value(R2, UpdateGate::default());
        assert!(admits(
            &g.arrived("web", Some(v2.clone()), false, &mut f),
            &v2
        ));
        // First install, outside its window.
        let mut g = Gate::default();
        let v1 = value(R1, paris_2am());
        let e = g.arrived("web", Some(v1.clone()), false, &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.running_revision),
            (R1, Phase::Waiting, None)
        );
        assert!(s.containers.is_empty());
        f.set("2026-06-02T00:30:00Z");
        assert!(admits(&g.tick(&mut f), &v1));
        // Inside the window: at once.
        let v2 = value(R2, paris_2am());
        assert!(admits(
            &g.arrived("web", Some(v2.clone()), false, &mut f),
            &v2
        ));
    }

    #[test]
    fn force_passes_at_once() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        f.trust = Trust::Never;
        let both = UpdateGate {
            update_lock: Some(UpdateLockPolicy::default()),
            ..paris_2am()
        };
        let mut g = running_r1(both.clone(), true, &mut f);
        let forced = value(
            R2,
            UpdateGate {
                force: true,
                ..both
            },
        );
        assert!(admits(
            &g.arrived("web", Some(forced.clone()), false, &mut f),
            &forced
        ));
        assert_eq!(f.checks, 0);
        assert!(!g.holds_lock());
    }

    #[test]
    fn a_held_lock_holds_the_update_until_it_is_released() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        f.advance(10);
        let v2 = value_with(R2, UpdateGate::default(), true);
        // The images first; the lock is not asked meanwhile.
        let e = g.arrived("web", Some(v2.clone()), false, &mut f);
        assert!(prefetches(&e, R2), "{e:?}");
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision, s.waiting),
            (R2, Phase::Pulling, Reason::None, Some(R1), None)
        );
        assert_eq!(f.checks, 0);
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
        let e = g.prefetched("web", R2, Ok(vec![]), &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision),
            (R2, Phase::Waiting, Reason::UpdateLocked, Some(R1))
        );
        assert_eq!(
            s.waiting,
            Some(Waiting {
                since_ms: millis_of("2026-06-01T08:00:10Z"),
                until_ms: None
            })
        );
        assert_eq!(
            s.message.as_str(),
            "update lock held by pid 4242 (kiosk) since 2026-06-01T08:00:10Z; \
             the update waits since 2026-06-01T08:00:10Z; new images pulled"
        );
        // Checked each tick while held, published only when it changes.
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), Some(SECOND));
        f.advance(1);
        assert_eq!(g.tick(&mut f), []);
        f.lock = LockState::Held("pid 4300 (kiosk)".into());
        f.advance(1);
        let e = g.tick(&mut f);
        assert!(
            one_published(&e)
                .message
                .starts_with("update lock held by pid 4300")
        );
        // Released: admitted at the next tick, and the agent keeps the
        // lock until the new revision is under way.
        f.lock = LockState::Free;
        f.advance(1);
        let e = g.tick(&mut f);
        assert!(admits(&e, &v2), "{e:?}");
        assert!(g.holds_lock());
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(APPLY_HOLD)
        );
        let mut starting = running(R2);
        starting.phase = Phase::Starting;
        g.report("web", starting, &f);
        assert!(g.holds_lock(), "still starting");
        g.report("web", running(R2), &f);
        assert!(!g.holds_lock());
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
        // Or at most APPLY_HOLD after the admission.
        let v3 = value_with(R3, UpdateGate::default(), true);
        g.arrived("web", Some(v3.clone()), false, &mut f);
        assert!(admits(&g.prefetched("web", R3, Ok(vec![]), &mut f), &v3));
        assert!(g.holds_lock());
        f.advance(119);
        g.tick(&mut f);
        assert!(g.holds_lock());
        f.advance(1);
        g.tick(&mut f);
        assert!(!g.holds_lock());
    }

    /// A slow pull or start keeps the lock (APPLY_HOLD after each report
    /// that says so), up to APPLY_HOLD_MAX.
    #[test]
    fn the_lock_is_kept_while_the_change_is_pulled_or_started_up_to_a_cap() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        let v2 = value_with(R2, UpdateGate::default(), true);
        g.arrived("web", Some(v2.clone()), false, &mut f);
        assert!(admits(&g.prefetched("web", R2, Ok(vec![]), &mut f), &v2));
        let mut pulling = running(R2);
        pulling.phase = Phase::Pulling;
        for _ in 0..5 {
            f.advance(100);
            g.report("web", pulling.clone(), &f);
            g.tick(&mut f);
            assert!(g.holds_lock());
        }
        f.advance(99);
        g.tick(&mut f);
        assert!(g.holds_lock(), "500 + 99 s");
        f.advance(1);
        g.report("web", pulling, &f);
        g.tick(&mut f);
        assert!(!g.holds_lock(), "APPLY_HOLD_MAX");
    }

    /// A delete admitted under the lock keeps it until the containers are
    /// removed, not on a report of an older pass at the running revision.
    #[test]
    fn a_delete_under_the_lock_keeps_it_until_removed() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        assert!(admits_delete(&g.arrived("web", None, false, &mut f)));
        assert!(g.holds_lock());
        g.report("web", running(R1), &f);
        assert!(g.holds_lock(), "an old pass's report");
        let mut removed = running(R1);
        removed.phase = Phase::Removed;
        g.report("web", removed, &f);
        assert!(!g.holds_lock());
    }

    /// The lock free on arrival: the images are pulled before the agent
    /// takes it (reporting Pulling at the new revision, not UpdateLocked),
    /// so the lock is not held through a download. A failed pull does not
    /// hold the update back (the reconciler pulls and says why).
    #[test]
    fn under_the_lock_the_images_are_pulled_before_the_lock_is_taken() {
        for result in [Ok(vec![]), Err("no registry".to_string())] {
            let mut f = Fake::at("2026-06-01T08:00:00Z");
            let mut g = running_r1(UpdateGate::default(), true, &mut f);
            let v2 = value_with(R2, UpdateGate::default(), true);
            let e = g.arrived("web", Some(v2.clone()), false, &mut f);
            assert!(prefetches(&e, R2), "{e:?}");
            let s = one_published(&e);
            assert_eq!(
                (s.revision, s.phase, s.reason, s.running_revision),
                (R2, Phase::Pulling, Reason::None, Some(R1))
            );
            assert_eq!(f.checks, 0, "the lock is not taken yet");
            assert!(!g.holds_lock());
            f.advance(30);
            assert_eq!(g.tick(&mut f), []);
            let e = g.prefetched("web", R2, result, &mut f);
            assert!(admits(&e, &v2), "{e:?}");
            assert_eq!(f.checks, 1);
            assert!(g.holds_lock());
        }
    }

    /// A value that changes only the gate or the rollout policy replaces
    /// nothing: admitted at once, though the lock is held and outside its
    /// windows. A new attempt is gated.
    #[test]
    fn a_value_that_changes_only_the_gate_is_admitted_at_once() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let fail = locked(60, LockTimeout::Fail);
        let mut g = running_r1(fail.clone(), true, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let edited = UpdateGate {
            update_lock: fail.update_lock,
            ..paris_2am()
        };
        let v1b = value_of(R2, R1, 0, edited.clone(), true);
        assert!(admits(
            &g.arrived("web", Some(v1b.clone()), false, &mut f),
            &v1b
        ));
        let forced = value_of(
            R3,
            R1,
            0,
            UpdateGate {
                force: true,
                ..edited.clone()
            },
            true,
        );
        assert!(admits(
            &g.arrived("web", Some(forced.clone()), false, &mut f),
            &forced
        ));
        assert_eq!(f.checks, 0);
        assert!(!g.holds_lock());
        // Over a held change: the held one is dropped.
        f.set("2026-06-02T00:00:00Z");
        let v2 = value(R2, edited.clone());
        g.arrived("web", Some(v2), false, &mut f);
        assert!(g.is_held("web"));
        let back = value_of(R3, R1, 0, fail.clone(), true);
        let e = g.arrived("web", Some(back.clone()), false, &mut f);
        assert!(admits(&e, &back), "{e:?}");
        assert!(!g.is_held("web"));
        // A new attempt waits (and fails on the timeout).
        let again = value_of(R3, R1, 1, fail, true);
        g.arrived("web", Some(again), false, &mut f);
        g.prefetched("web", R3, Ok(vec![]), &mut f);
        assert!(g.is_held("web"));
        f.advance(60);
        let e = g.tick(&mut f);
        assert_eq!(one_published(&e).reason, Reason::UpdateLockTimeout);
    }

    /// Revisions that keep arriving during a long hold keep since when the
    /// device waits, and the lock's timeout.
    #[test]
    fn a_newer_value_keeps_since_when_the_device_waits() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(locked(60, LockTimeout::Fail), false, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        g.arrived(
            "web",
            Some(value(R2, locked(60, LockTimeout::Fail))),
            false,
            &mut f,
        );
        g.prefetched("web", R2, Ok(vec![]), &mut f);
        f.advance(40);
        g.arrived(
            "web",
            Some(value(R3, locked(60, LockTimeout::Fail))),
            false,
            &mut f,
        );
        let e = g.prefetched("web", R3, Ok(vec![]), &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.reason, s.waiting.unwrap().since_ms),
            (Reason::UpdateLocked, millis_of("2026-06-01T08:00:00Z"))
        );
        assert!(
            s.message
                .starts_with("update lock held by pid 4242 (kiosk) since 2026-06-01T08:00:00Z;"),
            "{}",
            s.message.as_str()
        );
        f.advance(20);
        let e = g.tick(&mut f);
        let s = one_published(&e);
        assert_eq!((s.revision, s.reason), (R3, Reason::UpdateLockTimeout));
    }

    /// A change that waits from before NTP shows since when on the clock
    /// set since: the wait is counted on the monotonic clock.
    #[test]
    fn since_is_shown_on_the_clock_set_later() {
        let mut f = Fake::at("1970-01-01T00:01:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        g.arrived("web", Some(value(R2, UpdateGate::default())), false, &mut f);
        g.prefetched("web", R2, Ok(vec![]), &mut f);
        f.advance(30);
        f.step("2026-06-01T08:00:00Z");
        f.lock = LockState::Held("pid 4300 (kiosk)".into());
        let e = g.tick(&mut f);
        let s = one_published(&e);
        assert_eq!(
            s.waiting.unwrap().since_ms,
            millis_of("2026-06-01T07:59:30Z")
        );
        assert!(
            s.message.contains("since 2026-06-01T07:59:30Z"),
            "{}",
            s.message.as_str()
        );
    }

    /// A clock that is never trusted is checked every minute, not every
    /// tick.
    #[test]
    fn a_clock_never_trusted_is_checked_every_minute() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        f.trust = Trust::Never;
        let mut g = running_r1(UpdateGate::default(), false, &mut f);
        g.arrived("web", Some(value(R2, paris_2am())), false, &mut f);
        g.prefetched("web", R2, Ok(vec![]), &mut f);
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(WINDOW_RECHECK)
        );
    }

    #[test]
    fn the_gates_lock_policy_honours_the_lock_too() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(locked(0, LockTimeout::Fail), false, &mut f);
        f.lock = LockState::Held("another process".into());
        let v2 = value(R2, locked(0, LockTimeout::Fail));
        g.arrived("web", Some(v2), false, &mut f);
        let e = g.prefetched("web", R2, Ok(vec![]), &mut f);
        assert_eq!(one_published(&e).reason, Reason::UpdateLocked);
        // Timeout 0: waits for ever.
        f.advance(7 * 24 * 3600);
        assert_eq!(g.tick(&mut f), []);
        // A value without the lock over one that runs without it: at once.
        let mut g = running_r1(UpdateGate::default(), false, &mut f);
        let v2 = value_with(R2, locked(0, LockTimeout::Fail), true);
        assert!(admits(
            &g.arrived("web", Some(v2.clone()), false, &mut f),
            &v2
        ));
    }

    #[test]
    fn a_first_install_does_not_wait_for_the_lock() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let mut g = Gate::default();
        let v1 = value_with(R1, locked(60, LockTimeout::Fail), true);
        assert!(admits(
            &g.arrived("web", Some(v1.clone()), false, &mut f),
            &v1
        ));
        assert_eq!(f.checks, 0);
    }

    #[test]
    fn a_lock_timeout_fails_or_forces() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(locked(60, LockTimeout::Fail), false, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let v2 = value(R2, locked(60, LockTimeout::Fail));
        g.arrived("web", Some(v2.clone()), false, &mut f);
        let e = g.prefetched("web", R2, Ok(vec![]), &mut f);
        assert_eq!(one_published(&e).phase, Phase::Waiting);
        f.advance(59);
        assert_eq!(g.tick(&mut f), []);
        f.advance(1);
        let e = g.tick(&mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision),
            (R2, Phase::Failed, Reason::UpdateLockTimeout, Some(R1))
        );
        assert!(s.waiting.is_some());
        assert!(
            s.message.starts_with(
                "update lock held by pid 4242 (kiosk) for more than 60s (onTimeout: Fail)"
            ),
            "{}",
            s.message.as_str()
        );
        f.advance(1);
        assert_eq!(g.tick(&mut f), [], "said once");
        // Still held: admitted when the lock frees.
        f.lock = LockState::Free;
        f.advance(1);
        assert!(admits(&g.tick(&mut f), &v2));

        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(locked(60, LockTimeout::Force), false, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let v2 = value(R2, locked(60, LockTimeout::Force));
        g.arrived("web", Some(v2.clone()), false, &mut f);
        g.prefetched("web", R2, Ok(vec![]), &mut f);
        f.advance(60);
        let e = g.tick(&mut f);
        assert!(admits(&e, &v2), "{e:?}");
        assert!(
            !g.holds_lock(),
            "forced through, the lock is not the agent's"
        );
    }

    /// The lock's timeout counts from when the lock held the change back,
    /// not from the change's arrival (which may have waited for a window).
    #[test]
    fn the_lock_timeout_counts_from_when_the_lock_holds_it_back() {
        let both = UpdateGate {
            update_lock: Some(UpdateLockPolicy {
                timeout_seconds: 60,
                on_timeout: LockTimeout::Force,
            }),
            ..paris_2am()
        };
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(both.clone(), false, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let v2 = value(R2, both);
        g.arrived("web", Some(v2.clone()), false, &mut f);
        g.prefetched("web", R2, Ok(vec![]), &mut f);
        assert_eq!(f.checks, 0, "outside the window, the lock is not asked");
        f.set("2026-06-02T00:00:00Z");
        let e = g.tick(&mut f);
        assert_eq!(one_published(&e).reason, Reason::UpdateLocked);
        f.advance(59);
        assert_eq!(g.tick(&mut f), []);
        f.advance(1);
        assert!(admits(&g.tick(&mut f), &v2));
    }

    #[test]
    fn a_lock_that_cannot_be_checked_holds_nothing() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        f.lock = LockState::Unknown("permission denied".into());
        let v2 = value(R2, UpdateGate::default());
        g.arrived("web", Some(v2.clone()), false, &mut f);
        assert!(admits(&g.prefetched("web", R2, Ok(vec![]), &mut f), &v2));
        assert!(!g.holds_lock());
    }

    #[test]
    fn a_delete_honours_the_lock_and_the_windows_unless_forced() {
        // The lock.
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), true, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let e = g.arrived("web", None, false, &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision),
            (R1, Phase::Waiting, Reason::UpdateLocked, Some(R1))
        );
        assert!(
            s.message.contains("the delete waits"),
            "{}",
            s.message.as_str()
        );
        assert!(!s.message.contains("images"), "nothing to pull");
        assert!(g.desired().is_empty(), "not desired any more");
        assert_eq!(g.arrived("web", None, false, &mut f), [], "said once");
        f.lock = LockState::Free;
        f.advance(1);
        assert!(admits_delete(&g.tick(&mut f)));
        assert!(g.holds_lock(), "until the removal is reported");
        let mut removed = running(R1);
        removed.phase = Phase::Removed;
        assert_eq!(
            g.report("web", removed.clone(), &f),
            [Effect::Publish(("web".into(), removed))]
        );
        assert!(!g.holds_lock());
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);

        // The admitted value's windows.
        let mut g = running_r1(paris_2am(), false, &mut f);
        let e = g.arrived("web", None, false, &mut f);
        assert_eq!(one_published(&e).reason, Reason::OutsideMaintenanceWindow);
        // A forced delete (Iot-Force) over it goes at once.
        assert!(admits_delete(&g.arrived("web", None, true, &mut f)));
        // A forced delete at once, lock or window.
        let mut g = running_r1(paris_2am(), true, &mut f);
        f.lock = LockState::Held("pid 4242 (kiosk)".into());
        let checks = f.checks;
        assert!(admits_delete(&g.arrived("web", None, true, &mut f)));
        assert_eq!(f.checks, checks, "the lock is not asked");
        // Deleting what never ran goes at once too.
        let mut g = Gate::default();
        let v1 = value(R1, paris_2am());
        g.arrived("web", Some(v1), false, &mut f);
        assert!(g.is_held("web"));
        let e = g.arrived("web", None, false, &mut f);
        assert_eq!(e[0], Effect::CancelPrefetch("web".into()), "its pull stops");
        assert!(admits_delete(&e[1..]));
        assert!(g.desired().is_empty());
    }

    #[test]
    fn a_held_change_replaced_or_withdrawn() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let v2 = value(R2, paris_2am());
        g.arrived("web", Some(v2), false, &mut f);
        // A newer value replaces it: the old pull stops, the new value is
        // pulled in turn, the old pull's result is ignored; the device
        // waits since the first.
        f.advance(60);
        let v3 = value(R3, paris_2am());
        let e = g.arrived("web", Some(v3.clone()), false, &mut f);
        assert_eq!(e[0], Effect::CancelPrefetch("web".into()));
        assert!(stores_held(&e, Some(&v3)));
        assert!(prefetches(&e, R3));
        let s = one_published(&e);
        assert_eq!(s.revision, R3);
        assert_eq!(
            s.waiting.unwrap().since_ms,
            millis_of("2026-06-01T08:00:00Z")
        );
        assert_eq!(g.prefetched("web", R2, Ok(vec![]), &mut f), []);
        // Back to the running value: nothing waits, the pull stops; the
        // last report of the running revision is published again.
        let v1 = value(R1, paris_2am());
        assert_eq!(
            g.arrived("web", Some(v1), false, &mut f),
            [
                Effect::CancelPrefetch("web".into()),
                Effect::ForgetHeld("web".into()),
                Effect::Publish(("web".into(), running(R1)))
            ]
        );
        assert!(!g.is_held("web"));
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
    }

    #[test]
    fn a_failed_prefetch_is_retried_with_back_off_and_blocks_nothing() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let v2 = value(R2, paris_2am());
        g.arrived("web", Some(v2.clone()), false, &mut f);
        let e = g.prefetched("web", R2, Err("cannot pull localhost/x".into()), &mut f);
        assert!(
            one_published(&e)
                .message
                .ends_with("; pulling the new images failed (cannot pull localhost/x), retrying")
        );
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(PREFETCH_RETRY)
        );
        f.advance(4);
        assert_eq!(g.tick(&mut f), []);
        f.advance(1);
        let e = g.tick(&mut f);
        assert!(
            matches!(
                e[..],
                [Effect::Prefetch { revision: R2, .. }, Effect::Publish(_)]
            ),
            "{e:?}"
        );
        g.prefetched("web", R2, Err("again".into()), &mut f);
        assert_eq!(
            g.next_check(f.now(), f.monotonic(), SECOND),
            Some(2 * PREFETCH_RETRY)
        );
        // The window opens: admitted all the same.
        f.set("2026-06-02T00:00:00Z");
        assert!(admits(&g.tick(&mut f), &v2));
    }

    #[test]
    fn an_untrusted_clock_holds_changes_with_windows() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), false, &mut f);
        f.trust = Trust::NotYet {
            until: f.monotonic() + Duration::from_secs(300),
        };
        let v2 = value(R2, paris_2am());
        let e = g.arrived("web", Some(v2.clone()), false, &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.phase, s.reason, s.waiting.unwrap().until_ms),
            (Phase::Waiting, Reason::ClockNotSynchronized, None)
        );
        assert!(
            s.message.contains("until 2026-06-01T08:05:00Z at most"),
            "{}",
            s.message.as_str()
        );
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), Some(SECOND));
        // Changes without windows do not need the clock.
        let mut other = Gate::default();
        let v = value(R1, UpdateGate::default());
        assert!(admits(
            &other.arrived("web", Some(v.clone()), false, &mut f),
            &v
        ));
        // Never trusted: said so; then synchronized, inside the window.
        f.trust = Trust::Never;
        let e = g.tick(&mut f);
        assert!(
            one_published(&e)
                .message
                .contains("no real-time clock set it at boot")
        );
        f.set("2026-06-02T00:10:00Z");
        assert_eq!(g.tick(&mut f), []);
        f.trust = Trust::Trusted;
        assert!(admits(&g.tick(&mut f), &v2));
    }

    #[test]
    fn an_invalid_window_fails_naming_the_field_and_is_not_applied() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(UpdateGate::default(), false, &mut f);
        let bad = UpdateGate {
            windows: BoundedVec::try_from_iter([
                window("0 2 * * *", "Europe/Paris", 3600),
                window("0 25 * * *", "UTC", 3600),
            ])
            .unwrap(),
            ..UpdateGate::default()
        };
        let e = g.arrived("web", Some(value(R2, bad.clone())), false, &mut f);
        let s = one_published(&e);
        assert_eq!(
            (s.revision, s.phase, s.reason, s.running_revision, s.waiting),
            (R2, Phase::Failed, Reason::Error, Some(R1), None)
        );
        assert!(
            s.message
                .starts_with("gate.windows[1].at: \"0 25 * * *\" is not a valid cron"),
            "{}",
            s.message.as_str()
        );
        assert!(s.message.ends_with("; the update is not applied"));
        assert!(!e.iter().any(|e| matches!(e, Effect::Prefetch { .. })));
        assert_eq!(g.next_check(f.now(), f.monotonic(), SECOND), None);
        f.set("2026-06-02T00:30:00Z");
        assert_eq!(g.tick(&mut f), []);
        let bad_zone = UpdateGate {
            windows: BoundedVec::try_from_iter([window("0 2 * * *", "Mars/Olympus", 3600)])
                .unwrap(),
            ..UpdateGate::default()
        };
        let e = g.arrived("web", Some(value(R3, bad_zone)), false, &mut f);
        assert!(
            one_published(&e)
                .message
                .starts_with("gate.windows[0].timeZone: ")
        );
        // Fixed: applied.
        let good = value(R3, UpdateGate::default());
        assert!(admits(
            &g.arrived("web", Some(good.clone()), false, &mut f),
            &good
        ));
    }

    #[test]
    fn an_undecodable_value_goes_to_the_reconciler() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), true, &mut f);
        let junk = Bytes::from_static(b"junk");
        assert!(admits(
            &g.arrived("web", Some(junk.clone()), false, &mut f),
            &junk
        ));
    }

    /// At boot the reconcilers run the admitted values; the held changes
    /// go through the gate again.
    #[test]
    fn at_boot_the_admitted_value_runs_and_the_held_change_is_gated() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let v1 = value(R1, paris_2am());
        let v2 = value(R2, paris_2am());
        let other = value(R1, UpdateGate::default());
        let mut g = Gate::default();
        let e = g.restore(
            BTreeMap::from([
                ("web".to_string(), v1.clone()),
                ("gone".to_string(), other.clone()),
            ]),
            BTreeMap::from([
                ("web".to_string(), Some(v2.clone())),
                ("new".to_string(), Some(v1.clone())),
                ("gone".to_string(), None),
            ]),
            None,
            true,
            &mut f,
        );
        // Both admitted values run; web's held value waits; the first
        // install "new" waits; "gone" (no window) is deleted at once.
        assert_eq!(e[0], Effect::Admit("gone".into(), Some(other)));
        assert_eq!(e[1], Effect::Admit("web".into(), Some(v1.clone())));
        let held: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Effect::Publish((d, s)) => Some((d.as_str(), s.revision, s.phase)),
                _ => None,
            })
            .collect();
        assert_eq!(
            held,
            [("new", R1, Phase::Waiting), ("web", R2, Phase::Waiting)]
        );
        assert_eq!(
            e[2..5],
            [
                Effect::ForgetAdmitted("gone".into()),
                Effect::ForgetHeld("gone".into()),
                Effect::Admit("gone".into(), None)
            ]
        );
        assert_eq!(g.desired(), BTreeSet::from(["new".into(), "web".into()]));
        // A held delete waits again.
        let mut g = Gate::default();
        let e = g.restore(
            BTreeMap::from([("web".to_string(), v1.clone())]),
            BTreeMap::from([("web".to_string(), None)]),
            None,
            true,
            &mut f,
        );
        assert_eq!(published(&e)[0].reason, Reason::OutsideMaintenanceWindow);
        assert!(g.is_held("web") && g.desired().is_empty());
        // Cut between storing the admitted value and dropping the held
        // one: nothing waits, and the held store is cleaned.
        let mut g = Gate::default();
        let e = g.restore(
            BTreeMap::from([("web".to_string(), v2.clone())]),
            BTreeMap::from([("web".to_string(), Some(v2.clone()))]),
            None,
            true,
            &mut f,
        );
        assert_eq!(
            e,
            [
                Effect::Admit("web".into(), Some(v2.clone())),
                Effect::ForgetHeld("web".into())
            ]
        );
        assert!(!g.is_held("web"));
        // Upgraded from an agent without a gate: what the cache holds ran.
        let mut g = Gate::default();
        let e = g.restore(
            BTreeMap::new(),
            BTreeMap::new(),
            Some(BTreeMap::from([("web".to_string(), v2.clone())])),
            false,
            &mut f,
        );
        assert!(admits(&e, &v2));
        assert!(!g.is_held("web"));
    }

    /// A power cut after the gate stored a value it admitted, before the
    /// desired-state cache (written behind) caught up: the cache is older
    /// than the admitted value, or lacks a deployment just installed.
    /// Neither is a change: no downgrade, no delete.
    #[test]
    fn at_boot_a_cache_behind_the_admitted_value_changes_nothing() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let v1 = value(R1, UpdateGate::default());
        let v2 = value(R2, UpdateGate::default());
        for cached in [
            BTreeMap::from([("web".to_string(), v1.clone())]),
            BTreeMap::new(),
        ] {
            let mut g = Gate::default();
            let e = g.restore(
                BTreeMap::from([("web".to_string(), v2.clone())]),
                BTreeMap::new(),
                Some(cached.clone()),
                true,
                &mut f,
            );
            assert_eq!(
                e,
                [Effect::Admit("web".into(), Some(v2.clone()))],
                "{cached:?}"
            );
            assert!(!g.is_held("web"));
            assert_eq!(g.desired(), BTreeSet::from(["web".to_string()]));
        }
    }

    /// A held change is on disk before it is said: it waits again after a
    /// reboot; it leaves the held store when admitted.
    #[test]
    fn a_held_change_is_stored_and_forgotten_when_admitted() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let v2 = value(R2, paris_2am());
        let e = g.arrived("web", Some(v2.clone()), false, &mut f);
        assert_eq!(e[0], Effect::StoreHeld("web".into(), Some(v2.clone())));
        f.set("2026-06-02T00:00:00Z");
        let e = g.tick(&mut f);
        let forget = e
            .iter()
            .position(|e| *e == Effect::ForgetHeld("web".into()));
        let store = e
            .iter()
            .position(|e| matches!(e, Effect::StoreAdmitted(..)));
        assert!(store < forget && forget.is_some(), "{e:?}");
        // A held delete is stored as one.
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let e = g.arrived("web", None, false, &mut f);
        assert_eq!(e[0], Effect::StoreHeld("web".into(), None));
    }

    /// After the rollback went back, the held status names the revision
    /// that runs.
    #[test]
    fn a_held_status_names_the_revision_the_rollback_restored() {
        let mut f = Fake::at("2026-06-01T08:00:00Z");
        let mut g = running_r1(paris_2am(), false, &mut f);
        let mut rolled_back = running(R2);
        rolled_back.phase = Phase::RolledBack;
        rolled_back.running_revision = Some(R1);
        g.report("web", rolled_back, &f);
        let v3 = value(R3, paris_2am());
        let e = g.arrived("web", Some(v3), false, &mut f);
        let s = one_published(&e);
        assert_eq!((s.revision, s.running_revision), (R3, Some(R1)));
    }
}
