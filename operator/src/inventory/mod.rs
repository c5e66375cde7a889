//! The fleet inventory: one cluster-scoped `Device` object per board
//! ([`crate::crd::device`]), created at the board's first heartbeat and kept
//! current from its heartbeats and deployment reports.
//!
//! - [`state`]: the Device's `.status` (lastSeen, systemInfo, deployments,
//!   capabilities, board labels; conditions Ready, Warnings, Unsupported);
//! - [`labels`]: the board's labels merged into `metadata.labels`, an
//!   administrator's winning;
//! - [`policy`]: when the status is written (transitions, or a stale
//!   `lastSeen`; never per heartbeat) and when a Device is looked at again;
//! - [`controller`]: the loop (creation, status, silence, the capability
//!   gate) and decommissioning: deleting a Device removes the board's
//!   desired-state keys (every deployment's), status keys and heartbeat
//!   before its finalizer is released. A board that keeps sending
//!   heartbeats reappears, with its own labels only; a Deployment naming
//!   it in `targetDevices` writes its key again at its next resync.
//!
//! Revoked credentials (`cargo xtask creds --revoke`) are invisible to the
//! operator: the server refuses the board's connection and the operator
//! sees only silence, so such a board shows Ready Unknown
//! (HeartbeatMissing) like any silent one.

pub mod controller;
pub mod labels;
pub mod policy;
pub mod state;

pub use controller::{
    Decommissioned, Error, Inventory, InventoryConfig, decommission, error_policy, reconcile, run,
};
