//! `cargo xtask`: project automation. One entry point, one module per
//! subcommand, a small shared core (`flags`, `util`, `progress`, `source`,
//! `elf`). See `cargo xtask help`.

mod boards;
mod creds;
mod crd;
mod cross;
mod cross_image;
mod dist;
mod elf;
mod flags;
mod flash;
mod image;
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
  cross ARGS    run `cross` with Podman and the local image
  oci           OCI image of the operator or agent (from scratch, Podman)
  creds         NATS identities for a fleet and the server authorization
  crd           regenerate deploy/crd.yaml (--check: fail on drift)
  help [cmd]    this text, or a command's options";

fn help(cmd: &str) -> String {
    match cmd {
        "boards" => boards::HELP.into(),
        "dist" => dist::HELP.into(),
        "image" => image::help(),
        "flash" => flash::help(),
        "cross-image" => cross_image::HELP.into(),
        "cross" => cross::HELP.into(),
        "oci" => oci::HELP.into(),
        "creds" => creds::HELP.into(),
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
        // Everything after `cross` belongs to cross itself.
        "cross" if rest.first().is_some_and(|a| a == "--help" || a == "-h") => {
            println!("{}", cross::HELP);
            return Ok(());
        }
        "cross" => return cross::cmd(rest),
        "oci" => "oci",
        "creds" => "creds",
        "crd" => "crd",
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
        "oci" => oci::cmd(args),
        "creds" => creds::cmd(args),
        _ => crd::cmd(args),
    }
}
