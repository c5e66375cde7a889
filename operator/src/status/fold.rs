//! Folding what the reconcile did and the devices' reports into the
//! Deployment's `.status`: counts over every target, conditions, and entries
//! for the (at most [`MAX_LISTED_DEVICES`]) targets that are not ready.

use std::collections::BTreeMap;

use protocol::{DeploymentKey, Phase};

use super::cache::{Report, StatusCache, is_stale, rfc3339};
use super::{device_reason, phase_is_ready};
use crate::apply::{Conflict, PlanError, UnknownType};
use crate::crd::{
    Condition, ConditionReason, Deployment, DeploymentStatus, DevicePhase, DeviceStatus,
    MAX_LISTED_DEVICES, revision_string,
};

/// What the reconcile did, as input to [`fold_status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The revision now on the devices' keys (None before the first write).
    pub revision: Option<u64>,
    /// The JSON of the score with that revision.
    pub score_json: Option<String>,
    /// The devices targeted: `targetDevices` and the selected Devices.
    pub targets: Vec<String>,
    /// Targets owned by another Deployment of the same name.
    pub conflicts: Vec<Conflict>,
    /// Targets not written because their agent cannot read the score, with
    /// the reason: shown `Unsupported` and counted as failed.
    pub held: BTreeMap<String, String>,
    /// Targets whose key is kept as it is (their Device's own maintenance
    /// windows are invalid, or the Device is being deleted), with the
    /// reason naming the Device's field: not failed, they show what they
    /// report, with the reason in their entry and in DeviceWarnings.
    pub kept: BTreeMap<String, String>,
    /// Why the spec could not be written, if it could not.
    pub invalid: Option<PlanError>,
    /// Set when the score type is not one this operator knows.
    pub unknown_type: Option<UnknownType>,
}

/// Condition types.
pub mod conditions {
    /// Every target runs the current revision.
    pub const READY: &str = "Ready";
    /// Some targets do not run the current revision yet.
    pub const PROGRESSING: &str = "Progressing";
    /// Some targets failed or are unreachable, or the spec is unusable.
    pub const DEGRADED: &str = "Degraded";
    /// The score does not fit its type; nothing was written.
    pub const INVALID_SCORE: &str = "InvalidScore";
    /// Another Deployment of this name owns some targets' keys.
    pub const CONFLICT: &str = "Conflict";
    /// The score type is unknown to this operator and routed as JSON.
    pub const UNKNOWN_SCORE_TYPE: &str = "UnknownScoreType";
    /// Some targets' heartbeats carry warnings (e.g. a device that cannot
    /// cache its desired state), or their key is kept as it is (their
    /// Device's maintenance windows are invalid). Independent of Ready:
    /// such a device may run everything.
    pub const DEVICE_WARNINGS: &str = "DeviceWarnings";
    /// With strategy BatchSequence: `spec.rollout.paused` holds the rollout.
    pub const PAUSED: &str = "Paused";
    /// With strategy BatchSequence: some batch takes no target, or its
    /// limit is more than it can take (the message names the field).
    pub const BATCH_WARNINGS: &str = "BatchWarnings";
}

/// Why a target is listed in `.status.devices`; the order is the list's,
/// worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attention {
    /// Failed, Unsupported or RolledBack at the current revision, or held
    /// back: done with the revision, and it does not run.
    Failed,
    /// CrashLoopBackOff or Unhealthy at the current revision: the device
    /// keeps trying, and it does not run well.
    Unhealthy,
    /// Another Deployment of this name owns the key; nothing was written.
    Conflict,
    /// The heartbeat is stale.
    Unreachable,
    /// Never reported for this deployment.
    NoReport,
    /// Reports another revision than the current one.
    Outdated,
    /// At the current revision but not (yet) Running, Healthy or Completed.
    RollingOut,
    /// Reports Waiting at the current revision: the device holds it back
    /// (update lock, maintenance window, clock) and runs the one before.
    Waiting,
}

/// The CR status for `deployment`, from what the reconcile did and the
/// devices' reports: exact counts over every target, entries only for the
/// targets not ready (see [`DeploymentStatus::devices`]). `now_ns` is the
/// operator's clock; `prev` conditions keep their transition time while
/// their status does not change.
pub fn fold_status(
    deployment: &Deployment,
    observed: &Observed,
    cache: &StatusCache,
    now_ns: i128,
) -> DeploymentStatus {
    let generation = deployment.metadata.generation;
    let tally = Tally::of(deployment.name_str(), observed, cache, now_ns);
    let targeted = observed.targets.len() as i64;
    let prev = deployment.status.clone().unwrap_or_default();
    let conditions = verdicts(deployment.name_str(), observed, &tally, targeted)
        .into_iter()
        .map(|v| v.into_condition(&prev, generation, now_ns))
        .collect();
    let (devices, devices_omitted) = worst_first(tally.not_ready);
    DeploymentStatus {
        observed_generation: generation,
        observed_score_string: observed.score_json.clone(),
        revision: observed.revision.map(revision_string),
        conditions,
        devices,
        devices_omitted,
        targeted,
        up_to_date: tally.up_to_date,
        ready: tally.ready,
        healthy: tally.healthy,
        failed: tally.failed,
        waiting: tally.waiting.len() as i64,
        rollout: None,
    }
}

/// The targets counted and, for those not ready, described.
#[derive(Debug, Default)]
struct Tally {
    /// Only the devices that need attention; ready ones are counted.
    not_ready: Vec<(Attention, DeviceStatus)>,
    up_to_date: i64,
    ready: i64,
    healthy: i64,
    failed: i64,
    /// Targets failed at the current revision, in target order.
    failing: Vec<String>,
    /// Targets CrashLoopBackOff or Unhealthy at the current revision, in
    /// target order.
    unhealthy: Vec<String>,
    /// Of the targets not ready at the current revision that said why
    /// (their report, or held back): rank and label
    /// (`CrashLoopBackOff (OOMKilled)`), for the conditions' messages.
    labels: Vec<(Attention, String)>,
    /// Targets whose heartbeat is stale, in target order.
    unreachable: Vec<String>,
    /// Targets whose heartbeat carries warnings, with the first one, in
    /// target order.
    warning: Vec<(String, String)>,
    /// Targets reporting Waiting at the current revision: why, and since
    /// and until when.
    waiting: Vec<Wait>,
}

/// Why one target waits, and since and until when (device clock, ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    /// The agent's reason (`UpdateLocked`...); empty when it gives none.
    pub(crate) reason: &'static str,
    pub(crate) since_ms: Option<u64>,
    pub(crate) until_ms: Option<u64>,
}

impl Wait {
    /// What `status` (a Waiting report) says.
    pub(crate) fn of(status: &protocol::DeploymentStatus<'_>) -> Wait {
        Wait {
            reason: device_reason(status).unwrap_or_default(),
            since_ms: status.waiting.map(|w| w.since_ms),
            until_ms: status.waiting.and_then(|w| w.until_ms),
        }
    }
}

/// One target as its report and heartbeat show it.
struct Assessment<'a> {
    report: Option<&'a Report>,
    /// Reports the current revision.
    current: bool,
    /// Reports Waiting at the current revision.
    waiting: bool,
    /// Failed, Unsupported or RolledBack at the current revision.
    failed: bool,
    /// CrashLoopBackOff or Unhealthy at the current revision, and not
    /// silent since.
    unhealthy: bool,
    /// When the stale heartbeat was stored; `None` when fresh or absent.
    stale_since: Option<i128>,
    /// What the last heartbeat warns of.
    warnings: Vec<String>,
}

impl Tally {
    fn of(name: &str, observed: &Observed, cache: &StatusCache, now_ns: i128) -> Tally {
        let reports = cache.reports_for(name);
        let mut tally = Tally::default();
        for device in &observed.targets {
            if let Some(c) = observed.conflicts.iter().find(|c| &c.device == device) {
                tally
                    .not_ready
                    .push((Attention::Conflict, conflict_entry(name, c)));
                continue;
            }
            if let Some(reason) = observed.held.get(device) {
                tally.failed += 1;
                tally.failing.push(device.clone());
                let entry = held_entry(device, reason, reports.get(device));
                tally.labels.push((Attention::Failed, label(&entry)));
                tally.not_ready.push((Attention::Failed, entry));
                continue;
            }
            let a = assess(
                reports.get(device),
                observed.revision,
                cache,
                device,
                now_ns,
            );
            let attention = attention(&a);
            let kept = observed.kept.get(device);
            tally.count(device, &a, attention.is_none(), kept);
            if let Some(attention) = attention {
                let mut entry = device_entry(device, &a);
                if a.current && a.stale_since.is_none() {
                    tally.labels.push((attention, label(&entry)));
                }
                // What it reports, and why its key is not written.
                if let Some(reason) = kept {
                    entry.message = Some(match entry.message.take() {
                        Some(m) => format!("{reason}; {m}"),
                        None => reason.clone(),
                    });
                }
                tally.not_ready.push((attention, entry));
            }
        }
        tally
    }

    /// Counts `device`; `kept`: why its key is kept as it is, if it is
    /// (a warning before its heartbeat's).
    fn count(&mut self, device: &str, a: &Assessment<'_>, ready: bool, kept: Option<&String>) {
        if a.current && !a.waiting {
            self.up_to_date += 1;
        }
        if a.waiting
            && let Some(r) = a.report
        {
            self.waiting.push(Wait::of(&r.status));
        }
        if a.failed {
            self.failed += 1;
            self.failing.push(device.to_string());
        }
        if a.unhealthy {
            self.unhealthy.push(device.to_string());
        }
        if a.stale_since.is_some() {
            self.unreachable.push(device.to_string());
        }
        if let Some(first) = kept.or(a.warnings.first()) {
            self.warning.push((device.to_string(), first.clone()));
        }
        if ready {
            self.ready += 1;
            if a.report.is_some_and(|r| r.status.phase == Phase::Healthy) {
                self.healthy += 1;
            }
        }
    }
}

fn assess<'a>(
    report: Option<&'a Report>,
    revision: Option<u64>,
    cache: &StatusCache,
    device: &str,
    now_ns: i128,
) -> Assessment<'a> {
    let current = report.is_some_and(|r| Some(r.status.revision) == revision);
    let phase = report.map(|r| r.status.phase).filter(|_| current);
    let waiting = phase == Some(Phase::Waiting);
    let failed = matches!(
        phase,
        Some(Phase::Failed | Phase::Unsupported | Phase::RolledBack)
    );
    let heartbeat = cache.heartbeat(device);
    let stale_since = heartbeat
        .as_ref()
        .filter(|h| is_stale(h.stored_at_ns, now_ns, cache.heartbeat_timeout()))
        .map(|h| h.stored_at_ns);
    // Unlike a failure, which stays until a new revision, a crash loop or
    // a failing check may have passed since a silent device last said so.
    let unhealthy =
        stale_since.is_none() && matches!(phase, Some(Phase::CrashLoopBackOff | Phase::Unhealthy));
    // A stale heartbeat's warnings still hold: nothing said they cleared.
    let warnings = heartbeat.map(|h| h.warnings()).unwrap_or_default();
    Assessment {
        report,
        current,
        waiting,
        failed,
        unhealthy,
        stale_since,
        warnings,
    }
}

/// Why the target needs attention, worst reason first; `None` when it is ready.
fn attention(a: &Assessment<'_>) -> Option<Attention> {
    let Some(report) = a.report else {
        return Some(if a.stale_since.is_some() {
            Attention::Unreachable
        } else {
            Attention::NoReport
        });
    };
    if a.failed {
        Some(Attention::Failed)
    } else if a.stale_since.is_some() {
        Some(Attention::Unreachable)
    } else if !a.current {
        Some(Attention::Outdated)
    } else if a.unhealthy {
        Some(Attention::Unhealthy)
    } else if a.waiting {
        Some(Attention::Waiting)
    } else if phase_is_ready(report.status.phase) {
        None
    } else {
        Some(Attention::RollingOut)
    }
}

fn conflict_entry(name: &str, c: &Conflict) -> DeviceStatus {
    let key = DeploymentKey::new(&c.device, name)
        .map_or_else(|_| format!("of {}", c.device), |k| k.to_string());
    DeviceStatus {
        device: c.device.clone(),
        phase: DevicePhase::Conflict,
        reason: None,
        revision: None,
        running_revision: None,
        waiting_since: None,
        waiting_until: None,
        message: Some(format!("the key {key} belongs to {}", c.owner)),
        last_report_time: None,
        warnings: Vec::new(),
    }
}

/// The entry of a target held back: `Unsupported` with the reason, and the
/// revision it last reported (what it still runs), if any.
fn held_entry(device: &str, reason: &str, report: Option<&Report>) -> DeviceStatus {
    DeviceStatus {
        device: device.to_string(),
        phase: DevicePhase::Unsupported,
        reason: None,
        revision: report.map(|r| revision_string(r.status.revision)),
        running_revision: None,
        waiting_since: None,
        waiting_until: None,
        message: Some(reason.to_string()),
        last_report_time: report.map(|r| rfc3339(r.stored_at_ns)),
        warnings: Vec::new(),
    }
}

/// The entry of a target that is not ready: its report, else `Unknown`;
/// `Unreachable` when its heartbeat is stale.
fn device_entry(device: &str, a: &Assessment<'_>) -> DeviceStatus {
    let mut entry = match a.report {
        Some(r) => DeviceStatus {
            device: device.to_string(),
            phase: r.status.phase.into(),
            reason: device_reason(&r.status).map(String::from),
            revision: Some(revision_string(r.status.revision)),
            running_revision: r.status.running_revision.map(revision_string),
            waiting_since: r.status.waiting.map(|w| rfc3339_ms(w.since_ms)),
            waiting_until: r.status.waiting.and_then(|w| w.until_ms).map(rfc3339_ms),
            message: (!r.status.message.is_empty()).then(|| r.status.message.to_string()),
            last_report_time: Some(rfc3339(r.stored_at_ns)),
            warnings: a.warnings.clone(),
        },
        None => DeviceStatus {
            device: device.to_string(),
            phase: DevicePhase::Unknown,
            reason: None,
            revision: None,
            running_revision: None,
            waiting_since: None,
            waiting_until: None,
            message: Some("no status reported yet".into()),
            last_report_time: None,
            warnings: a.warnings.clone(),
        },
    };
    if let Some(seen) = a.stale_since {
        // The reason explained the last phase, not this one: it goes into
        // the message with that phase.
        let last = if a.report.is_some() {
            label(&entry)
        } else {
            "none".into()
        };
        entry.message = Some(format!(
            "unreachable: last heartbeat at {} (last phase: {last})",
            rfc3339(seen)
        ));
        entry.phase = DevicePhase::Unreachable;
        entry.reason = None;
        entry.waiting_since = None;
        entry.waiting_until = None;
    }
    entry
}

/// [`rfc3339`] of milliseconds since the Unix epoch (a device's clock).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    rfc3339(i128::from(ms) * 1_000_000)
}

/// `2 devices waiting: 1 UpdateLocked (since 2026-12-06T09:03:11Z), 1
/// OutsideMaintenanceWindow (until 2026-12-07T01:00:00Z)`: how many wait,
/// by reason, most first; with the longest wait of each reason, or, when
/// the devices know when they apply (a window), the latest of those.
/// `None` when nothing waits.
pub(crate) fn waiting_summary(waits: &[Wait]) -> Option<String> {
    const SHOWN: usize = 5;
    if waits.is_empty() {
        return None;
    }
    let mut by_reason: BTreeMap<&str, Vec<&Wait>> = BTreeMap::new();
    for w in waits {
        by_reason.entry(w.reason).or_default().push(w);
    }
    let mut groups: Vec<(&str, Vec<&Wait>)> = by_reason.into_iter().collect();
    groups.sort_by(|(a, m), (b, n)| n.len().cmp(&m.len()).then_with(|| a.cmp(b)));
    let mut parts: Vec<String> = groups
        .iter()
        .take(SHOWN)
        .map(|(reason, ws)| {
            let n = ws.len();
            let reason = if reason.is_empty() {
                "no reason given"
            } else {
                reason
            };
            let until = ws.iter().filter_map(|w| w.until_ms).max();
            let since = ws.iter().filter_map(|w| w.since_ms).min();
            let when = match (until, since) {
                (Some(u), _) if n == 1 => format!(" (until {})", rfc3339_ms(u)),
                (Some(u), _) => format!(" (the last until {})", rfc3339_ms(u)),
                (None, Some(s)) if n == 1 => format!(" (since {})", rfc3339_ms(s)),
                (None, Some(s)) => format!(" (the longest since {})", rfc3339_ms(s)),
                (None, None) => String::new(),
            };
            format!("{n} {reason}{when}")
        })
        .collect();
    if groups.len() > SHOWN {
        parts.push(format!("{} more reasons", groups.len() - SHOWN));
    }
    let n = waits.len();
    Some(format!(
        "{n} device{} waiting: {}",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    ))
}

/// The entry's phase with its reason when that says more
/// (`CrashLoopBackOff (OOMKilled)`, not `CrashLoopBackOff (CrashLoopBackOff)`).
fn label(entry: &DeviceStatus) -> String {
    match entry.reason.as_deref() {
        Some(reason) if reason != entry.phase.as_str() => {
            format!("{} ({reason})", entry.phase)
        }
        _ => entry.phase.to_string(),
    }
}

/// `labels` counted, most frequent first: `2 devices CrashLoopBackOff
/// (OOMKilled), 1 device RolledBack (HealthCheckFailed)`.
fn breakdown<'a>(labels: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 5;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in labels {
        *counts.entry(l).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|(a, m), (b, n)| n.cmp(m).then_with(|| a.cmp(b)));
    let mut s = counts
        .iter()
        .take(SHOWN)
        .map(|(l, n)| format!("{n} device{} {l}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ");
    if counts.len() > SHOWN {
        s.push_str(&format!(" and {} more", counts.len() - SHOWN));
    }
    s
}

/// The first [`MAX_LISTED_DEVICES`] entries by rank, then device id, and
/// how many were left out.
fn worst_first(mut not_ready: Vec<(Attention, DeviceStatus)>) -> (Vec<DeviceStatus>, i64) {
    let order = |(a, x): &(Attention, DeviceStatus), (b, y): &(Attention, DeviceStatus)| {
        a.cmp(b).then_with(|| x.device.cmp(&y.device))
    };
    let omitted = not_ready.len().saturating_sub(MAX_LISTED_DEVICES) as i64;
    if omitted > 0 {
        // Only the listed ones need sorting (a fresh apply has every target
        // not ready).
        not_ready.select_nth_unstable_by(MAX_LISTED_DEVICES, order);
        not_ready.truncate(MAX_LISTED_DEVICES);
    }
    not_ready.sort_unstable_by(order);
    (not_ready.into_iter().map(|(_, d)| d).collect(), omitted)
}

/// A condition's content, before its transition time is known.
struct Verdict {
    type_: &'static str,
    status: bool,
    reason: ConditionReason,
    message: String,
}

impl Verdict {
    /// The condition, keeping the transition time of `prev`'s condition of
    /// this type while the status holds.
    fn into_condition(
        self,
        prev: &DeploymentStatus,
        generation: Option<i64>,
        now_ns: i128,
    ) -> Condition {
        let status = if self.status { "True" } else { "False" };
        let last_transition_time = prev
            .conditions
            .iter()
            .find(|c| c.type_ == self.type_ && c.status == status)
            .map_or_else(|| rfc3339(now_ns), |c| c.last_transition_time.clone());
        Condition {
            type_: self.type_.into(),
            status: status.into(),
            last_transition_time,
            observed_generation: generation,
            reason: self.reason,
            message: self.message,
        }
    }
}

/// Sets condition `type_` of `status` (replacing the fold's, or appended),
/// keeping `prev`'s transition time while its status holds: how a
/// BatchSequence rollout states Ready, Progressing, Degraded and Paused.
pub fn set_condition(
    status: &mut DeploymentStatus,
    prev: &DeploymentStatus,
    now_ns: i128,
    (type_, value, reason, message): (&'static str, bool, ConditionReason, String),
) {
    let generation = status.observed_generation;
    let c = Verdict {
        type_,
        status: value,
        reason,
        message,
    }
    .into_condition(prev, generation, now_ns);
    match status.conditions.iter_mut().find(|x| x.type_ == type_) {
        Some(x) => *x = c,
        None => status.conditions.push(c),
    }
}

/// Every condition, in the order the status lists them.
fn verdicts(name: &str, observed: &Observed, tally: &Tally, targeted: i64) -> Vec<Verdict> {
    let mut v = vec![
        ready(observed, tally, targeted),
        progressing(tally, targeted),
        degraded(observed, tally),
        invalid_score(observed),
        conflict(name, observed),
        device_warnings(tally),
    ];
    v.extend(unknown_score_type(observed));
    v
}

fn ready(observed: &Observed, tally: &Tally, targeted: i64) -> Verdict {
    let all_ready = tally.ready == targeted && observed.invalid.is_none();
    Verdict {
        type_: conditions::READY,
        status: all_ready,
        reason: if all_ready {
            ConditionReason::AllTargetsReady
        } else {
            ConditionReason::TargetsNotReady
        },
        message: ready_message(tally, targeted),
    }
}

/// `3/5 targets run the current revision (2 Healthy); 1 device
/// CrashLoopBackOff (OOMKilled), 1 device Pulling`: the counts, then why
/// the targets at the current revision that do not run it say so.
fn ready_message(tally: &Tally, targeted: i64) -> String {
    let mut message = format!(
        "{}/{targeted} targets run the current revision",
        tally.ready
    );
    if tally.healthy > 0 {
        message.push_str(&format!(" ({} Healthy)", tally.healthy));
    }
    if !tally.labels.is_empty() {
        message.push_str("; ");
        message.push_str(&breakdown(tally.labels.iter().map(|(_, l)| l.as_str())));
    }
    message
}

fn progressing(tally: &Tally, targeted: i64) -> Verdict {
    let progressing = tally.up_to_date < targeted;
    Verdict {
        type_: conditions::PROGRESSING,
        status: progressing,
        reason: if progressing {
            ConditionReason::RollingOut
        } else {
            ConditionReason::RolloutComplete
        },
        message: progressing_message(tally, targeted),
    }
}

/// `1/3 targets report the current revision; 2 devices waiting: 1
/// UpdateLocked (since ...), 1 OutsideMaintenanceWindow (until ...)`.
fn progressing_message(tally: &Tally, targeted: i64) -> String {
    let mut message = format!(
        "{}/{targeted} targets report the current revision",
        tally.up_to_date
    );
    if let Some(w) = waiting_summary(&tally.waiting) {
        message.push_str("; ");
        message.push_str(&w);
    }
    message
}

fn degraded(observed: &Observed, tally: &Tally) -> Verdict {
    let spec_broken = observed.invalid.as_ref().filter(|e| !e.is_score_error());
    let (reason, message) = if let Some(e) = spec_broken {
        (ConditionReason::InvalidSpec, e.to_string())
    } else if tally.failed > 0 || !tally.unhealthy.is_empty() || !tally.unreachable.is_empty() {
        let mut parts = Vec::new();
        if !tally.failing.is_empty() {
            parts.push(format!("failed: {}", short_list(&tally.failing)));
        }
        if !tally.unhealthy.is_empty() {
            parts.push(format!("unhealthy: {}", short_list(&tally.unhealthy)));
        }
        if !tally.unreachable.is_empty() {
            parts.push(format!("unreachable: {}", short_list(&tally.unreachable)));
        }
        // How they fail, unless that is only "Failed" again.
        let why: Vec<&str> = tally
            .labels
            .iter()
            .filter(|(a, _)| matches!(a, Attention::Failed | Attention::Unhealthy))
            .map(|(_, l)| l.as_str())
            .collect();
        if why.iter().any(|l| *l != DevicePhase::Failed.as_str()) {
            parts.push(breakdown(why.into_iter()));
        }
        let reason = if !tally.failing.is_empty() {
            ConditionReason::TargetsFailed
        } else if !tally.unhealthy.is_empty() {
            ConditionReason::TargetsUnhealthy
        } else {
            ConditionReason::TargetsUnreachable
        };
        (reason, parts.join("; "))
    } else {
        (
            ConditionReason::Healthy,
            "no target failed, unhealthy or unreachable".into(),
        )
    };
    Verdict {
        type_: conditions::DEGRADED,
        status: reason != ConditionReason::Healthy,
        reason,
        message,
    }
}

fn invalid_score(observed: &Observed) -> Verdict {
    let score_err = observed.invalid.as_ref().filter(|e| e.is_score_error());
    Verdict {
        type_: conditions::INVALID_SCORE,
        status: score_err.is_some(),
        reason: if score_err.is_some() {
            ConditionReason::ScoreRejected
        } else {
            ConditionReason::ScoreValid
        },
        message: score_err.map_or_else(|| "the score is valid".into(), |e| e.to_string()),
    }
}

fn conflict(name: &str, observed: &Observed) -> Verdict {
    let Some(first) = observed.conflicts.first() else {
        return Verdict {
            type_: conditions::CONFLICT,
            status: false,
            reason: ConditionReason::NoConflict,
            message: "no other Deployment of this name targets these devices".into(),
        };
    };
    let devices: Vec<String> = observed
        .conflicts
        .iter()
        .map(|c| c.device.clone())
        .collect();
    Verdict {
        type_: conditions::CONFLICT,
        status: true,
        reason: ConditionReason::KeyOwnedElsewhere,
        message: format!(
            "another Deployment named {name} ({}) owns the key on {}; nothing was written there",
            first.owner,
            short_list(&devices)
        ),
    }
}

fn device_warnings(tally: &Tally) -> Verdict {
    let Some((first, warning)) = tally.warning.first() else {
        return Verdict {
            type_: conditions::DEVICE_WARNINGS,
            status: false,
            reason: ConditionReason::NoDeviceWarnings,
            message: "no target reports a warning".into(),
        };
    };
    let devices: Vec<String> = tally.warning.iter().map(|(d, _)| d.clone()).collect();
    Verdict {
        type_: conditions::DEVICE_WARNINGS,
        status: true,
        reason: ConditionReason::DevicesWarn,
        message: format!(
            "{} target(s) warn: {}; {first}: {warning}",
            devices.len(),
            short_list(&devices)
        ),
    }
}

/// Only present when the score type is unknown.
fn unknown_score_type(observed: &Observed) -> Option<Verdict> {
    observed.unknown_type.as_ref().map(|u| Verdict {
        type_: conditions::UNKNOWN_SCORE_TYPE,
        status: true,
        reason: ConditionReason::RoutedAsJson,
        message: u.message(),
    })
}

fn short_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::crd::{DeploymentSpec, Rollout, Score};
    use crate::status::cache::now_ns;
    use crate::status::testdata::{
        health_status_bytes, heartbeat_bytes, heartbeat_warning_bytes, status_bytes,
        status_bytes_msg, waiting_status_bytes,
    };

    /// `(device, phase)` of each device the status lists, in order.
    fn listed(s: &crate::crd::DeploymentStatus) -> Vec<(&str, &str)> {
        s.devices
            .iter()
            .map(|d| (d.device.as_str(), d.phase.as_str()))
            .collect()
    }

    fn deployment() -> Deployment {
        let mut d = Deployment::new(
            "web",
            DeploymentSpec {
                target_devices: vec!["a".into(), "b".into(), "c".into()],
                image_pull_secrets: Vec::new(),
                target_selector: None,
                rollout: Rollout::default(),
                score: Score {
                    type_name: "PodmanV0".into(),
                    data: serde_json::json!({}),
                },
            },
        );
        d.metadata.generation = Some(3);
        d
    }

    #[test]
    fn folds_reports_heartbeats_and_conflicts() {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let now = now_ns();
        let minute = 60_000_000_000i128;
        cache.ingest_status("a.web", &status_bytes(7, Phase::Running), false, now);
        cache.ingest_status("b.web", &status_bytes(7, Phase::Failed), false, now);
        cache.ingest_status("c.web", &status_bytes(7, Phase::Running), false, now);
        cache.ingest_status("a.other", &status_bytes(1, Phase::Running), false, now);
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now);
        cache.ingest_heartbeat("c", &heartbeat_bytes(), false, now - 2 * minute);
        let mut d = deployment();
        d.spec.target_devices.push("d".into());
        let observed = Observed {
            revision: Some(7),
            score_json: Some("{}".into()),
            targets: vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            conflicts: vec![Conflict {
                device: "e".into(),
                owner: "other/web".into(),
            }],
            ..Default::default()
        };
        let s = fold_status(&d, &observed, &cache, now);
        assert_eq!((s.targeted, s.up_to_date, s.ready, s.failed), (5, 3, 1, 1));
        // The ready device a is only counted; the rest are listed worst first.
        let listed = listed(&s);
        assert_eq!(
            listed,
            [
                ("b", "Failed"),
                ("e", "Conflict"),
                ("c", "Unreachable"),
                ("d", "Unknown")
            ]
        );
        assert_eq!(s.devices_omitted, 0);
        assert_eq!(s.revision.as_deref(), Some("0000000000000007"));
        let cond = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(cond("Ready").status, "False");
        assert_eq!(cond("Degraded").status, "True");
        assert!(
            cond("Degraded").message.contains("failed: b"),
            "{:?}",
            cond("Degraded")
        );
        assert!(cond("Degraded").message.contains("unreachable: c"));
        assert_eq!(cond("Conflict").status, "True");
        assert!(cond("Conflict").message.contains("other/web"));
        assert_eq!(cond("InvalidScore").status, "False");
        assert_eq!(cond("Progressing").status, "True");
        assert_eq!(s.observed_generation, Some(3));
    }

    fn device_id(i: usize) -> String {
        format!("dev-{i:05}")
    }

    /// A cache where every one of `n` targets runs revision 7 with a fresh
    /// heartbeat, and the Observed of that revision.
    fn healthy_fleet(n: usize, now: i128) -> (Arc<StatusCache>, Observed) {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let running = status_bytes(7, Phase::Running);
        let hb = heartbeat_bytes();
        let targets: Vec<String> = (0..n).map(device_id).collect();
        for t in &targets {
            cache.ingest_status(&format!("{t}.web"), &running, false, now);
            cache.ingest_heartbeat(t, &hb, false, now);
        }
        let observed = Observed {
            revision: Some(7),
            score_json: Some("{}".into()),
            targets,
            ..Default::default()
        };
        (cache, observed)
    }

    /// `listed + omitted` must be every target that is not ready.
    fn assert_accounts_for_all(s: &DeploymentStatus) {
        assert_eq!(
            s.devices.len() as i64 + s.devices_omitted,
            s.targeted - s.ready,
            "every not-ready target is listed or counted as omitted"
        );
        assert!(s.devices.len() <= MAX_LISTED_DEVICES);
    }

    #[test]
    fn a_healthy_fleet_of_ten_thousand_lists_no_device() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.failed),
            (10_000, 10_000, 10_000, 0)
        );
        assert!(s.devices.is_empty(), "{:?}", &s.devices[..3]);
        assert_eq!(s.devices_omitted, 0);
        assert_accounts_for_all(&s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["devices"], serde_json::json!([]));
        assert_eq!(
            json["devicesOmitted"], 0,
            "always sent, so a merge patch resets it"
        );
    }

    #[test]
    fn lists_only_not_ready_devices_worst_first() {
        let now = now_ns();
        let minute = 60_000_000_000i128;
        let (cache, mut observed) = healthy_fleet(20, now);
        // Targets are in no particular order; the list is by rank then id.
        let set = |i: usize, rev: u64, phase: Phase| {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(rev, phase),
                false,
                now,
            );
        };
        set(17, 7, Phase::Pulling); // rolling out
        set(3, 6, Phase::Running); // older revision
        set(12, 7, Phase::Unsupported); // failed
        set(5, 7, Phase::Failed); // failed
        set(9, 6, Phase::Failed); // an old revision failed: outdated
        cache.ingest_heartbeat(&device_id(1), &heartbeat_bytes(), false, now - 5 * minute);
        observed.targets.reverse();
        observed.targets.push("never".into());
        observed.targets.push("taken".into());
        observed.conflicts.push(Conflict {
            device: "taken".into(),
            owner: "other/web".into(),
        });
        let s = fold_status(&deployment(), &observed, &cache, now);
        let listed = listed(&s);
        assert_eq!(
            listed,
            [
                ("dev-00005", "Failed"),
                ("dev-00012", "Unsupported"),
                ("taken", "Conflict"),
                ("dev-00001", "Unreachable"),
                ("never", "Unknown"),
                ("dev-00003", "Running"),
                ("dev-00009", "Failed"),
                ("dev-00017", "Pulling"),
            ]
        );
        assert_eq!(s.devices[5].revision.as_deref(), Some("0000000000000006"));
        assert!(
            s.devices[3]
                .message
                .as_deref()
                .unwrap()
                .contains("last phase: Running")
        );
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.failed),
            (22, 18, 14, 2)
        );
        assert_eq!(s.devices_omitted, 0);
        assert_accounts_for_all(&s);
    }

    #[test]
    fn caps_the_list_and_counts_the_rest() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        // 40 failed, then 300 on an older revision, spread over the fleet.
        for i in (0..10_000).step_by(25) {
            let (rev, phase) = if i % 250 == 0 {
                (7, Phase::Failed)
            } else {
                (6, Phase::Running)
            };
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(rev, phase),
                false,
                now,
            );
        }
        for i in (1..10_000).step_by(100) {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(6, Phase::Running),
                false,
                now,
            );
        }
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.targeted, s.failed), (10_000, 40));
        assert_eq!(s.ready, 10_000 - 400 - 100);
        assert_eq!(s.up_to_date, 10_000 - 360 - 100);
        assert_eq!(s.devices.len(), MAX_LISTED_DEVICES);
        assert_eq!(s.devices_omitted, 500 - MAX_LISTED_DEVICES as i64);
        assert_accounts_for_all(&s);
        assert!(
            s.devices[..40]
                .iter()
                .all(|d| d.phase == DevicePhase::Failed)
        );
        assert!(
            s.devices[40..]
                .iter()
                .all(|d| d.phase == DevicePhase::Running)
        );
        let ids: Vec<&str> = s.devices.iter().map(|d| d.device.as_str()).collect();
        let mut sorted = ids.clone();
        sorted[..40].sort_unstable();
        sorted[40..].sort_unstable();
        assert_eq!(ids, sorted, "by device id within a rank");
        // The outdated ones listed are the lowest ids of that rank.
        assert_eq!(ids[40..43], ["dev-00001", "dev-00025", "dev-00050"]);
        let again = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(s, again, "the same input folds to the same status");
    }

    #[test]
    fn status_of_ten_thousand_devices_stays_small() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        for i in (0..10_000).step_by(200) {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes_msg(
                    7,
                    Phase::Failed,
                    "pull docker.io/library/nginx:1.27: manifest unknown",
                ),
                false,
                now,
            );
        }
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.ready, s.devices.len(), s.devices_omitted),
            (9_950, 50, 0)
        );
        let fifty = serde_json::to_vec(&s).unwrap().len();
        // A fresh apply: no device reports the revision yet, all listed
        // up to the cap.
        let fresh = Observed {
            revision: Some(8),
            ..observed.clone()
        };
        let s = fold_status(&deployment(), &fresh, &cache, now);
        assert_eq!((s.devices.len(), s.devices_omitted), (100, 9_900));
        let capped = serde_json::to_vec(&s).unwrap().len();
        let (healthy_cache, _) = healthy_fleet(10_000, now);
        let s = fold_status(&deployment(), &observed, &healthy_cache, now);
        let healthy = serde_json::to_vec(&s).unwrap().len();
        println!(
            "status JSON at 10,000 devices: all ready {healthy} B, 50 failed {fifty} B, none at the revision (capped) {capped} B"
        );
        for size in [healthy, fifty, capped] {
            assert!(size < 64 * 1024, "{size} bytes");
        }
        assert!(healthy < fifty);
    }

    /// The golden `HEARTBEAT` vector of `protocol/tests/vectors`: what an
    /// agent of the previous release writes (format version 1).
    const V1_HEARTBEAT: &str =
        "0105302e312e300761617263683634056c696e757805342e332e31901c0380d0dfb4ab33";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn device_warnings_are_a_condition_beside_ready() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(4, now);
        // A device of the previous release: a version-1 heartbeat, read.
        cache.ingest_heartbeat(&device_id(0), &unhex(V1_HEARTBEAT), false, now);
        assert_eq!(
            cache
                .heartbeat(&device_id(0))
                .unwrap()
                .heartbeat
                .uptime_secs,
            3600
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        let cond = |s: &DeploymentStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().clone()
        };
        assert_eq!(s.ready, 4);
        let w = cond(&s, "DeviceWarnings");
        assert_eq!(
            (w.status.as_str(), w.reason),
            ("False", ConditionReason::NoDeviceWarnings)
        );
        // Two devices warn: one runs (counted ready, not listed), one failed.
        let full = "cannot write the desired-state cache in state_dir (No space left on device)";
        cache.ingest_heartbeat(&device_id(1), &heartbeat_warning_bytes(full), false, now);
        cache.ingest_heartbeat(&device_id(3), &heartbeat_warning_bytes("other"), false, now);
        cache.ingest_status(
            &format!("{}.web", device_id(3)),
            &status_bytes(7, Phase::Failed),
            false,
            now,
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.ready, s.failed), (3, 1));
        assert_eq!(cond(&s, "Ready").status, "False", "because of the failure");
        assert_eq!(listed(&s), [("dev-00003", "Failed")]);
        assert_eq!(s.devices[0].warnings, ["other"]);
        assert_accounts_for_all(&s);
        let w = cond(&s, "DeviceWarnings");
        assert_eq!(
            (w.status.as_str(), w.reason),
            ("True", ConditionReason::DevicesWarn)
        );
        assert_eq!(
            w.message,
            format!("2 target(s) warn: dev-00001, dev-00003; dev-00001: {full}")
        );
        // Only the warning left: Ready as before, the warning still shown.
        cache.ingest_status(
            &format!("{}.web", device_id(3)),
            &status_bytes(7, Phase::Running),
            false,
            now,
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            cond(&s, "Ready").status,
            "True",
            "a warning does not unready"
        );
        assert!(s.devices.is_empty());
        assert_eq!(cond(&s, "DeviceWarnings").status, "True");
        // Cleared by the next heartbeat without warnings.
        cache.ingest_heartbeat(&device_id(1), &heartbeat_bytes(), false, now);
        cache.ingest_heartbeat(&device_id(3), &heartbeat_bytes(), false, now);
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(cond(&s, "DeviceWarnings").status, "False");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.to_string().contains("NoDeviceWarnings"));
    }

    #[test]
    fn health_phases_and_reasons_fold_into_counts_entries_and_messages() {
        use protocol::status::{Health, Reason};
        let now = now_ns();
        let (cache, observed) = healthy_fleet(9, now);
        let set = |i: usize, phase, reason, running, health| {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &health_status_bytes(7, phase, reason, running, health, 4),
                false,
                now,
            );
        };
        set(0, Phase::Healthy, Reason::None, None, Some(Health::Healthy));
        set(1, Phase::Healthy, Reason::None, None, None);
        // 2 stays Running: ready, not Healthy.
        set(3, Phase::CrashLoopBackOff, Reason::OOMKilled, None, None);
        set(4, Phase::CrashLoopBackOff, Reason::OOMKilled, None, None);
        set(
            5,
            Phase::Unhealthy,
            Reason::HealthCheckFailed,
            None,
            Some(Health::Unhealthy),
        );
        set(
            6,
            Phase::RolledBack,
            Reason::ProgressDeadlineExceeded,
            Some(6),
            None,
        );
        set(7, Phase::Pulling, Reason::None, None, None);
        set(8, Phase::Failed, Reason::None, None, None);
        assert_eq!(
            health_status_bytes(7, Phase::Healthy, Reason::None, None, None, 0)[0],
            2,
            "what only format version 2 says"
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.healthy, s.failed),
            (9, 9, 3, 2, 2)
        );
        assert_eq!(
            listed(&s),
            [
                ("dev-00006", "RolledBack"),
                ("dev-00008", "Failed"),
                ("dev-00003", "CrashLoopBackOff"),
                ("dev-00004", "CrashLoopBackOff"),
                ("dev-00005", "Unhealthy"),
                ("dev-00007", "Pulling"),
            ]
        );
        assert_accounts_for_all(&s);
        let rolled = &s.devices[0];
        assert_eq!(rolled.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(rolled.revision.as_deref(), Some("0000000000000007"));
        assert_eq!(rolled.running_revision.as_deref(), Some("0000000000000006"));
        assert_eq!(s.devices[2].reason.as_deref(), Some("OOMKilled"));
        assert_eq!(s.devices[4].reason.as_deref(), Some("HealthCheckFailed"));
        assert_eq!(s.devices[1].reason, None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["healthy"], 2);
        assert_eq!(json["devices"][0]["runningRevision"], "0000000000000006");
        assert_eq!(json["devices"][0]["reason"], "ProgressDeadlineExceeded");
        assert!(
            json["devices"][1].get("reason").is_none()
                && json["devices"][1].get("runningRevision").is_none(),
            "absent when the agent gives none: {}",
            json["devices"][1]
        );
        let cond = |s: &DeploymentStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().clone()
        };
        assert_eq!(
            cond(&s, "Ready").message,
            "3/9 targets run the current revision (2 Healthy); 2 devices CrashLoopBackOff (OOMKilled), 1 device Failed, 1 device Pulling, 1 device RolledBack (ProgressDeadlineExceeded), 1 device Unhealthy (HealthCheckFailed)"
        );
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, ConditionReason::TargetsFailed);
        assert_eq!(
            degraded.message,
            "failed: dev-00006, dev-00008; unhealthy: dev-00003, dev-00004, dev-00005; 2 devices CrashLoopBackOff (OOMKilled), 1 device Failed, 1 device RolledBack (ProgressDeadlineExceeded), 1 device Unhealthy (HealthCheckFailed)"
        );

        // Only the crash loops and the failing check are left: Degraded
        // for being unhealthy, not failed.
        for i in [6, 7, 8] {
            set(i, Phase::Healthy, Reason::None, None, None);
        }
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.ready, s.healthy, s.failed), (6, 5, 0));
        let degraded = cond(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason),
            ("True", ConditionReason::TargetsUnhealthy)
        );
        assert_eq!(
            degraded.message,
            "unhealthy: dev-00003, dev-00004, dev-00005; 2 devices CrashLoopBackOff (OOMKilled), 1 device Unhealthy (HealthCheckFailed)"
        );
        assert_eq!(
            cond(&s, "Progressing").status,
            "False",
            "every target reported"
        );

        // Silent since: Unreachable, the reason kept with the last phase.
        let minute = 60_000_000_000i128;
        cache.ingest_heartbeat(&device_id(3), &heartbeat_bytes(), false, now - 5 * minute);
        let s = fold_status(&deployment(), &observed, &cache, now);
        let e = s.devices.iter().find(|d| d.device == "dev-00003").unwrap();
        assert_eq!(
            (e.phase, e.reason.as_deref()),
            (DevicePhase::Unreachable, None)
        );
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .ends_with("(last phase: CrashLoopBackOff (OOMKilled))"),
            "{e:?}"
        );
        assert_eq!(
            cond(&s, "Degraded").message,
            "unhealthy: dev-00004, dev-00005; unreachable: dev-00003; 1 device CrashLoopBackOff (OOMKilled), 1 device Unhealthy (HealthCheckFailed)"
        );
    }

    #[test]
    fn breakdown_counts_most_frequent_first_and_caps() {
        let labels = ["b", "a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(
            breakdown(labels.into_iter()),
            "2 devices b, 1 device a, 1 device c, 1 device d, 1 device e and 2 more"
        );
        assert_eq!(breakdown(std::iter::empty()), "");
    }

    #[test]
    fn held_back_targets_show_unsupported_and_count_as_failed() {
        let now = now_ns();
        let (cache, mut observed) = healthy_fleet(3, now);
        let reason = "held back: agent 0.1.0 reads ...; update the agent on this device";
        observed.held.insert(device_id(1), reason.to_string());
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.targeted, s.ready, s.failed), (3, 2, 1));
        assert_eq!(listed(&s), [("dev-00001", "Unsupported")]);
        assert_eq!(s.devices[0].message.as_deref(), Some(reason));
        // What it still runs: the revision it last reported.
        assert_eq!(s.devices[0].revision.as_deref(), Some("0000000000000007"));
        let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!(degraded.reason, ConditionReason::TargetsFailed);
        assert!(
            degraded.message.contains("failed: dev-00001"),
            "{degraded:?}"
        );
        assert_accounts_for_all(&s);
    }

    #[test]
    fn kept_targets_show_their_report_and_why_and_are_not_failed() {
        let now = now_ns();
        let (cache, mut observed) = healthy_fleet(3, now);
        let reason = "Device dev-00001: spec.maintenance.windows[0].timeZone: \"Mars/Olympus\" is not an IANA time zone; the device's keys keep what they hold until it is fixed";
        observed.kept.insert(device_id(1), reason.to_string());
        // dev-00001 still runs the revision before: its key is not written.
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.targeted, s.ready, s.failed), (3, 3, 0));
        let warn = s
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::DEVICE_WARNINGS)
            .unwrap();
        assert_eq!(warn.status, "True");
        assert!(warn.message.contains(reason), "{warn:?}");
        let older = Observed {
            revision: Some(8),
            ..observed.clone()
        };
        let s = fold_status(&deployment(), &older, &cache, now);
        assert_eq!(s.failed, 0);
        let entry = s.devices.iter().find(|e| e.device == device_id(1)).unwrap();
        assert_eq!(entry.phase, DevicePhase::Running, "what it reports");
        assert_eq!(entry.revision.as_deref(), Some("0000000000000007"));
        assert!(
            entry.message.as_deref().unwrap().starts_with(reason),
            "{entry:?}"
        );
        assert_accounts_for_all(&s);
    }

    /// 2026-12-06T09:03:11Z and 2026-12-07T01:00:00Z, in ms.
    const SINCE_MS: u64 = 1_796_547_791_000;
    const UNTIL_MS: u64 = 1_796_605_200_000;

    #[test]
    fn waiting_devices_are_listed_counted_and_explained() {
        use protocol::status::Reason;
        let now = now_ns();
        let (cache, observed) = healthy_fleet(5, now);
        let put = |i: usize, bytes: Vec<u8>| {
            cache.ingest_status(&format!("{}.web", device_id(i)), &bytes, false, now);
        };
        put(
            1,
            waiting_status_bytes(
                7,
                Phase::Waiting,
                Reason::UpdateLocked,
                Some(6),
                SINCE_MS,
                None,
            ),
        );
        put(
            2,
            waiting_status_bytes(
                7,
                Phase::Waiting,
                Reason::OutsideMaintenanceWindow,
                Some(6),
                SINCE_MS,
                Some(UNTIL_MS),
            ),
        );
        put(
            3,
            waiting_status_bytes(
                7,
                Phase::Failed,
                Reason::UpdateLockTimeout,
                Some(6),
                SINCE_MS,
                None,
            ),
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.failed, s.waiting),
            (5, 3, 2, 1, 2),
            "waiting devices do not run the revision yet: not up to date, not failed"
        );
        assert_eq!(
            listed(&s),
            [
                ("dev-00003", "Failed"),
                ("dev-00001", "Waiting"),
                ("dev-00002", "Waiting"),
            ]
        );
        assert_accounts_for_all(&s);
        let locked = &s.devices[1];
        assert_eq!(locked.reason.as_deref(), Some("UpdateLocked"));
        assert_eq!(locked.revision.as_deref(), Some("0000000000000007"));
        assert_eq!(locked.running_revision.as_deref(), Some("0000000000000006"));
        assert_eq!(
            locked.waiting_since.as_deref(),
            Some("2026-12-06T09:03:11Z")
        );
        assert_eq!(locked.waiting_until, None);
        assert_eq!(
            locked.message.as_deref(),
            Some("update lock held by pid 4242 (kiosk); images pulled")
        );
        let window = &s.devices[2];
        assert_eq!(window.reason.as_deref(), Some("OutsideMaintenanceWindow"));
        assert_eq!(
            window.waiting_until.as_deref(),
            Some("2026-12-07T01:00:00Z")
        );
        let timeout = &s.devices[0];
        assert_eq!(timeout.reason.as_deref(), Some("UpdateLockTimeout"));
        assert_eq!(
            timeout.waiting_since.as_deref(),
            Some("2026-12-06T09:03:11Z")
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["waiting"], 2);
        assert_eq!(json["devices"][1]["waitingSince"], "2026-12-06T09:03:11Z");
        assert!(json["devices"][1].get("waitingUntil").is_none());
        assert_eq!(json["devices"][2]["waitingUntil"], "2026-12-07T01:00:00Z");

        let cond = |s: &DeploymentStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().clone()
        };
        let progressing = cond(&s, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason),
            ("True", ConditionReason::RollingOut)
        );
        assert_eq!(
            progressing.message,
            "3/5 targets report the current revision; 2 devices waiting: 1 OutsideMaintenanceWindow (until 2026-12-07T01:00:00Z), 1 UpdateLocked (since 2026-12-06T09:03:11Z)"
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").message,
            "2/5 targets run the current revision; 1 device Failed (UpdateLockTimeout), 1 device Waiting (OutsideMaintenanceWindow), 1 device Waiting (UpdateLocked)"
        );
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, ConditionReason::TargetsFailed);
        assert_eq!(
            degraded.message, "failed: dev-00003; 1 device Failed (UpdateLockTimeout)",
            "waiting is not degraded"
        );

        // Only waiting: Progressing, not Ready, not Degraded.
        put(3, status_bytes(7, Phase::Healthy));
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.up_to_date, s.ready, s.failed, s.waiting), (3, 3, 0, 2));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");

        // Silent since: Unreachable, still counted as waiting.
        let minute = 60_000_000_000i128;
        cache.ingest_heartbeat(&device_id(1), &heartbeat_bytes(), false, now - 5 * minute);
        let s = fold_status(&deployment(), &observed, &cache, now);
        let e = s.devices.iter().find(|d| d.device == "dev-00001").unwrap();
        assert_eq!(
            (e.phase, e.waiting_since.as_deref()),
            (DevicePhase::Unreachable, None)
        );
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .ends_with("(last phase: Waiting (UpdateLocked))"),
            "{e:?}"
        );
        assert_eq!(s.waiting, 2);

        // Both apply: nothing waits any more.
        cache.ingest_heartbeat(&device_id(1), &heartbeat_bytes(), false, now);
        put(1, status_bytes(7, Phase::Healthy));
        put(2, status_bytes(7, Phase::Healthy));
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.up_to_date, s.ready, s.waiting), (5, 5, 0));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            cond(&s, "Progressing").message,
            "5/5 targets report the current revision"
        );
        // Waiting at an older revision is only outdated.
        put(
            4,
            waiting_status_bytes(
                6,
                Phase::Waiting,
                Reason::UpdateLocked,
                Some(5),
                SINCE_MS,
                None,
            ),
        );
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.up_to_date, s.waiting), (4, 0));
        assert_eq!(listed(&s), [("dev-00004", "Waiting")]);
    }

    #[test]
    fn the_waiting_summary_groups_by_reason() {
        let w = |reason, since_ms, until_ms| Wait {
            reason,
            since_ms: Some(since_ms),
            until_ms,
        };
        let hour = 3_600_000;
        let waits = [
            w("OutsideMaintenanceWindow", SINCE_MS, Some(UNTIL_MS)),
            w("UpdateLocked", SINCE_MS + hour, None),
            w("OutsideMaintenanceWindow", SINCE_MS, Some(UNTIL_MS - hour)),
            w("UpdateLocked", SINCE_MS, None),
            w("UpdateLocked", SINCE_MS + 2 * hour, None),
            w("ClockNotSynchronized", SINCE_MS, None),
        ];
        assert_eq!(
            waiting_summary(&waits).unwrap(),
            "6 devices waiting: 3 UpdateLocked (the longest since 2026-12-06T09:03:11Z), 2 OutsideMaintenanceWindow (the last until 2026-12-07T01:00:00Z), 1 ClockNotSynchronized (since 2026-12-06T09:03:11Z)"
        );
        assert_eq!(waiting_summary(&[]), None);
        let bare = Wait {
            reason: "",
            since_ms: None,
            until_ms: None,
        };
        assert_eq!(
            waiting_summary(&[bare]).unwrap(),
            "1 device waiting: 1 no reason given"
        );
    }

    #[test]
    fn keeps_transition_times_while_status_holds() {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let t0 = now_ns();
        let mut d = deployment();
        let observed = Observed {
            revision: Some(1),
            targets: vec!["a".into()],
            ..Default::default()
        };
        let first = fold_status(&d, &observed, &cache, t0);
        d.status = Some(first.clone());
        let later = t0 + 3_600_000_000_000;
        let second = fold_status(&d, &observed, &cache, later);
        assert_eq!(first, second, "nothing changed, so nothing may churn");
        cache.ingest_status("a.web", &status_bytes(1, Phase::Running), false, later);
        let third = fold_status(&d, &observed, &cache, later);
        let ready = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, rfc3339(later));
    }
}
