//! `cargo xtask cross-container-image`: the container image `cross` builds in, made
//! offline from Debian packages (debootstrap + `podman import`), so `cross`
//! works without a container registry. Also the environment every `cross`
//! call gets (Podman, its containers.conf, the local image).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::flags::Args;
use crate::util::{self, project_root, require_tool, workspace_target};

/// The local image's name.
pub const IMAGE: &str = "localhost/iot-cross:bookworm";

/// Help for `cargo xtask cross-container-image`.
pub const HELP: &str = "\
cargo xtask cross-container-image [--mirror URL] [--force]
    (formerly `cargo xtask cross-image`) Build the container image `cross` uses for aarch64 targets from Debian bookworm
    packages (debootstrap: gcc, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
    qemu-user-static) and import it into Podman as localhost/iot-cross:bookworm.
    No container registry is needed. Needs root (debootstrap) and Podman.
    --mirror URL   Debian mirror (default: http://deb.debian.org/debian)
    --force        rebuild even if the image exists (and re-run debootstrap)
    The root filesystem is cached as target/cross-image/rootfs-bookworm-*.tar;
    with it, a missing image is re-imported in seconds.";

const PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "ca-certificates",
];

/// Environment lines of the image: linker, runner and C compiler for both
/// aarch64 targets. musl links with rust-lld from the mounted toolchain,
/// as on the host.
const ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld"),
    (
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER",
        "qemu-aarch64-static",
    ),
    ("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc"),
    (
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    ),
    (
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
        "qemu-aarch64-static -L /usr/aarch64-linux-gnu",
    ),
    ("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc"),
    ("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar"),
];

/// The project's containers.conf, needed by Podman in sandboxes.
pub fn containers_conf() -> PathBuf {
    project_root().join("deploy/podman/containers.conf")
}

/// `podman` with the project's containers.conf (unless the caller set one).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", containers_conf());
    }
    c
}

/// Whether the local cross image exists.
pub fn image_exists() -> bool {
    util::have("podman")
        && podman()
            .args(["image", "exists", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Sets up a `cross` command: Podman as the engine, the project's
/// containers.conf, the toolchain-check workaround, and the local image for
/// `target` when it exists and none is chosen already.
pub fn cross_env(c: &mut Command, target: &str) -> Result<()> {
    let set_default = |c: &mut Command, k: &str, v: &std::ffi::OsStr| {
        if std::env::var_os(k).is_none() {
            c.env(k, v);
        }
    };
    // Podman holds the local image (and needs no daemon).
    if util::have("podman") {
        set_default(c, "CROSS_CONTAINER_ENGINE", "podman".as_ref());
    }
    set_default(c, "CONTAINERS_CONF", containers_conf().as_os_str());
    // cross 0.2.5 misreads rustup >= 1.28's "(active, default)" toolchain
    // line and refuses to start without this.
    set_default(c, "CROSS_CUSTOM_TOOLCHAIN", "1".as_ref());
    let var = format!(
        "CROSS_TARGET_{}_IMAGE",
        target.to_ascii_uppercase().replace('-', "_")
    );
    if std::env::var_os(&var).is_none() && target.starts_with("aarch64-") && image_exists() {
        c.env(&var, IMAGE);
    }
    Ok(())
}

/// `cargo xtask cross-container-image`.
pub fn cmd(mut args: Args) -> Result<()> {
    let mirror = args
        .value("--mirror")?
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let force = args.flag("--force");
    args.finish()?;
    require_tool("podman", "podman")?;
    if image_exists() && !force {
        println!("{IMAGE} exists already (pass --force to rebuild)");
        return Ok(());
    }
    let start = Instant::now();
    let work = workspace_target().join("cross-image");
    std::fs::create_dir_all(&work)?;
    // The rootfs tarball is cached under target/, keyed by what goes into
    // it, so a machine that keeps target/ but not Podman's store (CI) only
    // re-imports (seconds) instead of re-running debootstrap (minutes).
    let key =
        &util::sha256_reader(format!("bookworm {mirror} {}", PACKAGES.join(",")).as_bytes())?[..12];
    let tarball = work.join(format!("rootfs-bookworm-{key}.tar"));
    if force || !tarball.is_file() {
        debootstrap(&work, &mirror, &tarball)?;
    } else {
        eprintln!("using the cached root filesystem {}", tarball.display());
    }
    let t_rootfs = start.elapsed();
    eprintln!("importing into Podman as {IMAGE}...");
    let mut imp = podman();
    imp.arg("import");
    for (k, v) in ENV {
        imp.arg("--change").arg(format!("ENV {k}=\"{v}\""));
    }
    imp.args(["--change", "WORKDIR /"])
        .arg(&tarball)
        .arg(IMAGE)
        .stdout(Stdio::null());
    util::run(&mut imp).context(
        "podman import failed; check Podman works (CONTAINERS_CONF=deploy/podman/containers.conf)",
    )?;
    println!(
        "{IMAGE} built in {:.0} s (root filesystem {:.0} s); `cargo xtask dist --cross` and \
         `cross` (with CROSS_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_IMAGE={IMAGE}) use it",
        start.elapsed().as_secs_f64(),
        t_rootfs.as_secs_f64()
    );
    Ok(())
}

/// debootstraps the build environment and packs it into `tarball`.
fn debootstrap(work: &Path, mirror: &str, tarball: &Path) -> Result<()> {
    require_tool("debootstrap", "debootstrap")?;
    if !util::is_root() {
        bail!("debootstrap needs root: run `sudo -E cargo xtask cross-container-image`");
    }
    let rootfs = work.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("remove the old {}", rootfs.display()))?;
    }
    eprintln!(
        "debootstrap bookworm with {} (a few minutes)...",
        PACKAGES.join(",")
    );
    let log = work.join("debootstrap.log");
    let err = work.join("debootstrap.err");
    let mut c = Command::new("debootstrap");
    c.arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("bookworm")
        .arg(&rootfs)
        .arg(mirror)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&err)?);
    util::run(&mut c).with_context(|| {
        format!(
            "debootstrap failed; see {} and {}; check that {mirror} is reachable",
            log.display(),
            err.display()
        )
    })?;
    // Package caches are not needed to build and would double the size.
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = std::fs::read_dir(rootfs.join(d)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let tmp = tarball.with_extension("tar.tmp");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&tmp)
        .arg(".");
    util::run(&mut tar).context("pack the root filesystem")?;
    std::fs::rename(&tmp, tarball)?;
    let _ = std::fs::remove_dir_all(&rootfs);
    Ok(())
}
