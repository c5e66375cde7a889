//! `cargo xtask board-sim`: virtual boards. Each is a `qemu-system-aarch64
//! -M virt -cpu cortex-a72` booting, with direct kernel boot, a disk made by
//! `base-disk-image --board qemu-virt` + `disk-image` with its own device
//! id. The guest network is qemu user networking with `restrict=on`: the
//! guest reaches nothing but the host's NATS port, forwarded (`guestfwd`)
//! from `10.0.2.100:4222` through a per-connection relay
//! (`board-sim-relay`, this binary) to the host's loopback. The serial console goes to a log file;
//! Ctrl-C (SIGINT/SIGTERM) powers the boards off cleanly (ACPI/GPIO power
//! button through QMP), killing them only if that does not finish in time.
//!
//! One module per job: [`options`], the board's [`disk`], the [`qemu`]
//! command line, [`qmp`] (power button), the [`console`] milestones and the
//! NATS [`relay`].

mod console;
mod disk;
mod options;
mod qemu;
mod qmp;
mod relay;

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::base_image;
use crate::boards;
use crate::flags::Args;
use crate::image;
use crate::image::payload::Identity;
use crate::util::{self, require_tool};
use console::Milestones;
use options::{Board, Options};

pub use relay::{HELP as RELAY_HELP, relay};

/// Help for `cargo xtask board-sim`.
pub const HELP: &str = "\
cargo xtask board-sim [--device-id ID]... [--nats HOST:PORT] [--reuse]
                      [--base BASE.img] [--agent PATH] [--cross]
                      [--preload NAME=TARBALL]... [--forward HOSTPORT:GUESTPORT]...
                      [--memory MIB] [--cpus N] [--dir DIR] [credentials]
    Boot virtual arm64 boards under qemu-system-aarch64 (-M virt, cortex-a72,
    direct kernel boot) that run the agent and join the fleet. Each board
    gets a disk DIR/ID/ID.img: the qemu-virt base image (built once with
    `cargo xtask base-disk-image` and cached in target/vboard/) with the agent and
    the device identity baked in by `cargo xtask disk-image`. The guest reaches
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
    what `cargo xtask base-disk-image` needs (root, mmdebstrap).";

/// The address the guest uses for NATS (qemu user networking's guestfwd).
pub const GUEST_NATS: &str = "10.0.2.100:4222";

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
            None => disk::cached_base(&board)?,
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
                    labels: [("board".to_string(), board.name.clone())].into(),
                },
                agent: Some(agent.clone()),
                cross: false,
            })?;
            disk::bake_extras(&b.disk, &board, &opts.preload)?;
        }
    }
    eprintln!("disks ready in {:.0} s", start.elapsed().as_secs_f64());
    run_boards(&opts, &board)
}

/// A booted board.
struct Running {
    board: Board,
    child: Child,
    console: Milestones,
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
        let boot = qemu::boot_files(b, board)?;
        let _ = std::fs::remove_file(&b.qmp);
        // The previous boot's console stays beside the new one.
        if b.console.is_file() {
            std::fs::rename(&b.console, b.dir.join("console.prev.log"))?;
        }
        let mut c = qemu::command(opts, b, &boot, &exe);
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
            console: Milestones::new(&b.id, b.console.clone()),
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
            r.console.report();
            if stop_now && r.asked_off.is_none() {
                println!("{}: powering off...", r.board.id);
                if let Err(e) = qmp::powerdown(&r.board.qmp) {
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
                r.console.report();
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
