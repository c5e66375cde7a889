//! Bringing one container to its desired spec: creating it, and replacing
//! an older one so that a replacement that cannot be created or started
//! leaves the old container running.

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::{ContainerState, ContainerV1, Phase, PullPolicy, Reason, RestartPolicy};

use super::Context;
use super::spec::{Wanted, create_spec, stop_timeout_of};
use super::status::{map_state, report, simple_status};
use crate::config::ReplaceOrder;
use crate::log::Chain;
use crate::podman::{ManagedContainer, Runtime, RuntimeError, labels};

/// Why a container could not be brought to its desired spec. The message
/// with its causes ([`Chain`]) is the status message.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// Whether the image is on the device cannot be found out.
    #[error(transparent)]
    ImageCheck(RuntimeError),
    /// The image cannot be pulled.
    #[error(transparent)]
    Pull(RuntimeError),
    /// The image is not on the device and may not be pulled.
    #[error("image {image} is not on the device and pullPolicy is Never")]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// The container cannot be created.
    #[error(transparent)]
    Create(RuntimeError),
    /// An old container cannot be stopped before its replacement starts.
    /// The runtime's error is in the message, not in `source()`: the
    /// message goes on after it.
    #[error("stopping the old container {name}: {}{not_restarted}", Chain(.error))]
    StopOld {
        /// The old container.
        name: String,
        /// The runtime's error.
        error: RuntimeError,
        /// Old containers already stopped that did not start again.
        not_restarted: NotRestarted,
    },
    /// The container cannot be started (the runtime's error is in the
    /// message, as for `StopOld`).
    #[error("{}{not_restarted}", Chain(.error))]
    Start {
        /// The runtime's error.
        error: RuntimeError,
        /// Old containers stopped for it that did not start again.
        not_restarted: NotRestarted,
    },
    /// An old container cannot be removed.
    #[error("removing the old container {name}")]
    RemoveOld {
        /// The old container.
        name: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The replacement cannot take its name.
    #[error("renaming {from} to {to}")]
    Rename {
        /// The replacement's temporary name.
        from: String,
        /// Its name.
        to: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
}

impl ReplaceError {
    /// The status reason: `ImagePullBackOff` when the image cannot be had
    /// (retried with back-off), else `Error`.
    pub fn reason(&self) -> Reason {
        match self {
            ReplaceError::Pull(_) | ReplaceError::ImageMissing { .. } => Reason::ImagePullBackOff,
            _ => Reason::Error,
        }
    }
}

/// Old containers stopped for a replacement that failed and that did not
/// start again: (name, error). Shown after the error as "; the previous
/// container NAME could not be started again: ERROR" each.
#[derive(Debug, Default)]
pub struct NotRestarted(pub Vec<(String, RuntimeError)>);

impl std::fmt::Display for NotRestarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, e) in &self.0 {
            write!(
                f,
                "; the previous container {name} could not be started again: {}",
                Chain(e)
            )?;
        }
        Ok(())
    }
}

/// What is left of a replacement once its new container runs under its
/// own name: removing the old containers. Done after the status report, so
/// the old containers' stop timeout delays neither the new container nor
/// the report.
#[derive(Debug)]
pub(super) struct Leftover {
    /// Old containers to remove: (id, name, stop timeout).
    old: Vec<(String, String, u64)>,
}

/// Where the container a hand-over brings up comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Successor {
    /// Created by this pass: started, and removed again if it cannot start.
    Created,
    /// There already, and to be started (created but never started, or
    /// exited where its restart policy says it runs again); kept if it
    /// cannot start.
    ExistingToStart,
    /// There already, and left as it is.
    Existing,
}

impl Successor {
    fn starts(self) -> bool {
        self != Successor::Existing
    }
}

/// One hand-over: `new` (a `kind` container) takes over from `old` under
/// `name`.
struct HandOver<'a> {
    container: &'a Wanted<'a>,
    new: &'a ManagedContainer,
    kind: Successor,
    name: &'a str,
    old: &'a [&'a ManagedContainer],
}

/// Whether two instances of `c` could get in each other's way on the host:
/// a host port, the host's namespaces, privileged mode, a device or a
/// writable volume. Such a container's old instance is stopped before its
/// replacement starts.
fn claims_host_resources(c: &ContainerV1<'_>) -> bool {
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
/// its id and what remains to retire its predecessors.
///
/// A replacement is created while the old container still runs (under a
/// temporary name when the old one holds the name), so a replacement that
/// cannot be created leaves the old container untouched. It is then
/// started before the old one stops, or after when the container claims
/// host resources or the device says `stop-first`; a replacement that does
/// not start is removed and a stopped old container is started again.
pub(super) async fn ensure_container<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    w: &Wanted<'_>,
    existing: &[ManagedContainer],
) -> Result<(String, Option<Leftover>), ReplaceError> {
    let c = &w.c;
    let hash = w.hash.clone();
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
        return keep_current(ctx, deployment, w, current, &name, &mine).await;
    }
    // IfNotPresent, the common case: skip the existence check on the fast
    // path; a create that fails for want of the image pulls and retries.
    if c.pull_policy != PullPolicy::IfNotPresent {
        ensure_image(ctx, deployment, revision, w).await?;
    }
    let create_name = if mine.iter().any(|e| e.name == name) {
        // The spec hash makes the name unique per spec: a leftover under
        // it has this very spec and was taken as `current` above.
        format!("{name}-{hash}")
    } else {
        name.clone()
    };
    let new = create(ctx, deployment, revision, w, create_name).await?;
    let leftover = hand_over(
        ctx,
        deployment,
        HandOver {
            container: w,
            new: &new,
            kind: Successor::Created,
            name: &name,
            old: &mine,
        },
    )
    .await?;
    crate::info!("{deployment}: started {} (revision {revision})", new.name);
    Ok((new.id, leftover))
}

/// The container with the wanted spec exists: leave it alone, unless it
/// should run and does not: created but never started (an agent crash
/// between create and start), or exited where its restart policy says it
/// runs again (after a reboot Podman does not restart containers by itself
/// unless podman-restart.service is enabled). Its other containers go.
/// A container the agent restarts itself is started here only when it
/// never ran: an exited one is the back-off's (`restart`).
async fn keep_current<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    w: &Wanted<'_>,
    current: &ManagedContainer,
    name: &str,
    mine: &[&ManagedContainer],
) -> Result<(String, Option<Leftover>), ReplaceError> {
    let stale: Vec<&ManagedContainer> = mine
        .iter()
        .copied()
        .filter(|e| e.id != current.id)
        .collect();
    let should_start = match map_state(&current.state) {
        ContainerState::Created => true,
        ContainerState::Exited if w.agent_restarts => false,
        ContainerState::Exited => match w.c.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => current.exit_code != 0,
            RestartPolicy::Never => false,
        },
        _ => false,
    };
    let kind = if should_start {
        Successor::ExistingToStart
    } else {
        Successor::Existing
    };
    let leftover = hand_over(
        ctx,
        deployment,
        HandOver {
            container: w,
            new: current,
            kind,
            name,
            old: &stale,
        },
    )
    .await?;
    if should_start {
        crate::info!("{deployment}: started existing {}", current.name);
    }
    Ok((current.id.clone(), leftover))
}

/// Creates the container, pulling its image first when an IfNotPresent
/// create fails for want of it.
async fn create<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    w: &Wanted<'_>,
    name: String,
) -> Result<ManagedContainer, ReplaceError> {
    let c = &w.c;
    let spec = create_spec(ctx, deployment, revision, w, name);
    let t = Instant::now();
    let id = match ctx.runtime.create(&spec).await {
        Err(e)
            if c.pull_policy == PullPolicy::IfNotPresent
                && !ctx.runtime.image_exists(&spec.image).await.unwrap_or(true) =>
        {
            crate::debug!("{deployment}: {e}; pulling {}", spec.image, e = Chain(&e));
            ensure_image(ctx, deployment, revision, w).await?;
            ctx.runtime
                .create(&spec)
                .await
                .map_err(ReplaceError::Create)?
        }
        other => other.map_err(ReplaceError::Create)?,
    };
    crate::debug!("{deployment}: created {} in {} ms", spec.name, ms(t));
    Ok(ManagedContainer {
        id,
        name: spec.name,
        labels: BTreeMap::new(),
        state: "created".into(),
        exit_code: 0,
    })
}

/// Brings `new` up in place of `old`: starts it (unless it is left as it
/// is), stopping the old containers first when two instances must not
/// overlap; on failure removes `new` (when this pass created it) and starts
/// again the old containers it stopped. Then gives `new` its `name`
/// (moving an old holder aside), so that once the status says Running the
/// name is the new container's. Returns what is left: removing `old`.
async fn hand_over<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    h: HandOver<'_>,
) -> Result<Option<Leftover>, ReplaceError> {
    if h.kind.starts() {
        start(ctx, deployment, &h).await?;
    }
    let mut retired: Vec<(String, String, u64)> = Vec::new();
    let mut old_first: Vec<&ManagedContainer> = Vec::new();
    let name = h.name;
    for o in h.old {
        if h.new.name != name && o.name == name {
            let aside = format!("{name}-old-{}", &o.id[..o.id.len().min(12)]);
            if let Err(e) = ctx.runtime.rename(&o.id, &aside).await {
                // Cannot move it aside: remove it now, the slow way.
                crate::debug!("{deployment}: cannot rename {}: {e}", o.name, e = Chain(&e));
                old_first.push(o);
                continue;
            }
            retired.push((o.id.clone(), aside, stop_timeout_of(ctx, o)));
        } else {
            retired.push((o.id.clone(), o.name.clone(), stop_timeout_of(ctx, o)));
        }
    }
    for o in old_first {
        ctx.runtime
            .remove(&o.id, stop_timeout_of(ctx, o))
            .await
            .map_err(|source| ReplaceError::RemoveOld {
                name: o.name.clone(),
                source,
            })?;
    }
    if h.new.name != name {
        ctx.runtime
            .rename(&h.new.id, name)
            .await
            .map_err(|source| ReplaceError::Rename {
                from: h.new.name.clone(),
                to: name.to_string(),
                source,
            })?;
    }
    Ok((!retired.is_empty()).then_some(Leftover { old: retired }))
}

/// Starts the hand-over's new container, stopping the old ones first when
/// the container claims host resources or the device says stop-first. On
/// failure, leaves nothing half-made behind (the next attempt creates
/// afresh) and the old revision running as it was.
async fn start<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    h: &HandOver<'_>,
) -> Result<(), ReplaceError> {
    let discard_new = || async {
        if h.kind == Successor::Created {
            let _ = ctx.runtime.remove(&h.new.id, 0).await;
        }
    };
    let stop_first =
        ctx.replace_order == ReplaceOrder::StopFirst || claims_host_resources(&h.container.c);
    let mut stopped: Vec<&ManagedContainer> = Vec::new();
    if stop_first {
        for o in h
            .old
            .iter()
            .copied()
            .filter(|o| map_state(&o.state) == ContainerState::Running)
        {
            let t = Instant::now();
            if let Err(error) = ctx.runtime.stop(&o.id, stop_timeout_of(ctx, o)).await {
                discard_new().await;
                return Err(ReplaceError::StopOld {
                    name: o.name.clone(),
                    error,
                    not_restarted: restart(ctx, deployment, &stopped).await,
                });
            }
            crate::debug!("{deployment}: stopped the old {} in {} ms", o.name, ms(t));
            stopped.push(o);
        }
    }
    let t = Instant::now();
    if let Err(error) = ctx.runtime.start(&h.new.id).await {
        discard_new().await;
        return Err(ReplaceError::Start {
            error,
            not_restarted: restart(ctx, deployment, &stopped).await,
        });
    }
    crate::debug!("{deployment}: started {} in {} ms", h.new.name, ms(t));
    Ok(())
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
) -> NotRestarted {
    let mut not_back = NotRestarted::default();
    for o in stopped {
        match ctx.runtime.start(&o.id).await {
            Ok(()) => crate::info!("{deployment}: restarted the old {}", o.name),
            Err(e) => {
                crate::warn!(
                    "{deployment}: cannot restart the old {}: {e}",
                    o.name,
                    e = Chain(&e)
                );
                not_back.0.push((o.name.clone(), e));
            }
        }
    }
    not_back
}

/// Removes the old containers of a replacement.
pub(super) async fn retire<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    leftover: &Leftover,
) -> Result<(), ReplaceError> {
    for (id, name, stop_timeout) in &leftover.old {
        let t = Instant::now();
        ctx.runtime
            .remove(id, *stop_timeout)
            .await
            .map_err(|source| ReplaceError::RemoveOld {
                name: name.clone(),
                source,
            })?;
        crate::debug!("{deployment}: removed the old {name} in {} ms", ms(t));
    }
    Ok(())
}

async fn ensure_image<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    w: &Wanted<'_>,
) -> Result<(), ReplaceError> {
    let c = &w.c;
    let image = c.image.as_str();
    let present = || async {
        ctx.runtime
            .image_exists(image)
            .await
            .map_err(ReplaceError::ImageCheck)
    };
    let pull = || async {
        // Pulls can take minutes on a board: say so meanwhile.
        report(
            ctx,
            deployment,
            simple_status(revision, Phase::Pulling, &format!("pulling {image}")),
        );
        ctx.runtime
            .pull(image, w.pull_auth.as_deref())
            .await
            .map_err(ReplaceError::Pull)
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
                Err(ReplaceError::ImageMissing {
                    image: image.to_string(),
                })
            }
        }
    }
}
