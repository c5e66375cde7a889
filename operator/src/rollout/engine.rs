//! The decision of one BatchSequence reconcile, without I/O: from the
//! batches, what each target's key holds and what each device reports,
//! which devices get the new revision now, which get the stable one back,
//! and the rollout's status, conditions and events.
//!
//! The state that must outlive the operator is in the Deployment's
//! `status.rollout` (the batch reached, a halted revision, the stable one)
//! and in the keys themselves (which hold the new revision, and since
//! when): given the same inputs a restarted operator decides the same and
//! rewrites nothing that is already right.

use std::collections::HashMap;

use protocol::Phase;

use super::batches::RolloutSpec;
use crate::crd::{BatchReport, ConditionReason, RolloutPhase, RolloutStatus, revision_string};
use crate::status::fold::{Wait, waiting_summary};
use crate::status::{WaitAt, conditions, rfc3339};

/// One target, as its key and its reports show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Its key holds the new revision (written by this Deployment).
    pub updated: bool,
    /// When its key was last written, nanoseconds since the epoch.
    pub written_ns: Option<i128>,
    /// Its phase, when it reports the new revision.
    pub phase: Option<Phase>,
    /// Its heartbeat is stale.
    pub offline: bool,
    /// It cannot be written (its agent cannot read the value, or another
    /// Deployment owns its key): it counts as failed.
    pub blocked: bool,
    /// Its key is kept as it is (its Device's own maintenance windows are
    /// invalid, or the Device is being deleted): not written, not rolled
    /// back, and not failed: until it is fixed it stands like a target not
    /// written yet, holding its batch.
    pub kept: bool,
    /// Whether it waits to apply the revision, or stopped waiting and
    /// when ([`crate::status::Report::wait_at`]).
    pub wait: WaitAt,
}

/// How one target stands in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Not written yet.
    Pending,
    /// Not written yet, and not to be written while its key is kept
    /// ([`DeviceState::kept`]): holds its batch like [`Standing::Pending`].
    Kept,
    /// Written, undecided, within its deadline.
    Waiting,
    /// Written, and the device reports Waiting: it may not apply the
    /// revision yet (update lock, maintenance window, clock). Undecided
    /// like [`Standing::Waiting`], but its deadline has not started.
    Gated,
    /// Healthy at the new revision.
    Healthy,
    /// Reports a failure at the new revision, or cannot be written.
    Failed,
    /// Written (or done waiting) longer than the deadline ago and not
    /// Healthy.
    TimedOut,
}

impl Standing {
    /// Between "written" and "Healthy": counted against maxUnavailable.
    fn in_flight(self) -> bool {
        matches!(self, Standing::Waiting | Standing::Gated)
    }
}

impl DeviceState {
    fn standing(&self, now_ns: i128, deadline_ns: i128) -> Standing {
        if self.blocked {
            return Standing::Failed;
        }
        if !self.updated {
            return if self.kept {
                Standing::Kept
            } else {
                Standing::Pending
            };
        }
        match self.phase {
            Some(Phase::Healthy) => Standing::Healthy,
            Some(p) if is_failure(p) => Standing::Failed,
            Some(Phase::Waiting) => Standing::Gated,
            _ if self
                .deadline_from()
                .is_some_and(|w| now_ns.saturating_sub(w) > deadline_ns) =>
            {
                Standing::TimedOut
            }
            _ => Standing::Waiting,
        }
    }

    /// When its deadline started: when its key was written, or, when it
    /// waited to apply the revision, when it stopped waiting (the device
    /// starts its own deadline then too).
    fn deadline_from(&self) -> Option<i128> {
        match (self.written_ns, self.wait.stopped_ns) {
            (Some(w), Some(s)) => Some(w.max(s)),
            (w, s) => w.or(s),
        }
    }
}

/// Whether a device reporting `phase` at the revision failed it (`Failed`
/// includes an update lock held past its timeout with `onTimeout: Fail`).
pub fn is_failure(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Failed | Phase::Unsupported | Phase::RolledBack | Phase::CrashLoopBackOff
    )
}

/// Everything one decision reads.
#[derive(Debug)]
pub struct Input<'a> {
    /// The revision being rolled out.
    pub revision: u64,
    /// The batches' settings.
    pub spec: &'a RolloutSpec,
    /// The targets split into batches ([`RolloutSpec::split`]).
    pub batches: Vec<Vec<String>>,
    /// Every target's state.
    pub devices: &'a HashMap<String, DeviceState>,
    /// The status of the previous reconcile.
    pub prev: Option<&'a RolloutStatus>,
    /// The stable revision when `prev` does not know one (e.g. the last
    /// revision an AllAtOnce rollout completed).
    pub stable_fallback: Option<u64>,
    /// `spec.rollout.paused`.
    pub paused: bool,
    /// `spec.rollout.autoRollback`.
    pub auto_rollback: bool,
    /// `spec.rollout.progressDeadlineSeconds`, in nanoseconds.
    pub deadline_ns: i128,
    /// The retry annotation's value.
    pub retry: Option<&'a str>,
    /// The attempt the keys are written with ([`attempt`]).
    pub attempt: u32,
    /// Now, nanoseconds since the epoch.
    pub now_ns: i128,
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// The event's reason.
    pub reason: &'static str,
    /// Its message.
    pub message: String,
}

/// A condition the rollout sets, replacing the fold's of the same type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Ready, Progressing, Degraded or Paused.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// Why.
    pub reason: ConditionReason,
    /// Detail.
    pub message: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Devices to write the new revision to now, in id order.
    pub write: Vec<String>,
    /// Devices whose key holds the new revision and must get the stable
    /// one back (or lose the key when there is no stable revision).
    pub roll_back: Vec<String>,
    /// The stable revision, when known.
    pub stable: Option<u64>,
    /// The new `status.rollout`.
    pub status: RolloutStatus,
    /// Conditions to set (Degraded only when the rollout has something to say).
    pub verdicts: Vec<Verdict>,
    /// Events.
    pub notes: Vec<Note>,
    /// The earliest moment a waiting device's deadline passes.
    pub next_deadline_ns: Option<i128>,
}

/// Counts of one set of targets.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    pending: i64,
    /// In flight: gated ones included.
    waiting: i64,
    /// Of those, the ones whose device reports Waiting.
    gated: i64,
    healthy: i64,
    failed: i64,
    timed_out: i64,
}

impl Tally {
    fn add(&mut self, s: Standing) {
        match s {
            Standing::Pending | Standing::Kept => self.pending += 1,
            Standing::Waiting => self.waiting += 1,
            Standing::Gated => {
                self.waiting += 1;
                self.gated += 1;
            }
            Standing::Healthy => self.healthy += 1,
            Standing::Failed => self.failed += 1,
            Standing::TimedOut => self.timed_out += 1,
        }
    }
}

/// Whether the retry annotation asks to try `revision` (16 hex digits)
/// again: it has a value `prev` has not acted on, and `prev` halted it.
pub fn retry_requested(prev: Option<&RolloutStatus>, revision: &str, retry: Option<&str>) -> bool {
    let Some(p) = prev.filter(|p| p.revision == revision) else {
        return false;
    };
    retry.is_some_and(|r| p.retry.as_deref() != Some(r))
        && p.failed_revision.as_deref() == Some(revision)
}

/// The attempt `revision` is written with: the previous status's, plus one
/// when a retry is asked for; 0 for a new revision.
pub fn attempt(prev: Option<&RolloutStatus>, revision: u64, retry: Option<&str>) -> u32 {
    let rev = revision_string(revision);
    let Some(p) = prev.filter(|p| p.revision == rev) else {
        return 0;
    };
    let base = u32::try_from(p.attempt).unwrap_or(0);
    base.saturating_add(u32::from(retry_requested(prev, &rev, retry)))
}

fn parse_revision(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Decides one reconcile of a BatchSequence rollout.
pub fn decide(input: Input<'_>) -> Decision {
    let Input {
        revision,
        spec,
        mut batches,
        devices,
        prev,
        stable_fallback,
        paused,
        auto_rollback,
        deadline_ns,
        retry,
        attempt,
        now_ns,
    } = input;
    let rev = revision_string(revision);
    let same = prev.filter(|p| p.revision == rev);
    // A new revision starts at batch 0; the previous one is stable if it
    // got through every batch.
    let stable = match (prev, same) {
        (_, Some(p)) => p.stable_revision.as_deref().and_then(parse_revision),
        (Some(p), None) if p.phase == RolloutPhase::Healthy && p.failed_revision.is_none() => {
            parse_revision(&p.revision)
        }
        (Some(p), None) => p.stable_revision.as_deref().and_then(parse_revision),
        (None, None) => None,
    }
    .or(stable_fallback);
    let mut notes = Vec::new();
    let mut current = same.map_or(0, |p| p.current_batch.max(0) as usize);
    let mut failed_revision = same.and_then(|p| p.failed_revision.clone());
    let mut last_batch = same.and_then(|p| p.last_batch.clone());
    let prev_retry = prev.and_then(|p| p.retry.as_deref());
    if let Some(r) = retry
        && retry_requested(prev, &rev, retry)
    {
        failed_revision = None;
        current = 0;
        last_batch = None;
        notes.push(Note {
            warning: false,
            reason: "RolloutRetried",
            message: format!(
                "retrying revision {rev} from batch 0 (annotation {r:?}; attempt {attempt})"
            ),
        });
    }
    let n = batches.len();
    // Batches removed from the spec mid-rollout must not count as passed:
    // the rollout goes on with the last batch, gated as ever.
    let reshaped = same.is_some_and(|p| p.batches != n as i64 && p.phase != RolloutPhase::Healthy);
    current = if reshaped {
        current.min(n - 1)
    } else {
        current.min(n)
    };
    let standing = |d: &str| {
        devices
            .get(d)
            .map_or(Standing::Pending, |s| s.standing(now_ns, deadline_ns))
    };
    // Members of passed batches that do not hold the revision (new
    // targets, relabelled Devices) go with the last batch.
    let mut late = Vec::new();
    for batch in &mut batches[..current.min(n - 1)] {
        batch.retain(|d| {
            let pending = matches!(standing(d), Standing::Pending | Standing::Kept);
            if pending {
                late.push(d.clone());
            }
            !pending
        });
    }
    batches[n - 1].extend(late);
    batches[n - 1].sort();

    let mut all = Tally::default();
    let mut inflight = 0i64;
    let room = |inflight: i64| {
        spec.max_unavailable.map_or(usize::MAX, |m| {
            (m.of(devices.len(), false) as i64 - inflight).max(0) as usize
        })
    };
    let mut offline = 0i64;
    let mut next_deadline_ns: Option<i128> = None;
    let mut waits = Vec::new();
    for s in devices.values() {
        let st = s.standing(now_ns, deadline_ns);
        all.add(st);
        if st.in_flight() {
            inflight += 1;
        }
        // A gated device's deadline has not started: its report that it
        // stopped waiting triggers the next reconcile.
        if st == Standing::Waiting
            && let Some(w) = s.deadline_from()
        {
            let due = w + deadline_ns + 1;
            next_deadline_ns = Some(next_deadline_ns.map_or(due, |n| n.min(due)));
        }
        if st == Standing::Gated {
            let (reason, at) = s.wait.waiting.unwrap_or_default();
            waits.push(Wait {
                reason: reason.as_str(),
                since_ms: at.map(|w| w.since_ms),
                until_ms: at.and_then(|w| w.until_ms),
            });
        }
        if s.offline {
            offline += 1;
        }
    }
    let targeted = devices.len() as i64;

    let mut write = Vec::new();
    let mut roll_back = Vec::new();
    let mut halted = failed_revision.as_deref() == Some(rev.as_str());
    let mut in_progress = None;
    while !halted && current < n {
        let members = &batches[current];
        let mut t = Tally::default();
        for d in members {
            t.add(standing(d));
        }
        let size = members.len() as i64;
        if size == 0 {
            current += 1;
            continue;
        }
        let needed = (i64::from(spec.threshold(current)) * size + 99) / 100;
        let report = |result: &str| BatchReport {
            batch: current as i64,
            devices: size,
            healthy: t.healthy,
            failed: t.failed,
            timed_out: t.timed_out,
            needed,
            result: result.into(),
            finished_at: rfc3339(now_ns),
        };
        if t.healthy >= needed && t.waiting + t.pending == 0 {
            notes.push(Note {
                warning: false,
                reason: "BatchSucceeded",
                message: format!(
                    "batch {}/{n} of revision {rev}: {}/{size} Healthy (needed {needed})",
                    current + 1,
                    t.healthy
                ),
            });
            last_batch = Some(report("Succeeded"));
            current += 1;
            continue;
        }
        if t.healthy + t.waiting + t.pending < needed {
            notes.push(Note {
                warning: true,
                reason: "BatchFailed",
                message: format!(
                    "batch {}/{n} of revision {rev}: {}/{size} Healthy, {} failed, {} timed out; needed {needed}: rollout halted",
                    current + 1,
                    t.healthy,
                    t.failed,
                    t.timed_out
                ),
            });
            notes.push(Note {
                warning: true,
                reason: "RolloutHalted",
                message: format!(
                    "revision {rev} halted at batch {}/{n}: later batches are not written; change the spec, or set annotation {} to a new value to retry",
                    current + 1,
                    super::RETRY_ANNOTATION
                ),
            });
            last_batch = Some(report("Failed"));
            failed_revision = Some(rev.clone());
            halted = true;
            break;
        }
        if !paused {
            write = members
                .iter()
                .filter(|d| standing(d) == Standing::Pending)
                .take(room(inflight))
                .cloned()
                .collect();
            if !write.is_empty() && t.pending == size {
                notes.push(Note {
                    warning: false,
                    reason: "BatchStarted",
                    message: format!(
                        "batch {}/{n} of revision {rev}: writing {size} devices",
                        current + 1
                    ),
                });
            }
        }
        in_progress = Some((t, size, needed));
        break;
    }
    let complete = !halted && current == n;
    if complete {
        if prev.is_none_or(|p| p.revision != rev || p.phase != RolloutPhase::Healthy) {
            notes.push(Note {
                warning: false,
                reason: "RolloutComplete",
                message: format!("revision {rev} passed all {n} batches"),
            });
        }
        // Targets that came after the last batch passed catch up, still
        // within maxUnavailable.
        if !paused {
            write = batches
                .iter()
                .flatten()
                .filter(|d| standing(d) == Standing::Pending)
                .cloned()
                .collect();
            write.sort();
            write.truncate(room(inflight));
        }
    }
    // Only a revision other than this one can be written back; without
    // one the devices keep what they have (nothing is ever deleted).
    let back_to = stable.filter(|s| *s != revision);
    if halted {
        if auto_rollback && back_to.is_some() {
            // Devices that cannot be written (held back, kept as they
            // are) keep what their key holds, as they did for the new
            // revision.
            roll_back = devices
                .iter()
                .filter(|(_, s)| s.updated && !s.blocked && !s.kept)
                .map(|(d, _)| d.clone())
                .collect();
            roll_back.sort();
            if !roll_back.is_empty() {
                notes.push(Note {
                    warning: true,
                    reason: "RolledBack",
                    message: format!(
                        "revision {rev} halted: {} devices get the stable revision {} back",
                        roll_back.len(),
                        back_to.map(revision_string).unwrap_or_default()
                    ),
                });
            }
        }
        write.clear();
    }
    let phase = if halted {
        RolloutPhase::Degraded
    } else if complete {
        RolloutPhase::Healthy
    } else if paused {
        RolloutPhase::Paused
    } else {
        RolloutPhase::Progressing
    };
    let stable_after = if complete { Some(revision) } else { stable };
    let status = RolloutStatus {
        revision: rev.clone(),
        stable_revision: stable_after.map(revision_string),
        phase,
        current_batch: current as i64,
        batches: n as i64,
        targeted,
        updated: devices.values().filter(|s| s.updated).count() as i64,
        healthy: all.healthy,
        waiting: all.waiting,
        gated: all.gated,
        failed: all.failed,
        timed_out: all.timed_out,
        offline,
        last_batch: last_batch.clone(),
        failed_revision,
        retry: retry.map(str::to_string).or(prev_retry.map(str::to_string)),
        attempt: i64::from(attempt),
    };
    let mut verdicts = verdicts(
        &status,
        in_progress,
        (auto_rollback, back_to.is_some()),
        paused,
    );
    // Why devices that got the revision have not applied it, as the fold
    // says for AllAtOnce (whose Ready and Progressing these replace).
    if let Some(w) = waiting_summary(&waits).filter(|_| !halted && !complete) {
        for v in verdicts
            .iter_mut()
            .filter(|v| [conditions::READY, conditions::PROGRESSING].contains(&v.type_))
        {
            v.message.push_str("; ");
            v.message.push_str(&w);
        }
    }
    Decision {
        write,
        roll_back,
        stable: back_to,
        status,
        verdicts,
        notes,
        next_deadline_ns: next_deadline_ns.filter(|_| !halted),
    }
}

fn verdicts(
    s: &RolloutStatus,
    in_progress: Option<(Tally, i64, i64)>,
    (auto_rollback, has_stable): (bool, bool),
    paused: bool,
) -> Vec<Verdict> {
    use crate::status::conditions::{DEGRADED, PAUSED, PROGRESSING, READY};
    let v = |type_, status, reason, message: String| Verdict {
        type_,
        status,
        reason,
        message,
    };
    let batch = format!(
        "batch {}/{}",
        (s.current_batch + 1).min(s.batches),
        s.batches
    );
    let mut out = Vec::new();
    match s.phase {
        RolloutPhase::Healthy => {
            let m = format!(
                "revision {} rolled out through all {} batches; {}/{} targets Healthy",
                s.revision, s.batches, s.healthy, s.targeted
            );
            out.push(v(READY, true, ConditionReason::RolloutComplete, m.clone()));
            out.push(v(PROGRESSING, false, ConditionReason::RolloutComplete, m));
        }
        RolloutPhase::Degraded => {
            let why = s.last_batch.as_ref().map_or_else(String::new, |b| {
                format!(
                    "batch {}/{} had {}/{} Healthy ({} failed, {} timed out), needed {}",
                    b.batch + 1,
                    s.batches,
                    b.healthy,
                    b.devices,
                    b.failed,
                    b.timed_out,
                    b.needed
                )
            });
            let deadline = s
                .last_batch
                .as_ref()
                .is_some_and(|b| b.failed == 0 && b.timed_out > 0);
            let progressing_reason = if deadline {
                ConditionReason::ProgressDeadlineExceeded
            } else {
                ConditionReason::BatchFailed
            };
            let halted = format!(
                "revision {} halted: {why}; change the spec, or set annotation iot.nationtech.io/retry-rollout to a new value to retry",
                s.revision
            );
            out.push(v(
                READY,
                false,
                ConditionReason::BatchFailed,
                halted.clone(),
            ));
            out.push(v(PROGRESSING, false, progressing_reason, halted.clone()));
            let (reason, m) = if auto_rollback && has_stable {
                let st = s.stable_revision.as_deref().unwrap_or_default();
                (
                    ConditionReason::RolledBack,
                    format!("{halted}; the devices it reached run the stable revision {st} again"),
                )
            } else if auto_rollback {
                (
                    ConditionReason::BatchFailed,
                    format!(
                        "{halted}; no other revision was stable before it, so the devices it reached keep it (their agents may still roll back by themselves)"
                    ),
                )
            } else {
                (
                    ConditionReason::BatchFailed,
                    format!("{halted}; autoRollback is off: the devices it reached keep it"),
                )
            };
            out.push(v(DEGRADED, true, reason, m));
        }
        RolloutPhase::Paused => {
            let m = format!(
                "paused at {batch} of revision {}: {}/{} targets updated; set spec.rollout.paused to false to resume",
                s.revision, s.updated, s.targeted
            );
            out.push(v(READY, false, ConditionReason::RolloutPaused, m.clone()));
            out.push(v(PROGRESSING, false, ConditionReason::RolloutPaused, m));
        }
        RolloutPhase::Progressing => {
            let detail = in_progress.map_or_else(String::new, |(t, size, needed)| {
                format!(
                    ": {}/{size} Healthy, {} waiting, {} not written yet, {} failed, {} timed out; needs {needed}",
                    t.healthy, t.waiting, t.pending, t.failed, t.timed_out
                )
            });
            let m = format!("revision {} at {batch}{detail}", s.revision);
            out.push(v(READY, false, ConditionReason::BatchInProgress, m.clone()));
            out.push(v(PROGRESSING, true, ConditionReason::BatchInProgress, m));
        }
    }
    out.push(if paused {
        v(
            PAUSED,
            true,
            ConditionReason::RolloutPaused,
            "spec.rollout.paused is true: no further device gets the new revision".into(),
        )
    } else {
        v(
            PAUSED,
            false,
            ConditionReason::RolloutResumed,
            "spec.rollout.paused is false".into(),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Rollout;

    const S: i128 = 1_000_000_000;

    fn spec(max_unavailable: Option<u32>) -> RolloutSpec {
        RolloutSpec::new(&Rollout {
            batches: vec![crate::crd::Batch {
                limit: Some(crate::crd::IntOrString::Int(1)),
                ..Default::default()
            }],
            max_unavailable: max_unavailable.map(|n| crate::crd::IntOrString::Int(n as i32)),
            ..Rollout::default()
        })
        .unwrap()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn input<'a>(
        spec: &'a RolloutSpec,
        batches: Vec<Vec<String>>,
        devices: &'a HashMap<String, DeviceState>,
        prev: Option<&'a RolloutStatus>,
    ) -> Input<'a> {
        Input {
            revision: 7,
            spec,
            batches,
            devices,
            prev,
            stable_fallback: Some(3),
            paused: false,
            auto_rollback: true,
            deadline_ns: 60 * S,
            retry: None,
            attempt: 0,
            now_ns: 1000 * S,
        }
    }

    fn healthy() -> DeviceState {
        DeviceState {
            updated: true,
            written_ns: Some(990 * S),
            phase: Some(Phase::Healthy),
            ..Default::default()
        }
    }

    #[test]
    fn a_target_added_to_a_passed_batch_waits_for_the_last_one() {
        let spec = spec(None);
        // Batch 0 (a) passed; b is in progress in the last batch; z, new,
        // would sort into batch 0 now but waits for the last batch.
        let devices: HashMap<String, DeviceState> = [
            ("a".to_string(), healthy()),
            ("b".to_string(), DeviceState::default()),
            ("z".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        let prev = RolloutStatus {
            revision: revision_string(7),
            current_batch: 1,
            batches: 2,
            ..Default::default()
        };
        let d = decide(input(
            &spec,
            vec![ids(&["z"]), ids(&["a", "b"])],
            &devices,
            Some(&prev),
        ));
        assert_eq!(d.write, ids(&["b", "z"]));
        assert_eq!(d.status.current_batch, 1);
        assert_eq!(d.status.phase, RolloutPhase::Progressing);
    }

    #[test]
    fn a_batch_removed_mid_rollout_does_not_count_as_passed() {
        let spec = spec(None);
        let devices: HashMap<String, DeviceState> = [
            ("a".to_string(), healthy()),
            ("b".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        // Was at batch 3 of 4; the spec now has 2.
        let prev = RolloutStatus {
            revision: revision_string(7),
            current_batch: 3,
            batches: 4,
            ..Default::default()
        };
        let d = decide(input(
            &spec,
            vec![ids(&["a"]), ids(&["b"])],
            &devices,
            Some(&prev),
        ));
        assert_eq!(d.status.phase, RolloutPhase::Progressing);
        assert_eq!(d.status.current_batch, 1);
        assert_eq!(d.write, ids(&["b"]));
    }

    #[test]
    fn a_halt_with_no_other_stable_revision_writes_nothing_back() {
        let spec = spec(None);
        let failed = DeviceState {
            updated: true,
            written_ns: Some(990 * S),
            phase: Some(Phase::Failed),
            ..Default::default()
        };
        let devices: HashMap<String, DeviceState> =
            [("a".to_string(), failed)].into_iter().collect();
        let mut i = input(&spec, vec![ids(&["a"]), vec![]], &devices, None);
        i.stable_fallback = Some(7); // the revision itself
        let d = decide(i);
        assert_eq!(d.status.phase, RolloutPhase::Degraded);
        assert!(d.roll_back.is_empty());
        assert_eq!(d.stable, None);
        let degraded = d.verdicts.iter().find(|v| v.type_ == "Degraded").unwrap();
        assert_eq!(degraded.reason, ConditionReason::BatchFailed);
    }

    #[test]
    fn an_offline_device_is_written_counted_and_times_out() {
        let spec = spec(None);
        let offline = DeviceState {
            updated: true,
            written_ns: Some(900 * S),
            offline: true,
            ..Default::default()
        };
        let devices: HashMap<String, DeviceState> =
            [("a".to_string(), offline)].into_iter().collect();
        let d = decide(input(&spec, vec![ids(&["a"]), vec![]], &devices, None));
        assert_eq!(d.status.offline, 1);
        assert_eq!(d.status.timed_out, 1);
        assert_eq!(d.status.phase, RolloutPhase::Degraded);
        assert_eq!(d.roll_back, ids(&["a"]));
        assert_eq!(d.stable, Some(3));
        let reasons: Vec<_> = d.verdicts.iter().map(|v| (v.type_, v.reason)).collect();
        assert!(
            reasons.contains(&("Progressing", ConditionReason::ProgressDeadlineExceeded)),
            "{reasons:?}"
        );
    }

    #[test]
    fn max_unavailable_counts_devices_in_flight_anywhere() {
        let spec = spec(Some(2));
        let waiting = DeviceState {
            updated: true,
            written_ns: Some(999 * S),
            ..Default::default()
        };
        let devices: HashMap<String, DeviceState> = [
            ("a".to_string(), healthy()),
            ("b".to_string(), waiting),
            ("c".to_string(), DeviceState::default()),
            ("d".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        let prev = RolloutStatus {
            revision: revision_string(7),
            current_batch: 1,
            batches: 2,
            ..Default::default()
        };
        let d = decide(input(
            &spec,
            vec![ids(&["a"]), ids(&["b", "c", "d"])],
            &devices,
            Some(&prev),
        ));
        assert_eq!(d.write, ids(&["c"]), "b is in flight: room for one more");
        assert_eq!(d.next_deadline_ns, Some(1059 * S + 1));
    }

    fn gated(reason: protocol::Reason) -> DeviceState {
        DeviceState {
            updated: true,
            // Written long before the deadline: waiting does not time out.
            written_ns: Some(100 * S),
            phase: Some(Phase::Waiting),
            wait: WaitAt {
                waiting: Some((
                    reason,
                    Some(protocol::status::Waiting {
                        since_ms: 1_796_547_791_000,
                        until_ms: None,
                    }),
                )),
                stopped_ns: None,
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_waiting_device_holds_its_batch_until_it_reports_healthy() {
        let spec = spec(None);
        let mut devices: HashMap<String, DeviceState> = [
            ("a".to_string(), gated(protocol::Reason::UpdateLocked)),
            ("b".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        let batches = || vec![ids(&["a"]), ids(&["b"])];
        let d = decide(input(&spec, batches(), &devices, None));
        assert_eq!(d.status.phase, RolloutPhase::Progressing);
        assert_eq!(d.status.current_batch, 0, "neither passed");
        assert!(d.status.last_batch.is_none(), "nor failed");
        assert!(d.write.is_empty(), "the next batch waits");
        assert_eq!(
            (
                d.status.waiting,
                d.status.gated,
                d.status.timed_out,
                d.status.failed
            ),
            (1, 1, 0, 0)
        );
        assert_eq!(d.next_deadline_ns, None, "its deadline has not started");
        let progressing = d
            .verdicts
            .iter()
            .find(|v| v.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            progressing.message,
            "revision 0000000000000007 at batch 1/2: 0/1 Healthy, 1 waiting, 0 not written yet, 0 failed, 0 timed out; needs 1; 1 device waiting: 1 UpdateLocked (since 2026-12-06T09:03:11Z)"
        );
        assert!(progressing.status);
        let ready = d.verdicts.iter().find(|v| v.type_ == "Ready").unwrap();
        assert!(!ready.status);
        assert!(
            ready
                .message
                .ends_with("1 UpdateLocked (since 2026-12-06T09:03:11Z)")
        );

        // The lock is released: the device applies; its deadline runs from
        // then, not from the key's write.
        let applying = DeviceState {
            phase: Some(Phase::Starting),
            wait: WaitAt {
                waiting: None,
                stopped_ns: Some(990 * S),
            },
            ..gated(protocol::Reason::UpdateLocked)
        };
        devices.insert("a".into(), applying);
        let d = decide(input(&spec, batches(), &devices, None));
        assert_eq!((d.status.current_batch, d.status.timed_out), (0, 0));
        assert_eq!((d.status.waiting, d.status.gated), (1, 0));
        assert_eq!(d.next_deadline_ns, Some(1050 * S + 1));
        let mut late = input(&spec, batches(), &devices, None);
        late.now_ns = 1051 * S;
        let d = decide(late);
        assert_eq!(
            d.status.timed_out, 1,
            "past its deadline from when it stopped waiting"
        );
        assert_eq!(d.status.phase, RolloutPhase::Degraded);

        // Healthy: the batch passes and the next one is written.
        devices.insert("a".into(), healthy());
        let d = decide(input(&spec, batches(), &devices, None));
        assert_eq!(d.status.current_batch, 1);
        assert_eq!(d.last_batch_result(), Some("Succeeded"));
        assert_eq!(d.write, ids(&["b"]));
    }

    #[test]
    fn an_update_lock_timeout_counts_as_failed() {
        let spec = spec(None);
        let timed_out = DeviceState {
            phase: Some(Phase::Failed),
            wait: WaitAt::default(),
            ..gated(protocol::Reason::UpdateLockTimeout)
        };
        let devices: HashMap<String, DeviceState> =
            [("a".to_string(), timed_out)].into_iter().collect();
        let d = decide(input(&spec, vec![ids(&["a"]), vec![]], &devices, None));
        assert_eq!((d.status.failed, d.status.gated), (1, 0));
        assert_eq!(d.status.phase, RolloutPhase::Degraded);
        assert_eq!(d.last_batch_result(), Some("Failed"));
        let progressing = d
            .verdicts
            .iter()
            .find(|v| v.type_ == "Progressing")
            .unwrap();
        assert_eq!(progressing.reason, ConditionReason::BatchFailed);
    }

    #[test]
    fn a_waiting_device_counts_against_max_unavailable() {
        let spec = spec(Some(1));
        let devices: HashMap<String, DeviceState> = [
            (
                "a".to_string(),
                gated(protocol::Reason::OutsideMaintenanceWindow),
            ),
            ("b".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        let d = decide(input(&spec, vec![vec![], ids(&["a", "b"])], &devices, None));
        assert!(d.write.is_empty(), "a is between written and Healthy");
        assert_eq!(d.status.phase, RolloutPhase::Progressing);
    }

    #[test]
    fn a_kept_device_holds_its_batch_and_is_neither_failed_nor_written() {
        let spec = spec(None);
        let kept = DeviceState {
            kept: true,
            ..Default::default()
        };
        let devices: HashMap<String, DeviceState> = [
            ("a".to_string(), healthy()),
            ("b".to_string(), kept),
            ("c".to_string(), DeviceState::default()),
        ]
        .into_iter()
        .collect();
        let d = decide(input(
            &spec,
            vec![ids(&["a", "b"]), ids(&["c"])],
            &devices,
            None,
        ));
        assert_eq!(d.status.failed, 0);
        assert_eq!(d.status.phase, RolloutPhase::Progressing);
        assert_eq!(d.status.current_batch, 0, "b holds batch 0");
        assert!(d.write.is_empty(), "b is not written, c waits");
        assert!(d.status.last_batch.is_none());
    }

    #[test]
    fn a_halt_rolls_back_only_the_devices_that_can_be_written() {
        let spec = spec(None);
        let failed = DeviceState {
            updated: true,
            written_ns: Some(990 * S),
            phase: Some(Phase::Failed),
            ..Default::default()
        };
        let devices: HashMap<String, DeviceState> = [
            ("a".to_string(), failed),
            (
                "held".to_string(),
                DeviceState {
                    blocked: true,
                    ..healthy()
                },
            ),
            (
                "kept".to_string(),
                DeviceState {
                    kept: true,
                    ..healthy()
                },
            ),
        ]
        .into_iter()
        .collect();
        let d = decide(input(
            &spec,
            vec![ids(&["a", "held", "kept"]), vec![]],
            &devices,
            None,
        ));
        assert_eq!(d.status.phase, RolloutPhase::Degraded);
        assert_eq!(d.roll_back, ids(&["a"]));
    }

    impl Decision {
        fn last_batch_result(&self) -> Option<&str> {
            self.status.last_batch.as_ref().map(|b| b.result.as_str())
        }
    }
}
