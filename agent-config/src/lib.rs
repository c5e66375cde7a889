//! The device agent's configuration file (`config.toml`): versioned TOML,
//! validated, with errors that name the field and what would be valid.
//!
//! Its own crate so that what writes the file (`cargo xtask image`,
//! `flash`, the demo) builds a [`Config`] value and runs the agent's own
//! [`Config::validate`], instead of keeping a copy of the schema that can
//! drift. The agent re-exports it as `agent_linux::config`. A crate rather
//! than a `config` feature of `agent-linux`: the feature would have to make
//! tokio, async-nats and the rest of the agent optional, one `cfg` per
//! module, while this needs only serde, toml and `protocol`'s id rules.
//! `agent-linux/README.md` ("Configuration reference") documents the format.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use nats_credentials::Credentials;
/// The only configuration format version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Where the agent looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/iot-agent/config.toml";
/// Heartbeat period when the file does not set one.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// Stop timeout when the file does not set one (Podman's own default).
pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 10;
/// First restart back-off of a crashing `PodmanV1` container when the file
/// does not set one (Kubernetes' CrashLoopBackOff).
pub const DEFAULT_RESTART_BACKOFF_INITIAL_SECS: u64 = 10;
/// Largest restart back-off when the file does not set one (Kubernetes').
pub const DEFAULT_RESTART_BACKOFF_MAX_SECS: u64 = 300;
/// Podman socket when the file does not set one.
pub const DEFAULT_PODMAN_SOCKET: &str = "unix:///run/podman/podman.sock";
/// Directory of the update lock file (`update.lock`) when the file does
/// not set one: the path workloads see it at in their containers too.
pub const DEFAULT_UPDATE_LOCK_DIR: &str = "/run/iot-agent";
/// Seconds the agent waits, after it starts, for the kernel to say the
/// clock is synchronized before it judges the clock by itself.
pub const DEFAULT_CLOCK_SYNC_WAIT_SECS: u64 = 300;
/// Milliseconds between two checks of a held change (update lock, clock)
/// when the file does not set it.
pub const DEFAULT_UPDATE_TICK_MS: u64 = 1000;
/// Where opened secrets exist in clear text on the board (a tmpfs) when the
/// file does not set `secrets.runtime_dir`.
pub const DEFAULT_SECRETS_RUNTIME_DIR: &str = "/run/iot-agent-secrets";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema (unknown key,
    /// unknown credential `type`, wrong value type...).
    ///
    /// The parser's error is in the message, not in `source()`: the hint
    /// goes after it.
    #[error("{}{}", .error.to_string().trim_end(), if *.in_credentials_type { "\n(in nats.credentials.type)" } else { "" })]
    Syntax {
        /// The parser's error; its Display quotes the offending line.
        error: toml::de::Error,
        /// The error is about `nats.credentials.type`, the one key whose
        /// message does not show it (a tag inside a table).
        in_credentials_type: bool,
    },
    /// A field holds a value that is not valid.
    #[error("{field}: {problem}")]
    Invalid {
        /// Dotted path of the field, e.g. `nats.urls[0]`.
        field: String,
        /// What is wrong and what would be valid.
        problem: String,
    },
    /// The configuration cannot be written as TOML.
    #[error("cannot write the configuration as TOML")]
    Render {
        /// The serializer's error.
        #[source]
        source: toml::ser::Error,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// This device's id: one key token (`[A-Za-z0-9_-]{1,63}`).
    pub device_id: String,
    /// Directory for the desired-state cache.
    pub state_dir: PathBuf,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    /// NATS connection.
    pub nats: NatsConfig,
    /// Podman connection.
    #[serde(default)]
    pub podman: PodmanConfig,
    /// Limits on what scores may ask for.
    #[serde(default, skip_serializing_if = "is_default")]
    pub security: SecurityConfig,
    /// `[update]`: when the agent may change a deployment (its update lock,
    /// its clock for maintenance windows).
    #[serde(default, skip_serializing_if = "is_default")]
    pub update: UpdateConfig,
    /// `[secrets]`: the board's sealing key and where opened secrets live.
    #[serde(default, skip_serializing_if = "is_default")]
    pub secrets: SecretsConfig,
    /// `[labels]`: the labels this board declares in its heartbeat (at most
    /// [`protocol::limits::MAX_DEVICE_LABELS`], Kubernetes label syntax),
    /// e.g. `board = "rpi4"`. The operator merges them into the labels of
    /// the board's `Device` object; a label an administrator set there wins.
    #[serde(default, skip_serializing_if = "is_default")]
    pub labels: BTreeMap<String, String>,
}

/// `CAP_NET_ADMIN`, `net_admin` -> `NET_ADMIN`: how a capability is
/// compared, in `security.allowed_capabilities` and in scores.
pub fn normalize_capability(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").unwrap_or(&up).to_string()
}

fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}

/// `[nats]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Servers to connect to (`nats://`, `tls://`); any that answers is used.
    pub urls: Vec<String>,
    /// How the agent authenticates.
    #[serde(default)]
    pub credentials: Credentials,
    /// TLS settings; absent means TLS only when a `tls://` URL asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[nats.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle (PEM) that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS; needs `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `[podman]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanConfig {
    /// The API socket, `unix:///path` (or a bare absolute path).
    #[serde(default = "default_socket")]
    pub socket: String,
    /// Seconds a container gets between SIGTERM and SIGKILL when it is
    /// replaced or removed (also set as its stop timeout at create).
    #[serde(
        default = "default_stop_timeout",
        skip_serializing_if = "is_default_stop_timeout"
    )]
    pub stop_timeout_secs: u64,
    /// Whether a changed container's replacement starts before the old one
    /// stops (`start-first`, the default) or after (`stop-first`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub replace_order: ReplaceOrder,
    /// Seconds the agent waits before the second restart of a `PodmanV1`
    /// container that keeps exiting (the first is at once); each further
    /// restart waits twice as long, up to `restart_backoff_max_secs`.
    #[serde(
        default = "default_backoff_initial",
        skip_serializing_if = "is_default_backoff_initial"
    )]
    pub restart_backoff_initial_secs: u64,
    /// Longest wait between two restarts; a container that ran twice this
    /// long before exiting starts over at once.
    #[serde(
        default = "default_backoff_max",
        skip_serializing_if = "is_default_backoff_max"
    )]
    pub restart_backoff_max_secs: u64,
}

/// `podman.replace_order`: how a container whose spec changed is replaced.
/// Either way the replacement is created while the old container still
/// runs, and the old one keeps running (or is started again) when the
/// replacement cannot be created or started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplaceOrder {
    /// Start the new container, then stop the old one (its stop timeout
    /// then costs no downtime), unless the container claims something only
    /// one instance can hold: a host port, the host's namespaces, a
    /// writable volume, a device or privileged mode. Those are stopped
    /// first. Briefly runs two instances of a container without such
    /// claims, as a Kubernetes rolling update does.
    #[default]
    StartFirst,
    /// Always stop the old container before starting the new one (for
    /// workloads that must never run twice, even briefly).
    StopFirst,
}

fn default_socket() -> String {
    DEFAULT_PODMAN_SOCKET.to_string()
}

fn default_stop_timeout() -> u64 {
    DEFAULT_STOP_TIMEOUT_SECS
}

fn default_backoff_initial() -> u64 {
    DEFAULT_RESTART_BACKOFF_INITIAL_SECS
}

fn default_backoff_max() -> u64 {
    DEFAULT_RESTART_BACKOFF_MAX_SECS
}

fn is_default_backoff_initial(secs: &u64) -> bool {
    !SHOW_DEFAULTS.get() && *secs == DEFAULT_RESTART_BACKOFF_INITIAL_SECS
}

fn is_default_backoff_max(secs: &u64) -> bool {
    !SHOW_DEFAULTS.get() && *secs == DEFAULT_RESTART_BACKOFF_MAX_SECS
}

thread_local! {
    /// Set while [`Config::to_display_toml`] renders: the effective
    /// configuration shows the settings at their default too. A flag rather
    /// than a second copy of the schema for display, which could drift.
    static SHOW_DEFAULTS: Cell<bool> = const { Cell::new(false) };
}

fn is_default_stop_timeout(secs: &u64) -> bool {
    !SHOW_DEFAULTS.get() && *secs == DEFAULT_STOP_TIMEOUT_SECS
}

/// Settings at their default are not written ([`Config::to_toml`]): a file
/// that leaves them out follows the agent's defaults when those change, and
/// a table the user appends (`[security]`, as the agent's README shows) is
/// not a duplicate of an empty one written for them.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    !SHOW_DEFAULTS.get() && *value == T::default()
}

impl Default for PodmanConfig {
    fn default() -> Self {
        PodmanConfig {
            socket: default_socket(),
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            replace_order: ReplaceOrder::default(),
            restart_backoff_initial_secs: DEFAULT_RESTART_BACKOFF_INITIAL_SECS,
            restart_backoff_max_secs: DEFAULT_RESTART_BACKOFF_MAX_SECS,
        }
    }
}

/// `[security]`: what scores may ask of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Host directories under which `hostPath` bind mounts are allowed.
    /// Empty (the default) refuses every bind mount.
    #[serde(default, skip_serializing_if = "is_default")]
    pub allowed_host_paths: Vec<PathBuf>,
    /// Allow scores that ask for privileged mode (default false).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_privileged: bool,
    /// Allow hostNetwork, hostPID and hostIPC (default false).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_host_namespaces: bool,
    /// Capabilities a score may add beyond the Baseline set (`NET_ADMIN`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allowed_capabilities: Vec<String>,
    /// Host devices a score may pass in (`/dev/ttyUSB0`); default none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub allowed_devices: Vec<PathBuf>,
}

/// `[update]`: the update lock and the maintenance windows' clock (see the
/// agent's README, "Update locks and maintenance windows").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The directory holding the update lock file `update.lock`, created
    /// by the agent; bind-mounted read-only at `/run/iot-agent` in the
    /// containers whose score sets `updateLock`.
    #[serde(
        default = "default_lock_dir",
        skip_serializing_if = "is_default_lock_dir"
    )]
    pub lock_dir: PathBuf,
    /// Seconds after the agent starts during which a deployment with
    /// maintenance windows waits for the kernel's "clock synchronized"
    /// flag (NTP); after that an unsynchronized clock is trusted only if a
    /// real-time clock set it at boot (`/sys/class/rtc/rtc0/hctosys` reads
    /// `1`) and it reads later than 2026-01-01, else not until the flag
    /// comes (a board without an RTC boots at a stale saved time). Zero:
    /// do not wait, trust the clock as it is.
    #[serde(
        default = "default_clock_sync_wait",
        skip_serializing_if = "is_default_clock_sync_wait"
    )]
    pub clock_sync_wait_secs: u64,
    /// Milliseconds between two checks of a held change while it waits
    /// for the update lock or the clock (nothing is checked while nothing
    /// waits).
    #[serde(
        default = "default_update_tick",
        skip_serializing_if = "is_default_update_tick"
    )]
    pub tick_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            lock_dir: default_lock_dir(),
            clock_sync_wait_secs: DEFAULT_CLOCK_SYNC_WAIT_SECS,
            tick_ms: DEFAULT_UPDATE_TICK_MS,
        }
    }
}

impl UpdateConfig {
    /// The update lock file: `update.lock` in `lock_dir`.
    pub fn lock_file(&self) -> PathBuf {
        self.lock_dir.join("update.lock")
    }

    /// How long to wait for the clock to be synchronized.
    pub fn clock_sync_wait(&self) -> Duration {
        Duration::from_secs(self.clock_sync_wait_secs)
    }

    /// The period of the checks of held changes.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// `[secrets]`: the key that opens the secrets sealed to this board, and
/// where their clear text may exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The board's sealing key: an nkeys curve seed (`SX...`, one line,
    /// mode 0600). Unset: the board has no sealing key, and a deployment
    /// that carries sealed values fails on it. Set and missing: the agent
    /// creates it at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The directory where opened secrets exist in clear text for Podman
    /// and the containers; the agent refuses one that is not a tmpfs, so
    /// clear text never reaches a disk.
    #[serde(
        default = "default_secrets_runtime_dir",
        skip_serializing_if = "is_default_secrets_runtime_dir"
    )]
    pub runtime_dir: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            key_file: None,
            runtime_dir: default_secrets_runtime_dir(),
        }
    }
}

fn default_secrets_runtime_dir() -> PathBuf {
    PathBuf::from(DEFAULT_SECRETS_RUNTIME_DIR)
}

fn is_default_secrets_runtime_dir(dir: &PathBuf) -> bool {
    !SHOW_DEFAULTS.get() && *dir == default_secrets_runtime_dir()
}

fn default_lock_dir() -> PathBuf {
    PathBuf::from(DEFAULT_UPDATE_LOCK_DIR)
}

fn is_default_lock_dir(dir: &PathBuf) -> bool {
    !SHOW_DEFAULTS.get() && *dir == default_lock_dir()
}

fn default_clock_sync_wait() -> u64 {
    DEFAULT_CLOCK_SYNC_WAIT_SECS
}

fn is_default_clock_sync_wait(secs: &u64) -> bool {
    !SHOW_DEFAULTS.get() && *secs == DEFAULT_CLOCK_SYNC_WAIT_SECS
}

fn default_update_tick() -> u64 {
    DEFAULT_UPDATE_TICK_MS
}

fn is_default_update_tick(ms: &u64) -> bool {
    !SHOW_DEFAULTS.get() && *ms == DEFAULT_UPDATE_TICK_MS
}

impl Config {
    /// A configuration of the current version for `device_id`, with every
    /// optional setting at its default (no credentials, no TLS).
    pub fn new(
        device_id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        urls: Vec<String>,
    ) -> Config {
        Config {
            version: CONFIG_VERSION,
            device_id: device_id.into(),
            state_dir: state_dir.into(),
            heartbeat_interval_secs: DEFAULT_HEARTBEAT_SECS,
            nats: NatsConfig {
                urls,
                credentials: Credentials::None,
                tls: None,
            },
            podman: PodmanConfig::default(),
            security: SecurityConfig::default(),
            update: UpdateConfig::default(),
            secrets: SecretsConfig::default(),
            labels: BTreeMap::new(),
        }
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // The error's Display quotes the offending line, which names the
        // key even when the message alone would not (a wrong value type).
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            in_credentials_type: e.message().contains("unknown variant")
                && e.message().contains("user-password"),
            error: e,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field's value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "is {}; this agent reads version {CONFIG_VERSION} (set `version = 1`)",
                    self.version
                ),
            ));
        }
        protocol::keys::validate_device_id(&self.device_id)
            .map_err(|e| invalid("device_id", e.to_string()))?;
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                "must be an absolute path, e.g. \"/var/lib/iot-agent\"",
            ));
        }
        if self.heartbeat_interval_secs == 0 || self.heartbeat_interval_secs > 86_400 {
            return Err(invalid(
                "heartbeat_interval_secs",
                "must be between 1 and 86400 seconds",
            ));
        }
        if self.nats.urls.is_empty() {
            return Err(invalid(
                "nats.urls",
                "needs at least one server, e.g. [\"nats://nats.example.net:4222\"]",
            ));
        }
        for (i, url) in self.nats.urls.iter().enumerate() {
            let ok = ["nats://", "tls://"].iter().any(|s| {
                url.strip_prefix(s)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
            });
            if !ok {
                return Err(invalid(
                    format!("nats.urls[{i}]"),
                    format!("{url:?} is not a NATS URL; use nats://host:port or tls://host:port"),
                ));
            }
        }
        match &self.nats.credentials {
            Credentials::None => {}
            Credentials::UserPassword { user, .. } if user.is_empty() => {
                return Err(invalid("nats.credentials.user", "must not be empty"));
            }
            Credentials::Token { token } if token.is_empty() => {
                return Err(invalid("nats.credentials.token", "must not be empty"));
            }
            Credentials::Nkey { seed_file } if !seed_file.is_absolute() => {
                return Err(invalid(
                    "nats.credentials.seed_file",
                    "must be an absolute path to a file holding the nkey seed",
                ));
            }
            Credentials::CredsFile { path } if !path.is_absolute() => {
                return Err(invalid(
                    "nats.credentials.path",
                    "must be an absolute path to a .creds file",
                ));
            }
            _ => {}
        }
        if let Some(tls) = &self.nats.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(invalid(
                    "nats.tls",
                    "`cert` and `key` go together: set both for mutual TLS, or neither",
                ));
            }
            for (name, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err(invalid(
                        format!("nats.tls.{name}"),
                        "must be an absolute path",
                    ));
                }
            }
        }
        self.podman_socket_path()?;
        if self.podman.stop_timeout_secs > 600 {
            return Err(invalid(
                "podman.stop_timeout_secs",
                "must be at most 600 seconds",
            ));
        }
        let (initial, max) = (
            self.podman.restart_backoff_initial_secs,
            self.podman.restart_backoff_max_secs,
        );
        if !(1..=3600).contains(&initial) {
            return Err(invalid(
                "podman.restart_backoff_initial_secs",
                "must be between 1 and 3600 seconds (default 10)",
            ));
        }
        if !(initial..=86_400).contains(&max) {
            return Err(invalid(
                "podman.restart_backoff_max_secs",
                format!(
                    "must be between restart_backoff_initial_secs ({initial}) and 86400 seconds (default 300)"
                ),
            ));
        }
        for (i, p) in self.security.allowed_host_paths.iter().enumerate() {
            if !p.is_absolute() {
                return Err(invalid(
                    format!("security.allowed_host_paths[{i}]"),
                    "must be an absolute directory",
                ));
            }
        }
        for (i, p) in self.security.allowed_devices.iter().enumerate() {
            if !p.is_absolute() {
                return Err(invalid(
                    format!("security.allowed_devices[{i}]"),
                    "must be an absolute device path such as /dev/ttyUSB0",
                ));
            }
        }
        for (i, c) in self.security.allowed_capabilities.iter().enumerate() {
            let n = normalize_capability(c);
            if n.is_empty() || n == "ALL" || !n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            {
                return Err(invalid(
                    format!("security.allowed_capabilities[{i}]"),
                    "must be one capability name such as NET_ADMIN (ALL is not accepted)",
                ));
            }
        }
        self.validate_update()?;
        self.validate_secrets()?;
        self.validate_labels()
    }

    /// `[secrets]`: absolute paths, so that what the agent opens and
    /// creates does not depend on its working directory.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let s = &self.secrets;
        if s.key_file.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(invalid(
                "secrets.key_file",
                "must be an absolute path to the sealing key's seed file, e.g. \"/etc/iot-agent/device.xk\"",
            ));
        }
        if !s.runtime_dir.is_absolute() {
            return Err(invalid(
                "secrets.runtime_dir",
                format!(
                    "must be an absolute directory on a tmpfs (default \"{DEFAULT_SECRETS_RUNTIME_DIR}\"), so that clear text never reaches a disk"
                ),
            ));
        }
        Ok(())
    }

    /// `[update]`: an absolute lock directory, bounded waits.
    fn validate_update(&self) -> Result<(), ConfigError> {
        let u = &self.update;
        if !u.lock_dir.is_absolute() {
            return Err(invalid(
                "update.lock_dir",
                "must be an absolute directory (default \"/run/iot-agent\"), on a tmpfs so that the lock file goes with a reboot",
            ));
        }
        if u.clock_sync_wait_secs > 86_400 {
            return Err(invalid(
                "update.clock_sync_wait_secs",
                "must be at most 86400 seconds (default 300)",
            ));
        }
        if !(100..=60_000).contains(&u.tick_ms) {
            return Err(invalid(
                "update.tick_ms",
                "must be between 100 and 60000 milliseconds (default 1000)",
            ));
        }
        Ok(())
    }

    /// `[labels]`: within the heartbeat's bound, each key and value in the
    /// syntax Kubernetes accepts, so that none is dropped by the operator.
    fn validate_labels(&self) -> Result<(), ConfigError> {
        use protocol::labels::{validate_label_key, validate_label_value};
        use protocol::limits::MAX_DEVICE_LABELS;
        if self.labels.len() > MAX_DEVICE_LABELS {
            return Err(invalid(
                "labels",
                format!(
                    "has {} labels; a board declares at most {MAX_DEVICE_LABELS} (set the others on its Device object instead)",
                    self.labels.len()
                ),
            ));
        }
        for (key, value) in &self.labels {
            // Quoted as TOML writes a dotted key that is not bare
            // (`labels."example.com/board"`), and always, for one form.
            let field = format!("labels.{key:?}");
            validate_label_key(key).map_err(|e| invalid(&field, format!("key {e}")))?;
            validate_label_value(value)
                .map_err(|e| invalid(&field, format!("value {value:?} {e}")))?;
        }
        Ok(())
    }

    /// The Podman socket as a filesystem path.
    pub fn podman_socket_path(&self) -> Result<PathBuf, ConfigError> {
        let s = &self.podman.socket;
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if !path.starts_with('/') {
            return Err(invalid(
                "podman.socket",
                format!("{s:?} is not a unix socket; use unix:///run/podman/podman.sock"),
            ));
        }
        Ok(PathBuf::from(path))
    }

    /// The heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// The file's text: what the agent reads back as this configuration
    /// (secrets included). `[podman]`'s `stop_timeout_secs` and
    /// `replace_order`, and each `[security]` setting, are written only
    /// when they differ from the default (the whole `[security]` table is
    /// left out when none does), and so are `[update]`'s and `[secrets]`'s;
    /// `[labels]` only when it holds some.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|source| ConfigError::Render { source })
    }

    /// The effective configuration as TOML, every setting at its default
    /// included, with secrets masked.
    pub fn to_display_toml(&self) -> String {
        let mut shown = self.clone();
        shown.nats.credentials = shown.nats.credentials.masked();
        SHOW_DEFAULTS.set(true);
        let text = shown.to_toml();
        SHOW_DEFAULTS.set(false);
        match text {
            // An empty table last (`[labels]`) comes without a line end.
            Ok(mut text) => {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text
            }
            Err(e) => format!("# cannot display: {e}\n"),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display_toml())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
[nats]
urls = ["nats://a:4222", "tls://b:4222"]
[nats.credentials]
type = "none"
[podman]
socket = "unix:///run/podman/podman.sock"
"#;

    #[test]
    fn design_example_parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.device_id, "pi-001");
        assert_eq!(c.heartbeat_interval_secs, DEFAULT_HEARTBEAT_SECS);
        assert_eq!(c.nats.credentials, Credentials::None);
        assert_eq!(
            c.podman_socket_path().unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        // The displayed form parses back to the same configuration.
        assert_eq!(Config::parse(&c.to_display_toml()).unwrap(), c);
    }

    #[test]
    fn credentials_are_read_from_their_table() {
        // Every credential shape is tested in nats-credentials; this checks
        // the table is where the file format puts it.
        let text = GOOD.replace(
            "type = \"none\"",
            "type = \"creds-file\"\npath = \"/etc/iot-agent/device.creds\"",
        );
        assert_eq!(
            Config::parse(&text).unwrap().nats.credentials,
            Credentials::CredsFile {
                path: "/etc/iot-agent/device.creds".into(),
            }
        );
    }

    #[test]
    fn secrets_are_masked_when_displayed() {
        let text = GOOD.replace("type = \"none\"", "type = \"token\"\ntoken = \"s3cret\"");
        let shown = Config::parse(&text).unwrap().to_display_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = err(&GOOD.replace("type = \"none\"", "type = \"kerberos\""));
        assert!(e.contains("kerberos") && e.contains("user-password"), "{e}");
        let e = err(&GOOD.replace("version = 1", "version = 1\ncolour = \"red\""));
        assert!(e.contains("colour"), "{e}");
        let e = err(&GOOD.replace("pi-001", "pi.001"));
        assert!(e.starts_with("device_id:") && e.contains("'.'"), "{e}");
        let e = err(&GOOD.replace("heartbeat", "x").replace(
            "version = 1",
            "version = 1\nheartbeat_interval_secs = \"soon\"",
        ));
        assert!(e.contains("heartbeat_interval_secs"), "{e}");
        let e = err(&GOOD.replace("version = 1", "version = 2"));
        assert!(e.starts_with("version:"), "{e}");
        let e = err(&GOOD.replace("\"nats://a:4222\", ", "\"http://a\", "));
        assert!(e.starts_with("nats.urls[0]:"), "{e}");
        let e = err(&GOOD.replace("urls = [\"nats://a:4222\", \"tls://b:4222\"]", "urls = []"));
        assert!(e.starts_with("nats.urls:"), "{e}");
        let e = err(&GOOD.replace("/var/lib/iot-agent", "state"));
        assert!(e.starts_with("state_dir:"), "{e}");
        let e = err(&GOOD.replace("unix:///run/podman/podman.sock", "tcp://x:1"));
        assert!(e.starts_with("podman.socket:"), "{e}");
        let e = err(&format!("{GOOD}[nats.tls]\ncert = \"/c.pem\"\n"));
        assert!(e.starts_with("nats.tls:"), "{e}");
        let e = err(&GOOD.replace("type = \"none\"", "type = \"nkey\""));
        assert!(e.contains("seed_file"), "{e}");

        let e = err(&format!("{GOOD}replace_order = \"sideways\"\n"));
        assert!(
            e.contains("replace_order") && e.contains("stop-first") && !e.contains("credentials"),
            "{e}"
        );
    }

    #[test]
    fn restart_backoff_is_bounded() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            (
                c.podman.restart_backoff_initial_secs,
                c.podman.restart_backoff_max_secs
            ),
            (10, 300)
        );
        let c = Config::parse(&format!(
            "{GOOD}restart_backoff_initial_secs = 1\nrestart_backoff_max_secs = 4\n"
        ))
        .unwrap();
        assert_eq!(
            (
                c.podman.restart_backoff_initial_secs,
                c.podman.restart_backoff_max_secs
            ),
            (1, 4)
        );
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        let e = err(&format!("{GOOD}restart_backoff_initial_secs = 0\n"));
        assert!(e.starts_with("podman.restart_backoff_initial_secs:"), "{e}");
        let e = err(&format!(
            "{GOOD}restart_backoff_initial_secs = 20\nrestart_backoff_max_secs = 10\n"
        ));
        assert!(
            e.starts_with("podman.restart_backoff_max_secs:") && e.contains("(20)"),
            "{e}"
        );
    }

    #[test]
    fn replace_order_defaults_to_start_first() {
        assert_eq!(
            Config::parse(GOOD).unwrap().podman.replace_order,
            ReplaceOrder::StartFirst
        );
        let c = Config::parse(&format!("{GOOD}replace_order = \"stop-first\"\n")).unwrap();
        assert_eq!(c.podman.replace_order, ReplaceOrder::StopFirst);
        assert_eq!(Config::parse(&c.to_display_toml()).unwrap(), c);
    }

    /// Files written before the schema moved here must keep parsing: the
    /// README's reference (every key), and what `cargo xtask image` and the
    /// demo wrote with their own copies of the schema.
    #[test]
    fn existing_files_keep_parsing() {
        let readme = include_str!("../../agent-linux/README.md");
        let reference = readme
            .split("## Configuration reference")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .unwrap();
        let c = Config::parse(reference).unwrap();
        assert_eq!(c.nats.urls.len(), 2);
        assert_eq!(c.security.allowed_host_paths, [PathBuf::from("/srv")]);
        assert!(c.nats.tls.is_some());
        assert_eq!(
            c.secrets.key_file.as_deref(),
            Some(Path::new("/etc/iot-agent/device.xk"))
        );
        assert_eq!(c.labels.len(), 3);

        let xtask_image = r#"# iot-agent configuration for device pi-001, written by `cargo xtask image`.
version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
heartbeat_interval_secs = 30

[nats]
urls = ["nats://a:4222", "nats://b:4222"]

[nats.credentials]
type = "nkey"
seed_file = "/etc/iot-agent/nats.nk"

[podman]
socket = "unix:///run/podman/podman.sock"
"#;
        let c = Config::parse(xtask_image).unwrap();
        assert_eq!(
            c.nats.credentials,
            Credentials::Nkey {
                seed_file: "/etc/iot-agent/nats.nk".into()
            }
        );
        assert_eq!(c.podman, PodmanConfig::default());

        let demo = "version = 1\ndevice_id = \"demo-pi\"\nstate_dir = \"/tmp/d/agent-state\"\nheartbeat_interval_secs = 5\n\
                    [nats]\nurls = [\"nats://127.0.0.1:4222\"]\n[podman]\nsocket = \"unix:///tmp/d/podman.sock\"\nstop_timeout_secs = 1\n";
        let c = Config::parse(demo).unwrap();
        assert_eq!(
            (c.heartbeat_interval_secs, c.podman.stop_timeout_secs),
            (5, 1)
        );
    }

    #[test]
    fn a_built_config_writes_what_parses_back() {
        let mut c = Config::new("pi-001", "/var/lib/iot-agent", vec!["nats://a:4222".into()]);
        c.validate().unwrap();
        c.nats.credentials = Credentials::UserPassword {
            user: "u".into(),
            password: "p\"w".into(),
        };
        let text = c.to_toml().unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
        assert!(!c.to_display_toml().contains("p\"w"));
    }

    #[test]
    fn only_settings_off_their_default_are_written() {
        let mut c = Config::new("pi-001", "/var/lib/iot-agent", vec!["nats://a:4222".into()]);
        let text = c.to_toml().unwrap();
        let shown = c.to_display_toml();
        for left_out in [
            "stop_timeout_secs",
            "replace_order",
            "restart_backoff_initial_secs",
            "restart_backoff_max_secs",
            "[security]",
            "[update]",
            "lock_dir",
            "clock_sync_wait_secs",
            "tick_ms",
            "[secrets]",
            "runtime_dir",
            "[labels]",
        ] {
            assert!(!text.contains(left_out), "{left_out} in\n{text}");
            // `check-config` shows the effective configuration.
            assert!(shown.contains(left_out), "{left_out} not in\n{shown}");
        }
        assert!(shown.ends_with("\n[labels]\n"), "{shown}");
        assert_eq!(c.to_toml().unwrap(), text, "display left the flag set");
        // A table the user appends is not a duplicate.
        let appended = format!("{text}[security]\nallowed_host_paths = [\"/srv\"]\n");
        assert_eq!(
            Config::parse(&appended)
                .unwrap()
                .security
                .allowed_host_paths,
            [PathBuf::from("/srv")]
        );
        c.podman.stop_timeout_secs = 0;
        c.podman.replace_order = ReplaceOrder::StopFirst;
        c.security.allow_privileged = true;
        let text = c.to_toml().unwrap();
        assert!(text.contains("stop_timeout_secs = 0"), "{text}");
        assert!(text.contains("replace_order = \"stop-first\""), "{text}");
        assert!(
            text.contains("[security]\nallow_privileged = true\n"),
            "{text}"
        );
        assert!(!text.contains("allowed_devices"), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn the_update_section_has_defaults_and_is_bounded() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.update, UpdateConfig::default());
        assert_eq!(
            c.update.lock_file(),
            PathBuf::from("/run/iot-agent/update.lock")
        );
        assert_eq!(c.update.clock_sync_wait(), Duration::from_secs(300));
        assert_eq!(c.update.tick(), Duration::from_millis(1000));
        let text = format!(
            "{GOOD}[update]\nlock_dir = \"/run/locks\"\nclock_sync_wait_secs = 0\ntick_ms = 250\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.update,
            UpdateConfig {
                lock_dir: "/run/locks".into(),
                clock_sync_wait_secs: 0,
                tick_ms: 250,
            }
        );
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        assert_eq!(Config::parse(&c.to_display_toml()).unwrap(), c);
        for (setting, field) in [
            ("lock_dir = \"run\"", "update.lock_dir:"),
            (
                "clock_sync_wait_secs = 86401",
                "update.clock_sync_wait_secs:",
            ),
            ("tick_ms = 99", "update.tick_ms:"),
            ("tick_ms = 60001", "update.tick_ms:"),
        ] {
            let e = err(&format!("{GOOD}[update]\n{setting}\n"));
            assert!(e.starts_with(field), "{setting}: {e}");
        }
        let e = err(&format!("{GOOD}[update]\nlock_file = \"/x\"\n"));
        assert!(e.contains("lock_file"), "{e}");
    }

    #[test]
    fn the_secrets_section_has_defaults_and_absolute_paths() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.secrets, SecretsConfig::default());
        assert_eq!(c.secrets.key_file, None);
        assert_eq!(
            c.secrets.runtime_dir,
            PathBuf::from("/run/iot-agent-secrets")
        );
        let text = format!(
            "{GOOD}[secrets]\nkey_file = \"/etc/iot-agent/device.xk\"\nruntime_dir = \"/run/s\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.secrets,
            SecretsConfig {
                key_file: Some("/etc/iot-agent/device.xk".into()),
                runtime_dir: "/run/s".into(),
            }
        );
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        assert_eq!(Config::parse(&c.to_display_toml()).unwrap(), c);
        for (setting, field) in [
            ("key_file = \"device.xk\"", "secrets.key_file:"),
            ("runtime_dir = \"run/s\"", "secrets.runtime_dir:"),
        ] {
            let e = err(&format!("{GOOD}[secrets]\n{setting}\n"));
            assert!(e.starts_with(field), "{setting}: {e}");
        }
        let e = err(&format!("{GOOD}[secrets]\nkey = \"/x\"\n"));
        assert!(e.contains("key") && e.contains("key_file"), "{e}");
    }

    /// The exact text: only the key file is written when the runtime
    /// directory is the default; `check-config` shows both.
    #[test]
    fn the_secrets_table_golden_text() {
        let mut c = Config::new("pi-001", "/var/lib/iot-agent", vec!["nats://a:4222".into()]);
        c.secrets.key_file = Some("/etc/iot-agent/device.xk".into());
        assert_eq!(
            c.to_toml().unwrap(),
            r#"version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
heartbeat_interval_secs = 30

[nats]
urls = ["nats://a:4222"]

[nats.credentials]
type = "none"

[podman]
socket = "unix:///run/podman/podman.sock"

[secrets]
key_file = "/etc/iot-agent/device.xk"
"#
        );
        let shown = c.to_display_toml();
        assert!(
            shown.contains(
                "\n[secrets]\nkey_file = \"/etc/iot-agent/device.xk\"\nruntime_dir = \"/run/iot-agent-secrets\"\n\n[labels]\n"
            ),
            "{shown}"
        );
        c.secrets.runtime_dir = "/run/s".into();
        assert!(c.to_toml().unwrap().ends_with(
            "[secrets]\nkey_file = \"/etc/iot-agent/device.xk\"\nruntime_dir = \"/run/s\"\n"
        ));
    }

    #[test]
    fn labels_are_read_from_their_table() {
        let text = format!(
            "{GOOD}[labels]\nboard = \"rpi4\"\nsite = \"lyon\"\n\"example.com/rack\" = \"\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.labels,
            BTreeMap::from([
                ("board".to_string(), "rpi4".to_string()),
                ("example.com/rack".to_string(), String::new()),
                ("site".to_string(), "lyon".to_string()),
            ])
        );
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        assert_eq!(Config::parse(&c.to_display_toml()).unwrap(), c);
        assert!(Config::parse(GOOD).unwrap().labels.is_empty());
    }

    #[test]
    fn a_bad_label_is_refused_naming_it_and_the_rule() {
        let with = |labels: &str| format!("{GOOD}[labels]\n{labels}\n");
        let e = err(&with("\"-bad\" = \"x\""));
        assert!(
            e.starts_with("labels.\"-bad\": key must be a label key")
                && e.contains("starts and ends with a letter or digit")
                && e.contains("example.com/board"),
            "{e}"
        );
        let e = err(&with("\"Example.com/x\" = \"x\""));
        assert!(e.starts_with("labels.\"Example.com/x\": key"), "{e}");
        let e = err(&with(&format!("{} = \"x\"", "k".repeat(64))));
        assert!(e.contains("key is 64 bytes long; the limit is 63"), "{e}");
        let e = err(&with("site = \"Lyon centre\""));
        assert!(
            e.starts_with("labels.\"site\": value \"Lyon centre\" must be a label value"),
            "{e}"
        );
        let e = err(&with(&format!("site = \"{}\"", "v".repeat(64))));
        assert!(e.starts_with("labels.\"site\": value"), "{e}");
        let e = err(&with("site = 4"));
        assert!(e.contains("site") && e.contains("string"), "{e}");
    }

    #[test]
    fn at_most_the_heartbeats_labels() {
        use protocol::limits::MAX_DEVICE_LABELS;
        let labels = |n: usize| {
            (0..n)
                .map(|i| format!("l{i} = \"v\"\n"))
                .collect::<String>()
        };
        let c = Config::parse(&format!("{GOOD}[labels]\n{}", labels(MAX_DEVICE_LABELS))).unwrap();
        assert_eq!(c.labels.len(), MAX_DEVICE_LABELS);
        let e = err(&format!(
            "{GOOD}[labels]\n{}",
            labels(MAX_DEVICE_LABELS + 1)
        ));
        assert!(
            e.starts_with("labels: has 17 labels; a board declares at most 16"),
            "{e}"
        );
    }

    #[test]
    fn capabilities_are_normalised() {
        assert_eq!(normalize_capability(" cap_net_admin"), "NET_ADMIN");
        assert_eq!(normalize_capability("CHOWN"), "CHOWN");
        let ok = format!("{GOOD}[security]\nallowed_capabilities = [\"cap_net_admin\"]\n");
        Config::parse(&ok).unwrap();
        let e = err(&ok.replace("cap_net_admin", "all"));
        assert!(e.starts_with("security.allowed_capabilities[0]:"), "{e}");
    }
}
