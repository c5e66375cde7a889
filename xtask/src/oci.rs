//! `cargo xtask container-image operator|agent`: an OCI image `FROM scratch` holding the
//! static musl binary, built with Podman (no registry), tagged
//! `localhost/iot-<name>:<version>`.

use anyhow::{Context, Result, bail};

use crate::cross_image::podman;
use crate::dist::build_binary;
use crate::flags::Args;
use crate::util::{self, require_tool, workspace_target};

/// Help for `cargo xtask container-image`.
pub const HELP: &str = "\
cargo xtask container-image operator|agent [--target TRIPLE] [--cross]
    (formerly `cargo xtask oci`) Build an OCI container image from scratch with the static musl binary, using
    Podman; tagged localhost/iot-operator:VERSION or localhost/iot-agent:VERSION.
    --target   default: the host architecture's *-unknown-linux-musl";

/// The image name for `what` (`operator` or `agent`).
pub fn image_name(what: &str) -> String {
    format!("localhost/iot-{what}:{}", env!("CARGO_PKG_VERSION"))
}

/// `cargo xtask container-image`.
pub fn cmd(mut args: Args) -> Result<()> {
    // Options first, so an option's value is never taken as the positional.
    let target = args.value("--target")?;
    let cross = args.flag("--cross");
    let what = args.positional().context(
        "say which image: `cargo xtask container-image operator` or \
             `cargo xtask container-image agent`",
    )?;
    args.finish()?;
    let (package, bin, user) = match what.as_str() {
        "operator" => ("operator", "iot-operator", Some("65532:65532")),
        // The agent talks to the root Podman socket.
        "agent" => ("agent-linux", "iot-agent", None),
        _ => bail!("unknown image {what:?}; use `operator` or `agent`"),
    };
    let target = target.unwrap_or_else(|| format!("{}-unknown-linux-musl", std::env::consts::ARCH));
    if !target.ends_with("-musl") {
        bail!(
            "--target {target}: a scratch image needs a static musl binary (…-unknown-linux-musl)"
        );
    }
    require_tool("podman", "podman")?;
    let binary = build_binary(package, bin, &target, cross)?;
    let ctx = workspace_target().join("oci").join(&what);
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(&binary, ctx.join(bin))?;
    let user_line = user.map(|u| format!("USER {u}\n")).unwrap_or_default();
    std::fs::write(
        ctx.join("Containerfile"),
        format!("FROM scratch\nCOPY {bin} /{bin}\n{user_line}ENTRYPOINT [\"/{bin}\"]\n"),
    )?;
    let arch = match target.split('-').next() {
        Some("aarch64") => "arm64",
        Some("x86_64") => "amd64",
        Some(a) => a,
        None => "amd64",
    };
    let name = image_name(&what);
    let mut c = podman();
    c.args(["build", "--arch", arch, "-t", &name, "-f"])
        .arg(ctx.join("Containerfile"))
        .arg(&ctx);
    util::run(&mut c)
        .context("podman build failed; check Podman works with deploy/podman/containers.conf")?;
    println!(
        "built {name} ({target}); deploy/operator.yaml refers to localhost/iot-operator:VERSION"
    );
    Ok(())
}
