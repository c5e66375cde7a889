//! Values agents write back: per-deployment status and the device heartbeat.

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::limits::{
    MAX_NAME_LEN, MAX_STATUS_CONTAINERS, MAX_STRING_LEN, MAX_WARNING_LEN, MAX_WARNINGS,
};
use crate::text::Text;
use crate::validate::{FieldPath, Validate, ValidationError, check_len};
use crate::wire::{self, DecodeError, FORMAT_VERSION, FORMAT_VERSION_2};

/// Where a deployment stands on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// Received, not yet acted on.
    Pending,
    /// Pulling images.
    Pulling,
    /// Creating and starting containers.
    Starting,
    /// Every container runs.
    Running,
    /// Something failed; the message says what.
    Failed,
    /// The score's type is unknown to this agent; the message names it.
    Unsupported,
    /// The deployment was deleted and its containers removed.
    Removed,
    /// Every container exited successfully and none will be restarted.
    Completed,
}

impl Phase {
    /// The name, as shown to users.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Pulling => "Pulling",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Failed => "Failed",
            Phase::Unsupported => "Unsupported",
            Phase::Removed => "Removed",
            Phase::Completed => "Completed",
        }
    }
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runtime state of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ContainerState {
    /// Not (yet) created.
    Missing,
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by its restart policy.
    Restarting,
    /// Exited; see the exit code.
    Exited,
    /// Unrecoverable runtime error.
    Dead,
    /// A state this protocol version has no name for.
    Unknown,
}

/// Status of one container of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus<'a> {
    /// The container's name in the score.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Its state.
    pub state: ContainerState,
    /// Exit code of the last exit, when it has exited.
    pub exit_code: Option<i32>,
    /// How often the runtime restarted it.
    pub restart_count: u32,
}

/// The value of `device-status` key `<device_id>.<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus<'a> {
    /// The desired-state revision this status describes.
    pub revision: u64,
    /// Overall phase.
    pub phase: Phase,
    /// Per-container state.
    #[serde(borrow)]
    pub containers: BoundedVec<ContainerStatus<'a>, MAX_STATUS_CONTAINERS>,
    /// A human-readable message, empty when there is nothing to say.
    #[serde(borrow)]
    pub message: Text<'a>,
    /// When the agent wrote it, milliseconds since the Unix epoch (device
    /// clock, which may be wrong on boards without an RTC).
    pub timestamp_ms: u64,
}

impl Validate for DeploymentStatus<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        for (i, c) in self.containers.iter().enumerate() {
            check_len(
                FieldPath::top("containers").at(i, Some("name")),
                &c.name,
                MAX_NAME_LEN,
            )?;
        }
        check_len(FieldPath::top("message"), &self.message, MAX_STRING_LEN)
    }
}

/// Written and read in format version 1 only.
impl wire::Encode for DeploymentStatus<'_> {}
impl<'de: 'a, 'a> wire::Decode<'de> for DeploymentStatus<'a> {}

/// The value of `device-heartbeat` key `<device_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat<'a> {
    /// The agent's version.
    #[serde(borrow)]
    pub agent_version: Text<'a>,
    /// CPU architecture, e.g. `aarch64`.
    #[serde(borrow)]
    pub arch: Text<'a>,
    /// Operating system, e.g. `linux`.
    #[serde(borrow)]
    pub os: Text<'a>,
    /// The container runtime's version; empty when it is unreachable.
    #[serde(borrow)]
    pub podman_version: Text<'a>,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Deployments the agent currently manages.
    pub deployments: u32,
    /// When the agent wrote it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What the device wants its operator to know although its deployments
    /// run, e.g. that it cannot cache their desired state; empty when
    /// nothing. Format version 2: a heartbeat without warnings is written in
    /// version 1, where this field does not exist (hence the skip, which
    /// leaves exactly the version-1 bytes).
    #[serde(borrow, default, skip_serializing_if = "no_warnings")]
    pub warnings: BoundedVec<Text<'a>, MAX_WARNINGS>,
}

fn no_warnings(w: &BoundedVec<Text<'_>, MAX_WARNINGS>) -> bool {
    w.is_empty()
}

/// A heartbeat in format version 1, the fields before `warnings`.
#[derive(Deserialize)]
struct HeartbeatV1<'a> {
    #[serde(borrow)]
    agent_version: Text<'a>,
    #[serde(borrow)]
    arch: Text<'a>,
    #[serde(borrow)]
    os: Text<'a>,
    #[serde(borrow)]
    podman_version: Text<'a>,
    uptime_secs: u64,
    deployments: u32,
    timestamp_ms: u64,
}

/// Version 1 without warnings, version 2 with them.
impl wire::Encode for Heartbeat<'_> {
    fn format_version(&self) -> u8 {
        if self.warnings.is_empty() {
            FORMAT_VERSION
        } else {
            FORMAT_VERSION_2
        }
    }
}

/// Both versions: a version-1 heartbeat has no warnings.
impl<'de: 'a, 'a> wire::Decode<'de> for Heartbeat<'a> {
    fn take_body(version: u8, body: &'de [u8]) -> Result<(Self, &'de [u8]), DecodeError> {
        match version {
            FORMAT_VERSION => {
                let (v1, rest) = wire::take::<HeartbeatV1<'a>>(body)?;
                let h = Heartbeat {
                    agent_version: v1.agent_version,
                    arch: v1.arch,
                    os: v1.os,
                    podman_version: v1.podman_version,
                    uptime_secs: v1.uptime_secs,
                    deployments: v1.deployments,
                    timestamp_ms: v1.timestamp_ms,
                    warnings: BoundedVec::new(),
                };
                Ok((h, rest))
            }
            FORMAT_VERSION_2 => wire::take(body),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }
}

impl Validate for Heartbeat<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        check_len(
            FieldPath::top("agentVersion"),
            &self.agent_version,
            MAX_NAME_LEN,
        )?;
        check_len(FieldPath::top("arch"), &self.arch, MAX_NAME_LEN)?;
        check_len(FieldPath::top("os"), &self.os, MAX_NAME_LEN)?;
        check_len(
            FieldPath::top("podmanVersion"),
            &self.podman_version,
            MAX_NAME_LEN,
        )?;
        for (i, w) in self.warnings.iter().enumerate() {
            check_len(FieldPath::top("warnings").at(i, None), w, MAX_WARNING_LEN)?;
        }
        Ok(())
    }
}

/// The longest prefix of `message` within [`MAX_STRING_LEN`] that ends on a
/// character boundary, for messages from the runtime of unknown length.
pub fn clip_message(message: &str) -> &str {
    clip(message, MAX_STRING_LEN)
}

/// The longest prefix of `warning` within [`MAX_WARNING_LEN`] that ends on
/// a character boundary.
pub fn clip_warning(warning: &str) -> &str {
    clip(warning, MAX_WARNING_LEN)
}

fn clip(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(feature = "alloc")]
impl DeploymentStatus<'_> {
    /// A copy that owns its strings.
    pub fn into_owned(self) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision: self.revision,
            phase: self.phase,
            containers: self.containers.map(|c| ContainerStatus {
                name: c.name.into_owned(),
                state: c.state,
                exit_code: c.exit_code,
                restart_count: c.restart_count,
            }),
            message: self.message.into_owned(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

#[cfg(feature = "alloc")]
impl Heartbeat<'_> {
    /// A copy that owns its strings.
    pub fn into_owned(self) -> Heartbeat<'static> {
        Heartbeat {
            agent_version: self.agent_version.into_owned(),
            arch: self.arch.into_owned(),
            os: self.os.into_owned(),
            podman_version: self.podman_version.into_owned(),
            uptime_secs: self.uptime_secs,
            deployments: self.deployments,
            timestamp_ms: self.timestamp_ms,
            warnings: self.warnings.map(Text::into_owned),
        }
    }
}
