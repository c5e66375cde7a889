//! What a desired state asks for: the value decoded, its score checked
//! against the device's policy, and each container turned into the
//! runtime's [`CreateSpec`] (with the device's update lock mounted in when
//! the container asks for it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::{
    BoundedVec, Container, ContainerV1, DesiredState, EnvVarV1, IotScore, Phase, PortProtocol,
    RestartPolicy, ScoreError, Text, VolumeV1,
};

use super::Context;
use crate::podman::{CreateSpec, ManagedContainer, MountSpec, PortSpec, RunOptions, labels};
use crate::policy::{Allowances, PolicyError};

/// Why a desired state is not applied. Reported once as the deployment's
/// status (the message is this error's), not retried: only a new value
/// changes the answer.
#[derive(Debug, thiserror::Error)]
pub enum SpecError<'a> {
    /// The value does not decode.
    #[error("cannot decode the desired state")]
    Undecodable(#[source] protocol::wire::DecodeError),
    /// The value names another deployment than its key.
    #[error("the value names deployment {named:?} but is stored under key {key:?}")]
    WrongKey {
        /// The deployment the value names.
        named: String,
        /// The deployment of the key it is stored under.
        key: String,
    },
    /// The score's type is unknown, or its data does not decode.
    #[error(transparent)]
    Score(ScoreError<'a>),
    /// The device's security settings refuse a container.
    #[error(transparent)]
    Refused(PolicyError),
}

impl SpecError<'_> {
    /// The phase to report: `Unsupported` for an unknown score type, else
    /// `Failed`.
    pub fn phase(&self) -> Phase {
        match self {
            SpecError::Score(ScoreError::Unsupported { .. }) => Phase::Unsupported,
            _ => Phase::Failed,
        }
    }
}

/// A desired-state value.
pub(super) fn decode(value: &[u8]) -> Result<DesiredState<'_>, SpecError<'static>> {
    protocol::wire::decode::<DesiredState<'_>>(value).map_err(SpecError::Undecodable)
}

/// One container of the desired score, as the reconciler runs it: every
/// score type's container as a [`ContainerV1`] (a `PodmanV0` one with the
/// new fields at their defaults), with the spec hash of the container as
/// it was sent.
#[derive(Debug, Clone)]
pub(super) struct Wanted<'a> {
    /// The container.
    pub c: ContainerV1<'a>,
    /// Its spec hash label: of the score's own container type, so that an
    /// agent that runs `PodmanV1` does not replace the containers an older
    /// agent created for `PodmanV0` (their hash is of the `Container`).
    pub hash: String,
    /// The agent restarts it with back-off (`PodmanV1`); else Podman's
    /// restart policy does, as before (`PodmanV0`).
    pub agent_restarts: bool,
    /// Where its Secret references come from (Podman secrets, files);
    /// empty until the values are opened.
    pub handed: crate::secrets::HandedOver,
    /// The login for pulling its image, when the desired state has one.
    pub pull_auth: Option<std::rc::Rc<crate::podman::RegistryAuth>>,
}

/// The containers of `desired`, stored under `deployment`'s key, when the
/// value names that deployment, this agent knows the score's type, no
/// volume comes from the update lock's directory `lock_dir` (when given)
/// and the device's policy allows every container.
pub(super) fn score<'a>(
    deployment: &str,
    desired: &'a DesiredState<'_>,
    policy: &Allowances,
    lock_dir: Option<&Path>,
) -> Result<Vec<Wanted<'a>>, SpecError<'a>> {
    if desired.deployment.as_str() != deployment {
        return Err(SpecError::WrongKey {
            named: desired.deployment.as_str().to_string(),
            key: deployment.to_string(),
        });
    }
    let wanted: Vec<Wanted<'a>> = match desired.score.decode().map_err(SpecError::Score)? {
        IotScore::PodmanV0(score) => score
            .containers
            .map(|c| Wanted {
                hash: spec_hash(&c),
                c: ContainerV1::from_v0(c),
                agent_restarts: false,
                handed: Default::default(),
                pull_auth: None,
            })
            .to_vec(),
        IotScore::PodmanV1(score) => score
            .containers
            .map(|c| Wanted {
                hash: format!("{:016x}", protocol::wire::hash_of(&c)),
                c,
                agent_restarts: true,
                handed: Default::default(),
                pull_auth: None,
            })
            .to_vec(),
    };
    let common: Vec<Container<'_>> = wanted.iter().map(|w| common_fields(&w.c)).collect();
    // Before the policy: a lock directory under an allowed host path is
    // still the agent's.
    if let Some(lock_dir) = lock_dir {
        for (i, c) in common.iter().enumerate() {
            crate::policy::check_update_lock_path(i, c, lock_dir).map_err(SpecError::Refused)?;
        }
    }
    check_policy(policy, &common).map_err(SpecError::Refused)?;
    Ok(wanted)
}

/// Why the reconciler of `deployment` would not apply `value` on a device
/// with `policy` (the message it would report), or `None` if it would.
/// For a value kept to be applied later (the rollback's last healthy
/// one): the policy, or the agent, may have changed since it ran. The
/// update lock's directory is not checked here: such a value ran on this
/// device, so none of its volumes came from there, and the reconciler
/// checks again when it applies it.
pub fn refusal(deployment: &str, value: &[u8], policy: &Allowances) -> Option<String> {
    let desired = match decode(value) {
        Ok(d) => d,
        Err(e) => return Some(crate::log::Chain(&e).to_string()),
    };
    score(deployment, &desired, policy, None)
        .err()
        .map(|e| crate::log::Chain(&e).to_string())
}

/// Why the update lock's file cannot be made ready.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the update lock {}", path.display())]
pub struct LockFileError {
    /// The lock file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// Makes sure `lock_dir` and the lock file in it exist, before a container
/// that gets them mounted is created: a bind mount of a missing directory
/// fails, and the container sees it read-only, so it cannot create the
/// file itself (and holders must all lock the same file).
pub(super) fn ensure_update_lock(lock_dir: &Path) -> Result<(), LockFileError> {
    let lock = crate::gate::lock::UpdateLock::new(lock_dir.to_path_buf());
    lock.ensure().map_err(|source| LockFileError {
        path: lock.path(),
        source,
    })
}

/// The fields `PodmanV0` and `PodmanV1` share, as a `Container`: what the
/// device's policy rules on (none of the new fields asks anything of the
/// host).
fn common_fields<'a>(c: &ContainerV1<'a>) -> Container<'a> {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        // Secret references ask nothing of the host: the policy rules on
        // the rest.
        // (a subset of a bounded list: within the bound).
        env: BoundedVec::try_from_iter(c.env.iter().filter_map(EnvVarV1::to_v0))
            .unwrap_or_default(),
        ports: c.ports.clone(),
        volumes: BoundedVec::try_from_iter(c.volumes.iter().filter_map(VolumeV1::to_v0))
            .unwrap_or_default(),
        restart_policy: c.restart_policy,
        pull_policy: c.pull_policy,
        labels: c.labels.clone(),
        privileged: c.privileged,
        host_network: c.host_network,
        host_pid: c.host_pid,
        host_ipc: c.host_ipc,
        cap_add: c.cap_add.clone(),
        devices: c.devices.clone(),
    }
}

/// Refuses what the device's security settings do not allow (see
/// [`crate::policy`]).
pub(super) fn check_policy(
    policy: &Allowances,
    containers: &[Container<'_>],
) -> Result<(), PolicyError> {
    for c in containers {
        crate::policy::check_container(c, policy)?;
    }
    Ok(())
}

/// The spec hash a `PodmanV0` container's label carries: a container whose
/// hash is unchanged is never touched.
pub(super) fn spec_hash(c: &Container<'_>) -> String {
    format!("{:016x}", protocol::wire::hash_of(c))
}

/// Seconds between SIGTERM and SIGKILL for `c`: its
/// `stopGracePeriodSeconds`, else the agent's `stop_timeout_secs`.
pub(super) fn stop_timeout<R>(ctx: &Context<R>, c: &ContainerV1<'_>) -> u64 {
    c.stop_grace_period_seconds
        .map_or(ctx.stop_timeout_secs, u64::from)
}

/// The stop timeout of a container the agent created: the one its label
/// records, else the agent's.
pub fn stop_timeout_of<R>(ctx: &Context<R>, m: &ManagedContainer) -> u64 {
    m.label(labels::STOP_TIMEOUT)
        .parse()
        .unwrap_or(ctx.stop_timeout_secs)
}

/// The ports of `c` as the runtime publishes them.
pub(super) fn port_specs(c: &ContainerV1<'_>) -> Vec<PortSpec> {
    c.ports
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
        .collect()
}

/// The runtime's spec for `w`, created as `name`, with the agent's labels.
pub(super) fn create_spec<R>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    w: &Wanted<'_>,
    name: String,
) -> CreateSpec {
    let c = &w.c;
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
        (labels::SPEC_HASH, w.hash.clone()),
        (labels::CONTAINER, c.name.as_str().to_string()),
    ] {
        labels_map.insert(k.to_string(), v);
    }
    if let Some(secs) = c.stop_grace_period_seconds {
        labels_map.insert(labels::STOP_TIMEOUT.to_string(), secs.to_string());
    }
    let r = &c.resources;
    CreateSpec {
        name,
        image: c.image.as_str().to_string(),
        entrypoint: list(&c.command),
        command: list(&c.args),
        // A Secret's value comes as a Podman secret, never in `env`.
        env: c
            .env
            .iter()
            .filter(|e| e.value_from.is_none())
            .map(|e| (e.name.as_str().to_string(), e.value.as_str().to_string()))
            .collect(),
        secret_env: w.handed.env.clone(),
        ports: port_specs(c),
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
            // The agent's lock directory, read-only: a holder locks the
            // file, it cannot replace it. Part of the spec hash (the
            // container's `updateLock`), so toggling it replaces the
            // container.
            .chain(c.update_lock.then(|| MountSpec::Bind {
                source: ctx.lock_dir.display().to_string(),
                dest: protocol::score_v1::UPDATE_LOCK_DIR.to_string(),
                read_only: true,
            }))
            // Secret volumes: the files on the agent's tmpfs, read-only.
            .chain(w.handed.mounts.iter().cloned())
            .collect(),
        // Podman restarts at once, with no delay, and an agent's `start`
        // resets its count: the agent restarts `PodmanV1` containers
        // itself, with back-off (see `restart`).
        restart_policy: match (w.agent_restarts, c.restart_policy) {
            (true, _) | (false, RestartPolicy::Never) => "no",
            (false, RestartPolicy::Always) => "always",
            (false, RestartPolicy::OnFailure) => "on-failure",
        },
        labels: labels_map,
        stop_timeout_secs: stop_timeout(ctx, c),
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
        run: RunOptions {
            memory_limit: r.memory_limit.map(|m| m.bytes()),
            cpu_millis: r.cpu_limit.map(|q| q.millicores()),
            cpu_weight: r.cpu_weight,
            pids_limit: r.pids_limit,
            user: c.user.as_ref().map(|u| u.as_str().to_string()),
            work_dir: c.working_dir.as_ref().map(|d| d.as_str().to_string()),
            read_only_root: c.read_only_root_filesystem,
            init: c.init,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::MemoryRuntime;
    use protocol::score_v1::UPDATE_LOCK_DIR;
    use protocol::{IotScore, PodmanV1Score, Volume};
    use std::rc::Rc;

    fn context(lock_dir: &Path) -> Context<MemoryRuntime> {
        Context {
            runtime: Rc::new(MemoryRuntime::default()),
            device_id: "dev".into(),
            stop_timeout_secs: 10,
            replace_order: Default::default(),
            policy: Allowances::default(),
            status: tokio::sync::mpsc::unbounded_channel().0,
            retry_base: std::time::Duration::from_millis(1),
            retry_cap: std::time::Duration::from_millis(1),
            restart_backoff: Default::default(),
            lock_dir: lock_dir.to_path_buf(),
            secrets: Rc::new(crate::secrets::Secrets::none("dev")),
        }
    }

    fn value(containers: Vec<ContainerV1<'static>>) -> Vec<u8> {
        let score = IotScore::PodmanV1(PodmanV1Score {
            containers: BoundedVec::try_from_iter(containers).unwrap(),
        });
        protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision: 1,
            score: score.to_payload().unwrap(),
            rollout: Default::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap()
    }

    fn container(update_lock: bool) -> ContainerV1<'static> {
        ContainerV1 {
            update_lock,
            ..ContainerV1::new(Text::borrowed("app"), Text::borrowed("localhost/x:1"))
        }
    }

    fn bind(host: &'static str) -> Volume<'static> {
        Volume {
            name: None,
            host_path: Some(Text::borrowed(host)),
            mount_path: Text::borrowed("/data"),
            read_only: false,
        }
    }

    /// Only a container with `updateLock` gets the lock directory, read-only
    /// at the path the contract names, and toggling it changes the spec
    /// hash (the container is replaced).
    #[test]
    fn update_lock_mounts_the_agent_lock_directory_read_only() {
        let ctx = context(Path::new("/var/lib/test-lock"));
        let lock = MountSpec::Bind {
            source: "/var/lib/test-lock".into(),
            dest: UPDATE_LOCK_DIR.into(),
            read_only: true,
        };
        let mut hashes = Vec::new();
        for on in [false, true] {
            let v = value(vec![container(on)]);
            let desired = decode(&v).unwrap();
            let wanted = score("web", &desired, &ctx.policy, Some(&ctx.lock_dir)).unwrap();
            let spec = create_spec(&ctx, "web", 1, &wanted[0], "n".into());
            assert_eq!(spec.mounts.contains(&lock), on, "{:?}", spec.mounts);
            assert_eq!(spec.mounts.len(), usize::from(on));
            hashes.push(wanted[0].hash.clone());
        }
        assert_ne!(hashes[0], hashes[1], "updateLock is not in the spec hash");
    }

    /// A bind mount of the lock directory or of a path in it is refused,
    /// naming the field; a sibling that only shares the prefix is not.
    #[test]
    fn a_host_path_in_the_lock_directory_is_refused_with_the_field_named() {
        let lock_dir = Path::new("/run/iot-agent");
        let allow = Allowances {
            host_paths: vec![PathBuf::from("/run")],
            ..Allowances::default()
        };
        for bad in [
            "/run/iot-agent",
            "/run/iot-agent/",
            "/run/iot-agent/update.lock",
        ] {
            let mut c = container(false);
            c.name = Text::borrowed("side");
            c.volumes =
                BoundedVec::try_from_iter([bind("/run/other"), bind(bad)].map(VolumeV1::from_v0))
                    .unwrap();
            let v = value(vec![container(true), c]);
            let desired = decode(&v).unwrap();
            let e = score("web", &desired, &allow, Some(lock_dir)).unwrap_err();
            assert!(
                matches!(&e, SpecError::Refused(PolicyError::UpdateLockPath { path, .. }) if path == bad),
                "{e:?}"
            );
            let m = crate::log::Chain(&e).to_string();
            assert!(
                m.starts_with("containers[1].volumes[1].hostPath: ")
                    && m.contains("the update lock's path is the agent's"),
                "{m}"
            );
            assert_eq!(e.phase(), Phase::Failed);
            // The rollback's check of a value that ran here skips it.
            assert!(refusal("web", &v, &allow).is_none());
        }
        let mut c = container(false);
        c.volumes =
            BoundedVec::try_from_iter([bind("/run/iot-agent2")].map(VolumeV1::from_v0)).unwrap();
        let v = value(vec![c]);
        let desired = decode(&v).unwrap();
        assert!(score("web", &desired, &allow, Some(lock_dir)).is_ok());
    }

    /// The lock directory and file are created when missing, and an
    /// existing file is left as it is (a holder may have it locked).
    #[test]
    fn the_lock_file_is_created_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let lock_dir = dir.path().join("a/b");
        ensure_update_lock(&lock_dir).unwrap();
        let file = lock_dir.join("update.lock");
        std::fs::write(&file, "kept").unwrap();
        ensure_update_lock(&lock_dir).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        std::fs::write(dir.path().join("f"), "").unwrap();
        let e = ensure_update_lock(&dir.path().join("f/x")).unwrap_err();
        assert!(e.to_string().contains("f/x/update.lock"), "{e}");
    }
}
