//! `cargo xtask`: project automation. One entry point, one module per
//! subcommand, a small shared core (`flags`, `util`, `progress`, `source`,
//! `elf`). See `cargo xtask help`.
//!
//! Every command is one row of [`COMMANDS`]: the usage list, `help CMD`,
//! `CMD --help`, the old names and the dispatch all read that row, so a
//! command cannot be missing from one of them.

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

use anyhow::{Result, bail};
use flags::Args;

/// How a command takes its arguments.
#[derive(Clone, Copy)]
enum Run {
    /// Options parsed with [`Args`]; `--help` anywhere prints the help.
    Parsed(fn(Args) -> Result<()>),
    /// The raw arguments (a command with its own sub-commands, or one that
    /// hands them to another tool); only a leading `--help`/`-h` prints
    /// the help.
    Raw(fn(Vec<String>) -> Result<()>),
}

/// One `cargo xtask` command.
struct Command {
    /// The name the docs use.
    name: &'static str,
    /// Earlier names that keep working (scripts and users know them).
    aliases: &'static [&'static str],
    /// One line for `cargo xtask help`; empty for internal commands, which
    /// the list leaves out.
    summary: &'static str,
    /// The command's options (`cargo xtask help NAME`, `NAME --help`).
    help: fn() -> String,
    /// What runs it.
    run: Run,
}

/// Every command. The disk images (bootable board disks) and the container
/// images (Podman) say which they are in their names; see xtask/README.md.
static COMMANDS: &[Command] = &[
    Command {
        name: "boards",
        aliases: &[],
        summary: "list the supported boards (boards/*.toml)",
        help: || boards::HELP.into(),
        run: Run::Parsed(boards::cmd),
    },
    Command {
        name: "dist",
        aliases: &[],
        summary: "release build of the agent for a board, into target/dist/<board>/",
        help: || dist::HELP.into(),
        run: Run::Parsed(dist::cmd),
    },
    Command {
        name: "disk-image",
        aliases: &["image"],
        summary: "bake the agent and a device identity into a board's disk image",
        help: image::help,
        run: Run::Parsed(image::cmd),
    },
    Command {
        name: "flash",
        aliases: &[],
        summary: "write a disk image to an SD card safely (or build + write in one go)",
        help: flash::help,
        run: Run::Parsed(flash::cmd),
    },
    Command {
        name: "base-disk-image",
        aliases: &["base-image"],
        summary: "build a bootable arm64 Debian disk image for a board (mmdebstrap)",
        help: || base_image::HELP.into(),
        run: Run::Parsed(base_image::cmd),
    },
    Command {
        name: "board-sim",
        aliases: &[],
        summary: "boot virtual boards (qemu-system-aarch64) that join the fleet",
        help: || board_sim::HELP.into(),
        run: Run::Parsed(board_sim::cmd),
    },
    Command {
        name: "board-sim-relay",
        aliases: &[],
        // Internal: the per-connection relay qemu runs for the guest's NATS port.
        summary: "",
        help: || board_sim::RELAY_HELP.into(),
        run: Run::Raw(board_sim::relay),
    },
    Command {
        name: "container-image",
        aliases: &["oci"],
        summary: "container image of the operator or agent (from scratch, Podman)",
        help: || oci::HELP.into(),
        run: Run::Parsed(oci::cmd),
    },
    Command {
        name: "cross-container-image",
        aliases: &["cross-image"],
        summary: "build the container image `cross` builds in, from Debian packages",
        help: || cross_image::HELP.into(),
        run: Run::Parsed(cross_image::cmd),
    },
    Command {
        name: "cross",
        aliases: &[],
        summary: "run `cross` with Podman and the local container image",
        help: || cross::HELP.into(),
        // Everything after `cross` belongs to cross itself.
        run: Run::Raw(cross::cmd),
    },
    Command {
        name: "creds",
        aliases: &[],
        summary: "NATS identities for a fleet and the server authorization",
        help: || creds::HELP.into(),
        run: Run::Parsed(creds::cmd),
    },
    Command {
        name: "demo",
        aliases: &[],
        summary: "run the whole system locally (NATS, Podman, agent, a deployment)",
        help: || demo::HELP.into(),
        run: Run::Parsed(demo::cmd),
    },
    Command {
        name: "crd",
        aliases: &[],
        summary: "regenerate deploy/crd.yaml (--check: fail on drift)",
        help: || crd::HELP.into(),
        run: Run::Parsed(crd::cmd),
    },
    Command {
        name: "bench",
        aliases: &[],
        summary: "fleet simulator, agent footprint/latency (docs/performance.md)",
        help: || bench::HELP.into(),
        run: Run::Raw(bench::cmd),
    },
];

/// The command called `name` (its name or an old one).
fn find(name: &str) -> Option<&'static Command> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.aliases.contains(&name))
}

/// `cargo xtask help`: every public command with its summary.
fn usage() -> String {
    let mut s = String::from("cargo xtask <command> [options]\n\ncommands:\n");
    for c in COMMANDS.iter().filter(|c| !c.summary.is_empty()) {
        s.push_str(&format!("  {:<22}{}\n", c.name, c.summary));
    }
    s.push_str(&format!(
        "  {:<22}this text, or a command's options\n",
        "help [command]"
    ));
    s.push_str("\nolder names, still accepted:\n");
    for c in COMMANDS {
        for a in c.aliases {
            s.push_str(&format!("  {a:<22}now {}\n", c.name));
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// Prints help text; a closed pipe (`| head`) is not an error.
fn print(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
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
    dispatch(&cmd, raw.collect())
}

/// Runs command `cmd` with the arguments after it.
fn dispatch(cmd: &str, rest: Vec<String>) -> Result<()> {
    if matches!(cmd, "" | "help" | "--help" | "-h") {
        let text = match rest.first() {
            None => usage(),
            Some(name) => match find(name) {
                Some(c) => (c.help)(),
                None => bail!("unknown command {name:?}\n\n{}", usage()),
            },
        };
        print(&text);
        return Ok(());
    }
    let Some(c) = find(cmd) else {
        bail!("unknown command {cmd:?}\n\n{}", usage());
    };
    match c.run {
        Run::Raw(_) if rest.first().is_some_and(|a| a == "--help" || a == "-h") => {
            print(&(c.help)());
            Ok(())
        }
        Run::Raw(f) => f(rest),
        Run::Parsed(f) => {
            let args = Args::new(c.name, rest);
            if args.wants_help() {
                print(&(c.help)());
                return Ok(());
            }
            f(args)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_own_help_and_answers_help() {
        let list = usage();
        for c in COMMANDS {
            let help = (c.help)();
            // The help is this command's: it starts with how to call it.
            assert!(
                help.starts_with(&format!("cargo xtask {}", c.name))
                    || help.starts_with(&format!("xtask {}", c.name)),
                "the help of {} starts with {:?}",
                c.name,
                help.lines().next()
            );
            assert!(
                c.summary.is_empty() || list.contains(&format!("  {:<22}", c.name)),
                "{} is missing from `cargo xtask help`:\n{list}",
                c.name
            );
            for name in std::iter::once(&c.name).chain(c.aliases) {
                dispatch(name, vec!["--help".into()]).unwrap();
                dispatch("help", vec![name.to_string()]).unwrap();
                assert!(std::ptr::eq(find(name).unwrap(), c));
            }
        }
    }

    #[test]
    fn names_are_unique_and_unknown_ones_are_refused() {
        let mut names: Vec<&str> = COMMANDS
            .iter()
            .flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a name or alias is used twice");
        let err = dispatch("imgae", vec![]).unwrap_err().to_string();
        assert!(
            err.contains("unknown command") && err.contains("disk-image"),
            "{err}"
        );
        assert!(dispatch("help", vec!["imgae".into()]).is_err());
    }
}
