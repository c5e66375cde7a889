//! Whole-system tests and the fleet bench: the operator's real reconcile
//! (over `operator::testing::MockApiServer`), a real `nats-server`, the
//! agent (as the real `iot-agent` process with real Podman in
//! `tests/`, as its own watch, reconciler and status writer over an
//! in-memory runtime in `benches/fleet.rs`), and the reports folded back.
//!
//! The crate exists so that neither product crate depends on the other:
//! what needs both lives here. This library holds what its tests share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use escargot::error::CargoError;

/// The `iot-agent` binary as `cargo build --workspace --locked` makes it,
/// in the target directory and profile these tests were built with; built
/// on first use, once per test process (a no-op when it is up to date).
///
/// Cargo hands `CARGO_BIN_EXE_iot-agent` only to the agent's own tests,
/// and a binary left in `target/` may be older than the sources, so the
/// tests ask Cargo (the one running them, `$CARGO`) for it:
/// - `--locked`, as `scripts/test.sh` runs everything: a test never
///   resolves other dependency versions than `Cargo.lock`'s;
/// - `--workspace` (narrowed to the one binary): dependencies get the
///   features `scripts/test.sh`'s `--workspace` builds give them, so they
///   are not built a second time with other features, and the
///   `target/<profile>/iot-agent` this leaves is the one a workspace build
///   makes (`-p agent-linux` resolved fewer features: another build of
///   several dependencies, and a different binary in that same place);
/// - the test's own target directory and profile ([`build_dirs`]): a
///   `CARGO_TARGET_DIR`, a configured `build.target-dir` or `--release`
///   is followed, instead of building a second copy in `target/debug`.
pub fn agent_binary() -> Result<&'static Path, &'static CargoError> {
    static AGENT: OnceLock<Result<escargot::CargoRun, CargoError>> = OnceLock::new();
    workspace_binary(&AGENT, "iot-agent")
}

/// The `iot-operator` binary, built as [`agent_binary`] builds the agent.
pub fn operator_binary() -> Result<&'static Path, &'static CargoError> {
    static OPERATOR: OnceLock<Result<escargot::CargoRun, CargoError>> = OnceLock::new();
    workspace_binary(&OPERATOR, "iot-operator")
}

fn workspace_binary(
    slot: &'static OnceLock<Result<escargot::CargoRun, CargoError>>,
    bin: &str,
) -> Result<&'static Path, &'static CargoError> {
    slot.get_or_init(|| {
        let build = escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .arg("--workspace")
            .arg("--locked")
            .bin(bin);
        match build_dirs() {
            Some((target_dir, profile)) => build.target_dir(target_dir).profile(profile),
            None => build.current_release(),
        }
        .run()
    })
    .as_ref()
    .map(|run| run.path())
}

/// What an agent process under test is given.
pub struct AgentSpec<'a> {
    /// The device id.
    pub device: &'a str,
    /// The nats-server's URL.
    pub nats_url: &'a str,
    /// Podman's API socket URI.
    pub podman_uri: &'a str,
    /// The `CONTAINERS_CONF` Podman needs on this machine.
    pub containers_conf: &'a Path,
    /// The board's `[labels]`.
    pub labels: &'a [(&'a str, &'a str)],
    /// Where its log goes: `None` inherits the test's stderr.
    pub log: Option<&'a Path>,
    /// Its NATS nkey seed file (`cargo xtask creds`' `<id>.nk`): `None`
    /// connects without credentials.
    pub nats_nkey: Option<&'a Path>,
    /// Its sealing key file (`cargo xtask creds`' `<id>.xk`, as baked on
    /// a board): `None` lets the agent create one at its first start.
    pub sealing_key: Option<&'a Path>,
}

/// Starts `iot-operator run` against `nats_url` and the API server of
/// `kubeconfig` (in place of the in-cluster configuration), metrics on a
/// free loopback port, `args` after those, its log (info, kube at warn)
/// into `log`.
pub fn spawn_operator(
    nats_url: &str,
    kubeconfig: &Path,
    log: &Path,
    args: &[&str],
) -> Result<Child, SpawnError> {
    let bin = operator_binary().map_err(SpawnError::Build)?;
    let metrics = format!("127.0.0.1:{}", testkit::free_port());
    Command::new(bin)
        .args(["run", "--nats-url", nats_url, "--metrics-addr", &metrics])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(SpawnError::Io)?)
        .spawn()
        .map_err(SpawnError::Io)
}

/// Why [`spawn_operator`] could not start the operator.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Cargo could not build it.
    #[error("building iot-operator")]
    Build(#[source] &'static CargoError),
    /// Its log could not be created or the process not started.
    #[error("starting iot-operator")]
    Io(#[source] std::io::Error),
}

/// Writes the agent's configuration (state under `dir`, heartbeat every
/// second) and starts `agent` (a command line: the binary, or qemu and the
/// binary) with it.
pub fn spawn_agent(agent: &[String], dir: &Path, spec: &AgentSpec<'_>) -> std::io::Result<Child> {
    let device = spec.device;
    let state = dir.join(device);
    let config = dir.join(format!("{device}.toml"));
    let credentials = match spec.nats_nkey {
        Some(seed) => format!(
            "[nats.credentials]\ntype = \"nkey\"\nseed_file = \"{}\"\n",
            seed.display()
        ),
        None => String::new(),
    };
    let mut text = format!(
        "version = 1\ndevice_id = \"{device}\"\nstate_dir = \"{}\"\nheartbeat_interval_secs = 1\n\
         [nats]\nurls = [\"{}\"]\n{credentials}[podman]\nsocket = \"{}\"\nstop_timeout_secs = 1\n",
        state.display(),
        spec.nats_url,
        spec.podman_uri
    );
    // Each board its own update-lock directory (the default, /run/iot-agent,
    // would be shared by every agent of a test and by the host), and a clock
    // trusted at once: the test machine's may never report synchronized.
    text.push_str(&format!(
        "[update]\nlock_dir = \"{}\"\nclock_sync_wait_secs = 0\n",
        lock_dir(dir, device).display()
    ));
    // Each board its sealing key (baked, or created by the agent at its
    // first start as on a board without one) and a tmpfs for what it opens.
    let key_file = spec
        .sealing_key
        .map_or_else(|| dir.join(format!("{device}.xk")), Path::to_path_buf);
    text.push_str(&format!(
        "[secrets]\nkey_file = \"{}\"\nruntime_dir = \"{}\"\n",
        key_file.display(),
        secrets_dir(device).display()
    ));
    if !spec.labels.is_empty() {
        text.push_str("[labels]\n");
        for (k, v) in spec.labels {
            text.push_str(&format!("{k:?} = {v:?}\n"));
        }
    }
    std::fs::write(&config, text)?;
    let (program, args) = agent
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty agent command line"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("CONTAINERS_CONF", spec.containers_conf)
        .env("IOT_AGENT_LOG", "info")
        .stdin(Stdio::null());
    if let Some(log) = spec.log {
        command.stderr(std::fs::File::create(log)?);
    }
    command.spawn()
}

/// The agent's `secrets.runtime_dir` for `device`: on `/dev/shm`, the
/// tmpfs every Linux machine has (the agent puts clear text only on a
/// tmpfs). The test removes it when done ([`remove_secrets_dir`]).
pub fn secrets_dir(device: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(format!("iot-e2e-{device}"))
}

/// Removes [`secrets_dir`]`(device)`, if it exists.
pub fn remove_secrets_dir(device: &str) {
    let _ = std::fs::remove_dir_all(secrets_dir(device));
}

/// The update-lock directory of the agent [`spawn_agent`] starts for
/// `device` under `dir`: a test takes `update.lock` in it to hold updates.
pub fn lock_dir(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{device}-lock"))
}

/// Polls `probe` every 200 ms until it gives `Ok`; after `wait` panics
/// naming `what`, with the last thing it saw and the end of each of `logs`
/// (newest lines first), so a failure shows what the services were doing.
pub async fn until<T, F, Fut>(what: &str, wait: Duration, logs: &[PathBuf], mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let last = loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > wait => break last,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut report = format!("{what}: not within {wait:?}; last: {last}");
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        report.push_str(&format!(
            "\n{}, newest first:\n{}",
            log.display(),
            tail.join("\n")
        ));
    }
    panic!("{report}");
}

/// A Deployment's `.status` as `kubectl get -o json` shows it (namespace
/// `default`).
pub fn kubectl_status(
    kubectl: &testkit::kubectl::Kubectl,
    name: &str,
) -> Result<serde_json::Value, String> {
    let out = kubectl
        .run(&["-n", "default", "get", "iotdeploy", name, "-o", "json"])
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(d["status"].clone())
}

/// What every whole-system test starts beside NATS: Podman with the
/// busybox image as `image`, and a kube-apiserver with our CRDs and a
/// `kubectl` for it. `None` (a skip outside CI) when one is missing.
pub async fn podman_and_apiserver(
    image: &str,
) -> Option<(
    testkit::PodmanService,
    testkit::kube::KubeApiServer,
    testkit::kubectl::Kubectl,
)> {
    let podman = testkit::PodmanService::start()?;
    let kube = testkit::kube::KubeApiServer::start().await?;
    let kubectl = testkit::kubectl::Kubectl::for_apiserver(&kube)?;
    podman.ensure_busybox_image(image);
    kube.install_crds(&testkit::repo_root().join("deploy/crd.yaml"))
        .await;
    Some((podman, kube, kubectl))
}

/// `device`'s entry in a Deployment status' `devices` (where the devices
/// that are not ready are listed), if it has one.
pub fn device_entry(status: &serde_json::Value, device: &str) -> Option<serde_json::Value> {
    status["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|e| e["device"] == device))
        .cloned()
}

/// The target directory and Cargo profile the running executable was built
/// in, from where Cargo put it: `<target-dir>/<profile-dir>/deps/<exe>`,
/// where the profile directory is `debug` for `dev` and `test`, `release`
/// for `release` and `bench`, and the profile's name for a custom one.
/// `None` when the executable is not in such a place.
fn build_dirs() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent().filter(|d| d.ends_with("deps"))?;
    let profile_dir = deps.parent()?;
    let profile = match profile_dir.file_name()?.to_str()? {
        "debug" => "dev",
        other => other,
    };
    Some((profile_dir.parent()?.to_path_buf(), profile.to_string()))
}
