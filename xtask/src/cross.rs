//! `cargo xtask cross ARGS...`: runs the `cross` tool with the project's
//! setup (Podman, deploy/podman/containers.conf, the toolchain-check
//! workaround, the local image when built), so CI and users need no
//! environment boilerplate.

use anyhow::{Context, Result};
use std::process::Command;

use crate::util::{self, project_root};
use crate::{cross_image, dist};

/// Help for `cargo xtask cross`.
pub const HELP: &str = "\
cargo xtask cross <cross arguments...>
    Run `cross` (target/tools/bin/cross or on PATH) with Podman, the
    project's containers.conf and the local image from `cargo xtask
    cross-image` for aarch64 targets, e.g.
      cargo xtask cross test -p protocol --features json --target aarch64-unknown-linux-musl";

/// `cargo xtask cross`.
pub fn cmd(raw: Vec<String>) -> Result<()> {
    let path = dist::find_cross().context(
        "`cross` is not installed; install it with \
         `cargo install cross --version 0.2.5 --locked --root target/tools`",
    )?;
    let target = raw
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| raw.get(i + 1).cloned())
        .or_else(|| {
            raw.iter()
                .find_map(|a| a.strip_prefix("--target=").map(String::from))
        })
        .unwrap_or_default();
    let mut c = Command::new(path);
    cross_image::cross_env(&mut c, &target)?;
    c.current_dir(project_root()).args(&raw);
    util::run(&mut c).context(
        "cross failed; without a registry run `cargo xtask cross-container-image` first, and check \
         Podman works with CONTAINERS_CONF=deploy/podman/containers.conf",
    )
}
