//! `cargo xtask bench`: the performance benches, each a table on stdout.
//! The fleet simulator needs tokio, async-nats, the operator and the agent,
//! so it lives in `e2e/benches/fleet.rs`; this builds and runs it.

use anyhow::{Result, bail};

use crate::util::{cargo, project_root, run};

/// Help for `cargo xtask bench`.
pub const HELP: &str = "\
cargo xtask bench fleet [--devices N] [--nats-server BIN] [--connections K]
                        [--create-concurrency C] [--idle-secs S] [--phase-timeout-secs T]
                        [--probe-puts P] [--strategy all-at-once|batch-sequence|both]
                        [--batches B] [--heartbeat-secs H] [--no-status-echo]
    N simulated devices (the agent's watch, reconciler and status writer over
    an in-memory runtime) against a real nats-server on loopback; one
    Deployment targeting all of them applied through the operator's
    reconcile; prints fan-out, status fold-back, KV writes, no-op re-apply
    and nats-server RSS/CPU. Defaults: 1000 devices, NATS_SERVER_BIN or
    nats-server on PATH, one connection per 100 devices. --probe-puts times
    P puts to unwatched keys before the apply. --strategy then rolls a new
    revision out through the controller's loop (a reconcile per burst of
    device reports) with that strategy (both: one after the other;
    BatchSequence in B batches, default 10) and prints the time to Ready,
    reconciles, writes, status patches and the operator thread's CPU.
    A status patch triggers one more reconcile, as the controller's watch
    of its own write does; --no-status-echo reconciles on reports only.
cargo xtask bench agent [ARGS]
    scripts/bench-agent.sh: agent footprint, idle CPU and apply latency
    against Podman (see docs/performance.md).";

/// `cargo xtask bench ...`.
pub fn cmd(rest: Vec<String>) -> Result<()> {
    let mut rest = rest.into_iter();
    match rest.next().as_deref() {
        Some("fleet") => {
            let args: Vec<String> = rest.collect();
            if args.iter().any(|a| a == "--help" || a == "-h") {
                println!("{HELP}");
                return Ok(());
            }
            let mut c = cargo();
            // The release profile (size-optimised, LTO, one codegen unit) is
            // for the shipped binaries; the bench only needs to be fast and
            // to build in reasonable time.
            c.current_dir(project_root())
                .env("CARGO_PROFILE_BENCH_OPT_LEVEL", "3")
                .env("CARGO_PROFILE_BENCH_LTO", "false")
                .env("CARGO_PROFILE_BENCH_CODEGEN_UNITS", "16")
                .env(
                    "IOT_AGENT_LOG",
                    std::env::var("IOT_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .args(["bench", "-q", "-p", "e2e", "--bench", "fleet", "--"])
                .args(args);
            run(&mut c)
        }
        Some("agent") => {
            let mut c = std::process::Command::new(project_root().join("scripts/bench-agent.sh"));
            c.current_dir(project_root()).args(rest);
            run(&mut c)
        }
        None | Some("help" | "--help" | "-h") => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown bench {other:?}: expected `fleet` or `agent`\n\n{HELP}"),
    }
}
