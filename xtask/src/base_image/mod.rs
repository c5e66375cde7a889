//! `cargo xtask base-disk-image`: a bootable arm64 Debian bookworm image built
//! from Debian packages (mmdebstrap), with systemd, udev, dbus, Podman and
//! the kernel; for Raspberry Pi boards Debian's `raspi-firmware` boot files,
//! for UEFI boards systemd-boot. The partition layout comes from the board
//! file; filesystems are made with `mke2fs -d` and mtools straight into the
//! image file, without loop devices or mounts.
//!
//! The root filesystem tarball is cached under `target/vboard/`, keyed by
//! everything that goes into it, so a warm run only assembles the image.
//!
//! One module per job: the board's boot [`flavor`], the cached [`rootfs`]
//! (mmdebstrap and its customize hook, `customize.sh`), and [`assemble`],
//! which lays the root filesystem out as the disk image.

mod assemble;
mod flavor;
mod rootfs;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::boards::{self, Board};
use crate::flags::Args;
use crate::util::{human, require_tool, workspace_target};
use assemble::assemble;
pub use flavor::Flavor;
use rootfs::rootfs_tarball;
pub use rootfs::{default_mirror, rootfs_key};

/// Help for `cargo xtask base-disk-image`.
pub const HELP: &str = "\
cargo xtask base-disk-image --board BOARD -o BASE.img [--size SIZE] [--mirror URL] [--force]
    (formerly `cargo xtask base-image`) Build a bootable arm64 Debian
    bookworm disk image for BOARD from Debian packages (mmdebstrap):
    systemd, udev, dbus, Podman (podman, crun, conmon, netavark,
    fuse-overlayfs, catatonit), the kernel with a small initramfs, and the
    boot files the board needs (qemu-virt: kernel + initrd + cmdline.txt on
    the boot partition; rpi*: Debian's raspi-firmware; generic-aarch64:
    systemd-boot on the EFI system partition). The partition layout is the
    board file's. Then bake a device into it with
    `cargo xtask disk-image --base BASE.img ...`.
    --size SIZE    whole image size, e.g. 2G or 3072M (default 2G; the root
                   partition gets what the 256 MiB boot partition leaves)
    --mirror URL   Debian mirror (default: the host's apt mirror, else
                   http://deb.debian.org/debian)
    --force        rebuild the root filesystem even if it is cached
                   (XTASK_VBOARD_DIR=DIR moves the cache from target/vboard)
    Needs root (mmdebstrap, chroot), binfmt_misc for qemu-aarch64
    (qemu-user-static, binfmt-support), mmdebstrap, dosfstools, mtools,
    e2fsprogs, fdisk. The root filesystem is cached as
    target/vboard/rootfs-<flavor>-<key>.tar (5-15 min cold; a warm run
    takes well under a minute).";

/// Debian suite of every base image.
pub const SUITE: &str = "bookworm";

/// Label of the root filesystem (fstab and the kernel command line use it).
pub const ROOT_LABEL: &str = "iot-root";
/// Label of the boot (FAT) filesystem.
pub const BOOT_LABEL: &str = "IOT-BOOT";
/// Size of the boot partition.
const BOOT_MIB: u64 = 256;
/// First partition starts at 1 MiB (sector 2048), as every tool expects.
const FIRST_MIB: u64 = 1;

/// What to build.
pub struct Request {
    /// The board whose layout and boot method to use.
    pub board: Board,
    /// The output image.
    pub out: PathBuf,
    /// Total image size in bytes.
    pub size: u64,
    /// Debian mirror.
    pub mirror: String,
    /// Rebuild the cached root filesystem.
    pub force: bool,
}

/// Parses `2G`, `3072M`, `512MiB`, or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    let unit = t[digits.len()..].trim().to_ascii_uppercase();
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?} must be a number with an optional unit, e.g. 2G"))?;
    let mul: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => bail!("size {s:?}: unknown unit; use K, M or G (e.g. 2G)"),
    };
    n.checked_mul(mul)
        .with_context(|| format!("size {s:?} is too large"))
}

/// `cargo xtask base-disk-image`.
pub fn cmd(mut args: Args) -> Result<()> {
    let board = boards::load(&args.required("--board", "NAME (see `cargo xtask boards`)")?)?;
    let out = match args.path("--output")? {
        Some(o) => o,
        None => PathBuf::from(args.required("-o", "BASE.img")?),
    };
    let size = parse_size(&args.value("--size")?.unwrap_or_else(|| "2G".into()))?;
    let mirror = args.value("--mirror")?.unwrap_or_else(default_mirror);
    let force = args.flag("--force");
    args.finish()?;
    build(&Request {
        board,
        out,
        size,
        mirror,
        force,
    })
}

/// Where base-image and board-sim keep their caches:
/// `<workspace>/target/vboard`, whatever `CARGO_TARGET_DIR` says, or
/// `XTASK_VBOARD_DIR` (e.g. a disk with more room, or an empty directory
/// for a cold build).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("XTASK_VBOARD_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_target().join("vboard"),
    }
}

/// The last `n` lines of a text file, for error messages.
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Builds the image described by `req`.
pub fn build(req: &Request) -> Result<()> {
    let start = Instant::now();
    for (tool, pkg) in [
        ("mke2fs", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
        ("tar", "tar"),
    ] {
        require_tool(tool, pkg)?;
    }
    let flavor = Flavor::of(&req.board)?;
    let layout = &req.board.layout;
    if layout.boot.number != 1 || layout.root.number != 2 {
        bail!(
            "base-image lays out boot as partition 1 and root as partition 2; board {} \
             wants boot {} and root {}",
            req.board.name,
            layout.boot.number,
            layout.root.number
        );
    }
    let min = (FIRST_MIB + BOOT_MIB + 1024) << 20;
    if req.size < min {
        bail!(
            "--size {} is too small; give at least {}",
            human(req.size),
            human(min)
        );
    }
    let tarball = rootfs_tarball(flavor, &req.mirror, req.force)?;
    let t_rootfs = start.elapsed();

    let work = cache_dir().join(format!("work-{}", std::process::id()));
    let result = assemble(req, flavor, &tarball, &work);
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = std::fs::remove_file(&req.out);
    }
    result?;
    println!(
        "base image ready: {} ({}, board {}, Debian {SUITE}; root filesystem {:.0} s, total {:.0} s)",
        req.out.display(),
        human(req.size),
        req.board.name,
        t_rootfs.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "next: cargo xtask disk-image --board {} --base {} --device-id ID --nats-url URL -o ID.img",
        req.board.name,
        req.out.display()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("3072M").unwrap(), 3072 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("2T").unwrap_err().to_string().contains("unit"));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn every_shipped_board_has_a_flavor_and_distinct_keys() {
        use rootfs::{hook_script, mmdebstrap_options};
        for b in boards::load_all(&boards::boards_dir()).unwrap() {
            Flavor::of(&b).unwrap();
        }
        let m = "http://deb.debian.org/debian";
        let a = rootfs_key(Flavor::DirectKernel, m).unwrap();
        assert_ne!(a, rootfs_key(Flavor::RaspiFirmware, m).unwrap());
        assert_ne!(
            a,
            rootfs_key(Flavor::DirectKernel, "http://x/debian").unwrap()
        );
        assert!(hook_script(Flavor::RaspiFirmware).contains("raspi-firmware"));
        // The build options are part of the key.
        assert!(
            mmdebstrap_options(Flavor::DirectKernel).len() > mmdebstrap_options(Flavor::Uefi).len()
        );
    }
}
