//! The device heartbeat: that a board is alive, what it is, how it is
//! labelled and what it can read.
//!
//! Three format versions, each the previous one's fields then more:
//! version 1 (first release), version 2 (`warnings`), version 3 (`kernel`,
//! `bootId`, `labels`, `capabilities`). A heartbeat is written in the oldest
//! version that carries what it holds, and every version is read; a field a
//! version lacks reads as empty, and capabilities as
//! [`Capabilities::first_release`], what every agent of the first release
//! could read.

use serde::{Deserialize, Serialize};

use crate::bounded::{BoundedMap, BoundedVec};
use crate::limits::{
    MAX_DEVICE_LABELS, MAX_FORMAT_VERSIONS, MAX_FORMAT_VERSIONS_V3, MAX_LABEL_LEN, MAX_NAME_LEN,
    MAX_SCORE_TYPES, MAX_TYPE_NAME_LEN, MAX_WARNING_LEN, MAX_WARNINGS,
};
use crate::score::{PODMAN_V0, PODMAN_V1};
use crate::text::Text;
use crate::validate::{FieldPath, Validate, ValidationError, Violation, check_len, fail};
use crate::wire::{
    self, DecodeError, FORMAT_VERSION, FORMAT_VERSION_2, FORMAT_VERSION_3, FORMAT_VERSION_4,
    FORMAT_VERSION_5,
};

/// A board's labels: key to value, Kubernetes label syntax.
pub type DeviceLabels<'a> = BoundedMap<Text<'a>, Text<'a>, MAX_DEVICE_LABELS>;

/// The value of `device-heartbeat` key `<device_id>`.
/// `Default` is the empty version-1 heartbeat, a base for building one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
    /// nothing. Version 2 and later.
    #[serde(borrow)]
    pub warnings: BoundedVec<Text<'a>, MAX_WARNINGS>,
    /// The kernel release (`uname -r`); empty when unknown. Version 3.
    #[serde(borrow)]
    pub kernel: Text<'a>,
    /// The boot id (`/proc/sys/kernel/random/boot_id`): a new value means
    /// the board rebooted; empty when unknown. Version 3.
    #[serde(borrow)]
    pub boot_id: Text<'a>,
    /// The labels the board declares (its agent configuration's `[labels]`).
    /// Bounded in number and length here; their syntax is checked by whoever
    /// uses them ([`crate::labels`]). Version 3.
    #[serde(borrow)]
    pub labels: DeviceLabels<'a>,
    /// What the agent can read. Version 3.
    #[serde(borrow)]
    pub capabilities: Capabilities<'a>,
    /// The device's public sealing key (nkeys curve key, `X...`): the
    /// operator seals the device's secrets to it ([`crate::sealed`]); empty
    /// when the agent has none. Version 4.
    #[serde(borrow)]
    pub sealing_key: Text<'a>,
}

/// What an agent can read: the format versions of `DesiredState` and, per
/// score type, of the score's own encoding. The operator writes a device
/// nothing it has not listed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct Capabilities<'a> {
    /// Format versions of [`crate::DesiredState`] the agent decodes.
    pub desired_state_versions: BoundedVec<u8, MAX_FORMAT_VERSIONS>,
    /// Score types the agent runs, each with the format versions of its
    /// data it decodes.
    #[serde(borrow)]
    pub score_types: BoundedVec<ScoreTypeSupport<'a>, MAX_SCORE_TYPES>,
}

/// One score type an agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct ScoreTypeSupport<'a> {
    /// The type name, e.g. `PodmanV0`.
    #[serde(borrow)]
    pub type_name: Text<'a>,
    /// Format versions of the score's encoded data it decodes.
    pub versions: BoundedVec<u8, MAX_FORMAT_VERSIONS>,
}

impl<'a> Capabilities<'a> {
    /// What every agent of the first release reads: `DesiredState` version 1
    /// and `PodmanV0` version 1. A heartbeat older than version 3 carries
    /// no capabilities and is read as having these.
    pub fn first_release() -> Self {
        Capabilities {
            desired_state_versions: one_version(FORMAT_VERSION),
            score_types: BoundedVec::try_from_iter([ScoreTypeSupport {
                type_name: Text::borrowed(PODMAN_V0),
                versions: one_version(FORMAT_VERSION),
            }])
            .unwrap_or_default(),
        }
    }

    /// What this build of the protocol decodes: `DesiredState` 1 to 5,
    /// `PodmanV0` 1 and `PodmanV1` 1. An agent lists only the score types it
    /// runs.
    pub fn this_build() -> Self {
        let versions = |v: &[u8]| BoundedVec::try_from_iter(v.iter().copied()).unwrap_or_default();
        Capabilities {
            desired_state_versions: versions(&[
                FORMAT_VERSION,
                FORMAT_VERSION_2,
                FORMAT_VERSION_3,
                FORMAT_VERSION_4,
                FORMAT_VERSION_5,
            ]),
            score_types: BoundedVec::try_from_iter([PODMAN_V0, PODMAN_V1].map(|t| {
                ScoreTypeSupport {
                    type_name: Text::borrowed(t),
                    versions: versions(&[FORMAT_VERSION]),
                }
            }))
            .unwrap_or_default(),
        }
    }
}

fn one_version(v: u8) -> BoundedVec<u8, MAX_FORMAT_VERSIONS> {
    BoundedVec::try_from_iter([v]).unwrap_or_default()
}

impl Capabilities<'_> {
    /// Whether the agent decodes `DesiredState` in `desired_version` and
    /// runs `score_type` encoded in `score_version`.
    pub fn reads(&self, desired_version: u8, score_type: &str, score_version: u8) -> bool {
        self.desired_state_versions.contains(&desired_version)
            && self
                .score_types
                .iter()
                .any(|s| s.type_name.as_str() == score_type && s.versions.contains(&score_version))
    }

    /// Whether the agent runs `score_type` at all.
    pub fn runs(&self, score_type: &str) -> bool {
        self.score_types
            .iter()
            .any(|s| s.type_name.as_str() == score_type)
    }

    #[cfg(feature = "alloc")]
    /// A copy that owns its strings.
    pub fn into_owned(self) -> Capabilities<'static> {
        Capabilities {
            desired_state_versions: self.desired_state_versions,
            score_types: self.score_types.map(|s| ScoreTypeSupport {
                type_name: s.type_name.into_owned(),
                versions: s.versions,
            }),
        }
    }
}

/// A heartbeat without capabilities means the first release's.
impl Default for Capabilities<'_> {
    fn default() -> Self {
        Capabilities::first_release()
    }
}

/// A heartbeat in format version 1.
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

/// A heartbeat in format version 2: version 1, then the warnings.
#[derive(Deserialize)]
struct HeartbeatV2<'a> {
    #[serde(borrow)]
    v1: HeartbeatV1<'a>,
    #[serde(borrow)]
    warnings: BoundedVec<Text<'a>, MAX_WARNINGS>,
}

/// A heartbeat in format version 3: version 2, then the board's kernel,
/// boot id, labels and capabilities.
#[derive(Deserialize)]
struct HeartbeatV3<'a> {
    #[serde(borrow)]
    v1: HeartbeatV1<'a>,
    #[serde(borrow)]
    warnings: BoundedVec<Text<'a>, MAX_WARNINGS>,
    #[serde(borrow)]
    kernel: Text<'a>,
    #[serde(borrow)]
    boot_id: Text<'a>,
    #[serde(borrow)]
    labels: DeviceLabels<'a>,
    #[serde(borrow)]
    capabilities: Capabilities<'a>,
}

impl<'a> HeartbeatV2<'a> {
    fn upgrade(self) -> Heartbeat<'a> {
        let v1 = self.v1;
        Heartbeat {
            agent_version: v1.agent_version,
            arch: v1.arch,
            os: v1.os,
            podman_version: v1.podman_version,
            uptime_secs: v1.uptime_secs,
            deployments: v1.deployments,
            timestamp_ms: v1.timestamp_ms,
            warnings: self.warnings,
            kernel: Text::default(),
            boot_id: Text::default(),
            labels: BoundedMap::new(),
            capabilities: Capabilities::first_release(),
            sealing_key: Text::default(),
        }
    }
}

impl Heartbeat<'_> {
    /// Whether anything beyond version 2 is set: a kernel, a boot id, labels,
    /// or capabilities other than the first release's.
    fn needs_version_3(&self) -> bool {
        !self.kernel.is_empty()
            || !self.boot_id.is_empty()
            || !self.labels.is_empty()
            || self.capabilities != Capabilities::first_release()
    }
}

impl Heartbeat<'_> {
    /// Whether it has a sealing key, or lists more format versions than a
    /// version-3 decoder takes (the previous release refuses those).
    fn needs_version_4(&self) -> bool {
        let c = &self.capabilities;
        !self.sealing_key.is_empty()
            || c.desired_state_versions.len() > MAX_FORMAT_VERSIONS_V3
            || c.score_types
                .iter()
                .any(|s| s.versions.len() > MAX_FORMAT_VERSIONS_V3)
    }
}

/// The oldest version that carries what the heartbeat holds.
impl wire::Encode for Heartbeat<'_> {
    fn format_version(&self) -> u8 {
        if self.needs_version_4() {
            FORMAT_VERSION_4
        } else if self.needs_version_3() {
            FORMAT_VERSION_3
        } else if !self.warnings.is_empty() {
            FORMAT_VERSION_2
        } else {
            FORMAT_VERSION
        }
    }
}

/// Written by hand so that the fields stop where [`wire::Encode::format_version`]
/// says: versions 1 and 2 are prefixes of version 3 (postcard writes fields
/// in order, without names), so one struct serves all three.
impl Serialize for Heartbeat<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        use wire::Encode;
        let version = self.format_version();
        let mut t = s.serialize_struct("Heartbeat", 13)?;
        t.serialize_field("agentVersion", &self.agent_version)?;
        t.serialize_field("arch", &self.arch)?;
        t.serialize_field("os", &self.os)?;
        t.serialize_field("podmanVersion", &self.podman_version)?;
        t.serialize_field("uptimeSecs", &self.uptime_secs)?;
        t.serialize_field("deployments", &self.deployments)?;
        t.serialize_field("timestampMs", &self.timestamp_ms)?;
        if version >= FORMAT_VERSION_2 {
            t.serialize_field("warnings", &self.warnings)?;
        }
        if version >= FORMAT_VERSION_3 {
            t.serialize_field("kernel", &self.kernel)?;
            t.serialize_field("bootId", &self.boot_id)?;
            t.serialize_field("labels", &self.labels)?;
            t.serialize_field("capabilities", &self.capabilities)?;
        }
        if version >= FORMAT_VERSION_4 {
            t.serialize_field("sealingKey", &self.sealing_key)?;
        }
        t.end()
    }
}

/// Every version; older ones read with the newer fields empty.
impl<'de: 'a, 'a> wire::Decode<'de> for Heartbeat<'a> {
    fn take_body(version: u8, body: &'de [u8]) -> Result<(Self, &'de [u8]), DecodeError> {
        match version {
            FORMAT_VERSION => {
                let (v1, rest) = wire::take::<HeartbeatV1<'a>>(body)?;
                let v2 = HeartbeatV2 {
                    v1,
                    warnings: BoundedVec::new(),
                };
                Ok((v2.upgrade(), rest))
            }
            FORMAT_VERSION_2 => {
                let (v2, rest) = wire::take::<HeartbeatV2<'a>>(body)?;
                Ok((v2.upgrade(), rest))
            }
            FORMAT_VERSION_3 => {
                let (v3, rest) = wire::take::<HeartbeatV3<'a>>(body)?;
                let v2 = HeartbeatV2 {
                    v1: v3.v1,
                    warnings: v3.warnings,
                };
                let mut h = v2.upgrade();
                h.kernel = v3.kernel;
                h.boot_id = v3.boot_id;
                h.labels = v3.labels;
                h.capabilities = v3.capabilities;
                Ok((h, rest))
            }
            FORMAT_VERSION_4 => wire::take(body),
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
        check_len(FieldPath::top("kernel"), &self.kernel, MAX_NAME_LEN)?;
        check_len(FieldPath::top("bootId"), &self.boot_id, MAX_NAME_LEN)?;
        check_len(
            FieldPath::top("sealingKey"),
            &self.sealing_key,
            MAX_NAME_LEN,
        )?;
        // Lengths only: the label syntax is the receiver's to check label by
        // label (`crate::labels`), so that one bad label from a board costs
        // that label, not the whole heartbeat.
        for (i, (k, v)) in self.labels.iter().enumerate() {
            let path = FieldPath::top("labels");
            check_len(path.at(i, Some("key")), k, MAX_LABEL_LEN)?;
            check_len(path.at(i, Some("value")), v, MAX_LABEL_LEN)?;
        }
        for (i, s) in self.capabilities.score_types.iter().enumerate() {
            let path = FieldPath::top("capabilities").at(i, Some("typeName"));
            check_len(path, &s.type_name, MAX_TYPE_NAME_LEN)?;
            if s.type_name.is_empty() {
                return fail(path, Violation::Empty);
            }
        }
        Ok(())
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
            kernel: self.kernel.into_owned(),
            boot_id: self.boot_id.into_owned(),
            labels: self.labels.map(|k, v| (k.into_owned(), v.into_owned())),
            capabilities: self.capabilities.into_owned(),
            sealing_key: self.sealing_key.into_owned(),
        }
    }
}
