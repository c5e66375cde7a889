//! `cargo xtask base-image`: a bootable arm64 Debian bookworm image built
//! from Debian packages (mmdebstrap), with systemd, udev, dbus, Podman and
//! the kernel; for Raspberry Pi boards Debian's `raspi-firmware` boot files,
//! for UEFI boards systemd-boot. The partition layout comes from the board
//! file; filesystems are made with `mke2fs -d` and mtools straight into the
//! image file, without loop devices or mounts.
//!
//! The root filesystem tarball is cached under `target/vboard/`, keyed by
//! everything that goes into it, so a warm run only assembles the image.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::boards::{self, Board, TableKind};
use crate::flags::Args;
use crate::image::fs::{Ext4, Fat};
use crate::image::partition;
use crate::util::{self, human, require_tool, sha256_reader, workspace_target};

/// Help for `cargo xtask base-image`.
pub const HELP: &str = "\
cargo xtask base-image --board BOARD -o BASE.img [--size SIZE] [--mirror URL] [--force]
    Build a bootable arm64 Debian bookworm image for BOARD from Debian
    packages (mmdebstrap): systemd, udev, dbus, Podman (podman, crun, conmon,
    netavark, fuse-overlayfs, catatonit), the kernel with a small initramfs,
    and the boot files the board needs (qemu-virt: kernel + initrd +
    cmdline.txt on the boot partition; rpi*: Debian's raspi-firmware;
    generic-aarch64: systemd-boot on the EFI system partition). The partition
    layout is the board file's. Then bake a device into it with
    `cargo xtask image --base BASE.img ...`.
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

/// How a board boots, which decides the packages and the boot partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// qemu `-M virt` with direct kernel boot: the boot partition holds
    /// `vmlinuz`, `initrd.img` and `cmdline.txt`, read by `board-sim`.
    DirectKernel,
    /// Raspberry Pi firmware (Debian `raspi-firmware`) on an MBR FAT partition.
    RaspiFirmware,
    /// UEFI: systemd-boot on the EFI system partition (GPT).
    Uefi,
}

impl Flavor {
    /// The flavor of `board`.
    pub fn of(board: &Board) -> Result<Flavor> {
        Ok(match board.name.as_str() {
            "qemu-virt" => Flavor::DirectKernel,
            n if n.starts_with("rpi") => Flavor::RaspiFirmware,
            _ if board.layout.table == TableKind::Gpt => Flavor::Uefi,
            other => bail!(
                "board {other:?} has no known boot method for `base-image` \
                 (known: qemu-virt, rpi*, and GPT boards booting with UEFI); \
                 use your board vendor's image as --base for `cargo xtask image`"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Flavor::DirectKernel => "virt",
            Flavor::RaspiFirmware => "raspi",
            Flavor::Uefi => "uefi",
        }
    }

    /// Debian archive components: the Pi firmware is in non-free-firmware.
    fn components(self) -> &'static str {
        match self {
            Flavor::RaspiFirmware => "main,non-free-firmware",
            Flavor::DirectKernel | Flavor::Uefi => "main",
        }
    }

    /// Packages installed after everything else, in the customize hook, so
    /// the initramfs is generated once, with the small module list in place.
    fn late_packages(self) -> &'static str {
        match self {
            Flavor::DirectKernel => "linux-image-arm64",
            Flavor::RaspiFirmware => "linux-image-arm64 raspi-firmware",
            Flavor::Uefi => "linux-image-arm64 systemd-boot-efi",
        }
    }
}

/// Packages of every base image (installed by mmdebstrap itself).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "iptables",
    "procps",
    "netbase",
    "ca-certificates",
    "e2fsprogs",
    // Satisfies podman's `gnupg | gpg` with one package instead of the
    // whole GnuPG suite (dirmngr, gpg-agent, gpgsm, LDAP, ...).
    "gpg",
    "initramfs-tools",
    "busybox-static",
    "podman",
    "crun",
    "conmon",
    "netavark",
    "aardvark-dns",
    "fuse-overlayfs",
    "catatonit",
];

/// The packages of `flavor`'s base image. A virtual board talks to the
/// host's NATS in plain text (or TLS with the CA from its config), so it
/// goes without the public CA bundle, whose setup alone takes 1-3 min
/// under qemu-user (one emulated process per certificate).
fn packages(flavor: Flavor) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| flavor != Flavor::DirectKernel || *p != "ca-certificates")
        .collect()
}

/// Modules the initramfs needs to find the root filesystem. `MODULES=most`
/// takes ~16 min under qemu-user; this list takes about one. The Pi entries
/// are the SD/eMMC host drivers of the Pi 3/4/5 (missing ones are skipped).
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "ext4",
    "crc32c_generic",
    "mmc_block",
    "sdhci_iproc",
    "sdhci_brcmstb",
    "bcm2835_mmc",
    "bcm2835_sdhost",
    "nvme",
    "usb_storage",
    "uas",
];

/// dpkg configuration present only while the root filesystem is built:
/// no fsync per unpacked file (under qemu-user every syscall is slow, and a
/// failed build is thrown away anyway). The customize hook removes it.
const UNSAFE_IO_CONF: &str = "/etc/dpkg/dpkg.cfg.d/00iot-build-unsafe-io";

/// Paths dpkg never unpacks on any board: documentation, manual pages and
/// translations (fewer files to write under qemu-user, a smaller image).
/// They stay in /etc/dpkg/dpkg.cfg.d/99mmdebstrap on the board.
const PATH_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// Kernel parts a virtual board has no hardware for (GPUs, media, sound,
/// USB, wireless, physical NICs, device trees): about half of the
/// kernel's size. virtio, block, filesystems, netfilter, bridge, veth and
/// input (the power button) stay.
const VIRT_KERNEL_EXCLUDES: &[&str] = &[
    "gpu",
    "media",
    "infiniband",
    "iio",
    "staging",
    "usb",
    "bluetooth",
    "hwmon",
    "net/wireless",
    "net/ethernet",
    "net/can",
    "net/usb",
];

/// Everything passed to mmdebstrap that decides what it builds (part of the
/// cache key); the hook, the output and the mirror come on top.
fn mmdebstrap_options(flavor: Flavor) -> Vec<String> {
    let mut o: Vec<String> = [
        "--mode=root",
        // The format is otherwise guessed from the extension.
        "--format=tar",
        // Essential + apt, then our list: no `required` extras (tzdata, ...).
        "--variant=apt",
        "--architectures=arm64",
        // Merged /usr by symlinks (debootstrap's way) instead of the
        // usrmerge package, which pulls in perl and converts under qemu.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--aptopt=Acquire::Retries \"3\"",
    ]
    .map(String::from)
    .to_vec();
    o.push(format!("--components={}", flavor.components()));
    o.push(format!("--include={}", packages(flavor).join(",")));
    o.push(format!(
        "--setup-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" && echo force-unsafe-io > \"$1{UNSAFE_IO_CONF}\""
    ));
    o.extend(PATH_EXCLUDES.iter().map(|p| format!("--dpkgopt={p}")));
    if flavor == Flavor::DirectKernel {
        for dir in ["/lib/modules", "/usr/lib/modules"] {
            for d in VIRT_KERNEL_EXCLUDES {
                o.push(format!(
                    "--dpkgopt=path-exclude={dir}/*/kernel/drivers/{d}/*"
                ));
            }
            for d in ["sound", "net/wireless", "net/mac80211", "net/bluetooth"] {
                o.push(format!("--dpkgopt=path-exclude={dir}/*/kernel/{d}/*"));
            }
        }
        o.push("--dpkgopt=path-exclude=/usr/lib/linux-image-*".into());
    }
    o
}

/// Extra initramfs modules of real boards (missing ones are skipped): SCSI
/// disks (USB sticks, SATA), AHCI, xHCI, and the Pi 4's PCIe/USB glue.
const DISK_HOST_MODULES: &[&str] = &[
    "sd_mod",
    "ahci",
    "ahci_platform",
    "xhci_pci",
    "xhci_plat_hcd",
    "pcie_brcmstb",
    "reset_raspberrypi",
];

/// The customize hook, run by mmdebstrap with the root directory as `$1`
/// after the packages are installed. Part of the cache key.
fn hook_script(flavor: Flavor) -> String {
    let mut modules = INITRAMFS_MODULES.join("\n");
    if flavor != Flavor::DirectKernel {
        // Real boards also boot from USB, SATA or NVMe behind a SCSI disk
        // driver and a USB/PCIe host controller.
        for m in DISK_HOST_MODULES {
            modules.push('\n');
            modules.push_str(m);
        }
    }
    let late = flavor.late_packages();
    // raspi-firmware owns /etc/default/raspi-firmware, written above: keep
    // ours instead of stopping at dpkg's conffile prompt.
    let apt_opts = match flavor {
        Flavor::RaspiFirmware => "-o Dpkg::Options::=--force-confold ",
        Flavor::DirectKernel | Flavor::Uefi => "",
    };
    let unsafe_io = UNSAFE_IO_CONF;
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask base-image`; runs once per cached root filesystem.
set -eu
R="$1"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/boot/firmware"
cat > "$R/etc/initramfs-tools/conf.d/iot-base.conf" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
cat > "$R/etc/initramfs-tools/modules" <<'EOF'
{modules}
EOF
cat > "$R/etc/default/raspi-firmware" <<'EOF'
ROOTPART=LABEL={ROOT_LABEL}
CONSOLES="serial0,115200 tty1"
EOF
chroot "$R" apt-get install -y --no-install-recommends {apt_opts}{late}
cat > "$R/etc/fstab" <<'EOF'
LABEL={ROOT_LABEL}  /              ext4  defaults,noatime  0 1
LABEL={BOOT_LABEL}  /boot/firmware vfat  defaults,nofail,noatime,umask=0077  0 2
EOF
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
echo iot-board > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tiot-board\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
chroot "$R" systemctl enable systemd-networkd.service podman.socket
# The agent alone starts and updates containers (from its cache at boot):
# no Podman auto-update (registry polling) and no podman-restart racing it.
chroot "$R" systemctl disable podman-auto-update.timer podman-auto-update.service \
    podman-restart.service
# The agent waits for network-online; a board without a cable must still boot.
mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$R/etc/systemd/system/systemd-networkd-wait-online.service.d/timeout.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
# Each board gets its own machine id at first boot.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
# dpkg on the board syncs its writes again (see the setup hook).
rm -f "$R{unsafe_io}"
"#
    )
}

/// The mirror apt on this host uses, so the build works where only that
/// mirror is reachable.
pub fn default_mirror() -> String {
    let from_sources = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/etc/apt/sources.list")])
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter(|w| {
                    (w.starts_with("http://") || w.starts_with("https://"))
                        && w.trim_end_matches('/').ends_with("/debian")
                })
                .map(|w| w.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .next();
    from_sources.unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

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

/// `cargo xtask base-image`.
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

/// The cache key of a root filesystem: suite, mirror, packages and hook.
pub fn rootfs_key(flavor: Flavor, mirror: &str) -> Result<String> {
    let text = format!(
        "{SUITE}\n{mirror}\n{}\n{}",
        mmdebstrap_options(flavor).join("\n"),
        hook_script(flavor)
    );
    Ok(sha256_reader(text.as_bytes())?[..12].to_string())
}

/// The cached root filesystem tarball of `flavor`, built when missing.
pub fn rootfs_tarball(flavor: Flavor, mirror: &str, force: bool) -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let key = rootfs_key(flavor, mirror)?;
    let tarball = dir.join(format!("rootfs-{}-{key}.tar", flavor.name()));
    if tarball.is_file() && !force {
        eprintln!("using the cached root filesystem {}", tarball.display());
        return Ok(tarball);
    }
    mmdebstrap(flavor, mirror, &dir, &tarball)?;
    Ok(tarball)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Makes sure aarch64 binaries run through binfmt_misc (the chroot runs the
/// packages' maintainer scripts). Machines without systemd as PID 1 have
/// binfmt_misc unmounted; `update-binfmts --enable` mounts and registers it.
fn ensure_binfmt() -> Result<()> {
    let registered = || Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    if registered() {
        return Ok(());
    }
    require_tool("qemu-aarch64-static", "qemu-user-static")?;
    require_tool("update-binfmts", "binfmt-support")?;
    let _ = Command::new("update-binfmts")
        .args(["--enable", "qemu-aarch64"])
        .stdout(Stdio::null())
        .status();
    if !registered() {
        bail!(
            "aarch64 binaries cannot run here: binfmt_misc has no qemu-aarch64 entry. \
             Run `update-binfmts --enable qemu-aarch64` as root (packages qemu-user-static, binfmt-support)"
        );
    }
    Ok(())
}

fn mmdebstrap(flavor: Flavor, mirror: &str, dir: &Path, tarball: &Path) -> Result<()> {
    require_tool("mmdebstrap", "mmdebstrap")?;
    if !is_root() {
        bail!(
            "building the root filesystem needs root (mmdebstrap, chroot): run \
             `sudo -E cargo xtask base-image ...`; later runs use the cache in {}",
            dir.display()
        );
    }
    ensure_binfmt()?;
    let hook = dir.join(format!("hook-{}.sh", flavor.name()));
    std::fs::write(&hook, hook_script(flavor))?;
    let log = dir.join(format!("mmdebstrap-{}.log", flavor.name()));
    let tmp = tarball.with_extension("tar.tmp");
    let _ = std::fs::remove_file(&tmp);
    eprintln!(
        "mmdebstrap {SUITE} arm64 from {mirror} ({} packages + {}; 5-15 min; log: {})...",
        packages(flavor).len(),
        flavor.late_packages(),
        log.display()
    );
    let start = Instant::now();
    let mut c = Command::new("mmdebstrap");
    // --verbose: apt's and dpkg's output, timed line by line in the log.
    c.arg("--verbose")
        .args(mmdebstrap_options(flavor))
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(SUITE)
        .arg(&tmp)
        .arg(mirror);
    let status = run_logged(&mut c, &log).context("could not start mmdebstrap")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        let tail = tail_of(&log, 30);
        bail!(
            "mmdebstrap failed ({status}); see {}. Check that {mirror} is reachable. Last lines:\n{tail}",
            log.display()
        );
    }
    std::fs::rename(&tmp, tarball)?;
    eprintln!(
        "root filesystem cached as {} ({}, {:.0} s)",
        tarball.display(),
        human(std::fs::metadata(tarball)?.len()),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `c` with stdout and stderr going, line by line and prefixed with
/// the seconds since start, to `log`: the log then shows where a slow
/// build spends its time.
fn run_logged(c: &mut Command, log: &Path) -> Result<std::process::ExitStatus> {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    let file = Arc::new(Mutex::new(
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?,
    ));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let copy = |r: Box<dyn std::io::Read + Send>| {
        let file = Arc::clone(&file);
        std::thread::spawn(move || {
            for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                let t = start.elapsed().as_secs_f64();
                if let Ok(mut f) = file.lock() {
                    let _ = write!(f, "[{t:7.1}s] ");
                    let _ = f.write_all(&line);
                    let _ = f.write_all(b"\n");
                }
            }
        })
    };
    let threads = [
        child.stdout.take().map(|o| copy(Box::new(o))),
        child.stderr.take().map(|e| copy(Box::new(e))),
    ];
    let status = child.wait()?;
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    Ok(status)
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
        "next: cargo xtask image --board {} --base {} --device-id ID --nats-url URL -o ID.img",
        req.board.name,
        req.out.display()
    );
    Ok(())
}

/// The newest file in `dir` whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "the root filesystem has no {}/{prefix}*; rebuild it with --force",
            dir.display()
        )
    })
}

fn assemble(req: &Request, flavor: Flavor, tarball: &Path, work: &Path) -> Result<()> {
    let rootfs = work.join("rootfs");
    let bootfs = work.join("boot");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::create_dir_all(&bootfs)?;
    eprintln!("unpacking the root filesystem...");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(&rootfs)
        .args([
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "-xf",
        ])
        .arg(tarball);
    util::output(&mut tar).context("unpack the cached root filesystem (rebuild with --force)")?;

    // What goes on the boot partition.
    let boot_dir = rootfs.join("boot");
    match flavor {
        Flavor::DirectKernel | Flavor::Uefi => {
            let kernel = newest(&boot_dir, "vmlinuz-")?;
            let initrd = newest(&boot_dir, "initrd.img-")?;
            std::fs::copy(&kernel, bootfs.join("vmlinuz"))?;
            std::fs::copy(&initrd, bootfs.join("initrd.img"))?;
            let cmdline = format!(
                "root=LABEL={ROOT_LABEL} rootfstype=ext4 rootwait ro console=ttyAMA0 \
                 systemd.show_status=1\n"
            );
            if flavor == Flavor::DirectKernel {
                std::fs::write(bootfs.join("cmdline.txt"), cmdline)?;
            } else {
                let efi = rootfs.join("usr/lib/systemd/boot/efi/systemd-bootaa64.efi");
                if !efi.is_file() {
                    bail!("systemd-boot is missing from the root filesystem; rebuild with --force");
                }
                std::fs::create_dir_all(bootfs.join("EFI/BOOT"))?;
                std::fs::create_dir_all(bootfs.join("loader/entries"))?;
                std::fs::copy(&efi, bootfs.join("EFI/BOOT/BOOTAA64.EFI"))?;
                std::fs::write(
                    bootfs.join("loader/loader.conf"),
                    "default iot.conf\ntimeout 0\n",
                )?;
                std::fs::write(
                    bootfs.join("loader/entries/iot.conf"),
                    format!(
                        "title Debian {SUITE} (iot-fleet)\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}",
                        cmdline.replace("console=ttyAMA0", "console=ttyAMA0 console=tty0")
                    ),
                )?;
            }
        }
        Flavor::RaspiFirmware => {
            // raspi-firmware's hooks populated /boot/firmware; it moves to
            // the FAT partition and stays a mount point in the root.
            let fw = boot_dir.join("firmware");
            for e in std::fs::read_dir(&fw).with_context(|| format!("list {}", fw.display()))? {
                let e = e?;
                std::fs::rename(e.path(), bootfs.join(e.file_name()))?;
            }
            let cmdline = bootfs.join("cmdline.txt");
            if !cmdline.is_file() {
                std::fs::write(
                    &cmdline,
                    format!(
                        "console=serial0,115200 console=tty1 root=LABEL={ROOT_LABEL} rootfstype=ext4 rootwait fsck.repair=yes\n"
                    ),
                )?;
            }
            if !bootfs.join("config.txt").is_file() {
                bail!(
                    "raspi-firmware left no config.txt in /boot/firmware; see the mmdebstrap log in {}",
                    cache_dir().display()
                );
            }
        }
    }

    // Partition table on a sparse file.
    let sector = 512u64;
    let boot_start = FIRST_MIB << 20;
    let boot_size = BOOT_MIB << 20;
    let root_start = boot_start + boot_size;
    // GPT keeps a backup table in the last 33 sectors.
    let tail = match req.board.layout.table {
        TableKind::Gpt => 1 << 20,
        TableKind::Mbr => 0,
    };
    let root_size = (req.size - root_start - tail) & !((1 << 20) - 1);
    let _ = std::fs::remove_file(&req.out);
    if let Some(dir) = req.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f =
        std::fs::File::create(&req.out).with_context(|| format!("create {}", req.out.display()))?;
    f.set_len(req.size)?;
    drop(f);
    let (label, boot_type, root_type) = match req.board.layout.table {
        TableKind::Mbr => ("dos", "c", "83"),
        TableKind::Gpt => ("gpt", "U", "L"),
    };
    let script = format!(
        "label: {label}\nstart={}, size={}, type={boot_type}{}\nstart={}, size={}, type={root_type}\n",
        boot_start / sector,
        boot_size / sector,
        if label == "dos" { ", bootable" } else { "" },
        root_start / sector,
        root_size / sector,
    );
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(&req.out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = sf.spawn().context("could not start sfdisk")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("sfdisk stdin")?;
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sfdisk could not write the partition table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    eprintln!(
        "making the boot (FAT32, {}) and root (ext4, {}) filesystems...",
        human(boot_size),
        human(root_size)
    );
    // FAT32 of 256 MiB needs one sector per cluster, or mtools refuses it.
    let mut mkfat = Command::new("mkfs.fat");
    mkfat
        .args(["-F", "32", "-s", "1", "-n", BOOT_LABEL])
        .arg(format!("--offset={}", boot_start / sector))
        .arg(&req.out)
        .arg((boot_size / 1024).to_string());
    util::output(&mut mkfat).context("make the boot filesystem")?;
    let spec = format!("{}@@{boot_start}", req.out.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&bootfs)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    if !entries.is_empty() {
        let mut mc = Command::new("mcopy");
        mc.env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-o", "-i", &spec])
            .args(&entries)
            .arg("::/");
        util::output(&mut mc).context("copy the boot files into the FAT partition")?;
    }

    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-F", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d"])
        .arg(&rootfs)
        .arg("-E")
        .arg(format!("offset={root_start},nodiscard"))
        .arg(&req.out)
        .arg(format!("{}k", root_size / 1024));
    util::output(&mut mke2fs).context("make the root filesystem (is --size big enough?)")?;

    verify(req, flavor, boot_start, root_start)
}

/// Reads the result back: the table, the boot files, key root files.
fn verify(req: &Request, flavor: Flavor, boot_start: u64, root_start: u64) -> Result<()> {
    let table = partition::read(&req.out)?;
    if table.kind != req.board.layout.table {
        bail!(
            "verify: wrote a {} table but read {}",
            req.board.layout.table,
            table.kind
        );
    }
    let boot = table.get(1, "boot")?;
    let root = table.get(2, "root")?;
    if boot.offset != boot_start || root.offset != root_start {
        bail!("verify: partition offsets differ from what was written");
    }
    let fat = Fat::new(&req.out, boot.offset)?;
    let want_boot: &[&str] = match flavor {
        Flavor::DirectKernel => &["/vmlinuz", "/initrd.img", "/cmdline.txt"],
        Flavor::RaspiFirmware => &["/config.txt", "/cmdline.txt"],
        Flavor::Uefi => &["/EFI/BOOT/BOOTAA64.EFI", "/vmlinuz", "/initrd.img"],
    };
    for p in want_boot {
        if fat.read(p)?.is_none() {
            bail!("verify: {p} is missing from the boot partition");
        }
    }
    let ext = Ext4::new(&req.out, root.offset)?;
    for p in [
        "/usr/bin/podman",
        "/usr/lib/systemd/systemd",
        "/etc/fstab",
        "/etc/systemd/system/sockets.target.wants/podman.socket",
    ] {
        if ext.stat(p)?.is_none() {
            bail!("verify: {p} is missing from the root filesystem");
        }
    }
    eprintln!("verified the partition table, the boot files and the root filesystem");
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

    /// The image tools, or a skip (a failure under CI=true).
    fn have_image_tools() -> bool {
        let missing: Vec<&str> = ["mke2fs", "debugfs", "mkfs.fat", "mcopy", "sfdisk", "tar"]
            .into_iter()
            .filter(|t| !util::have(t))
            .collect();
        if missing.is_empty() {
            return true;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but {missing:?} are missing (e2fsprogs, dosfstools, mtools, fdisk)"
        );
        eprintln!("SKIPPED: missing {missing:?} (set CI=true to make this a failure)");
        false
    }

    /// A root filesystem tarball with what each flavor's assembly reads,
    /// instead of a Debian one (mmdebstrap takes minutes and needs root).
    fn fake_rootfs(dir: &Path, flavor: Flavor) -> PathBuf {
        let r = dir.join("fake-root");
        let file = |p: &str, text: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        file("usr/bin/podman", "podman");
        file("usr/lib/systemd/systemd", "systemd");
        file(
            "etc/fstab",
            &format!("LABEL={ROOT_LABEL} / ext4 defaults 0 1\n"),
        );
        file("boot/vmlinuz-6.1.0-9-arm64", "kernel");
        file("boot/initrd.img-6.1.0-9-arm64", "initrd");
        match flavor {
            Flavor::RaspiFirmware => {
                file("boot/firmware/config.txt", "arm_64bit=1\n");
                file("boot/firmware/start4.elf", "firmware");
                file("boot/firmware/bcm2711-rpi-4-b.dtb", "dtb");
            }
            Flavor::Uefi => file("usr/lib/systemd/boot/efi/systemd-bootaa64.efi", "efi"),
            Flavor::DirectKernel => {}
        }
        let wants = r.join("etc/systemd/system/sockets.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/podman.socket",
            wants.join("podman.socket"),
        )
        .unwrap();
        let tar = dir.join("rootfs.tar");
        util::output(
            Command::new("tar")
                .arg("-C")
                .arg(&r)
                .args(["-cf"])
                .arg(&tar)
                .arg("."),
        )
        .unwrap();
        std::fs::remove_dir_all(&r).unwrap();
        tar
    }

    /// `sfdisk --json` of `img`: (table label, [(type, bootable)]).
    fn table_of(img: &Path) -> (String, Vec<(String, bool)>) {
        let out = util::output(Command::new("sfdisk").arg("--json").arg(img)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["partitiontable"];
        let parts = t["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["type"].as_str().unwrap().to_ascii_lowercase(),
                    p["bootable"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        (t["label"].as_str().unwrap().to_string(), parts)
    }

    /// Lays out each board's image from a small fake root filesystem and
    /// reads it back: table, partition types, boot files, root files.
    #[test]
    fn boards_get_their_partition_layout_and_boot_files() {
        if !have_image_tools() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for (board, label, boot_type) in [
            ("qemu-virt", "dos", "c"),
            ("rpi4", "dos", "c"),
            (
                "generic-aarch64",
                "gpt",
                "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            ),
        ] {
            let dir = tmp.path().join(board);
            std::fs::create_dir_all(&dir).unwrap();
            let board = boards::load(board).unwrap();
            let flavor = Flavor::of(&board).unwrap();
            let tar = fake_rootfs(&dir, flavor);
            let req = Request {
                board: board.clone(),
                out: dir.join("base.img"),
                size: 320 << 20,
                mirror: String::new(),
                force: false,
            };
            // assemble() ends with verify(), which reads everything back.
            assemble(&req, flavor, &tar, &dir.join("work")).unwrap();
            let (l, parts) = table_of(&req.out);
            assert_eq!(l, label, "{}", board.name);
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].0, boot_type, "{}", board.name);
            assert_eq!(parts[0].1, label == "dos", "{}: boot flag", board.name);
            let table = partition::read(&req.out).unwrap();
            let fat = Fat::new(&req.out, table.get(1, "boot").unwrap().offset).unwrap();
            let text = |p: &str| String::from_utf8(fat.read(p).unwrap().unwrap()).unwrap();
            let root = Ext4::new(&req.out, table.get(2, "root").unwrap().offset).unwrap();
            match flavor {
                Flavor::DirectKernel => {
                    assert_eq!(text("/vmlinuz"), "kernel");
                    assert!(text("/cmdline.txt").contains("root=LABEL=iot-root"));
                }
                Flavor::RaspiFirmware => {
                    assert_eq!(text("/config.txt"), "arm_64bit=1\n");
                    assert_eq!(text("/start4.elf"), "firmware");
                    assert!(fat.read("/bcm2711-rpi-4-b.dtb").unwrap().is_some());
                    let cmdline = text("/cmdline.txt");
                    assert!(cmdline.contains("root=LABEL=iot-root"), "{cmdline}");
                    // The firmware moved to the FAT partition; its mount point stays.
                    assert!(root.stat("/boot/firmware").unwrap().is_some());
                    assert!(root.stat("/boot/firmware/config.txt").unwrap().is_none());
                }
                Flavor::Uefi => {
                    assert_eq!(text("/EFI/BOOT/BOOTAA64.EFI"), "efi");
                    assert_eq!(text("/initrd.img"), "initrd");
                    assert!(text("/loader/loader.conf").contains("default iot.conf"));
                    let entry = text("/loader/entries/iot.conf");
                    assert!(entry.contains("linux /vmlinuz"), "{entry}");
                    assert!(entry.contains("root=LABEL=iot-root"), "{entry}");
                }
            }
            assert!(root.stat("/usr/bin/podman").unwrap().is_some());
        }
    }
}
