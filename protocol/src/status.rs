//! What agents write back for each deployment: its status.

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::limits::{MAX_NAME_LEN, MAX_STATUS_CONTAINERS, MAX_STRING_LEN, MAX_WARNING_LEN};
use crate::text::Text;
use crate::validate::{FieldPath, Validate, ValidationError, check_len};
use crate::wire;

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
