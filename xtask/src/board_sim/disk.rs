//! A board's disk: the cached qemu-virt base disk image, `disk-image`'s
//! agent and identity, and what only virtual boards get (the agent's log on
//! the serial console, preloaded container images).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::base_image::{self, Flavor};
use crate::boards;
use crate::image::fs::{Ext4, Staging};
use crate::image::partition;
use crate::util;

/// Where preloaded container images live in the guest.
const PRELOAD_DIR: &str = "/var/lib/iot-preload";
const PRELOAD_UNIT: &str = "/etc/systemd/system/iot-preload.service";
const PRELOAD_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/iot-preload.service";
/// Imports the images listed in `PRELOAD_DIR/images.list`, once each.
const PRELOAD_SCRIPT: &str = include_str!("preload.sh");
/// Runs `PRELOAD_SCRIPT` before the agent starts.
const PRELOAD_UNIT_TEXT: &str = include_str!("iot-preload.service");

/// A drop-in that copies the agent's log to the serial console, so the
/// console log (a CI artifact) shows what the agent did.
const AGENT_CONSOLE_DROPIN: &str = "/etc/systemd/system/iot-agent.service.d/board-sim-console.conf";
const AGENT_CONSOLE_TEXT: &str = include_str!("agent-console.conf");

/// The cached qemu-virt base image, built on first use.
pub fn cached_base(board: &boards::Board) -> Result<PathBuf> {
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
pub fn bake_extras(disk: &Path, board: &boards::Board, images: &[(String, PathBuf)]) -> Result<()> {
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
