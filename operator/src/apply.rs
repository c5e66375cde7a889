//! From a Deployment to desired-state keys: validate and route the score
//! ([`plan`]), then write what changed ([`apply`]) or remove everything the
//! Deployment wrote ([`remove`]). The controller and the cluster-less CLI
//! both call these, so they write exactly the same keys and values.
//!
//! A plan's targets start as `spec.targetDevices`; the controller adds the
//! Devices `spec.targetSelector` selects ([`Plan::add_targets`], from
//! [`crate::targeting`]) and marks the targets whose agent cannot read the
//! value ([`Plan::held`]): [`apply`] neither writes nor removes their keys.
//!
//! Every target gets the same value, except those whose Device object has
//! its own maintenance windows (`spec.maintenance.windows`): a board's own
//! windows win over the Deployment's, so such a target gets the same
//! revision with its own windows in the gate ([`Plan::set_device_windows`],
//! [`Plan::value_for`]).
//!
//! A Deployment that references Secrets ([`crate::secrets`]) gets, once
//! they are resolved, [`Plan::set_secrets`]: the revision mixes in what
//! they resolved to, and each target gets its own value with the values
//! sealed to its own key (format 5). A target whose key is unknown is
//! [`Plan::unsealed`], held like an agent that cannot read the value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use protocol::keys::{DESIRED_STATE_BUCKET, validate_deployment_name, validate_device_id};
use protocol::kv::{Owner, OwnerBuf, OwnerError};
use protocol::limits::MAX_WINDOWS;
use protocol::score::KNOWN_SCORE_TYPES;
use protocol::{
    BoundedVec, DeploymentKey, DesiredState, MaintenanceWindow, Text, UpdateGate, UpdateLockPolicy,
};

use crate::crd::{
    Deployment, MAX_LOCK_TIMEOUT_SECONDS, MAX_ROLLOUT_SECONDS, MAX_TARGETS, MaintenanceWindowSpec,
    Rollout, RolloutStrategy, revision_string,
};
use crate::nats::{KvWrite, Nats, NatsError};
use crate::rollout::RolloutSpec;
use crate::secrets::seal::{SealCache, Sealed, SealedSet};
use crate::secrets::{Resolved, SecretError};
use crate::targeting::{SelectorError, TargetSelector};

/// A Deployment validated and encoded, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The Deployment's name: the second token of every key.
    pub name: String,
    /// `<namespace>/<name>`, recorded with every key written.
    pub owner: OwnerBuf,
    /// The target device ids, sorted, without duplicates: `targetDevices`,
    /// plus what [`Plan::add_targets`] added.
    pub targets: Vec<String>,
    /// `spec.targetSelector`, checked; its Devices are added by the caller.
    pub selector: Option<TargetSelector>,
    /// Targets not to write (their key, if any, is left as it is), each
    /// with the reason: their agent cannot read the value.
    pub held: BTreeMap<String, String>,
    /// The revision: the content hash of the routed score.
    pub revision: u64,
    /// The encoded [`DesiredState`] every target receives, except those in
    /// `device_values` ([`Plan::value_for`] says which).
    pub value: Bytes,
    /// Targets whose Device has maintenance windows of its own, with the
    /// value each receives instead of `value`: the same revision, the
    /// Device's windows in the gate. Filled by [`Plan::set_device_windows`].
    pub device_values: BTreeMap<String, Bytes>,
    /// Targets whose Device's own maintenance windows are invalid (or, as
    /// the controller adds, whose Device is being deleted), each with the
    /// reason: their key keeps what it holds (neither written nor removed)
    /// until the Device is fixed.
    pub kept: BTreeMap<String, String>,
    /// `spec.rollout.force`: the keys this plan deletes carry the force
    /// header, so that devices remove at once, whatever their update lock
    /// and maintenance windows say.
    pub force: bool,
    /// The score's JSON as the user wrote it (`status.observedScoreString`).
    pub score_json: String,
    /// Set when the score type is not one this build knows: it is routed as
    /// the user's JSON, and devices that do not know it report Unsupported.
    pub unknown_type: Option<UnknownType>,
    /// With strategy BatchSequence: its batches and limits, checked.
    pub batch_sequence: Option<RolloutSpec>,
    /// What `value` encodes, to derive the per-device values from.
    desired: DesiredState<'static>,
    /// The windows of the targets in `device_values`.
    device_windows: BTreeMap<String, Windows>,
    /// Targets that cannot receive this plan's sealed values (no sealing
    /// key known, or one that does not seal), each with the reason: held
    /// like a target whose agent cannot read the value
    /// ([`crate::targeting::capabilities::held_back`] includes them).
    pub unsealed: BTreeMap<String, String>,
    /// What the referenced Secrets resolved to ([`Plan::set_secrets`]).
    secrets: Option<Arc<Resolved>>,
    /// The targets' sealing keys, from their heartbeats.
    sealing_keys: BTreeMap<String, String>,
    /// Each keyed target's values sealed once by [`Plan::set_secrets`] (or
    /// why they could not be), reused by every re-encoding: the binding
    /// covers device, deployment, revision and reference, not the attempt
    /// or the windows, and each seal costs X25519 operations.
    sealed: BTreeMap<String, Result<protocol::SecretSet<'static>, String>>,
}

/// Maintenance windows as they travel.
type Windows = BoundedVec<MaintenanceWindow<'static>, MAX_WINDOWS>;

/// A Device whose own maintenance windows cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Device {device}: {error}; the device's keys keep what they hold until it is fixed")]
pub struct DeviceWindowsError {
    /// The device id.
    pub device: String,
    /// What is wrong, naming the field (`spec.maintenance.windows[0].at`).
    pub error: PlanError,
}

/// A score type this build does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownType {
    /// The type as written.
    pub type_name: String,
    /// The nearest known type, when one is close (a likely typo).
    pub suggestion: Option<&'static str>,
}

impl UnknownType {
    /// A sentence for conditions, events and the CLI.
    pub fn message(&self) -> String {
        let hint = match self.suggestion {
            Some(s) => format!("did you mean `{s}`? "),
            None => String::new(),
        };
        format!(
            "score type `{}` is not known to this operator; {hint}it is forwarded as JSON and devices that do not know it report Unsupported (known: {})",
            self.type_name,
            KNOWN_SCORE_TYPES.join(", ")
        )
    }
}

/// Why a Deployment cannot be written. None of these is fixed by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `metadata.name` is not a key token.
    #[error("metadata.name `{name}` {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `metadata.namespace` cannot be part of the owner value the keys
    /// carry (only the cluster-less CLI meets this: the API server accepts
    /// no such namespace).
    #[error("metadata.namespace `{namespace}`: {reason}")]
    InvalidNamespace {
        /// The namespace.
        namespace: String,
        /// Why (in the message, like the other variants' reasons).
        reason: OwnerError,
    },
    /// A target device id is not a key token.
    #[error("spec.targetDevices[{index}] `{device}` {reason}")]
    InvalidTarget {
        /// Position in the list.
        index: usize,
        /// The id.
        device: String,
        /// Why.
        reason: String,
    },
    /// More targets than allowed.
    #[error("spec.targetDevices has {0} entries; at most 10000 are allowed")]
    TooManyTargets(usize),
    /// The Deployment targets no device.
    #[error(
        "spec.targetDevices is empty and spec.targetSelector is not set; name at least one device or select Devices by label (to stop running the score everywhere, delete the Deployment)"
    )]
    NoTargets,
    /// `spec.targetSelector` is not a valid label selector.
    #[error(transparent)]
    InvalidSelector(SelectorError),
    /// A `spec.rollout` field is out of its bounds (the CRD's schema
    /// refuses the same; the CLI reads manifests no server saw).
    #[error("spec.rollout.{field}: {value} is out of range; allowed {min} to {max}")]
    InvalidRollout {
        /// The field's name, e.g. `progressDeadlineSeconds`.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The smallest allowed.
        min: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A BatchSequence field of `spec.rollout` is wrong.
    #[error("spec.rollout.{field}: {reason}")]
    InvalidRolloutField {
        /// Where, e.g. `batches[1].limit`.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A maintenance window (of `spec.rollout.maintenanceWindows`, or a
    /// Device's `spec.maintenance.windows`) is not one a device can keep.
    #[error("{field}: {reason}")]
    InvalidWindow {
        /// The field, e.g. `spec.rollout.maintenanceWindows[0].at`.
        field: String,
        /// What is wrong with it and what is allowed.
        reason: maintenance_window::WindowError,
    },
    /// More maintenance windows than a device keeps.
    #[error(
        "{field} has {count} windows; at most {max} are allowed (one cron expression can open at several times, e.g. \"0 2,14 * * *\" or \"0 1 * * SAT,SUN\")",
        max = MAX_WINDOWS
    )]
    TooManyWindows {
        /// The list, e.g. `spec.rollout.maintenanceWindows`.
        field: String,
        /// How many it has.
        count: usize,
    },
    /// The score's data does not fit its type, or is over a bound.
    #[error("spec.score.data{}: {reason}", if path.is_empty() { String::new() } else { format!(".{path}") })]
    InvalidScore {
        /// Where inside `data` (`containers[0].image`), or empty.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A referenced Secret is missing or unusable: nothing is written for
    /// the new revision, the keys keep what they hold.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl PlanError {
    /// Whether the score (rather than the name or targets) is at fault.
    pub fn is_score_error(&self) -> bool {
        matches!(self, PlanError::InvalidScore { .. })
    }
}

/// Validates a Deployment and encodes its desired state.
pub fn plan(d: &Deployment) -> Result<Plan, PlanError> {
    let name = d.name_str().to_string();
    validate_deployment_name(&name).map_err(|e| PlanError::InvalidName {
        name: name.clone(),
        reason: token_reason(e),
    })?;
    let owner = OwnerBuf::from(
        Owner::new(d.namespace_or_default(), &name).map_err(|reason| {
            PlanError::InvalidNamespace {
                namespace: d.namespace_or_default().to_string(),
                reason,
            }
        })?,
    );
    if d.spec.target_devices.is_empty() && d.spec.target_selector.is_none() {
        return Err(PlanError::NoTargets);
    }
    if d.spec.target_devices.len() > MAX_TARGETS {
        return Err(PlanError::TooManyTargets(d.spec.target_devices.len()));
    }
    for (index, device) in d.spec.target_devices.iter().enumerate() {
        validate_device_id(device).map_err(|e| PlanError::InvalidTarget {
            index,
            device: device.clone(),
            reason: token_reason(e),
        })?;
    }
    let targets: BTreeSet<String> = d.spec.target_devices.iter().cloned().collect();
    let selector = d
        .spec
        .target_selector
        .as_ref()
        .map(TargetSelector::new)
        .transpose()
        .map_err(PlanError::InvalidSelector)?;
    check_rollout(&d.spec.rollout)?;
    let gate = gate_of(&d.spec.rollout)?;
    // Checked whatever the strategy, so that switching to BatchSequence
    // cannot meet a field that was accepted unread.
    let rollout_spec = RolloutSpec::new(&d.spec.rollout)?;
    let batch_sequence =
        (d.spec.rollout.strategy == RolloutStrategy::BatchSequence).then_some(rollout_spec);
    let score = &d.spec.score;
    let score_error = |e: protocol::json::JsonScoreError| {
        if e.path == "type" {
            PlanError::InvalidScore {
                path: String::new(),
                reason: format!("type: {}", e.reason),
            }
        } else {
            PlanError::InvalidScore {
                path: e.path,
                reason: e.reason,
            }
        }
    };
    let payload =
        protocol::json::payload_from_json(&score.type_name, &score.data).map_err(score_error)?;
    let revision = payload.content_hash();
    let desired = DesiredState {
        deployment: Text::borrowed(&name),
        revision,
        score: payload,
        rollout: d.spec.rollout.device_policy(),
        attempt: 0,
        gate,
        secrets: Default::default(),
    };
    let value = encode(&desired)?;
    let desired = desired.into_owned();
    let unknown_type = (!protocol::json::is_known_type(&score.type_name)).then(|| UnknownType {
        type_name: score.type_name.clone(),
        suggestion: nearest_known_type(&score.type_name),
    });
    let score_json = serde_json::to_string(score).map_err(|e| PlanError::InvalidScore {
        path: String::new(),
        reason: e.to_string(),
    })?;
    Ok(Plan {
        owner,
        name,
        targets: targets.into_iter().collect(),
        selector,
        held: BTreeMap::new(),
        revision,
        value,
        device_values: BTreeMap::new(),
        kept: BTreeMap::new(),
        force: d.spec.rollout.force,
        score_json,
        unknown_type,
        batch_sequence,
        desired,
        device_windows: BTreeMap::new(),
        unsealed: BTreeMap::new(),
        secrets: None,
        sealing_keys: BTreeMap::new(),
        sealed: BTreeMap::new(),
    })
}

fn encode(desired: &DesiredState<'_>) -> Result<Bytes, PlanError> {
    protocol::wire::encode_to_vec(desired)
        .map(Bytes::from)
        .map_err(|e| PlanError::InvalidScore {
            path: String::new(),
            reason: e.to_string(),
        })
}

/// The gate the devices get from `spec.rollout`: its update lock, its
/// maintenance windows (checked as the agent evaluates them) and force.
fn gate_of(r: &Rollout) -> Result<UpdateGate<'static>, PlanError> {
    let update_lock = match &r.update_lock {
        Some(lock) if lock.timeout_seconds > MAX_LOCK_TIMEOUT_SECONDS => {
            return Err(PlanError::InvalidRollout {
                field: "updateLock.timeoutSeconds",
                value: lock.timeout_seconds,
                min: 0,
                max: MAX_LOCK_TIMEOUT_SECONDS,
            });
        }
        Some(lock) => Some(UpdateLockPolicy {
            timeout_seconds: lock.timeout_seconds,
            on_timeout: lock.on_timeout.into(),
        }),
        None => None,
    };
    Ok(UpdateGate {
        update_lock,
        windows: check_windows("spec.rollout.maintenanceWindows", &r.maintenance_windows)?,
        force: r.force,
    })
}

/// `windows` (the list at `field`) checked and as they travel.
pub fn check_windows(field: &str, windows: &[MaintenanceWindowSpec]) -> Result<Windows, PlanError> {
    let too_many = || PlanError::TooManyWindows {
        field: field.to_string(),
        count: windows.len(),
    };
    if windows.len() > MAX_WINDOWS {
        return Err(too_many());
    }
    let mut out = BoundedVec::new();
    for (i, w) in windows.iter().enumerate() {
        let wire = w.to_wire().map_err(|reason| PlanError::InvalidWindow {
            field: format!("{field}[{i}].{}", reason.field()),
            reason,
        })?;
        out.push(wire).map_err(|_| too_many())?;
    }
    Ok(out)
}

impl Plan {
    /// Makes the value a retry: the same revision with `attempt` (format
    /// version 3 when above 0), which a device that rolled the revision
    /// back tries again. The revision does not change.
    pub fn set_attempt(&mut self, attempt: u32) -> Result<(), PlanError> {
        let reencode = |e: String| PlanError::InvalidScore {
            path: String::new(),
            reason: e,
        };
        if self.desired.attempt == attempt {
            return Ok(());
        }
        let before = self.desired.attempt;
        self.desired.attempt = attempt;
        if let Err(e) = self.encode_values() {
            self.desired.attempt = before;
            return Err(reencode(e.to_string()));
        }
        Ok(())
    }

    /// The value `device` receives: its own when its Device has
    /// maintenance windows, else [`Plan::value`].
    pub fn value_for(&self, device: &str) -> &Bytes {
        self.device_values.get(device).unwrap_or(&self.value)
    }

    /// Gives every target whose Device has maintenance windows of its own
    /// (`windows(device)`: the Device's `spec.maintenance.windows`, `None`
    /// or empty when it has none or no Device object) a value with those
    /// windows instead of the Deployment's: the same revision, update lock
    /// and force. A target whose Device's windows are invalid goes to
    /// [`Plan::kept`] (its key is left as it is) and is returned, to be
    /// reported on the Device.
    pub fn set_device_windows(
        &mut self,
        windows: impl Fn(&str) -> Option<Vec<MaintenanceWindowSpec>>,
    ) -> Vec<DeviceWindowsError> {
        self.device_windows.clear();
        self.kept.clear();
        let mut errors = Vec::new();
        for device in &self.targets {
            let Some(own) = windows(device).filter(|w| !w.is_empty()) else {
                continue;
            };
            match check_windows("spec.maintenance.windows", &own) {
                Ok(w) => {
                    self.device_windows.insert(device.clone(), w);
                }
                Err(error) => {
                    let e = DeviceWindowsError {
                        device: device.clone(),
                        error,
                    };
                    self.kept.insert(device.clone(), e.to_string());
                    errors.push(e);
                }
            }
        }
        if let Err(e) = self.encode_values() {
            // Not reached: the windows were checked, the base value encoded.
            for device in std::mem::take(&mut self.device_windows).into_keys() {
                self.kept.insert(device.clone(), e.to_string());
            }
            self.device_values.clear();
        }
        errors
    }

    /// Encodes `value` and every per-device value from `desired`: a
    /// target's own windows, and, when Secrets are referenced, its own
    /// sealed values (a target that cannot get them goes to
    /// [`Plan::unsealed`]).
    fn encode_values(&mut self) -> Result<(), PlanError> {
        let value = encode(&self.desired)?;
        let mut device_values = BTreeMap::new();
        let mut unsealed = BTreeMap::new();
        let secrets = self.secrets.as_deref().filter(|s| !s.is_empty());
        let mut devices: BTreeSet<&String> = self.device_windows.keys().collect();
        if secrets.is_some() {
            devices.extend(&self.targets);
        }
        for device in devices {
            let mut desired = self.desired.clone();
            if let Some(windows) = self.device_windows.get(device) {
                desired.gate.windows = windows.clone();
            }
            if secrets.is_some() {
                match self.sealed.get(device) {
                    Some(Ok(set)) => desired.secrets = set.clone(),
                    Some(Err(e)) => {
                        unsealed.insert(device.clone(), e.clone());
                        continue;
                    }
                    None => {
                        unsealed.insert(device.clone(), format!("held back: the Deployment carries sealed secrets and device {device} reports no sealing key (no heartbeat yet, or its agent has none): set [secrets] key_file in its agent configuration, or update the agent (its key is not written; what it ran before keeps running)"));
                        continue;
                    }
                }
            }
            let v = encode(&desired)?;
            if v != value {
                device_values.insert(device.clone(), v);
            }
        }
        self.value = value;
        self.device_values = device_values;
        self.unsealed = unsealed;
        Ok(())
    }

    /// Uses the Secrets the Deployment references, as `resolved`: the
    /// revision becomes the score's hash mixed with `resolved.digest` (a
    /// changed Secret is a new revision), and each target whose
    /// `sealing_key` (from its latest heartbeat) is known gets its own
    /// value with the values sealed to that key; the others go to
    /// [`Plan::unsealed`]. Call it once the targets are complete. Nothing
    /// changes when `resolved` seals nothing.
    pub fn set_secrets(
        &mut self,
        resolved: Resolved,
        sealing_key: impl Fn(&str) -> Option<String>,
    ) -> Result<(), PlanError> {
        self.set_secrets_reusing(resolved, sealing_key, &SealCache::default())
    }

    /// [`Plan::set_secrets`], reusing each device's set from `cache` when
    /// it was sealed for this revision to the same key, and storing this
    /// plan's sets there for the next plan.
    pub fn set_secrets_reusing(
        &mut self,
        resolved: Resolved,
        sealing_key: impl Fn(&str) -> Option<String>,
        cache: &SealCache,
    ) -> Result<(), PlanError> {
        if resolved.is_empty() {
            return Ok(());
        }
        self.revision = self.desired.score.content_hash_with(&resolved.digest);
        self.desired.revision = self.revision;
        self.sealing_keys = self
            .targets
            .iter()
            .filter_map(|t| {
                sealing_key(t)
                    .filter(|k| !k.is_empty())
                    .map(|k| (t.clone(), k))
            })
            .collect();
        let owner = self.owner.to_string();
        let mut previous = cache.take(&owner);
        let mut kept = Sealed::new();
        let mut sealed = BTreeMap::new();
        for (device, key) in &self.sealing_keys {
            let reused = previous
                .remove(device)
                .filter(|c| c.revision == self.revision && c.recipient == *key);
            let set = match reused {
                Some(c) => Ok(c.set),
                None => crate::secrets::seal::seal_for(device, &self.name, self.revision, key, &resolved)
                    .map_err(|e| {
                        format!(
                            "held back: the Deployment's secrets cannot be sealed to the key device {device} reports: {} (its key is not written)",
                            error_report::Chain(&e)
                        )
                    }),
            };
            if let Ok(set) = &set {
                kept.insert(
                    device.clone(),
                    SealedSet {
                        revision: self.revision,
                        recipient: key.clone(),
                        set: set.clone(),
                    },
                );
            }
            sealed.insert(device.clone(), set);
        }
        cache.store(&owner, kept);
        self.sealed = sealed;
        self.secrets = Some(Arc::new(resolved));
        self.encode_values()
    }

    /// The score as it travels (what [`crate::secrets::References::of`]
    /// reads the references from).
    pub fn score(&self) -> &protocol::ScorePayload<'static> {
        &self.desired.score
    }

    /// The sealing key `device`'s values are sealed to, if any.
    pub fn sealing_key(&self, device: &str) -> Option<&str> {
        self.sealing_keys.get(device).map(String::as_str)
    }

    /// Whether this plan carries sealed values.
    pub fn has_secrets(&self) -> bool {
        self.secrets.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// The same per-device windows as `other` (the plan being rolled out),
    /// for this plan of another score: what a rollback writes.
    pub fn copy_device_windows(&mut self, other: &Plan) -> Result<(), PlanError> {
        self.device_windows = other.device_windows.clone();
        self.kept = other.kept.clone();
        self.encode_values()
    }

    /// A delete of `key` by this plan: forced when `spec.rollout.force`.
    pub fn delete(&self, key: String) -> KvWrite {
        delete(key, self.force)
    }

    /// Adds `devices` (e.g. those the selector selects) to the targets,
    /// keeping them sorted and unique. Ids that are not key tokens are
    /// skipped with a warning (a Device object name always is one).
    pub fn add_targets(&mut self, devices: impl IntoIterator<Item = String>) {
        let mut all: BTreeSet<String> = std::mem::take(&mut self.targets).into_iter().collect();
        for device in devices {
            if validate_device_id(&device).is_ok() {
                all.insert(device);
            } else {
                tracing::warn!(owner = %self.owner, device, "selected Device name is not a device id; skipped");
            }
        }
        self.targets = all.into_iter().collect();
    }
}

/// The bounds the CRD's schema puts on `spec.rollout`, checked again.
fn check_rollout(r: &Rollout) -> Result<(), PlanError> {
    for (field, value, min) in [
        ("progressDeadlineSeconds", r.progress_deadline_seconds, 1),
        ("minHealthySeconds", r.min_healthy_seconds, 0),
    ] {
        if !(min..=MAX_ROLLOUT_SECONDS).contains(&value) {
            return Err(PlanError::InvalidRollout {
                field,
                value,
                min,
                max: MAX_ROLLOUT_SECONDS,
            });
        }
    }
    Ok(())
}

fn token_reason(e: protocol::KeyError) -> String {
    match e {
        protocol::KeyError::DeviceId(t) | protocol::KeyError::Deployment(t) => t.to_string(),
        other => other.to_string(),
    }
}

/// The known score type closest to `type_name`, when it is close enough to
/// be a typo (`PdomanV0` -> `PodmanV0`); between equally close ones the
/// newest (`PodmanV2` -> `PodmanV1`), what someone guessing a version wants.
pub fn nearest_known_type(type_name: &str) -> Option<&'static str> {
    let lower = type_name.to_ascii_lowercase();
    KNOWN_SCORE_TYPES
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let d = strsim::osa_distance(&lower, &k.to_ascii_lowercase());
            (d, std::cmp::Reverse(i), *k)
        })
        .filter(|(d, _, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, _, k)| k)
}

/// A target whose key belongs to another Deployment of the same name (in
/// another namespace): nothing is written for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The device.
    pub device: String,
    /// `<namespace>/<name>` of the Deployment that owns the key.
    pub owner: String,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Devices whose key was written.
    pub written: Vec<String>,
    /// Devices whose key already held this value.
    pub unchanged: Vec<String>,
    /// Devices no longer targeted whose key was deleted.
    pub removed: Vec<String>,
    /// Targets owned by another Deployment of the same name.
    pub conflicts: Vec<Conflict>,
}

impl ApplyOutcome {
    /// Puts plus deletes issued.
    pub fn writes(&self) -> usize {
        self.written.len() + self.removed.len()
    }
}

/// Writes `plan` to NATS: reads the current keys of this deployment name
/// once, then puts each target whose key differs, skips the ones that hold
/// the value already, leaves keys owned by another namespace's Deployment
/// alone (a [`Conflict`]) and those of held-back targets as they are, and
/// deletes keys this Deployment wrote for devices it no longer targets
/// (devices dropped from `targetDevices`, or no longer selected).
pub async fn apply(nats: &Nats, plan: &Plan) -> Result<ApplyOutcome, NatsError> {
    let current = current_keys(nats, &plan.name).await?;
    let mut outcome = ApplyOutcome::default();
    let mut writes = Vec::new();
    for device in &plan.targets {
        if plan.held.contains_key(device)
            || plan.kept.contains_key(device)
            || plan.unsealed.contains_key(device)
        {
            continue;
        }
        let key = key_of(device, &plan.name)?;
        let value = plan.value_for(device);
        match current.get(device.as_str()) {
            Some(rec)
                if !rec.deleted
                    && rec
                        .owner
                        .as_deref()
                        .is_some_and(|o| o != plan.owner.as_str()) =>
            {
                outcome.conflicts.push(Conflict {
                    device: device.clone(),
                    owner: rec.owner.clone().unwrap_or_default(),
                });
            }
            Some(rec)
                if !rec.deleted
                    && rec.owner.as_deref() == Some(plan.owner.as_str())
                    && crate::secrets::seal::equivalent(&rec.value, value) =>
            {
                outcome.unchanged.push(device.clone());
            }
            _ => {
                writes.push(KvWrite::Put {
                    key,
                    value: value.clone(),
                    owner: plan.owner.to_string(),
                });
                outcome.written.push(device.clone());
            }
        }
    }
    let targets: BTreeSet<&str> = plan.targets.iter().map(String::as_str).collect();
    for (device, rec) in &current {
        if !targets.contains(device.as_str()) && owned_by(rec, &plan.owner) {
            writes.push(plan.delete(key_of(device, &plan.name)?));
            outcome.removed.push(device.to_string());
        }
    }
    nats.write(DESIRED_STATE_BUCKET, writes).await?;
    Ok(outcome)
}

/// Deletes every key `<device>.<name>` written by `owner`; returns the
/// devices whose key was deleted. Idempotent. The devices remove the
/// workload when their update lock and maintenance windows let them; see
/// [`remove_forced`] for at once.
pub async fn remove(nats: &Nats, owner: &str, name: &str) -> Result<Vec<String>, NatsError> {
    remove_with(nats, owner, name, false).await
}

/// [`remove`] for a Deployment with `spec.rollout.force`: the deletes carry
/// the force header ([`protocol::kv::FORCE_HEADER`]), so that devices
/// remove at once, whatever their update lock and maintenance windows say.
pub async fn remove_forced(nats: &Nats, owner: &str, name: &str) -> Result<Vec<String>, NatsError> {
    remove_with(nats, owner, name, true).await
}

async fn remove_with(
    nats: &Nats,
    owner: &str,
    name: &str,
    force: bool,
) -> Result<Vec<String>, NatsError> {
    let current = current_keys(nats, name).await?;
    let mut removed = Vec::new();
    let mut writes = Vec::new();
    for (device, rec) in &current {
        if owned_by(rec, owner) {
            writes.push(delete(key_of(device, name)?, force));
            removed.push(device.to_string());
        }
    }
    nats.write(DESIRED_STATE_BUCKET, writes).await?;
    Ok(removed)
}

fn delete(key: String, force: bool) -> KvWrite {
    if force {
        KvWrite::ForcedDelete { key }
    } else {
        KvWrite::Delete { key }
    }
}

pub(crate) fn owned_by(rec: &crate::nats::KvRecord, owner: &str) -> bool {
    !rec.deleted && rec.owner.as_deref() == Some(owner)
}

pub(crate) fn key_of(device: &str, name: &str) -> Result<String, NatsError> {
    DeploymentKey::new(device, name)
        .map(|k| k.to_string())
        .map_err(|source| NatsError::InvalidKey { source })
}

/// The last record of every `<device>.<name>` key, by device.
pub(crate) async fn current_keys(
    nats: &Nats,
    name: &str,
) -> Result<BTreeMap<String, crate::nats::KvRecord>, NatsError> {
    validate_deployment_name(name).map_err(|source| NatsError::InvalidKey { source })?;
    let records = nats
        .scan(DESIRED_STATE_BUCKET, &format!("*.{name}"))
        .await?;
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let device = DeploymentKey::parse(&r.key).ok()?.device_id().to_string();
            Some((device, r))
        })
        .collect())
}

/// A one-line summary, for the CLI and events.
pub fn summary(plan: &Plan, outcome: &ApplyOutcome) -> String {
    let mut s = format!(
        "revision {}: {} written, {} unchanged, {} removed",
        revision_string(plan.revision),
        outcome.written.len(),
        outcome.unchanged.len(),
        outcome.removed.len()
    );
    if !outcome.conflicts.is_empty() {
        s.push_str(&format!(", {} in conflict", outcome.conflicts.len()));
    }
    if !plan.held.is_empty() {
        s.push_str(&format!(
            ", {} held back (their agent cannot read the value; update it)",
            plan.held.len()
        ));
    }
    if !plan.kept.is_empty() {
        s.push_str(&format!(
            ", {} kept as they were (their Device's maintenance windows are invalid)",
            plan.kept.len()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Rollout;

    fn deployment(name: &str, ty: &str, data: serde_json::Value) -> Deployment {
        Deployment::for_test("fleet", name, &["b", "a", "b"], ty, data)
    }

    fn podman() -> serde_json::Value {
        serde_json::json!({"containers": [{"name": "web", "image": "nginx:1"}]})
    }

    #[test]
    fn plans_a_known_score() {
        let p = plan(&deployment("web", "PodmanV0", podman())).unwrap();
        assert_eq!(p.targets, vec!["a", "b"]);
        assert_eq!(p.owner, "fleet/web");
        assert!(p.unknown_type.is_none());
        let decoded: DesiredState<'_> = protocol::wire::decode(&p.value).unwrap();
        assert_eq!(decoded.revision, p.revision);
        assert_eq!(decoded.deployment.as_str(), "web");
        assert_eq!(p.revision, decoded.score.content_hash());
        // Same content, same revision; different content, different one.
        assert_eq!(
            plan(&deployment("web", "PodmanV0", podman()))
                .unwrap()
                .revision,
            p.revision
        );
        let other = serde_json::json!({"containers": [{"name": "web", "image": "nginx:2"}]});
        assert_ne!(
            plan(&deployment("web", "PodmanV0", other))
                .unwrap()
                .revision,
            p.revision
        );
    }

    #[test]
    fn names_the_path_of_a_bad_score() {
        let bad = serde_json::json!({"containers": [{"name": "web", "image": "x", "ports": [{"containerPort": 0}]}]});
        let e = plan(&deployment("web", "PodmanV0", bad)).unwrap_err();
        match &e {
            PlanError::InvalidScore { path, .. } => {
                assert_eq!(path, "containers[0].ports[0].containerPort")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("spec.score.data.containers[0].ports[0].containerPort: "),
            "{e}"
        );
        let unknown_field = serde_json::json!({"containers": [{"name": "web", "image": "x", "imagePullPolicy": "Always"}]});
        let e = plan(&deployment("web", "PodmanV0", unknown_field)).unwrap_err();
        assert!(e.to_string().contains("imagePullPolicy"), "{e}");
    }

    /// The golden `DESIRED` and `DESIRED_STATE_V2` vectors of
    /// `protocol/tests/vectors`: what agents of the first release read, and
    /// the same with the rollout policy {30, 120, true}.
    const GOLDEN_DESIRED: &str = "010968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e300000000000000100000000000000";
    const GOLDEN_DESIRED_V2: &str = "020968656c6c6f2d776562fda48196eef6c3a02f08506f646d616e5630003901010263302572656769737472792e6578616d706c652e6e65742f7465616d2f6170702d303a312e322e3000000000000001000000000000001e7801";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_rollout_policy_needs_desired_state_version_2_only_when_set() {
        let golden = serde_json::json!({"containers": [{"name": "c0", "image": "registry.example.net/team/app-0:1.2.0"}]});
        let mut d = deployment("hello-web", "PodmanV0", golden);
        // Nothing set, or the defaults written out: version 1, byte for
        // byte what the first release wrote.
        let p = plan(&d).unwrap();
        assert_eq!(hex(&p.value), GOLDEN_DESIRED);
        d.spec.rollout = serde_json::from_value(serde_json::json!({
            "strategy": "AllAtOnce", "autoRollback": false,
            "progressDeadlineSeconds": 600, "minHealthySeconds": 0
        }))
        .unwrap();
        assert_eq!(hex(&plan(&d).unwrap().value), GOLDEN_DESIRED);
        // A policy: version 2, the same revision (it is the score's hash).
        d.spec.rollout.auto_rollback = true;
        d.spec.rollout.progress_deadline_seconds = 120;
        d.spec.rollout.min_healthy_seconds = 30;
        let p2 = plan(&d).unwrap();
        assert_eq!(hex(&p2.value), GOLDEN_DESIRED_V2);
        assert_eq!(p2.revision, p.revision);
        let decoded: DesiredState<'_> = protocol::wire::decode(&p2.value).unwrap();
        assert_eq!(decoded.format_version(), 2);
        assert_eq!(
            decoded.rollout,
            protocol::desired::RolloutPolicy {
                min_healthy_seconds: 30,
                progress_deadline_seconds: 120,
                auto_rollback: true,
            }
        );
        // Any one field off its default is enough.
        for f in [
            |r: &mut Rollout| r.auto_rollback = true,
            |r: &mut Rollout| r.progress_deadline_seconds = 599,
            |r: &mut Rollout| r.min_healthy_seconds = 1,
        ] {
            let mut d = d.clone();
            d.spec.rollout = Rollout::default();
            f(&mut d.spec.rollout);
            assert_eq!(plan(&d).unwrap().value[0], 2, "{:?}", d.spec.rollout);
        }
    }

    #[test]
    fn rollout_bounds_name_the_field() {
        let mut d = deployment("web", "PodmanV0", podman());
        for (deadline, healthy, refused) in [
            (
                0,
                0,
                Some("spec.rollout.progressDeadlineSeconds: 0 is out of range; allowed 1 to 86400"),
            ),
            (
                86_401,
                0,
                Some(
                    "spec.rollout.progressDeadlineSeconds: 86401 is out of range; allowed 1 to 86400",
                ),
            ),
            (
                600,
                86_401,
                Some("spec.rollout.minHealthySeconds: 86401 is out of range; allowed 0 to 86400"),
            ),
            (1, 0, None),
            (86_400, 86_400, None),
        ] {
            d.spec.rollout.progress_deadline_seconds = deadline;
            d.spec.rollout.min_healthy_seconds = healthy;
            match (plan(&d), refused) {
                (Err(e), Some(msg)) => {
                    assert_eq!(e.to_string(), msg);
                    assert!(!e.is_score_error(), "the spec's fault, not the score's");
                }
                (Ok(_), None) => {}
                (got, want) => panic!("{deadline}/{healthy}: {got:?}, want {want:?}"),
            }
        }
        // Absent fields are the defaults, as the CRD's schema fills them in.
        let r: Rollout = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(r, Rollout::default());
        assert_eq!(r.progress_deadline_seconds, 600);
        assert!(
            serde_json::from_value::<Rollout>(serde_json::json!({"autoRollBack": true})).is_err(),
            "a misspelt field is refused, not ignored"
        );
    }

    #[test]
    fn plans_a_podman_v1_score_and_names_the_path_of_a_bad_one() {
        let v1 = serde_json::json!({"containers": [{
            "name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80, "hostPort": 8080}],
            "healthCheck": {"httpGet": {"path": "/", "port": 80}, "intervalSeconds": 5},
            "resources": {"memoryLimit": "64Mi", "cpuLimit": "500m"}
        }]});
        let p = plan(&deployment("web", "PodmanV1", v1.clone())).unwrap();
        assert!(p.unknown_type.is_none(), "PodmanV1 is a known type");
        let decoded: DesiredState<'_> = protocol::wire::decode(&p.value).unwrap();
        assert_eq!(decoded.score.type_name.as_str(), "PodmanV1");
        assert_eq!(decoded.score.encoding, protocol::PayloadEncoding::Postcard);
        assert!(matches!(
            decoded.score.decode(),
            Ok(protocol::IotScore::PodmanV1(_))
        ));
        // The same containers as PodmanV0 are another score: another revision.
        let v0 = serde_json::json!({"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        assert_ne!(
            plan(&deployment("web", "PodmanV0", v0)).unwrap().revision,
            p.revision
        );

        // A check on a port the container does not expose.
        let mut bad = v1.clone();
        bad["containers"][0]["healthCheck"]["httpGet"]["port"] = 81.into();
        let e = plan(&deployment("web", "PodmanV1", bad)).unwrap_err();
        assert!(e.is_score_error(), "{e:?}");
        let PlanError::InvalidScore { path, reason } = &e else {
            panic!("{e:?}")
        };
        assert!(
            path.starts_with("containers[0].healthCheck"),
            "{path}: {reason}"
        );
        assert!(reason.contains("81"), "{reason}");
        assert!(
            e.to_string()
                .starts_with("spec.score.data.containers[0].healthCheck"),
            "{e}"
        );
        // What `kubectl describe` shows: the InvalidScore condition.
        let d = deployment("web", "PodmanV1", serde_json::json!({}));
        let observed = crate::status::Observed {
            targets: d.spec.target_devices.clone(),
            invalid: Some(e.clone()),
            ..Default::default()
        };
        let cache = crate::status::StatusCache::detached(std::time::Duration::from_secs(60));
        let status = crate::status::fold_status(&d, &observed, &cache, 0);
        let invalid = status
            .conditions
            .iter()
            .find(|c| c.type_ == crate::status::conditions::INVALID_SCORE)
            .unwrap();
        assert_eq!(
            (invalid.status.as_str(), invalid.reason),
            ("True", crate::crd::ConditionReason::ScoreRejected)
        );
        assert_eq!(invalid.message, e.to_string());
        // An absurd interval, and a field PodmanV0 has not.
        let mut bad = v1.clone();
        bad["containers"][0]["healthCheck"]["intervalSeconds"] = 0.into();
        let e = plan(&deployment("web", "PodmanV1", bad)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.score.data.containers[0].healthCheck.intervalSeconds: "),
            "{e}"
        );
        let e = plan(&deployment("web", "PodmanV0", v1)).unwrap_err();
        assert!(e.to_string().contains("healthCheck"), "{e}");
    }

    #[test]
    fn rejects_bad_names_and_targets() {
        assert!(matches!(
            plan(&deployment("web.v1", "PodmanV0", podman())),
            Err(PlanError::InvalidName { .. })
        ));
        let mut d = deployment("web", "PodmanV0", podman());
        d.spec.target_devices = vec!["ok".into(), "pi*".into()];
        let e = plan(&d).unwrap_err();
        assert!(
            matches!(e, PlanError::InvalidTarget { index: 1, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("'*'"), "{e}");
        d.spec.target_devices.clear();
        assert!(matches!(plan(&d), Err(PlanError::NoTargets)));
        // A manifest the CLI reads may hold a namespace the API server
        // would refuse; it cannot be part of the owner value.
        let mut d = deployment("web", "PodmanV0", podman());
        d.metadata.namespace = Some("a/b".into());
        let e = plan(&d).unwrap_err();
        assert!(matches!(e, PlanError::InvalidNamespace { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("metadata.namespace `a/b`: "),
            "{e}"
        );
    }

    #[test]
    fn a_selector_alone_is_a_target_and_bad_ones_name_the_field() {
        let mut d = deployment("web", "PodmanV0", podman());
        d.spec.target_devices.clear();
        d.spec.target_selector = Some(
            serde_json::from_value(serde_json::json!({"matchLabels": {"site": "lyon"}})).unwrap(),
        );
        let mut p = plan(&d).unwrap();
        assert!(
            p.targets.is_empty(),
            "selected Devices are added by the caller"
        );
        assert_eq!(p.selector.as_ref().unwrap().to_string(), "site=lyon");
        p.add_targets([
            "pi-2".to_string(),
            "pi-1".into(),
            "pi-2".into(),
            "bad.id".into(),
        ]);
        assert_eq!(p.targets, ["pi-1", "pi-2"]);
        d.spec.target_selector = Some(
            serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "site", "operator": "Equals", "values": ["lyon"]}]}))
                .unwrap(),
        );
        let e = plan(&d).unwrap_err();
        assert!(matches!(e, PlanError::InvalidSelector(_)), "{e:?}");
        assert!(!e.is_score_error());
        assert!(
            e.to_string().starts_with(
                "spec.targetSelector.matchExpressions[0].operator: \"Equals\" is not an operator"
            ),
            "{e}"
        );
        d.spec.target_selector = None;
        let e = plan(&d).unwrap_err();
        assert_eq!(e, PlanError::NoTargets);
        assert!(e.to_string().contains("targetSelector"), "{e}");
    }

    fn window(at: &str, tz: &str, duration: &str) -> MaintenanceWindowSpec {
        MaintenanceWindowSpec {
            at: at.into(),
            time_zone: tz.into(),
            duration: duration.into(),
        }
    }

    fn gate_of_value(value: &[u8]) -> (u8, protocol::UpdateGate<'static>) {
        let d: DesiredState<'_> = protocol::wire::decode(value).unwrap();
        (d.format_version(), d.gate.into_owned())
    }

    #[test]
    fn the_gate_goes_in_format_4_only_when_set() {
        let mut d = deployment("web", "PodmanV1", podman());
        let plain = plan(&d).unwrap();
        assert_eq!(plain.value[0], 1, "nothing gates it: as before");
        d.spec.rollout.maintenance_windows = vec![window("0 2 * * *", "Europe/Paris", "2h")];
        d.spec.rollout.update_lock = Some(crate::crd::UpdateLock {
            timeout_seconds: 3600,
            on_timeout: crate::crd::OnLockTimeout::Force,
        });
        let p = plan(&d).unwrap();
        assert_eq!(p.revision, plain.revision, "the revision is the score's");
        let (version, gate) = gate_of_value(&p.value);
        assert_eq!(version, 4);
        assert_eq!(
            gate.update_lock,
            Some(protocol::UpdateLockPolicy {
                timeout_seconds: 3600,
                on_timeout: protocol::LockTimeout::Force
            })
        );
        assert_eq!(gate.windows.len(), 1);
        assert_eq!(
            (
                gate.windows[0].at.as_str(),
                gate.windows[0].time_zone.as_str(),
                gate.windows[0].duration_seconds
            ),
            ("0 2 * * *", "Europe/Paris", 7200)
        );
        assert!(!gate.force);
        // Each field alone is enough; `updateLock: {}` honours the lock.
        let mut lock = deployment("web", "PodmanV1", podman());
        lock.spec.rollout.update_lock = Some(Default::default());
        let (v, gate) = gate_of_value(&plan(&lock).unwrap().value);
        assert_eq!((v, gate.update_lock), (4, Some(Default::default())));
        let mut force = deployment("web", "PodmanV1", podman());
        force.spec.rollout.force = true;
        let p = plan(&force).unwrap();
        assert!(p.force);
        assert_eq!(
            gate_of_value(&p.value),
            (
                4,
                protocol::UpdateGate {
                    force: true,
                    ..Default::default()
                }
            )
        );
        // The YAML form users write.
        let r: Rollout = serde_json::from_value(serde_json::json!({
            "updateLock": {"timeoutSeconds": 600},
            "maintenanceWindows": [{"at": "0 2 * * *", "timeZone": "UTC", "duration": "90m"}],
        }))
        .unwrap();
        assert_eq!(
            r.update_lock.as_ref().unwrap().on_timeout,
            crate::crd::OnLockTimeout::Fail
        );
        assert_eq!(r.maintenance_windows[0].duration, "90m");
        assert!(
            serde_json::from_value::<Rollout>(serde_json::json!({"maintenanceWindows": [{"at": "0 2 * * *", "timezone": "UTC", "duration": "1h"}]})).is_err(),
            "a misspelt field is refused"
        );
    }

    #[test]
    fn bad_gates_name_the_field_and_the_fix() {
        let refused = |change: &dyn Fn(&mut Rollout)| {
            let mut d = deployment("web", "PodmanV1", podman());
            change(&mut d.spec.rollout);
            let e = plan(&d).unwrap_err();
            assert!(!e.is_score_error(), "{e}");
            e.to_string()
        };
        let windows = |w: Vec<MaintenanceWindowSpec>| {
            move |r: &mut Rollout| r.maintenance_windows = w.clone()
        };
        let got = refused(&windows(vec![window("0 25 * * *", "UTC", "1h")]));
        assert!(
            got.starts_with("spec.rollout.maintenanceWindows[0].at: \"0 25 * * *\" is not a valid cron expression ("),
            "{got}"
        );
        assert!(got.contains("e.g. \"0 2 * * *\""), "{got}");
        let got = refused(&windows(vec![
            window("0 2 * * *", "UTC", "1h"),
            window("0 2 * * *", "Europe/Lyon", "1h"),
        ]));
        assert!(
            got.starts_with("spec.rollout.maintenanceWindows[1].timeZone: \"Europe/Lyon\" is not an IANA time zone"),
            "{got}"
        );
        for bad in ["0s", "25h", "24h1s", "soon", "-1h", ""] {
            let got = refused(&windows(vec![window("0 2 * * *", "UTC", bad)]));
            assert!(
                got.starts_with(&format!(
                    "spec.rollout.maintenanceWindows[0].duration: {bad:?} is not a window duration"
                )),
                "{bad}: {got}"
            );
            assert!(got.contains("from 1s to 24h"), "{got}");
        }
        let nine = vec![window("0 2 * * *", "UTC", "1h"); 9];
        let got = refused(&windows(nine));
        assert!(
            got.starts_with("spec.rollout.maintenanceWindows has 9 windows; at most 8 are allowed"),
            "{got}"
        );
        let got = refused(&|r: &mut Rollout| {
            r.update_lock = Some(crate::crd::UpdateLock {
                timeout_seconds: 604_801,
                ..Default::default()
            })
        });
        assert_eq!(
            got,
            "spec.rollout.updateLock.timeoutSeconds: 604801 is out of range; allowed 0 to 604800"
        );
        // The bounds themselves pass.
        let mut d = deployment("web", "PodmanV1", podman());
        d.spec.rollout.maintenance_windows = vec![window("0 2 * * *", "UTC", "24h"); 8];
        d.spec.rollout.maintenance_windows[0].duration = "1s".into();
        d.spec.rollout.update_lock = Some(crate::crd::UpdateLock {
            timeout_seconds: 604_800,
            ..Default::default()
        });
        assert!(plan(&d).is_ok());
    }

    #[test]
    fn a_devices_own_windows_win_and_bad_ones_keep_its_key() {
        let mut d = deployment("web", "PodmanV1", podman());
        d.spec.target_devices = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        d.spec.rollout.maintenance_windows = vec![window("0 2 * * *", "Europe/Paris", "2h")];
        d.spec.rollout.update_lock = Some(Default::default());
        let mut p = plan(&d).unwrap();
        let own = |device: &str| match device {
            "a" => Some(vec![window("30 3 * * SUN", "America/New_York", "90m")]),
            "b" => Some(vec![]),
            "c" => Some(vec![window("0 2 * * *", "Mars/Olympus", "1h")]),
            // The Deployment's windows exactly: the common value.
            "d" => Some(vec![window("0 2 * * *", "Europe/Paris", "2h")]),
            _ => None,
        };
        let errors = p.set_device_windows(own);
        assert_eq!(p.device_values.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.value_for("b"), &p.value);
        assert_eq!(p.value_for("d"), &p.value);
        let (v, gate) = gate_of_value(p.value_for("a"));
        assert_eq!(v, 4);
        assert_eq!(
            gate.windows.len(),
            1,
            "the Device's replace the Deployment's"
        );
        assert_eq!(gate.windows[0].time_zone.as_str(), "America/New_York");
        assert_eq!(gate.windows[0].duration_seconds, 5400);
        assert_eq!(
            gate.update_lock,
            Some(Default::default()),
            "the lock is the Deployment's"
        );
        let a: DesiredState<'_> = protocol::wire::decode(p.value_for("a")).unwrap();
        assert_eq!(a.revision, p.revision, "same revision");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].device, "c");
        assert_eq!(p.kept.keys().collect::<Vec<_>>(), ["c"]);
        assert!(
            p.kept["c"].starts_with("Device c: spec.maintenance.windows[0].timeZone: \"Mars/Olympus\" is not an IANA time zone"),
            "{}",
            p.kept["c"]
        );
        assert!(p.kept["c"].ends_with("the device's keys keep what they hold until it is fixed"));
        // A retry keeps each device's windows.
        p.set_attempt(2).unwrap();
        let a: DesiredState<'_> = protocol::wire::decode(p.value_for("a")).unwrap();
        assert_eq!((a.attempt, a.gate.windows.len()), (2, 1));
        assert_eq!(a.gate.windows[0].time_zone.as_str(), "America/New_York");
        // A Deployment without a gate: the Device's windows alone, format 4
        // for that device only.
        let mut plain = plan(&deployment("web", "PodmanV1", podman())).unwrap();
        plain.set_device_windows(|t| (t == "a").then(|| vec![window("0 2 * * *", "UTC", "1h")]));
        assert_eq!(plain.value[0], 1);
        assert_eq!(plain.value_for("a")[0], 4);
        assert_eq!(plain.value_for("b")[0], 1);
        // Windows are looked up again at each call: none now.
        plain.set_device_windows(|_| None);
        assert!(plain.device_values.is_empty() && plain.kept.is_empty());
        // A rollback's value: another score with the same per-device windows.
        let mut other = plan(&deployment(
            "web",
            "PodmanV1",
            serde_json::json!({"containers": [{"name": "web", "image": "nginx:2"}]}),
        ))
        .unwrap();
        other.set_device_windows(|_| None);
        other.copy_device_windows(&p).unwrap();
        let (_, gate) = gate_of_value(other.value_for("a"));
        assert_eq!(gate.windows[0].time_zone.as_str(), "America/New_York");
        assert!(other.kept.contains_key("c"));
    }

    #[test]
    fn deletes_are_forced_only_with_spec_rollout_force() {
        let mut d = deployment("web", "PodmanV0", podman());
        let p = plan(&d).unwrap();
        assert_eq!(p.delete("k".into()), KvWrite::Delete { key: "k".into() });
        d.spec.rollout.force = true;
        let p = plan(&d).unwrap();
        assert_eq!(
            p.delete("k".into()),
            KvWrite::ForcedDelete { key: "k".into() }
        );
    }

    #[test]
    fn routes_unknown_types_as_json_with_a_suggestion() {
        let p = plan(&deployment("web", "PdomanV0", podman())).unwrap();
        let u = p.unknown_type.clone().unwrap();
        assert_eq!(u.suggestion, Some("PodmanV0"));
        assert!(
            u.message().contains("did you mean `PodmanV0`?"),
            "{}",
            u.message()
        );
        let decoded: DesiredState<'_> = protocol::wire::decode(&p.value).unwrap();
        assert_eq!(decoded.score.encoding, protocol::PayloadEncoding::Json);
        assert_eq!(nearest_known_type("OkdApplyV0"), None);
        assert_eq!(nearest_known_type("podmanv0"), Some("PodmanV0"));
        assert_eq!(nearest_known_type("PodmnV1"), Some("PodmanV1"));
        assert_eq!(nearest_known_type("PodmanV2"), Some("PodmanV1"));
        assert_eq!(nearest_known_type("Podman"), Some("PodmanV1"));
        let u = plan(&deployment("web", "PodmanV2", podman()))
            .unwrap()
            .unknown_type
            .unwrap();
        assert!(
            u.message().contains("did you mean `PodmanV1`?")
                && u.message().ends_with("(known: PodmanV0, PodmanV1)"),
            "{}",
            u.message()
        );
    }
}
