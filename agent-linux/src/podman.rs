//! The container runtime: a small trait ([`Runtime`]) and its one real
//! implementation, [`Podman`], a thin libpod REST client over the unix
//! socket (see `http.rs` for why not podman-api/hyper).
//!
//! Only documented libpod v4 endpoints are used; Podman 4.x and 5.x answer
//! them in the same shape.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{self, encode_query};

/// Label keys the agent puts on every container it creates.
pub mod labels {
    /// Marks containers this agent manages; value [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "io.nationtech.iot.managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "iot-agent";
    /// The device id whose agent owns the container.
    pub const DEVICE: &str = "io.nationtech.iot.device";
    /// The deployment the container belongs to.
    pub const DEPLOYMENT: &str = "io.nationtech.iot.deployment";
    /// The desired-state revision it was created for.
    pub const REVISION: &str = "io.nationtech.iot.revision";
    /// Hex of `protocol::wire::hash_of(container spec)`.
    pub const SPEC_HASH: &str = "io.nationtech.iot.spec-hash";
    /// The container's name in the score.
    pub const CONTAINER: &str = "io.nationtech.iot.container";
    /// Seconds between SIGTERM and SIGKILL when the agent stops or removes
    /// it, when the score set its own (`stopGracePeriodSeconds`).
    pub const STOP_TIMEOUT: &str = "io.nationtech.iot.stop-timeout";
}

/// A runtime failure, with the runtime's own message.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The API socket could not be reached or the connection broke.
    #[error("podman API unreachable")]
    Unreachable(#[from] io::Error),
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Podman's message.
        message: String,
    },
    /// A pull failed (reported inside a successful stream).
    #[error("pull of {image} failed: {message}")]
    Pull {
        /// The image.
        image: String,
        /// Podman's message.
        message: String,
    },
    /// An answer did not have the expected shape.
    #[error("unexpected answer from podman")]
    Protocol(#[source] serde_json::Error),
    /// A bounded call (an exec) did not finish in time.
    #[error("gave up after {0:?}")]
    Timeout(std::time::Duration),
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port in the container.
    pub container_port: u16,
    /// Port on the host.
    pub host_port: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Host address.
    pub host_ip: Option<String>,
}

/// A mount: named volume or bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A named Podman volume.
    Named {
        /// Volume name.
        name: String,
        /// Path in the container.
        dest: String,
        /// Read-only.
        read_only: bool,
    },
    /// A host directory.
    Bind {
        /// Host path.
        source: String,
        /// Path in the container.
        dest: String,
        /// Read-only.
        read_only: bool,
    },
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Container name (unique on the host).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Replaces the entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the cmd.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Environment from Podman secrets: variable -> secret name (see
    /// [`Runtime::create_secret`]).
    pub secret_env: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Mounts.
    pub mounts: Vec<MountSpec>,
    /// `always`, `on-failure` or `no`.
    pub restart_policy: &'static str,
    /// Labels, including the agent's own.
    pub labels: BTreeMap<String, String>,
    /// Seconds Podman waits after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u64,
    /// Privileged mode (only when the device's policy allows it).
    pub privileged: bool,
    /// Host network namespace.
    pub host_network: bool,
    /// Host PID namespace.
    pub host_pid: bool,
    /// Host IPC namespace.
    pub host_ipc: bool,
    /// Capabilities to add, without `CAP_`.
    pub cap_add: Vec<String>,
    /// Host device paths to pass in.
    pub devices: Vec<String>,
    /// Resource limits and process options (`PodmanV1`).
    pub run: RunOptions,
}

/// Resource limits and process options of a container; the default sets
/// none (the image's and Podman's own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Memory limit in bytes; no swap beyond it (`--memory-swap` equal to
    /// `--memory`), so the limit is what the container gets.
    pub memory_limit: Option<u64>,
    /// CPU limit in millicores, as a CFS quota per 100 ms period (`--cpus`).
    pub cpu_millis: Option<u32>,
    /// Relative CPU weight, cgroup v2 `cpu.weight` (1 to 10000), sent as
    /// the cgroup v1 shares the OCI runtimes convert back ([`cpu_shares`]).
    pub cpu_weight: Option<u16>,
    /// Most processes and threads.
    pub pids_limit: Option<u32>,
    /// `uid[:gid]` or `name[:group]`.
    pub user: Option<String>,
    /// Working directory.
    pub work_dir: Option<String>,
    /// Read-only image, with tmpfs on `/tmp`, `/run` and `/var/tmp`.
    pub read_only_root: bool,
    /// An init process as PID 1 (catatonit).
    pub init: bool,
}

/// The CFS period a CPU limit is a quota of, in microseconds (Podman's
/// `--cpus` uses the same).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup v1 `cpu.shares` (2 to 262144) that crun and runc turn into
/// cgroup v2 `cpu.weight` `weight` (1 to 10000): they compute
/// `1 + ((shares - 2) * 9999) / 262142`, so this is the smallest shares
/// that gives back exactly `weight`. Shares rather than libpod's `unified`
/// `cpu.weight` because shares work on cgroup v1 boards too.
pub fn cpu_shares(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(1, 10_000));
    2 + ((w - 1) * 262_142).div_ceil(9_999)
}

/// A registry login for a pull, as libpod's `X-Registry-Auth` header
/// carries it: base64url of Docker's auth JSON. Its `Debug` shows nothing.
pub struct RegistryAuth(zeroize::Zeroizing<String>);

impl RegistryAuth {
    /// The header for logging in to `registry` with `username` and
    /// `password`, or with the OAuth `identity_token` (libpod reads
    /// `identitytoken` and uses it instead of the password when set).
    pub fn new(registry: &str, username: &str, password: &str, identity_token: &str) -> Self {
        let json = zeroize::Zeroizing::new(
            json!({
                "username": username,
                "password": password,
                "identitytoken": identity_token,
                "serveraddress": registry,
            })
            .to_string(),
        );
        RegistryAuth(zeroize::Zeroizing::new(
            data_encoding::BASE64URL.encode(json.as_bytes()),
        ))
    }

    /// The header's value.
    pub fn header(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryAuth(..)")
    }
}

/// A container the agent manages, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Podman's state word (`running`, `exited`, `created`...).
    pub state: String,
    /// Exit code of the last run (0 when it never exited).
    pub exit_code: i32,
}

impl ManagedContainer {
    /// A label's value, empty when absent.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Runtime state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// State word: `running`, `exited`, `created`, `paused`, `dead`...
    pub status: String,
    /// Last exit code.
    pub exit_code: i32,
    /// Restarts performed by the restart policy.
    pub restart_count: u32,
    /// Podman's error for the last start, if any.
    pub error: String,
    /// Whether the kernel OOM-killed it (never set by Podman 4: see
    /// [`crate::oom`]).
    pub oom_killed: bool,
    /// When its last run ended (Podman's `FinishedAt`, as given): one
    /// death from the next.
    pub finished_at: String,
    /// When its current (or last) run started (Podman's `StartedAt`, as
    /// given): one run from the next, whoever started it.
    pub started_at: String,
    /// Its addresses on its Podman networks (none with host networking or
    /// while it is not running), for health checks.
    pub ip_addresses: Vec<std::net::IpAddr>,
}

/// How a command run in a container ([`Runtime::exec`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The command's exit code (126/127: Podman could not run it).
    pub exit_code: i32,
    /// The last [`EXEC_OUTPUT_TAIL`] bytes of its stdout and stderr, in
    /// the order written, for a failure message.
    pub output_tail: Vec<u8>,
}

/// Bytes of an exec's output kept ([`ExecOutcome::output_tail`]); the rest
/// is read and dropped, so a chatty command cannot grow the agent.
pub const EXEC_OUTPUT_TAIL: usize = 512;

/// A container event worth a status refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `died`, `oom`, `restart`, `start`, `remove`...
    pub action: String,
    /// The deployment label of the container.
    pub deployment: String,
}

/// The container runtime as the reconciler sees it.
// The agent runs on one thread (a LocalSet), so futures need not be Send.
#[allow(async_fn_in_trait)]
pub trait Runtime: 'static {
    /// The runtime's version, for the heartbeat.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Every container labelled as managed by this device's agent.
    async fn list_managed(&self, device_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError>;
    /// The managed containers of one deployment.
    async fn list_deployment(
        &self,
        device_id: &str,
        deployment: &str,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        Ok(self
            .list_managed(device_id)
            .await?
            .into_iter()
            .filter(|c| c.label(labels::DEPLOYMENT) == deployment)
            .collect())
    }
    /// The state of one container.
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// Whether an image is present locally.
    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Pulls an image, logging in with `auth` when given.
    async fn pull(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), RuntimeError>;
    /// Creates the secret `name` holding `data`, stored by the file driver
    /// under `dir` (a tmpfs); an existing one of that name is replaced.
    async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        dir: &std::path::Path,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError>;
    /// The (name, id) of the secrets whose name starts with `prefix`.
    async fn list_secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, RuntimeError>;
    /// Removes a secret (gone already counts as removed).
    async fn remove_secret(&self, name: &str) -> Result<(), RuntimeError>;
    /// Creates a container, returning its id.
    async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError>;
    /// Renames a container.
    async fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError>;
    /// Starts a container (already running counts as success).
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `stop_timeout_secs`.
    /// A container that is not running, or no longer exists, counts as
    /// stopped.
    async fn stop(&self, id: &str, stop_timeout_secs: u64) -> Result<(), RuntimeError>;
    /// Removes a container (force: a running one is stopped first, killed
    /// after `stop_timeout_secs`), in one call.
    async fn remove(&self, id: &str, stop_timeout_secs: u64) -> Result<(), RuntimeError>;
    /// Runs `command` in the running container `id` and waits for it to
    /// exit, for at most `timeout` (then [`RuntimeError::Timeout`]).
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecOutcome, RuntimeError>;
}

/// The libpod REST API on a unix socket.
#[derive(Debug, Clone)]
pub struct Podman {
    socket: PathBuf,
}

/// API version prefix: libpod v4 paths, answered by Podman 4 and 5.
const API: &str = "/v4.0.0/libpod";

impl Podman {
    /// A client for the socket at `socket` (a path, not a URI).
    pub fn new(socket: PathBuf) -> Self {
        Podman { socket }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response, RuntimeError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = http::request(
            &self.socket,
            method,
            &format!("{API}{path}"),
            body.as_deref(),
        )
        .await?;
        Ok(resp)
    }

    async fn call_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response, RuntimeError> {
        let resp = self.call(method, path, body).await?;
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(api_error(&resp))
        }
    }

    /// This device's managed containers: one deployment's, or all.
    async fn list(
        &self,
        device_id: &str,
        deployment: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "Id")]
            id: String,
            #[serde(rename = "Names", default)]
            names: Vec<String>,
            #[serde(rename = "Labels", default)]
            labels: Option<BTreeMap<String, String>>,
            #[serde(rename = "State", default)]
            state: String,
            #[serde(rename = "ExitCode", default)]
            exit_code: i32,
        }
        // Podman ANDs label filters. Filtering by deployment there rather
        // than here matters: Podman builds an entry for each container it
        // lists (state synced, ports, mounts...), so a device-wide list made
        // every apply pass cost time in proportion to the device's
        // containers (20 ms for 40 at load 4, against 3.5 ms for one).
        let mut label = vec![
            format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            format!("{}={}", labels::DEVICE, device_id),
        ];
        if let Some(d) = deployment {
            label.push(format!("{}={}", labels::DEPLOYMENT, d));
        }
        let filters = json!({ "label": label });
        let path = format!(
            "/containers/json?all=true&filters={}",
            encode_query(&filters.to_string())
        );
        let resp = self.call_ok("GET", &path, None).await?;
        let items: Vec<Item> = parse(&resp)?;
        Ok(items
            .into_iter()
            .map(|i| ManagedContainer {
                id: i.id,
                name: i.names.into_iter().next().unwrap_or_default(),
                labels: i.labels.unwrap_or_default(),
                state: i.state,
                exit_code: i.exit_code,
            })
            // Double-check, so that a filter quirk can never make us touch a
            // foreign container, or another deployment's.
            .filter(|c| {
                c.label(labels::DEVICE) == device_id
                    && c.label(labels::MANAGED_BY) == labels::MANAGED_BY_VALUE
                    && deployment.is_none_or(|d| c.label(labels::DEPLOYMENT) == d)
            })
            .collect())
    }

    /// Opens the event stream of this device's containers.
    pub async fn events(&self, device_id: &str) -> Result<EventStream, RuntimeError> {
        let filters = json!({
            "type": ["container"],
            "label": [format!("{}={}", labels::DEVICE, device_id)],
        });
        let path = format!(
            "{API}/events?stream=true&filters={}",
            encode_query(&filters.to_string())
        );
        let resp = http::open(&self.socket, "GET", &path, None).await?;
        if !(200..300).contains(&resp.status) {
            return Err(RuntimeError::Api {
                status: resp.status,
                message: "events stream refused".into(),
            });
        }
        Ok(EventStream { resp })
    }
}

/// Podman's error body: `{"cause": ..., "message": ..., "response": ...}`.
fn api_error(resp: &http::Response) -> RuntimeError {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        message: String,
        #[serde(default)]
        cause: String,
    }
    let message = match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(e) if !e.message.is_empty() => e.message,
        Ok(e) if !e.cause.is_empty() => e.cause,
        _ => resp.text(),
    };
    RuntimeError::Api {
        status: resp.status,
        message,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(resp: &http::Response) -> Result<T, RuntimeError> {
    serde_json::from_slice(&resp.body).map_err(RuntimeError::Protocol)
}

impl Runtime for Podman {
    async fn version(&self) -> Result<String, RuntimeError> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "Version")]
            version: String,
        }
        let resp = self.call_ok("GET", "/version", None).await?;
        Ok(parse::<V>(&resp)?.version)
    }

    async fn list_managed(&self, device_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.list(device_id, None).await
    }

    async fn list_deployment(
        &self,
        device_id: &str,
        deployment: &str,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.list(device_id, Some(deployment)).await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        #[derive(Deserialize)]
        struct State {
            #[serde(rename = "Status", default)]
            status: String,
            #[serde(rename = "ExitCode", default)]
            exit_code: i32,
            #[serde(rename = "Error", default)]
            error: String,
            #[serde(rename = "OOMKilled", default)]
            oom_killed: bool,
            #[serde(rename = "FinishedAt", default)]
            finished_at: String,
            #[serde(rename = "StartedAt", default)]
            started_at: String,
        }
        #[derive(Deserialize)]
        struct Network {
            #[serde(rename = "IPAddress", default)]
            ip: String,
            #[serde(rename = "GlobalIPv6Address", default)]
            ipv6: String,
        }
        #[derive(Deserialize, Default)]
        struct NetworkSettings {
            #[serde(rename = "IPAddress", default)]
            ip: String,
            #[serde(rename = "GlobalIPv6Address", default)]
            ipv6: String,
            #[serde(rename = "Networks", default)]
            networks: Option<BTreeMap<String, Network>>,
        }
        #[derive(Deserialize)]
        struct Inspect {
            #[serde(rename = "State")]
            state: State,
            #[serde(rename = "RestartCount", default)]
            restart_count: u32,
            #[serde(rename = "NetworkSettings", default)]
            network: Option<NetworkSettings>,
        }
        let resp = self
            .call_ok(
                "GET",
                &format!("/containers/{}/json", encode_query(id)),
                None,
            )
            .await?;
        let i: Inspect = parse(&resp)?;
        // The default network's address, then each network's (by name),
        // IPv4 before IPv6; empty strings are "none".
        let mut ip_addresses = Vec::new();
        let network = i.network.unwrap_or_default();
        let networks = network.networks.iter().flat_map(|n| n.values());
        let all = [&network.ip, &network.ipv6]
            .into_iter()
            .chain(networks.flat_map(|n| [&n.ip, &n.ipv6]));
        for text in all {
            if let Ok(ip) = text.parse::<std::net::IpAddr>()
                && !ip_addresses.contains(&ip)
            {
                ip_addresses.push(ip);
            }
        }
        ip_addresses.sort_by_key(std::net::IpAddr::is_ipv6);
        Ok(ContainerInfo {
            status: i.state.status,
            exit_code: i.state.exit_code,
            restart_count: i.restart_count,
            error: i.state.error,
            oom_killed: i.state.oom_killed,
            finished_at: i.state.finished_at,
            started_at: i.state.started_at,
            ip_addresses,
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let resp = self
            .call(
                "GET",
                &format!("/images/{}/exists", encode_query(image)),
                None,
            )
            .await?;
        match resp.status {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(api_error(&resp)),
        }
    }

    async fn pull(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), RuntimeError> {
        let path = format!(
            "{API}/images/pull?reference={}&policy=always&quiet=true",
            encode_query(image)
        );
        let headers: Vec<(&str, &str)> = auth
            .map(|a| ("X-Registry-Auth", a.header()))
            .into_iter()
            .collect();
        let resp = http::request_with(&self.socket, "POST", &path, &headers, None).await?;
        if !resp.is_success() {
            let e = api_error(&resp);
            return Err(RuntimeError::Pull {
                image: image.to_string(),
                message: e.to_string(),
            });
        }
        // A failed pull is a 200 whose stream carries an `error` member.
        for line in resp.body.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line)
                && let Some(err) = v.get("error").and_then(Value::as_str)
                && !err.is_empty()
            {
                return Err(RuntimeError::Pull {
                    image: image.to_string(),
                    message: err.to_string(),
                });
            }
        }
        Ok(())
    }

    async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let resp = self
            .call_ok("POST", "/containers/create", Some(&spec_generator(spec)))
            .await?;
        Ok(parse::<Created>(&resp)?.id)
    }

    async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        dir: &std::path::Path,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        // Podman 4.3 keeps a secret's name after its data is gone (the
        // tmpfs after a reboot): a fresh one replaces it.
        self.remove_secret(name).await?;
        // libpod decodes map parameters from JSON; the body is the value
        // itself, and only a non-form content type leaves it unread.
        let path = format!(
            "{API}/secrets/create?name={}&driver=file&driveropts={}&labels={}",
            encode_query(name),
            encode_query(&json!({ "path": dir.display().to_string() }).to_string()),
            encode_query(&json!(labels).to_string()),
        );
        let resp = http::request_with(
            &self.socket,
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            Some(data),
        )
        .await?;
        if resp.is_success() {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    async fn list_secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(rename = "Name", default)]
            name: String,
        }
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "ID", default)]
            id: String,
            #[serde(rename = "Spec")]
            spec: Spec,
        }
        // Podman 4.3 filters secrets by name and id only, and lists them
        // without their labels: by the name's prefix here.
        let resp = self.call_ok("GET", "/secrets/json", None).await?;
        let items: Vec<Item> = parse(&resp)?;
        Ok(items
            .into_iter()
            .filter(|i| i.spec.name.starts_with(prefix))
            .map(|i| (i.spec.name, i.id))
            .collect())
    }

    async fn remove_secret(&self, name: &str) -> Result<(), RuntimeError> {
        let resp = self
            .call("DELETE", &format!("/secrets/{}", encode_query(name)), None)
            .await?;
        if resp.is_success() || resp.status == 404 {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
        let path = format!(
            "/containers/{}/rename?name={}",
            encode_query(id),
            encode_query(new_name)
        );
        self.call_ok("POST", &path, None).await.map(|_| ())
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let resp = self
            .call(
                "POST",
                &format!("/containers/{}/start", encode_query(id)),
                None,
            )
            .await?;
        // 304: already running.
        if resp.is_success() || resp.status == 304 {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    async fn stop(&self, id: &str, stop_timeout_secs: u64) -> Result<(), RuntimeError> {
        let path = format!(
            "/containers/{}/stop?timeout={stop_timeout_secs}",
            encode_query(id)
        );
        let resp = self.call("POST", &path, None).await?;
        // 304: already stopped; 404: gone, which is as stopped as it gets.
        if resp.is_success() || resp.status == 304 || resp.status == 404 {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    async fn remove(&self, id: &str, stop_timeout_secs: u64) -> Result<(), RuntimeError> {
        let path = format!(
            "/containers/{}?force=true&timeout={stop_timeout_secs}&v=false",
            encode_query(id)
        );
        let resp = self.call("DELETE", &path, None).await?;
        if resp.is_success() || resp.status == 404 {
            Ok(())
        } else {
            Err(api_error(&resp))
        }
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        // On timeout the connection is dropped, and that is all: Podman
        // does not signal an exec'd process when its client goes away
        // (neither does Docker, and libpod has no endpoint to kill an exec
        // session), so a hung command keeps running in the container until
        // it exits by itself or the container stops; Podman then reaps it.
        // A check that hangs at every interval therefore piles up
        // processes, which is the container's problem to show, and why a
        // restart on failure is the default.
        tokio::time::timeout(timeout, self.exec_unbounded(id, command))
            .await
            .map_err(|_| RuntimeError::Timeout(timeout))?
    }
}

impl Podman {
    /// [`Runtime::exec`] without its time bound: create the exec session,
    /// start it attached, read its multiplexed output until Podman closes
    /// the connection (the process exited), then read its exit code.
    async fn exec_unbounded(
        &self,
        id: &str,
        command: &[String],
    ) -> Result<ExecOutcome, RuntimeError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        #[derive(Deserialize)]
        struct Inspect {
            #[serde(rename = "ExitCode", default)]
            exit_code: i32,
            #[serde(rename = "Running", default)]
            running: bool,
        }
        let create = json!({ "AttachStdout": true, "AttachStderr": true, "Cmd": command });
        let resp = self
            .call_ok(
                "POST",
                &format!("/containers/{}/exec", encode_query(id)),
                Some(&create),
            )
            .await?;
        let exec_id = parse::<Created>(&resp)?.id;
        let start = json!({ "Detach": false, "Tty": false }).to_string();
        let path = format!("{API}/exec/{}/start", encode_query(&exec_id));
        // Podman answers `200` (`101` when asked to upgrade) with no length,
        // then hijacks the connection: the output follows until the
        // process exits and Podman closes it.
        let mut stream = http::open(&self.socket, "POST", &path, Some(start.as_bytes())).await?;
        if !(200..300).contains(&stream.status) && stream.status != 101 {
            let body = stream.body_prefix(64 * 1024).await?;
            return Err(api_error(&http::Response {
                status: stream.status,
                body,
            }));
        }
        let mut output = ExecStream::default();
        while let Some(chunk) = stream.next_chunk().await? {
            output.feed(&chunk);
        }
        drop(stream);
        // The exit code is recorded as the stream ends; a session still
        // marked running is read again (the caller's timeout bounds this).
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let resp = self
                .call_ok(
                    "GET",
                    &format!("/exec/{}/json", encode_query(&exec_id)),
                    None,
                )
                .await?;
            let inspect: Inspect = parse(&resp)?;
            if !inspect.running {
                return Ok(ExecOutcome {
                    exit_code: inspect.exit_code,
                    output_tail: output.into_tail(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
        }
    }
}

/// Docker's multiplexed stream, as an attached exec without a TTY sends
/// it: frames of an 8-byte header (stream type: 0 stdin, 1 stdout,
/// 2 stderr; three zero bytes; the payload length, big-endian u32) and the
/// payload. Fed the bytes as they arrive, split anywhere; keeps the last
/// [`EXEC_OUTPUT_TAIL`] bytes of payload and drops the rest.
#[derive(Debug, Default)]
struct ExecStream {
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u32,
    tail: std::collections::VecDeque<u8>,
}

impl ExecStream {
    /// Takes the next bytes of the stream.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left == 0 {
                let need = 8 - self.header.len();
                let take = need.min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 8 {
                    self.left = u32::from_be_bytes([
                        self.header[4],
                        self.header[5],
                        self.header[6],
                        self.header[7],
                    ]);
                    self.header.clear();
                }
                continue;
            }
            let take = (self.left as usize).min(bytes.len());
            self.keep(&bytes[..take]);
            self.left -= take as u32;
            bytes = &bytes[take..];
        }
    }

    fn keep(&mut self, payload: &[u8]) {
        let payload = &payload[payload.len().saturating_sub(EXEC_OUTPUT_TAIL)..];
        let over = (self.tail.len() + payload.len()).saturating_sub(EXEC_OUTPUT_TAIL);
        self.tail.drain(..over);
        self.tail.extend(payload);
    }

    /// The last output bytes kept; a frame cut short by an early close
    /// counts with what arrived of it.
    fn into_tail(self) -> Vec<u8> {
        self.tail.into()
    }
}

/// The libpod SpecGenerator JSON for a container.
fn spec_generator(spec: &CreateSpec) -> Value {
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for m in &spec.mounts {
        match m {
            MountSpec::Bind {
                source,
                dest,
                read_only,
            } => {
                let mut options = vec!["rbind"];
                if *read_only {
                    options.push("ro");
                }
                mounts.push(json!({
                    "type": "bind", "source": source, "destination": dest, "options": options,
                }));
            }
            MountSpec::Named {
                name,
                dest,
                read_only,
            } => {
                let options: Vec<&str> = if *read_only { vec!["ro"] } else { vec![] };
                volumes.push(json!({ "Name": name, "Dest": dest, "Options": options }));
            }
        }
    }
    // The contract says a port without `hostPort` publishes nothing on the
    // host. Podman gives a port mapping without `host_port` a random host
    // port on every address, so such a port is only declared (`expose`, as
    // `EXPOSE` in an image), which binds nothing; its `hostIP` has nothing to
    // bind and is ignored.
    let mut ports = Vec::new();
    let mut expose = serde_json::Map::new();
    for p in &spec.ports {
        let Some(host_port) = p.host_port else {
            // One entry per port: TCP and UDP on the same port are joined
            // (libpod reads "tcp,udp"), or the second would replace the first.
            let protocols = match expose.get(&p.container_port.to_string()) {
                Some(Value::String(known)) if known.split(',').any(|k| k == p.protocol) => {
                    known.clone()
                }
                Some(Value::String(known)) => format!("{known},{}", p.protocol),
                _ => p.protocol.to_string(),
            };
            expose.insert(p.container_port.to_string(), json!(protocols));
            continue;
        };
        let mut v = json!({
            "container_port": p.container_port, "host_port": host_port, "protocol": p.protocol,
        });
        if let Some(ip) = &p.host_ip {
            v["host_ip"] = json!(ip);
        }
        ports.push(v);
    }
    let mut v = json!({
        "name": spec.name,
        "image": spec.image,
        "env": spec.env,
        "labels": spec.labels,
        "portmappings": ports,
        "mounts": mounts,
        "volumes": volumes,
        "restart_policy": spec.restart_policy,
        "stop_timeout": spec.stop_timeout_secs,
    });
    if !expose.is_empty() {
        v["expose"] = Value::Object(expose);
    }
    if !spec.secret_env.is_empty() {
        v["secret_env"] = json!(spec.secret_env);
    }
    if let Some(e) = &spec.entrypoint {
        v["entrypoint"] = json!(e);
    }
    if let Some(c) = &spec.command {
        v["command"] = json!(c);
    }
    // Set only when asked (and allowed), so ordinary specs stay minimal.
    if spec.privileged {
        v["privileged"] = json!(true);
    }
    for (set, key) in [
        (spec.host_network, "netns"),
        (spec.host_pid, "pidns"),
        (spec.host_ipc, "ipcns"),
    ] {
        if set {
            v[key] = json!({ "nsmode": "host" });
        }
    }
    if !spec.cap_add.is_empty() {
        v["cap_add"] = json!(spec.cap_add);
    }
    if !spec.devices.is_empty() {
        let devices: Vec<Value> = spec.devices.iter().map(|d| json!({ "path": d })).collect();
        v["devices"] = json!(devices);
    }
    run_options(&spec.run, &mut v);
    v
}

/// [`RunOptions`] into a SpecGenerator; nothing for what is unset.
fn run_options(run: &RunOptions, v: &mut Value) {
    let mut limits = serde_json::Map::new();
    if let Some(bytes) = run.memory_limit {
        // OCI's `swap` is memory plus swap: equal to the limit, no swap.
        limits.insert("memory".into(), json!({ "limit": bytes, "swap": bytes }));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(millis) = run.cpu_millis {
        cpu.insert(
            "quota".into(),
            json!(u64::from(millis) * CPU_PERIOD_US / 1000),
        );
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(weight) = run.cpu_weight {
        cpu.insert("shares".into(), json!(cpu_shares(weight)));
    }
    if !cpu.is_empty() {
        limits.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(pids) = run.pids_limit {
        limits.insert("pids".into(), json!({ "limit": pids }));
    }
    if !limits.is_empty() {
        v["resource_limits"] = Value::Object(limits);
    }
    if let Some(user) = &run.user {
        v["user"] = json!(user);
    }
    if let Some(dir) = &run.work_dir {
        v["work_dir"] = json!(dir);
    }
    if run.read_only_root {
        v["read_only_filesystem"] = json!(true);
        // `podman run --read-only` keeps these writable, but Podman 4.3's
        // API ignores `read_write_tmpfs` (the CLI mounts them itself), so
        // they are asked for as mounts: what the CLI sends. Newer Podman
        // skips its own for a destination already mounted.
        v["read_write_tmpfs"] = json!(true);
        if let Some(Value::Array(mounts)) = v.get_mut("mounts") {
            for dest in ["/tmp", "/var/tmp", "/run"] {
                mounts.push(json!({
                    "type": "tmpfs", "source": "tmpfs", "destination": dest,
                    "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"],
                }));
            }
        }
    }
    if run.init {
        v["init"] = json!(true);
    }
}

/// Podman's container events for one device, as they happen.
pub struct EventStream {
    resp: http::StreamingResponse,
}

impl EventStream {
    /// The next event, `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<ContainerEvent>, RuntimeError> {
        #[derive(Deserialize)]
        struct Actor {
            #[serde(rename = "Attributes", default)]
            attributes: BTreeMap<String, String>,
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(rename = "Action", default)]
            action: String,
            #[serde(rename = "Actor")]
            actor: Actor,
        }
        loop {
            let Some(line) = self.resp.next_line().await? else {
                return Ok(None);
            };
            let Ok(ev) = serde_json::from_slice::<Event>(&line) else {
                continue;
            };
            let Some(deployment) = ev.actor.attributes.get(labels::DEPLOYMENT) else {
                continue;
            };
            return Ok(Some(ContainerEvent {
                action: ev.action,
                deployment: deployment.clone(),
            }));
        }
    }
}

#[cfg(test)]
mod exec_stream_tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Split at every possible point, and one byte at a time, the frames
    /// give the same output: headers and payloads may straddle reads.
    #[test]
    fn frames_split_anywhere() {
        let mut bytes = frame(1, b"out\n");
        bytes.extend(frame(2, b"err\n"));
        bytes.extend(frame(1, b""));
        bytes.extend(frame(1, b"end"));
        for cut in 0..=bytes.len() {
            let mut s = ExecStream::default();
            s.feed(&bytes[..cut]);
            s.feed(&bytes[cut..]);
            assert_eq!(s.into_tail(), b"out\nerr\nend", "cut at {cut}");
        }
        let mut s = ExecStream::default();
        for b in &bytes {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.into_tail(), b"out\nerr\nend");
    }

    /// Only the last bytes are kept, across frames and within one big one.
    #[test]
    fn keeps_only_the_tail() {
        let mut s = ExecStream::default();
        for i in 0..1000 {
            s.feed(&frame(1, format!("line {i}\n").as_bytes()));
        }
        let tail = s.into_tail();
        assert_eq!(tail.len(), EXEC_OUTPUT_TAIL);
        assert!(tail.ends_with(b"line 999\n"));

        let mut big = vec![b'a'; 3 * EXEC_OUTPUT_TAIL];
        big.extend_from_slice(b"last");
        let mut s = ExecStream::default();
        s.feed(&frame(2, &big));
        let tail = s.into_tail();
        assert_eq!(tail.len(), EXEC_OUTPUT_TAIL);
        assert!(tail.ends_with(b"alast"));
    }

    /// A stream closed inside a header or a payload keeps what arrived.
    #[test]
    fn early_close() {
        let bytes = frame(1, b"partial payload");
        let mut s = ExecStream::default();
        s.feed(&bytes[..8 + 7]);
        assert_eq!(s.into_tail(), b"partial");
        let mut s = ExecStream::default();
        s.feed(&frame(2, b"ok"));
        s.feed(&bytes[..5]);
        assert_eq!(s.into_tail(), b"ok");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_generator_shape() {
        let spec = CreateSpec {
            name: "d_dep_web".into(),
            image: "localhost/x:1".into(),
            entrypoint: Some(vec!["httpd".into()]),
            command: None,
            env: [("A".to_string(), "1".to_string())].into(),
            secret_env: BTreeMap::new(),
            ports: vec![PortSpec {
                container_port: 80,
                host_port: Some(8080),
                protocol: "tcp",
                host_ip: None,
            }],
            mounts: vec![
                MountSpec::Named {
                    name: "data".into(),
                    dest: "/data".into(),
                    read_only: false,
                },
                MountSpec::Bind {
                    source: "/srv".into(),
                    dest: "/srv".into(),
                    read_only: true,
                },
            ],
            restart_policy: "always",
            labels: BTreeMap::new(),
            stop_timeout_secs: 2,
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            cap_add: Vec::new(),
            devices: Vec::new(),
            run: RunOptions::default(),
        };
        let v = spec_generator(&spec);
        for key in [
            "privileged",
            "netns",
            "pidns",
            "ipcns",
            "cap_add",
            "devices",
            "resource_limits",
            "user",
            "work_dir",
            "read_only_filesystem",
            "init",
        ] {
            assert!(v.get(key).is_none(), "{key} set by default");
        }
        assert_eq!(v["entrypoint"], json!(["httpd"]));
        assert!(v.get("command").is_none());
        assert_eq!(v["portmappings"][0]["host_port"], json!(8080));
        assert_eq!(v["volumes"][0]["Name"], json!("data"));
        assert_eq!(v["mounts"][0]["options"], json!(["rbind", "ro"]));
        assert_eq!(v["stop_timeout"], json!(2));
        let allowed = CreateSpec {
            privileged: true,
            host_network: true,
            cap_add: vec!["NET_ADMIN".into()],
            devices: vec!["/dev/ttyUSB0".into()],
            ..spec
        };
        let v = spec_generator(&allowed);
        assert_eq!(v["privileged"], json!(true));
        assert_eq!(v["netns"], json!({"nsmode": "host"}));
        assert!(v.get("pidns").is_none());
        assert_eq!(v["cap_add"], json!(["NET_ADMIN"]));
        assert_eq!(v["devices"], json!([{"path": "/dev/ttyUSB0"}]));
    }

    /// What crun and runc compute from the shares gives the weight back,
    /// over the whole range.
    #[test]
    fn cpu_weight_survives_the_shares_conversion() {
        for weight in 1..=10_000u16 {
            let shares = cpu_shares(weight);
            assert!((2..=262_144).contains(&shares), "{weight}: {shares}");
            assert_eq!(1 + ((shares - 2) * 9999) / 262_142, u64::from(weight));
        }
        assert_eq!(cpu_shares(100), 2598);
    }
}
