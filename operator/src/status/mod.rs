//! Device reports back into the Deployment's `.status`.
//!
//! [`cache`]: [`StatusCache`] holds the last status of every
//! `<device>.<deployment>` and the last heartbeat of every device, fed by
//! watches on the `device-status` and `device-heartbeat` buckets
//! ([`StatusCache::watch`]) or by a one-off read ([`StatusCache::load`]).
//! [`fold`]: [`fold_status`] turns the cache plus what the operator wrote
//! into the CR status: counts over every target, conditions, and entries
//! for the (at most [`MAX_LISTED_DEVICES`](crate::crd::MAX_LISTED_DEVICES))
//! targets that are not ready. The CLI's `status` table is
//! [`crate::cli::status_table`].

pub mod cache;
pub mod fold;
#[cfg(test)]
pub(crate) mod testdata;

pub use cache::{Change, DeviceFacts, HeartbeatSeen, Report, StatusCache, WaitAt, now_ns, rfc3339};
pub use fold::{Observed, conditions, fold_status, set_condition};

use protocol::{DeploymentStatus, Phase};

/// Whether a device reporting `phase` at a revision runs it: Running,
/// Healthy (running with every check passing) or Completed. Unhealthy,
/// CrashLoopBackOff and RolledBack do not.
pub fn phase_is_ready(phase: Phase) -> bool {
    matches!(phase, Phase::Running | Phase::Healthy | Phase::Completed)
}

/// The agent's reason for the phase it reports: the deployment's, else the
/// first container's (an agent sets both; a container's alone still
/// explains); `None` when it gives none.
pub fn device_reason(s: &DeploymentStatus<'_>) -> Option<&'static str> {
    use protocol::status::Reason;
    std::iter::once(s.reason)
        .chain(s.containers.iter().map(|c| c.reason))
        .find(|r| *r != Reason::None)
        .map(Reason::as_str)
}
