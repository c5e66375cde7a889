//! What a reconciler reports: the status of a pass, from the state of each
//! of the score's containers.

use std::collections::BTreeMap;

use protocol::status::clip_message;
use protocol::{
    BoundedVec, Container, ContainerState, ContainerStatus, DeploymentStatus, Phase, Reason,
    RestartPolicy, Text,
};

use super::{Context, Outcome, now_ms};
use crate::log::Chain;
use crate::podman::Runtime;

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

/// One container as inspected after a pass.
struct Inspected {
    status: ContainerStatus<'static>,
    /// Why the container counts as crashed: it exited with an error where
    /// it is not restarted, or is dead.
    crashed: Option<String>,
    /// Why it could not be inspected.
    failure: Option<String>,
}

/// The status of a pass at `revision` over the score's `containers` (with
/// the ids this pass brought up), and whether to retry. `failure` is the
/// first error of the pass, if any; it makes the status Failed and the
/// pass retry.
pub(super) async fn of_pass<R: Runtime>(
    ctx: &Context<R>,
    revision: u64,
    containers: &[Container<'_>],
    ids: &BTreeMap<String, String>,
    mut failure: Option<String>,
) -> (DeploymentStatus<'static>, Outcome) {
    let mut statuses = BoundedVec::new();
    let mut all_running = true;
    let mut all_completed = true;
    let mut crashed: Option<String> = None;
    for c in containers {
        let inspected = inspect(ctx, c, ids.get(c.name.as_str())).await;
        if let Some(msg) = inspected.failure {
            failure.get_or_insert(msg);
        }
        if let Some(msg) = inspected.crashed {
            crashed.get_or_insert(msg);
        }
        let s = inspected.status;
        all_running &= s.state == ContainerState::Running;
        all_completed &= s.state == ContainerState::Exited
            && s.exit_code == Some(0)
            && c.restart_policy != RestartPolicy::Always;
        let _ = statuses.push(s);
    }
    let (phase, message, outcome) = if let Some(msg) = failure {
        (Phase::Failed, msg, Outcome::Retry)
    } else if let Some(msg) = crashed {
        (Phase::Failed, msg, Outcome::Settled)
    } else if all_running {
        (Phase::Running, String::new(), Outcome::Settled)
    } else if all_completed {
        (Phase::Completed, String::new(), Outcome::Settled)
    } else {
        // Restarting or just exited: the next runtime event brings news.
        (Phase::Starting, String::new(), Outcome::Settled)
    };
    let status = DeploymentStatus {
        revision,
        phase,
        containers: statuses,
        message: Text::owned(clip_message(&message).to_string()),
        timestamp_ms: now_ms(),
        reason: Reason::None,
        running_revision: None,
    };
    (status, outcome)
}

/// The state of `c`, running as `id` when this pass brought it up.
async fn inspect<R: Runtime>(
    ctx: &Context<R>,
    c: &Container<'_>,
    id: Option<&String>,
) -> Inspected {
    let status = |state, exit_code, restart_count| ContainerStatus {
        name: c.name.clone().into_owned(),
        state,
        exit_code,
        restart_count,
        health: None,
        reason: Reason::None,
    };
    let Some(id) = id else {
        return Inspected {
            status: status(ContainerState::Missing, None, 0),
            crashed: None,
            failure: None,
        };
    };
    let info = match ctx.runtime.inspect(id).await {
        Ok(info) => info,
        Err(e) => {
            return Inspected {
                status: status(ContainerState::Unknown, None, 0),
                crashed: None,
                failure: Some(format!("inspecting {}: {}", c.name.as_str(), Chain(&e))),
            };
        }
    };
    let state = map_state(&info.status);
    let exit =
        matches!(state, ContainerState::Exited | ContainerState::Dead).then_some(info.exit_code);
    let crashed = if state == ContainerState::Exited
        && info.exit_code != 0
        && c.restart_policy != RestartPolicy::Always
    {
        Some(format!(
            "container {} exited with code {}{}",
            c.name.as_str(),
            info.exit_code,
            if info.oom_killed {
                " (out of memory)"
            } else {
                ""
            }
        ))
    } else if state == ContainerState::Dead {
        Some(format!(
            "container {} is dead: {}",
            c.name.as_str(),
            info.error
        ))
    } else {
        None
    };
    Inspected {
        status: status(state, exit, info.restart_count),
        crashed,
        failure: None,
    }
}
