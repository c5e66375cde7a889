//! Whole-system tests and the fleet bench: the operator's real reconcile
//! (over `operator::testing::MockApiServer`), a real `nats-server`, the
//! agent (as the real `iot-agent` process with real Podman in
//! `tests/`, as its own watch, reconciler and status writer over an
//! in-memory runtime in `benches/fleet.rs`), and the reports folded back.
//!
//! The crate exists so that neither product crate depends on the other:
//! what needs both lives here. This library holds what its tests share.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use escargot::error::CargoError;

/// The `iot-agent` binary as `cargo build --workspace --locked` makes it,
/// in the target directory and profile these tests were built with; built
/// on first use, once per test process (a no-op when it is up to date).
///
/// Cargo hands `CARGO_BIN_EXE_iot-agent` only to the agent's own tests,
/// and a binary left in `target/` may be older than the sources, so the
/// tests ask Cargo (the one running them, `$CARGO`) for it:
/// - `--locked`, as `scripts/test.sh` runs everything: a test never
///   resolves other dependency versions than `Cargo.lock`'s;
/// - `--workspace` (narrowed to the one binary): dependencies get the
///   features `scripts/test.sh`'s `--workspace` builds give them, so they
///   are not built a second time with other features, and the
///   `target/<profile>/iot-agent` this leaves is the one a workspace build
///   makes (`-p agent-linux` resolved fewer features: another build of
///   several dependencies, and a different binary in that same place);
/// - the test's own target directory and profile ([`build_dirs`]): a
///   `CARGO_TARGET_DIR`, a configured `build.target-dir` or `--release`
///   is followed, instead of building a second copy in `target/debug`.
pub fn agent_binary() -> Result<&'static Path, &'static CargoError> {
    static AGENT: OnceLock<Result<escargot::CargoRun, CargoError>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let build = escargot::CargoBuild::new()
                .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
                .arg("--workspace")
                .arg("--locked")
                .bin("iot-agent");
            match build_dirs() {
                Some((target_dir, profile)) => build.target_dir(target_dir).profile(profile),
                None => build.current_release(),
            }
            .run()
        })
        .as_ref()
        .map(|run| run.path())
}

/// The target directory and Cargo profile the running executable was built
/// in, from where Cargo put it: `<target-dir>/<profile-dir>/deps/<exe>`,
/// where the profile directory is `debug` for `dev` and `test`, `release`
/// for `release` and `bench`, and the profile's name for a custom one.
/// `None` when the executable is not in such a place.
fn build_dirs() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent().filter(|d| d.ends_with("deps"))?;
    let profile_dir = deps.parent()?;
    let profile = match profile_dir.file_name()?.to_str()? {
        "debug" => "dev",
        other => other,
    };
    Some((profile_dir.parent()?.to_path_buf(), profile.to_string()))
}
