//! Whole-system tests and the fleet bench: the operator's real reconcile
//! (over `operator::testing::MockApiServer`), a real `nats-server`, the
//! agent (as the real `iot-agent` process with real Podman in
//! `tests/`, as its own watch, reconciler and status writer over an
//! in-memory runtime in `benches/fleet.rs`), and the reports folded back.
//!
//! The crate exists so that neither product crate depends on the other:
//! what needs both lives here. This library holds what its tests share.

use std::path::Path;
use std::sync::OnceLock;

use escargot::error::CargoError;

/// The `iot-agent` binary as `cargo build -p agent-linux` makes it, in the
/// profile these tests were built with; built on first use, once per test
/// process (a no-op when it is up to date).
///
/// Cargo hands `CARGO_BIN_EXE_iot-agent` only to the agent's own tests,
/// and a binary left in `target/` may be older than the sources, so the
/// tests ask Cargo (the one running them, `$CARGO`) for it.
pub fn agent_binary() -> Result<&'static Path, &'static CargoError> {
    static AGENT: OnceLock<Result<escargot::CargoRun, CargoError>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            escargot::CargoBuild::new()
                .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
                .package("agent-linux")
                .bin("iot-agent")
                .current_release()
                .run()
        })
        .as_ref()
        .map(|run| run.path())
}
