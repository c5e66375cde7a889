//! What a reconciler reports: the status of a pass, from what it observed
//! of each of the score's containers ([`super::observe`]).

use std::time::{Duration, Instant};

use protocol::status::clip_message;
use protocol::{
    BoundedVec, ContainerState, ContainerStatus, DeploymentStatus, Health, Phase, Reason, Text,
};

use super::{Context, Outcome, now_ms};

/// Sends a status report for `deployment`.
pub(super) fn report<R>(ctx: &Context<R>, deployment: &str, status: DeploymentStatus<'static>) {
    let _ = ctx.status.send((deployment.to_string(), status));
}

/// A status without per-container state.
pub(super) fn simple_status(
    revision: u64,
    phase: Phase,
    message: &str,
) -> DeploymentStatus<'static> {
    DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::owned(clip_message(message).to_string()),
        timestamp_ms: now_ms(),
        reason: Reason::None,
        running_revision: None,
        waiting: None,
    }
}

/// Podman's state names as the wire's.
pub(super) fn map_state(s: &str) -> ContainerState {
    match s {
        "running" => ContainerState::Running,
        "created" | "configured" | "initialized" => ContainerState::Created,
        "paused" => ContainerState::Paused,
        "restarting" => ContainerState::Restarting,
        "exited" | "stopped" | "stopping" => ContainerState::Exited,
        "dead" | "removing" => ContainerState::Dead,
        _ => ContainerState::Unknown,
    }
}

/// One container as a pass left it.
#[derive(Debug)]
pub(super) struct Observed {
    /// Its status.
    pub status: ContainerStatus<'static>,
    /// It exited with an error and is not restarted, or is dead: why.
    pub crashed: Option<(String, Reason)>,
    /// It could not be inspected or restarted: why.
    pub failure: Option<(String, Reason)>,
    /// Its restart is due then; with the status message.
    pub waiting: Option<(Instant, String)>,
    /// Its check says it is unhealthy: the status message.
    pub unhealthy: Option<String>,
    /// It exited 0 and does not run again.
    pub completed: bool,
    /// The pass wants another then.
    pub wake_at: Option<Instant>,
}

impl Observed {
    /// A container seen in `state`, nothing more to say.
    pub fn plain(status: ContainerStatus<'static>) -> Observed {
        Observed {
            status,
            crashed: None,
            failure: None,
            waiting: None,
            unhealthy: None,
            completed: false,
            wake_at: None,
        }
    }
}

/// What a pass reports, and when it wants to run again.
pub(super) struct PassStatus {
    /// The status.
    pub status: DeploymentStatus<'static>,
    /// Settled, or retry after the reconciler's back-off.
    pub outcome: Outcome,
    /// A restart or the end of `minHealthySeconds` is due then.
    pub wake_at: Option<Instant>,
}

/// How long a deployment has been healthy, across passes.
pub(super) struct Hold<'a> {
    /// Since when every container runs, passes its check and did not
    /// restart (kept across passes).
    pub since: &'a mut Option<Instant>,
    /// How long that must hold: `minHealthySeconds`.
    pub min: Duration,
    /// A container restarted since the last pass: the hold starts over,
    /// and this pass is not `Healthy` whatever `min` is.
    pub restarted: bool,
    /// Not `Healthy` before then, whatever `min` is: [`AFTER_RESTART`]
    /// after the last restart (kept across passes).
    pub not_before: &'a mut Option<Instant>,
}

/// How long after a restart the deployment is not `Healthy`, even with
/// `minHealthySeconds` 0: Podman may say a process that exits at once
/// runs for a moment after its start, and a pass then would call a crash
/// loop healthy.
const AFTER_RESTART: Duration = Duration::from_secs(1);

/// The status of a pass at `revision` over its containers. `failure` is
/// the first error of the pass, if any; it makes the status Failed and the
/// pass retry. `Healthy` once every container is and `hold` says that
/// held long enough.
pub(super) fn of_pass(
    revision: u64,
    observed: Vec<Observed>,
    mut failure: Option<(String, Reason)>,
    hold: Hold<'_>,
    now: Instant,
) -> PassStatus {
    let Hold {
        since: healthy_since,
        min: min_healthy,
        restarted,
        not_before,
    } = hold;
    if restarted {
        *not_before = Some(now + AFTER_RESTART);
    }
    let mut statuses = BoundedVec::new();
    let mut all_running = !observed.is_empty();
    let mut all_healthy = true;
    let mut all_completed = true;
    let mut crashed = None;
    let mut waiting: Option<(String, Reason)> = None;
    let mut unhealthy = None;
    let mut wake_at: Option<Instant> = None;
    for o in observed {
        if let Some(f) = o.failure {
            failure.get_or_insert(f);
        }
        if let Some(c) = o.crashed {
            crashed.get_or_insert(c);
        }
        if let Some((until, message)) = o.waiting {
            wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
            waiting.get_or_insert((message, o.status.reason));
        }
        if let Some(u) = o.unhealthy {
            unhealthy.get_or_insert(u);
        }
        if let Some(at) = o.wake_at {
            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        }
        let s = o.status;
        all_running &= s.state == ContainerState::Running;
        all_healthy &= matches!(s.health, None | Some(Health::Healthy));
        all_completed &= o.completed;
        let _ = statuses.push(s);
    }
    let mut outcome = Outcome::Settled;
    let healthy = failure.is_none() && all_running && all_healthy;
    if !healthy || restarted {
        *healthy_since = None;
    }
    let (phase, (message, reason)) = if let Some(f) = failure {
        outcome = Outcome::Retry;
        (Phase::Failed, f)
    } else if let Some(w) = waiting {
        (Phase::CrashLoopBackOff, w)
    } else if let Some(c) = crashed {
        (Phase::Failed, c)
    } else if let Some(u) = unhealthy {
        (Phase::Unhealthy, (u, Reason::HealthCheckFailed))
    } else if healthy {
        let since = *healthy_since.get_or_insert(now);
        let until = (since + min_healthy).max(not_before.unwrap_or(since));
        if now >= until {
            (Phase::Healthy, (String::new(), Reason::None))
        } else {
            wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
            (Phase::Running, (String::new(), Reason::None))
        }
    } else if all_running {
        (Phase::Running, (String::new(), Reason::None))
    } else if all_completed {
        (Phase::Completed, (String::new(), Reason::None))
    } else {
        // Restarting or just exited: the next runtime event brings news.
        (Phase::Starting, (String::new(), Reason::None))
    };
    PassStatus {
        status: DeploymentStatus {
            revision,
            phase,
            containers: statuses,
            message: Text::owned(clip_message(&message).to_string()),
            timestamp_ms: now_ms(),
            reason,
            running_revision: None,
            waiting: None,
        },
        outcome,
        wake_at,
    }
}
