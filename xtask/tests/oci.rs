//! `cargo xtask container-image agent`: a `FROM scratch` image holding only the static
//! binary, built with Podman and no registry.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn podman() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut c = Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        root.join("deploy/podman/containers.conf"),
    );
    c
}

#[test]
fn agent_image_is_scratch_plus_the_static_binary() {
    if !have_tools(&["podman", "tar"]) {
        return;
    }
    ok(xtask().args([
        "container-image",
        "--target",
        "aarch64-unknown-linux-musl",
        "agent",
    ]));
    let name = format!("localhost/iot-agent:{}", env!("CARGO_PKG_VERSION"));
    let o = ok(podman().args([
        "image",
        "inspect",
        &name,
        "--format",
        "{{.Architecture}} {{.Config.Entrypoint}}",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "arm64 [/iot-agent]"
    );
    // The filesystem holds exactly one file: the agent.
    let id = String::from_utf8(ok(podman().args(["create", &name])).stdout).unwrap();
    let id = id.trim();
    let tar = ok(Command::new("sh").arg("-c").arg(format!(
        "CONTAINERS_CONF={} podman export {id} | tar -t",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/podman/containers.conf")
            .display()
    )));
    let _ = podman().args(["rm", id]).output();
    let files: Vec<String> = String::from_utf8_lossy(&tar.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(String::from)
        .collect();
    assert_eq!(files, ["iot-agent"], "{files:?}");
}
