//! `cargo xtask board-sim`: virtual boards. Each is a `qemu-system-aarch64
//! -M virt -cpu cortex-a72` booting, with direct kernel boot, a disk made by
//! `base-image --board qemu-virt` + `image` with its own device id. The guest
//! network is qemu user networking with `restrict=on`: the guest reaches
//! nothing but the host's NATS port, forwarded (`guestfwd`) from
//! `10.0.2.100:4222` through a per-connection relay (`board-sim-relay`, this
//! binary) to the host's loopback. The serial console goes to a log file;
//! Ctrl-C (SIGINT/SIGTERM) powers the boards off cleanly (ACPI/GPIO power
//! button through QMP), killing them only if that does not finish in time.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::base_image::{self, Flavor};
use crate::boards::{self, Which};
use crate::flags::Args;
use crate::image::fs::{Ext4, Fat, Staging};
use crate::image::payload::{Credentials, Identity};
use crate::image::{self, partition};
use crate::util::{self, require_tool};

/// Help for `cargo xtask board-sim`.
pub const HELP: &str = "\
cargo xtask board-sim [--device-id ID]... [--nats HOST:PORT] [--reuse]
                      [--base BASE.img] [--agent PATH] [--cross]
                      [--preload NAME=TARBALL]... [--forward HOSTPORT:GUESTPORT]...
                      [--memory MIB] [--cpus N] [--dir DIR] [credentials]
    Boot virtual arm64 boards under qemu-system-aarch64 (-M virt, cortex-a72,
    direct kernel boot) that run the agent and join the fleet. Each board
    gets a disk DIR/ID/ID.img: the qemu-virt base image (built once with
    `cargo xtask base-image` and cached in target/vboard/) with the agent and
    the device identity baked in by `cargo xtask image`. The guest reaches
    only the host's NATS (HOST:PORT, default 127.0.0.1:4222) as
    nats://10.0.2.100:4222. The serial console is logged to DIR/ID/console.log
    (the previous boot's in console.prev.log). Ctrl-C powers the boards off
    cleanly; the disks stay for --reuse.
    --device-id ID        one board per id (default vboard-1); repeat for several
    --nats HOST:PORT      the host's NATS server the boards connect to
    --reuse               boot the existing disks again (state kept: agent cache,
                          Podman images and containers)
    --base BASE.img       a qemu-virt base image instead of the cached one
    --agent PATH          an aarch64 agent binary instead of `cargo xtask dist`
    --preload NAME=TAR    bake a container image tarball into the disk; it is
                          imported into the guest's Podman as NAME at boot
                          (before the agent starts): `podman load` for an
                          OCI/docker archive, else `podman import` of a rootfs tar
    --forward H:G         forward 127.0.0.1:H on the host to port G of the guest
                          (one board only), e.g. to reach a published port
    --memory MIB          guest memory (default 1024)
    --cpus N              guest CPUs (default 2)
    --dir DIR             where disks and logs go (default target/vboard/boards)
    --timeout-secs N      power off after N seconds (default: run until Ctrl-C)
    Needs qemu-system-aarch64 (qemu-system-arm), and for the first base image
    what `cargo xtask base-image` needs (root, mmdebstrap).";

/// The address the guest uses for NATS (qemu user networking's guestfwd).
pub const GUEST_NATS: &str = "10.0.2.100:4222";

/// Where preloaded container images live in the guest.
const PRELOAD_DIR: &str = "/var/lib/iot-preload";
const PRELOAD_UNIT: &str = "/etc/systemd/system/iot-preload.service";
const PRELOAD_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/iot-preload.service";

/// A drop-in that copies the agent's log to the serial console, so the
/// console log (a CI artifact) shows what the agent did.
const AGENT_CONSOLE_DROPIN: &str = "/etc/systemd/system/iot-agent.service.d/board-sim-console.conf";
const AGENT_CONSOLE_TEXT: &str = "\
# Written by `cargo xtask board-sim`: the agent's log also goes to the console.
[Service]
StandardOutput=journal+console
StandardError=journal+console
";

const PRELOAD_SCRIPT: &str = r#"#!/bin/sh
# Written by `cargo xtask board-sim --preload`: imports the container images
# baked into this disk into Podman, once each. A marker beside each tarball
# records the import, so later boots start no Podman process here (each
# costs seconds under emulation).
set -eu
cd /var/lib/iot-preload
while read -r name file how; do
  [ -n "$name" ] || continue
  if [ -e "$file.done" ]; then
    echo "iot-preload: $name present"
    continue
  fi
  if [ "$how" = load ]; then
    podman load -i "$file"
  else
    podman import "$file" "$name"
  fi
  : > "$file.done"
  echo "iot-preload: ${how}ed $name"
done < images.list
"#;

const PRELOAD_UNIT_TEXT: &str = "\
[Unit]
Description=Import the container images baked into this disk (board-sim --preload)
After=local-fs.target
Before=iot-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /var/lib/iot-preload/import.sh
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

/// One board to boot.
#[derive(Debug, Clone)]
struct Board {
    id: String,
    dir: PathBuf,
    disk: PathBuf,
    console: PathBuf,
    qmp: PathBuf,
}

/// Everything `board-sim` was asked for.
struct Options {
    boards: Vec<Board>,
    nats: String,
    reuse: bool,
    base: Option<PathBuf>,
    agent: Option<PathBuf>,
    cross: bool,
    preload: Vec<(String, PathBuf)>,
    forward: Vec<(u16, u16)>,
    memory: u32,
    cpus: u32,
    credentials: Credentials,
    timeout: Option<Duration>,
}

fn parse_forward(s: &str) -> Result<(u16, u16)> {
    let (h, g) = s
        .split_once(':')
        .with_context(|| format!("--forward {s:?} must be HOSTPORT:GUESTPORT, e.g. 8080:80"))?;
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("--forward {s:?}: {p:?} is not a port (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

fn parse_preload(s: &str) -> Result<(String, PathBuf)> {
    let (name, file) = s.split_once('=').with_context(|| {
        format!("--preload {s:?} must be NAME=TARBALL, e.g. localhost/web:1=web.tar")
    })?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("--preload {s:?}: the image name must be non-empty, without spaces or quotes");
    }
    let file = PathBuf::from(file);
    if !file.is_file() {
        bail!(
            "--preload {s:?}: {} does not exist (make it with `podman save` or a rootfs `tar`)",
            file.display()
        );
    }
    Ok((name.to_string(), file))
}

impl Options {
    fn from_args(args: &mut Args) -> Result<Options> {
        let mut ids = args.values("--device-id")?;
        if ids.is_empty() {
            ids.push("vboard-1".into());
        }
        let dir = args
            .path("--dir")?
            .unwrap_or_else(|| base_image::cache_dir().join("boards"));
        let mut boards = Vec::new();
        for id in ids {
            protocol::keys::validate_device_id(&id)
                .map_err(|e| anyhow::anyhow!("--device-id {id:?}: {e}"))?;
            if boards.iter().any(|b: &Board| b.id == id) {
                bail!("--device-id {id:?} is given twice; each board needs its own id");
            }
            let d = dir.join(&id);
            boards.push(Board {
                disk: d.join(format!("{id}.img")),
                console: d.join("console.log"),
                qmp: d.join("qmp.sock"),
                dir: d,
                id,
            });
        }
        let nats = args
            .value("--nats")?
            .unwrap_or_else(|| "127.0.0.1:4222".into());
        nats.parse::<SocketAddr>().with_context(|| {
            format!("--nats {nats:?} must be IP:PORT of the host's NATS, e.g. 127.0.0.1:4222")
        })?;
        let forward = args
            .values("--forward")?
            .iter()
            .map(|s| parse_forward(s))
            .collect::<Result<Vec<_>>>()?;
        if !forward.is_empty() && boards.len() > 1 {
            bail!("--forward works with one board only (host ports cannot be shared)");
        }
        let preload = args
            .values("--preload")?
            .iter()
            .map(|s| parse_preload(s))
            .collect::<Result<Vec<_>>>()?;
        let num = |args: &mut Args, name: &str, default: u32, max: u32| -> Result<u32> {
            match args.value(name)? {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .with_context(|| format!("{name} {v:?} must be a number from 1 to {max}")),
            }
        };
        let memory = num(args, "--memory", 1024, 65536)?;
        let cpus = num(args, "--cpus", 2, 16)?;
        let timeout = match args.value("--timeout-secs")? {
            None => None,
            Some(v) => Some(Duration::from_secs(v.parse().with_context(|| {
                format!("--timeout-secs {v:?} must be a number of seconds")
            })?)),
        };
        Ok(Options {
            boards,
            nats,
            reuse: args.flag("--reuse"),
            base: args.path("--base")?,
            agent: args.path("--agent")?,
            cross: args.flag("--cross"),
            preload,
            forward,
            memory,
            cpus,
            credentials: Credentials::from_args(args)?,
            timeout,
        })
    }
}

/// `cargo xtask board-sim`.
pub fn cmd(mut args: Args) -> Result<()> {
    let opts = Options::from_args(&mut args)?;
    args.finish()?;
    require_tool("qemu-system-aarch64", "qemu-system-arm")?;
    let start = Instant::now();
    let board = boards::load("qemu-virt")?;
    if opts.reuse {
        for b in &opts.boards {
            if !b.disk.is_file() {
                bail!(
                    "--reuse: {} does not exist; run board-sim once without --reuse to make it",
                    b.disk.display()
                );
            }
        }
    } else {
        let base = match &opts.base {
            Some(b) => b.clone(),
            None => cached_base(&board)?,
        };
        let agent = match &opts.agent {
            Some(a) => a.clone(),
            None => crate::dist::build_for_board(&board, opts.cross)?.binary,
        };
        for b in &opts.boards {
            std::fs::create_dir_all(&b.dir)
                .with_context(|| format!("create {}", b.dir.display()))?;
            image::build(&image::Request {
                board: board.clone(),
                base: base.clone(),
                out: b.disk.clone(),
                identity: Identity {
                    device_id: b.id.clone(),
                    hostname: b.id.to_ascii_lowercase().replace('_', "-"),
                    nats_urls: vec![format!("nats://{GUEST_NATS}")],
                    credentials: opts.credentials.clone(),
                },
                agent: Some(agent.clone()),
                cross: false,
            })?;
            bake_extras(&b.disk, &board, &opts.preload)?;
        }
    }
    eprintln!("disks ready in {:.0} s", start.elapsed().as_secs_f64());
    run_boards(&opts, &board)
}

/// The cached qemu-virt base image, built on first use.
fn cached_base(board: &boards::Board) -> Result<PathBuf> {
    let mirror =
        std::env::var("XTASK_DEBIAN_MIRROR").unwrap_or_else(|_| base_image::default_mirror());
    let key = base_image::rootfs_key(Flavor::of(board)?, &mirror)?;
    let path = base_image::cache_dir().join(format!("base-{}-{key}.img", board.name));
    if path.is_file() {
        eprintln!("using the cached base image {}", path.display());
        return Ok(path);
    }
    let tmp = path.with_extension("img.tmp");
    base_image::build(&base_image::Request {
        board: board.clone(),
        out: tmp.clone(),
        size: 2 << 30,
        mirror,
        force: false,
    })?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Writes what only virtual boards get: the agent's log on the console,
/// and the preloaded images with their import script and enabled unit.
fn bake_extras(disk: &Path, board: &boards::Board, images: &[(String, PathBuf)]) -> Result<()> {
    let table = partition::read(disk)?;
    let root = Ext4::new(disk, table.get(board.layout.root.number, "root")?.offset)?;
    let parent = disk.parent().unwrap_or(Path::new("."));
    let mut stage = Staging::new(parent)?;
    root.mkdir_p("/etc/systemd/system/iot-agent.service.d", 0o755)?;
    root.put(
        AGENT_CONSOLE_DROPIN,
        &stage.file(AGENT_CONSOLE_TEXT.as_bytes())?,
        0o644,
    )?;
    if images.is_empty() {
        return Ok(());
    }
    root.mkdir_p(PRELOAD_DIR, 0o700)?;
    root.mkdir_p("/etc/systemd/system/multi-user.target.wants", 0o755)?;
    let mut list = String::new();
    for (i, (name, file)) in images.iter().enumerate() {
        let in_guest = format!("image-{i}.tar");
        eprintln!("baking {} as {name}...", file.display());
        root.put(&format!("{PRELOAD_DIR}/{in_guest}"), file, 0o600)?;
        let how = if is_image_archive(file)? {
            "load"
        } else {
            "import"
        };
        list.push_str(&format!("{name} {in_guest} {how}\n"));
    }
    root.put(
        &format!("{PRELOAD_DIR}/images.list"),
        &stage.file(list.as_bytes())?,
        0o600,
    )?;
    root.put(
        &format!("{PRELOAD_DIR}/import.sh"),
        &stage.file(PRELOAD_SCRIPT.as_bytes())?,
        0o700,
    )?;
    root.put(
        PRELOAD_UNIT,
        &stage.file(PRELOAD_UNIT_TEXT.as_bytes())?,
        0o644,
    )?;
    root.symlink(PRELOAD_WANTS, PRELOAD_UNIT)?;
    let back = root.read(&format!("{PRELOAD_DIR}/images.list"))?;
    if back.as_deref() != Some(list.as_bytes()) {
        bail!("verify: {PRELOAD_DIR}/images.list differs from what was written");
    }
    Ok(())
}

/// Whether `tarball` is an OCI or docker archive (`podman save`), which
/// the guest loads, rather than a root filesystem, which it imports.
/// Decided here, so the guest does not list the tarball at every boot.
fn is_image_archive(tarball: &Path) -> Result<bool> {
    let out = util::output(Command::new("tar").arg("-tf").arg(tarball))
        .with_context(|| format!("--preload {}: not a tar archive", tarball.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| matches!(l.trim_start_matches("./"), "manifest.json" | "index.json")))
}

/// Kernel, initrd and command line, read from the disk's boot partition.
struct Boot {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn boot_files(b: &Board, board: &boards::Board) -> Result<Boot> {
    let table = partition::read(&b.disk)?;
    let fat = Fat::new(&b.disk, table.get(board.layout.boot.number, "boot")?.offset)?;
    let get = |name: &str| -> Result<Vec<u8>> {
        fat.read(name)?.with_context(|| {
            format!(
                "{} has no {name} on its boot partition; is it made by `cargo xtask base-image --board qemu-virt`?",
                b.disk.display()
            )
        })
    };
    let kernel = b.dir.join("vmlinuz");
    let initrd = b.dir.join("initrd.img");
    std::fs::write(&kernel, get("/vmlinuz")?)?;
    std::fs::write(&initrd, get("/initrd.img")?)?;
    let cmdline_path = match &board.cmdline.file {
        Some((Which::Boot, p)) => p.clone(),
        _ => "/cmdline.txt".into(),
    };
    let cmdline = String::from_utf8_lossy(&get(&cmdline_path)?)
        .trim()
        .to_string();
    Ok(Boot {
        kernel,
        initrd,
        cmdline,
    })
}

/// A stable, locally administered MAC per device id.
fn mac_for(id: &str) -> String {
    let h = util::sha256_reader(id.as_bytes()).unwrap_or_default();
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// The qemu command line of one board.
fn qemu_command(opts: &Options, b: &Board, boot: &Boot, exe: &Path) -> Command {
    // qemu option values escape a comma by doubling it.
    let esc = |p: &Path| p.display().to_string().replace(',', ",,");
    let (gip, gport) = GUEST_NATS.split_once(':').unwrap_or(("10.0.2.100", "4222"));
    let mut netdev = format!(
        "user,id=n0,restrict=on,guestfwd=tcp:{gip}:{gport}-cmd:{} board-sim-relay {}",
        esc(exe),
        opts.nats
    );
    for (h, g) in &opts.forward {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-M", "virt", "-cpu", "cortex-a72"])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-m", &opts.memory.to_string()])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .arg("-append")
        .arg(&boot.cmdline)
        .arg("-drive")
        .arg(format!("if=none,id=hd0,format=raw,file={}", esc(&b.disk)))
        .args(["-device", "virtio-blk-pci,drive=hd0"])
        .args(["-netdev", &netdev])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", mac_for(&b.id)))
        .args(["-device", "virtio-rng-pci"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", esc(&b.console)))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", esc(&b.qmp)))
        .stdin(Stdio::null());
    c
}

/// Asks the guest to power off (the power button, through QMP).
fn powerdown(qmp: &Path) -> Result<()> {
    let mut s = UnixStream::connect(qmp).with_context(|| format!("connect {}", qmp.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    for req in [
        r#"{"execute":"qmp_capabilities"}"#,
        r#"{"execute":"system_powerdown"}"#,
    ] {
        s.write_all(req.as_bytes())?;
        s.write_all(b"\n")?;
        line.clear();
        r.read_line(&mut line)?;
        if line.contains("\"error\"") {
            bail!("qmp {req}: {line}");
        }
    }
    Ok(())
}

/// Milestones worth a line on the terminal, found in the console log.
const MILESTONES: &[(&str, &str)] = &[
    ("Linux version", "kernel started"),
    ("Welcome to", "systemd started"),
    ("iot-preload: ", "preloaded images imported"),
    ("starting as device", "agent started"),
    (
        "deployment(s) from the cache",
        "agent restoring deployments from its cache",
    ),
    ("nats: connected", "agent connected to NATS"),
    (
        "desired state in sync",
        "agent in sync with the desired state",
    ),
    ("reboot: Power down", "powered off"),
];

struct Running {
    board: Board,
    child: Child,
    seen: usize,
    started: Instant,
    asked_off: Option<Instant>,
}

fn run_boards(opts: &Options, board: &boards::Board) -> Result<()> {
    let exe = std::env::current_exe().context("find the xtask binary for the NATS relay")?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let mut running = Vec::new();
    for b in &opts.boards {
        let boot = boot_files(b, board)?;
        let _ = std::fs::remove_file(&b.qmp);
        // The previous boot's console stays beside the new one.
        if b.console.is_file() {
            std::fs::rename(&b.console, b.dir.join("console.prev.log"))?;
        }
        let mut c = qemu_command(opts, b, &boot, &exe);
        // Its own process group: Ctrl-C reaches board-sim, which powers
        // the guest off, instead of killing qemu mid-write.
        c.process_group(0);
        let log = std::fs::File::create(b.dir.join("qemu.log"))?;
        c.stdout(log.try_clone()?).stderr(log);
        let child = c
            .spawn()
            .with_context(|| format!("start `{}`", util::show(&c)))?;
        println!(
            "{}: booting (qemu pid {}, console {}, NATS {} as nats://{GUEST_NATS})",
            b.id,
            child.id(),
            b.console.display(),
            opts.nats
        );
        running.push(Running {
            board: b.clone(),
            child,
            seen: 0,
            started: Instant::now(),
            asked_off: None,
        });
    }
    let began = Instant::now();
    let mut failed = Vec::new();
    while !running.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
        let stop_now =
            stop.load(Ordering::Relaxed) || opts.timeout.is_some_and(|t| began.elapsed() >= t);
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            report_milestones(r);
            if stop_now && r.asked_off.is_none() {
                println!("{}: powering off...", r.board.id);
                if let Err(e) = powerdown(&r.board.qmp) {
                    eprintln!(
                        "{}: clean power-off failed ({e:#}); killing qemu",
                        r.board.id
                    );
                    let _ = r.child.kill();
                }
                r.asked_off = Some(Instant::now());
            }
            if r.asked_off
                .is_some_and(|t| t.elapsed() > Duration::from_secs(120))
            {
                eprintln!(
                    "{}: no power-off after 120 s; killing qemu (see {})",
                    r.board.id,
                    r.board.console.display()
                );
                let _ = r.child.kill();
            }
            if let Some(status) = r.child.try_wait()? {
                report_milestones(r);
                println!(
                    "{}: qemu exited ({status}) after {:.0} s; console log {}",
                    r.board.id,
                    r.started.elapsed().as_secs_f64(),
                    r.board.console.display()
                );
                if !status.success() {
                    failed.push(r.board.id.clone());
                    let qlog = r.board.dir.join("qemu.log");
                    eprintln!("{}", base_image::tail_of(&qlog, 20));
                }
                running.remove(i);
            } else {
                i += 1;
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "qemu failed for {}; see qemu.log and console.log in their directories",
            failed.join(", ")
        );
    }
    Ok(())
}

fn report_milestones(r: &mut Running) {
    let Ok(mut f) = std::fs::File::open(&r.board.console) else {
        return;
    };
    let mut text = Vec::new();
    if f.read_to_end(&mut text).is_err() {
        return;
    }
    let text = strip_ansi(&String::from_utf8_lossy(&text));
    while let Some((needle, what)) = MILESTONES.get(r.seen) {
        if !text.contains(needle) {
            // Milestones are ordered; later ones may still show first
            // (e.g. no preload), so skip those that never come.
            if MILESTONES[r.seen + 1..]
                .iter()
                .any(|(n, _)| text.contains(n))
            {
                r.seen += 1;
                continue;
            }
            return;
        }
        println!(
            "{}: {what} ({:.0} s)",
            r.board.id,
            r.started.elapsed().as_secs_f64()
        );
        r.seen += 1;
    }
}

/// The console text without terminal colour sequences (`ESC [ ... m`),
/// which systemd puts inside unit names.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `xtask board-sim-relay HOST:PORT`: what qemu runs for each guest
/// connection to the NATS address. stdin/stdout (and stderr) are the guest's
/// connection, so this prints nothing, not even an error (the guest would
/// read it as NATS protocol); it ends when either side closes.
pub fn relay(args: Vec<String>) -> Result<()> {
    // NATS down: closing the connection is the whole answer.
    let _ = relay_inner(&args);
    Ok(())
}

fn relay_inner(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .context("usage: xtask board-sim-relay HOST:PORT (run by qemu)")?;
    let up = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let down = up.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut up = up;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
        let _ = tx.send(());
    });
    std::thread::spawn(move || {
        let mut down = down;
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match down.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx2.send(());
    });
    let _ = rx.recv();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<Options> {
        let mut a = Args::new(
            "board-sim",
            s.split_whitespace().map(String::from).collect(),
        );
        let o = Options::from_args(&mut a)?;
        a.finish()?;
        Ok(o)
    }

    #[test]
    fn options_parse_and_bad_ones_say_what_to_do() {
        let o = opts("--device-id a --device-id b --nats 127.0.0.1:5000 --cpus 1").unwrap();
        assert_eq!(o.boards.len(), 2);
        assert_eq!(o.boards[1].disk.file_name().unwrap(), "b.img");
        assert_eq!(o.nats, "127.0.0.1:5000");
        assert_eq!(opts("").unwrap().boards[0].id, "vboard-1");
        let err = |s: &str| format!("{:#}", opts(s).err().unwrap());
        assert!(err("--device-id a.b").contains("'.'"));
        assert!(err("--device-id a --device-id a").contains("twice"));
        assert!(err("--nats localhost").contains("IP:PORT"));
        assert!(err("--forward 8080").contains("HOSTPORT:GUESTPORT"));
        assert!(err("--device-id a --device-id b --forward 1:2").contains("one board"));
        assert!(err("--preload x").contains("NAME=TARBALL"));
        assert!(err("--preload x=/nonexistent.tar").contains("does not exist"));
        assert!(err("--memory 0").contains("--memory"));
    }

    #[test]
    fn qemu_gets_restricted_net_direct_boot_and_a_console_log() {
        let o = opts("--device-id v1 --nats 127.0.0.1:4999 --forward 18080:8080").unwrap();
        let boot = Boot {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "root=LABEL=iot-root console=ttyAMA0".into(),
        };
        let c = qemu_command(&o, &o.boards[0], &boot, Path::new("/x/xtask"));
        let line = util::show(&c);
        for want in [
            "-M virt -cpu cortex-a72",
            "-kernel /k -initrd /i -append root=LABEL=iot-root console=ttyAMA0",
            "restrict=on,guestfwd=tcp:10.0.2.100:4222-cmd:/x/xtask board-sim-relay 127.0.0.1:4999",
            "hostfwd=tcp:127.0.0.1:18080-:8080",
            "console.log",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert_ne!(mac_for("a"), mac_for("b"));
        assert_eq!(
            strip_ansi(
                "[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39miot-agent.service\u{1b}[0m"
            ),
            "[  OK  ] Started iot-agent.service"
        );
    }
}
