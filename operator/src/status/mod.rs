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
mod testdata;

pub use cache::{Change, HeartbeatSeen, Report, StatusCache, now_ns, rfc3339};
pub use fold::{Observed, conditions, fold_status};
