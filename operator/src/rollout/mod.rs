//! BatchSequence rollouts: a new revision reaches the targets batch by
//! batch, each batch gated on its devices reporting Healthy, and a batch
//! below its success threshold halts the rollout and (with autoRollback)
//! writes the stable revision back.
//!
//! [`batches`] checks the spec and splits the targets; [`engine`] decides,
//! without I/O, what one reconcile does; [`step`] is the controller's glue:
//! it reads the keys and reports, keeps the revision history
//! ([`crate::history`]) and writes what the engine decided.

pub mod batches;
pub mod engine;
pub mod step;

pub use batches::{BatchSpec, Count, RolloutSpec};

/// The annotation that retries a halted revision: set it to any value the
/// status has not recorded yet (`status.rollout.retry`), e.g. a timestamp.
pub const RETRY_ANNOTATION: &str = "iot.nationtech.io/retry-rollout";

/// The retry annotation's value on `d`.
pub fn retry_annotation(d: &crate::crd::Deployment) -> Option<&str> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETRY_ANNOTATION))
        .map(String::as_str)
}

/// The attempt `d`'s keys are written with at `revision` (see
/// [`engine::attempt`]): set on the plan before the capability check, so
/// a device that cannot read a retry is held back.
pub fn attempt(d: &crate::crd::Deployment, revision: u64) -> u32 {
    let prev = d.status.as_ref().and_then(|s| s.rollout.as_ref());
    engine::attempt(prev, revision, retry_annotation(d))
}
