//! Rollback on the device: when a new revision of a deployment fails, the
//! agent goes back by itself (offline too) to the last revision proven
//! `Healthy` on this board, and says so.
//!
//! A supervisor sits between the desired state (the NATS watch and the
//! cache restored at boot) and the reconcilers, and between the
//! reconcilers' status reports and the status writer. The reconcilers know
//! nothing of it: it only chooses which value each one is given, and
//! rewrites what they report while a rollback holds.
//!
//! # What it remembers
//!
//! - `<state_dir>/healthy/<deployment>`: the last proven value (raw, as
//!   it came from NATS; see below).
//! - `<state_dir>/failed/<deployment>`: the failed-revision marker: the
//!   revision that failed, a hash of its whole value, and why.
//!
//! Both are stores of [`crate::cache`] (one file per deployment, atomic
//! writes: temp file, fsync, rename, fsync of the directory).
//!
//! # When a revision is proven
//!
//! A revision is kept as the one to go back to (stored as last healthy)
//! only once it is proven: `Healthy` when its `progressDeadlineSeconds`
//! pass, counted from its arrival on this device (an agent restart starts
//! the count again). Being `Healthy` earlier proves nothing: with
//! `minHealthySeconds` 0 a container is `Healthy` as soon as it runs,
//! also between the crashes of a crash loop. A revision without
//! `autoRollback` is proven the same way, so that it can be gone back to
//! later. The restored last-healthy value, and a value of the same
//! revision (same score, another rollout policy), are proven already.
//!
//! # When it rolls back
//!
//! Only when the current value's `rollout.autoRollback` is set, a proven
//! value of another revision exists, and the agent would still apply it
//! (it decodes, names this deployment, and the device's policy allows it:
//! else the failure is only reported). Until the current revision is
//! proven, it rolls back at once when the revision reports
//! `CrashLoopBackOff`, or `Failed` with reason `ImagePullBackOff`,
//! `OOMKilled` or `Error`, and at the deadline when it is not `Healthy`
//! then (an `Unhealthy` revision waits for the deadline: its checks may
//! still recover). So a failed revision is detected in at most the
//! deadline; a crash loop as soon as its first back-off starts. It writes
//! the marker, and only then gives the reconciler the last-healthy value.
//! Without a value to go back to, nothing is rolled back; at the deadline
//! the revision's status becomes `Failed` with reason
//! `ProgressDeadlineExceeded` (but for its `Healthy` reports), and it is
//! never proven. Once proven, a revision's failures are only reported.
//!
//! While rolled back, each report of the restored revision is published as
//! `RolledBack` at the failed revision, with `running_revision` the
//! restored one. The failed revision is not tried again until a newer
//! value arrives (another revision, or the same one with other content):
//! a resync or a restart delivering the same value again keeps the
//! rollback, and at boot the marker is honoured before any network.
//!
//! # Power cuts
//!
//! After a reboot the agent runs, for each deployment, either the value in
//! the desired-state cache or (when the marker matches that value and a
//! last-healthy value exists) the last-healthy value, whole: the
//! reconcilers are level-triggered, so whatever mix of containers the cut
//! left is brought to that one revision by the first pass. Which one it is
//! depends only on files that are replaced atomically, and the writes are
//! ordered so that each choice is a revision the device was running or
//! going to:
//!
//! - The last-healthy value is flushed to disk before the marker is
//!   written, so a marker never points the agent at a value that is not
//!   there (without it the agent runs the newer revision, which is the
//!   other consistent outcome).
//! - The marker is durable before the reconciler is given the old value:
//!   a cut before it brings back the new revision (which fails again and
//!   is rolled back again), a cut after it brings back the old one, never
//!   the new one half replaced by the old.
//! - A delete empties the desired-state cache first (the watch flushes it)
//!   and then these stores; leftovers of a cut in between are pruned at
//!   boot, as they belong to no cached deployment.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::status::clip_message;
use protocol::{DeploymentStatus, DesiredState, Phase, Reason, RolloutPolicy, Text};
use tokio::sync::{Notify, mpsc};

use crate::cache::{Cache, CacheWriter};
use crate::log::Chain;
use crate::policy::Allowances;
use crate::reconcile::{StatusReport, now_ms};

/// A revision that failed and was rolled back, as stored in
/// `<state_dir>/failed/<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The failed revision.
    pub revision: u64,
    /// [`value_hash`] of its value: the same revision written again with
    /// other content is a new value, and is tried.
    pub hash: u64,
    /// Why it failed.
    pub reason: Reason,
    /// What its status said when it failed.
    pub detail: String,
}

/// The first line of a marker file: the layout's name and version.
const MARKER_HEADER: &str = "iot-agent failed-revision 1";

/// The reasons a marker may hold, by their names.
const REASONS: [Reason; 6] = [
    Reason::CrashLoopBackOff,
    Reason::OOMKilled,
    Reason::ImagePullBackOff,
    Reason::HealthCheckFailed,
    Reason::Error,
    Reason::ProgressDeadlineExceeded,
];

impl Marker {
    /// The file's content: a header line, then `key=value` lines.
    pub fn encode(&self) -> Vec<u8> {
        // One line each: the detail is a status message, which may hold
        // line breaks.
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!(
            "{MARKER_HEADER}\nrevision={}\nhash={:016x}\nreason={}\ndetail={detail}\n",
            self.revision,
            self.hash,
            self.reason.as_str()
        )
        .into_bytes()
    }

    /// Reads a file written by [`Marker::encode`]; `None` for anything else
    /// (which then counts as no marker: the cached revision runs).
    pub fn decode(bytes: &[u8]) -> Option<Marker> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != MARKER_HEADER {
            return None;
        }
        let mut field = |key: &str| {
            let line = lines.next()?;
            line.strip_prefix(key)?
                .strip_prefix('=')
                .map(str::to_string)
        };
        let revision = field("revision")?.parse().ok()?;
        let hash = u64::from_str_radix(&field("hash")?, 16).ok()?;
        let reason = field("reason")?;
        let reason = REASONS.into_iter().find(|r| r.as_str() == reason)?;
        let detail = field("detail")?;
        Some(Marker {
            revision,
            hash,
            reason,
            detail,
        })
    }

    fn matches(&self, value: &Value) -> bool {
        self.revision == value.revision && self.hash == value.hash
    }
}

/// A hash of a desired-state value's bytes (FNV-1a 64, fixed forever, so a
/// marker written by one build is read the same by the next).
pub fn value_hash(value: &[u8]) -> u64 {
    let mut h = protocol::wire::Fnv1a64::new();
    h.write(value);
    h.finish()
}

/// A desired-state value with what the supervisor reads from it.
#[derive(Debug, Clone)]
struct Value {
    bytes: Bytes,
    revision: u64,
    rollout: RolloutPolicy,
    hash: u64,
}

impl Value {
    /// `None` for a value that does not decode: the reconciler reports it,
    /// and there is nothing to supervise.
    fn read(bytes: Bytes) -> Option<Value> {
        let (revision, rollout) = {
            let d = protocol::wire::decode::<DesiredState<'_>>(&bytes).ok()?;
            (d.revision, d.rollout)
        };
        Some(Value {
            hash: value_hash(&bytes),
            bytes,
            revision,
            rollout,
        })
    }
}

/// What the supervisor asks of the agent, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand a status report to the status writer.
    Publish(StatusReport),
    /// Store this value as the deployment's last healthy one.
    StoreHealthy(String, Bytes),
    /// Write the marker, durably, before anything after it.
    MarkFailed(String, Marker),
    /// Give the deployment's reconciler this value.
    Retarget(String, Bytes),
    /// The deployment was deleted: drop its stores.
    Forget(String),
}

/// How the current value is progressing towards being proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Not proven yet; judged when this deadline passes.
    Until(Instant),
    /// Proven: it is the last healthy value.
    Proven,
    /// Judged and not proven (`Completed`, or not `Healthy` at the
    /// deadline without `autoRollback`): only reported.
    Settled,
    /// Not `Healthy` by the deadline with `autoRollback` and nothing to
    /// roll back to: reported as `Failed`, `ProgressDeadlineExceeded`,
    /// but when `Healthy`.
    Exceeded,
}

/// What the supervisor knows of one deployment.
#[derive(Debug, Default)]
struct Tracked {
    /// The value last delivered (NATS or the cache), raw, and what it says
    /// (`None` if it does not decode).
    current: Option<(Bytes, Option<Value>)>,
    /// The last value that was `Healthy` at its revision.
    healthy: Option<Value>,
    /// The last revision rolled back.
    failed: Option<Marker>,
    /// Whether the reconciler runs `healthy` instead of `current`.
    rolled_back: bool,
    progress: Option<Progress>,
    /// The current revision's last report, for the deadline's status.
    last: Option<DeploymentStatus<'static>>,
    /// The hash of a last-healthy value the agent would not apply, said
    /// once.
    refused: Option<u64>,
}

impl Tracked {
    fn current(&self) -> Option<&Value> {
        self.current.as_ref()?.1.as_ref()
    }

    /// The last-healthy value a failure of the current value goes back to:
    /// with `autoRollback`, of another revision (revisions are content
    /// hashes, not counters: any other one is older on this device), and
    /// one the agent would apply under `policy` today.
    fn fallback(&mut self, deployment: &str, policy: &Allowances) -> Option<Value> {
        let current = self.current()?;
        let healthy = self.healthy.as_ref()?;
        if !current.rollout.auto_rollback
            || healthy.revision == current.revision
            || healthy.hash == current.hash
        {
            return None;
        }
        if let Some(why) = crate::reconcile::spec::refusal(deployment, &healthy.bytes, policy) {
            if self.refused != Some(healthy.hash) {
                crate::warn!(
                    "{deployment}: cannot roll back to revision {}: the agent would not apply it now: {why}",
                    healthy.revision
                );
                self.refused = Some(healthy.hash);
            }
            return None;
        }
        Some(healthy.clone())
    }

    /// What the reconciler runs.
    fn target(&self) -> Option<Bytes> {
        if self.rolled_back {
            return self.healthy.as_ref().map(|h| h.bytes.clone());
        }
        self.current.as_ref().map(|(b, _)| b.clone())
    }
}

/// The rollback logic, without I/O or clock: the calls that need the time
/// are given it, and each returns the [`Effect`]s to carry out, in order.
#[derive(Debug, Default)]
pub struct Supervisor {
    deployments: BTreeMap<String, Tracked>,
    /// The device's security policy: a last-healthy value it refuses now
    /// is not gone back to.
    policy: Allowances,
}

impl Supervisor {
    /// A supervisor that knows the stores' contents: the last healthy
    /// values and the markers, by deployment; it rolls back only to values
    /// `policy` allows.
    pub fn new(
        healthy: BTreeMap<String, Bytes>,
        failed: BTreeMap<String, Marker>,
        policy: Allowances,
    ) -> Self {
        let mut deployments: BTreeMap<String, Tracked> = BTreeMap::new();
        for (d, bytes) in healthy {
            match Value::read(bytes) {
                Some(v) => deployments.entry(d).or_default().healthy = Some(v),
                None => crate::warn!("{d}: the stored last healthy value does not decode"),
            }
        }
        for (d, m) in failed {
            deployments.entry(d).or_default().failed = Some(m);
        }
        Supervisor {
            deployments,
            policy,
        }
    }

    /// `deployment`'s desired value arrived (`None`: it was deleted) at
    /// `now`; returns what its reconciler is to run, and the effects.
    pub fn arrived(
        &mut self,
        deployment: &str,
        value: Option<Bytes>,
        now: Instant,
    ) -> (Option<Bytes>, Vec<Effect>) {
        let Some(bytes) = value else {
            let known = self.deployments.remove(deployment).is_some();
            let effects = if known {
                vec![Effect::Forget(deployment.to_string())]
            } else {
                Vec::new()
            };
            return (None, effects);
        };
        let policy = &self.policy;
        let t = self.deployments.entry(deployment.to_string()).or_default();
        if t.current.as_ref().is_some_and(|(b, _)| *b == bytes) {
            // A resync, or a restart's restore then the watch's snapshot:
            // whatever was decided for this value holds.
            return (t.target(), Vec::new());
        }
        let value = Value::read(bytes.clone());
        t.current = Some((bytes, value));
        t.last = None;
        t.rolled_back = false;
        t.progress = None;
        let mut effects = Vec::new();
        if let Some(v) = t.current().cloned() {
            let failed_before = t.failed.as_ref().is_some_and(|m| m.matches(&v));
            let proven = t.healthy.as_ref().map(|h| (h.revision, h.hash));
            if failed_before && let Some(back) = t.fallback(deployment, policy) {
                crate::info!(
                    "{deployment}: revision {} failed before; running revision {} again",
                    v.revision,
                    back.revision
                );
                t.rolled_back = true;
            } else if let Some((revision, hash)) = proven
                && revision == v.revision
            {
                // The proven score, maybe with another rollout policy:
                // keep the newest value of it.
                t.progress = Some(Progress::Proven);
                if hash != v.hash {
                    effects.push(Effect::StoreHealthy(
                        deployment.to_string(),
                        v.bytes.clone(),
                    ));
                    t.healthy = Some(v);
                }
            } else {
                let secs = u64::from(v.rollout.progress_deadline_seconds);
                t.progress = Some(Progress::Until(now + Duration::from_secs(secs)));
            }
        }
        (t.target(), effects)
    }

    /// A reconciler's report for `deployment`.
    pub fn report(&mut self, deployment: &str, status: DeploymentStatus<'static>) -> Vec<Effect> {
        let publish = |s| vec![Effect::Publish((deployment.to_string(), s))];
        let Some(t) = self.deployments.get_mut(deployment) else {
            return publish(status);
        };
        let Some(current) = t.current().cloned() else {
            return publish(status);
        };
        if t.rolled_back {
            let (Some(healthy), Some(marker)) = (&t.healthy, &t.failed) else {
                return publish(status);
            };
            if status.revision != healthy.revision {
                // The failed revision's pass that was under way.
                return Vec::new();
            }
            return publish(rolled_back(marker, healthy.revision, status));
        }
        if status.revision != current.revision {
            // A pass for the value before this one, finished late.
            return Vec::new();
        }
        t.last = Some(status.clone());
        let failure = match (status.phase, status.reason) {
            (Phase::CrashLoopBackOff, Reason::None) => Some(Reason::CrashLoopBackOff),
            (Phase::CrashLoopBackOff, r) => Some(r),
            (Phase::Failed, r @ (Reason::ImagePullBackOff | Reason::Error | Reason::OOMKilled)) => {
                Some(r)
            }
            _ => None,
        };
        match t.progress {
            Some(Progress::Until(_)) => {
                if status.phase == Phase::Completed {
                    t.progress = Some(Progress::Settled);
                } else if let Some(reason) = failure
                    && let Some(back) = t.fallback(deployment, &self.policy)
                {
                    return roll_back(deployment, t, back, reason, status.message.to_string());
                }
                publish(status)
            }
            Some(Progress::Exceeded) if status.phase != Phase::Healthy => {
                publish(exceeded(&current, status))
            }
            _ => publish(status),
        }
    }

    /// Judges every deadline that passed by `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (d, t) in &mut self.deployments {
            let Some(Progress::Until(deadline)) = t.progress else {
                continue;
            };
            if deadline > now {
                continue;
            }
            let Some(current) = t.current().cloned() else {
                continue;
            };
            let secs = current.rollout.progress_deadline_seconds;
            let last = t.last.clone().unwrap_or_else(|| DeploymentStatus {
                revision: current.revision,
                phase: Phase::Pending,
                containers: protocol::BoundedVec::new(),
                message: Text::borrowed(""),
                timestamp_ms: now_ms(),
                reason: Reason::None,
                running_revision: None,
                waiting: None,
            });
            if last.phase == Phase::Healthy {
                crate::info!(
                    "{d}: revision {} is Healthy {secs}s after it arrived: the one to go back to from now on",
                    current.revision
                );
                t.progress = Some(Progress::Proven);
                if t.healthy.as_ref().is_none_or(|h| h.bytes != current.bytes) {
                    effects.push(Effect::StoreHealthy(d.clone(), current.bytes.clone()));
                    t.healthy = Some(current);
                }
            } else if let Some(back) = t.fallback(d, &self.policy) {
                let detail = format!("not Healthy within {secs}s ({})", describe(&last));
                effects.extend(roll_back(
                    d,
                    t,
                    back,
                    Reason::ProgressDeadlineExceeded,
                    detail,
                ));
            } else if !current.rollout.auto_rollback {
                crate::info!(
                    "{d}: revision {} not Healthy {secs}s after it arrived: not one to go back to",
                    current.revision
                );
                t.progress = Some(Progress::Settled);
            } else {
                crate::warn!(
                    "{d}: revision {} not Healthy within {secs}s, and no older Healthy revision to go back to",
                    current.revision
                );
                t.progress = Some(Progress::Exceeded);
                let mut status = exceeded(&current, last);
                status.timestamp_ms = now_ms();
                effects.push(Effect::Publish((d.clone(), status)));
            }
        }
        effects
    }

    /// The next deadline to judge, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deployments
            .values()
            .filter_map(|t| match t.progress {
                Some(Progress::Until(d)) => Some(d),
                _ => None,
            })
            .min()
    }

    /// Forgets the deployments the stores hold and no value arrived for:
    /// called after the cache's restore, they are the deployments a power
    /// cut interrupted the delete of.
    pub fn prune(&mut self) -> Vec<Effect> {
        let gone: Vec<String> = self
            .deployments
            .iter()
            .filter(|(_, t)| t.current.is_none())
            .map(|(d, _)| d.clone())
            .collect();
        gone.into_iter()
            .map(|d| {
                self.deployments.remove(&d);
                Effect::Forget(d)
            })
            .collect()
    }
}

/// Starts a rollback of `t`'s current value to `healthy`, its fallback.
fn roll_back(
    deployment: &str,
    t: &mut Tracked,
    healthy: Value,
    reason: Reason,
    detail: String,
) -> Vec<Effect> {
    let Some(current) = t.current() else {
        return Vec::new();
    };
    let marker = Marker {
        revision: current.revision,
        hash: current.hash,
        reason,
        detail: clip_message(&detail).to_string(),
    };
    crate::warn!(
        "{deployment}: revision {} failed ({reason}: {detail}); rolling back to revision {}",
        current.revision,
        healthy.revision
    );
    let back = healthy.bytes;
    t.failed = Some(marker.clone());
    t.rolled_back = true;
    t.progress = Some(Progress::Settled);
    vec![
        Effect::MarkFailed(deployment.to_string(), marker),
        Effect::Retarget(deployment.to_string(), back),
    ]
}

/// The phase and message of a status, for another status's message.
fn describe(s: &DeploymentStatus<'_>) -> String {
    if s.message.is_empty() {
        format!("last {}", s.phase)
    } else {
        format!("last {}: {}", s.phase, s.message.as_str())
    }
}

/// A report of the restored revision, as the failed revision's status.
fn rolled_back(
    marker: &Marker,
    running: u64,
    status: DeploymentStatus<'static>,
) -> DeploymentStatus<'static> {
    let mut message = format!(
        "revision {} failed ({}): {}; running revision {running} again",
        marker.revision, marker.reason, marker.detail
    );
    // The restored revision has trouble of its own: say so too.
    if !matches!(status.phase, Phase::Healthy | Phase::Running) {
        message = format!("{message} ({})", describe(&status));
    }
    DeploymentStatus {
        revision: marker.revision,
        phase: Phase::RolledBack,
        message: Text::owned(clip_message(&message).to_string()),
        reason: marker.reason,
        running_revision: Some(running),
        ..status
    }
}

/// A report of a revision past its deadline with nothing to go back to.
fn exceeded(current: &Value, status: DeploymentStatus<'static>) -> DeploymentStatus<'static> {
    let message = format!(
        "not Healthy within {}s ({})",
        current.rollout.progress_deadline_seconds,
        describe(&status)
    );
    DeploymentStatus {
        phase: Phase::Failed,
        message: Text::owned(clip_message(&message).to_string()),
        reason: Reason::ProgressDeadlineExceeded,
        ..status
    }
}

/// The supervisor with its stores, as the agent uses it.
pub struct Rollback {
    supervisor: RefCell<Supervisor>,
    /// Last healthy values, written on the writer's thread: once per
    /// revision per deployment, never in the way of an apply.
    healthy: CacheWriter,
    /// Markers, written on the agent's thread: the write must be durable
    /// before the reconciler is retargeted, and rollbacks are rare.
    failed: Cache,
    /// Wakes the relay when a deadline may have moved.
    wake: Notify,
}

impl Rollback {
    /// Opens the stores under `state_dir` and reads them; rolls back only
    /// to values the device's `policy` allows.
    pub fn open(state_dir: &Path, policy: Allowances) -> std::io::Result<Rollback> {
        let healthy = Cache::open_healthy(state_dir)?;
        let failed = Cache::open_failed(state_dir)?;
        let values = healthy
            .load_all()?
            .into_iter()
            .map(|(d, v)| (d, Bytes::from(v)))
            .collect();
        let mut markers = BTreeMap::new();
        for (d, bytes) in failed.load_all()? {
            match Marker::decode(&bytes) {
                Some(m) => {
                    markers.insert(d, m);
                }
                None => crate::warn!("{d}: unreadable failed-revision marker, ignored"),
            }
        }
        Ok(Rollback {
            supervisor: RefCell::new(Supervisor::new(values, markers, policy)),
            healthy: CacheWriter::start(healthy),
            failed,
            wake: Notify::new(),
        })
    }

    /// `deployment`'s desired value arrived (`None`: deleted, and already
    /// off the desired-state cache); returns what its reconciler runs.
    pub fn arrived(&self, deployment: &str, value: Option<Bytes>) -> Option<Bytes> {
        let (target, effects) =
            self.supervisor
                .borrow_mut()
                .arrived(deployment, value, Instant::now());
        self.carry_out(effects, None, &|_, _| {});
        self.wake.notify_one();
        target
    }

    /// Forgets the stored deployments that were not restored from the
    /// desired-state cache: call once, right after the restore.
    pub fn prune(&self) {
        let effects = self.supervisor.borrow_mut().prune();
        self.carry_out(effects, None, &|_, _| {});
    }

    /// Relays the reconcilers' reports from `rx` to `out`, rewritten while
    /// rolled back, judges deadlines, and rolls back through `retarget`
    /// (which gives a deployment's reconciler a value). Runs until `rx`
    /// closes.
    pub async fn relay(
        self: Rc<Self>,
        mut rx: mpsc::UnboundedReceiver<StatusReport>,
        out: mpsc::UnboundedSender<StatusReport>,
        retarget: impl Fn(&str, Bytes),
    ) {
        loop {
            let deadline = self.supervisor.borrow().next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let effects = tokio::select! {
                r = rx.recv() => match r {
                    Some((d, s)) => self.supervisor.borrow_mut().report(&d, s),
                    None => return,
                },
                () = sleep => self.supervisor.borrow_mut().tick(Instant::now()),
                () = self.wake.notified() => continue,
            };
            self.carry_out(effects, Some(&out), &retarget);
        }
    }

    fn carry_out(
        &self,
        effects: Vec<Effect>,
        out: Option<&mpsc::UnboundedSender<StatusReport>>,
        retarget: &dyn Fn(&str, Bytes),
    ) {
        for effect in effects {
            match effect {
                Effect::Publish(report) => {
                    if let Some(out) = out {
                        let _ = out.send(report);
                    }
                }
                Effect::StoreHealthy(d, value) => self.healthy.store(&d, value),
                Effect::MarkFailed(d, marker) => {
                    // The value to go back to is on disk before the marker
                    // that points at it.
                    self.healthy.flush();
                    if let Err(e) = self.failed.store(&d, &marker.encode()) {
                        // Rolled back all the same: after an offline
                        // reboot the failed revision would run, fail and be
                        // rolled back again.
                        crate::error!(
                            "{d}: cannot write the failed-revision marker in state_dir: {}",
                            Chain(&e)
                        );
                    }
                }
                Effect::Retarget(d, value) => retarget(&d, value),
                Effect::Forget(d) => {
                    self.healthy.remove(&d);
                    if let Err(e) = self.failed.remove(&d) {
                        crate::warn!(
                            "{d}: cannot remove the failed-revision marker: {}",
                            Chain(&e)
                        );
                    }
                }
            }
        }
    }

    /// Writes what is queued (at shutdown).
    pub fn close(&self) {
        self.healthy.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::{BoundedVec, Container, IotScore, PodmanV0Score};

    /// Revisions as the operator makes them: content hashes, in no order
    /// (each one here is numerically lower than the one before).
    const R1: u64 = 0xf3a9_1c2e_77d0_4b15;
    const R2: u64 = 0x0b7e_52a1_9c3d_e860;
    const R3: u64 = 0x05d2_1e0f_438a_bc97;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    /// A desired-state value of deployment `web` at `revision`, its
    /// container tagged `tag` (another tag: another value), with a policy.
    fn value(revision: u64, tag: &str, auto_rollback: bool, deadline: u32) -> Bytes {
        value_of("web", revision, tag, false, auto_rollback, deadline)
    }

    fn value_of(
        deployment: &str,
        revision: u64,
        tag: &str,
        privileged: bool,
        auto_rollback: bool,
        deadline: u32,
    ) -> Bytes {
        let mut c = Container::new(Text::borrowed("c"), Text::borrowed("localhost/x:1"));
        c.env = BoundedVec::try_from_iter([protocol::EnvVar {
            name: Text::borrowed("TAG"),
            value: Text::owned(tag.to_string()),
        }])
        .unwrap();
        c.privileged = privileged;
        let score = IotScore::PodmanV0(PodmanV0Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        Bytes::from(
            protocol::wire::encode_to_vec(&DesiredState {
                deployment: Text::owned(deployment.to_string()),
                revision,
                score: score.to_payload().unwrap(),
                rollout: RolloutPolicy {
                    min_healthy_seconds: 0,
                    progress_deadline_seconds: deadline,
                    auto_rollback,
                },
                attempt: 0,
                gate: Default::default(),
                secrets: Default::default(),
            })
            .unwrap(),
        )
    }

    /// A revision proven 600 s after it arrives, that does not roll back.
    fn good(revision: u64) -> Bytes {
        value(revision, "good", false, 600)
    }

    /// A revision that rolls back on failure within 60 s.
    fn guarded(revision: u64) -> Bytes {
        value(revision, "guarded", true, 60)
    }

    fn status(
        revision: u64,
        phase: Phase,
        reason: Reason,
        message: &str,
    ) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision,
            phase,
            containers: BoundedVec::try_from_iter([protocol::ContainerStatus::new(
                Text::borrowed("c"),
                protocol::ContainerState::Running,
            )])
            .unwrap(),
            message: Text::owned(message.to_string()),
            timestamp_ms: 7,
            reason,
            running_revision: None,
            waiting: None,
        }
    }

    fn crash(revision: u64, message: &str) -> DeploymentStatus<'static> {
        status(
            revision,
            Phase::CrashLoopBackOff,
            Reason::CrashLoopBackOff,
            message,
        )
    }

    fn publish(s: DeploymentStatus<'static>) -> Vec<Effect> {
        vec![Effect::Publish(("web".into(), s))]
    }

    /// The single status published by `effects`.
    fn published(effects: &[Effect]) -> &DeploymentStatus<'static> {
        match effects {
            [Effect::Publish((d, s))] if d == "web" => s,
            other => panic!("expected one publish, got {other:?}"),
        }
    }

    fn rolls_back(effects: &[Effect]) -> bool {
        effects.iter().any(|e| matches!(e, Effect::Retarget(..)))
    }

    /// Revision R1 arrived at `t0` and was proven at its deadline; returns
    /// the supervisor, at `t0 + 600 s`.
    fn healthy_at_1(t0: Instant) -> Supervisor {
        let mut s = Supervisor::default();
        assert_eq!(s.arrived("web", Some(good(R1)), t0).0, Some(good(R1)));
        assert_eq!(s.next_deadline(), Some(t0 + SECS(600)));
        // Healthy before the deadline proves nothing yet.
        let healthy = status(R1, Phase::Healthy, Reason::None, "");
        assert_eq!(s.report("web", healthy.clone()), publish(healthy.clone()));
        assert_eq!(s.tick(t0 + SECS(599)), []);
        // Healthy when it passes: proven, stored.
        assert_eq!(
            s.tick(t0 + SECS(600)),
            [Effect::StoreHealthy("web".into(), good(R1))]
        );
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.report("web", healthy.clone()), publish(healthy));
        s
    }

    #[test]
    fn a_crash_loop_writes_the_marker_then_goes_back_to_the_last_healthy_value() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        assert_eq!(s.arrived("web", Some(guarded(R2)), t0).0, Some(guarded(R2)));
        assert_eq!(s.next_deadline(), Some(t0 + SECS(60)));
        // Healthy between two crashes (minHealthySeconds 0): not proven.
        for phase in [Phase::Starting, Phase::Healthy] {
            let st = status(R2, phase, Reason::None, "");
            assert_eq!(s.report("web", st.clone()), publish(st));
        }
        let marker = Marker {
            revision: R2,
            hash: value_hash(&guarded(R2)),
            reason: Reason::CrashLoopBackOff,
            detail: "container c exited with code 1".into(),
        };
        assert_eq!(
            s.report("web", crash(R2, "container c exited with code 1")),
            [
                Effect::MarkFailed("web".into(), marker),
                Effect::Retarget("web".into(), good(R1)),
            ],
            "the marker first, then the old value"
        );
        assert_eq!(s.next_deadline(), None);
        // The failed revision's pass under way says nothing more.
        assert_eq!(s.report("web", crash(R2, "x")), []);
        // The restored revision's reports are the failed one's RolledBack.
        let e = s.report("web", status(R1, Phase::Starting, Reason::None, ""));
        let rb = published(&e);
        assert_eq!(
            (rb.revision, rb.phase, rb.reason, rb.running_revision),
            (R2, Phase::RolledBack, Reason::CrashLoopBackOff, Some(R1))
        );
        assert_eq!(
            rb.message.as_str(),
            format!(
                "revision {R2} failed (CrashLoopBackOff): container c exited with code 1; running revision {R1} again (last Starting)"
            )
        );
        assert_eq!(rb.containers.len(), 1, "the running containers' states");
        let e = s.report("web", status(R1, Phase::Healthy, Reason::None, ""));
        assert_eq!(
            published(&e).message.as_str(),
            format!(
                "revision {R2} failed (CrashLoopBackOff): container c exited with code 1; running revision {R1} again"
            )
        );
    }

    #[test]
    fn pull_start_and_oom_failures_roll_back_other_failures_wait_for_the_deadline() {
        let t0 = Instant::now();
        for (phase, reason, rolls) in [
            (Phase::Failed, Reason::ImagePullBackOff, true),
            (Phase::Failed, Reason::Error, true),
            (Phase::Failed, Reason::OOMKilled, true),
            (Phase::CrashLoopBackOff, Reason::OOMKilled, true),
            (Phase::CrashLoopBackOff, Reason::None, true),
            (Phase::Failed, Reason::None, false),
            (Phase::Failed, Reason::HealthCheckFailed, false),
            (Phase::Unhealthy, Reason::HealthCheckFailed, false),
        ] {
            let mut s = healthy_at_1(t0);
            s.arrived("web", Some(guarded(R2)), t0);
            let e = s.report("web", status(R2, phase, reason, "boom"));
            assert_eq!(rolls_back(&e), rolls, "{phase:?} {reason:?}: {e:?}");
        }
        // Unhealthy waits for the deadline, then rolls back.
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(guarded(R2)), t0);
        let unhealthy = status(
            R2,
            Phase::Unhealthy,
            Reason::HealthCheckFailed,
            "check failed",
        );
        assert_eq!(s.report("web", unhealthy.clone()), publish(unhealthy));
        assert_eq!(s.tick(t0 + SECS(59)), []);
        let e = s.tick(t0 + SECS(60));
        let [Effect::MarkFailed(_, marker), Effect::Retarget(_, back)] = &e[..] else {
            panic!("{e:?}");
        };
        assert_eq!(back, &good(R1));
        assert_eq!(marker.reason, Reason::ProgressDeadlineExceeded);
        assert_eq!(
            marker.detail,
            "not Healthy within 60s (last Unhealthy: check failed)"
        );
        assert_eq!(s.tick(t0 + SECS(120)), [], "judged once");
    }

    /// Healthy at its deadline, a revision is proven: it is gone back to
    /// from then on, and its own failures are only reported.
    #[test]
    fn a_revision_healthy_at_its_deadline_is_proven() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        let t1 = t0 + SECS(600);
        s.arrived("web", Some(guarded(R2)), t1);
        s.report("web", status(R2, Phase::Healthy, Reason::None, ""));
        assert_eq!(
            s.tick(t1 + SECS(60)),
            [Effect::StoreHealthy("web".into(), guarded(R2))]
        );
        assert_eq!(
            s.report("web", crash(R2, "late")),
            publish(crash(R2, "late"))
        );
        // R3 fails: back to R2, not R1.
        s.arrived("web", Some(guarded(R3)), t1 + SECS(100));
        let e = s.report("web", crash(R3, "boom"));
        assert_eq!(e[1], Effect::Retarget("web".into(), guarded(R2)));
    }

    #[test]
    fn without_auto_rollback_or_a_healthy_value_nothing_is_rolled_back() {
        let t0 = Instant::now();
        // autoRollback off: reported as it is; at its deadline, not
        // Healthy, it is not one to go back to.
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(value(R2, "off", false, 1)), t0);
        assert_eq!(s.report("web", crash(R2, "x")), publish(crash(R2, "x")));
        assert_eq!(s.tick(t0 + SECS(1)), []);
        assert_eq!(s.next_deadline(), None);
        s.arrived("web", Some(guarded(R3)), t0);
        let e = s.report("web", crash(R3, "y"));
        assert_eq!(e[1], Effect::Retarget("web".into(), good(R1)));
        // Nothing healthy before: the failure shows, and at the deadline
        // the revision is Failed, ProgressDeadlineExceeded.
        let mut s = Supervisor::default();
        s.arrived("web", Some(guarded(R2)), t0);
        let c = crash(R2, "exit 1");
        assert_eq!(s.report("web", c.clone()), publish(c.clone()));
        let e = s.tick(t0 + SECS(60));
        let failed = published(&e);
        assert_eq!(
            (failed.revision, failed.phase, failed.reason),
            (R2, Phase::Failed, Reason::ProgressDeadlineExceeded)
        );
        assert_eq!(
            failed.message.as_str(),
            "not Healthy within 60s (last CrashLoopBackOff: exit 1)"
        );
        let e = s.report("web", c);
        assert_eq!(published(&e).reason, Reason::ProgressDeadlineExceeded);
        // Healthy later is said as it is, but proves nothing.
        let healthy = status(R2, Phase::Healthy, Reason::None, "");
        assert_eq!(s.report("web", healthy.clone()), publish(healthy));
        assert_eq!(s.tick(t0 + SECS(6000)), []);
    }

    /// A stored value the agent would not apply now (the device's policy
    /// tightened, or it names another deployment) is not gone back to: the
    /// failure is reported as it is.
    #[test]
    fn a_last_healthy_value_the_agent_would_refuse_is_not_gone_back_to() {
        let t0 = Instant::now();
        for stored in [
            value_of("web", R1, "priv", true, false, 600),
            value_of("other", R1, "good", false, false, 600),
        ] {
            let mut s = Supervisor::new(
                BTreeMap::from([("web".to_string(), stored)]),
                BTreeMap::new(),
                Allowances::default(),
            );
            s.arrived("web", Some(guarded(R2)), t0);
            let c = crash(R2, "exit 1");
            assert_eq!(s.report("web", c.clone()), publish(c));
        }
        // The same value with the policy that allows it: rolled back.
        let allow = Allowances {
            privileged: true,
            ..Allowances::default()
        };
        let mut s = Supervisor::new(
            BTreeMap::from([(
                "web".to_string(),
                value_of("web", R1, "priv", true, false, 600),
            )]),
            BTreeMap::new(),
            allow,
        );
        s.arrived("web", Some(guarded(R2)), t0);
        assert!(rolls_back(&s.report("web", crash(R2, "exit 1"))));
    }

    /// The proven score again with another rollout policy (the operator
    /// writes it under the same revision) is proven at once, and kept.
    #[test]
    fn the_proven_revision_with_another_policy_is_proven_at_once() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        let again = value(R1, "good", true, 60);
        assert_eq!(
            s.arrived("web", Some(again.clone()), t0),
            (
                Some(again.clone()),
                vec![Effect::StoreHealthy("web".into(), again)]
            )
        );
        assert_eq!(s.next_deadline(), None);
        // Its own crash has nothing else to go back to.
        assert_eq!(s.report("web", crash(R1, "x")), publish(crash(R1, "x")));
    }

    #[test]
    fn the_failed_value_is_not_retried_until_a_newer_one_arrives() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(guarded(R2)), t0);
        let e = s.report("web", crash(R2, "exit 1"));
        let Effect::MarkFailed(_, marker) = e[0].clone() else {
            panic!("{e:?}")
        };
        // A resync delivers it again: still rolled back.
        assert_eq!(s.arrived("web", Some(guarded(R2)), t0).0, Some(good(R1)));
        assert_eq!(s.next_deadline(), None);
        // A restart: the stores, then the cache's value, then NATS's.
        let stores = || {
            (
                BTreeMap::from([("web".to_string(), good(R1))]),
                BTreeMap::from([("web".to_string(), marker.clone())]),
            )
        };
        let (healthy, failed) = stores();
        let mut s = Supervisor::new(healthy, failed, Allowances::default());
        assert_eq!(s.arrived("web", Some(guarded(R2)), t0).0, Some(good(R1)));
        assert_eq!(s.prune(), [], "the cache holds it");
        assert_eq!(s.arrived("web", Some(guarded(R2)), t0).0, Some(good(R1)));
        let e = s.report("web", status(R1, Phase::Running, Reason::None, ""));
        assert_eq!(published(&e).phase, Phase::RolledBack);
        // The same revision with other content is a new value: tried. So
        // is the operator's retry of it (the same value but its attempt).
        let failed_value = guarded(R2);
        let mut retried: DesiredState<'_> = protocol::wire::decode(&failed_value).unwrap();
        retried.attempt = 1;
        let retry = Bytes::from(protocol::wire::encode_to_vec(&retried).unwrap());
        assert_eq!(s.arrived("web", Some(retry.clone()), t0).0, Some(retry));
        let other = value(R2, "fixed", true, 60);
        assert_eq!(s.arrived("web", Some(other.clone()), t0).0, Some(other));
        // So is a newer revision, which may fail and go back to R1 too.
        assert_eq!(s.arrived("web", Some(guarded(R3)), t0).0, Some(guarded(R3)));
        s.report("web", status(R3, Phase::Healthy, Reason::None, ""));
        assert_eq!(s.tick(t0 + SECS(60)).len(), 1, "proven and stored");
        // A report of the revision before, late, is dropped.
        assert_eq!(
            s.report("web", status(R1, Phase::Running, Reason::None, "")),
            []
        );
        // At boot, a marker for another value than the cached one is stale;
        // the restored last-healthy value is proven already.
        let (healthy, failed) = stores();
        let mut s = Supervisor::new(healthy, failed, Allowances::default());
        assert_eq!(s.arrived("web", Some(guarded(R3)), t0).0, Some(guarded(R3)));
        let (healthy, failed) = stores();
        let mut s = Supervisor::new(healthy, failed, Allowances::default());
        assert_eq!(
            s.arrived("web", Some(good(R1)), t0),
            (Some(good(R1)), vec![])
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_delete_forgets_the_stores() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        assert_eq!(
            s.arrived("web", None, t0),
            (None, vec![Effect::Forget("web".into())])
        );
        assert_eq!(s.arrived("web", None, t0), (None, vec![]));
        // Leftovers of an interrupted delete go at boot.
        let mut s = Supervisor::new(
            BTreeMap::from([
                ("gone".to_string(), good(R1)),
                ("web".to_string(), good(R1)),
            ]),
            BTreeMap::new(),
            Allowances::default(),
        );
        s.arrived("web", Some(good(R1)), t0);
        assert_eq!(s.prune(), [Effect::Forget("gone".into())]);
        // A deployment never seen reports as it is.
        let x = status(4, Phase::Running, Reason::None, "");
        assert_eq!(
            s.report("other", x.clone()),
            [Effect::Publish(("other".into(), x))]
        );
    }

    #[test]
    fn markers_round_trip_and_anything_else_is_no_marker() {
        let m = Marker {
            revision: 42,
            hash: 0xdead_beef_0000_0001,
            reason: Reason::OOMKilled,
            detail: "line one\nline two".into(),
        };
        let back = Marker::decode(&m.encode()).unwrap();
        assert_eq!(
            back,
            Marker {
                detail: "line one line two".into(),
                ..m.clone()
            }
        );
        for bad in [
            &b""[..],
            b"garbage",
            b"iot-agent failed-revision 2\nrevision=1\nhash=0\nreason=Error\ndetail=\n",
            b"iot-agent failed-revision 1\nrevision=x\nhash=0\nreason=Error\ndetail=\n",
            b"iot-agent failed-revision 1\nrevision=1\nhash=0\nreason=Nope\ndetail=\n",
            b"iot-agent failed-revision 1\nrevision=1\nhash=0\nreason=Error\n",
        ] {
            assert_eq!(
                Marker::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The relay with real stores: the marker is on disk when the
    /// reconciler is retargeted, and a restart reads both stores back.
    #[tokio::test]
    async fn the_marker_is_durable_before_the_retarget() {
        let dir = tempfile::tempdir().unwrap();
        // R1 was proven before (the store holds it).
        Cache::open_healthy(dir.path())
            .unwrap()
            .store("web", &good(R1))
            .unwrap();
        let rollback = Rc::new(Rollback::open(dir.path(), Allowances::default()).unwrap());
        assert_eq!(rollback.arrived("web", Some(good(R1))), Some(good(R1)));
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, mut out) = mpsc::unbounded_channel::<StatusReport>();
        let marker_path = dir.path().join("failed/web");
        let retargets = RefCell::new(Vec::new());
        let retarget = |d: &str, v: Bytes| {
            let on_disk = std::fs::read(&marker_path)
                .ok()
                .and_then(|b| Marker::decode(&b));
            retargets.borrow_mut().push((d.to_string(), v, on_disk));
        };
        let driver = async {
            tx.send(("web".into(), status(R1, Phase::Healthy, Reason::None, "")))
                .unwrap();
            assert_eq!(out.recv().await.unwrap().1.phase, Phase::Healthy);
            assert_eq!(
                rollback.arrived("web", Some(guarded(R2))),
                Some(guarded(R2))
            );
            tx.send(("web".into(), crash(R2, "exit 1"))).unwrap();
            tx.send(("web".into(), status(R1, Phase::Running, Reason::None, "")))
                .unwrap();
            let (_, s) = out.recv().await.unwrap();
            assert_eq!(
                (s.phase, s.revision, s.running_revision),
                (Phase::RolledBack, R2, Some(R1))
            );
            drop(tx);
        };
        tokio::join!(rollback.clone().relay(rx, out_tx, retarget), driver);
        let retargets = retargets.into_inner();
        let [(d, v, Some(marker))] = &retargets[..] else {
            panic!("{retargets:?}");
        };
        assert_eq!((d.as_str(), v), ("web", &good(R1)));
        assert_eq!(
            (marker.revision, marker.hash),
            (R2, value_hash(&guarded(R2)))
        );
        rollback.close();
        assert_eq!(
            std::fs::read(dir.path().join("healthy/web")).unwrap(),
            good(R1)
        );
        // A restart honours both.
        let again = Rollback::open(dir.path(), Allowances::default()).unwrap();
        assert_eq!(again.arrived("web", Some(guarded(R2))), Some(good(R1)));
        // A delete drops both.
        assert_eq!(again.arrived("web", None), None);
        again.close();
        assert!(!dir.path().join("healthy/web").exists());
        assert!(!marker_path.exists());
    }
}
