//! The `iot.nationtech.io/v1alpha1` `Deployment` custom resource.
//!
//! The schema carries the apiserver-side
//! checks: key tokens for the name and the device ids, the score type's
//! identifier shape, the label selector's syntax, and that some target is
//! given at all, each a CEL rule with a message that says what is allowed.
//! [`crate::apply::plan`] checks the same again, exactly (the CRD cannot
//! bound a label key's prefix, and the CLI reads manifests no server saw).

use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// API group of the resource.
pub const GROUP: &str = "iot.nationtech.io";
/// Finalizer that keeps a Deployment until its keys are removed from NATS.
pub const FINALIZER: &str = "iot.nationtech.io/desired-state";

/// CEL rule shared by the name and device-id checks: one NATS key token.
pub const TOKEN_RULE_REGEX: &str = "^[A-Za-z0-9_-]{1,63}$";
/// CEL rule on `metadata.name` (root of the schema).
pub const NAME_RULE: &str = "self.metadata.name.matches('^[A-Za-z0-9_-]{1,63}$')";
/// Message of [`NAME_RULE`].
pub const NAME_RULE_MESSAGE: &str = "metadata.name must be a single NATS key token: 1 to 63 of A-Z, a-z, 0-9, '_' or '-' (no '.'; it becomes the second token of the key <device>.<name>)";
/// CEL rule on each entry of `spec.targetDevices`.
pub const DEVICE_RULE: &str = "self.matches('^[A-Za-z0-9_-]{1,63}$')";
/// Message of [`DEVICE_RULE`].
pub const DEVICE_RULE_MESSAGE: &str =
    "device ids are 1 to 63 of A-Z, a-z, 0-9, '_' or '-' (no '.', '*', '>' or spaces)";
/// CEL rule on `spec.score.type`.
pub const SCORE_TYPE_RULE: &str = "self.matches('^[A-Za-z_][A-Za-z0-9_]*$')";
/// Message of [`SCORE_TYPE_RULE`].
pub const SCORE_TYPE_RULE_MESSAGE: &str =
    "score.type must be a score variant name (a Rust identifier), e.g. PodmanV0 or PodmanV1";
/// CEL rule on `spec`: something is targeted.
pub const TARGETS_RULE: &str =
    "has(self.targetSelector) || (has(self.targetDevices) && size(self.targetDevices) > 0)";
/// Message of [`TARGETS_RULE`].
pub const TARGETS_RULE_MESSAGE: &str = "spec needs targetDevices (device ids) or targetSelector (labels of Device objects), or both; to stop running the score everywhere, delete the Deployment";
/// CEL rule on `spec.targetSelector.matchLabels`: every key is a label key.
pub const SELECTOR_KEYS_RULE: &str = "self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";
/// CEL rule on a selector's label key.
pub const SELECTOR_KEY_RULE: &str = "self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')";
/// Message of [`SELECTOR_KEYS_RULE`] and [`SELECTOR_KEY_RULE`].
pub const SELECTOR_KEY_RULE_MESSAGE: &str = "label keys are [prefix/]name: name is 1 to 63 of A-Z, a-z, 0-9, '-', '_' or '.', starting and ending alphanumeric; the optional prefix is a DNS subdomain (lowercase), e.g. site or example.com/site";
/// CEL rule on a selector's label value.
pub const SELECTOR_VALUE_RULE: &str =
    "self.matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$')";
/// Message of [`SELECTOR_VALUE_RULE`].
pub const SELECTOR_VALUE_RULE_MESSAGE: &str = "label values are empty or 1 to 63 of A-Z, a-z, 0-9, '-', '_' or '.', starting and ending alphanumeric";
/// CEL rule on each entry of `spec.targetSelector.matchExpressions`.
pub const SELECTOR_VALUES_RULE: &str = "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)";
/// Message of [`SELECTOR_VALUES_RULE`].
pub const SELECTOR_VALUES_RULE_MESSAGE: &str = "operators In and NotIn need at least one value in values; Exists and DoesNotExist take no values";
/// Most `matchLabels` entries, `matchExpressions` entries, or values of
/// one expression (bounds that keep the CEL rules' cost estimate low).
pub const MAX_SELECTOR_TERMS: usize = 32;
/// Most targets one Deployment may name.
pub const MAX_TARGETS: usize = 10_000;
/// Most entries in `.status.devices`. Ready devices are only counted, so a
/// healthy fleet lists none; past this many not-ready devices the rest are
/// counted in `.status.devicesOmitted`. Keeps the object far below etcd's
/// 1.5 MiB limit (a full list of [`MAX_TARGETS`] devices was 1.2 MiB) and
/// every status patch small; `iot-operator status NAME` shows every device.
pub const MAX_LISTED_DEVICES: usize = 100;

/// What a Deployment asks for: a score run on a set of devices.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "iot.nationtech.io",
    version = "v1alpha1",
    kind = "Deployment",
    plural = "deployments",
    singular = "deployment",
    namespaced,
    status = "DeploymentStatus",
    shortname = "iotdeploy",
    shortname = "iotd",
    category = "iot",
    doc = "A score (containers and their settings) to run on a set of IoT devices over NATS",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.score.type"}"#,
    printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.targeted"}"#,
    printcolumn = r#"{"name":"Up-to-date","type":"integer","jsonPath":".status.upToDate"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Batch","type":"integer","jsonPath":".status.rollout.currentBatch"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready","priority":1}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": TARGETS_RULE, "message": TARGETS_RULE_MESSAGE}]))]
pub struct DeploymentSpec {
    /// Device ids to run the score on, whether or not a Device object exists
    /// for them yet (boards flashed before their first heartbeat). May be
    /// empty or absent when targetSelector is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "target_devices_schema")]
    pub target_devices: Vec<String>,
    /// Device objects (kind Device, one per board) to run the score on, by
    /// their labels: a standard Kubernetes label selector (matchLabels,
    /// matchExpressions with In, NotIn, Exists, DoesNotExist; all must
    /// hold; {} selects every Device). The targets are the union of the
    /// selected Devices and targetDevices; a Device that stops matching, or
    /// is deleted, loses the deployment (its key is removed, its workload
    /// stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "target_selector_schema")]
    pub target_selector: Option<LabelSelector>,
    /// How a new revision reaches the targets, and what each device does
    /// when it does not come up healthy. progressDeadlineSeconds,
    /// minHealthySeconds and autoRollback are applied by the devices
    /// themselves; set to anything but their defaults they reach only
    /// agents that read them (newer than the rollout policy), and a target
    /// whose agent is older is held back (Unsupported, "update the agent").
    #[serde(default)]
    pub rollout: Rollout,
    /// What to run.
    pub score: Score,
    /// Secrets of type kubernetes.io/dockerconfigjson in the Deployment's
    /// namespace (`kubectl create secret docker-registry`), exactly as in
    /// a PodSpec: the login for each registry the score's images come from
    /// is sealed to each target device, which pulls with it. The operator
    /// reads them again every 30 seconds; a changed Secret is a new
    /// revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<ImagePullSecret>,
}

/// A Secret named in `spec.imagePullSecrets`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePullSecret {
    /// The Secret's name, in the Deployment's namespace.
    pub name: String,
}

/// The score as users write it: `{type, data}`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// The score variant, e.g. `PodmanV0` or `PodmanV1`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The variant's data; checked by the operator against the variant.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl JsonSchema for Score {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Score".into()
    }

    // Hand-written, as in the seed: the type is checked for shape only, so
    // new variants need no operator release, and `data` alone is free-form.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The score: its variant (`type`) and that variant's data.",
            "type": "object",
            "required": ["type", "data"],
            "properties": {
                "type": {
                    "description": "The score variant: PodmanV0 (containers; frozen) or PodmanV1 (PodmanV0's fields plus per-container healthCheck, resources, stopGracePeriodSeconds, user, workingDir, readOnlyRootFilesystem, init). The operator checks the data of the variants it knows and refuses bad data naming the field; another name is forwarded as JSON (condition UnknownScoreType) and devices that do not know it report Unsupported.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 63,
                    "x-kubernetes-validations": [
                        {"rule": SCORE_TYPE_RULE, "message": SCORE_TYPE_RULE_MESSAGE}
                    ]
                },
                "data": {
                    "description": "The variant's data, e.g. {containers: [...]} for PodmanV0 and PodmanV1.",
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true
                }
            }
        })
    }
}

fn target_devices_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_TARGETS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "x-kubernetes-validations": [
                {"rule": DEVICE_RULE, "message": DEVICE_RULE_MESSAGE}
            ]
        }
    })
}

// Hand-written: k8s-openapi's schemas are not generated here, and this one
// carries the syntax checks the API server can make.
fn target_selector_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "description": "Labels a Device must have with exactly these values, e.g. {site: lyon}.",
                "type": "object",
                "maxProperties": MAX_SELECTOR_TERMS,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 63,
                    "x-kubernetes-validations": [
                        {"rule": SELECTOR_VALUE_RULE, "message": SELECTOR_VALUE_RULE_MESSAGE}
                    ]
                },
                "x-kubernetes-validations": [
                    {"rule": SELECTOR_KEYS_RULE, "message": SELECTOR_KEY_RULE_MESSAGE}
                ]
            },
            "matchExpressions": {
                "description": "Requirements on a Device's labels: key In values, key NotIn values, key Exists, key DoesNotExist.",
                "type": "array",
                "maxItems": MAX_SELECTOR_TERMS,
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key.",
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 317,
                            "x-kubernetes-validations": [
                                {"rule": SELECTOR_KEY_RULE, "message": SELECTOR_KEY_RULE_MESSAGE}
                            ]
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"]
                        },
                        "values": {
                            "description": "The values for In and NotIn (at least one); none for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": MAX_SELECTOR_TERMS,
                            "x-kubernetes-list-type": "atomic",
                            "items": {
                                "type": "string",
                                "maxLength": 63,
                                "x-kubernetes-validations": [
                                    {"rule": SELECTOR_VALUE_RULE, "message": SELECTOR_VALUE_RULE_MESSAGE}
                                ]
                            }
                        }
                    },
                    "x-kubernetes-validations": [
                        {"rule": SELECTOR_VALUES_RULE, "message": SELECTOR_VALUES_RULE_MESSAGE}
                    ]
                }
            }
        }
    })
}

/// How a new revision reaches the targets, and what each device does when
/// it does not come up healthy.
///
/// The device-side fields travel to each device in its desired state
/// (`protocol::RolloutPolicy`); at their defaults the value is written as
/// before (DesiredState format 1), so agents of every release read it.
/// Otherwise only agents that read DesiredState format 2 get it: older
/// ones are held back (`Unsupported`, "update the agent").
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// How a new revision reaches the targets: AllAtOnce (default) writes
    /// it to every target at once; BatchSequence writes it batch by batch
    /// (batches), each batch gated on its devices reporting Healthy, and
    /// halts (with autoRollback: writes the stable revision back) when a
    /// batch falls below its successThreshold.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// BatchSequence only: the batches, in order. Each takes, from the
    /// targets no earlier batch took, those its selector matches (all when
    /// it has none), by device id, at most limit of them. An implicit last
    /// batch takes every target left. Empty: one batch of all targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BATCHES))]
    pub batches: Vec<Batch>,
    /// BatchSequence only: the percentage (1 to 100) of a batch's devices
    /// that must report Healthy within progressDeadlineSeconds for the
    /// rollout to go on to the next batch; a batch may override it.
    /// Default 100.
    #[serde(
        default = "default_success_threshold",
        skip_serializing_if = "is_default_success_threshold"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: u32,
    /// BatchSequence only: at most this many targets are between "new
    /// revision written" and "Healthy" at any moment: a count (at least 1)
    /// or a percentage of the targets ("25%", rounded down, at least 1).
    /// Unset: a whole batch at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "max_unavailable_schema")]
    pub max_unavailable: Option<IntOrString>,
    /// BatchSequence only: while true, no further device gets the new
    /// revision (devices already written keep it); set false to resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// BatchSequence only: how many revisions are kept (ControllerRevision
    /// objects named <deployment>-<revision>) for rolling back to; the
    /// current and the stable one are never pruned. 1 to 100; default 10.
    #[serde(
        default = "default_revision_history_limit",
        skip_serializing_if = "is_default_revision_history_limit"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: u32,
    /// Seconds a device gives a new revision to become Healthy (every
    /// container running and every health check passing for
    /// minHealthySeconds) before it counts the revision as failed, like a
    /// Kubernetes Deployment's progressDeadlineSeconds but measured on each
    /// device, offline too. With autoRollback the device then goes back to
    /// its last healthy revision; without it, it keeps the revision and
    /// reports the failure. 1 to 86400; default 600.
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 1, max = MAX_ROLLOUT_SECONDS))]
    pub progress_deadline_seconds: u32,
    /// Seconds every container must run with every health check passing
    /// (and no restart) before the device reports Healthy, like
    /// minReadySeconds. 0 to 86400;
    /// default 0: Healthy as soon as every check passes.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_ROLLOUT_SECONDS))]
    pub min_healthy_seconds: u32,
    /// Whether a device undoes a failed revision by itself: when a new
    /// revision crash-loops, cannot be pulled or started, or is not
    /// Healthy when progressDeadlineSeconds pass, the device restores the
    /// last revision that proved itself there (Healthy when its own
    /// deadline passed; from the device's own store, so it works without
    /// the network) and reports RolledBack with the reason. A crash loop
    /// is acted on at once, anything else at the deadline.
    /// The failed revision is not retried until a newer one arrives.
    /// Default false: the device keeps the failed revision and reports it.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Set (even to {}): each device honours its update lock for this
    /// Deployment. While a workload on the board holds the lock (a
    /// container whose score has updateLock: true, or a host process, with
    /// flock on /run/iot-agent/update.lock), the device does not stop,
    /// replace or remove this Deployment's running containers: it pulls
    /// the new images, reports Waiting (reason UpdateLocked, since when)
    /// and applies within a second of the lock's release. A first install
    /// never waits for it. Unset: the lock is honoured only for containers
    /// that ask for it in the score. Reaches only agents that read
    /// DesiredState format 4; older ones are held back (Unsupported,
    /// "update the agent").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_lock: Option<UpdateLock>,
    /// When the devices may change this Deployment, on their own clock
    /// (offline too): a new revision, a rollback or the removal is applied
    /// only inside one of these windows; outside, the device pulls the new
    /// images and reports Waiting (reason OutsideMaintenanceWindow, with
    /// the next window's start). At most 8; empty (the default): any time.
    /// A Device's own windows (its spec.maintenance.windows) win over
    /// these: a board that has any follows only its own. Reaches only
    /// agents that read DesiredState format 4; older ones are held back
    /// (Unsupported, "update the agent").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "maintenance_windows_schema")]
    pub maintenance_windows: Vec<MaintenanceWindowSpec>,
    /// Emergency: the devices apply this revision at once, ignoring their
    /// update lock and maintenance windows (the Deployment's and the
    /// Device's), and a deletion of this Deployment (or of a target from
    /// it) removes the containers at once too. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// How long a device's update lock may hold a new revision back, and what
/// then.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateLock {
    /// Seconds a device waits for the lock, counted from when it starts
    /// waiting, before onTimeout applies: 0 to 604800 (a week). Default 0:
    /// it waits as long as the lock is held (the status shows who waits
    /// and since when).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_LOCK_TIMEOUT_SECONDS))]
    pub timeout_seconds: u32,
    /// What a device does when timeoutSeconds pass with the lock still
    /// held: Fail (default) reports the revision Failed (reason
    /// UpdateLockTimeout; a BatchSequence rollout counts it as failed) and
    /// keeps waiting, applying it if the lock frees; Force applies it
    /// anyway, stopping the lock holder's containers.
    #[serde(default)]
    pub on_timeout: OnLockTimeout,
}

/// What a device does when its update lock outlasts `timeoutSeconds`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnLockTimeout {
    /// Report the revision Failed (reason UpdateLockTimeout) and keep waiting.
    #[default]
    Fail,
    /// Apply the revision anyway.
    Force,
}

impl From<OnLockTimeout> for protocol::LockTimeout {
    fn from(o: OnLockTimeout) -> Self {
        match o {
            OnLockTimeout::Fail => protocol::LockTimeout::Fail,
            OnLockTimeout::Force => protocol::LockTimeout::Force,
        }
    }
}

/// A maintenance window: it opens at each time `at` matches on the wall
/// clock of `timeZone` and stays open for `duration`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindowSpec {
    /// When the window opens: a 5-field cron expression (minute hour
    /// day-of-month month day-of-week), e.g. "0 2 * * *" for 02:00 every
    /// day or "30 1 * * SAT,SUN" for 01:30 on weekends.
    #[schemars(length(min = 1, max = MAX_CRON_LEN))]
    pub at: String,
    /// The IANA time zone `at` is read in, e.g. Europe/Paris or UTC
    /// (daylight saving time included: a window at a time that does not
    /// exist that night opens at the first time after the gap).
    #[schemars(length(min = 1, max = MAX_TIME_ZONE_LEN))]
    pub time_zone: String,
    /// How long the window stays open: 1s to 24h, written like "2h",
    /// "90m" or "1h30m".
    #[schemars(length(min = 1, max = MAX_DURATION_LEN))]
    pub duration: String,
}

/// Most maintenance windows a Deployment or a Device may have: the wire's.
pub const MAX_WINDOWS: usize = protocol::limits::MAX_WINDOWS;
/// Longest `at` of a maintenance window: the wire's.
pub const MAX_CRON_LEN: usize = protocol::limits::MAX_CRON_LEN;
/// Longest `timeZone` of a maintenance window: the wire's.
pub const MAX_TIME_ZONE_LEN: usize = protocol::limits::MAX_NAME_LEN;
/// Longest `duration` string of a maintenance window ("23h59m59s" is 9).
pub const MAX_DURATION_LEN: usize = 32;
/// Bound of `updateLock.timeoutSeconds`: the wire's (a week).
pub const MAX_LOCK_TIMEOUT_SECONDS: u32 = protocol::limits::MAX_LOCK_TIMEOUT_SECONDS;

pub(crate) fn maintenance_windows_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<MaintenanceWindowSpec>>();
    schema.insert("maxItems".into(), MAX_WINDOWS.into());
    schema.insert("x-kubernetes-list-type".into(), "atomic".into());
    schema
}

impl MaintenanceWindowSpec {
    /// The window checked (cron syntax, time zone, duration from 1 s to
    /// 24 h) as the agent will evaluate it, and as it travels.
    pub fn to_wire(
        &self,
    ) -> Result<protocol::MaintenanceWindow<'static>, maintenance_window::WindowError> {
        let duration = maintenance_window::parse_duration(&self.duration)?;
        maintenance_window::Window::parse(&self.at, &self.time_zone, duration)?;
        Ok(protocol::MaintenanceWindow {
            at: protocol::Text::owned(self.at.clone()),
            time_zone: protocol::Text::owned(self.time_zone.clone()),
            // At most 86400: parse_duration refused more.
            duration_seconds: u32::try_from(duration.as_secs()).unwrap_or(u32::MAX),
        })
    }
}

/// What a version-1 desired state means, and Kubernetes' own default.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 =
    protocol::desired::RolloutPolicy::DEFAULT_PROGRESS_DEADLINE_SECONDS;
/// Bound of `progressDeadlineSeconds` and `minHealthySeconds`: the wire's.
pub const MAX_ROLLOUT_SECONDS: u32 = protocol::limits::MAX_ROLLOUT_SECONDS;

fn default_progress_deadline_seconds() -> u32 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}

impl Rollout {
    /// What the devices are told: the policy each applies to a new revision.
    pub fn device_policy(&self) -> protocol::desired::RolloutPolicy {
        protocol::desired::RolloutPolicy {
            min_healthy_seconds: self.min_healthy_seconds,
            progress_deadline_seconds: self.progress_deadline_seconds,
            auto_rollback: self.auto_rollback,
        }
    }
}

/// The defaults are the device's: [`Rollout::device_policy`] of the default
/// is `RolloutPolicy::default()`, so a Deployment that sets nothing is
/// written in DesiredState format 1, as before.
impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            strategy: RolloutStrategy::default(),
            batches: Vec::new(),
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            max_unavailable: None,
            paused: false,
            revision_history_limit: DEFAULT_REVISION_HISTORY_LIMIT,
            progress_deadline_seconds: DEFAULT_PROGRESS_DEADLINE_SECONDS,
            min_healthy_seconds: 0,
            auto_rollback: false,
            update_lock: None,
            maintenance_windows: Vec::new(),
            force: false,
        }
    }
}

/// Rollout strategies. New ones are added as variants.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    /// Write the new revision to every target at once.
    #[default]
    AllAtOnce,
    /// Write the new revision batch by batch, each gated on device health.
    BatchSequence,
}

/// Most entries in `spec.rollout.batches`.
pub const MAX_BATCHES: usize = 20;
/// Default of `successThreshold`: every device of a batch must be Healthy.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 100;
/// Default of `revisionHistoryLimit`, as apps/v1 Deployments.
pub const DEFAULT_REVISION_HISTORY_LIMIT: u32 = 10;
/// CEL rule on `maxUnavailable` and a batch's `limit`: a positive count or
/// a percentage from 1% to 100%.
pub const COUNT_OR_PERCENT_RULE: &str =
    "type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')";
/// Message of [`COUNT_OR_PERCENT_RULE`].
pub const COUNT_OR_PERCENT_RULE_MESSAGE: &str =
    "must be a count of at least 1 (e.g. 2) or a percentage from 1% to 100% (e.g. \"25%\")";

fn default_success_threshold() -> u32 {
    DEFAULT_SUCCESS_THRESHOLD
}

fn is_default_success_threshold(v: &u32) -> bool {
    *v == DEFAULT_SUCCESS_THRESHOLD
}

fn default_revision_history_limit() -> u32 {
    DEFAULT_REVISION_HISTORY_LIMIT
}

fn is_default_revision_history_limit(v: &u32) -> bool {
    *v == DEFAULT_REVISION_HISTORY_LIMIT
}

fn count_or_percent_schema(description: &str) -> Schema {
    json_schema!({
        "description": description,
        "x-kubernetes-int-or-string": true,
        // Bounds the CEL rule's cost estimate ("100%" is the longest).
        "maxLength": 4,
        "x-kubernetes-validations": [
            {"rule": COUNT_OR_PERCENT_RULE, "message": COUNT_OR_PERCENT_RULE_MESSAGE}
        ]
    })
}

fn max_unavailable_schema(_: &mut SchemaGenerator) -> Schema {
    count_or_percent_schema(
        "BatchSequence only: at most this many targets are between \"new revision written\" and \"Healthy\" at any moment: a count (at least 1) or a percentage of the targets (\"25%\", rounded down, at least 1). Unset: a whole batch at once.",
    )
}

fn batch_limit_schema(_: &mut SchemaGenerator) -> Schema {
    count_or_percent_schema(
        "At most this many of the targets the selector matches: a count (at least 1) or a percentage of all targets (\"10%\", rounded up). Unset: every matching target.",
    )
}

/// One step of a BatchSequence rollout.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Batch {
    /// Which of the remaining targets this batch may take, by the labels
    /// of their Device objects (e.g. {matchLabels: {stage: canary}}); a
    /// target without a Device object matches only when this is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "target_selector_schema")]
    pub selector: Option<LabelSelector>,
    /// At most this many of the matching targets, by device id: a count,
    /// or a percentage of all targets ("10%", rounded up). Unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "batch_limit_schema")]
    pub limit: Option<IntOrString>,
    /// This batch's successThreshold (percent, 1 to 100), overriding the
    /// rollout's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<u32>,
}

/// What the operator observed, folded from the devices' reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: Option<i64>,
    /// The JSON of the score last written to the devices.
    pub observed_score_string: Option<String>,
    /// The revision last written to the devices, as 16 hex digits.
    pub revision: Option<String>,
    /// Standard Kubernetes conditions: Ready, Progressing, Degraded,
    /// InvalidScore, Conflict, DeviceWarnings (and UnknownScoreType when it
    /// applies; Paused and BatchWarnings with strategy BatchSequence).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The target devices that are not ready at the current revision, worst
    /// first (failed: Failed, Unsupported, RolledBack or held back; then
    /// unhealthy: CrashLoopBackOff or Unhealthy; conflict; unreachable; no
    /// report yet; older revision; still rolling out; waiting to apply it:
    /// Waiting), then by device id;
    /// at most 100 entries. Ready devices (Running, Healthy, Completed) are
    /// counted, not listed (`iot-operator status NAME` shows all).
    #[serde(default)]
    #[schemars(extend(
        "maxItems" = MAX_LISTED_DEVICES,
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["device"]
    ))]
    pub devices: Vec<DeviceStatus>,
    /// Not-ready devices left out of `devices` by its cap: `targeted - ready`
    /// is always `devices` listed plus this.
    #[serde(default)]
    pub devices_omitted: i64,
    /// Devices targeted: `targetDevices` and the Devices `targetSelector`
    /// selects, each once.
    #[serde(default)]
    pub targeted: i64,
    /// Devices reporting the current revision (running it, or done with it:
    /// failed, or rolled back from it); not those that wait to apply it.
    #[serde(default)]
    pub up_to_date: i64,
    /// Devices running the current revision and reachable: reporting
    /// Running, Healthy or Completed (not Unhealthy, CrashLoopBackOff or
    /// RolledBack).
    #[serde(default)]
    pub ready: i64,
    /// Of the ready devices, those reporting Healthy: every container runs
    /// and every health check has passed for minHealthySeconds.
    #[serde(default)]
    pub healthy: i64,
    /// Devices reporting Failed, Unsupported or RolledBack for the current
    /// revision, and devices held back because their agent cannot read the
    /// score or the rollout policy.
    #[serde(default)]
    pub failed: i64,
    /// Devices reporting Waiting for the current revision: it reached them
    /// but they may not apply it yet (a workload holds the update lock, the
    /// device is outside its maintenance windows, or its clock is not
    /// synchronized); they run the revision before it meanwhile.
    #[serde(default)]
    pub waiting: i64,
    /// The BatchSequence rollout's progress (absent with AllAtOnce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Where a BatchSequence rollout stands. The operator keeps its state here
/// (and in the keys it wrote), so that a restart resumes at the same batch.
/// Unset fields are written as null: the status is a merge patch, where an
/// absent field would keep its old value.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out (the spec's), 16 hex digits.
    pub revision: String,
    /// The last revision rolled out to every batch, 16 hex digits; what a
    /// failed batch goes back to. Absent before the first.
    #[serde(default)]
    pub stable_revision: Option<String>,
    /// Progressing, Paused, Healthy (every batch passed) or Degraded (a
    /// batch failed; the rollout is halted).
    pub phase: RolloutPhase,
    /// The batch being rolled out, from 0; equal to `batches` once every
    /// batch passed.
    pub current_batch: i64,
    /// How many batches the rollout has, the implicit last one included.
    pub batches: i64,
    /// Targets.
    pub targeted: i64,
    /// Targets whose key holds the revision.
    pub updated: i64,
    /// Of those, the ones reporting Healthy at the revision.
    pub healthy: i64,
    /// Updated targets not Healthy yet, within their deadline (those that
    /// report Waiting included): they count against maxUnavailable.
    pub waiting: i64,
    /// Of the waiting targets, those whose device reports Waiting: they may
    /// not apply the revision yet (update lock, maintenance window, clock
    /// not synchronized). Their progressDeadlineSeconds does not run until
    /// they stop waiting.
    #[serde(default)]
    pub gated: i64,
    /// Updated targets that report a failure at the revision (Failed,
    /// Unsupported, RolledBack, CrashLoopBackOff).
    pub failed: i64,
    /// Updated targets not Healthy progressDeadlineSeconds after their key
    /// was written, or after they stopped reporting Waiting.
    pub timed_out: i64,
    /// Targets whose heartbeat is stale (their key is written all the same;
    /// they time out like any other).
    pub offline: i64,
    /// The last batch decided.
    #[serde(default)]
    pub last_batch: Option<BatchReport>,
    /// Set when a batch of this revision failed: the rollout is halted and
    /// does not go on until the spec changes or the retry annotation
    /// (iot.nationtech.io/retry-rollout) gets a new value.
    #[serde(default)]
    pub failed_revision: Option<String>,
    /// The value of the retry annotation last acted on.
    #[serde(default)]
    pub retry: Option<String>,
    /// How many times this revision was retried; the devices get it with
    /// the revision, so one that rolled the revision back tries it again.
    #[serde(default)]
    pub attempt: i64,
}

/// A BatchSequence rollout's phase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Batches are being rolled out.
    #[default]
    Progressing,
    /// spec.rollout.paused is true.
    Paused,
    /// Every batch passed.
    Healthy,
    /// A batch fell below its successThreshold; the rollout is halted.
    Degraded,
}

/// How a decided batch went.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchReport {
    /// The batch's index, from 0.
    pub batch: i64,
    /// Its devices.
    pub devices: i64,
    /// Healthy at the revision.
    pub healthy: i64,
    /// Reporting a failure.
    pub failed: i64,
    /// Past their deadline.
    pub timed_out: i64,
    /// Healthy devices needed to pass.
    pub needed: i64,
    /// Succeeded or Failed.
    pub result: String,
    /// When it was decided (RFC 3339).
    pub finished_at: String,
}

/// A condition in the standard Kubernetes shape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was set for.
    pub observed_generation: Option<i64>,
    /// Machine-readable reason, by type: Ready: AllTargetsReady or
    /// TargetsNotReady; Progressing: RollingOut or RolloutComplete; Degraded:
    /// InvalidSpec, TargetsFailed, TargetsUnhealthy, TargetsUnreachable or
    /// Healthy; with strategy BatchSequence, Ready: RolloutComplete,
    /// BatchInProgress, BatchFailed or RolloutPaused; Progressing:
    /// BatchInProgress, BatchFailed, ProgressDeadlineExceeded,
    /// RolloutComplete or RolloutPaused; Degraded also RolledBack or
    /// BatchFailed; Paused: RolloutPaused or RolloutResumed; BatchWarnings:
    /// BatchesMismatchTargets or BatchesFitTargets;
    /// InvalidScore: ScoreRejected or ScoreValid; Conflict: KeyOwnedElsewhere
    /// or NoConflict; DeviceWarnings: DevicesWarn or NoDeviceWarnings;
    /// UnknownScoreType: RoutedAsJson. On a Device: Ready: HeartbeatReceived,
    /// HeartbeatMissing or NeverSeen; Warnings: BoardWarns,
    /// NoBoardWarnings or HeartbeatMissing (Unknown); Unsupported: ScoreUnreadable or AllScoresReadable.
    pub reason: ConditionReason,
    /// Human-readable detail.
    pub message: String,
}

/// A target device that is not ready, as the operator last saw it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The device id.
    pub device: String,
    /// The agent's phase (Pending, Pulling, Starting, Running, Healthy,
    /// Unhealthy, CrashLoopBackOff, RolledBack, Waiting, Failed,
    /// Unsupported, Removed, Completed), or the operator's view: Unknown (no report
    /// yet), Unreachable (heartbeat stale), Conflict (another Deployment of
    /// this name owns the device's key), Unsupported (held back: the agent's
    /// heartbeat says it cannot read the score or the rollout policy).
    pub phase: DevicePhase,
    /// Why the device is in its phase, as its agent says: CrashLoopBackOff,
    /// OOMKilled, ImagePullBackOff, HealthCheckFailed, Error or
    /// ProgressDeadlineExceeded (for RolledBack: why the revision failed);
    /// for Waiting: UpdateLocked, OutsideMaintenanceWindow or
    /// ClockNotSynchronized; for Failed also UpdateLockTimeout (the update
    /// lock was held past spec.rollout.updateLock.timeoutSeconds); absent
    /// when it gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The revision the device reported, 16 hex digits.
    pub revision: Option<String>,
    /// For RolledBack: the revision the device runs again (the last one
    /// that was healthy there), 16 hex digits; `revision` is the one that
    /// failed. For Waiting: the revision it still runs while `revision`
    /// waits (absent when nothing runs yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_revision: Option<String>,
    /// For Waiting (and Failed with reason UpdateLockTimeout): since when
    /// the device waits to apply `revision` (RFC 3339, device clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<String>,
    /// For Waiting: when the device expects to apply `revision`, the start
    /// of its next maintenance window (RFC 3339, device clock); absent when
    /// it cannot tell (an update lock frees whenever its holder lets go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<String>,
    /// The agent's message, or the operator's explanation.
    pub message: Option<String>,
    /// When the device's status was last written (server time, RFC 3339).
    pub last_report_time: Option<String>,
    /// What the device's last heartbeat warns of although its deployments
    /// may run (e.g. it cannot cache their desired state, so they would not
    /// come back after a reboot without network); absent when nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A device's phase in `.status.devices`: the agent's own
/// ([`protocol::Phase`]) or what the operator concludes without one. Written
/// as the variant's name, as `phase` always was.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DevicePhase {
    /// Received by the agent, not yet acted on.
    Pending,
    /// The agent is pulling images.
    Pulling,
    /// The agent is creating and starting containers.
    Starting,
    /// Every container runs.
    Running,
    /// Something failed on the device; the message says what.
    Failed,
    /// The score's type is unknown to the agent, or the operator holds the
    /// score back because the agent's heartbeat says it cannot read it.
    Unsupported,
    /// The deployment was deleted and its containers removed.
    Removed,
    /// Every container exited successfully and none will be restarted.
    Completed,
    /// The device has not reported for this deployment yet.
    Unknown,
    /// The device's heartbeat is stale.
    Unreachable,
    /// Another Deployment of this name owns the device's key.
    Conflict,
    /// Every container runs and every health check has passed for the
    /// rollout's minHealthySeconds (containers without a check count while
    /// running).
    Healthy,
    /// A container's health check failed failureThreshold times in a row
    /// (reason HealthCheckFailed); with onFailure Restart it is restarted.
    Unhealthy,
    /// A container keeps exiting (the reason says how, e.g. OOMKilled); the
    /// agent restarts it after a delay that doubles from 10 s to 5 min.
    CrashLoopBackOff,
    /// The revision in `revision` failed on the device (the reason says
    /// why) and it runs `runningRevision`, its last healthy one, again; it
    /// does not retry the failed revision until a newer one arrives.
    RolledBack,
    /// The revision in `revision` reached the device but may not be
    /// applied yet: a workload holds the device's update lock (reason
    /// UpdateLocked) or the device is outside its maintenance windows
    /// (OutsideMaintenanceWindow); it runs `runningRevision` meanwhile,
    /// with the new images already pulled.
    Waiting,
}

impl DevicePhase {
    /// The name, as written in the status and shown to users.
    pub const fn as_str(self) -> &'static str {
        match self {
            DevicePhase::Pending => "Pending",
            DevicePhase::Pulling => "Pulling",
            DevicePhase::Starting => "Starting",
            DevicePhase::Running => "Running",
            DevicePhase::Failed => "Failed",
            DevicePhase::Unsupported => "Unsupported",
            DevicePhase::Removed => "Removed",
            DevicePhase::Completed => "Completed",
            DevicePhase::Unknown => "Unknown",
            DevicePhase::Unreachable => "Unreachable",
            DevicePhase::Conflict => "Conflict",
            DevicePhase::Healthy => "Healthy",
            DevicePhase::Unhealthy => "Unhealthy",
            DevicePhase::CrashLoopBackOff => "CrashLoopBackOff",
            DevicePhase::RolledBack => "RolledBack",
            DevicePhase::Waiting => "Waiting",
        }
    }
}

impl From<protocol::Phase> for DevicePhase {
    fn from(phase: protocol::Phase) -> Self {
        use protocol::Phase;
        match phase {
            Phase::Pending => DevicePhase::Pending,
            Phase::Pulling => DevicePhase::Pulling,
            Phase::Starting => DevicePhase::Starting,
            Phase::Running => DevicePhase::Running,
            Phase::Failed => DevicePhase::Failed,
            Phase::Unsupported => DevicePhase::Unsupported,
            Phase::Removed => DevicePhase::Removed,
            Phase::Completed => DevicePhase::Completed,
            Phase::Healthy => DevicePhase::Healthy,
            Phase::Unhealthy => DevicePhase::Unhealthy,
            Phase::CrashLoopBackOff => DevicePhase::CrashLoopBackOff,
            Phase::RolledBack => DevicePhase::RolledBack,
            Phase::Waiting => DevicePhase::Waiting,
        }
    }
}

impl std::fmt::Display for DevicePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a condition has its status; the variant's name is what is written.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionReason {
    /// Ready is True: every target runs the current revision.
    AllTargetsReady,
    /// Ready is False: some targets do not run the current revision, or the
    /// spec cannot be written.
    TargetsNotReady,
    /// Progressing is True: some targets do not report the current revision.
    RollingOut,
    /// Progressing is False: every target reports the current revision.
    RolloutComplete,
    /// Degraded is True: the spec cannot be written.
    InvalidSpec,
    /// Degraded is True: some targets failed at the current revision.
    TargetsFailed,
    /// Degraded is True: some targets' heartbeats are stale.
    TargetsUnreachable,
    /// Degraded is True: some targets report CrashLoopBackOff or Unhealthy
    /// at the current revision (none failed).
    TargetsUnhealthy,
    /// Degraded is False.
    Healthy,
    /// InvalidScore is True: the score does not fit its type.
    ScoreRejected,
    /// InvalidScore is False.
    ScoreValid,
    /// Conflict is False.
    NoConflict,
    /// Conflict is True: another Deployment of this name owns some targets' keys.
    KeyOwnedElsewhere,
    /// UnknownScoreType is True: the score is routed to the devices as JSON.
    RoutedAsJson,
    /// DeviceWarnings is True: some targets' heartbeats carry warnings.
    DevicesWarn,
    /// DeviceWarnings is False.
    NoDeviceWarnings,
    /// A Device's Ready is True: its heartbeats arrive.
    HeartbeatReceived,
    /// A Device's Ready is Unknown: no heartbeat for longer than the
    /// configured silence.
    HeartbeatMissing,
    /// A Device's Ready is Unknown: created by an administrator, no
    /// heartbeat yet.
    NeverSeen,
    /// A Device's Warnings is True: its heartbeat carries warnings.
    BoardWarns,
    /// A Device's Warnings is False.
    NoBoardWarnings,
    /// A Device's Unsupported is True: some Deployment targeting it is held
    /// back because its agent cannot read that Deployment's score.
    ScoreUnreadable,
    /// A Device's Unsupported is False.
    AllScoresReadable,
    /// Progressing is True, Ready False: a batch is being rolled out.
    BatchInProgress,
    /// Progressing is False, Ready False, Degraded True (autoRollback
    /// off): a batch fell below its successThreshold through failures.
    BatchFailed,
    /// Progressing is False: a batch fell below its successThreshold
    /// because devices were not Healthy by progressDeadlineSeconds.
    ProgressDeadlineExceeded,
    /// Degraded is True: a batch failed and the stable revision was written
    /// back to the devices already updated.
    RolledBack,
    /// Paused is True (and Progressing False, Ready False): spec.rollout.paused.
    RolloutPaused,
    /// Paused is False.
    RolloutResumed,
    /// BatchWarnings is True: a batch takes no target, or its limit is
    /// more than it can take.
    BatchesMismatchTargets,
    /// BatchWarnings is False.
    BatchesFitTargets,
}

impl ConditionReason {
    /// The name, as written in the condition.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::AllTargetsReady => "AllTargetsReady",
            ConditionReason::TargetsNotReady => "TargetsNotReady",
            ConditionReason::RollingOut => "RollingOut",
            ConditionReason::RolloutComplete => "RolloutComplete",
            ConditionReason::InvalidSpec => "InvalidSpec",
            ConditionReason::TargetsFailed => "TargetsFailed",
            ConditionReason::TargetsUnreachable => "TargetsUnreachable",
            ConditionReason::TargetsUnhealthy => "TargetsUnhealthy",
            ConditionReason::Healthy => "Healthy",
            ConditionReason::ScoreRejected => "ScoreRejected",
            ConditionReason::ScoreValid => "ScoreValid",
            ConditionReason::NoConflict => "NoConflict",
            ConditionReason::KeyOwnedElsewhere => "KeyOwnedElsewhere",
            ConditionReason::RoutedAsJson => "RoutedAsJson",
            ConditionReason::DevicesWarn => "DevicesWarn",
            ConditionReason::NoDeviceWarnings => "NoDeviceWarnings",
            ConditionReason::HeartbeatReceived => "HeartbeatReceived",
            ConditionReason::HeartbeatMissing => "HeartbeatMissing",
            ConditionReason::NeverSeen => "NeverSeen",
            ConditionReason::BoardWarns => "BoardWarns",
            ConditionReason::NoBoardWarnings => "NoBoardWarnings",
            ConditionReason::ScoreUnreadable => "ScoreUnreadable",
            ConditionReason::AllScoresReadable => "AllScoresReadable",
            ConditionReason::BatchInProgress => "BatchInProgress",
            ConditionReason::BatchFailed => "BatchFailed",
            ConditionReason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            ConditionReason::RolledBack => "RolledBack",
            ConditionReason::RolloutPaused => "RolloutPaused",
            ConditionReason::RolloutResumed => "RolloutResumed",
            ConditionReason::BatchesMismatchTargets => "BatchesMismatchTargets",
            ConditionReason::BatchesFitTargets => "BatchesFitTargets",
        }
    }
}

impl std::fmt::Display for ConditionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revision as shown to humans: 16 lowercase hex digits.
pub fn revision_string(revision: u64) -> String {
    format!("{revision:016x}")
}

/// The CRD, with the root CEL rule on `metadata.name` added.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Deployment::crd();
    super::add_root_rule(&mut crd, NAME_RULE, NAME_RULE_MESSAGE);
    crd
}

#[cfg(test)]
impl Deployment {
    /// A Deployment for unit tests: `name` in `namespace`, targeting
    /// `targets` with a `type_name` score of `data`, default rollout.
    pub(crate) fn for_test(
        namespace: &str,
        name: &str,
        targets: &[&str],
        type_name: &str,
        data: serde_json::Value,
    ) -> Deployment {
        let mut d = Deployment::new(
            name,
            DeploymentSpec {
                target_devices: targets.iter().map(|t| t.to_string()).collect(),
                image_pull_secrets: Vec::new(),
                target_selector: None,
                rollout: Rollout::default(),
                score: Score {
                    type_name: type_name.into(),
                    data,
                },
            },
        );
        d.metadata.namespace = Some(namespace.into());
        d
    }
}

impl Deployment {
    /// The namespace, `default` when unset (manifests applied without a cluster).
    pub fn namespace_or_default(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The name, empty when unset.
    pub fn name_str(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}
