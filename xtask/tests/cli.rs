//! The `cargo xtask` command line as a user meets it: `help` lists every
//! command, each answers `--help`, and the old names of the renamed
//! commands still work (scripts and READMEs use them).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;

/// (new name, old name) of each renamed command.
const RENAMED: &[(&str, &str)] = &[
    ("disk-image", "image"),
    ("base-disk-image", "base-image"),
    ("container-image", "oci"),
    ("cross-container-image", "cross-image"),
];

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_lists_every_command_and_each_answers_help() {
    let list = stdout(&ok(xtask().arg("help")));
    let commands: Vec<&str> = list
        .lines()
        .skip_while(|l| *l != "commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    for want in [
        "boards",
        "dist",
        "flash",
        "board-sim",
        "cross",
        "creds",
        "demo",
        "crd",
        "bench",
    ]
    .iter()
    .chain(RENAMED.iter().map(|(new, _)| new))
    {
        assert!(commands.contains(want), "{want} missing from help:\n{list}");
    }
    for c in commands {
        let help = stdout(&ok(xtask().args([c, "--help"])));
        assert!(help.starts_with(&format!("cargo xtask {c}")), "{c}: {help}");
        assert_eq!(stdout(&ok(xtask().args(["help", c]))), help);
    }
}

#[test]
fn old_names_still_work() {
    for (new, old) in RENAMED {
        let help = stdout(&ok(xtask().args([old, "--help"])));
        assert!(
            help.starts_with(&format!("cargo xtask {new}")),
            "{old}: {help}"
        );
        assert!(
            help.contains(&format!("formerly `cargo xtask {old}`")),
            "{help}"
        );
    }
    // The old name runs the command, not only its help.
    let o = run(xtask().args(["image", "--board", "rpi4"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cargo xtask disk-image"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_command_is_an_error_with_the_list() {
    let o = run(xtask().arg("imgae"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown command") && stderr(&o).contains("disk-image"));
}
