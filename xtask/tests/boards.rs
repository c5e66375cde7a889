//! `cargo xtask boards` lists the shipped boards and rejects a bad file,
//! naming the file and the field.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;

#[test]
fn lists_the_shipped_boards() {
    let o = ok(xtask().arg("boards"));
    let out = String::from_utf8_lossy(&o.stdout);
    for b in ["rpi3", "rpi4", "rpi5", "generic-aarch64"] {
        assert!(out.lines().any(|l| l.starts_with(b)), "{b} missing:\n{out}");
    }
    assert!(out.contains("cgroup_enable=memory"));
}

#[test]
fn a_bad_board_file_is_an_error_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
    let good = std::fs::read_to_string(root.join("rpi4.toml")).unwrap();
    std::fs::write(dir.path().join("rpi4.toml"), &good).unwrap();
    std::fs::write(
        dir.path().join("odd.toml"),
        good.replace("partition = 2", "partition = 9"),
    )
    .unwrap();
    let o = run(xtask().args(["boards", "--dir"]).arg(dir.path()));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("odd.toml") && e.contains("image.root.partition"),
        "{e}"
    );
}
