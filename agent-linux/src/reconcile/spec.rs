//! What a desired state asks for: the value decoded, its score checked
//! against the device's policy, and each container turned into the
//! runtime's [`CreateSpec`].

use std::collections::BTreeMap;

use protocol::{
    BoundedVec, Container, DesiredState, IotScore, Phase, PodmanV0Score, PortProtocol,
    RestartPolicy, ScoreError, Text,
};

use super::Context;
use crate::podman::{CreateSpec, MountSpec, PortSpec, labels};
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

/// The score of `desired`, stored under `deployment`'s key, when the value
/// names that deployment, this agent knows the score's type and the
/// device's policy allows every container.
pub(super) fn score<'a>(
    deployment: &str,
    desired: &'a DesiredState<'_>,
    policy: &Allowances,
) -> Result<PodmanV0Score<'a>, SpecError<'a>> {
    if desired.deployment.as_str() != deployment {
        return Err(SpecError::WrongKey {
            named: desired.deployment.as_str().to_string(),
            key: deployment.to_string(),
        });
    }
    let score = match desired.score.decode().map_err(SpecError::Score)? {
        IotScore::PodmanV0(score) => score,
        // Not run by this agent yet (it does not advertise it either).
        IotScore::PodmanV1(_) => {
            return Err(SpecError::Score(ScoreError::Unsupported {
                type_name: desired.score.type_name.clone(),
            }));
        }
    };
    check_policy(policy, &score.containers).map_err(SpecError::Refused)?;
    Ok(score)
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

/// The spec hash a container's label carries: a container whose hash is
/// unchanged is never touched.
pub(super) fn spec_hash(c: &Container<'_>) -> String {
    format!("{:016x}", protocol::wire::hash_of(c))
}

/// The runtime's spec for `c`, created as `name`, with the agent's labels.
pub(super) fn create_spec<R>(
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
