//! `cargo xtask dist`: a release build of the agent for a board's target,
//! stripped, copied to `target/dist/<board>/` with its sha256. Builds with
//! `cross` when asked, else with cargo, the rustup target and the linker
//! from `.cargo/config.toml`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boards::{self, Board};
use crate::flags::Args;
use crate::util::{self, cargo, human, project_root, sha256_file, workspace_target};
use crate::{cross_image, elf};

/// Help for `cargo xtask dist`.
pub const HELP: &str = "\
cargo xtask dist (--board BOARD | --target TRIPLE) [--cross]
    Release build of the agent (iot-agent) for the board's Rust target,
    stripped, into target/dist/<board or triple>/ with iot-agent.sha256.
    --cross   build inside a container with the `cross` tool (also when
              XTASK_CROSS=1); uses target/tools/bin/cross or cross on PATH,
              Podman, and the local image from `cargo xtask cross-container-image`
              when it exists.";

/// A built, copied binary.
pub struct Dist {
    /// The binary under `target/dist/<name>/`.
    pub binary: PathBuf,
}

/// `cargo xtask dist`.
pub fn cmd(mut args: Args) -> Result<()> {
    let board = args.value("--board")?;
    let target = args.value("--target")?;
    let cross = args.flag("--cross");
    args.finish()?;
    match (board, target) {
        (Some(b), None) => build_for_board(&boards::load(&b)?, cross).map(drop),
        (None, Some(t)) => build_agent(&t, &t, cross).map(drop),
        _ => {
            bail!("give exactly one of --board BOARD (see `cargo xtask boards`) or --target TRIPLE")
        }
    }
}

/// Whether `cross` is configured on (`XTASK_CROSS=1`).
pub fn cross_configured() -> bool {
    std::env::var("XTASK_CROSS").is_ok_and(|v| v == "1" || v == "true")
}

/// Builds the agent for `board` into `target/dist/<board>/`.
pub fn build_for_board(board: &Board, cross: bool) -> Result<Dist> {
    build_agent(&board.target, &board.name, cross)
}

/// Builds the agent for `target` into `target/dist/<dir_name>/`.
pub fn build_agent(target: &str, dir_name: &str, cross: bool) -> Result<Dist> {
    let built = build_binary("agent-linux", "iot-agent", target, cross)?;
    let dir = workspace_target().join("dist").join(dir_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let binary = dir.join("iot-agent");
    // Copy to a temporary name and rename, so a reader never sees half a file.
    let tmp = dir.join(".iot-agent.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copy {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &binary)?;
    let sha256 = sha256_file(&binary)?;
    std::fs::write(
        dir.join("iot-agent.sha256"),
        format!("{sha256}  iot-agent\n"),
    )?;
    println!(
        "{} ({}, {target}, sha256 {sha256})",
        binary.display(),
        human(std::fs::metadata(&binary)?.len())
    );
    Ok(Dist { binary })
}

/// The cargo target directory builds go to: `CARGO_TARGET_DIR` (made
/// absolute) or `<workspace>/target`.
pub fn cargo_target_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => std::env::current_dir()?.join(d),
        None => workspace_target(),
    })
}

/// `cross` from `target/tools/bin` (where `.ci/run` installs it) or PATH.
pub fn find_cross() -> Option<PathBuf> {
    let local = workspace_target().join("tools/bin/cross");
    if local.is_file() {
        return Some(local);
    }
    util::find_on_path("cross")
}

/// Fails with the fix when the Rust standard library for `target` is absent.
fn check_target_installed(target: &str) -> Result<()> {
    let out = util::output(
        Command::new("rustc")
            .current_dir(project_root())
            .args(["--print", "sysroot"]),
    )?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
    {
        bail!(
            "the Rust target {target} is not installed for this toolchain; run \
             `rustup target add {target}` (or list it in rust-toolchain.toml), or build with --cross"
        );
    }
    Ok(())
}

/// Points cc-rs at Debian's cross gcc for `target` (for C dependencies such
/// as ring), unless the caller chose a compiler. Rust code still links with
/// the linker from `.cargo/config.toml`.
fn c_cross_compiler(c: &mut Command, target: &str) {
    let arch = target.split('-').next().unwrap_or_default();
    let prefix = match arch {
        "aarch64" if std::env::consts::ARCH != "aarch64" => "aarch64-linux-gnu-",
        // A native musl target: cc-rs looks for `<arch>-linux-musl-gcc`,
        // which Debian does not ship; ring's C code builds fine with the
        // host gcc (no libc headers involved).
        a if a == std::env::consts::ARCH && target.ends_with("-musl") => "",
        _ => return,
    };
    let t = target.replace('-', "_");
    for (var, tool) in [("CC", "gcc"), ("AR", "ar")] {
        let var = format!("{var}_{t}");
        let tool = format!("{prefix}{tool}");
        if std::env::var_os(&var).is_none() && util::have(&tool) {
            c.env(var, tool);
        }
    }
}

/// Release-builds binary `bin` of `package` for `target`; returns its path
/// in the cargo target directory, after checking its architecture.
pub fn build_binary(package: &str, bin: &str, target: &str, cross: bool) -> Result<PathBuf> {
    let target_dir = cargo_target_dir()?;
    let use_cross = cross || cross_configured();
    let mut c = if use_cross {
        let path = find_cross().context(
            "`cross` is not installed; install it with \
             `cargo install cross --version 0.2.5 --locked --root target/tools`, or drop --cross",
        )?;
        let mut c = Command::new(path);
        cross_image::cross_env(&mut c, target)?;
        c
    } else {
        check_target_installed(target)?;
        let mut c = cargo();
        c_cross_compiler(&mut c, target);
        c
    };
    c.current_dir(project_root())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        // The release profile strips already; say so here too so a changed
        // profile cannot ship symbols to a board.
        .args(["--config", "profile.release.strip=true"]);
    eprintln!("building {bin} for {target}: {}", util::show(&c));
    util::run(&mut c).with_context(|| {
        if use_cross {
            "the cross build failed; without a registry run `cargo xtask cross-container-image` first, \
             and check Podman works with CONTAINERS_CONF=deploy/podman/containers.conf"
                .to_string()
        } else {
            format!(
                "the build failed; if the target is missing run `rustup target add {target}`; \
                 C dependencies (ring) need a C cross compiler: `apt-get install \
                 gcc-aarch64-linux-gnu`; or build in a container with --cross"
            )
        }
    })?;
    let out = target_dir.join(target).join("release").join(bin);
    if !out.is_file() {
        bail!("the build succeeded but {} is missing", out.display());
    }
    elf::check_matches_target(&out, target)?;
    Ok(out)
}
