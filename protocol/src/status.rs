//! What agents write back for each deployment: its status.
//!
//! Two format versions: version 1 (phase, per-container state, message) and
//! version 2, which adds health: the reason for a phase, the revision a
//! device runs after a rollback, and each container's health and reason,
//! after the version-1 fields. A status is written in version 1 when it
//! holds nothing version 1 cannot say, byte for byte as before.

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::limits::{MAX_NAME_LEN, MAX_STATUS_CONTAINERS, MAX_STRING_LEN, MAX_WARNING_LEN};
use crate::text::Text;
use crate::validate::{FieldPath, Validate, ValidationError, check_len};
use crate::wire::{self, DecodeError, FORMAT_VERSION, FORMAT_VERSION_2, FORMAT_VERSION_3};

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
    /// Every container runs and every check has passed for the rollout's
    /// `minHealthySeconds` (containers without a check count while
    /// running). Format version 2.
    Healthy,
    /// A container's check failed `failureThreshold` times in a row; the
    /// reason is `HealthCheckFailed`. Format version 2.
    Unhealthy,
    /// A container keeps exiting; the agent waits before restarting it.
    /// Format version 2.
    CrashLoopBackOff,
    /// `revision` failed (see the reason) and the device runs
    /// `running_revision` again. Format version 2.
    RolledBack,
    /// `revision` arrived but the device may not apply it yet (see the
    /// reason and `waiting`); it runs `running_revision` meanwhile, with
    /// the new images already pulled. Format version 3.
    Waiting,
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
            Phase::Healthy => "Healthy",
            Phase::Unhealthy => "Unhealthy",
            Phase::CrashLoopBackOff => "CrashLoopBackOff",
            Phase::RolledBack => "RolledBack",
            Phase::Waiting => "Waiting",
        }
    }

    /// Whether format version 1 has this phase.
    const fn in_version_1(self) -> bool {
        (self as u8) <= Phase::Completed as u8
    }

    /// Whether format version 2 has this phase.
    const fn in_version_2(self) -> bool {
        (self as u8) <= Phase::RolledBack as u8
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
    /// Exited; the agent restarts it after a back-off (see the reason).
    /// Format version 2.
    Waiting,
}

impl ContainerState {
    /// The name, as shown to users.
    pub const fn as_str(self) -> &'static str {
        match self {
            ContainerState::Missing => "Missing",
            ContainerState::Created => "Created",
            ContainerState::Running => "Running",
            ContainerState::Paused => "Paused",
            ContainerState::Restarting => "Restarting",
            ContainerState::Exited => "Exited",
            ContainerState::Dead => "Dead",
            ContainerState::Unknown => "Unknown",
            ContainerState::Waiting => "Waiting",
        }
    }

    /// Whether format version 1 has this state.
    const fn in_version_1(self) -> bool {
        (self as u8) <= ContainerState::Unknown as u8
    }
}

impl core::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a deployment or a container is in its phase or state, when that is
/// not plain. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Reason {
    /// Nothing to explain (what version 1 means).
    #[default]
    None,
    /// A container keeps exiting; it is restarted after a growing delay.
    CrashLoopBackOff,
    /// A container went over its memory limit and was killed.
    OOMKilled,
    /// An image could not be pulled; the agent retries with a back-off.
    ImagePullBackOff,
    /// A health check failed `failureThreshold` times in a row.
    HealthCheckFailed,
    /// Anything else that failed; the message says what.
    Error,
    /// The revision did not become `Healthy` within the rollout's
    /// `progressDeadlineSeconds`.
    ProgressDeadlineExceeded,
    /// A workload (or a host process) holds the device's update lock.
    /// Format version 3.
    UpdateLocked,
    /// The device is outside its maintenance windows. Format version 3.
    OutsideMaintenanceWindow,
    /// The update lock was held longer than its `timeoutSeconds` (with
    /// `onTimeout: Fail`). Format version 3.
    UpdateLockTimeout,
    /// The device's clock is not synchronized yet, so its maintenance
    /// windows cannot be trusted. Format version 3.
    ClockNotSynchronized,
}

impl Reason {
    /// The name, as shown to users; empty for `None`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::CrashLoopBackOff => "CrashLoopBackOff",
            Reason::OOMKilled => "OOMKilled",
            Reason::ImagePullBackOff => "ImagePullBackOff",
            Reason::HealthCheckFailed => "HealthCheckFailed",
            Reason::Error => "Error",
            Reason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Reason::UpdateLocked => "UpdateLocked",
            Reason::OutsideMaintenanceWindow => "OutsideMaintenanceWindow",
            Reason::UpdateLockTimeout => "UpdateLockTimeout",
            Reason::ClockNotSynchronized => "ClockNotSynchronized",
        }
    }

    /// Whether format version 2 has this reason.
    const fn in_version_2(self) -> bool {
        (self as u8) <= Reason::ProgressDeadlineExceeded as u8
    }
}

/// Since when a device waits to apply a revision, and until when if it
/// knows. Format version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// When the device started waiting, milliseconds since the Unix epoch
    /// (device clock).
    pub since_ms: u64,
    /// When it expects to apply (the next maintenance window's start), if
    /// known.
    pub until_ms: Option<u64>,
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a container's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Health {
    /// Not yet passed `successThreshold` times (or still in its start
    /// period).
    Starting,
    /// Passing.
    Healthy,
    /// Failed `failureThreshold` times in a row.
    Unhealthy,
}

impl Health {
    /// The name, as shown to users.
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "Starting",
            Health::Healthy => "Healthy",
            Health::Unhealthy => "Unhealthy",
        }
    }
}

impl core::fmt::Display for Health {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Exit code of its last exit, whenever known (also while it waits to
    /// be restarted or runs again after a restart).
    pub exit_code: Option<i32>,
    /// How often it was restarted (by the runtime or the agent).
    pub restart_count: u32,
    /// Its health check's verdict; `None` when it has no check. Format
    /// version 2.
    #[serde(default)]
    pub health: Option<Health>,
    /// Why it is in its state (e.g. `OOMKilled`). Format version 2.
    #[serde(default)]
    pub reason: Reason,
}

impl<'a> ContainerStatus<'a> {
    /// A container named `name` in `state`, every other field empty.
    pub fn new(name: Text<'a>, state: ContainerState) -> Self {
        ContainerStatus {
            name,
            state,
            exit_code: None,
            restart_count: 0,
            health: None,
            reason: Reason::None,
        }
    }

    /// Whether it holds anything format version 1 cannot say.
    fn needs_version_2(&self) -> bool {
        !self.state.in_version_1() || self.health.is_some() || self.reason != Reason::None
    }
}

/// The value of `device-status` key `<device_id>.<deployment>`.
///
/// Its serde form is the wire layout of [`wire::Encode::format_version`]
/// (version 2: the version-1 fields, then the health fields, the
/// containers' after the deployment's); [`wire::decode`] reads both.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeploymentStatus<'a> {
    /// The desired-state revision this status describes.
    pub revision: u64,
    /// Overall phase.
    pub phase: Phase,
    /// Per-container state.
    pub containers: BoundedVec<ContainerStatus<'a>, MAX_STATUS_CONTAINERS>,
    /// A human-readable message, empty when there is nothing to say.
    pub message: Text<'a>,
    /// When the agent wrote it, milliseconds since the Unix epoch (device
    /// clock, which may be wrong on boards without an RTC).
    pub timestamp_ms: u64,
    /// Why the deployment is in its phase (for `RolledBack`, why
    /// `revision` failed). Format version 2.
    pub reason: Reason,
    /// The revision the device runs when it is not `revision`: after a
    /// rollback, the last healthy one; while `Waiting`, the one before.
    /// Format version 2.
    pub running_revision: Option<u64>,
    /// While `Waiting` (or failed waiting): since and until when. Format
    /// version 3.
    pub waiting: Option<Waiting>,
}

impl DeploymentStatus<'_> {
    /// Whether it holds anything format version 1 cannot say.
    fn needs_version_2(&self) -> bool {
        !self.phase.in_version_1()
            || self.reason != Reason::None
            || self.running_revision.is_some()
            || self.containers.iter().any(ContainerStatus::needs_version_2)
    }

    /// Whether it holds anything format version 2 cannot say.
    fn needs_version_3(&self) -> bool {
        !self.phase.in_version_2()
            || !self.reason.in_version_2()
            || self.containers.iter().any(|c| !c.reason.in_version_2())
            || self.waiting.is_some()
    }
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

/// The oldest version that carries what the status holds: an agent that
/// sets nothing new writes what agents of the first release wrote.
impl wire::Encode for DeploymentStatus<'_> {
    fn format_version(&self) -> u8 {
        if self.needs_version_3() {
            FORMAT_VERSION_3
        } else if self.needs_version_2() {
            FORMAT_VERSION_2
        } else {
            FORMAT_VERSION
        }
    }
}

/// A container's version-1 fields.
struct StatusV1Fields<'r, 'a>(&'r ContainerStatus<'a>);

impl Serialize for StatusV1Fields<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let c = self.0;
        let mut t = s.serialize_struct("ContainerStatus", 4)?;
        t.serialize_field("name", &c.name)?;
        t.serialize_field("state", &c.state)?;
        t.serialize_field("exitCode", &c.exit_code)?;
        t.serialize_field("restartCount", &c.restart_count)?;
        t.end()
    }
}

/// The containers' version-2 fields, in the same order as theirs.
struct HealthV2Fields<'r, 'a>(&'r [ContainerStatus<'a>]);

impl Serialize for HealthV2Fields<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| (c.health, c.reason)))
    }
}

/// Written by hand so that the fields stop where the format version says:
/// version 1 is a prefix of version 2, and the containers' new fields come
/// after everything of version 1.
impl Serialize for DeploymentStatus<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        use wire::Encode;
        let version = self.format_version();
        let v2 = version >= FORMAT_VERSION_2;
        let v3 = version >= FORMAT_VERSION_3;
        let fields = if v3 {
            9
        } else if v2 {
            8
        } else {
            5
        };
        let mut t = s.serialize_struct("DeploymentStatus", fields)?;
        t.serialize_field("revision", &self.revision)?;
        t.serialize_field("phase", &self.phase)?;
        t.serialize_field(
            "containers",
            &SeqOf(self.containers.iter().map(StatusV1Fields)),
        )?;
        t.serialize_field("message", &self.message)?;
        t.serialize_field("timestampMs", &self.timestamp_ms)?;
        if v2 {
            t.serialize_field("reason", &self.reason)?;
            t.serialize_field("runningRevision", &self.running_revision)?;
            t.serialize_field("containerHealth", &HealthV2Fields(&self.containers))?;
        }
        if v3 {
            t.serialize_field("waiting", &self.waiting)?;
        }
        t.end()
    }
}

/// A sequence of what an iterator yields, serialized once.
struct SeqOf<I>(I);

impl<I: Iterator<Item = T> + Clone, T: Serialize> Serialize for SeqOf<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

/// A container status in format version 1.
#[derive(Deserialize)]
struct ContainerStatusV1<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    state: ContainerState,
    exit_code: Option<i32>,
    restart_count: u32,
}

/// A deployment status in format version 1.
#[derive(Deserialize)]
struct DeploymentStatusV1<'a> {
    revision: u64,
    phase: Phase,
    #[serde(borrow)]
    containers: BoundedVec<ContainerStatusV1<'a>, MAX_STATUS_CONTAINERS>,
    #[serde(borrow)]
    message: Text<'a>,
    timestamp_ms: u64,
}

/// A deployment status in format version 2.
#[derive(Deserialize)]
struct DeploymentStatusV2<'a> {
    #[serde(borrow)]
    v1: DeploymentStatusV1<'a>,
    reason: Reason,
    running_revision: Option<u64>,
    container_health: BoundedVec<(Option<Health>, Reason), MAX_STATUS_CONTAINERS>,
}

/// A deployment status in format version 3.
#[derive(Deserialize)]
struct DeploymentStatusV3<'a> {
    #[serde(borrow)]
    v2: DeploymentStatusV2<'a>,
    waiting: Option<Waiting>,
}

impl<'a> DeploymentStatusV2<'a> {
    fn upgrade(self, waiting: Option<Waiting>) -> Result<DeploymentStatus<'a>, &'static str> {
        if self.container_health.len() != self.v1.containers.len() {
            return Err("the containers' health does not match the containers");
        }
        let mut s = self
            .v1
            .upgrade(self.reason, self.running_revision, &self.container_health);
        s.waiting = waiting;
        Ok(s)
    }
}

impl<'a> DeploymentStatusV1<'a> {
    /// With version 2's fields: the deployment's, and the containers' in
    /// their order (empty for those `health` runs out of).
    fn upgrade(
        self,
        reason: Reason,
        running_revision: Option<u64>,
        health: &[(Option<Health>, Reason)],
    ) -> DeploymentStatus<'a> {
        let mut health = health.iter();
        DeploymentStatus {
            revision: self.revision,
            phase: self.phase,
            containers: self.containers.map(|c| {
                let (health, reason) = health.next().copied().unwrap_or_default();
                ContainerStatus {
                    name: c.name,
                    state: c.state,
                    exit_code: c.exit_code,
                    restart_count: c.restart_count,
                    health,
                    reason,
                }
            }),
            message: self.message,
            timestamp_ms: self.timestamp_ms,
            reason,
            running_revision,
            waiting: None,
        }
    }
}

/// The version-3 layout (what `Serialize` writes for a value that needs it).
/// Only the wire encoding: in a human-readable format (JSON) the written
/// form is flat, which this layout does not read, so it says so instead.
impl<'de: 'a, 'a> Deserialize<'de> for DeploymentStatus<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Err(serde::de::Error::custom(
                "a DeploymentStatus is read from its wire encoding only (protocol::wire::decode)",
            ));
        }
        let v3 = DeploymentStatusV3::deserialize(d)?;
        v3.v2.upgrade(v3.waiting).map_err(serde::de::Error::custom)
    }
}

/// Versions 1 to 3; version 1 reads with the health fields empty, versions
/// 1 and 2 without `waiting`.
impl<'de: 'a, 'a> wire::Decode<'de> for DeploymentStatus<'a> {
    fn take_body(version: u8, body: &'de [u8]) -> Result<(Self, &'de [u8]), DecodeError> {
        match version {
            FORMAT_VERSION => {
                let (v1, rest) = wire::take::<DeploymentStatusV1<'a>>(body)?;
                // What version 1 cannot say is refused in it, as a decoder
                // of the first release refuses it.
                if !v1.phase.in_version_1() || v1.containers.iter().any(|c| !c.state.in_version_1())
                {
                    return Err(DecodeError::Malformed(wire::PostcardError::BadTag));
                }
                Ok((v1.upgrade(Reason::None, None, &[]), rest))
            }
            FORMAT_VERSION_2 => {
                let (v2, rest) = wire::take::<DeploymentStatusV2<'a>>(body)?;
                // As for version 1: what version 2 cannot say is refused in it.
                if !v2.v1.phase.in_version_2()
                    || !v2.reason.in_version_2()
                    || v2.container_health.iter().any(|(_, r)| !r.in_version_2())
                {
                    return Err(DecodeError::Malformed(wire::PostcardError::BadTag));
                }
                let s = v2
                    .upgrade(None)
                    .map_err(|_| DecodeError::Malformed(wire::PostcardError::Content))?;
                Ok((s, rest))
            }
            FORMAT_VERSION_3 => wire::take(body),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
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
                health: c.health,
                reason: c.reason,
            }),
            message: self.message.into_owned(),
            timestamp_ms: self.timestamp_ms,
            reason: self.reason,
            running_revision: self.running_revision,
            waiting: self.waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_has_the_first_eight_phases_and_states() {
        assert!(Phase::Completed.in_version_1());
        assert!(!Phase::Healthy.in_version_1());
        assert!(!Phase::RolledBack.in_version_1());
        assert!(ContainerState::Unknown.in_version_1());
        assert!(!ContainerState::Waiting.in_version_1());
    }

    #[test]
    fn names_as_users_see_them() {
        assert_eq!(Phase::CrashLoopBackOff.as_str(), "CrashLoopBackOff");
        assert_eq!(Reason::OOMKilled.as_str(), "OOMKilled");
        assert_eq!(Reason::None.as_str(), "");
        assert_eq!(Health::Unhealthy.as_str(), "Unhealthy");
        assert_eq!(ContainerState::Waiting.as_str(), "Waiting");
        assert_eq!(Reason::default(), Reason::None);
    }

    #[test]
    fn a_new_container_status_is_version_1() {
        let c = ContainerStatus::new(Text::borrowed("web"), ContainerState::Running);
        assert!(!c.needs_version_2());
        let c = ContainerStatus {
            reason: Reason::Error,
            ..c
        };
        assert!(c.needs_version_2());
    }
}
