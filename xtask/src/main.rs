//! `cargo xtask`: project automation. One entry point, one module per
//! subcommand, a small shared core (`flags`, `util`, `progress`, `source`,
//! `elf`). See `cargo xtask help`.

mod base_image;
mod bench;
mod board_sim;
mod boards;
mod crd;
mod creds;
mod cross;
mod cross_image;
mod demo;
mod dist;
mod elf;
mod flags;
mod flash;
mod image;
mod jwt;
mod oci;
mod progress;
mod source;
mod util;

use anyhow::Result;
use flags::Args;

const USAGE: &str = "\
cargo xtask <command> [options]

commands:
  boards        list the supported boards (boards/*.toml)
  dist          release build of the agent for a board, into target/dist/<board>/
  image         bake the agent and a device identity into a board image
  flash         write an image to an SD card safely (or build + write in one go)
  cross-image   build the `cross` container image from Debian packages
  base-image    build a bootable arm64 Debian image for a board (mmdebstrap)
  board-sim     boot virtual boards (qemu-system-aarch64) that join the fleet
  cross ARGS    run `cross` with Podman and the local image
  oci           OCI image of the operator or agent (from scratch, Podman)
  creds         NATS identities for a fleet and the server authorization
  demo          run the whole system locally (NATS, Podman, agent, a deployment)
  crd           regenerate deploy/crd.yaml (--check: fail on drift)
  bench         fleet simulator, agent footprint/latency (docs/performance.md)
  help [cmd]    this text, or a command's options";

fn help(cmd: &str) -> String {
    match cmd {
        "boards" => boards::HELP.into(),
        "dist" => dist::HELP.into(),
        "image" => image::help(),
        "flash" => flash::help(),
        "cross-image" => cross_image::HELP.into(),
        "base-image" => base_image::HELP.into(),
        "board-sim" => board_sim::HELP.into(),
        "cross" => cross::HELP.into(),
        "oci" => oci::HELP.into(),
        "creds" => creds::HELP.into(),
        "demo" => demo::HELP.into(),
        "crd" => crd::HELP.into(),
        _ => USAGE.into(),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut raw = std::env::args().skip(1);
    let cmd = raw.next().unwrap_or_default();
    let rest: Vec<String> = raw.collect();
    let name: &'static str = match cmd.as_str() {
        "boards" => "boards",
        "dist" => "dist",
        "image" => "image",
        "flash" => "flash",
        "cross-image" => "cross-image",
        "base-image" => "base-image",
        "board-sim" => "board-sim",
        // Internal: the per-connection relay qemu runs for the guest's NATS port.
        "board-sim-relay" => return board_sim::relay(rest),
        // Everything after `cross` belongs to cross itself.
        "cross" if rest.first().is_some_and(|a| a == "--help" || a == "-h") => {
            println!("{}", cross::HELP);
            return Ok(());
        }
        "cross" => return cross::cmd(rest),
        "oci" => "oci",
        "creds" => "creds",
        "demo" => "demo",
        "crd" => "crd",
        "bench" => return bench::cmd(rest),
        "" | "help" | "--help" | "-h" => {
            println!("{}", help(rest.first().map(String::as_str).unwrap_or("")));
            return Ok(());
        }
        other => anyhow::bail!("unknown command {other:?}\n\n{USAGE}"),
    };
    let args = Args::new(name, rest);
    if args.wants_help() {
        println!("{}", help(name));
        return Ok(());
    }
    match name {
        "boards" => boards::cmd(args),
        "dist" => dist::cmd(args),
        "image" => image::cmd(args),
        "flash" => flash::cmd(args),
        "cross-image" => cross_image::cmd(args),
        "base-image" => base_image::cmd(args),
        "board-sim" => board_sim::cmd(args),
        "oci" => oci::cmd(args),
        "demo" => demo::cmd(args),
        "creds" => creds::cmd(args),
        _ => crd::cmd(args),
    }
}
