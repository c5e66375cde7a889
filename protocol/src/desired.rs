//! The value of a `desired-state` key: which score a deployment runs on this
//! device, at which revision, and how the device rolls it out.
//!
//! Four format versions: version 1 (deployment, revision, score), version
//! 2 (then the [`RolloutPolicy`]), version 3 (then the `attempt`) and
//! version 4 (then the [`UpdateGate`]). A value is written in the oldest
//! version that carries what it holds: in version 1 when its policy is the
//! default, it is the first attempt and nothing gates it, which is what a
//! version-1 value means, so deployments that set none of these reach every
//! agent byte for byte as before.

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::keys::validate_token;
use crate::limits::{
    MAX_CRON_LEN, MAX_LOCK_TIMEOUT_SECONDS, MAX_NAME_LEN, MAX_ROLLOUT_SECONDS, MAX_STRING_LEN,
    MAX_TYPE_NAME_LEN, MAX_VALUE_SIZE, MAX_WINDOW_SECONDS, MAX_WINDOWS,
};
use crate::score::{
    IotScore, KNOWN_SCORE_TYPES, PODMAN_V0, PODMAN_V1, PodmanV0Score, PodmanV1Score, ScoreError,
};
use crate::sealed::{MAX_SEALED_SIZE, MAX_SECRET_NAME_LEN, Sealed, SecretSet};
use crate::text::{Bytes, Text};
use crate::validate::{
    FieldPath, Validate, ValidationError, Violation, check_len, check_nonempty, check_range, fail,
};
use crate::wire::{
    self, DecodeError, FORMAT_VERSION, FORMAT_VERSION_2, FORMAT_VERSION_3, FORMAT_VERSION_4,
    FORMAT_VERSION_5,
};

/// How a [`ScorePayload`]'s data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PayloadEncoding {
    /// postcard of the variant's data type (with its own format byte):
    /// variants the operator was built with, validated before writing.
    Postcard,
    /// The JSON the user wrote: variants the operator does not know, routed
    /// unchanged so that new agents can run them without an operator release.
    Json,
}

/// A score as it travels: its type name and its data.
///
/// Decoding a payload never fails because of an unknown type; that is only
/// found out by [`ScorePayload::decode`], which returns
/// [`ScoreError::Unsupported`] so the agent can report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ScorePayload<'a> {
    /// The variant's type name, e.g. `PodmanV0`.
    #[serde(borrow)]
    pub type_name: Text<'a>,
    /// How `data` is encoded.
    pub encoding: PayloadEncoding,
    /// The variant's data.
    #[serde(borrow)]
    pub data: Bytes<'a>,
}

impl<'a> ScorePayload<'a> {
    /// The score this payload carries, borrowing from it.
    pub fn decode(&'a self) -> Result<IotScore<'a>, ScoreError<'a>> {
        if !KNOWN_SCORE_TYPES.contains(&self.type_name.as_str()) {
            return Err(ScoreError::Unsupported {
                type_name: self.type_name.clone(),
            });
        }
        if self.encoding != PayloadEncoding::Postcard {
            return Err(ScoreError::UnexpectedEncoding {
                type_name: self.type_name.clone(),
            });
        }
        match self.type_name.as_str() {
            PODMAN_V0 => wire::decode::<PodmanV0Score<'a>>(&self.data)
                .map(IotScore::PodmanV0)
                .map_err(ScoreError::Decode),
            PODMAN_V1 => wire::decode::<PodmanV1Score<'a>>(&self.data)
                .map(IotScore::PodmanV1)
                .map_err(ScoreError::Decode),
            _ => Err(ScoreError::Unsupported {
                type_name: self.type_name.clone(),
            }),
        }
    }

    /// A content hash of the payload (FNV-1a 64 over type, encoding, data),
    /// stable across builds: equal payloads hash equal everywhere.
    pub fn content_hash(&self) -> u64 {
        let mut h = wire::Fnv1a64::new();
        h.write(self.type_name.as_bytes());
        h.write(&[0, self.encoding as u8]);
        h.write(&self.data);
        h.finish()
    }

    /// [`ScorePayload::content_hash`] extended with `extra`: what a
    /// revision is when the score's references resolve to something the
    /// score does not hold (the versions of the Secrets it names), so that
    /// a change there is a new revision. Empty `extra` is `content_hash`.
    pub fn content_hash_with(&self, extra: &[u8]) -> u64 {
        if extra.is_empty() {
            return self.content_hash();
        }
        let mut h = wire::Fnv1a64::new();
        h.write(self.type_name.as_bytes());
        h.write(&[0, self.encoding as u8]);
        h.write(&self.data);
        h.write(&[0xff]);
        h.write(extra);
        h.finish()
    }

    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> ScorePayload<'static> {
        ScorePayload {
            type_name: self.type_name.into_owned(),
            encoding: self.encoding,
            data: self.data.into_owned(),
        }
    }
}

#[cfg(feature = "alloc")]
impl IotScore<'_> {
    /// Validates and encodes this score as a postcard payload.
    pub fn to_payload(&self) -> Result<ScorePayload<'static>, crate::wire::EncodeError> {
        let data = match self {
            IotScore::PodmanV0(s) => wire::encode_to_vec(s)?,
            IotScore::PodmanV1(s) => wire::encode_to_vec(s)?,
        };
        Ok(ScorePayload {
            type_name: Text::borrowed(self.type_name()),
            encoding: PayloadEncoding::Postcard,
            data: Bytes::owned(data),
        })
    }
}

impl Validate for ScorePayload<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        let path = FieldPath::top("score.type");
        check_len(path, &self.type_name, MAX_TYPE_NAME_LEN)?;
        // Same shape rule as the CRD's CEL: a Rust identifier.
        let mut chars = self.type_name.chars();
        let ident = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return fail(path, Violation::NotIdentifier);
        }
        if self.data.len() > MAX_VALUE_SIZE {
            return fail(
                FieldPath::top("score.data"),
                Violation::TooLong {
                    limit: MAX_VALUE_SIZE,
                    actual: self.data.len(),
                },
            );
        }
        Ok(())
    }
}

/// The value of `desired-state` key `<device_id>.<deployment>`.
///
/// `Deserialize` reads the newest layout (version 4); [`wire::decode`]
/// reads every version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DesiredState<'a> {
    /// The deployment's name (the key's second token).
    #[serde(borrow)]
    pub deployment: Text<'a>,
    /// Chosen by the operator; agents echo it in their status so the operator
    /// knows which devices run what.
    pub revision: u64,
    /// What to run.
    #[serde(borrow)]
    pub score: ScorePayload<'a>,
    /// How the device rolls this revision out and back. Format version 2;
    /// the default is what a version-1 value means.
    #[serde(default)]
    pub rollout: RolloutPolicy,
    /// How many times the operator asked to try this revision again after
    /// it failed (its retry annotation). Format version 3; 0, the first
    /// attempt, is what older versions mean. A device that rolled this
    /// revision back does not retry the value it failed with, and a new
    /// attempt is a new value: that is the retry.
    #[serde(default)]
    pub attempt: u32,
    /// When the device may apply this value: its update lock, maintenance
    /// windows and the emergency override. Format version 4; the default
    /// (nothing gates it) is what older versions mean.
    #[serde(borrow, default)]
    pub gate: UpdateGate<'a>,
    /// Registry logins and Secret values sealed to this device. Format
    /// version 5; empty (nothing sealed) is what older versions mean.
    #[serde(borrow, default)]
    pub secrets: SecretSet<'a>,
}

/// When a device may change a deployment: while no workload holds the
/// device's update lock, inside a maintenance window, or at once when
/// forced. The default gates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct UpdateGate<'a> {
    /// `Some`: the device does not stop, replace or remove this
    /// deployment's running containers while anyone holds its update lock
    /// (a container with `updateLock` in its score honours it too, with
    /// the default policy).
    pub update_lock: Option<UpdateLockPolicy>,
    /// The device applies a change only inside one of these windows
    /// (evaluated on its own clock); empty: at any time.
    #[serde(borrow)]
    pub windows: BoundedVec<MaintenanceWindow<'a>, MAX_WINDOWS>,
    /// Apply at once, ignoring the lock and the windows (emergencies).
    pub force: bool,
}

impl UpdateGate<'_> {
    /// Whether it gates nothing (what versions 1 to 3 mean).
    pub fn is_open(&self) -> bool {
        *self == UpdateGate::default()
    }

    /// A copy that owns its strings.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> UpdateGate<'static> {
        UpdateGate {
            update_lock: self.update_lock,
            windows: self.windows.map(MaintenanceWindow::into_owned),
            force: self.force,
        }
    }
}

/// How long the update lock may hold a new revision back, and what then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct UpdateLockPolicy {
    /// Seconds from when the device starts waiting until `on_timeout`
    /// applies, 0 to [`MAX_LOCK_TIMEOUT_SECONDS`]; 0 waits as long as the
    /// lock is held.
    pub timeout_seconds: u32,
    /// What the device does when the timeout passes.
    pub on_timeout: LockTimeout,
}

/// What a device does when the update lock outlasts its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LockTimeout {
    /// Keep waiting, and report the revision `Failed` with reason
    /// `UpdateLockTimeout` (a rollout counts the device as failed).
    #[default]
    Fail,
    /// Apply anyway: stop the holder's containers.
    Force,
}

/// A maintenance window: it opens at each time `at` matches on the wall
/// clock of `time_zone`, and stays open `duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow<'a> {
    /// A 5-field cron expression (minute, hour, day of month, month, day
    /// of week), at most [`MAX_CRON_LEN`] bytes. Its syntax is checked by
    /// the operator and the agent (not here: this crate has no cron parser).
    #[serde(borrow)]
    pub at: Text<'a>,
    /// An IANA time zone name (`Europe/Paris`, `UTC`), at most
    /// [`MAX_NAME_LEN`] bytes.
    #[serde(borrow)]
    pub time_zone: Text<'a>,
    /// How long it stays open, 1 to [`MAX_WINDOW_SECONDS`].
    pub duration_seconds: u32,
}

impl MaintenanceWindow<'_> {
    /// A copy that owns its strings.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> MaintenanceWindow<'static> {
        MaintenanceWindow {
            at: self.at.into_owned(),
            time_zone: self.time_zone.into_owned(),
            duration_seconds: self.duration_seconds,
        }
    }
}

/// How a device takes a new revision: when it counts as healthy, how long
/// it may take, and whether the device goes back to the last healthy
/// revision by itself when it does not get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Seconds every container must run with every check passing before
    /// the deployment is `Healthy`, 0 to [`MAX_ROLLOUT_SECONDS`].
    pub min_healthy_seconds: u32,
    /// Seconds a new revision has to become `Healthy` before it counts as
    /// failed, 1 to [`MAX_ROLLOUT_SECONDS`].
    pub progress_deadline_seconds: u32,
    /// Whether the device restores the last revision that was `Healthy` on
    /// it when a new one fails.
    pub auto_rollback: bool,
}

impl RolloutPolicy {
    /// `progress_deadline_seconds` when nothing sets it (Kubernetes' own).
    pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;
}

/// What a version-1 value means: healthy as soon as running, a 600 s
/// deadline that nothing acts on, no rollback.
impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            min_healthy_seconds: 0,
            progress_deadline_seconds: Self::DEFAULT_PROGRESS_DEADLINE_SECONDS,
            auto_rollback: false,
        }
    }
}

impl Validate for DesiredState<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Err(e) = validate_token(&self.deployment) {
            return fail(FieldPath::top("deployment"), Violation::Token(e));
        }
        self.score.validate()?;
        let max = MAX_ROLLOUT_SECONDS.into();
        check_range(
            FieldPath::top("rollout.minHealthySeconds"),
            self.rollout.min_healthy_seconds.into(),
            0,
            max,
            "s",
        )?;
        check_range(
            FieldPath::top("rollout.progressDeadlineSeconds"),
            self.rollout.progress_deadline_seconds.into(),
            1,
            max,
            "s",
        )?;
        if let Some(lock) = &self.gate.update_lock {
            check_range(
                FieldPath::top("gate.updateLock.timeoutSeconds"),
                lock.timeout_seconds.into(),
                0,
                MAX_LOCK_TIMEOUT_SECONDS.into(),
                "s",
            )?;
        }
        for (i, w) in self.gate.windows.iter().enumerate() {
            let at = FieldPath::top("gate.windows");
            if w.at.trim().is_empty() {
                return fail(at.at(i, Some("at")), Violation::Empty);
            }
            check_len(at.at(i, Some("at")), &w.at, MAX_CRON_LEN)?;
            if w.time_zone.is_empty() {
                return fail(at.at(i, Some("timeZone")), Violation::Empty);
            }
            check_len(at.at(i, Some("timeZone")), &w.time_zone, MAX_NAME_LEN)?;
            check_range(
                at.at(i, Some("durationSeconds")),
                w.duration_seconds.into(),
                1,
                MAX_WINDOW_SECONDS.into(),
                "s",
            )?;
        }
        validate_secrets(&self.secrets)
    }
}

/// Bounds of the sealed part: names as long as Kubernetes allows, a box as
/// large as the largest value plus its binding.
fn validate_secrets(set: &SecretSet<'_>) -> Result<(), ValidationError> {
    let sealed = |at: FieldPath, i: usize, s: &Sealed<'_>| -> Result<(), ValidationError> {
        for (sub, key) in [
            ("sealed.recipient", &s.recipient),
            ("sealed.sender", &s.sender),
        ] {
            check_nonempty(at.at(i, Some(sub)), key)?;
            check_len(at.at(i, Some(sub)), key, MAX_NAME_LEN)?;
        }
        let boxed = at.at(i, Some("sealed.boxed"));
        if s.boxed.is_empty() {
            return fail(boxed, Violation::Empty);
        }
        if s.boxed.len() > MAX_SEALED_SIZE {
            return fail(
                boxed,
                Violation::TooLong {
                    limit: MAX_SEALED_SIZE,
                    actual: s.boxed.len(),
                },
            );
        }
        Ok(())
    };
    for (i, p) in set.pull.iter().enumerate() {
        let at = FieldPath::top("secrets.pull");
        check_nonempty(at.at(i, Some("registry")), &p.registry)?;
        check_len(at.at(i, Some("registry")), &p.registry, MAX_STRING_LEN)?;
        sealed(at, i, &p.sealed)?;
    }
    for (i, v) in set.values.iter().enumerate() {
        let at = FieldPath::top("secrets.values");
        check_nonempty(at.at(i, Some("secret")), &v.secret)?;
        check_len(at.at(i, Some("secret")), &v.secret, MAX_SECRET_NAME_LEN)?;
        check_nonempty(at.at(i, Some("key")), &v.key)?;
        check_len(at.at(i, Some("key")), &v.key, MAX_SECRET_NAME_LEN)?;
        if !crate::sealed::is_secret_key(&v.key) {
            return fail(at.at(i, Some("key")), Violation::NotSecretKey);
        }
        sealed(at, i, &v.sealed)?;
    }
    Ok(())
}

impl<'a> DesiredState<'a> {
    /// `score` for `deployment` at `revision`, with the default rollout
    /// policy (written in format version 1).
    pub fn new(deployment: Text<'a>, revision: u64, score: ScorePayload<'a>) -> Self {
        DesiredState {
            deployment,
            revision,
            score,
            rollout: RolloutPolicy::default(),
            attempt: 0,
            gate: UpdateGate::default(),
            secrets: SecretSet::default(),
        }
    }

    /// The format version this value is written in: 5 when it carries
    /// sealed secrets, else 4 when something
    /// gates it, else 3 when it is a retry (`attempt` above 0), else 1 when
    /// its rollout policy is the default, else 2. The operator writes a
    /// device only a version its capabilities list.
    pub fn format_version(&self) -> u8 {
        if !self.secrets.is_empty() {
            FORMAT_VERSION_5
        } else if !self.gate.is_open() {
            FORMAT_VERSION_4
        } else if self.attempt > 0 {
            FORMAT_VERSION_3
        } else if self.rollout == RolloutPolicy::default() {
            FORMAT_VERSION
        } else {
            FORMAT_VERSION_2
        }
    }
}

/// The oldest version that carries what the value holds.
impl wire::Encode for DesiredState<'_> {
    fn format_version(&self) -> u8 {
        DesiredState::format_version(self)
    }
}

/// Written by hand so that the fields stop where the format version says:
/// each version is a prefix of the next.
impl Serialize for DesiredState<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let version = self.format_version();
        let v2 = version >= FORMAT_VERSION_2;
        let v3 = version >= FORMAT_VERSION_3;
        let v4 = version >= FORMAT_VERSION_4;
        let v5 = version >= FORMAT_VERSION_5;
        let fields = 3 + usize::from(v2) + usize::from(v3) + usize::from(v4) + usize::from(v5);
        let mut t = s.serialize_struct("DesiredState", fields)?;
        t.serialize_field("deployment", &self.deployment)?;
        t.serialize_field("revision", &self.revision)?;
        t.serialize_field("score", &self.score)?;
        if v2 {
            t.serialize_field("rollout", &self.rollout)?;
        }
        if v3 {
            t.serialize_field("attempt", &self.attempt)?;
        }
        if v4 {
            t.serialize_field("gate", &self.gate)?;
        }
        if v5 {
            t.serialize_field("secrets", &self.secrets)?;
        }
        t.end()
    }
}

/// A desired state in format version 1.
#[derive(Deserialize)]
struct DesiredStateV1<'a> {
    #[serde(borrow)]
    deployment: Text<'a>,
    revision: u64,
    #[serde(borrow)]
    score: ScorePayload<'a>,
}

/// A desired state in format version 2.
#[derive(Deserialize)]
struct DesiredStateV2<'a> {
    #[serde(borrow)]
    deployment: Text<'a>,
    revision: u64,
    #[serde(borrow)]
    score: ScorePayload<'a>,
    rollout: RolloutPolicy,
}

/// A desired state in format version 3.
#[derive(Deserialize)]
struct DesiredStateV3<'a> {
    #[serde(borrow)]
    deployment: Text<'a>,
    revision: u64,
    #[serde(borrow)]
    score: ScorePayload<'a>,
    rollout: RolloutPolicy,
    attempt: u32,
}

/// A desired state in format version 4.
#[derive(Deserialize)]
struct DesiredStateV4<'a> {
    #[serde(borrow)]
    deployment: Text<'a>,
    revision: u64,
    #[serde(borrow)]
    score: ScorePayload<'a>,
    rollout: RolloutPolicy,
    attempt: u32,
    #[serde(borrow)]
    gate: UpdateGate<'a>,
}

/// Versions 1 to 5; version 1 reads with the default policy, versions 1
/// and 2 as the first attempt, versions 1 to 3 with nothing gating them,
/// versions 1 to 4 with nothing sealed.
impl<'de: 'a, 'a> wire::Decode<'de> for DesiredState<'a> {
    fn take_body(version: u8, body: &'de [u8]) -> Result<(Self, &'de [u8]), DecodeError> {
        match version {
            FORMAT_VERSION => {
                let (v1, rest) = wire::take::<DesiredStateV1<'a>>(body)?;
                let d = DesiredState {
                    deployment: v1.deployment,
                    revision: v1.revision,
                    score: v1.score,
                    rollout: RolloutPolicy::default(),
                    attempt: 0,
                    gate: UpdateGate::default(),
                    secrets: SecretSet::default(),
                };
                Ok((d, rest))
            }
            FORMAT_VERSION_2 => {
                let (v2, rest) = wire::take::<DesiredStateV2<'a>>(body)?;
                let d = DesiredState {
                    deployment: v2.deployment,
                    revision: v2.revision,
                    score: v2.score,
                    rollout: v2.rollout,
                    attempt: 0,
                    gate: UpdateGate::default(),
                    secrets: SecretSet::default(),
                };
                Ok((d, rest))
            }
            FORMAT_VERSION_3 => {
                let (v3, rest) = wire::take::<DesiredStateV3<'a>>(body)?;
                let d = DesiredState {
                    deployment: v3.deployment,
                    revision: v3.revision,
                    score: v3.score,
                    rollout: v3.rollout,
                    attempt: v3.attempt,
                    gate: UpdateGate::default(),
                    secrets: SecretSet::default(),
                };
                Ok((d, rest))
            }
            FORMAT_VERSION_4 => {
                let (v4, rest) = wire::take::<DesiredStateV4<'a>>(body)?;
                let d = DesiredState {
                    deployment: v4.deployment,
                    revision: v4.revision,
                    score: v4.score,
                    rollout: v4.rollout,
                    attempt: v4.attempt,
                    gate: v4.gate,
                    secrets: SecretSet::default(),
                };
                Ok((d, rest))
            }
            FORMAT_VERSION_5 => wire::take(body),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }
}

/// Written and read in format version 1 only.
impl wire::Encode for ScorePayload<'_> {}
impl<'de: 'a, 'a> wire::Decode<'de> for ScorePayload<'a> {}

impl DesiredState<'_> {
    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> DesiredState<'static> {
        DesiredState {
            deployment: self.deployment.into_owned(),
            revision: self.revision,
            score: self.score.into_owned(),
            rollout: self.rollout,
            attempt: self.attempt,
            gate: self.gate.into_owned(),
            secrets: self.secrets.into_owned(),
        }
    }
}
