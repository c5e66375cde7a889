//! One deployment's reconciler: makes the runtime's containers match the
//! deployment's desired state, reports status, and retries failures with
//! back-off until a newer desired state (or a delete) arrives.
//!
//! Level-triggered: every pass lists what exists and recomputes what to do,
//! so a crash at any point is repaired by the next pass, and a container
//! whose spec hash is unchanged is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::ReplaceOrder;
use crate::podman::{CreateSpec, ManagedContainer, MountSpec, PortSpec, Runtime, labels};
use crate::policy::Allowances;
use protocol::status::clip_message;
use protocol::{
    BoundedVec, Container, ContainerState, ContainerStatus, DeploymentStatus, DesiredState,
    IotScore, Phase, PortProtocol, PullPolicy, RestartPolicy, ScoreError, Text,
};

/// What a deployment's reconciler is asked to reach.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The raw desired-state value; `None` once the deployment is deleted.
    pub value: Option<Bytes>,
    /// Bumped to ask for a fresh pass (a runtime event, a resync).
    pub nudge: u64,
}

/// A status report for the status writer.
pub type StatusReport = (String, DeploymentStatus<'static>);

/// What every reconciler shares.
pub struct Context<R> {
    /// The container runtime.
    pub runtime: Rc<R>,
    /// This device's id.
    pub device_id: String,
    /// Seconds between SIGTERM and SIGKILL when stopping containers.
    pub stop_timeout_secs: u64,
    /// Whether replacements start before or after the old container stops.
    pub replace_order: ReplaceOrder,
    /// This device's security policy: what scores may ask of the host
    /// beyond the Pod Security Baseline (see [`crate::policy`]).
    pub policy: Allowances,
    /// Where status reports go.
    pub status: mpsc::UnboundedSender<StatusReport>,
    /// First and largest retry delay.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_cap: Duration,
}

/// Milliseconds since the Unix epoch (device clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a pass ended.
enum Outcome {
    /// Nothing more to do until something changes.
    Settled,
    /// A transient failure: try again after a back-off.
    Retry,
}

/// What a reconciler remembers from one pass to the next.
#[derive(Debug, Default)]
struct Memory {
    /// The revision of the last desired state decoded. A removal reports
    /// it: a container's label keeps the revision that created it, which
    /// may be older, and nothing is left to read once the containers are
    /// gone.
    revision: u64,
    /// Whether `Removed` was reported since the deployment was deleted.
    /// The removal's own runtime events nudge the reconciler again, and
    /// those passes find nothing left and have nothing new to say.
    removed: bool,
}

/// Runs one deployment's reconciler until the target channel closes.
pub async fn run<R: Runtime>(
    ctx: Rc<Context<R>>,
    deployment: String,
    mut rx: watch::Receiver<Target>,
) {
    let mut backoff = Backoff::new(ctx.retry_base, ctx.retry_cap);
    let mut last_value: Option<Bytes> = None;
    let mut memory = Memory::default();
    loop {
        let target = rx.borrow_and_update().clone();
        if target.value != last_value {
            backoff.reset();
            last_value = target.value.clone();
        }
        let outcome = match &target.value {
            Some(value) => apply(&ctx, &deployment, value, &mut memory).await,
            None => remove(&ctx, &deployment, &mut memory).await,
        };
        match outcome {
            Outcome::Settled => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            Outcome::Retry => {
                let delay = backoff.next_delay();
                crate::debug!("{deployment}: retrying in {delay:?}");
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn report<R>(ctx: &Context<R>, deployment: &str, status: DeploymentStatus<'static>) {
    let _ = ctx.status.send((deployment.to_string(), status));
}

fn simple_status(revision: u64, phase: Phase, message: &str) -> DeploymentStatus<'static> {
    DeploymentStatus {
        revision,
        phase,
        containers: BoundedVec::new(),
        message: Text::owned(clip_message(message).to_string()),
        timestamp_ms: now_ms(),
    }
}

/// Removes every container of a deleted deployment and reports `Removed`
/// at its last known revision, once.
async fn remove<R: Runtime>(ctx: &Context<R>, deployment: &str, memory: &mut Memory) -> Outcome {
    let existing = match list_deployment(ctx, deployment).await {
        Ok(c) => c,
        Err(e) => {
            crate::warn!("{deployment}: cannot list containers to remove: {e}");
            return Outcome::Retry;
        }
    };
    if existing.is_empty() && memory.removed {
        return Outcome::Settled;
    }
    // A reconciler started after the delete (an agent restart) knows only
    // the labels.
    let revision = existing
        .iter()
        .filter_map(|c| c.label(labels::REVISION).parse::<u64>().ok())
        .fold(memory.revision, u64::max);
    memory.revision = revision;
    for c in &existing {
        if let Err(e) = ctx.runtime.remove(&c.id, ctx.stop_timeout_secs).await {
            crate::warn!("{deployment}: cannot remove {}: {e}", c.name);
            report(
                ctx,
                deployment,
                simple_status(
                    revision,
                    Phase::Failed,
                    &format!("removing {}: {e}", c.name),
                ),
            );
            return Outcome::Retry;
        }
        crate::info!("{deployment}: removed {}", c.name);
    }
    report(ctx, deployment, simple_status(revision, Phase::Removed, ""));
    memory.removed = true;
    Outcome::Settled
}

async fn list_deployment<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
) -> Result<Vec<ManagedContainer>, crate::podman::RuntimeError> {
    Ok(ctx
        .runtime
        .list_managed(&ctx.device_id)
        .await?
        .into_iter()
        .filter(|c| c.label(labels::DEPLOYMENT) == deployment)
        .collect())
}

/// Applies a desired-state value.
async fn apply<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    value: &[u8],
    memory: &mut Memory,
) -> Outcome {
    memory.removed = false;
    let desired = match protocol::wire::decode::<DesiredState<'_>>(value) {
        Ok(d) => d,
        Err(e) => {
            crate::warn!("{deployment}: undecodable desired state: {e}");
            report(
                ctx,
                deployment,
                simple_status(
                    0,
                    Phase::Failed,
                    &format!("cannot decode the desired state: {e}"),
                ),
            );
            return Outcome::Settled;
        }
    };
    let revision = desired.revision;
    memory.revision = revision;
    if desired.deployment.as_str() != deployment {
        let msg = format!(
            "the value names deployment {:?} but is stored under key {deployment:?}",
            desired.deployment.as_str()
        );
        report(
            ctx,
            deployment,
            simple_status(revision, Phase::Failed, &msg),
        );
        return Outcome::Settled;
    }
    let score = match desired.score.decode() {
        Ok(IotScore::PodmanV0(s)) => s,
        Err(e @ ScoreError::Unsupported { .. }) => {
            crate::warn!("{deployment}: {e}");
            report(
                ctx,
                deployment,
                simple_status(revision, Phase::Unsupported, &e.to_string()),
            );
            return Outcome::Settled;
        }
        Err(e) => {
            report(
                ctx,
                deployment,
                simple_status(revision, Phase::Failed, &e.to_string()),
            );
            return Outcome::Settled;
        }
    };
    if let Err(msg) = check_policy(&ctx.policy, &score.containers) {
        crate::warn!("{deployment}: refused: {msg}");
        report(
            ctx,
            deployment,
            simple_status(revision, Phase::Failed, &msg),
        );
        return Outcome::Settled;
    }

    let existing = match list_deployment(ctx, deployment).await {
        Ok(c) => c,
        Err(e) => {
            report(
                ctx,
                deployment,
                simple_status(revision, Phase::Pending, &format!("container runtime: {e}")),
            );
            return Outcome::Retry;
        }
    };
    let mut failure: Option<String> = None;
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut handovers: Vec<Handover> = Vec::new();
    // The containers of a score are independent (distinct names, and host
    // ports that could clash would clash anyway): bring them up at once
    // rather than one Podman round trip chain after the other.
    let results = futures::future::join_all(
        score
            .containers
            .iter()
            .map(|c| ensure_container(ctx, deployment, revision, c, &existing)),
    )
    .await;
    for (c, result) in score.containers.iter().zip(results) {
        match result {
            Ok((id, handover)) => {
                ids.insert(c.name.to_string(), id);
                handovers.extend(handover);
            }
            Err(msg) => {
                crate::warn!("{deployment}: container {}: {msg}", c.name.as_str());
                failure.get_or_insert(format!("container {}: {msg}", c.name.as_str()));
            }
        }
    }
    // Containers of this deployment no longer in the score.
    let wanted: BTreeSet<&str> = score.containers.iter().map(|c| c.name.as_str()).collect();
    for old in &existing {
        if !wanted.contains(old.label(labels::CONTAINER)) {
            match ctx.runtime.remove(&old.id, ctx.stop_timeout_secs).await {
                Ok(()) => crate::info!(
                    "{deployment}: removed {} (no longer in the score)",
                    old.name
                ),
                Err(e) => {
                    failure.get_or_insert(format!("removing {}: {e}", old.name));
                }
            }
        }
    }

    // Per-container state.
    let mut containers = BoundedVec::new();
    let mut all_running = true;
    let mut all_completed = true;
    let mut crashed: Option<String> = None;
    for c in score.containers.iter() {
        let (state, exit_code, restart_count) = match ids.get(c.name.as_str()) {
            None => (ContainerState::Missing, None, 0),
            Some(id) => match ctx.runtime.inspect(id).await {
                Ok(info) => {
                    let state = map_state(&info.status);
                    let exit = matches!(state, ContainerState::Exited | ContainerState::Dead)
                        .then_some(info.exit_code);
                    if state == ContainerState::Exited
                        && info.exit_code != 0
                        && c.restart_policy != RestartPolicy::Always
                    {
                        crashed.get_or_insert(format!(
                            "container {} exited with code {}{}",
                            c.name.as_str(),
                            info.exit_code,
                            if info.oom_killed {
                                " (out of memory)"
                            } else {
                                ""
                            }
                        ));
                    }
                    if state == ContainerState::Dead {
                        crashed.get_or_insert(format!(
                            "container {} is dead: {}",
                            c.name.as_str(),
                            info.error
                        ));
                    }
                    (state, exit, info.restart_count)
                }
                Err(e) => {
                    failure.get_or_insert(format!("inspecting {}: {e}", c.name.as_str()));
                    (ContainerState::Unknown, None, 0)
                }
            },
        };
        all_running &= state == ContainerState::Running;
        all_completed &= state == ContainerState::Exited
            && exit_code == Some(0)
            && c.restart_policy != RestartPolicy::Always;
        let _ = containers.push(ContainerStatus {
            name: c.name.clone().into_owned(),
            state,
            exit_code,
            restart_count,
        });
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
    report(
        ctx,
        deployment,
        DeploymentStatus {
            revision,
            phase,
            containers,
            message: Text::owned(clip_message(&message).to_string()),
            timestamp_ms: now_ms(),
        },
    );
    // The new containers run under their names and say so; only now retire
    // their predecessors. A failure here is repaired by the next pass, which
    // finds the leftovers (and reports Failed if they cannot go).
    for h in &handovers {
        if let Err(msg) = finish_handover(ctx, deployment, h).await {
            crate::warn!("{deployment}: {msg}");
            return Outcome::Retry;
        }
    }
    outcome
}

fn map_state(s: &str) -> ContainerState {
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

/// What is left of a replacement once its new container runs under its
/// own name: removing the old containers. Done after the status report, so
/// the old containers' stop timeout delays neither the new container nor
/// the report.
#[derive(Debug)]
struct Handover {
    /// Old containers to remove: (id, name).
    old: Vec<(String, String)>,
}

/// Whether two instances of `c` could get in each other's way on the host:
/// a host port, the host's namespaces, privileged mode, a device or a
/// writable volume. Such a container's old instance is stopped before its
/// replacement starts.
fn claims_host_resources(c: &Container<'_>) -> bool {
    c.ports.iter().any(|p| p.host_port.is_some())
        || c.host_network
        || c.host_pid
        || c.host_ipc
        || c.privileged
        || !c.devices.is_empty()
        || c.volumes.iter().any(|v| !v.read_only)
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// Makes one container exist with the desired spec and started; returns
/// its id and what remains to retire its predecessors, or the error
/// message.
///
/// A replacement is created while the old container still runs (under a
/// temporary name when the old one holds the name), so a replacement that
/// cannot be created leaves the old container untouched. It is then
/// started before the old one stops, or after when the container claims
/// host resources or the device says `stop-first`; a replacement that does
/// not start is removed and a stopped old container is started again.
async fn ensure_container<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    c: &Container<'_>,
    existing: &[ManagedContainer],
) -> Result<(String, Option<Handover>), String> {
    let hash = format!("{:016x}", protocol::wire::hash_of(c));
    let name = format!("{}_{}_{}", ctx.device_id, deployment, c.name.as_str());
    let mine: Vec<&ManagedContainer> = existing
        .iter()
        .filter(|e| e.label(labels::CONTAINER) == c.name.as_str() || e.name == name)
        .collect();
    // The container with the wanted spec: under its own name, else under
    // the temporary name of a replacement that was interrupted before its
    // predecessor was gone.
    let current = mine
        .iter()
        .copied()
        .filter(|e| e.label(labels::SPEC_HASH) == hash)
        .min_by_key(|e| e.name != name);
    if let Some(current) = current {
        let stale: Vec<&ManagedContainer> = mine
            .iter()
            .copied()
            .filter(|e| e.id != current.id)
            .collect();
        // Unchanged spec: leave it alone, unless it should run and does
        // not: created but never started (an agent crash between create and
        // start), or exited where its restart policy says it runs again
        // (after a reboot Podman does not restart containers by itself
        // unless podman-restart.service is enabled).
        let should_start = match map_state(&current.state) {
            ContainerState::Created => true,
            ContainerState::Exited => match c.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => current.exit_code != 0,
                RestartPolicy::Never => false,
            },
            _ => false,
        };
        let handover = hand_over(
            ctx,
            deployment,
            c,
            current,
            &name,
            &stale,
            should_start,
            false,
        )
        .await?;
        if should_start {
            crate::info!("{deployment}: started existing {}", current.name);
        }
        return Ok((current.id.clone(), handover));
    }

    // IfNotPresent, the common case: skip the existence check on the fast
    // path; a create that fails for want of the image pulls and retries.
    if c.pull_policy != PullPolicy::IfNotPresent {
        ensure_image(ctx, deployment, revision, c).await?;
    }
    let create_name = if mine.iter().any(|e| e.name == name) {
        // The spec hash makes the name unique per spec: a leftover under
        // it has this very spec and was taken as `current` above.
        format!("{name}-{hash}")
    } else {
        name.clone()
    };
    let spec = create_spec(ctx, deployment, revision, c, create_name, hash);
    let t = Instant::now();
    let id = match ctx.runtime.create(&spec).await {
        Err(e)
            if c.pull_policy == PullPolicy::IfNotPresent
                && !ctx.runtime.image_exists(&spec.image).await.unwrap_or(true) =>
        {
            crate::debug!("{deployment}: {e}; pulling {}", spec.image);
            ensure_image(ctx, deployment, revision, c).await?;
            ctx.runtime.create(&spec).await.map_err(|e| e.to_string())?
        }
        other => other.map_err(|e| e.to_string())?,
    };
    crate::debug!("{deployment}: created {} in {} ms", spec.name, ms(t));
    let new = ManagedContainer {
        id,
        name: spec.name.clone(),
        labels: BTreeMap::new(),
        state: "created".into(),
        exit_code: 0,
    };
    let handover = hand_over(ctx, deployment, c, &new, &name, &mine, true, true).await?;
    crate::info!("{deployment}: started {} (revision {revision})", spec.name);
    Ok((new.id, handover))
}

/// Brings `new` up in place of `old`: starts it (when `start`), stopping
/// the old containers first when two instances must not overlap; on
/// failure removes `new` (when `fresh`, i.e. made by this pass) and starts
/// again the old containers it stopped. Then gives `new` its `name`
/// (moving an old holder aside), so that once the status says Running the
/// name is the new container's. Returns what is left: removing `old`.
#[allow(clippy::too_many_arguments)]
async fn hand_over<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    c: &Container<'_>,
    new: &ManagedContainer,
    name: &str,
    old: &[&ManagedContainer],
    start: bool,
    fresh: bool,
) -> Result<Option<Handover>, String> {
    let discard_new = || async {
        if fresh {
            let _ = ctx.runtime.remove(&new.id, 0).await;
        }
    };
    let stop_first = ctx.replace_order == ReplaceOrder::StopFirst || claims_host_resources(c);
    let mut stopped: Vec<&ManagedContainer> = Vec::new();
    if start && stop_first {
        for o in old
            .iter()
            .copied()
            .filter(|o| map_state(&o.state) == ContainerState::Running)
        {
            let t = Instant::now();
            if let Err(e) = ctx.runtime.stop(&o.id, ctx.stop_timeout_secs).await {
                discard_new().await;
                let not_back = restart(ctx, deployment, &stopped).await;
                return Err(format!(
                    "stopping the old container {}: {e}{not_back}",
                    o.name
                ));
            }
            crate::debug!("{deployment}: stopped the old {} in {} ms", o.name, ms(t));
            stopped.push(o);
        }
    }
    if start {
        let t = Instant::now();
        if let Err(e) = ctx.runtime.start(&new.id).await {
            // Leave nothing half-made behind (the next attempt creates
            // afresh) and the old revision running as it was.
            discard_new().await;
            let not_back = restart(ctx, deployment, &stopped).await;
            return Err(format!("{e}{not_back}"));
        }
        crate::debug!("{deployment}: started {} in {} ms", new.name, ms(t));
    }
    let mut retired: Vec<(String, String)> = Vec::new();
    let mut old_first: Vec<&ManagedContainer> = Vec::new();
    for o in old {
        if new.name != name && o.name == name {
            let aside = format!("{name}-old-{}", &o.id[..o.id.len().min(12)]);
            if let Err(e) = ctx.runtime.rename(&o.id, &aside).await {
                // Cannot move it aside: remove it now, the slow way.
                crate::debug!("{deployment}: cannot rename {}: {e}", o.name);
                old_first.push(o);
                continue;
            }
            retired.push((o.id.clone(), aside));
        } else {
            retired.push((o.id.clone(), o.name.clone()));
        }
    }
    for o in old_first {
        ctx.runtime
            .remove(&o.id, ctx.stop_timeout_secs)
            .await
            .map_err(|e| format!("removing the old container {}: {e}", o.name))?;
    }
    if new.name != name {
        ctx.runtime
            .rename(&new.id, name)
            .await
            .map_err(|e| format!("renaming {} to {name}: {e}", new.name))?;
    }
    Ok((!retired.is_empty()).then_some(Handover { old: retired }))
}

/// Starts again old containers stopped for a replacement that failed;
/// returns, for the status message, which of them did not start.
///
/// Podman 4.3.1 keeps the host ports of a container whose start failed
/// bound inside its API service (until its garbage collector runs, ~45 s
/// here), so an old container publishing the same port may not start
/// again at once; it stays stopped until a revision that starts replaces
/// it.
async fn restart<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    stopped: &[&ManagedContainer],
) -> String {
    let mut not_back = String::new();
    for o in stopped {
        match ctx.runtime.start(&o.id).await {
            Ok(()) => crate::info!("{deployment}: restarted the old {}", o.name),
            Err(e) => {
                crate::warn!("{deployment}: cannot restart the old {}: {e}", o.name);
                not_back.push_str(&format!(
                    "; the previous container {} could not be started again: {e}",
                    o.name
                ));
            }
        }
    }
    not_back
}

/// Removes the old containers of a replacement.
async fn finish_handover<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    h: &Handover,
) -> Result<(), String> {
    for (id, name) in &h.old {
        let t = Instant::now();
        ctx.runtime
            .remove(id, ctx.stop_timeout_secs)
            .await
            .map_err(|e| format!("removing the old container {name}: {e}"))?;
        crate::debug!("{deployment}: removed the old {name} in {} ms", ms(t));
    }
    Ok(())
}

async fn ensure_image<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    c: &Container<'_>,
) -> Result<(), String> {
    let image = c.image.as_str();
    let present = || async {
        ctx.runtime
            .image_exists(image)
            .await
            .map_err(|e| e.to_string())
    };
    let pull = || async {
        // Pulls can take minutes on a board: say so meanwhile.
        report(
            ctx,
            deployment,
            simple_status(revision, Phase::Pulling, &format!("pulling {image}")),
        );
        ctx.runtime.pull(image).await.map_err(|e| e.to_string())
    };
    match c.pull_policy {
        PullPolicy::Always => pull().await,
        PullPolicy::IfNotPresent => {
            if present().await? {
                Ok(())
            } else {
                pull().await
            }
        }
        PullPolicy::Never => {
            if present().await? {
                Ok(())
            } else {
                Err(format!(
                    "image {image} is not on the device and pullPolicy is Never"
                ))
            }
        }
    }
}

/// Refuses what the device's security settings do not allow (see
/// [`crate::policy`]).
fn check_policy(policy: &Allowances, containers: &[Container<'_>]) -> Result<(), String> {
    for c in containers {
        crate::policy::check_container(c, policy)?;
    }
    Ok(())
}

fn create_spec<R>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    c: &Container<'_>,
    name: String,
    hash: String,
) -> CreateSpec {
    let list = |l: &Option<BoundedVec<Text<'_>, { protocol::limits::MAX_ARGS }>>| {
        l.as_ref()
            .map(|v| v.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>())
    };
    let mut labels_map: BTreeMap<String, String> = c
        .labels
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_str().to_string()))
        .collect();
    // The agent's labels win over the user's.
    for (k, v) in [
        (labels::MANAGED_BY, labels::MANAGED_BY_VALUE.to_string()),
        (labels::DEVICE, ctx.device_id.clone()),
        (labels::DEPLOYMENT, deployment.to_string()),
        (labels::REVISION, revision.to_string()),
        (labels::SPEC_HASH, hash),
        (labels::CONTAINER, c.name.as_str().to_string()),
    ] {
        labels_map.insert(k.to_string(), v);
    }
    CreateSpec {
        name,
        image: c.image.as_str().to_string(),
        entrypoint: list(&c.command),
        command: list(&c.args),
        env: c
            .env
            .iter()
            .map(|e| (e.name.as_str().to_string(), e.value.as_str().to_string()))
            .collect(),
        ports: c
            .ports
            .iter()
            .map(|p| PortSpec {
                container_port: p.container_port,
                host_port: p.host_port,
                protocol: match p.protocol {
                    PortProtocol::Tcp => "tcp",
                    PortProtocol::Udp => "udp",
                },
                host_ip: p.host_ip.as_ref().map(|s| s.as_str().to_string()),
            })
            .collect(),
        mounts: c
            .volumes
            .iter()
            .filter_map(|v| {
                let dest = v.mount_path.as_str().to_string();
                match (&v.name, &v.host_path) {
                    (Some(n), _) => Some(MountSpec::Named {
                        name: format!("{}_{}", ctx.device_id, n.as_str()),
                        dest,
                        read_only: v.read_only,
                    }),
                    (None, Some(h)) => Some(MountSpec::Bind {
                        source: h.as_str().to_string(),
                        dest,
                        read_only: v.read_only,
                    }),
                    (None, None) => None,
                }
            })
            .collect(),
        restart_policy: match c.restart_policy {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "no",
        },
        labels: labels_map,
        stop_timeout_secs: ctx.stop_timeout_secs,
        // Only reach Podman when the policy allowed them.
        privileged: c.privileged,
        host_network: c.host_network,
        host_pid: c.host_pid,
        host_ipc: c.host_ipc,
        cap_add: c
            .cap_add
            .iter()
            .map(|s| crate::policy::normalize_capability(s.as_str()))
            .collect(),
        devices: c.devices.iter().map(|s| s.as_str().to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::MemoryRuntime;
    use protocol::{BoundedMap, Volume};

    fn with_host_path(p: &'static str) -> Container<'static> {
        Container {
            name: Text::borrowed("c"),
            image: Text::borrowed("localhost/x:1"),
            command: None,
            args: None,
            env: BoundedVec::new(),
            ports: BoundedVec::new(),
            volumes: BoundedVec::try_from_iter([Volume {
                name: None,
                host_path: Some(Text::borrowed(p)),
                mount_path: Text::borrowed("/data"),
                read_only: false,
            }])
            .unwrap(),
            restart_policy: RestartPolicy::Always,
            pull_policy: PullPolicy::IfNotPresent,
            labels: BoundedMap::new(),
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            cap_add: BoundedVec::new(),
            devices: BoundedVec::new(),
        }
    }

    #[test]
    fn host_paths_must_be_under_an_allowed_directory() {
        let allowed = Allowances {
            host_paths: vec![std::path::PathBuf::from("/srv")],
            ..Allowances::default()
        };
        assert!(check_policy(&allowed, &[with_host_path("/srv")]).is_ok());
        assert!(check_policy(&allowed, &[with_host_path("/srv/web/data")]).is_ok());
        for bad in ["/srv2", "/etc", "/srv/../etc", "/"] {
            let e = check_policy(&allowed, &[with_host_path(bad)]).unwrap_err();
            assert!(e.contains("allowed_host_paths") && e.contains(bad), "{e}");
        }
        assert!(check_policy(&Allowances::default(), &[with_host_path("/srv")]).is_err());
    }

    type Statuses = mpsc::UnboundedReceiver<StatusReport>;

    fn context(order: ReplaceOrder) -> (Rc<Context<MemoryRuntime>>, Statuses) {
        context_with(order, Allowances::default())
    }

    fn context_with(
        order: ReplaceOrder,
        policy: Allowances,
    ) -> (Rc<Context<MemoryRuntime>>, Statuses) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Context {
            runtime: Rc::new(MemoryRuntime::recording()),
            device_id: "dev".into(),
            stop_timeout_secs: 10,
            replace_order: order,
            policy,
            status: tx,
            retry_base: Duration::from_millis(1),
            retry_cap: Duration::from_millis(1),
        };
        (Rc::new(ctx), rx)
    }

    fn sleeper(tag: &'static str) -> Container<'static> {
        let mut c = with_host_path("/unused");
        c.volumes = BoundedVec::new();
        c.env = BoundedVec::try_from_iter([protocol::EnvVar {
            name: Text::borrowed("TAG"),
            value: Text::borrowed(tag),
        }])
        .unwrap();
        c
    }

    fn with_host_port(tag: &'static str) -> Container<'static> {
        let mut c = sleeper(tag);
        c.ports = BoundedVec::try_from_iter([protocol::Port {
            container_port: 80,
            host_port: Some(8080),
            protocol: PortProtocol::Tcp,
            host_ip: None,
        }])
        .unwrap();
        c
    }

    fn value(revision: u64, c: Container<'static>) -> Vec<u8> {
        let score = IotScore::PodmanV0(protocol::PodmanV0Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision,
            score: score.to_payload().unwrap(),
        })
        .unwrap()
    }

    /// Applies `revision` and returns the last status reported.
    async fn apply_rev(
        ctx: &Context<MemoryRuntime>,
        rx: &mut Statuses,
        revision: u64,
        c: Container<'static>,
    ) -> DeploymentStatus<'static> {
        let _ = apply(ctx, "web", &value(revision, c), &mut Memory::default()).await;
        let mut last = None;
        while let Ok((_, s)) = rx.try_recv() {
            last = Some(s);
        }
        last.unwrap()
    }

    const NAME: &str = "dev_web_c";

    fn hash(c: &Container<'_>) -> String {
        format!("{:016x}", protocol::wire::hash_of(c))
    }

    /// The name a replacement by `c` is created under while the old
    /// container holds [`NAME`].
    fn temp_name(c: &Container<'_>) -> String {
        format!("{NAME}-{}", hash(c))
    }

    /// The calls that end a replacement: the old container moves aside,
    /// the new one (under `temp`) takes the name, the old one goes.
    fn handover_calls(temp: &str) -> Vec<String> {
        vec![
            format!("rename {NAME} {NAME}-old-id1"),
            format!("rename {temp} {NAME}"),
            format!("remove {NAME}-old-id1"),
        ]
    }

    /// Where every replacement test starts: revision 1 runs, created and
    /// started under its name, and its calls are taken.
    struct Replacing {
        order: ReplaceOrder,
        ctx: Rc<Context<MemoryRuntime>>,
        rx: Statuses,
        /// The containers at revision 1.
        before: Vec<(String, String, String)>,
    }

    impl Replacing {
        async fn new(order: ReplaceOrder, first: Container<'static>) -> Self {
            let (ctx, mut rx) = context(order);
            let s = apply_rev(&ctx, &mut rx, 1, first).await;
            assert_eq!((s.phase, s.revision), (Phase::Running, 1), "{order:?}");
            assert_eq!(
                ctx.runtime.take_calls(),
                [format!("create {NAME}"), format!("start {NAME}")],
                "{order:?}"
            );
            let before = ctx.runtime.snapshot();
            Replacing {
                order,
                ctx,
                rx,
                before,
            }
        }

        /// Applies `c` as revision 2; the last status reported.
        async fn apply(&mut self, c: Container<'static>) -> DeploymentStatus<'static> {
            apply_rev(&self.ctx, &mut self.rx, 2, c).await
        }

        /// The calls since the last time.
        fn calls(&self) -> Vec<String> {
            self.ctx.runtime.take_calls()
        }

        /// Only revision 2 is left, running under the container's name.
        fn assert_replaced(&self) {
            assert_eq!(
                self.ctx.runtime.snapshot(),
                [(NAME.to_string(), "running".to_string(), "2".to_string())],
                "{:?}",
                self.order
            );
        }

        /// Revision 1 is as it was.
        fn assert_untouched(&self) {
            assert_eq!(self.ctx.runtime.snapshot(), self.before, "{:?}", self.order);
        }
    }

    #[tokio::test]
    async fn each_context_applies_its_own_policy() {
        let (strict, mut strict_rx) = context(ReplaceOrder::StartFirst);
        let (loose, mut loose_rx) = context_with(
            ReplaceOrder::StartFirst,
            Allowances {
                privileged: true,
                ..Allowances::default()
            },
        );
        let mut c = sleeper("1");
        c.privileged = true;
        let s = apply_rev(&strict, &mut strict_rx, 1, c.clone()).await;
        assert_eq!(s.phase, Phase::Failed);
        assert!(
            s.message.contains("allow_privileged"),
            "{}",
            s.message.as_str()
        );
        assert!(strict.runtime.snapshot().is_empty());
        let s = apply_rev(&loose, &mut loose_rx, 1, c).await;
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(loose.runtime.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn replacement_starts_before_the_old_container_stops() {
        let mut r = Replacing::new(ReplaceOrder::StartFirst, sleeper("1")).await;
        let s = r.apply(sleeper("2")).await;
        assert_eq!((s.phase, s.revision), (Phase::Running, 2));
        let temp = temp_name(&sleeper("2"));
        let started = vec![format!("create {temp}"), format!("start {temp}")];
        assert_eq!(r.calls(), [started, handover_calls(&temp)].concat());
        r.assert_replaced();
    }

    #[tokio::test]
    async fn a_host_port_or_stop_first_stops_the_old_container_first() {
        for (order, make) in [
            (
                ReplaceOrder::StartFirst,
                with_host_port as fn(&'static str) -> Container<'static>,
            ),
            (ReplaceOrder::StopFirst, sleeper),
        ] {
            let mut r = Replacing::new(order, make("1")).await;
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Running, 2), "{order:?}");
            let temp = temp_name(&make("2"));
            let started = vec![
                format!("create {temp}"),
                format!("stop {NAME}"),
                format!("start {temp}"),
            ];
            assert_eq!(
                r.calls(),
                [started, handover_calls(&temp)].concat(),
                "{order:?}"
            );
            r.assert_replaced();
        }
    }

    #[tokio::test]
    async fn a_replacement_that_cannot_be_created_leaves_the_old_one_running() {
        for order in [ReplaceOrder::StartFirst, ReplaceOrder::StopFirst] {
            let mut r = Replacing::new(order, sleeper("1")).await;
            r.ctx.runtime.fail_create.set(true);
            let s = r.apply(sleeper("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Failed, 2), "{order:?}");
            assert!(
                s.message.contains("cannot create"),
                "{}",
                s.message.as_str()
            );
            r.assert_untouched();
            assert!(
                r.calls().iter().all(|c| c.starts_with("create")),
                "{order:?}: the old container was touched"
            );
        }
    }

    #[tokio::test]
    async fn a_replacement_that_cannot_start_is_removed_and_the_old_one_runs_again() {
        for (order, make) in [
            (
                ReplaceOrder::StartFirst,
                sleeper as fn(&'static str) -> Container<'static>,
            ),
            (ReplaceOrder::StartFirst, with_host_port),
            (ReplaceOrder::StopFirst, sleeper),
        ] {
            let mut r = Replacing::new(order, make("1")).await;
            r.ctx.runtime.fail_start_revision.set(Some(2));
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Failed, 2), "{order:?}");
            assert!(
                s.message.contains("executable file not found"),
                "{}",
                s.message.as_str()
            );
            r.assert_untouched();
            // Once the cause is gone, the retry replaces it.
            r.ctx.runtime.fail_start_revision.set(None);
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Running, 2), "{order:?}");
            r.assert_replaced();
        }
    }

    #[tokio::test]
    async fn an_interrupted_replacement_is_finished_without_a_new_container() {
        let mut r = Replacing::new(ReplaceOrder::StartFirst, sleeper("1")).await;
        // As if the agent died after starting the replacement: both run,
        // the new one under its temporary name.
        let temp = temp_name(&sleeper("2"));
        let spec = create_spec(
            &r.ctx,
            "web",
            2,
            &sleeper("2"),
            temp.clone(),
            hash(&sleeper("2")),
        );
        let id = r.ctx.runtime.create(&spec).await.unwrap();
        r.ctx.runtime.start(&id).await.unwrap();
        r.calls();
        let s = r.apply(sleeper("2")).await;
        assert_eq!((s.phase, s.revision), (Phase::Running, 2));
        assert_eq!(r.calls(), handover_calls(&temp));
        r.assert_replaced();
    }

    /// Receives the next status report, failing after a generous bound.
    async fn next_status(rx: &mut Statuses) -> (Phase, u64) {
        let (_, s) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a status report")
            .expect("the reconciler is running");
        (s.phase, s.revision)
    }

    #[tokio::test]
    async fn a_deleted_deployment_reports_removed_once_at_its_last_revision() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        // The same spec at both revisions: the container keeps the
        // revision label 1 that created it.
        let at = |revision: u64| Some(Bytes::from(value(revision, sleeper("1"))));
        let (tx, targets) = watch::channel(Target {
            value: at(1),
            nudge: 0,
        });
        let driver = async {
            assert_eq!(next_status(&mut rx).await, (Phase::Running, 1));
            tx.send_modify(|t| t.value = at(2));
            assert_eq!(next_status(&mut rx).await, (Phase::Running, 2));
            tx.send_modify(|t| t.value = None);
            assert_eq!(next_status(&mut rx).await, (Phase::Removed, 2));
            // Podman's events for the removal nudge the reconciler; closing
            // the channel after the nudge ends it once that pass is done.
            tx.send_modify(|t| t.nudge += 1);
            drop(tx);
        };
        tokio::join!(run(ctx.clone(), "web".into(), targets), driver);
        let mut after = Vec::new();
        while let Ok((_, s)) = rx.try_recv() {
            after.push((s.phase, s.revision));
        }
        assert_eq!(after, [], "reported again after Removed");
        assert!(ctx.runtime.snapshot().is_empty());
    }

    #[test]
    fn podman_states() {
        assert_eq!(map_state("running"), ContainerState::Running);
        assert_eq!(map_state("configured"), ContainerState::Created);
        assert_eq!(map_state("exited"), ContainerState::Exited);
        assert_eq!(map_state("something-new"), ContainerState::Unknown);
    }
}
