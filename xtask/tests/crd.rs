//! `cargo xtask crd`: regenerates the CRD from `iot-operator gen-crd` and
//! `--check` catches drift. Works on a copy, never on deploy/crd.yaml.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::path::Path;

#[test]
fn check_detects_drift_and_regeneration_fixes_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let committed = std::fs::read_to_string(root.join("deploy/crd.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crd.yaml");
    std::fs::write(&file, format!("{committed}# hand edit\n")).unwrap();

    let o = run(xtask().args(["crd", "--check", "--file"]).arg(&file));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("out of date") && stderr(&o).contains("cargo xtask crd"));

    ok(xtask().args(["crd", "--file"]).arg(&file));
    let regenerated = std::fs::read_to_string(&file).unwrap();
    assert!(regenerated.contains("kind: CustomResourceDefinition"));
    ok(xtask().args(["crd", "--check", "--file"]).arg(&file));
    // The committed CRD is what the operator generates today.
    assert_eq!(
        regenerated, committed,
        "deploy/crd.yaml drifted: run `cargo xtask crd`"
    );
}
