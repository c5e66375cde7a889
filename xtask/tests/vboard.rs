//! The virtual board, end to end (issue 9). Heavy and opt-in: ignored by
//! default, run by `scripts/vboard-acceptance.sh` (`cargo test -p xtask
//! --test vboard -- --ignored --nocapture`).
//!
//! A real nats-server on loopback; `cargo xtask base-disk-image --board
//! qemu-virt`; `cargo xtask board-sim` boots `vboard-1` under
//! qemu-system-aarch64 with a busybox web image baked into its disk. Then:
//! heartbeat -> apply (Running, page served from the guest) -> update
//! (replaced) -> delete (removed) -> apply again -> clean power-off -> boot
//! again with NATS stopped: the workload comes back from the agent's
//! on-device cache -> NATS back: Running reported again.
//!
//! Outside CI it skips when qemu-system-aarch64 or mmdebstrap is missing;
//! under `CI=true` that is a failure. The console log is kept (its path is
//! printed; its tail is printed on failure). Every wait is on a condition
//! with a timeout; the phase timings are printed at the end.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEVICE: &str = "vboard-1";
const DEPLOYMENT: &str = "vboard-web";
const IMAGE: &str = "localhost/vboard-web:1";

/// Generous: everything in the guest runs under TCG on a loaded CI machine.
const BOOT: Duration = Duration::from_secs(900);
const STEP: Duration = Duration::from_secs(420);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target"),
    }
}

/// `iot-operator`: `IOT_OPERATOR_BIN`, else built here.
fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IOT_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ok(Command::new(cargo).current_dir(workspace()).args([
        "build",
        "-p",
        "operator",
        "--bin",
        "iot-operator",
    ]));
    cargo_target_dir().join("debug/iot-operator")
}

/// Phase timings, printed at the end (and on failure, up to where it got).
struct Timings {
    start: Instant,
    phase: Instant,
    rows: Vec<(String, Duration)>,
}

impl Timings {
    fn new() -> Timings {
        Timings {
            start: Instant::now(),
            phase: Instant::now(),
            rows: Vec::new(),
        }
    }

    fn done(&mut self, what: &str) {
        let d = self.phase.elapsed();
        eprintln!("== phase done: {what} in {:.1} s", d.as_secs_f64());
        self.rows.push((what.to_string(), d));
        self.phase = Instant::now();
    }

    fn table(&self) -> String {
        let mut s = String::from("vboard acceptance timings:\n");
        for (what, d) in &self.rows {
            s.push_str(&format!("  {:>7.1} s  {what}\n", d.as_secs_f64()));
        }
        s.push_str(&format!(
            "  {:>7.1} s  total\n",
            self.start.elapsed().as_secs_f64()
        ));
        s
    }
}

/// A running `cargo xtask board-sim`, powered off (SIGTERM -> clean
/// power-off) or killed on drop.
struct Sim {
    child: Option<Child>,
}

impl Sim {
    fn start(args: &[String], log: PathBuf) -> Sim {
        let out = std::fs::File::create(&log).unwrap();
        let child = xtask()
            .arg("board-sim")
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Sim { child: Some(child) }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Clean power-off through board-sim's SIGTERM handling; true when
    /// board-sim exited successfully within `timeout`.
    fn power_off(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let ok = wait_for(timeout, || child.try_wait().unwrap().is_some());
        if !ok {
            let _ = child.kill();
        }
        ok && child.wait().unwrap().success()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.power_off(Duration::from_secs(60));
        }
    }
}

/// Polls `cond` every half second until true or `timeout`.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vboard\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

/// The `iot-operator status` row of (deployment, device), split on spaces.
fn status_row(op: &Path, nats_url: &str) -> Option<Vec<String>> {
    let out = Command::new(op)
        .args(["status", DEPLOYMENT])
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|w| {
            w.first().map(String::as_str) == Some(DEPLOYMENT)
                && w.get(1).map(String::as_str) == Some(DEVICE)
        })
}

/// Waits until the status row says `phase` with the reported revision equal
/// to the desired one; returns that revision.
fn wait_phase(op: &Path, nats_url: &str, phase: &str, timeout: Duration) -> Option<String> {
    let mut last = None;
    let ok = wait_for(timeout, || {
        last = status_row(op, nats_url);
        last.as_ref()
            .is_some_and(|w| w.len() >= 5 && w[4] == phase && w[2] == w[3] && w[2] != "-")
    });
    if !ok {
        eprintln!("last status row: {last:?}");
        return None;
    }
    last.map(|w| w[2].clone())
}

fn write_manifest(path: &Path, greeting: &str) {
    std::fs::write(
        path,
        format!(
            r#"apiVersion: iot.nationtech.io/v1alpha1
kind: Deployment
metadata:
  name: {DEPLOYMENT}
  namespace: default
spec:
  targetDevices: [{DEVICE}]
  rollout:
    strategy: AllAtOnce
  score:
    type: PodmanV0
    data:
      containers:
        - name: web
          image: {IMAGE}
          command: ["/bin/sh", "-c", "echo \"$GREETING\" > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
          env:
            - {{name: GREETING, value: {greeting}}}
          ports:
            - {{containerPort: 8080, hostPort: 8080}}
          restartPolicy: Always
          pullPolicy: Never
"#
        ),
    )
    .unwrap();
}

fn operator(op: &Path, nats_url: &str, args: &[&str]) {
    ok(Command::new(op)
        .args(args)
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null()));
}

/// The heartbeat of DEVICE, decoded: (arch, podman version).
fn heartbeat(rt: &tokio::runtime::Runtime, nats_url: &str) -> Option<(String, String)> {
    rt.block_on(async {
        let client = async_nats::connect(nats_url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let kv = js
            .get_key_value(protocol::keys::DEVICE_HEARTBEAT_BUCKET)
            .await
            .ok()?;
        let v = kv.get(DEVICE).await.ok()??;
        let hb = protocol::wire::decode::<protocol::Heartbeat<'_>>(&v).ok()?;
        Some((
            hb.arch.as_str().to_string(),
            hb.podman_version.as_str().to_string(),
        ))
    })
}

/// A container image for the guest: arm64 busybox-static taken from the
/// base image itself, as a rootfs tarball (`podman import` in the guest).
fn web_image_tar(base: &Path, dir: &Path) -> PathBuf {
    let table = String::from_utf8(
        ok(Command::new("sfdisk").args(["--json"]).arg(base))
            .stdout
            .clone(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&table).unwrap();
    let root_start = v["partitiontable"]["partitions"][1]["start"]
        .as_u64()
        .unwrap()
        * 512;
    let root = dir.join("web-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    let busybox = root.join("bin/busybox");
    ok(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /usr/bin/busybox {}", busybox.display()))
        .arg(format!("{}?offset={root_start}", base.display())));
    assert!(
        std::fs::metadata(&busybox)
            .map(|m| m.len() > 100_000)
            .unwrap_or(false),
        "no /usr/bin/busybox in the base image (busybox-static)"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&busybox, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let tar = dir.join("web.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("."));
    std::fs::remove_dir_all(&root).unwrap();
    tar
}

fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read(path).unwrap_or_default();
    let t = String::from_utf8_lossy(&t);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints where the logs are, and their tails when the test fails.
struct Logs {
    console: PathBuf,
    sim_logs: Vec<PathBuf>,
    timings: Timings,
}

impl Drop for Logs {
    fn drop(&mut self) {
        eprintln!("{}", self.timings.table());
        eprintln!("console log: {}", self.console.display());
        if std::thread::panicking() {
            for l in &self.sim_logs {
                eprintln!("--- tail of {}\n{}", l.display(), tail(l, 40));
            }
            eprintln!(
                "--- tail of the console log {}\n{}",
                self.console.display(),
                tail(&self.console, 80)
            );
        }
    }
}

#[test]
#[ignore = "heavy (qemu-system-aarch64, mmdebstrap): run by scripts/vboard-acceptance.sh"]
fn virtual_board_joins_the_fleet_and_runs_offline_from_its_cache() {
    let tools = [
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mke2fs", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        })
        .map(|(t, p)| format!("{t} (package {p})"))
        .collect();
    if !missing.is_empty() {
        let what = format!(
            "the virtual-board test needs {}; scripts/vboard-acceptance.sh installs them (as root)",
            missing.join(", ")
        );
        testkit::missing::<()>(&what);
        return;
    }
    let Some(mut nats) = testkit::NatsServer::start() else {
        return;
    };
    let nats_url = nats.url();
    let work = workspace().join("target/vboard/acceptance");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let boards = work.join("boards");
    let console = boards.join(DEVICE).join("console.log");
    let mut logs = Logs {
        console: console.clone(),
        sim_logs: Vec::new(),
        timings: Timings::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Build: operator, base image (mmdebstrap, cached), the web image.
    let op = operator_bin();
    operator(&op, &nats_url, &["init"]);
    let base = work.join("base.img");
    ok(xtask()
        .args(["base-disk-image", "--board", "qemu-virt", "-o"])
        .arg(&base));
    let web = web_image_tar(&base, &work);
    logs.timings
        .done("build base image (+ operator, web image tar)");

    let http_port = testkit::free_port();
    let mut args: Vec<String> = vec![
        "--device-id".into(),
        DEVICE.into(),
        "--nats".into(),
        format!("127.0.0.1:{}", nats.port()),
        "--dir".into(),
        boards.display().to_string(),
        "--forward".into(),
        format!("{http_port}:8080"),
    ];
    let mut first = args.clone();
    first.extend([
        "--base".into(),
        base.display().to_string(),
        "--preload".into(),
        format!("{IMAGE}={}", web.display()),
    ]);
    if let Some(agent) = std::env::var_os("VBOARD_AGENT") {
        first.extend(["--agent".into(), agent.to_string_lossy().into_owned()]);
    }
    let log1 = work.join("board-sim-1.log");
    logs.sim_logs.push(log1.clone());
    let mut sim = Sim::start(&first, log1);
    eprintln!("console log: {}", console.display());

    // Boot: the heartbeat of vboard-1 appears, from aarch64 with Podman.
    let mut hb = None;
    assert!(
        wait_for(BOOT, || {
            assert!(!sim.exited(), "board-sim exited before the heartbeat");
            hb = heartbeat(&rt, &nats_url);
            hb.is_some()
        }),
        "no heartbeat from {DEVICE}"
    );
    let (arch, podman) = hb.unwrap();
    assert_eq!(arch, "aarch64");
    assert!(!podman.is_empty(), "the guest agent cannot reach Podman");
    // The board has its own disk by now; the base image only costs disk
    // space (CI machines have little).
    std::fs::remove_file(&base).unwrap();
    logs.timings.done("disk + boot until the first heartbeat");

    // Apply -> Running, the page is served from the guest.
    let manifest = work.join("web.yaml");
    write_manifest(&manifest, "hello-1");
    operator(&op, &nats_url, &["apply", "-f", manifest.to_str().unwrap()]);
    let rev1 = wait_phase(&op, &nats_url, "Healthy", STEP).expect("Healthy after apply");
    assert!(
        wait_for(STEP, || http_get(http_port)
            .is_some_and(|b| b.contains("hello-1"))),
        "the guest does not serve hello-1 on 127.0.0.1:{http_port}"
    );
    logs.timings.done("apply -> Healthy and serving");

    // Update -> the container is replaced (new revision, new page).
    write_manifest(&manifest, "hello-2");
    operator(&op, &nats_url, &["apply", "-f", manifest.to_str().unwrap()]);
    let rev2 = wait_phase(&op, &nats_url, "Healthy", STEP).expect("Healthy after update");
    assert_ne!(rev1, rev2, "the update must change the revision");
    assert!(
        wait_for(STEP, || http_get(http_port)
            .is_some_and(|b| b.contains("hello-2"))),
        "the guest does not serve hello-2 after the update"
    );
    logs.timings.done("update -> replaced");

    // Delete -> removed (status Removed, nothing listens any more).
    operator(
        &op,
        &nats_url,
        &["delete", "-f", manifest.to_str().unwrap()],
    );
    assert!(
        wait_for(STEP, || {
            let row = status_row(&op, &nats_url);
            let removed = row
                .as_ref()
                .is_none_or(|w| w.iter().any(|c| c == "Removed"));
            removed && http_get(http_port).is_none()
        }),
        "the deployment was not removed: {:?}",
        status_row(&op, &nats_url)
    );
    logs.timings.done("delete -> removed");

    // Apply again, then power off cleanly.
    write_manifest(&manifest, "hello-3");
    operator(&op, &nats_url, &["apply", "-f", manifest.to_str().unwrap()]);
    let rev3 = wait_phase(&op, &nats_url, "Healthy", STEP).expect("Healthy after re-apply");
    assert!(
        wait_for(STEP, || http_get(http_port)
            .is_some_and(|b| b.contains("hello-3"))),
        "the guest does not serve hello-3"
    );
    logs.timings.done("apply again -> Healthy");
    assert!(
        sim.power_off(Duration::from_secs(180)),
        "board-sim did not power the board off cleanly"
    );
    assert!(
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("reboot: Power down"),
        "the guest did not power down cleanly"
    );
    logs.timings.done("clean power-off");

    // NATS down; boot the same disk: the workload comes back from the cache.
    nats.stop();
    args.push("--reuse".into());
    let log2 = work.join("board-sim-2.log");
    logs.sim_logs.push(log2.clone());
    let mut sim = Sim::start(&args, log2);
    assert!(
        wait_for(BOOT, || {
            assert!(!sim.exited(), "board-sim exited during the offline boot");
            http_get(http_port).is_some_and(|b| b.contains("hello-3"))
        }),
        "after a reboot without NATS the workload did not come back"
    );
    // The agent brought it back (the base image leaves podman-restart off).
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        text.contains("restoring 1 deployment(s) from the cache"),
        "the agent did not restore the deployment from its cache"
    );
    logs.timings
        .done("offline reboot -> workload back from the cache");

    // NATS back: the agent reconnects and reports the same revision Running.
    nats.restart();
    let rev = wait_phase(&op, &nats_url, "Healthy", BOOT).expect("Healthy after NATS returns");
    assert_eq!(rev, rev3);
    logs.timings.done("NATS back -> Healthy reported");
    assert!(
        sim.power_off(Duration::from_secs(180)),
        "board-sim did not power the board off cleanly"
    );
    logs.timings.done("clean power-off");
    // Passed: the logs stay, the disk and its boot files go.
    let dir = boards.join(DEVICE);
    for f in [
        format!("{DEVICE}.img"),
        "vmlinuz".into(),
        "initrd.img".into(),
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}
