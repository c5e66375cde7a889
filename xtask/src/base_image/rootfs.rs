//! The root filesystem of a base disk image: mmdebstrap from Debian
//! packages under qemu-user, with a customize hook (`customize.sh`), cached
//! as a tarball keyed by everything that goes into it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{BOOT_LABEL, Flavor, ROOT_LABEL, SUITE, cache_dir, tail_of};
use crate::util::{self, human, require_tool, sha256_reader};

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
pub fn packages(flavor: Flavor) -> Vec<&'static str> {
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
pub fn mmdebstrap_options(flavor: Flavor) -> Vec<String> {
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

/// The customize hook (`customize.sh`), run by mmdebstrap with the root
/// directory as `$1` after the packages are installed. Its text is part
/// of the cache key: any edit, comments included, rebuilds every cached
/// root filesystem (minutes under qemu-user).
const CUSTOMIZE_HOOK: &str = include_str!("customize.sh");

/// The customize hook for `flavor`: [`CUSTOMIZE_HOOK`] with its `@NAME@`
/// placeholders filled in.
pub fn hook_script(flavor: Flavor) -> String {
    let mut modules = INITRAMFS_MODULES.join("\n");
    if flavor != Flavor::DirectKernel {
        // Real boards also boot from USB, SATA or NVMe behind a SCSI disk
        // driver and a USB/PCIe host controller.
        for m in DISK_HOST_MODULES {
            modules.push('\n');
            modules.push_str(m);
        }
    }
    // raspi-firmware owns /etc/default/raspi-firmware, written by the hook
    // before it is installed: keep ours instead of stopping at dpkg's
    // conffile prompt.
    let apt_opts = match flavor {
        Flavor::RaspiFirmware => "-o Dpkg::Options::=--force-confold ",
        Flavor::DirectKernel | Flavor::Uefi => "",
    };
    CUSTOMIZE_HOOK
        .replace("@MODULES@", &modules)
        .replace("@ROOT_LABEL@", ROOT_LABEL)
        .replace("@BOOT_LABEL@", BOOT_LABEL)
        .replace("@APT_OPTS@", apt_opts)
        .replace("@LATE_PACKAGES@", flavor.late_packages())
        .replace("@UNSAFE_IO_CONF@", UNSAFE_IO_CONF)
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
    if !util::is_root() {
        bail!(
            "building the root filesystem needs root (mmdebstrap, chroot): run \
             `sudo -E cargo xtask base-disk-image ...`; later runs use the cache in {}",
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
