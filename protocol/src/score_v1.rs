//! The `PodmanV1` score: every field of `PodmanV0`, then health checks,
//! resource limits and the `podman run` options a first real deployment
//! misses (stop grace period, user, working directory, read-only root,
//! init).
//!
//! Open to additions until it is released; the crate README records when
//! it freezes. Its data travels as format version 1 of its own encoding.

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::bounded::{BoundedMap, BoundedVec};
use crate::limits::*;
use crate::score::{
    CommonFields, Container, EnvVar, Port, PortProtocol, PullPolicy, RestartPolicy, Volume,
    check_env, check_secret_key, check_secret_ref, check_volume, validate_containers,
};
use crate::text::Text;
use crate::validate::{
    FieldPath, Validate, ValidationError, Violation, check_len, check_nonempty, check_range, fail,
};

/// One or more containers run by Podman on the device, with health checks
/// and resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodmanV1Score<'a> {
    /// The containers, at most [`MAX_CONTAINERS`], names unique.
    #[serde(borrow)]
    pub containers: BoundedVec<ContainerV1<'a>, MAX_CONTAINERS>,
}

/// One container of a [`PodmanV1Score`]: the fields of a `PodmanV0`
/// [`Container`] (same names, order, JSON and defaults), then the new ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerV1<'a> {
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
    /// Environment variables: a value, or a key of a Secret.
    #[serde(borrow, default)]
    pub env: BoundedVec<EnvVarV1<'a>, MAX_ENV>,
    /// Published ports; a health check's port must be one of them.
    #[serde(borrow, default)]
    pub ports: BoundedVec<Port<'a>, MAX_PORTS>,
    /// Named volumes, bind mounts and Secret volumes.
    #[serde(borrow, default)]
    pub volumes: BoundedVec<VolumeV1<'a>, MAX_VOLUMES>,
    /// When the container is restarted after it exits.
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
    /// How the agent checks that the container works; none by default
    /// (a running container counts as healthy).
    #[serde(borrow, default)]
    pub health_check: Option<HealthCheck<'a>>,
    /// Memory, CPU and process limits; none by default.
    #[serde(default)]
    pub resources: Resources,
    /// Seconds between the stop signal and the kill, 0 to
    /// [`MAX_PERIOD_SECONDS`]; unset: the agent's own `stop_timeout_secs`.
    #[serde(default)]
    pub stop_grace_period_seconds: Option<u32>,
    /// The user the process runs as: `uid`, `uid:gid`, `name` or
    /// `name:group` (`podman run --user`); unset: the image's.
    #[serde(borrow, default)]
    pub user: Option<Text<'a>>,
    /// The process's working directory, absolute; unset: the image's.
    #[serde(borrow, default)]
    pub working_dir: Option<Text<'a>>,
    /// Mount the image read-only (`podman run --read-only`, which keeps
    /// `/tmp`, `/run` and `/var/tmp` writable as tmpfs).
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    /// Run an init process as PID 1 that reaps zombies and forwards
    /// signals (`podman run --init`).
    #[serde(default)]
    pub init: bool,
    /// Give the container the device's update lock: the agent's lock
    /// directory mounted read-only at [`UPDATE_LOCK_DIR`], with the lock
    /// file [`UPDATE_LOCK_FILE`] in it. While the container (or anyone)
    /// holds an advisory lock (`flock`) on that file, the device does not
    /// stop, replace or remove this deployment's containers. The path is
    /// the agent's: a volume mounted there is refused.
    #[serde(default)]
    pub update_lock: bool,
}

/// An environment variable of a `PodmanV1` container: a `PodmanV0`
/// [`EnvVar`], or a key of a Secret (`valueFrom.secretKeyRef`, as in a
/// Kubernetes PodSpec). The device gets the Secret's value sealed to it
/// ([`crate::sealed`]), never in clear text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarV1<'a> {
    /// Variable name.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Its value; empty when `value_from` is set.
    #[serde(borrow, default)]
    pub value: Text<'a>,
    /// Where the value comes from instead.
    #[serde(borrow, default)]
    pub value_from: Option<EnvVarSource<'a>>,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource<'a> {
    /// A key of a Secret in the Deployment's namespace.
    #[serde(borrow)]
    pub secret_key_ref: SecretKeyRef<'a>,
}

/// A key of a Secret, named as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef<'a> {
    /// The Secret's name.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// The key in it.
    #[serde(borrow)]
    pub key: Text<'a>,
}

/// A volume of a `PodmanV1` container: a `PodmanV0` [`Volume`] (a named
/// volume or a bind mount), or a Secret's keys as files (`secret`), always
/// read-only, kept in memory on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeV1<'a> {
    /// Name of a Podman volume, created when missing.
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    /// Directory on the host to bind-mount.
    #[serde(borrow, default)]
    pub host_path: Option<Text<'a>>,
    /// Where it appears in the container.
    #[serde(borrow)]
    pub mount_path: Text<'a>,
    /// Mount read-only (a Secret volume always is).
    #[serde(default)]
    pub read_only: bool,
    /// A Secret's keys as files in the directory `mount_path`.
    #[serde(borrow, default)]
    pub secret: Option<SecretVolumeSource<'a>>,
}

/// A Secret's keys as files, like Kubernetes' secret volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolumeSource<'a> {
    /// The Secret's name.
    #[serde(borrow)]
    pub secret_name: Text<'a>,
    /// Which keys, at which relative paths; empty: every key at its own
    /// name.
    #[serde(borrow, default)]
    pub items: BoundedVec<KeyToPath<'a>, MAX_SECRET_ITEMS>,
    /// The files' mode (e.g. 256, octal 0400); unset: 0444.
    #[serde(default)]
    pub default_mode: Option<u16>,
}

/// One key of a Secret volume and the file it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath<'a> {
    /// The key in the Secret.
    #[serde(borrow)]
    pub key: Text<'a>,
    /// The file's path relative to the volume's `mount_path`, without `..`.
    #[serde(borrow)]
    pub path: Text<'a>,
}

/// Keys a Secret volume lists in `items`.
pub const MAX_SECRET_ITEMS: usize = 16;

/// The largest file mode a Secret volume sets (0777).
pub const MAX_SECRET_MODE: u16 = 0o777;

impl<'a> EnvVarV1<'a> {
    /// The same variable as a `PodmanV1` one.
    pub fn from_v0(e: EnvVar<'a>) -> Self {
        EnvVarV1 {
            name: e.name,
            value: e.value,
            value_from: None,
        }
    }

    /// As a `PodmanV0` variable; `None` for a Secret's key.
    pub fn to_v0(&self) -> Option<EnvVar<'a>> {
        self.value_from.is_none().then(|| EnvVar {
            name: self.name.clone(),
            value: self.value.clone(),
        })
    }
}

impl<'a> VolumeV1<'a> {
    /// The same volume as a `PodmanV1` one.
    pub fn from_v0(v: Volume<'a>) -> Self {
        VolumeV1 {
            name: v.name,
            host_path: v.host_path,
            mount_path: v.mount_path,
            read_only: v.read_only,
            secret: None,
        }
    }

    /// As a `PodmanV0` volume; `None` for a Secret volume.
    pub fn to_v0(&self) -> Option<Volume<'a>> {
        self.secret.is_none().then(|| Volume {
            name: self.name.clone(),
            host_path: self.host_path.clone(),
            mount_path: self.mount_path.clone(),
            read_only: self.read_only,
        })
    }
}

impl SecretVolumeSource<'_> {
    /// The Secret's keys this volume uses, with their relative paths.
    /// Empty `items` means every key of the Secret, which only the side
    /// that has the Secret knows: `None` then.
    pub fn listed(&self) -> Option<impl Iterator<Item = (&str, &str)>> {
        (!self.items.is_empty())
            .then(|| self.items.iter().map(|i| (i.key.as_str(), i.path.as_str())))
    }
}

/// Where a container with `updateLock` finds the lock directory.
pub const UPDATE_LOCK_DIR: &str = "/run/iot-agent";

/// The lock file a container with `updateLock` locks (`flock`).
pub const UPDATE_LOCK_FILE: &str = "/run/iot-agent/update.lock";

/// How the agent checks a container, like a Kubernetes probe: exactly one
/// of `exec`, `httpGet` and `tcpSocket`, and when and how often.
///
/// The agent runs checks itself (Podman's health timers need systemd).
/// After `start_period_seconds` it runs one every `interval_seconds`, each
/// bounded by `timeout_seconds`; `success_threshold` passes in a row make
/// the container healthy, `failure_threshold` failures in a row unhealthy,
/// and then `on_failure` applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck<'a> {
    /// Run a command in the container; exit code 0 passes.
    #[serde(borrow, default)]
    pub exec: Option<ExecCheck<'a>>,
    /// An HTTP GET; a status from 200 to 399 passes.
    #[serde(borrow, default)]
    pub http_get: Option<HttpGetCheck<'a>>,
    /// A TCP connection; connecting passes.
    #[serde(default)]
    pub tcp_socket: Option<TcpSocketCheck>,
    /// Seconds between checks, 1 to [`MAX_PERIOD_SECONDS`] (default 10).
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// Seconds a check may take before it counts as failed, 1 to
    /// [`MAX_PERIOD_SECONDS`] (default 1).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Failures in a row that make the container unhealthy, 1 to
    /// [`MAX_THRESHOLD`] (default 3).
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Passes in a row that make it healthy again, 1 to [`MAX_THRESHOLD`]
    /// (default 1).
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Seconds after a start before the first check, 0 to
    /// [`MAX_PERIOD_SECONDS`] (default 0).
    #[serde(default)]
    pub start_period_seconds: u32,
    /// What the agent does with an unhealthy container (default: restart).
    #[serde(default)]
    pub on_failure: HealthFailureAction,
}

fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_success_threshold() -> u32 {
    1
}
fn root_path<'a>() -> Text<'a> {
    Text::borrowed("/")
}

/// A check that runs a command in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecCheck<'a> {
    /// The command and its arguments, not run through a shell; not empty,
    /// at most [`MAX_ARGS`] entries.
    #[serde(borrow, default)]
    pub command: BoundedVec<Text<'a>, MAX_ARGS>,
}

/// A check that sends an HTTP GET to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetCheck<'a> {
    /// The request path, starting with `/` (default `/`).
    #[serde(borrow, default = "root_path")]
    pub path: Text<'a>,
    /// The port inside the container: a TCP `containerPort` of its
    /// `ports`, unless it uses the host's network.
    pub port: u16,
    /// HTTP or HTTPS (certificates are not verified, as Kubernetes does).
    #[serde(default)]
    pub scheme: HttpScheme,
    /// Extra request headers, at most [`MAX_HTTP_HEADERS`].
    #[serde(borrow, default)]
    pub http_headers: BoundedVec<HttpHeader<'a>, MAX_HTTP_HEADERS>,
}

/// A request header of an [`HttpGetCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader<'a> {
    /// Header name, an HTTP token.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Its value, without control characters.
    #[serde(borrow, default)]
    pub value: Text<'a>,
}

/// The scheme of an [`HttpGetCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HttpScheme {
    /// Plain HTTP (the default).
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTPS without certificate verification.
    #[serde(rename = "HTTPS")]
    Https,
}

/// A check that opens a TCP connection to the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketCheck {
    /// The port inside the container, as for [`HttpGetCheck::port`].
    pub port: u16,
}

/// What the agent does when a container's check fails
/// `failure_threshold` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HealthFailureAction {
    /// Restart the container, with the back-off of any restart (the default).
    #[default]
    Restart,
    /// Only report it unhealthy.
    None,
}

/// The action of a valid [`HealthCheck`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckAction<'r, 'a> {
    /// Run a command in the container.
    Exec(&'r ExecCheck<'a>),
    /// Send an HTTP GET.
    HttpGet(&'r HttpGetCheck<'a>),
    /// Open a TCP connection.
    TcpSocket(&'r TcpSocketCheck),
}

impl<'a> HealthCheck<'a> {
    /// A check with `action` and every other field at its default.
    fn with(
        exec: Option<ExecCheck<'a>>,
        http_get: Option<HttpGetCheck<'a>>,
        tcp_socket: Option<TcpSocketCheck>,
    ) -> Self {
        HealthCheck {
            exec,
            http_get,
            tcp_socket,
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            start_period_seconds: 0,
            on_failure: HealthFailureAction::default(),
        }
    }

    /// A check running `command`, every other field at its default.
    pub fn exec(command: BoundedVec<Text<'a>, MAX_ARGS>) -> Self {
        Self::with(Some(ExecCheck { command }), None, None)
    }

    /// An HTTP GET of `/` on `port`, every other field at its default.
    pub fn http_get(port: u16) -> Self {
        Self::with(
            None,
            Some(HttpGetCheck {
                path: root_path(),
                port,
                scheme: HttpScheme::Http,
                http_headers: BoundedVec::new(),
            }),
            None,
        )
    }

    /// A TCP connection to `port`, every other field at its default.
    pub fn tcp_socket(port: u16) -> Self {
        Self::with(None, None, Some(TcpSocketCheck { port }))
    }

    /// The one action the check sets; `None` when it sets none or several
    /// (which validation refuses).
    pub fn action(&self) -> Option<HealthCheckAction<'_, 'a>> {
        match (&self.exec, &self.http_get, &self.tcp_socket) {
            (Some(e), None, None) => Some(HealthCheckAction::Exec(e)),
            (None, Some(h), None) => Some(HealthCheckAction::HttpGet(h)),
            (None, None, Some(t)) => Some(HealthCheckAction::TcpSocket(t)),
            _ => None,
        }
    }

    /// The container port the check connects to (none for `exec`).
    pub fn port(&self) -> Option<u16> {
        match self.action()? {
            HealthCheckAction::Exec(_) => None,
            HealthCheckAction::HttpGet(h) => Some(h.port),
            HealthCheckAction::TcpSocket(t) => Some(t.port),
        }
    }
}

/// Resource limits of a container; each unset one is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory limit (`--memory`): an integer of bytes or a quantity such
    /// as `"128Mi"`; [`MIN_MEMORY_BYTES`] to [`MAX_MEMORY_BYTES`]. Going
    /// over it gets the container OOM-killed.
    #[serde(default)]
    pub memory_limit: Option<MemoryQuantity>,
    /// CPU limit (`--cpus`): cores (`1`, `0.5`, `"1.5"`) or millicores
    /// (`"500m"`); [`MIN_CPU_MILLIS`] to [`MAX_CPU_MILLIS`] millicores.
    #[serde(default)]
    pub cpu_limit: Option<CpuQuantity>,
    /// Relative CPU weight under contention (cgroup v2 `cpu.weight`,
    /// `--cpu-weight`), 1 to [`MAX_CPU_WEIGHT`]; the kernel's default is 100.
    #[serde(default)]
    pub cpu_weight: Option<u16>,
    /// Most processes and threads (`--pids-limit`), 1 to [`MAX_PIDS_LIMIT`].
    #[serde(default)]
    pub pids_limit: Option<u32>,
}

impl Resources {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// A memory size in bytes.
///
/// On the wire the integer; in JSON an integer of bytes or a Kubernetes
/// quantity string: a number with an optional suffix `k`, `M`, `G`, `T`
/// (powers of 1000) or `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024), e.g.
/// `"128Mi"`, `"1.5Gi"`, `"500M"`; it must come to whole bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryQuantity(pub u64);

/// A CPU amount in millicores (1000 = one core).
///
/// On the wire the integer; in JSON a number of cores (`1`, `0.5`) or a
/// Kubernetes quantity string: cores (`"2"`, `"1.5"`) or millicores
/// (`"500m"`), in whole millicores. It is written to JSON as millicores
/// (`"500m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CpuQuantity(pub u32);

/// Why a quantity could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QuantityError {
    /// Not a memory quantity.
    #[error(
        "is not a memory size: write an integer of bytes or a quantity such as \"128Mi\", \"1Gi\", \"500M\" or \"64k\" (suffixes k, M, G, T, Ki, Mi, Gi, Ti), in whole bytes"
    )]
    Memory,
    /// Not a CPU quantity.
    #[error(
        "is not a CPU amount: write cores (1, 0.5, \"1.5\") or millicores (\"500m\"), in whole millicores"
    )]
    Cpu,
    /// A valid quantity too large for any limit.
    #[error("is too large")]
    TooLarge,
}

impl MemoryQuantity {
    /// Reads a quantity such as `128Mi`, `1.5Gi`, `500M` or `1048576`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let multiplier: u128 = match suffix {
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return Err(QuantityError::Memory),
        };
        let (scaled, scale) = decimal(number).ok_or(QuantityError::Memory)?;
        let bytes = scaled
            .checked_mul(multiplier)
            .ok_or(QuantityError::TooLarge)?;
        if bytes % scale != 0 {
            return Err(QuantityError::Memory);
        }
        u64::try_from(bytes / scale)
            .map(MemoryQuantity)
            .map_err(|_| QuantityError::TooLarge)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl CpuQuantity {
    /// Reads a quantity such as `500m`, `2` or `1.5`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let (number, per_unit) = match s.strip_suffix('m') {
            Some(n) => (n, 1),
            None => (s, 1000),
        };
        let (scaled, scale) = decimal(number).ok_or(QuantityError::Cpu)?;
        let millis = scaled
            .checked_mul(per_unit)
            .ok_or(QuantityError::TooLarge)?;
        if millis % scale != 0 {
            return Err(QuantityError::Cpu);
        }
        u32::try_from(millis / scale)
            .map(CpuQuantity)
            .map_err(|_| QuantityError::TooLarge)
    }

    /// Cores as a float (`0.5`), e.g. for Podman's `--cpus`.
    pub fn cores(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// The amount in millicores.
    pub const fn millicores(self) -> u32 {
        self.0
    }
}

/// `digits[.digits]` as (all the digits as one integer, 10^fraction
/// digits): `1.25` is (125, 100). None when it is not such a number or
/// has more digits than a limit needs.
fn decimal(s: &str) -> Option<(u128, u128)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let digits = int.len() + frac.len();
    if int.is_empty() || digits > 30 || s.ends_with('.') {
        return None;
    }
    let mut scaled: u128 = 0;
    let mut scale: u128 = 1;
    for (i, c) in int.chars().chain(frac.chars()).enumerate() {
        let d = c.to_digit(10)?;
        scaled = scaled * 10 + u128::from(d);
        if i >= int.len() {
            scale *= 10;
        }
    }
    Some((scaled, scale))
}

impl fmt::Display for MemoryQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for CpuQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

impl Serialize for MemoryQuantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Millicores on the wire; in JSON the string `"500m"`, since a JSON
/// number reads as cores.
impl Serialize for CpuQuantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for MemoryQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MemoryQuantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes as an integer or a quantity string such as \"128Mi\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MemoryQuantity, E> {
                Ok(MemoryQuantity(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MemoryQuantity, E> {
                u64::try_from(v)
                    .map(MemoryQuantity)
                    .map_err(|_| E::custom(QuantityError::Memory))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MemoryQuantity, E> {
                // Whole and in range: `as` saturates, so the round trip
                // tells.
                let whole = v as u64;
                if v >= 0.0 && whole as f64 == v && whole != u64::MAX {
                    Ok(MemoryQuantity(whole))
                } else {
                    Err(E::custom(QuantityError::Memory))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MemoryQuantity, E> {
                MemoryQuantity::parse(v).map_err(E::custom)
            }
        }
        // Humans write quantities; the wire carries the integer.
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_u64(V)
        }
    }
}

impl<'de> Deserialize<'de> for CpuQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CpuQuantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("cores as a number or a quantity string such as \"500m\"")
            }
            // Millicores on the wire, cores on the human side (below).
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuQuantity, E> {
                u32::try_from(v)
                    .map(CpuQuantity)
                    .map_err(|_| E::custom(QuantityError::TooLarge))
            }
        }
        /// JSON numbers are cores.
        struct Cores;
        impl Visitor<'_> for Cores {
            type Value = CpuQuantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("cores as a number or a quantity string such as \"500m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuQuantity, E> {
                v.checked_mul(1000)
                    .and_then(|m| u32::try_from(m).ok())
                    .map(CpuQuantity)
                    .ok_or_else(|| E::custom(QuantityError::TooLarge))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CpuQuantity, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(QuantityError::Cpu)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CpuQuantity, E> {
                let millis = v * 1000.0;
                if !(0.0..=f64::from(u32::MAX)).contains(&millis) {
                    return Err(E::custom(QuantityError::Cpu));
                }
                // Whole millicores, allowing for binary fractions (0.1 * 1000).
                let rounded = (millis + 0.5) as u32;
                let off = f64::from(rounded) - millis;
                if !(-1e-6..=1e-6).contains(&off) {
                    return Err(E::custom(QuantityError::Cpu));
                }
                Ok(CpuQuantity(rounded))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CpuQuantity, E> {
                CpuQuantity::parse(v).map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(Cores)
        } else {
            d.deserialize_u32(V)
        }
    }
}

/// `ScorePayload.data` of a `PodmanV1` score: format version 1 only.
impl crate::wire::Encode for PodmanV1Score<'_> {}
impl<'de: 'a, 'a> crate::wire::Decode<'de> for PodmanV1Score<'a> {}

impl<'a> ContainerV1<'a> {
    /// A container named `name` running `image`, every other field at the
    /// value a score that gives only those two keys decodes to.
    pub fn new(name: Text<'a>, image: Text<'a>) -> Self {
        Self::from_v0(Container::new(name, image))
    }

    /// The same container as a `PodmanV1` one, every new field at its
    /// default: what the `PodmanV1` JSON with the same keys decodes to.
    pub fn from_v0(c: Container<'a>) -> Self {
        ContainerV1 {
            name: c.name,
            image: c.image,
            command: c.command,
            args: c.args,
            env: c.env.map(EnvVarV1::from_v0),
            ports: c.ports,
            volumes: c.volumes.map(VolumeV1::from_v0),
            restart_policy: c.restart_policy,
            pull_policy: c.pull_policy,
            labels: c.labels,
            privileged: c.privileged,
            host_network: c.host_network,
            host_pid: c.host_pid,
            host_ipc: c.host_ipc,
            cap_add: c.cap_add,
            devices: c.devices,
            health_check: None,
            resources: Resources::default(),
            stop_grace_period_seconds: None,
            user: None,
            working_dir: None,
            read_only_root_filesystem: false,
            init: false,
            update_lock: false,
        }
    }

    fn common(&self) -> CommonFields<'_, 'a> {
        CommonFields {
            name: &self.name,
            image: &self.image,
            command: &self.command,
            args: &self.args,
            env: None,
            ports: &self.ports,
            volumes: None,
            labels: &self.labels,
            cap_add: &self.cap_add,
            devices: &self.devices,
        }
    }
}

impl<'a> PodmanV1Score<'a> {
    /// A `PodmanV0` score as a `PodmanV1` one (lossless).
    pub fn from_v0(s: crate::score::PodmanV0Score<'a>) -> Self {
        PodmanV1Score {
            containers: s.containers.map(ContainerV1::from_v0),
        }
    }
}

impl Validate for PodmanV1Score<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        validate_containers(&self.containers, |c| &c.name, ContainerV1::validate_at)
    }
}

impl ContainerV1<'_> {
    fn validate_at(&self, c: usize) -> Result<(), ValidationError> {
        self.common().validate_at(c)?;
        let p = |field| FieldPath::container(c, field);
        for (i, e) in self.env.iter().enumerate() {
            check_env(
                p("env"),
                i,
                &e.name,
                &e.value,
                self.env[..i].iter().map(|o| &o.name),
            )?;
            if let Some(from) = &e.value_from {
                if !e.value.is_empty() {
                    return fail(p("env").at(i, None), Violation::EnvSource);
                }
                let r = &from.secret_key_ref;
                check_secret_ref(p("env").at(i, Some("valueFrom.secretKeyRef.name")), &r.name)?;
                check_secret_key(p("env").at(i, Some("valueFrom.secretKeyRef.key")), &r.key)?;
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let at = |sub| p("volumes").at(i, Some(sub));
            match &v.secret {
                None if v.name.is_some() == v.host_path.is_some() => {
                    return fail(p("volumes").at(i, None), Violation::VolumeSourceV1);
                }
                None => check_volume(p("volumes"), i, &v.name, &v.host_path, &v.mount_path)?,
                Some(secret) => {
                    if v.name.is_some() || v.host_path.is_some() {
                        return fail(p("volumes").at(i, None), Violation::VolumeSourceV1);
                    }
                    check_len(at("mountPath"), &v.mount_path, MAX_STRING_LEN)?;
                    if !v.mount_path.starts_with('/') {
                        return fail(at("mountPath"), Violation::NotAbsolute);
                    }
                    check_secret_ref(at("secret.secretName"), &secret.secret_name)?;
                    for (j, item) in secret.items.iter().enumerate() {
                        let at = |field| at("secret.items").item(j, field);
                        check_secret_key(at("key"), &item.key)?;
                        let path = item.path.as_str();
                        check_len(at("path"), path, MAX_STRING_LEN)?;
                        if path.is_empty()
                            || path.starts_with('/')
                            || path
                                .split('/')
                                .any(|s| s.is_empty() || s == "." || s == "..")
                        {
                            return fail(at("path"), Violation::RelativePath);
                        }
                        if secret.items[..j].iter().any(|o| o.path == item.path) {
                            return fail(at("path"), Violation::Duplicate);
                        }
                    }
                    if let Some(mode) = secret.default_mode {
                        check_range(
                            at("secret.defaultMode"),
                            mode.into(),
                            0,
                            MAX_SECRET_MODE.into(),
                            "",
                        )?;
                    }
                }
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let dir = v.mount_path.trim_end_matches('/');
            let under = dir
                .strip_prefix(UPDATE_LOCK_DIR)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if under {
                return fail(
                    FieldPath::container(c, "volumes").at(i, Some("mountPath")),
                    Violation::UpdateLockPath,
                );
            }
        }
        if let Some(check) = &self.health_check {
            self.validate_check(c, check)?;
        }
        let r = &self.resources;
        if let Some(m) = r.memory_limit {
            if m.0 < MIN_MEMORY_BYTES {
                return fail(
                    p("resources.memoryLimit"),
                    Violation::MemoryTooSmall { actual: m.0 },
                );
            }
            check_range(
                p("resources.memoryLimit"),
                m.0,
                MIN_MEMORY_BYTES,
                MAX_MEMORY_BYTES,
                " bytes",
            )?;
        }
        if let Some(cpu) = r.cpu_limit {
            let (min, max) = (MIN_CPU_MILLIS.into(), MAX_CPU_MILLIS.into());
            check_range(p("resources.cpuLimit"), cpu.0.into(), min, max, "m")?;
        }
        if let Some(w) = r.cpu_weight {
            check_range(
                p("resources.cpuWeight"),
                w.into(),
                1,
                MAX_CPU_WEIGHT.into(),
                "",
            )?;
        }
        if let Some(n) = r.pids_limit {
            check_range(
                p("resources.pidsLimit"),
                n.into(),
                1,
                MAX_PIDS_LIMIT.into(),
                "",
            )?;
        }
        if let Some(s) = self.stop_grace_period_seconds {
            check_range(
                p("stopGracePeriodSeconds"),
                s.into(),
                0,
                MAX_PERIOD_SECONDS.into(),
                "s",
            )?;
        }
        if let Some(user) = &self.user {
            check_nonempty(p("user"), user)?;
            check_len(p("user"), user, MAX_NAME_LEN)?;
            if user.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return fail(p("user"), Violation::Whitespace);
            }
            let mut parts = user.split(':');
            let ok = parts.next().is_some_and(|u| !u.is_empty())
                && parts.next().is_none_or(|g| !g.is_empty())
                && parts.next().is_none();
            if !ok {
                return fail(p("user"), Violation::NotUser);
            }
        }
        if let Some(dir) = &self.working_dir {
            check_len(p("workingDir"), dir, MAX_STRING_LEN)?;
            if !dir.starts_with('/') {
                return fail(p("workingDir"), Violation::NotAbsolute);
            }
            if dir.chars().any(char::is_control) {
                return fail(p("workingDir"), Violation::ControlCharacter);
            }
        }
        Ok(())
    }

    fn validate_check(&self, c: usize, check: &HealthCheck<'_>) -> Result<(), ValidationError> {
        let p = |field| FieldPath::container(c, field);
        let Some(action) = check.action() else {
            return fail(
                p("healthCheck"),
                Violation::OneOf {
                    of: "`exec`, `httpGet` or `tcpSocket`",
                },
            );
        };
        match action {
            HealthCheckAction::Exec(e) => {
                let path = p("healthCheck.exec.command");
                if e.command.is_empty() {
                    return fail(path, Violation::Empty);
                }
                for (i, a) in e.command.iter().enumerate() {
                    check_len(path.at(i, None), a, MAX_STRING_LEN)?;
                }
            }
            HealthCheckAction::HttpGet(h) => {
                let path = p("healthCheck.httpGet.path");
                check_len(path, &h.path, MAX_STRING_LEN)?;
                if !h.path.starts_with('/') {
                    return fail(path, Violation::NotAbsolute);
                }
                // It goes into the request line as it is.
                if !h.path.bytes().all(|b| b.is_ascii_graphic()) {
                    return fail(path, Violation::NotVisibleAscii);
                }
                self.check_port(p("healthCheck.httpGet.port"), h.port)?;
                let headers = p("healthCheck.httpGet.httpHeaders");
                for (i, header) in h.http_headers.iter().enumerate() {
                    let name = headers.at(i, Some("name"));
                    check_nonempty(name, &header.name)?;
                    check_len(name, &header.name, MAX_NAME_LEN)?;
                    if !header.name.bytes().all(is_token_byte) {
                        return fail(name, Violation::NotHeaderName);
                    }
                    // The client frames the request with these; a user's
                    // copy would make the server wait for a body.
                    if ["host", "content-length", "transfer-encoding", "connection"]
                        .iter()
                        .any(|r| header.name.eq_ignore_ascii_case(r))
                    {
                        return fail(name, Violation::ReservedHeader);
                    }
                    let value = headers.at(i, Some("value"));
                    check_len(value, &header.value, MAX_STRING_LEN)?;
                    if header.value.chars().any(|ch| ch.is_control() && ch != '\t') {
                        return fail(value, Violation::ControlCharacter);
                    }
                }
            }
            HealthCheckAction::TcpSocket(t) => {
                self.check_port(p("healthCheck.tcpSocket.port"), t.port)?;
            }
        }
        let seconds = MAX_PERIOD_SECONDS.into();
        let threshold = MAX_THRESHOLD.into();
        for (field, value, min, max, unit) in [
            (
                "healthCheck.intervalSeconds",
                check.interval_seconds,
                1,
                seconds,
                "s",
            ),
            (
                "healthCheck.timeoutSeconds",
                check.timeout_seconds,
                1,
                seconds,
                "s",
            ),
            (
                "healthCheck.failureThreshold",
                check.failure_threshold,
                1,
                threshold,
                "",
            ),
            (
                "healthCheck.successThreshold",
                check.success_threshold,
                1,
                threshold,
                "",
            ),
            (
                "healthCheck.startPeriodSeconds",
                check.start_period_seconds,
                0,
                seconds,
                "s",
            ),
        ] {
            check_range(p(field), value.into(), min, max, unit)?;
        }
        Ok(())
    }

    /// A check's port: not 0, and a TCP `containerPort` unless the
    /// container shares the host's network (where every port is the host's).
    fn check_port(&self, path: FieldPath, port: u16) -> Result<(), ValidationError> {
        if port == 0 {
            return fail(path, Violation::PortZero);
        }
        let declared = self
            .ports
            .iter()
            .any(|p| p.container_port == port && p.protocol == PortProtocol::Tcp);
        if !declared && !self.host_network {
            return fail(path, Violation::NotAContainerPort { port });
        }
        Ok(())
    }
}

/// RFC 9110's `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(feature = "alloc")]
mod owned {
    use super::*;

    fn own_list<const N: usize>(l: BoundedVec<Text<'_>, N>) -> BoundedVec<Text<'static>, N> {
        l.map(Text::into_owned)
    }

    impl PodmanV1Score<'_> {
        /// A copy that owns all its strings.
        pub fn into_owned(self) -> PodmanV1Score<'static> {
            PodmanV1Score {
                containers: self.containers.map(ContainerV1::into_owned),
            }
        }
    }

    impl ContainerV1<'_> {
        /// A copy that owns all its strings.
        pub fn into_owned(self) -> ContainerV1<'static> {
            // Exhaustive, so that a new field cannot be forgotten here.
            let ContainerV1 {
                name,
                image,
                command,
                args,
                env,
                ports,
                volumes,
                restart_policy,
                pull_policy,
                labels,
                privileged,
                host_network,
                host_pid,
                host_ipc,
                cap_add,
                devices,
                health_check,
                resources,
                stop_grace_period_seconds,
                user,
                working_dir,
                read_only_root_filesystem,
                init,
                update_lock,
            } = self;
            let base = Container {
                name,
                image,
                command,
                args,
                env: BoundedVec::new(),
                ports,
                volumes: BoundedVec::new(),
                restart_policy,
                pull_policy,
                labels,
                privileged,
                host_network,
                host_pid,
                host_ipc,
                cap_add,
                devices,
            };
            ContainerV1 {
                health_check: health_check.map(HealthCheck::into_owned),
                resources,
                stop_grace_period_seconds,
                user: user.map(Text::into_owned),
                working_dir: working_dir.map(Text::into_owned),
                read_only_root_filesystem,
                init,
                update_lock,
                env: env.map(|e| EnvVarV1 {
                    name: e.name.into_owned(),
                    value: e.value.into_owned(),
                    value_from: e.value_from.map(|f| EnvVarSource {
                        secret_key_ref: SecretKeyRef {
                            name: f.secret_key_ref.name.into_owned(),
                            key: f.secret_key_ref.key.into_owned(),
                        },
                    }),
                }),
                volumes: volumes.map(|v| VolumeV1 {
                    name: v.name.map(Text::into_owned),
                    host_path: v.host_path.map(Text::into_owned),
                    mount_path: v.mount_path.into_owned(),
                    read_only: v.read_only,
                    secret: v.secret.map(|s| SecretVolumeSource {
                        secret_name: s.secret_name.into_owned(),
                        items: s.items.map(|i| KeyToPath {
                            key: i.key.into_owned(),
                            path: i.path.into_owned(),
                        }),
                        default_mode: s.default_mode,
                    }),
                }),
                ..ContainerV1::from_v0(base.into_owned())
            }
        }
    }

    impl HealthCheck<'_> {
        /// A copy that owns all its strings.
        pub fn into_owned(self) -> HealthCheck<'static> {
            HealthCheck {
                exec: self.exec.map(|e| ExecCheck {
                    command: own_list(e.command),
                }),
                http_get: self.http_get.map(|h| HttpGetCheck {
                    path: h.path.into_owned(),
                    port: h.port,
                    scheme: h.scheme,
                    http_headers: h.http_headers.map(|x| HttpHeader {
                        name: x.name.into_owned(),
                        value: x.value.into_owned(),
                    }),
                }),
                tcp_socket: self.tcp_socket,
                interval_seconds: self.interval_seconds,
                timeout_seconds: self.timeout_seconds,
                failure_threshold: self.failure_threshold,
                success_threshold: self.success_threshold,
                start_period_seconds: self.start_period_seconds,
                on_failure: self.on_failure,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal("1.25"), Some((125, 100)));
        assert_eq!(decimal("0"), Some((0, 1)));
        assert_eq!(decimal("007"), Some((7, 1)));
        for bad in ["", ".", "1.", ".5", "1.2.3", "1e3", "-1", "+1", "1_0"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
        // More digits than any limit needs cannot overflow.
        assert!(decimal("999999999999999999999999999999").is_some());
        assert_eq!(decimal("9999999999999999999999999999999"), None);
    }

    #[test]
    fn quantities_at_the_edges_of_their_types() {
        assert_eq!(MemoryQuantity::parse("0"), Ok(MemoryQuantity(0)));
        assert_eq!(
            MemoryQuantity::parse("18446744073709551615"),
            Ok(MemoryQuantity(u64::MAX))
        );
        assert_eq!(
            MemoryQuantity::parse("18446744073709551616"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(
            MemoryQuantity::parse("0.5Ki"),
            Ok(MemoryQuantity(512)),
            "a fraction is fine when it comes to whole bytes"
        );
        assert_eq!(MemoryQuantity::parse("0.3Ki"), Err(QuantityError::Memory));
        assert_eq!(CpuQuantity::parse("4294967295m"), Ok(CpuQuantity(u32::MAX)));
        assert_eq!(CpuQuantity::parse("4294968"), Err(QuantityError::TooLarge));
        assert_eq!(CpuQuantity::parse("0.001"), Ok(CpuQuantity(1)));
        assert_eq!(CpuQuantity::parse("1.000"), Ok(CpuQuantity(1000)));
    }

    #[test]
    fn on_the_wire_quantities_are_plain_integers() {
        let mut buf = [0u8; 16];
        let r = Resources {
            memory_limit: Some(MemoryQuantity(300)),
            cpu_limit: Some(CpuQuantity(300)),
            cpu_weight: None,
            pids_limit: None,
        };
        let used = postcard::to_slice(&r, &mut buf).map(|b| b.len());
        assert_eq!(used, Ok(8));
        assert_eq!(buf[..8], [1, 0xac, 0x02, 1, 0xac, 0x02, 0, 0]);
        let back: Resources = postcard::from_bytes(&buf[..8]).expect("decodes");
        assert_eq!(back, r);
    }

    #[test]
    fn a_check_has_exactly_one_action() {
        let mut check = HealthCheck::tcp_socket(80);
        assert_eq!(check.port(), Some(80));
        check.exec = Some(ExecCheck {
            command: BoundedVec::new(),
        });
        assert_eq!(check.action(), None);
        assert_eq!(check.port(), None);
        check.exec = None;
        check.tcp_socket = None;
        assert_eq!(check.action(), None);
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(b"X-Probe_1.a~".iter().all(|&b| is_token_byte(b)));
        for b in *b" :\"(),/;<=>?@[\\]{}\x7f" {
            assert!(!is_token_byte(b), "{}", b as char);
        }
    }
}
