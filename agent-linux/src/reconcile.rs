//! One deployment's reconciler: makes the runtime's containers match the
//! deployment's desired state, reports status, and retries failures with
//! back-off until a newer desired state (or a delete) arrives.
//!
//! Level-triggered: every pass lists what exists and recomputes what to do,
//! so a crash at any point is repaired by the next pass, and a container
//! whose spec hash is unchanged is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::podman::{CreateSpec, ManagedContainer, MountSpec, PortSpec, Runtime, labels};
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
    /// Host directories bind mounts may come from.
    pub allowed_host_paths: Vec<PathBuf>,
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

/// Runs one deployment's reconciler until the target channel closes.
pub async fn run<R: Runtime>(
    ctx: Rc<Context<R>>,
    deployment: String,
    mut rx: watch::Receiver<Target>,
) {
    let mut backoff = Backoff::new(ctx.retry_base, ctx.retry_cap);
    let mut last_value: Option<Bytes> = None;
    loop {
        let target = rx.borrow_and_update().clone();
        if target.value != last_value {
            backoff.reset();
            last_value = target.value.clone();
        }
        let outcome = match &target.value {
            Some(value) => apply(&ctx, &deployment, value).await,
            None => remove(&ctx, &deployment).await,
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

/// Removes every container of a deleted deployment and reports `Removed`.
async fn remove<R: Runtime>(ctx: &Context<R>, deployment: &str) -> Outcome {
    let existing = match list_deployment(ctx, deployment).await {
        Ok(c) => c,
        Err(e) => {
            crate::warn!("{deployment}: cannot list containers to remove: {e}");
            return Outcome::Retry;
        }
    };
    let revision = existing
        .iter()
        .filter_map(|c| c.label(labels::REVISION).parse::<u64>().ok())
        .max()
        .unwrap_or(0);
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
async fn apply<R: Runtime>(ctx: &Context<R>, deployment: &str, value: &[u8]) -> Outcome {
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
    if let Err(msg) = check_policy(&ctx.allowed_host_paths, &score.containers) {
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
    for c in score.containers.iter() {
        match ensure_container(ctx, deployment, revision, c, &existing).await {
            Ok(id) => {
                ids.insert(c.name.to_string(), id);
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

/// Makes one container exist with the desired spec and started; returns
/// its id, or Podman's message.
async fn ensure_container<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    c: &Container<'_>,
    existing: &[ManagedContainer],
) -> Result<String, String> {
    let hash = format!("{:016x}", protocol::wire::hash_of(c));
    let name = format!("{}_{}_{}", ctx.device_id, deployment, c.name.as_str());
    let mine: Vec<&ManagedContainer> = existing
        .iter()
        .filter(|e| e.label(labels::CONTAINER) == c.name.as_str() || e.name == name)
        .collect();
    let current = mine
        .iter()
        .copied()
        .find(|e| e.name == name && e.label(labels::SPEC_HASH) == hash);
    if let Some(current) = current {
        // Leftovers of an interrupted replacement.
        for stale in mine.iter().filter(|e| e.id != current.id) {
            let _ = ctx.runtime.remove(&stale.id, ctx.stop_timeout_secs).await;
        }
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
        if should_start {
            ctx.runtime
                .start(&current.id)
                .await
                .map_err(|e| e.to_string())?;
            crate::info!("{deployment}: started existing {}", current.name);
        }
        return Ok(current.id.clone());
    }

    // IfNotPresent, the common case: skip the existence check on the fast
    // path; a create that fails for want of the image pulls and retries.
    if c.pull_policy != PullPolicy::IfNotPresent {
        ensure_image(ctx, deployment, revision, c).await?;
    }
    let spec = create_spec(ctx, deployment, revision, c, name, hash);
    // Replace: move the old container out of the way by name, then remove
    // it while the new one is created (both take Podman a while), and start
    // the new one only once the old one is gone (same ports, same volumes).
    let mut renamed = Vec::new();
    for old in &mine {
        let aside = format!("{}-old-{}", spec.name, &old.id[..old.id.len().min(12)]);
        if old.name == spec.name && ctx.runtime.rename(&old.id, &aside).await.is_err() {
            // Cannot rename: remove first, the slow way.
            ctx.runtime
                .remove(&old.id, ctx.stop_timeout_secs)
                .await
                .map_err(|e| format!("removing the old container: {e}"))?;
        } else {
            renamed.push(old.id.clone());
        }
    }
    let remove_old = async {
        for id in &renamed {
            ctx.runtime
                .remove(id, ctx.stop_timeout_secs)
                .await
                .map_err(|e| format!("removing the old container: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let create = async {
        match ctx.runtime.create(&spec).await {
            Err(e)
                if c.pull_policy == PullPolicy::IfNotPresent
                    && !ctx.runtime.image_exists(&spec.image).await.unwrap_or(true) =>
            {
                crate::debug!("{deployment}: {e}; pulling {}", spec.image);
                ensure_image(ctx, deployment, revision, c).await?;
                ctx.runtime.create(&spec).await.map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    };
    let (created, removed) = tokio::join!(create, remove_old);
    let id = created?;
    if let Err(e) = removed {
        let _ = ctx.runtime.remove(&id, 0).await;
        return Err(e);
    }
    if let Err(e) = ctx.runtime.start(&id).await {
        // Leave nothing half-made behind: the next attempt creates afresh.
        let _ = ctx.runtime.remove(&id, 0).await;
        return Err(e.to_string());
    }
    crate::info!("{deployment}: started {} (revision {revision})", spec.name);
    Ok(id)
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
fn check_policy(allowed: &[PathBuf], containers: &[Container<'_>]) -> Result<(), String> {
    let allow = crate::policy::allowances();
    for c in containers {
        crate::policy::check_container(c, allowed, allow)?;
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
        let allowed = vec![PathBuf::from("/srv")];
        assert!(check_policy(&allowed, &[with_host_path("/srv")]).is_ok());
        assert!(check_policy(&allowed, &[with_host_path("/srv/web/data")]).is_ok());
        for bad in ["/srv2", "/etc", "/srv/../etc", "/"] {
            let e = check_policy(&allowed, &[with_host_path(bad)]).unwrap_err();
            assert!(e.contains("allowed_host_paths") && e.contains(bad), "{e}");
        }
        assert!(check_policy(&[], &[with_host_path("/srv")]).is_err());
    }

    #[test]
    fn podman_states() {
        assert_eq!(map_state("running"), ContainerState::Running);
        assert_eq!(map_state("configured"), ContainerState::Created);
        assert_eq!(map_state("exited"), ContainerState::Exited);
        assert_eq!(map_state("something-new"), ContainerState::Unknown);
    }
}
