//! The operator's Prometheus series, and the `/healthz`, `/readyz` and
//! `/metrics` endpoints that serve them.
//!
//! The series are `prometheus-client`'s (a maintained implementation of
//! the OpenMetrics text format: HELP, TYPE, UNIT, escaping, `# EOF`), the
//! HTTP server is `axum`'s; neither is this project's domain. One job per
//! file:
//! - this file: the series the operator's own work updates as it goes
//!   ([`Metrics`]: reconciles and their duration, errors, NATS writes and
//!   reads, the inventory's API writes; [`WatchMetrics`]: how far behind
//!   the status watch runs) and the [`registry`] that gathers everything
//!   `/metrics` shows;
//! - [`fleet`]: the fleet's gauges (devices online, by agent version, per
//!   Deployment, per device), computed at each scrape from what the
//!   operator holds in memory;
//! - [`ready`]: what `/readyz` waits for (NATS, the API server, the
//!   controller, the status watch caught up) and why `/healthz` waits for
//!   none of it;
//! - [`server`]: the HTTP server.
//!
//! Names follow the Prometheus conventions (base units, `_total` on
//! counters, which the encoder appends: a counter is registered without
//! it), and the names that existed before `prometheus-client` are kept, so
//! dashboards keep working: `iot_operator_reconciles_total`,
//! `iot_operator_reconcile_errors_total`, `iot_operator_kv_writes_total`,
//! `iot_operator_kv_scans_total`, `iot_operator_device_creates_total`,
//! `iot_operator_device_status_patches_total`,
//! `iot_operator_device_metadata_patches_total`,
//! `iot_operator_devices_reporting`. Every series, its labels and its
//! cardinality: `docs/metrics.md`.

pub mod fleet;
pub mod ready;
pub mod server;

use std::ops::Deref;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A counter of the operator's work.
///
/// It dereferences to its atomic so that code that reads the counters
/// directly (the fleet bench in `e2e/`, tests that wait for a count) reads
/// them as it did when they were plain `AtomicU64`s; only [`Count::add`]
/// (or [`Metrics::add`]) should change it, so that it only ever grows.
#[derive(Debug, Clone, Default)]
pub struct Count(Counter<u64, AtomicU64>);

impl Count {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl Deref for Count {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// Buckets of the histograms in seconds (reconcile duration, watch lag):
/// 1 ms doubling to about 33 s (16 buckets, then +Inf). A no-op reconcile
/// takes about a millisecond; sealing Secrets for 10,000 devices takes
/// seconds (docs/performance.md); a watch keeping up lags by milliseconds.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// The operator's own work, updated as it happens. Cheap to share: every
/// field is a handle on an atomic (or a histogram's buckets), and
/// [`Metrics::register`] adds handles on the same values to a registry.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles run (`iot_operator_reconciles_total`).
    pub reconciles: Count,
    /// Reconciles that failed (`iot_operator_reconcile_errors_total`).
    pub reconcile_errors: Count,
    /// Desired-state puts and deletes issued (`iot_operator_kv_writes_total`).
    pub kv_writes: Count,
    /// Reads of a Deployment's desired-state keys, one filtered consumer
    /// each (`iot_operator_kv_scans_total`).
    pub kv_scans: Count,
    /// Device objects the inventory created at a board's first heartbeat
    /// (`iot_operator_device_creates_total`).
    pub device_creates: Count,
    /// Device status patches the inventory sent
    /// (`iot_operator_device_status_patches_total`).
    pub device_status_patches: Count,
    /// Device metadata patches (labels, board-labels annotation) sent
    /// (`iot_operator_device_metadata_patches_total`).
    pub device_metadata_patches: Count,
    /// How long each reconcile took, failed ones included
    /// (`iot_operator_reconcile_duration_seconds`).
    pub reconcile_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Count::default(),
            reconcile_errors: Count::default(),
            kv_writes: Count::default(),
            kv_scans: Count::default(),
            device_creates: Count::default(),
            device_status_patches: Count::default(),
            device_metadata_patches: Count::default(),
            reconcile_duration: Histogram::new(seconds_buckets()),
        }
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &Count, n: u64) {
        counter.add(n);
    }

    /// Adds these series to `registry` (handles on the same values: what
    /// is counted here afterwards shows there).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "iot_operator_reconciles",
                "Reconciles run",
                &self.reconciles,
            ),
            (
                "iot_operator_reconcile_errors",
                "Reconciles that failed (retried with back-off when transient)",
                &self.reconcile_errors,
            ),
            (
                "iot_operator_kv_writes",
                "Desired-state puts and deletes issued to NATS (a no-op apply issues none)",
                &self.kv_writes,
            ),
            (
                "iot_operator_kv_scans",
                "Reads of a Deployment's desired-state keys (one filtered consumer each)",
                &self.kv_scans,
            ),
            (
                "iot_operator_device_creates",
                "Device objects created at a board's first heartbeat",
                &self.device_creates,
            ),
            (
                "iot_operator_device_status_patches",
                "Device status patches sent to the API server",
                &self.device_status_patches,
            ),
            (
                "iot_operator_device_metadata_patches",
                "Device label and annotation patches sent to the API server",
                &self.device_metadata_patches,
            ),
        ];
        for (name, help, count) in counters {
            registry.register(name, help, count.0.clone());
        }
        registry.register_with_unit(
            "iot_operator_reconcile_duration",
            "How long each reconcile of a Deployment took, failed ones included",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
    }
}

/// The label of the status watch's series: which bucket.
type BucketLabel = [(&'static str, &'static str); 1];

/// A watch lag histogram ([`seconds_buckets`]).
fn lag_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// How far behind the status watch ([`crate::status::StatusCache::watch`])
/// runs, per bucket (`device-status`, `device-heartbeat`).
///
/// - `iot_operator_status_watch_lag_seconds`: for each record stored after
///   the watch (re)started, the operator's clock when the watch hands it
///   to the cache minus the time the server stored it (the JetStream
///   message's timestamp). A watch that falls behind (a burst of reports,
///   a slow operator, a reconnect) shows here at once. The records a
///   watch replays when it starts (the last value of every key, possibly
///   hours old) are history, not lag, and are left out. The two clocks are
///   the NATS server's and the operator's: skew between them adds to
///   every figure (NTP keeps it to milliseconds); a negative difference
///   counts as 0.
/// - `iot_operator_status_watch_pending`: records the server still had to
///   deliver when the last one arrived (the consumer's pending count): a
///   backlog, in messages, also while the history is replayed.
#[derive(Debug, Clone)]
pub struct WatchMetrics {
    lag: Family<BucketLabel, Histogram, fn() -> Histogram>,
    pending: Family<BucketLabel, Gauge>,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            lag: Family::new_with_constructor(lag_histogram as fn() -> Histogram),
            pending: Family::default(),
        }
    }
}

impl WatchMetrics {
    /// Records one record of `bucket`, stored at `stored_at_ns` and taken
    /// in at `now_ns` (both nanoseconds since the Unix epoch); `pending`
    /// records came after it; `live` when it was stored after the watch
    /// started (its delay is lag, not history).
    pub fn observe(
        &self,
        bucket: &'static str,
        stored_at_ns: i128,
        now_ns: i128,
        pending: u64,
        live: bool,
    ) {
        let label = [("bucket", bucket)];
        self.pending
            .get_or_create(&label)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if live {
            let lag_ns = (now_ns - stored_at_ns).max(0);
            self.lag.get_or_create(&label).observe(lag_ns as f64 / 1e9);
        }
    }

    /// Adds these series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "iot_operator_status_watch_lag",
            "Time from a device report or heartbeat being stored in NATS to the operator taking it in (records after the watch caught up with the bucket's history; server clock vs operator clock)",
            Unit::Seconds,
            self.lag.clone(),
        );
        registry.register(
            "iot_operator_status_watch_pending",
            "Records of the bucket the status watch had yet to receive when it took in the last one",
            self.pending.clone(),
        );
    }
}

/// Everything `/metrics` shows: the operator's own series, the status
/// watch's, and the fleet's, computed at each scrape by `fleet`.
pub fn registry(metrics: &Metrics, watch: &WatchMetrics, fleet: fleet::Fleet) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    watch.register(&mut registry);
    registry.register_collector(Box::new(fleet));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn counters_keep_their_names_and_read_as_atomics() {
        let m = Metrics::default();
        Metrics::add(&m.kv_writes, 3);
        m.reconciles.add(2);
        m.reconcile_duration.observe(0.0015);
        assert_eq!(m.kv_writes.load(Ordering::Relaxed), 3, "as an atomic");
        assert_eq!(m.reconciles.get(), 2);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let out = text(&registry);
        for line in [
            "# TYPE iot_operator_kv_writes counter",
            "iot_operator_kv_writes_total 3",
            "iot_operator_reconciles_total 2",
            "iot_operator_reconcile_errors_total 0",
            "# TYPE iot_operator_reconcile_duration_seconds histogram",
            "# UNIT iot_operator_reconcile_duration_seconds seconds",
            "iot_operator_reconcile_duration_seconds_count 1",
            "iot_operator_reconcile_duration_seconds_bucket{le=\"0.001\"} 0",
            "iot_operator_reconcile_duration_seconds_bucket{le=\"0.002\"} 1",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
        }
        // Counted after registration: the registry holds the same values.
        m.kv_writes.add(1);
        assert!(text(&registry).contains("iot_operator_kv_writes_total 4\n"));
    }

    #[test]
    fn the_watch_lag_leaves_the_replayed_history_out() {
        let w = WatchMetrics::default();
        let sec = 1_000_000_000i128;
        // Replayed history: hours old, not lag.
        w.observe("device-status", 0, 3600 * sec, 5, false);
        // Live: 0.3 s, and a report "from the future" (clock skew) as 0.
        w.observe("device-status", 10 * sec, 10 * sec + 300_000_000, 0, true);
        w.observe("device-heartbeat", 10 * sec, 9 * sec, 2, true);
        let mut registry = Registry::default();
        w.register(&mut registry);
        let out = text(&registry);
        for line in [
            "iot_operator_status_watch_lag_seconds_count{bucket=\"device-status\"} 1",
            "iot_operator_status_watch_lag_seconds_sum{bucket=\"device-status\"} 0.3",
            "iot_operator_status_watch_lag_seconds_sum{bucket=\"device-heartbeat\"} 0.0",
            "iot_operator_status_watch_pending{bucket=\"device-status\"} 0",
            "iot_operator_status_watch_pending{bucket=\"device-heartbeat\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
        }
    }
}
