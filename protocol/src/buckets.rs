//! How each bucket is created: part of the contract, so that the operator's
//! `init`, the tests and any other tool create identical buckets.
//!
//! Buckets are created as plain JetStream streams with these settings (not
//! through a client's KV helper), because async-nats >= 0.41 cannot create KV
//! buckets on nats-server 2.9.

use crate::keys::{DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET};
use crate::limits::{MAX_HEARTBEAT_SIZE, MAX_VALUE_SIZE};

/// Settings of one KV bucket's backing stream `KV_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: &'static str,
    /// Values kept per key.
    pub history: i64,
    /// Largest value in bytes; the server rejects larger puts.
    pub max_value_size: i32,
    /// Whether `Nats-Rollup` headers are honoured. Off where devices write,
    /// so that one device cannot wipe every device's records with a rollup.
    pub allow_rollup: bool,
    /// Whether purging the stream is refused.
    pub deny_purge: bool,
    /// Whether the stream republishes every stored message, from
    /// `$KV.<bucket>.>` to `$KVR.<bucket>.>` ([`crate::keys::RepublishSubject`]). On for
    /// `desired-state`: agents watch it there. nats-server 2.9 accepts
    /// RePublish only when the stream is created; 2.10+ can add it later.
    pub republish: bool,
}

/// `desired-state`: written by the operator only.
pub const DESIRED_STATE: BucketSpec = BucketSpec {
    name: DESIRED_STATE_BUCKET,
    history: 5,
    max_value_size: MAX_VALUE_SIZE as i32,
    allow_rollup: true,
    deny_purge: false,
    republish: true,
};

/// `device-status`: written by the devices, each only its own keys.
pub const DEVICE_STATUS: BucketSpec = BucketSpec {
    name: DEVICE_STATUS_BUCKET,
    history: 1,
    max_value_size: 4096,
    allow_rollup: false,
    deny_purge: true,
    republish: false,
};

/// `device-heartbeat`: written by the devices, each only its own key. Was
/// 1 KiB before heartbeat format version 3 (labels, capabilities); `init`
/// raises an existing bucket's limit.
pub const DEVICE_HEARTBEAT: BucketSpec = BucketSpec {
    name: DEVICE_HEARTBEAT_BUCKET,
    history: 1,
    max_value_size: MAX_HEARTBEAT_SIZE as i32,
    allow_rollup: false,
    deny_purge: true,
    republish: false,
};

/// Every bucket of the contract.
pub const ALL: [BucketSpec; 3] = [DESIRED_STATE, DEVICE_STATUS, DEVICE_HEARTBEAT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_desired_state_is_republished() {
        let republished: [bool; 3] = ALL.map(|b| b.republish);
        assert_eq!(republished, [true, false, false]);
    }
}
