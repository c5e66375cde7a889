//! What a pass finds of each container once they are brought up, and what
//! it does about it: restarts by the agent with back-off ([`restart`]),
//! health checks ([`checks`]), and each container's status.
//!
//! [`restart`]: super::restart
//! [`checks`]: super::checks

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::{ContainerState, ContainerStatus, Health, Reason, RestartPolicy};

use super::Context;
use super::checks::{Checks, wire_health};
use super::restart::{LastExit, Restarts, Step, since_finished};
use super::spec::{Wanted, stop_timeout};
use super::status::{Observed, map_state};
use crate::log::Chain;
use crate::oom::OomKills;
use crate::podman::{ContainerInfo, Runtime};

/// What the reconciler keeps of its containers between passes.
#[derive(Debug)]
pub(super) struct Containers {
    /// The agent's restarts, by container name in the score.
    pub restarts: BTreeMap<String, Restarts>,
    /// The running health checks.
    pub checks: Checks,
    /// The kernel's word on `SIGKILL` deaths (Podman 4 never says OOM).
    pub oom: OomKills,
    /// When the reconciler started: a container that exited before was
    /// not seen run by it (an agent restart).
    pub born: Instant,
}

impl Containers {
    /// Forgets the containers not in `keep` (name -> id).
    pub fn retain(&mut self, keep: &BTreeMap<String, String>) {
        self.restarts
            .retain(|name, r| keep.get(name).is_some_and(|id| *id == r.id));
        self.checks.retain(|name| keep.contains_key(name));
        self.oom.retain(|id| keep.values().any(|k| k == id));
    }

    /// A failed check asks for `name` to be restarted.
    pub fn restart_for_health(&mut self, name: &str) {
        if let Some(r) = self.restarts.get_mut(name) {
            r.health_restart = true;
        }
    }
}

/// Observes `w`, running as `id` when this pass brought it up, at `now`.
pub(super) async fn container<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    w: &Wanted<'_>,
    id: Option<&String>,
    mem: &mut Containers,
    now: Instant,
) -> Observed {
    let name = w.c.name.as_str();
    let status = |state, exit_code, restart_count| ContainerStatus {
        name: w.c.name.clone().into_owned(),
        state,
        exit_code,
        restart_count,
        health: None,
        reason: Reason::None,
    };
    let Some(id) = id else {
        mem.checks.stop(name);
        return Observed::plain(status(ContainerState::Missing, None, 0));
    };
    let mut info = match ctx.runtime.inspect(id).await {
        Ok(info) => info,
        Err(e) => {
            let mut o = Observed::plain(status(ContainerState::Unknown, None, 0));
            o.failure = Some((format!("inspecting {name}: {}", Chain(&e)), Reason::Error));
            return o;
        }
    };
    // Killed by SIGKILL and Podman does not say OOM: Podman 4 never does
    // (podman #13102); the kernel's log tells, once per death.
    if map_state(&info.status) == ContainerState::Exited
        && info.exit_code == 137
        && !info.oom_killed
    {
        info.oom_killed = mem.oom.killed(id, &info.finished_at);
    }
    if !w.agent_restarts {
        return podman_restarted(w, &info, status);
    }
    if mem.restarts.get(name).is_none_or(|r| r.id != *id) {
        mem.restarts
            .insert(name.to_string(), first_seen(ctx, id, &info, mem.born, now));
    }
    let Some(entry) = mem.restarts.get_mut(name) else {
        return Observed::plain(status(ContainerState::Unknown, None, 0));
    };
    agent_restarted(ctx, deployment, w, id, info, entry, &mut mem.checks, now).await
}

/// The restarts of container `id`, first seen at `now` as `info` says.
/// One that exited before the reconciler started (`born`) waits its
/// back-off from its exit: an agent restart does not restart it at once.
fn first_seen<R>(
    ctx: &Context<R>,
    id: &str,
    info: &ContainerInfo,
    born: Instant,
    now: Instant,
) -> Restarts {
    if map_state(&info.status) == ContainerState::Exited
        && let Some(ago) = since_finished(&info.finished_at)
        && ago >= now.saturating_duration_since(born)
    {
        return Restarts::seen_exited(id, now, Some(ago), &ctx.restart_backoff);
    }
    Restarts::new(id, now)
}

/// A container Podman restarts (`PodmanV0`): its state as Podman says.
fn podman_restarted(
    w: &Wanted<'_>,
    info: &ContainerInfo,
    status: impl Fn(ContainerState, Option<i32>, u32) -> ContainerStatus<'static>,
) -> Observed {
    let name = w.c.name.as_str();
    let state = map_state(&info.status);
    let exit =
        matches!(state, ContainerState::Exited | ContainerState::Dead).then_some(info.exit_code);
    let mut o = Observed::plain(status(state, exit, info.restart_count));
    let restarted = w.c.restart_policy == RestartPolicy::Always;
    if state == ContainerState::Exited && info.exit_code != 0 && !restarted {
        o.crashed = Some(exit_message(name, info));
        o.status.reason = o.crashed.as_ref().map_or(Reason::None, |c| c.1);
    } else if state == ContainerState::Dead {
        o.crashed = Some((
            format!("container {name} is dead: {}", info.error),
            Reason::Error,
        ));
        o.status.reason = Reason::Error;
    }
    o.completed = state == ContainerState::Exited && info.exit_code == 0 && !restarted;
    o
}

/// "container NAME exited with code N", and the reason: `OOMKilled` or
/// `Error`.
fn exit_message(name: &str, info: &ContainerInfo) -> (String, Reason) {
    let oom = if info.oom_killed {
        " (out of memory)"
    } else {
        ""
    };
    (
        format!("container {name} exited with code {}{oom}", info.exit_code),
        if info.oom_killed {
            Reason::OOMKilled
        } else {
            Reason::Error
        },
    )
}

/// A container the agent restarts (`PodmanV1`): restarts it when its
/// restart policy (or a failed check) says so and its back-off allows,
/// checks it while it runs.
#[allow(clippy::too_many_arguments)]
async fn agent_restarted<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    w: &Wanted<'_>,
    id: &str,
    mut info: ContainerInfo,
    entry: &mut Restarts,
    checks: &mut Checks,
    now: Instant,
) -> Observed {
    let name = w.c.name.as_str();
    let mut failure = None;
    let mut wake_at = None;
    // A failed check asked for a restart: once the status said Unhealthy
    // (a pass right away), stop it; it is then restarted as after any
    // exit, whatever its restart policy.
    let running = map_state(&info.status) == ContainerState::Running;
    if entry.health_restart && running && !entry.health_reported {
        entry.health_reported = true;
        wake_at = Some(now);
    } else if entry.health_restart && running {
        crate::info!("{deployment}: {name} failed its health check; restarting it");
        checks.stop(name);
        if let Err(e) = ctx.runtime.stop(id, stop_timeout(ctx, &w.c)).await {
            failure = Some((
                format!("stopping {name} after a failed health check: {}", Chain(&e)),
                Reason::Error,
            ));
        }
        match ctx.runtime.inspect(id).await {
            Ok(i) => info = i,
            Err(e) => {
                failure.get_or_insert((format!("inspecting {name}: {}", Chain(&e)), Reason::Error));
            }
        }
    }
    let mut state = map_state(&info.status);
    let mut waiting = None;
    // Started in this pass: an exit seen right after is the next pass's
    // (its `died` event runs it), not a crash.
    let mut just_started = false;
    let code = info.exit_code;
    match state {
        ContainerState::Running => entry.running(now),
        ContainerState::Exited => {
            let again = entry.health_restart
                || match w.c.restart_policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => code != 0,
                    RestartPolicy::Never => false,
                };
            if again {
                let reason = if info.oom_killed {
                    Reason::OOMKilled
                } else if entry.health_restart {
                    Reason::HealthCheckFailed
                } else {
                    Reason::CrashLoopBackOff
                };
                match entry.exited(now, LastExit { code, reason }, &ctx.restart_backoff) {
                    Step::Start => match ctx.runtime.start(id).await {
                        Ok(()) => {
                            entry.started(now, &ctx.restart_backoff);
                            crate::info!(
                                "{deployment}: restarted {name} (restart {})",
                                entry.count
                            );
                            just_started = true;
                            if let Ok(i) = ctx.runtime.inspect(id).await {
                                info = i;
                                state = map_state(&info.status);
                            }
                        }
                        Err(e) => {
                            let until = entry.start_failed(now, &ctx.restart_backoff);
                            failure.get_or_insert((
                                format!("restarting {name}: {}", Chain(&e)),
                                Reason::Error,
                            ));
                            waiting = Some(until);
                        }
                    },
                    Step::WaitUntil(until) => waiting = Some(until),
                }
            }
        }
        _ => {}
    }
    if state == ContainerState::Running && waiting.is_none() {
        checks.ensure(ctx, w, id, entry.since, &info);
    } else {
        checks.stop(name);
    }
    let last = entry.last_exit;
    let exit_code = match state {
        ContainerState::Exited | ContainerState::Dead => Some(code),
        _ => last.map(|e| e.code),
    };
    let mut o = Observed::plain(ContainerStatus {
        name: w.c.name.clone().into_owned(),
        state: if waiting.is_some() {
            ContainerState::Waiting
        } else {
            state
        },
        exit_code,
        restart_count: entry.count,
        health: None,
        reason: Reason::None,
    });
    o.failure = failure;
    o.wake_at = wake_at;
    if let Some(until) = waiting {
        let reason = last.map_or(Reason::CrashLoopBackOff, |e| e.reason);
        o.status.reason = reason;
        o.waiting = Some((
            until,
            format!(
                "back-off {}s restarting container {name} ({}, exit code {code})",
                entry.backoff().map_or(0, |d| d.as_secs()),
                reason.as_str()
            ),
        ));
    } else if state == ContainerState::Exited && just_started {
        // Reported as it is; the phase says Starting until the next pass.
    } else if state == ContainerState::Exited {
        if code != 0 {
            let crash = exit_message(name, &info);
            o.status.reason = crash.1;
            o.crashed = Some(crash);
        } else {
            o.completed = true;
        }
    } else if state == ContainerState::Dead {
        o.crashed = Some((
            format!("container {name} is dead: {}", info.error),
            Reason::Error,
        ));
        o.status.reason = Reason::Error;
    }
    if w.c.health_check.is_some() {
        let health = match state {
            ContainerState::Running if waiting.is_none() => {
                checks.health(name).map(|(h, why)| (wire_health(h), why))
            }
            ContainerState::Exited | ContainerState::Dead => Some((Health::Unhealthy, None)),
            _ => Some((Health::Starting, None)),
        };
        o.status.health = Some(health.map_or(Health::Starting, |h| h.0));
        if let Some((Health::Unhealthy, why)) = health
            && state == ContainerState::Running
        {
            o.unhealthy = Some(format!(
                "container {name}: health check failed: {}",
                why.unwrap_or("no reason given")
            ));
            o.status.reason = Reason::HealthCheckFailed;
        }
    }
    o
}
