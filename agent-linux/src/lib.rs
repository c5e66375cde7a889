//! The device agent: makes Podman on a board match the desired state the
//! operator writes to NATS, offline first, and reports status back.
//!
//! Modules: [`config`] (the TOML file), [`nats`] (every NATS call),
//! [`podman`] (the runtime trait and its libpod client over [`http`]),
//! [`reconcile`] (one deployment's reconciler), [`policy`] (what a score
//! may ask of the device), [`cache`] (the on-disk
//! desired state), [`host`] (the kernel and boot id the heartbeat reports),
//! [`agent`] (wiring, the heartbeat), [`secrets`] (the sealing key, opening
//! sealed values and handing them to containers), [`backoff`] and [`log`].

pub mod agent;
pub mod backoff;
pub mod cache;
pub mod config;
pub mod gate;
pub mod health;
pub mod host;
pub mod http;
pub mod log;
pub mod nats;
pub mod oom;
pub mod podman;
pub mod policy;
pub mod reconcile;
pub mod rollback;
pub mod secrets;
/// An in-memory runtime for tests and the fleet bench (`e2e/benches/fleet.rs`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
