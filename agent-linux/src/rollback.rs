//! Rollback on the device: when a new revision of a deployment fails, the
//! agent goes back by itself (offline too) to the last revision that was
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
//! - `<state_dir>/healthy/<deployment>`: the last value (raw, as it came
//!   from NATS) that reported `Healthy` at its revision.
//! - `<state_dir>/failed/<deployment>`: the failed-revision marker: the
//!   revision that failed, a hash of its whole value, and why.
//!
//! Both are stores of [`crate::cache`] (one file per deployment, atomic
//! writes: temp file, fsync, rename, fsync of the directory).
//!
//! # When it rolls back
//!
//! Only when the current value's `rollout.autoRollback` is set and a
//! last-healthy value of an older revision exists, and the current
//! revision reports `CrashLoopBackOff`, or `Failed` with reason
//! `ImagePullBackOff` or `Error`, or is not `Healthy` within
//! `progressDeadlineSeconds` of its arrival on this device (an `Unhealthy`
//! revision waits for the deadline: its checks may still recover). Then it
//! writes the marker, and only then gives the reconciler the last-healthy
//! value. Without one, nothing is rolled back; at the deadline the
//! revision's status becomes `Failed` with reason
//! `ProgressDeadlineExceeded` until it gets `Healthy`.
//!
//! While rolled back, each report of the restored revision is published as
//! `RolledBack` at the failed revision, with `running_revision` the
//! restored one. The failed revision is not tried again until a newer
//! value arrives (a higher revision, or any other value): a resync or a
//! restart delivering the same value again keeps the rollback, and at boot
//! the marker is honoured before any network.
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

/// How the current value is progressing towards `Healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Not yet `Healthy`; judged at the deadline.
    Until(Instant),
    /// `Healthy` (or `Completed`), or nothing to judge (no `autoRollback`).
    Settled,
    /// Not `Healthy` by the deadline and nothing to roll back to: reported
    /// as `Failed`, `ProgressDeadlineExceeded`, until it gets `Healthy`.
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
}

impl Tracked {
    fn current(&self) -> Option<&Value> {
        self.current.as_ref()?.1.as_ref()
    }

    /// The last-healthy value a failure of the current value goes back to.
    fn fallback(&self) -> Option<&Value> {
        let current = self.current()?;
        let healthy = self.healthy.as_ref()?;
        (current.rollout.auto_rollback && healthy.revision < current.revision).then_some(healthy)
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
}

impl Supervisor {
    /// A supervisor that knows the stores' contents: the last healthy
    /// values and the markers, by deployment.
    pub fn new(healthy: BTreeMap<String, Bytes>, failed: BTreeMap<String, Marker>) -> Self {
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
        Supervisor { deployments }
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
        if let Some(v) = t.current() {
            let failed_before = t.failed.as_ref().is_some_and(|m| m.matches(v));
            if failed_before && t.fallback().is_some() {
                crate::info!(
                    "{deployment}: revision {} failed before; running revision {} again",
                    v.revision,
                    t.healthy.as_ref().map_or(0, |h| h.revision)
                );
                t.rolled_back = true;
            } else if v.rollout.auto_rollback {
                let secs = u64::from(v.rollout.progress_deadline_seconds);
                t.progress = Some(Progress::Until(now + Duration::from_secs(secs)));
            }
        }
        (t.target(), Vec::new())
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
            (Phase::Failed, r @ (Reason::ImagePullBackOff | Reason::Error)) => Some(r),
            _ => None,
        };
        match status.phase {
            Phase::Healthy => {
                t.progress = Some(Progress::Settled);
                let mut effects = Vec::new();
                if t.healthy.as_ref().is_none_or(|h| h.bytes != current.bytes) {
                    effects.push(Effect::StoreHealthy(
                        deployment.to_string(),
                        current.bytes.clone(),
                    ));
                    t.healthy = Some(current);
                }
                effects.push(Effect::Publish((deployment.to_string(), status)));
                return effects;
            }
            Phase::Completed => t.progress = Some(Progress::Settled),
            _ => {}
        }
        if let Some(reason) = failure
            && t.fallback().is_some()
        {
            return roll_back(deployment, t, reason, status.message.to_string());
        }
        if t.progress == Some(Progress::Exceeded) {
            return publish(exceeded(&current, status));
        }
        publish(status)
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
            });
            if t.fallback().is_some() {
                let detail = format!("not Healthy within {secs}s ({})", describe(&last));
                effects.extend(roll_back(d, t, Reason::ProgressDeadlineExceeded, detail));
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

/// Starts a rollback of `t`'s current value to its fallback.
fn roll_back(deployment: &str, t: &mut Tracked, reason: Reason, detail: String) -> Vec<Effect> {
    let (Some(current), Some(healthy)) = (t.current(), t.fallback()) else {
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
    let back = healthy.bytes.clone();
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
    /// Opens the stores under `state_dir` and reads them.
    pub fn open(state_dir: &Path) -> std::io::Result<Rollback> {
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
            supervisor: RefCell::new(Supervisor::new(values, markers)),
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

    /// A desired-state value of deployment `web` at `revision`, its
    /// container tagged `tag` (another tag: another value), with a policy.
    fn value(revision: u64, tag: &str, auto_rollback: bool, deadline: u32) -> Bytes {
        let mut c = Container::new(Text::borrowed("c"), Text::borrowed("localhost/x:1"));
        c.env = BoundedVec::try_from_iter([protocol::EnvVar {
            name: Text::borrowed("TAG"),
            value: Text::owned(tag.to_string()),
        }])
        .unwrap();
        let score = IotScore::PodmanV0(PodmanV0Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        Bytes::from(
            protocol::wire::encode_to_vec(&DesiredState {
                deployment: Text::borrowed("web"),
                revision,
                score: score.to_payload().unwrap(),
                rollout: RolloutPolicy {
                    min_healthy_seconds: 0,
                    progress_deadline_seconds: deadline,
                    auto_rollback,
                },
            })
            .unwrap(),
        )
    }

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
        }
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

    /// Revision 1 became Healthy at `t0`; returns the supervisor.
    fn healthy_at_1(t0: Instant) -> Supervisor {
        let mut s = Supervisor::default();
        assert_eq!(s.arrived("web", Some(good(1)), t0).0, Some(good(1)));
        assert_eq!(s.next_deadline(), None, "no autoRollback, no deadline");
        let healthy = status(1, Phase::Healthy, Reason::None, "");
        let e = s.report("web", healthy.clone());
        assert_eq!(
            e,
            [
                vec![Effect::StoreHealthy("web".into(), good(1))],
                publish(healthy.clone())
            ]
            .concat()
        );
        // Healthy again: nothing more to store.
        assert_eq!(s.report("web", healthy.clone()), publish(healthy));
        s
    }

    #[test]
    fn a_crash_loop_writes_the_marker_then_goes_back_to_the_last_healthy_value() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        assert_eq!(s.arrived("web", Some(guarded(2)), t0).0, Some(guarded(2)));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let starting = status(2, Phase::Starting, Reason::None, "");
        assert_eq!(s.report("web", starting.clone()), publish(starting));
        let crash = status(
            2,
            Phase::CrashLoopBackOff,
            Reason::CrashLoopBackOff,
            "container c exited with code 1",
        );
        let marker = Marker {
            revision: 2,
            hash: value_hash(&guarded(2)),
            reason: Reason::CrashLoopBackOff,
            detail: "container c exited with code 1".into(),
        };
        assert_eq!(
            s.report("web", crash),
            [
                Effect::MarkFailed("web".into(), marker),
                Effect::Retarget("web".into(), good(1)),
            ],
            "the marker first, then the old value"
        );
        assert_eq!(s.next_deadline(), None);
        // The failed revision's pass under way says nothing more.
        let late = status(2, Phase::CrashLoopBackOff, Reason::CrashLoopBackOff, "x");
        assert_eq!(s.report("web", late), []);
        // The restored revision's reports are the failed one's RolledBack.
        let e = s.report("web", status(1, Phase::Starting, Reason::None, ""));
        let rb = published(&e);
        assert_eq!(
            (rb.revision, rb.phase, rb.reason, rb.running_revision),
            (2, Phase::RolledBack, Reason::CrashLoopBackOff, Some(1))
        );
        assert_eq!(
            rb.message.as_str(),
            "revision 2 failed (CrashLoopBackOff): container c exited with code 1; running revision 1 again (last Starting)"
        );
        assert_eq!(rb.containers.len(), 1, "the running containers' states");
        let e = s.report("web", status(1, Phase::Healthy, Reason::None, ""));
        assert_eq!(
            published(&e).message.as_str(),
            "revision 2 failed (CrashLoopBackOff): container c exited with code 1; running revision 1 again"
        );
    }

    #[test]
    fn pull_and_start_errors_roll_back_other_failures_wait_for_the_deadline() {
        let t0 = Instant::now();
        for (reason, rolls_back) in [
            (Reason::ImagePullBackOff, true),
            (Reason::Error, true),
            (Reason::None, false),
            (Reason::HealthCheckFailed, false),
        ] {
            let mut s = healthy_at_1(t0);
            s.arrived("web", Some(guarded(2)), t0);
            let e = s.report("web", status(2, Phase::Failed, reason, "boom"));
            let retargeted = e.iter().any(|e| matches!(e, Effect::Retarget(..)));
            assert_eq!(retargeted, rolls_back, "{reason:?}: {e:?}");
        }
        // Unhealthy waits for the deadline, then rolls back.
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(guarded(2)), t0);
        let unhealthy = status(
            2,
            Phase::Unhealthy,
            Reason::HealthCheckFailed,
            "check failed",
        );
        assert_eq!(s.report("web", unhealthy.clone()), publish(unhealthy));
        assert_eq!(s.tick(t0 + Duration::from_secs(59)), []);
        let e = s.tick(t0 + Duration::from_secs(60));
        let [Effect::MarkFailed(_, marker), Effect::Retarget(_, back)] = &e[..] else {
            panic!("{e:?}");
        };
        assert_eq!(back, &good(1));
        assert_eq!(marker.reason, Reason::ProgressDeadlineExceeded);
        assert_eq!(
            marker.detail,
            "not Healthy within 60s (last Unhealthy: check failed)"
        );
        assert_eq!(s.tick(t0 + Duration::from_secs(120)), [], "judged once");
    }

    #[test]
    fn without_auto_rollback_or_an_older_healthy_value_nothing_is_rolled_back() {
        let t0 = Instant::now();
        let crash = status(
            2,
            Phase::CrashLoopBackOff,
            Reason::CrashLoopBackOff,
            "exit 1",
        );
        // autoRollback off: reported as it is, no deadline.
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(value(2, "off", false, 1)), t0);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.report("web", crash.clone()), publish(crash.clone()));
        // Nothing healthy before: the failure shows, and at the deadline
        // the revision is Failed, ProgressDeadlineExceeded.
        let mut s = Supervisor::default();
        s.arrived("web", Some(guarded(2)), t0);
        assert_eq!(s.report("web", crash.clone()), publish(crash.clone()));
        let e = s.tick(t0 + Duration::from_secs(60));
        let failed = published(&e);
        assert_eq!(
            (failed.revision, failed.phase, failed.reason),
            (2, Phase::Failed, Reason::ProgressDeadlineExceeded)
        );
        assert_eq!(
            failed.message.as_str(),
            "not Healthy within 60s (last CrashLoopBackOff: exit 1)"
        );
        // ...until it gets Healthy after all, which makes it the one to go
        // back to.
        let e = s.report("web", crash);
        assert_eq!(published(&e).reason, Reason::ProgressDeadlineExceeded);
        let healthy = status(2, Phase::Healthy, Reason::None, "");
        assert_eq!(
            s.report("web", healthy.clone()),
            [
                vec![Effect::StoreHealthy("web".into(), guarded(2))],
                publish(healthy)
            ]
            .concat()
        );
        // A healthy value is not older than itself: a later failure of the
        // same revision is only reported.
        let crash = status(
            2,
            Phase::CrashLoopBackOff,
            Reason::CrashLoopBackOff,
            "again",
        );
        assert_eq!(s.report("web", crash.clone()), publish(crash));
    }

    #[test]
    fn the_failed_value_is_not_retried_until_a_newer_one_arrives() {
        let t0 = Instant::now();
        let mut s = healthy_at_1(t0);
        s.arrived("web", Some(guarded(2)), t0);
        let crash = status(
            2,
            Phase::CrashLoopBackOff,
            Reason::CrashLoopBackOff,
            "exit 1",
        );
        let e = s.report("web", crash);
        let Effect::MarkFailed(_, marker) = e[0].clone() else {
            panic!("{e:?}")
        };
        // A resync delivers it again: still rolled back.
        assert_eq!(s.arrived("web", Some(guarded(2)), t0).0, Some(good(1)));
        assert_eq!(s.next_deadline(), None);
        // A restart: the stores, then the cache's value, then NATS's.
        let stores = || {
            (
                BTreeMap::from([("web".to_string(), good(1))]),
                BTreeMap::from([("web".to_string(), marker.clone())]),
            )
        };
        let (healthy, failed) = stores();
        let mut s = Supervisor::new(healthy, failed);
        assert_eq!(s.arrived("web", Some(guarded(2)), t0).0, Some(good(1)));
        assert_eq!(s.prune(), [], "the cache holds it");
        assert_eq!(s.arrived("web", Some(guarded(2)), t0).0, Some(good(1)));
        let e = s.report("web", status(1, Phase::Running, Reason::None, ""));
        assert_eq!(published(&e).phase, Phase::RolledBack);
        // The same revision with other content is a new value: tried.
        let other = value(2, "fixed", true, 60);
        assert_eq!(s.arrived("web", Some(other.clone()), t0).0, Some(other));
        // So is a newer revision, which may fail and go back to 1 too.
        assert_eq!(s.arrived("web", Some(guarded(3)), t0).0, Some(guarded(3)));
        let ok = status(3, Phase::Healthy, Reason::None, "");
        assert_eq!(s.report("web", ok).len(), 2, "stored and published");
        // A report of the revision before, late, is dropped.
        assert_eq!(
            s.report("web", status(1, Phase::Running, Reason::None, "")),
            []
        );
        // At boot, a marker for another value than the cached one is stale.
        let (healthy, failed) = stores();
        let mut s = Supervisor::new(healthy, failed);
        assert_eq!(s.arrived("web", Some(guarded(3)), t0).0, Some(guarded(3)));
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
            BTreeMap::from([("gone".to_string(), good(1)), ("web".to_string(), good(1))]),
            BTreeMap::new(),
        );
        s.arrived("web", Some(good(1)), t0);
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
        let rollback = Rc::new(Rollback::open(dir.path()).unwrap());
        assert_eq!(rollback.arrived("web", Some(good(1))), Some(good(1)));
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
            tx.send(("web".into(), status(1, Phase::Healthy, Reason::None, "")))
                .unwrap();
            assert_eq!(out.recv().await.unwrap().1.phase, Phase::Healthy);
            assert_eq!(rollback.arrived("web", Some(guarded(2))), Some(guarded(2)));
            let crash = status(
                2,
                Phase::CrashLoopBackOff,
                Reason::CrashLoopBackOff,
                "exit 1",
            );
            tx.send(("web".into(), crash)).unwrap();
            tx.send(("web".into(), status(1, Phase::Running, Reason::None, "")))
                .unwrap();
            let (_, s) = out.recv().await.unwrap();
            assert_eq!(
                (s.phase, s.revision, s.running_revision),
                (Phase::RolledBack, 2, Some(1))
            );
            drop(tx);
        };
        tokio::join!(rollback.clone().relay(rx, out_tx, retarget), driver);
        let retargets = retargets.into_inner();
        let [(d, v, Some(marker))] = &retargets[..] else {
            panic!("{retargets:?}");
        };
        assert_eq!((d.as_str(), v), ("web", &good(1)));
        assert_eq!((marker.revision, marker.hash), (2, value_hash(&guarded(2))));
        rollback.close();
        assert_eq!(
            std::fs::read(dir.path().join("healthy/web")).unwrap(),
            good(1)
        );
        // A restart honours both.
        let again = Rollback::open(dir.path()).unwrap();
        assert_eq!(again.arrived("web", Some(guarded(2))), Some(good(1)));
        // A delete drops both.
        assert_eq!(again.arrived("web", None), None);
        again.close();
        assert!(!dir.path().join("healthy/web").exists());
        assert!(!marker_path.exists());
    }
}
