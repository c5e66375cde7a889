//! Scores: what a deployment asks a device to run.
//!
//! The JSON form is the one users write in the CRD, adjacently tagged:
//! `{"type": "PodmanV0", "data": {"containers": [...]}}`, camelCase, with
//! unknown fields rejected. Variants are frozen once released: a new shape is
//! a new variant, never a change to an old one. `PodmanV0` is released and
//! frozen; `PodmanV1` ([`crate::score_v1`]) is open to additions until it is.

use serde::{Deserialize, Serialize};

use crate::bounded::{BoundedMap, BoundedVec};
use crate::keys::validate_token;
use crate::limits::*;
use crate::text::Text;
use crate::validate::{
    FieldPath, Validate, ValidationError, Violation, check_len, check_nonempty, fail,
};

/// Type name of [`IotScore::PodmanV0`].
pub const PODMAN_V0: &str = "PodmanV0";

/// Type name of [`IotScore::PodmanV1`].
pub const PODMAN_V1: &str = "PodmanV1";

/// Every score type name this build of the protocol knows.
pub const KNOWN_SCORE_TYPES: &[&str] = &[PODMAN_V0, PODMAN_V1];

pub use crate::score_v1::{
    ContainerV1, CpuQuantity, ExecCheck, HealthCheck, HealthCheckAction, HealthFailureAction,
    HttpGetCheck, HttpHeader, HttpScheme, MemoryQuantity, PodmanV1Score, QuantityError, Resources,
    TcpSocketCheck,
};

/// A score of any variant this build knows.
///
/// This is the JSON form; devices receive a [`crate::ScorePayload`] instead.
/// Deserializing adjacently tagged JSON needs serde's buffering, hence `alloc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "alloc", derive(Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(tag = "type", content = "data", deny_unknown_fields)]
// Without `alloc` every list is inline, so the variants' sizes are their
// bounds' and differ; there is no heap to box into, and a device holds one
// score at a time.
#[cfg_attr(not(feature = "alloc"), allow(clippy::large_enum_variant))]
pub enum IotScore<'a> {
    /// Containers run by Podman, version 0.
    PodmanV0(#[serde(borrow)] PodmanV0Score<'a>),
    /// Containers run by Podman, version 1: version 0 plus health checks,
    /// resource limits and more `podman run` options.
    PodmanV1(#[serde(borrow)] PodmanV1Score<'a>),
}

impl IotScore<'_> {
    /// The variant's type name, as in the JSON `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            IotScore::PodmanV0(_) => PODMAN_V0,
            IotScore::PodmanV1(_) => PODMAN_V1,
        }
    }

    /// A copy that owns all its strings.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> IotScore<'static> {
        match self {
            IotScore::PodmanV0(s) => IotScore::PodmanV0(s.into_owned()),
            IotScore::PodmanV1(s) => IotScore::PodmanV1(s.into_owned()),
        }
    }
}

impl Validate for IotScore<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            IotScore::PodmanV0(s) => s.validate(),
            IotScore::PodmanV1(s) => s.validate(),
        }
    }
}

/// One or more containers run by Podman on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodmanV0Score<'a> {
    /// The containers, at most [`MAX_CONTAINERS`], names unique.
    #[serde(borrow)]
    pub containers: BoundedVec<Container<'a>, MAX_CONTAINERS>,
}

/// One container of a [`PodmanV0Score`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container<'a> {
    /// Name, unique in the score; a key token (`[A-Za-z0-9_-]{1,63}`).
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Image reference, e.g. `docker.io/library/nginx:1.27`.
    #[serde(borrow)]
    pub image: Text<'a>,
    /// Replaces the image's entrypoint when set.
    #[serde(borrow, default)]
    pub command: Option<BoundedVec<Text<'a>, MAX_ARGS>>,
    /// Replaces the image's cmd when set.
    #[serde(borrow, default)]
    pub args: Option<BoundedVec<Text<'a>, MAX_ARGS>>,
    /// Environment variables.
    #[serde(borrow, default)]
    pub env: BoundedVec<EnvVar<'a>, MAX_ENV>,
    /// Published ports.
    #[serde(borrow, default)]
    pub ports: BoundedVec<Port<'a>, MAX_PORTS>,
    /// Named volumes and bind mounts.
    #[serde(borrow, default)]
    pub volumes: BoundedVec<Volume<'a>, MAX_VOLUMES>,
    /// When Podman restarts the container.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// When the image is pulled.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Extra container labels.
    #[serde(borrow, default)]
    pub labels: BoundedMap<Text<'a>, Text<'a>, MAX_LABELS>,
    /// Run privileged (all capabilities, every device). Agents refuse it
    /// unless their configuration allows it.
    #[serde(default)]
    pub privileged: bool,
    /// Share the host's network namespace.
    #[serde(default)]
    pub host_network: bool,
    /// Share the host's PID namespace.
    #[serde(default, rename = "hostPID")]
    pub host_pid: bool,
    /// Share the host's IPC namespace.
    #[serde(default, rename = "hostIPC")]
    pub host_ipc: bool,
    /// Linux capabilities to add (`NET_ADMIN` or `CAP_NET_ADMIN`), at most
    /// [`MAX_CAPABILITIES`].
    #[serde(borrow, default)]
    pub cap_add: BoundedVec<Text<'a>, MAX_CAPABILITIES>,
    /// Host device paths to pass in (`/dev/ttyUSB0`), at most [`MAX_DEVICES`].
    #[serde(borrow, default)]
    pub devices: BoundedVec<Text<'a>, MAX_DEVICES>,
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar<'a> {
    /// Variable name.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Its value.
    #[serde(borrow, default)]
    pub value: Text<'a>,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port<'a> {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the host; unset publishes nothing on the host (the port is
    /// only declared, as an image's `EXPOSE`).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// Host address to bind; unset binds all addresses. Without a
    /// `host_port` nothing is bound, so it is ignored.
    #[serde(borrow, default, rename = "hostIP")]
    pub host_ip: Option<Text<'a>>,
}

/// Transport protocol of a [`Port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PortProtocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// A volume: a named Podman volume (`name`) or a bind mount (`hostPath`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume<'a> {
    /// Name of a Podman volume, created when missing.
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    /// Directory on the host to bind-mount.
    #[serde(borrow, default)]
    pub host_path: Option<Text<'a>>,
    /// Where it appears in the container.
    #[serde(borrow)]
    pub mount_path: Text<'a>,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// When Podman restarts a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RestartPolicy {
    /// Always (the default).
    #[default]
    Always,
    /// Only after a non-zero exit.
    OnFailure,
    /// Never.
    Never,
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PullPolicy {
    /// Before every create.
    Always,
    /// Only when no local image matches (the default).
    #[default]
    IfNotPresent,
    /// Never; the image must already be on the device.
    Never,
}

/// `ScorePayload.data` of a `PodmanV0` score: format version 1 only.
impl crate::wire::Encode for PodmanV0Score<'_> {}
impl<'de: 'a, 'a> crate::wire::Decode<'de> for PodmanV0Score<'a> {}

impl<'a> Container<'a> {
    /// A container named `name` running `image`, every other field at the
    /// value a score that gives only those two keys decodes to.
    pub fn new(name: Text<'a>, image: Text<'a>) -> Self {
        Container {
            name,
            image,
            command: None,
            args: None,
            env: BoundedVec::new(),
            ports: BoundedVec::new(),
            volumes: BoundedVec::new(),
            restart_policy: RestartPolicy::default(),
            pull_policy: PullPolicy::default(),
            labels: BoundedMap::new(),
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            cap_add: BoundedVec::new(),
            devices: BoundedVec::new(),
        }
    }
}

impl Validate for PodmanV0Score<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        validate_containers(
            &self.containers,
            |c| &c.name,
            |c, i| c.common().validate_at(i),
        )
    }
}

/// The rules of a score's container list: not empty, each container valid,
/// names unique.
pub(crate) fn validate_containers<'a, T: 'a>(
    containers: &'a [T],
    name: impl Fn(&'a T) -> &'a Text<'a>,
    validate_at: impl Fn(&'a T, usize) -> Result<(), ValidationError>,
) -> Result<(), ValidationError> {
    if containers.is_empty() {
        return fail(FieldPath::top("containers"), Violation::Empty);
    }
    for (c, container) in containers.iter().enumerate() {
        validate_at(container, c)?;
        if containers[..c]
            .iter()
            .any(|other| name(other) == name(container))
        {
            return fail(FieldPath::container(c, "name"), Violation::Duplicate);
        }
    }
    Ok(())
}

/// Checks entry `i` of an `env` list (`field`): a non-empty name, unique
/// among `earlier`, and the bounds.
pub(crate) fn check_env<'t, 'a: 't>(
    field: FieldPath,
    i: usize,
    name: &Text<'a>,
    value: &Text<'a>,
    mut earlier: impl Iterator<Item = &'t Text<'a>>,
) -> Result<(), ValidationError> {
    check_nonempty(field.at(i, Some("name")), name)?;
    check_len(field.at(i, Some("name")), name, MAX_NAME_LEN)?;
    check_len(field.at(i, Some("value")), value, MAX_STRING_LEN)?;
    if earlier.any(|o| o == name) {
        return fail(field.at(i, Some("name")), Violation::Duplicate);
    }
    Ok(())
}

/// Checks entry `i` of a `volumes` list (`field`) that is a named volume or
/// a bind mount.
pub(crate) fn check_volume(
    field: FieldPath,
    i: usize,
    name: &Option<Text<'_>>,
    host_path: &Option<Text<'_>>,
    mount_path: &Text<'_>,
) -> Result<(), ValidationError> {
    let at = |sub| field.at(i, Some(sub));
    match (name, host_path) {
        (Some(name), None) => {
            if let Err(e) = validate_token(name) {
                return fail(at("name"), Violation::Token(e));
            }
        }
        (None, Some(path)) => {
            check_len(at("hostPath"), path, MAX_STRING_LEN)?;
            if !path.starts_with('/') {
                return fail(at("hostPath"), Violation::NotAbsolute);
            }
        }
        _ => return fail(field.at(i, None), Violation::VolumeSource),
    }
    check_len(at("mountPath"), mount_path, MAX_STRING_LEN)?;
    if !mount_path.starts_with('/') {
        return fail(at("mountPath"), Violation::NotAbsolute);
    }
    Ok(())
}

/// Checks a Secret's name or key: non-empty, within Kubernetes' bound.
pub(crate) fn check_secret_ref(path: FieldPath, s: &str) -> Result<(), ValidationError> {
    check_nonempty(path, s)?;
    check_len(path, s, crate::sealed::MAX_SECRET_NAME_LEN)
}

/// Checks a Secret's key: [`check_secret_ref`], and Kubernetes' key
/// syntax, so that a key that becomes a file name stays in its directory.
pub(crate) fn check_secret_key(path: FieldPath, s: &str) -> Result<(), ValidationError> {
    check_secret_ref(path, s)?;
    if !crate::sealed::is_secret_key(s) {
        return fail(path, Violation::NotSecretKey);
    }
    Ok(())
}

/// The fields `PodmanV0` and `PodmanV1` containers share, borrowed, so that
/// both are checked by the same rules.
pub(crate) struct CommonFields<'r, 'a> {
    pub(crate) name: &'r Text<'a>,
    pub(crate) image: &'r Text<'a>,
    pub(crate) command: &'r Option<BoundedVec<Text<'a>, MAX_ARGS>>,
    pub(crate) args: &'r Option<BoundedVec<Text<'a>, MAX_ARGS>>,
    /// `None`: the container type checks its own (`PodmanV1`'s differ).
    pub(crate) env: Option<&'r BoundedVec<EnvVar<'a>, MAX_ENV>>,
    pub(crate) ports: &'r BoundedVec<Port<'a>, MAX_PORTS>,
    /// `None`: the container type checks its own.
    pub(crate) volumes: Option<&'r BoundedVec<Volume<'a>, MAX_VOLUMES>>,
    pub(crate) labels: &'r BoundedMap<Text<'a>, Text<'a>, MAX_LABELS>,
    pub(crate) cap_add: &'r BoundedVec<Text<'a>, MAX_CAPABILITIES>,
    pub(crate) devices: &'r BoundedVec<Text<'a>, MAX_DEVICES>,
}

impl<'a> Container<'a> {
    fn common(&self) -> CommonFields<'_, 'a> {
        CommonFields {
            name: &self.name,
            image: &self.image,
            command: &self.command,
            args: &self.args,
            env: Some(&self.env),
            ports: &self.ports,
            volumes: Some(&self.volumes),
            labels: &self.labels,
            cap_add: &self.cap_add,
            devices: &self.devices,
        }
    }
}

impl CommonFields<'_, '_> {
    /// Checks the shared fields of container `c`.
    pub(crate) fn validate_at(&self, c: usize) -> Result<(), ValidationError> {
        let p = |field| FieldPath::container(c, field);
        if let Err(e) = validate_token(self.name) {
            return fail(p("name"), Violation::Token(e));
        }
        check_nonempty(p("image"), self.image)?;
        check_len(p("image"), self.image, MAX_IMAGE_LEN)?;
        for (field, list) in [("command", self.command), ("args", self.args)] {
            for (i, a) in list.iter().flat_map(|l| l.iter()).enumerate() {
                check_len(p(field).at(i, None), a, MAX_STRING_LEN)?;
            }
        }
        let env = self.env.map(|e| &e[..]).unwrap_or_default();
        for (i, e) in env.iter().enumerate() {
            check_env(
                p("env"),
                i,
                &e.name,
                &e.value,
                env[..i].iter().map(|o| &o.name),
            )?;
        }
        for (i, port) in self.ports.iter().enumerate() {
            if port.container_port == 0 {
                return fail(p("ports").at(i, Some("containerPort")), Violation::PortZero);
            }
            if port.host_port == Some(0) {
                return fail(p("ports").at(i, Some("hostPort")), Violation::PortZero);
            }
            if let Some(ip) = &port.host_ip {
                check_nonempty(p("ports").at(i, Some("hostIP")), ip)?;
                check_len(p("ports").at(i, Some("hostIP")), ip, MAX_NAME_LEN)?;
            }
        }
        for (i, v) in self.volumes.iter().flat_map(|v| v.iter()).enumerate() {
            check_volume(p("volumes"), i, &v.name, &v.host_path, &v.mount_path)?;
        }
        for (i, (k, v)) in self.labels.iter().enumerate() {
            check_nonempty(p("labels").at(i, Some("key")), k)?;
            check_len(p("labels").at(i, Some("key")), k, MAX_NAME_LEN)?;
            check_len(p("labels").at(i, Some("value")), v, MAX_STRING_LEN)?;
        }
        for (i, cap) in self.cap_add.iter().enumerate() {
            check_nonempty(p("capAdd").at(i, None), cap)?;
            check_len(p("capAdd").at(i, None), cap, MAX_NAME_LEN)?;
        }
        for (i, dev) in self.devices.iter().enumerate() {
            check_len(p("devices").at(i, None), dev, MAX_STRING_LEN)?;
            if !dev.starts_with('/') {
                return fail(p("devices").at(i, None), Violation::NotAbsolute);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
mod owned {
    use super::*;

    fn own_list<const N: usize>(l: BoundedVec<Text<'_>, N>) -> BoundedVec<Text<'static>, N> {
        l.map(Text::into_owned)
    }

    impl PodmanV0Score<'_> {
        /// A copy that owns all its strings.
        pub fn into_owned(self) -> PodmanV0Score<'static> {
            PodmanV0Score {
                containers: self.containers.map(Container::into_owned),
            }
        }
    }

    impl Container<'_> {
        /// A copy that owns all its strings.
        pub fn into_owned(self) -> Container<'static> {
            Container {
                name: self.name.into_owned(),
                image: self.image.into_owned(),
                command: self.command.map(own_list),
                args: self.args.map(own_list),
                env: self.env.map(|e| EnvVar {
                    name: e.name.into_owned(),
                    value: e.value.into_owned(),
                }),
                ports: self.ports.map(|p| Port {
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol,
                    host_ip: p.host_ip.map(Text::into_owned),
                }),
                volumes: self.volumes.map(|v| Volume {
                    name: v.name.map(Text::into_owned),
                    host_path: v.host_path.map(Text::into_owned),
                    mount_path: v.mount_path.into_owned(),
                    read_only: v.read_only,
                }),
                restart_policy: self.restart_policy,
                pull_policy: self.pull_policy,
                labels: self.labels.map(|k, v| (k.into_owned(), v.into_owned())),
                privileged: self.privileged,
                host_network: self.host_network,
                host_pid: self.host_pid,
                host_ipc: self.host_ipc,
                cap_add: own_list(self.cap_add),
                devices: own_list(self.devices),
            }
        }
    }
}

/// Why a score payload cannot be turned into a known score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ScoreError<'a> {
    /// The score's type is not one this build knows; the device should
    /// report `Unsupported` naming it and keep running everything else.
    #[error("score type `{type_name}` is not supported by this agent (it knows: {KnownTypes})")]
    Unsupported {
        /// The type name as sent.
        type_name: Text<'a>,
    },
    /// A known type arrived in an encoding this build cannot read.
    #[error("score type `{type_name}` arrived as JSON; this build reads it only as postcard")]
    UnexpectedEncoding {
        /// The type name as sent.
        type_name: Text<'a>,
    },
    /// The data could not be decoded or broke a wire rule.
    #[error("score data: {0}")]
    Decode(crate::wire::DecodeError),
}

/// [`KNOWN_SCORE_TYPES`] as a list for messages: `PodmanV0, PodmanV1`.
struct KnownTypes;

impl core::fmt::Display for KnownTypes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, t) in KNOWN_SCORE_TYPES.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(t)?;
        }
        Ok(())
    }
}
