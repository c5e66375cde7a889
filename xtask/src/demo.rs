//! `cargo xtask demo`: the whole system on this machine, on loopback only.
//! A JetStream nats-server, a Podman API service, the release agent as
//! device `demo-device`, and `deploy/examples/hello.yaml` applied with
//! `iot-operator apply`; then a request to the container's published port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::flags::Args;
use crate::util::{cargo, find_on_path, is_root, project_root, show, workspace_target};

pub const HELP: &str = "\
cargo xtask demo [--once]

Runs the platform locally, on loopback only: a JetStream nats-server with a
temporary store, a Podman API service (deploy/podman/containers.conf), the
release agent as device `demo-device` (state under target/demo/), a locally
built image (no registry), and deploy/examples/hello.yaml applied with
`iot-operator apply`. Waits until the device reports Healthy at the applied
revision, requests the published port, and prints `iot-operator status` and
`iot-operator devices`.

Ctrl-C (or --once, which exits after the check) tears everything down: the
deployment is deleted, the agent removes its container, and every process
and socket the demo started is gone.

Missing packages (nats-server, podman, runc, busybox-static) are installed
with apt-get when run as root; otherwise the command to run is printed.";

const DEVICE: &str = "demo-device";
const DEPLOYMENT: &str = "hello-web";
const IMAGE: &str = "localhost/iot-hello:1";
const HOST_PORT: u16 = 18080;
const EXAMPLE: &str = "deploy/examples/hello.yaml";
const DEVICE_LABEL: &str = "io.nationtech.iot.device";

/// (program, Debian package)
const NEEDS: &[(&str, &str)] = &[
    ("nats-server", "nats-server"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
];

pub fn cmd(mut args: Args) -> Result<()> {
    let once = args.flag("--once");
    args.finish()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the Ctrl-C handler")?;
    }

    ensure_packages()?;
    step("building the release agent and the operator");
    let bin = build()?;
    let mut demo = Demo::new(bin)?;
    let result = demo.run(once, &stop);
    step("tearing down");
    demo.teardown();
    result
}

/// The demo agent's configuration (the agent's own type and validation):
/// a fast heartbeat and a short stop grace, so the demo moves quickly.
fn demo_agent_config(
    dir: &Path,
    nats_url: &str,
    podman_socket: &Path,
) -> Result<agent_config::Config> {
    let mut c = agent_config::Config::new(DEVICE, dir.join("agent-state"), vec![nats_url.into()]);
    c.heartbeat_interval_secs = 5;
    c.podman.socket = format!("unix://{}", podman_socket.display());
    c.podman.stop_timeout_secs = 1;
    c.validate()
        .context("the demo's agent configuration is not one the agent accepts")?;
    Ok(c)
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|(prog, _)| find_on_path(prog).is_none() && !Path::new("/bin").join(prog).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() || find_on_path("apt-get").is_none() {
        bail!(
            "the demo needs {}; install them with:\n  sudo {install}",
            missing.join(", ")
        );
    }
    step(&format!("installing {}", missing.join(" ")));
    let ok = Command::new("sh")
        .args(["-c", &install])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("installing packages failed; run it yourself and retry:\n  {install}");
    }
    Ok(())
}

/// The two binaries the demo runs.
struct Bins {
    agent: PathBuf,
    operator: PathBuf,
}

/// Builds the release agent (what boards run) and the operator. The
/// operator is a debug build: its release build (fat LTO, for the agent's
/// footprint) takes minutes and changes nothing the demo shows.
fn build() -> Result<Bins> {
    for args in [
        &[
            "build",
            "--release",
            "-p",
            "agent-linux",
            "--bin",
            "iot-agent",
        ][..],
        &["build", "-p", "operator", "--bin", "iot-operator"][..],
    ] {
        let mut cmd = cargo();
        cmd.current_dir(project_root()).args(args);
        if !cmd.status().is_ok_and(|s| s.success()) {
            bail!("`{}` failed; see the compiler output above", show(&cmd));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(workspace_target);
    Ok(Bins {
        agent: target.join("release/iot-agent"),
        operator: target.join("debug/iot-operator"),
    })
}

/// Everything the demo started, stopped in reverse on teardown.
struct Demo {
    bin: Bins,
    dir: PathBuf,
    nats_url: String,
    conf: PathBuf,
    nats: Option<Child>,
    podman: Option<Child>,
    agent: Option<Child>,
    applied: bool,
}

impl Demo {
    fn new(bin: Bins) -> Result<Demo> {
        let dir = workspace_target().join("demo");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        Ok(Demo {
            bin,
            nats_url: format!("nats://127.0.0.1:{port}"),
            conf: project_root().join("deploy/podman/containers.conf"),
            dir,
            nats: None,
            podman: None,
            agent: None,
            applied: false,
        })
    }

    fn run(&mut self, once: bool, stop: &AtomicBool) -> Result<()> {
        let port = self
            .nats_url
            .rsplit(':')
            .next()
            .unwrap_or("4222")
            .to_string();
        step(&format!("starting nats-server -js on 127.0.0.1:{port}"));
        let store = self.dir.join("nats");
        self.nats = Some(
            self.spawn(
                Command::new("nats-server")
                    .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&store),
                "nats.log",
            )?,
        );
        let addr = format!("127.0.0.1:{port}");
        wait_for(
            "nats-server to listen",
            Duration::from_secs(15),
            stop,
            || Ok(TcpStream::connect(&addr).is_ok()),
        )?;
        self.operator(&["init"])?;

        let sock = self.dir.join("podman.sock");
        step(&format!(
            "starting the Podman API service on {}",
            sock.display()
        ));
        self.podman = Some(
            self.spawn(
                self.podman_cmd()
                    .args(["system", "service", "--time=0"])
                    .arg(format!("unix://{}", sock.display())),
                "podman.log",
            )?,
        );
        wait_for("the Podman socket", Duration::from_secs(30), stop, || {
            Ok(std::os::unix::net::UnixStream::connect(&sock).is_ok())
        })?;

        step(&format!(
            "building the image {IMAGE} locally (busybox httpd, no registry)"
        ));
        self.build_image()?;

        step(&format!("starting the agent as device `{DEVICE}`"));
        let config = self.dir.join("agent.toml");
        let agent = demo_agent_config(&self.dir, &self.nats_url, &sock)?;
        std::fs::write(&config, agent.to_toml()?)?;
        self.agent = Some(
            self.spawn(
                Command::new(&self.bin.agent)
                    .arg("--config")
                    .arg(&config)
                    .env("CONTAINERS_CONF", &self.conf),
                "agent.log",
            )?,
        );

        step(&format!("iot-operator apply -f {EXAMPLE}"));
        let example = project_root().join(EXAMPLE);
        let out = self.operator(&["apply", "-f", &example.to_string_lossy()])?;
        self.applied = true;
        print!("{out}");

        step("waiting for the device to report Healthy at the applied revision");
        let mut last = String::new();
        wait_for("status Healthy", Duration::from_secs(120), stop, || {
            let table = self.operator(&["status", DEPLOYMENT])?;
            let row = table
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() >= 5 && f[0] == DEPLOYMENT && f[1] == DEVICE);
            if let Some(f) = row {
                let now = format!("{} (revision {})", f[4], f[3]);
                if now != last {
                    println!("    {DEVICE}: {now}");
                    last = now;
                }
                // A PodmanV0 deployment without checks is Healthy once it runs.
                return Ok(f[4] == "Healthy" && f[2] == f[3] && f[2] != "-");
            }
            Ok(false)
        })?;

        step(&format!("GET http://127.0.0.1:{HOST_PORT}/"));
        let mut answer = String::new();
        wait_for(
            "the container to answer",
            Duration::from_secs(30),
            stop,
            || {
                answer = http_get(HOST_PORT).unwrap_or_default();
                Ok(answer.starts_with("HTTP/1."))
            },
        )?;
        for line in answer.lines() {
            println!("    {line}");
        }

        step("iot-operator status");
        print!("{}", self.operator(&["status"])?);
        step("iot-operator devices");
        print!("{}", self.operator(&["devices"])?);

        if once {
            return Ok(());
        }
        println!(
            "\nRunning. Logs in {}. Try `curl http://127.0.0.1:{HOST_PORT}/`, \
             or `{} status --nats-url {}`. Ctrl-C stops everything.",
            self.dir.display(),
            self.bin.operator.display(),
            self.nats_url
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!();
        Ok(())
    }

    /// Starts a child in its own process group (so the terminal's Ctrl-C
    /// reaches only us and we stop things in order), output to a log file.
    fn spawn(&self, cmd: &mut Command, log: &str) -> Result<Child> {
        let log = std::fs::File::create(self.dir.join(log))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start `{}`", show(cmd)))
    }

    fn podman_cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Runs `iot-operator ARGS --nats-url URL`; returns stdout.
    fn operator(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.bin.operator);
        cmd.args(args).args(["--nats-url", &self.nats_url]);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run `{}`", show(&cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                show(&cmd),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A busybox-static root filesystem serving /www/index.html, imported
    /// with `podman import`.
    fn build_image(&self) -> Result<()> {
        let busybox = find_on_path("busybox")
            .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()))
            .context("busybox is missing; install it with `apt-get install busybox-static`")?;
        let root = self.dir.join("image-root");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::copy(&busybox, root.join("bin/busybox"))?;
        for applet in ["sh", "httpd"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(
            root.join("www/index.html"),
            "Hello from demo-device: this page is served by a container the iot-agent started from a Deployment.\n",
        )?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        let stdout = tar.stdout.take().context("tar has no output")?;
        let imported = self
            .podman_cmd()
            .args(["import", "--change", "CMD [\"/bin/sh\"]", "-", IMAGE])
            .stdin(stdout)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let tarred = tar.wait().is_ok_and(|s| s.success());
        if !(imported && tarred) {
            bail!(
                "building {IMAGE} with `podman import` failed; is Podman working (`podman info`)?"
            );
        }
        Ok(())
    }

    /// Stops everything in order; safe to call after a partial start.
    fn teardown(&mut self) {
        if self.applied && self.agent.is_some() {
            let example = project_root().join(EXAMPLE);
            if self
                .operator(&["delete", "-f", &example.to_string_lossy()])
                .is_ok()
            {
                let never = AtomicBool::new(false);
                let _ = wait_for(
                    "the agent to remove its container",
                    Duration::from_secs(30),
                    &never,
                    || Ok(self.demo_containers().is_empty()),
                );
            }
        }
        for child in [self.agent.take(), self.podman.take(), self.nats.take()]
            .into_iter()
            .flatten()
        {
            stop_child(child);
        }
        // Whatever the agent could not remove (e.g. it never started).
        for id in self.demo_containers() {
            let _ = self
                .podman_cmd()
                .args(["rm", "-f", "-t", "0", &id])
                .output();
        }
        let _ = std::fs::remove_file(self.dir.join("podman.sock"));
        let _ = std::fs::remove_dir_all(self.dir.join("nats"));
        println!("    stopped: agent, Podman service, nats-server; no demo container left");
    }

    fn demo_containers(&self) -> Vec<String> {
        self.podman_cmd()
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={DEVICE_LABEL}={DEVICE}"))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn stop_child(mut child: Child) {
    // SIGTERM first so the agent and Podman exit cleanly; then make sure.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `cond` every 250 ms until true; fails after `timeout` or on Ctrl-C.
fn wait_for(
    what: &str,
    timeout: Duration,
    stop: &AtomicBool,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {}s waiting for {what}; see the logs in target/demo/",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_loads_the_demo_config() {
        let dir = Path::new("/tmp/demo");
        let c = demo_agent_config(dir, "nats://127.0.0.1:4222", &dir.join("podman.sock")).unwrap();
        let loaded = agent_config::Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(loaded, c);
        assert_eq!(
            loaded.podman_socket_path().unwrap(),
            dir.join("podman.sock")
        );
        assert_eq!(
            (
                loaded.heartbeat_interval_secs,
                loaded.podman.stop_timeout_secs
            ),
            (5, 1)
        );
    }

    /// The exact file the demo's agent reads: only what the demo changes
    /// from the agent's defaults.
    #[test]
    fn the_demo_config_has_only_its_own_settings() {
        let dir = Path::new("/tmp/demo");
        let c = demo_agent_config(dir, "nats://127.0.0.1:4222", &dir.join("podman.sock")).unwrap();
        assert_eq!(
            c.to_toml().unwrap(),
            r#"version = 1
device_id = "demo-device"
state_dir = "/tmp/demo/agent-state"
heartbeat_interval_secs = 5

[nats]
urls = ["nats://127.0.0.1:4222"]

[nats.credentials]
type = "none"

[podman]
socket = "unix:///tmp/demo/podman.sock"
stop_timeout_secs = 1
"#
        );
    }
}
