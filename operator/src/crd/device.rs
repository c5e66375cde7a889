//! The `iot.nationtech.io/v1alpha1` `Device` custom resource: one object per
//! board, cluster-scoped like a Node, named by the device id.
//!
//! `metadata.labels` are the labels Deployments target (`spec.targetSelector`).
//! The operator creates the object at a board's first heartbeat and keeps
//! `.status` current; an administrator may create it before the board first
//! boots, to give it labels.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, MaintenanceWindowSpec};

/// CEL rule on a Device's `metadata.name`: a device id that is also a
/// Kubernetes object name (an RFC 1123 label: no uppercase, no `_`, no `.`).
/// A board whose id is not one still runs what `targetDevices` names, but
/// has no Device object (the operator logs it once).
pub const DEVICE_NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')";
/// Message of [`DEVICE_NAME_RULE`].
pub const DEVICE_NAME_RULE_MESSAGE: &str = "a Device is named by its device id, which must then be 1 to 63 of a-z, 0-9 or '-', starting and ending with a letter or digit";

/// Whether `device_id` can name a Device object ([`DEVICE_NAME_RULE`]).
pub fn is_device_object_name(device_id: &str) -> bool {
    let b = device_id.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// Annotation holding the labels the board itself declared (JSON object),
/// as last merged into `metadata.labels`: what lets the operator tell the
/// board's labels from an administrator's.
pub const BOARD_LABELS_ANNOTATION: &str = "iot.nationtech.io/board-labels";

/// Finalizer that keeps a Device until its keys are removed from NATS.
pub const DEVICE_FINALIZER: &str = "iot.nationtech.io/decommission";

/// What an administrator says about a board. Everything the board reports
/// is in the status.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.nationtech.io",
    version = "v1alpha1",
    kind = "Device",
    plural = "devices",
    singular = "device",
    status = "DeviceState",
    shortname = "iotdev",
    category = "iot",
    doc = "A board of the fleet, named by its device id; its labels are what Deployments target",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.systemInfo.agentVersion"}"#,
    printcolumn = r#"{"name":"Arch","type":"string","jsonPath":".status.systemInfo.architecture"}"#,
    printcolumn = r#"{"name":"Last-Seen","type":"date","jsonPath":".status.lastSeen"}"#,
    printcolumn = r#"{"name":"Deployments","type":"integer","jsonPath":".status.deployments.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSpec {
    /// Free text for people: where the board is, what it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When this board may change what it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<DeviceMaintenance>,
}

impl DeviceSpec {
    /// The board's own maintenance windows; empty when it has none (the
    /// Deployments' windows then apply).
    pub fn windows(&self) -> &[MaintenanceWindowSpec] {
        self.maintenance
            .as_ref()
            .map_or(&[][..], |m| m.windows.as_slice())
    }
}

/// A board's maintenance windows.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceMaintenance {
    /// When this board may apply a change (a new revision, a rollback, a
    /// removal) of any Deployment, on its own clock (offline too): only
    /// inside one of these windows; outside, it pulls the new images and
    /// reports Waiting (reason OutsideMaintenanceWindow, with the next
    /// window's start). At most 8. A Device's own windows win over a
    /// Deployment's spec.rollout.maintenanceWindows: when this list has
    /// any, the board follows only these, for every Deployment; empty: each
    /// Deployment's windows (none: any time). A Deployment with
    /// spec.rollout.force applies at once all the same. Invalid windows
    /// leave what the board was told before unchanged (a warning Event on
    /// the Device says why). Reach only agents that read DesiredState
    /// format 4; older ones are held back (Unsupported, "update the agent").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::deployment::maintenance_windows_schema")]
    pub windows: Vec<MaintenanceWindowSpec>,
}

/// What the operator observed of a board, from its heartbeats and reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceState {
    /// When the server stored the board's last heartbeat (RFC 3339). Updated
    /// on every change of the status and otherwise at most every few
    /// minutes, not at every heartbeat (see docs/architecture.md).
    pub last_seen: Option<String>,
    /// What the board runs, from its last heartbeat.
    pub system_info: Option<SystemInfo>,
    /// The deployments the board runs.
    pub deployments: Option<DeviceDeployments>,
    /// What the board's agent can read; the operator writes it nothing else.
    pub capabilities: Option<DeviceCapabilities>,
    /// The labels the board declares in its agent configuration (`[labels]`),
    /// valid ones only; merged into `metadata.labels` unless an
    /// administrator set the same key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub board_labels: BTreeMap<String, String>,
    /// The board's public sealing key (`X...`, an X25519 curve key) from
    /// its latest heartbeat: the operator seals this board's secrets to it,
    /// and re-seals them when it changes. Absent when the agent reports
    /// none (`[secrets] key_file` unset, or an agent older than the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<String>,
    /// Standard conditions: Ready (True while heartbeats arrive; Unknown,
    /// reason HeartbeatMissing, after a silence), BoardWarnings.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A board's system, as its agent reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// The agent's version.
    pub agent_version: String,
    /// CPU architecture, e.g. `aarch64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub operating_system: String,
    /// Kernel release; empty from agents of the first release.
    #[serde(default)]
    pub kernel_version: String,
    /// Podman's version; empty when the agent cannot reach Podman.
    #[serde(default)]
    pub podman_version: String,
    /// Changes when the board reboots; empty from agents of the first release.
    #[serde(default)]
    pub boot_id: String,
    /// Seconds the agent had been running at `lastSeen`.
    #[serde(default)]
    pub uptime_seconds: i64,
}

/// How many deployments a board runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDeployments {
    /// Deployments the agent manages.
    pub total: i64,
    /// Of those, how many are not ready at their current revision.
    pub not_ready: i64,
}

/// What a board's agent can read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Wire format versions of the desired state it decodes.
    pub desired_state_versions: Vec<u8>,
    /// Score types it runs, with the format versions of each.
    pub score_types: Vec<ScoreTypeCapability>,
}

/// One score type a board runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScoreTypeCapability {
    /// The type, e.g. `PodmanV0`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Format versions of its data.
    pub versions: Vec<u8>,
}

impl From<&protocol::Capabilities<'_>> for DeviceCapabilities {
    fn from(c: &protocol::Capabilities<'_>) -> Self {
        DeviceCapabilities {
            desired_state_versions: c.desired_state_versions.to_vec(),
            score_types: c
                .score_types
                .iter()
                .map(|s| ScoreTypeCapability {
                    type_name: s.type_name.as_str().to_string(),
                    versions: s.versions.to_vec(),
                })
                .collect(),
        }
    }
}

/// The CRD, with the root CEL rule on `metadata.name` added.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Device::crd();
    super::add_root_rule(&mut crd, DEVICE_NAME_RULE, DEVICE_NAME_RULE_MESSAGE);
    crd
}
