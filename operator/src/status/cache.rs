//! The last report of every device, kept current by watches on the
//! `device-status` and `device-heartbeat` buckets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use protocol::keys::{DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET};
use protocol::{DeploymentKey, Heartbeat};
use tokio::sync::mpsc;

use crate::metrics::WatchMetrics;
use crate::nats::{Nats, NatsError};
use error_report::Chain;

/// A device's last status for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The status as the agent wrote it.
    pub status: protocol::DeploymentStatus<'static>,
    /// When the server stored it, nanoseconds since the Unix epoch.
    pub stored_at_ns: i128,
    /// When the device stopped waiting at `status.revision` (server time,
    /// nanoseconds): when the first report after a `Waiting` one (or a
    /// `Failed` with reason `UpdateLockTimeout`) was stored. A report first
    /// seen in progress from before this cache existed (an operator
    /// restart) may have waited unseen: its own storing time stands in.
    /// `None` when it is not known to have waited there.
    pub stopped_waiting_ns: Option<i128>,
}

impl Report {
    /// What this report says of waiting at `revision`, for the rollout.
    pub fn wait_at(&self, revision: u64) -> WaitAt {
        if self.status.revision != revision {
            return WaitAt::default();
        }
        WaitAt {
            waiting: (self.status.phase == protocol::Phase::Waiting)
                .then_some((self.status.reason, self.status.waiting)),
            stopped_ns: self.stopped_waiting_ns,
        }
    }
}

/// What a device's reports say of its waiting to apply one revision: a
/// waiting device's progress deadline has not started, and starts when it
/// stops waiting (the agent starts its own deadline then too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitAt {
    /// While it reports `Waiting` at the revision: its reason, and since
    /// and until when (device clock).
    pub waiting: Option<(protocol::Reason, Option<protocol::Waiting>)>,
    /// When it stopped waiting there ([`Report::stopped_waiting_ns`]).
    pub stopped_ns: Option<i128>,
}

/// Whether `status` says its device holds the revision back: `Waiting`, or
/// `Failed` because the update lock was held too long (it still applies
/// the revision once the lock frees).
fn holds_back(status: &protocol::DeploymentStatus<'_>) -> bool {
    use protocol::{Phase, Reason};
    status.phase == Phase::Waiting
        || (status.phase == Phase::Failed && status.reason == Reason::UpdateLockTimeout)
}

/// [`Report::stopped_waiting_ns`] of `status`, stored at `at` after `prev`
/// by a cache created at `started_ns`.
fn stopped_waiting(
    prev: Option<&Report>,
    status: &protocol::DeploymentStatus<'_>,
    at: i128,
    started_ns: i128,
) -> Option<i128> {
    use protocol::Phase;
    if holds_back(status) {
        return None;
    }
    match prev.filter(|p| p.status.revision == status.revision) {
        Some(p) if holds_back(&p.status) => Some(at),
        Some(p) => p.stopped_waiting_ns,
        None => (at < started_ns
            && matches!(
                status.phase,
                Phase::Pending
                    | Phase::Pulling
                    | Phase::Starting
                    | Phase::Running
                    | Phase::Unhealthy
            ))
        .then_some(at),
    }
}

/// A device's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSeen {
    /// The heartbeat.
    pub heartbeat: Heartbeat<'static>,
    /// When the server stored it, nanoseconds since the Unix epoch.
    pub stored_at_ns: i128,
}

impl HeartbeatSeen {
    /// The device's warnings, as the agent wrote them.
    pub fn warnings(&self) -> Vec<String> {
        self.heartbeat
            .warnings
            .iter()
            .map(|w| w.as_str().to_string())
            .collect()
    }
}

/// Something a reconcile should look at again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A status for this deployment name changed.
    Deployment(String),
    /// This device's heartbeat appeared after being absent or stale, or its
    /// warnings changed.
    Device(String),
}

/// What a device's deployment reports add up to (the inventory's
/// `status.deployments`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Deployments the device reports on, except those it reports Removed.
    pub total: u64,
    /// Of those, how many are neither Running, Healthy nor Completed
    /// ([`super::phase_is_ready`]).
    pub not_ready: u64,
}

/// Where the inventory wants to hear of devices whose Device object may
/// have to change, and after how long a gap between two heartbeats a
/// device counts as having been silent.
#[derive(Debug)]
struct DeviceSubscription {
    tx: mpsc::UnboundedSender<String>,
    silence: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    /// deployment name -> device -> report.
    reports: HashMap<String, HashMap<String, Report>>,
    heartbeats: HashMap<String, HeartbeatSeen>,
    /// When each device's heartbeat was last deleted (or forgotten): a
    /// heartbeat stored before that is a replay (the one-shot `load`
    /// racing the watch) and is not taken in again.
    heartbeat_deleted_at: HashMap<String, i128>,
}

/// The last reports of every device, shared by the watches and reconciles.
#[derive(Debug)]
pub struct StatusCache {
    inner: RwLock<Inner>,
    changes: Option<mpsc::UnboundedSender<Change>>,
    devices: Mutex<Option<DeviceSubscription>>,
    heartbeat_timeout: Duration,
    /// When the cache was created: reports stored before are replays.
    started_ns: i128,
    /// How far behind [`StatusCache::watch`] runs.
    watch_metrics: WatchMetrics,
    /// Whether the watch of each bucket (status, heartbeat) has replayed
    /// its history ([`StatusCache::caught_up`]).
    caught_up: [AtomicBool; 2],
}

/// What the fleet metrics show of one device with a heartbeat
/// ([`StatusCache::device_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The device id.
    pub device: String,
    /// When its last heartbeat was stored, nanoseconds since the Unix epoch.
    pub heartbeat_at_ns: i128,
    /// The agent version its last heartbeat gives.
    pub agent_version: String,
    /// Its deployment reports, summed up.
    pub deployments: DeviceSummary,
}

impl StatusCache {
    /// An empty cache that sends a [`Change`] for every update.
    pub fn new(heartbeat_timeout: Duration) -> (Arc<StatusCache>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = StatusCache {
            inner: RwLock::default(),
            changes: Some(tx),
            devices: Mutex::default(),
            heartbeat_timeout,
            started_ns: now_ns(),
            watch_metrics: WatchMetrics::default(),
            caught_up: Default::default(),
        };
        (Arc::new(cache), rx)
    }

    /// An empty cache that notifies nobody.
    pub fn detached(heartbeat_timeout: Duration) -> Arc<StatusCache> {
        Arc::new(StatusCache {
            inner: RwLock::default(),
            changes: None,
            devices: Mutex::default(),
            heartbeat_timeout,
            started_ns: now_ns(),
            watch_metrics: WatchMetrics::default(),
            caught_up: Default::default(),
        })
    }

    /// How old a heartbeat may be before its device counts as unreachable.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Whether the cache holds every device's last records: the watch of
    /// each bucket has replayed the bucket's history (it took in a record
    /// with nothing more pending, or the bucket was empty when it
    /// started), or [`StatusCache::load`] read both. Until then the cache
    /// holds only part of the fleet, and counts from it would be too low.
    /// Once true it stays true: a watch re-established after an error
    /// replays into a cache that already holds the fleet.
    pub fn caught_up(&self) -> bool {
        self.caught_up.iter().all(|c| c.load(Ordering::Acquire))
    }

    /// Records that the cache holds the history of `bucket`
    /// (`device-status` or `device-heartbeat`; any other name is ignored):
    /// the watch calls it, and so may whoever fills a cache by hand.
    pub fn mark_caught_up(&self, bucket: &str) {
        let i = match bucket {
            DEVICE_STATUS_BUCKET => 0,
            DEVICE_HEARTBEAT_BUCKET => 1,
            _ => return,
        };
        if !self.caught_up[i].swap(true, Ordering::AcqRel) {
            tracing::info!(bucket, "status watch caught up with the bucket's history");
        }
    }

    /// How far behind [`StatusCache::watch`] runs (for `/metrics`).
    pub fn watch_metrics(&self) -> &WatchMetrics {
        &self.watch_metrics
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, change: Change) {
        if let Some(tx) = &self.changes {
            let _ = tx.send(change);
        }
    }

    /// Sends from now on the id of every device whose inventory may have
    /// changed: its first heartbeat, one after a gap longer than `silence`,
    /// a heartbeat that differs from the last in anything but uptime and
    /// timestamp, a deleted heartbeat, and a deployment report that
    /// appears, goes or changes readiness. Not sent for the steady stream
    /// of unchanged heartbeats (the [`Change`] channel is the Deployment
    /// controller's and keeps its meaning). A later call replaces the
    /// earlier subscriber.
    pub fn subscribe_devices(&self, silence: Duration) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.devices.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(DeviceSubscription { tx, silence });
        rx
    }

    fn notify_device(&self, device: &str) {
        if let Some(sub) = &*self.devices.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = sub.tx.send(device.to_string());
        }
    }

    fn device_silence(&self) -> Option<Duration> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.silence)
    }

    /// Takes in one record of the status bucket. Undecodable values are
    /// dropped with a warning; keys that are not `<device>.<deployment>`
    /// are ignored.
    pub fn ingest_status(&self, key: &str, value: &[u8], deleted: bool, stored_at_ns: i128) {
        let Ok(k) = DeploymentKey::parse(key) else {
            tracing::debug!(
                key,
                "ignoring a status key that is not <device>.<deployment>"
            );
            return;
        };
        let (device, deployment) = (k.device_id().to_string(), k.deployment().to_string());
        let prev = self.report(&device, &deployment);
        let before = prev.as_ref().map(|r| summary_part(&r.status.phase));
        if deleted {
            let mut inner = self.write();
            if let Some(m) = inner.reports.get_mut(&deployment) {
                m.remove(&device);
            }
            if before.is_some() {
                drop(inner);
                self.notify_device(&device);
            }
        } else {
            let status = match protocol::wire::decode::<protocol::DeploymentStatus<'_>>(value) {
                Ok(s) => s.into_owned(),
                Err(e) => {
                    tracing::warn!(key, error = %Chain(&e), "undecodable status report ignored");
                    return;
                }
            };
            let inventory_changed = before != Some(summary_part(&status.phase));
            let stopped_waiting_ns =
                stopped_waiting(prev.as_ref(), &status, stored_at_ns, self.started_ns);
            self.write()
                .reports
                .entry(deployment.clone())
                .or_default()
                .insert(
                    device.clone(),
                    Report {
                        status,
                        stored_at_ns,
                        stopped_waiting_ns,
                    },
                );
            if inventory_changed {
                self.notify_device(&device);
            }
        }
        self.notify(Change::Deployment(deployment));
    }

    /// Takes in one record of the heartbeat bucket.
    pub fn ingest_heartbeat(&self, key: &str, value: &[u8], deleted: bool, stored_at_ns: i128) {
        if protocol::keys::validate_device_id(key).is_err() {
            tracing::debug!(key, "ignoring a heartbeat key that is not a device id");
            return;
        }
        let now = now_ns();
        let previous = self.heartbeat(key);
        // Records can arrive out of order (the one-shot `load` racing the
        // watch): a record no newer than the last delete is from before it,
        // and must not bring a deleted (decommissioned) device back. An
        // older put over a newer one costs only a stale `lastSeen` until
        // the next heartbeat, so puts are not ordered among themselves.
        // Nor may an old delete remove a newer heartbeat.
        let (put_at, deleted_at) = {
            let inner = self.read();
            (
                inner.heartbeats.get(key).map(|h| h.stored_at_ns),
                inner.heartbeat_deleted_at.get(key).copied(),
            )
        };
        if deleted_at.is_some_and(|d| stored_at_ns <= d)
            || (deleted && put_at.is_some_and(|p| stored_at_ns < p))
        {
            tracing::debug!(key, "older heartbeat record ignored");
            return;
        }
        let (was_fresh, warnings_before) = previous.as_ref().map_or_else(
            || (false, Vec::new()),
            |h| {
                (
                    !is_stale(h.stored_at_ns, now, self.heartbeat_timeout),
                    h.warnings(),
                )
            },
        );
        if deleted {
            let removed = {
                let mut inner = self.write();
                inner
                    .heartbeat_deleted_at
                    .insert(key.to_string(), stored_at_ns);
                inner.heartbeats.remove(key).is_some()
            };
            if removed {
                self.notify_device(key);
            }
            return;
        }
        let heartbeat = match protocol::wire::decode::<Heartbeat<'_>>(value) {
            Ok(h) => h.into_owned(),
            Err(e) => {
                tracing::warn!(key, error = %Chain(&e), "undecodable heartbeat ignored");
                return;
            }
        };
        let seen = HeartbeatSeen {
            heartbeat,
            stored_at_ns,
        };
        // A warning that appears or clears matters as much as the device
        // coming back; so do new capabilities (an agent upgraded or
        // downgraded): what may be written to it changed; and a new
        // sealing key: its secrets are sealed to it anew.
        let warnings_changed = seen.warnings() != warnings_before
            || previous.as_ref().is_some_and(|p| {
                p.heartbeat.capabilities != seen.heartbeat.capabilities
                    || p.heartbeat.sealing_key != seen.heartbeat.sealing_key
            });
        let inventory_changed = match (&previous, self.device_silence()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(p), Some(silence)) => {
                !same_inventory(&p.heartbeat, &seen.heartbeat)
                    || is_stale(p.stored_at_ns, seen.stored_at_ns, silence)
            }
        };
        self.write().heartbeats.insert(key.to_string(), seen);
        if !was_fresh || warnings_changed {
            self.notify(Change::Device(key.to_string()));
        }
        if inventory_changed {
            self.notify_device(key);
        }
    }

    /// Forgets `device`'s heartbeat at once (it was just deleted from
    /// NATS, and the watch will say so later): until the board writes a
    /// newer one, the device is as if never heard of.
    pub fn forget_heartbeat(&self, device: &str) {
        let mut inner = self.write();
        if let Some(h) = inner.heartbeats.remove(device) {
            inner
                .heartbeat_deleted_at
                .insert(device.to_string(), h.stored_at_ns);
        }
    }

    /// The last report of `device` for `deployment`.
    pub fn report(&self, device: &str, deployment: &str) -> Option<Report> {
        self.read()
            .reports
            .get(deployment)
            .and_then(|m| m.get(device))
            .cloned()
    }

    /// Every report for `deployment`, by device.
    pub fn reports_for(&self, deployment: &str) -> HashMap<String, Report> {
        self.read()
            .reports
            .get(deployment)
            .cloned()
            .unwrap_or_default()
    }

    /// Every deployment name with at least one report.
    pub fn deployments(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().reports.keys().cloned().collect();
        v.sort();
        v
    }

    /// The last heartbeat of `device`.
    pub fn heartbeat(&self, device: &str) -> Option<HeartbeatSeen> {
        self.read().heartbeats.get(device).cloned()
    }

    /// Every device with a heartbeat, sorted.
    pub fn heartbeat_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().heartbeats.keys().cloned().collect();
        v.sort();
        v
    }

    /// What `device`'s deployment reports add up to.
    pub fn device_summary(&self, device: &str) -> DeviceSummary {
        let inner = self.read();
        let mut summary = DeviceSummary::default();
        for (present, ready) in inner
            .reports
            .values()
            .filter_map(|m| m.get(device))
            .map(|r| summary_part(&r.status.phase))
        {
            if present {
                summary.total += 1;
                summary.not_ready += u64::from(!ready);
            }
        }
        summary
    }

    /// Every device with a heartbeat, sorted by id, with what the fleet
    /// metrics show of it; one pass over the cache under one lock (a
    /// scrape at 10,000 devices must not take a lock per device).
    pub fn device_facts(&self) -> Vec<DeviceFacts> {
        let inner = self.read();
        let mut summaries: HashMap<&str, DeviceSummary> = HashMap::new();
        for by_device in inner.reports.values() {
            for (device, report) in by_device {
                let (present, ready) = summary_part(&report.status.phase);
                if present {
                    let s = summaries.entry(device.as_str()).or_default();
                    s.total += 1;
                    s.not_ready += u64::from(!ready);
                }
            }
        }
        let mut facts: Vec<DeviceFacts> = inner
            .heartbeats
            .iter()
            .map(|(device, seen)| DeviceFacts {
                device: device.clone(),
                heartbeat_at_ns: seen.stored_at_ns,
                agent_version: seen.heartbeat.agent_version.as_str().to_string(),
                deployments: summaries.get(device.as_str()).copied().unwrap_or_default(),
            })
            .collect();
        facts.sort_by(|a, b| a.device.cmp(&b.device));
        facts
    }

    /// Reads the current content of both buckets once (the CLI's `status`).
    pub async fn load(&self, nats: &Nats) -> Result<(), NatsError> {
        for r in nats.scan(DEVICE_STATUS_BUCKET, ">").await? {
            self.ingest_status(&r.key, &r.value, r.deleted, r.stored_at_ns);
        }
        for r in nats.scan(DEVICE_HEARTBEAT_BUCKET, ">").await? {
            self.ingest_heartbeat(&r.key, &r.value, r.deleted, r.stored_at_ns);
        }
        self.mark_caught_up(DEVICE_STATUS_BUCKET);
        self.mark_caught_up(DEVICE_HEARTBEAT_BUCKET);
        Ok(())
    }

    /// Follows both buckets until the task is dropped, re-establishing the
    /// watches after errors (a NATS restart loses them).
    pub async fn watch(self: Arc<Self>, nats: Nats) {
        let status = watch_bucket(self.clone(), nats.clone(), DEVICE_STATUS_BUCKET);
        let heartbeat = watch_bucket(self, nats, DEVICE_HEARTBEAT_BUCKET);
        futures::join!(status, heartbeat);
    }
}

async fn watch_bucket(cache: Arc<StatusCache>, nats: Nats, bucket: &'static str) {
    let mut failures = 0u32;
    loop {
        let result = async {
            let kv = nats.jetstream().get_key_value(bucket).await?;
            let watch_started_ns = now_ns();
            // An empty bucket has no history to replay (and the watch
            // would deliver nothing to say so).
            let empty = kv.status().await?.values() == 0;
            let mut watch = kv.watch_with_history(">").await?;
            tracing::info!(bucket, "watching device reports");
            if empty {
                cache.mark_caught_up(bucket);
            }
            while let Some(entry) = watch.next().await {
                match entry {
                    Ok(e) => {
                        failures = 0;
                        let deleted =
                            !matches!(e.operation, async_nats::jetstream::kv::Operation::Put);
                        let at = e.created.unix_timestamp_nanos();
                        if bucket == DEVICE_STATUS_BUCKET {
                            cache.ingest_status(&e.key, &e.value, deleted, at);
                        } else {
                            cache.ingest_heartbeat(&e.key, &e.value, deleted, at);
                        }
                        // Measured once folded in: what a reconcile can
                        // see. A (re)started watch first replays each
                        // key's last record: the age of one stored before
                        // the watch began is history, not lag.
                        let live = at >= watch_started_ns;
                        cache
                            .watch_metrics
                            .observe(bucket, at, now_ns(), e.delta, live);
                        // Nothing more pending: the history is in.
                        if e.delta == 0 {
                            cache.mark_caught_up(bucket);
                        }
                    }
                    // The watch recovers by itself (ordered consumer); an
                    // error item is not the end of the stream.
                    Err(e) => tracing::warn!(bucket, error = %Chain(&e), "watch error"),
                }
            }
            Ok::<(), async_nats::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(bucket, error = %Chain(&*e), "cannot watch device reports; retrying");
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(20)))).await;
    }
}

/// What one report adds to a [`DeviceSummary`]: (counted, ready).
fn summary_part(phase: &protocol::Phase) -> (bool, bool) {
    use protocol::Phase;
    (
        !matches!(phase, Phase::Removed),
        super::phase_is_ready(*phase),
    )
}

/// Whether two heartbeats say the same of the device, apart from what
/// changes at every heartbeat (uptime, timestamp).
fn same_inventory(a: &Heartbeat<'_>, b: &Heartbeat<'_>) -> bool {
    a.agent_version == b.agent_version
        && a.arch == b.arch
        && a.os == b.os
        && a.podman_version == b.podman_version
        && a.deployments == b.deployments
        && a.warnings == b.warnings
        && a.kernel == b.kernel
        && a.boot_id == b.boot_id
        && a.labels == b.labels
        && a.capabilities == b.capabilities
        && a.sealing_key == b.sealing_key
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i128 {
    Timestamp::now().as_nanosecond()
}

/// Whether a heartbeat stored at `stored_at_ns` is older than `timeout` at `now_ns`.
pub(crate) fn is_stale(stored_at_ns: i128, now_ns: i128, timeout: Duration) -> bool {
    now_ns - stored_at_ns > timeout.as_nanos() as i128
}

/// RFC 3339 with seconds, as Kubernetes writes times.
pub fn rfc3339(ns: i128) -> String {
    Timestamp::from_nanosecond(ns)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::testdata::{heartbeat_bytes, heartbeat_warning_bytes, status_bytes};
    use protocol::Phase;

    #[test]
    fn caught_up_once_both_buckets_are() {
        let cache = StatusCache::detached(Duration::from_secs(60));
        assert!(!cache.caught_up());
        cache.mark_caught_up(DEVICE_STATUS_BUCKET);
        cache.mark_caught_up("some-other-bucket");
        assert!(!cache.caught_up(), "the heartbeats are still replaying");
        cache.mark_caught_up(DEVICE_HEARTBEAT_BUCKET);
        assert!(cache.caught_up());
        cache.mark_caught_up(DEVICE_HEARTBEAT_BUCKET);
        assert!(cache.caught_up(), "stays caught up");
    }

    #[test]
    fn notifies_changes() {
        let (cache, mut rx) = StatusCache::new(Duration::from_secs(60));
        cache.ingest_status("a.web", &status_bytes(1, Phase::Running), false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Deployment("web".into()));
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now_ns());
        assert!(
            rx.try_recv().is_err(),
            "a fresh device's next heartbeat is no change"
        );
        // A new sealing key is a change (its secrets are sealed anew), once.
        let plain = heartbeat_bytes();
        let mut keyed: Heartbeat<'_> = protocol::wire::decode(&plain).unwrap();
        keyed.sealing_key = protocol::Text::borrowed("XKEY");
        let keyed = protocol::wire::encode_to_vec(&keyed).unwrap();
        cache.ingest_heartbeat("a", &keyed, false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        cache.ingest_heartbeat("a", &keyed, false, now_ns());
        assert!(rx.try_recv().is_err(), "the same key again is no change");
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        // A warning appearing, and clearing, is a change.
        cache.ingest_heartbeat("a", &heartbeat_warning_bytes("disk full"), false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        cache.ingest_heartbeat("a", &heartbeat_warning_bytes("disk full"), false, now_ns());
        assert!(
            rx.try_recv().is_err(),
            "the same warning again is no change"
        );
        assert_eq!(cache.heartbeat("a").unwrap().warnings(), ["disk full"]);
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        assert!(cache.heartbeat("a").unwrap().warnings().is_empty());
        // An agent that now reads another score type is a change.
        let mut upgraded = protocol::wire::decode::<Heartbeat>(&heartbeat_bytes())
            .unwrap()
            .into_owned();
        upgraded
            .capabilities
            .score_types
            .push(protocol::ScoreTypeSupport {
                type_name: protocol::Text::borrowed("PodmanV1"),
                versions: upgraded.capabilities.desired_state_versions.clone(),
            })
            .unwrap();
        let bytes = protocol::wire::encode_to_vec(&upgraded).unwrap();
        cache.ingest_heartbeat("a", &bytes, false, now_ns());
        assert_eq!(rx.try_recv().unwrap(), Change::Device("a".into()));
        cache.ingest_heartbeat("a", &bytes, false, now_ns());
        assert!(rx.try_recv().is_err(), "the same capabilities again");
        cache.ingest_status("not-a-key", b"x", false, 0);
        cache.ingest_status("a.web2", b"garbage", false, 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_inventory_hears_of_changes_not_of_every_heartbeat() {
        let sec = 1_000_000_000i128;
        let cache = StatusCache::detached(Duration::from_secs(60));
        let mut rx = cache.subscribe_devices(Duration::from_secs(300));
        let t0 = now_ns();
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0);
        assert_eq!(rx.try_recv().unwrap(), "a", "first heartbeat");
        for n in 1..50 {
            // Only the uptime and timestamp would differ: no news.
            cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0 + n * 30 * sec);
        }
        assert!(rx.try_recv().is_err());
        cache.ingest_heartbeat(
            "a",
            &heartbeat_warning_bytes("disk full"),
            false,
            t0 + 1500 * sec,
        );
        assert_eq!(rx.try_recv().unwrap(), "a", "a warning");
        // Back after a silence longer than the inventory's.
        cache.ingest_heartbeat(
            "a",
            &heartbeat_warning_bytes("disk full"),
            false,
            t0 + 1900 * sec,
        );
        assert_eq!(rx.try_recv().unwrap(), "a", "back from silence");
        // Deployment reports: appearing, changing readiness, going.
        cache.ingest_status("a.web", &status_bytes(1, Phase::Pulling), false, t0);
        assert_eq!(rx.try_recv().unwrap(), "a");
        assert_eq!(
            cache.device_summary("a"),
            DeviceSummary {
                total: 1,
                not_ready: 1
            }
        );
        cache.ingest_status("a.web", &status_bytes(1, Phase::Starting), false, t0);
        assert!(rx.try_recv().is_err(), "still not ready");
        cache.ingest_status("a.web", &status_bytes(1, Phase::Running), false, t0);
        assert_eq!(rx.try_recv().unwrap(), "a");
        cache.ingest_status("a.web", &status_bytes(1, Phase::Healthy), false, t0);
        assert!(rx.try_recv().is_err(), "Healthy is as ready as Running");
        for phase in [Phase::CrashLoopBackOff, Phase::Unhealthy, Phase::RolledBack] {
            cache.ingest_status("a.web", &status_bytes(1, phase), false, t0);
            assert_eq!(cache.device_summary("a").not_ready, 1, "{phase}");
            cache.ingest_status("a.web", &status_bytes(1, Phase::Healthy), false, t0);
        }
        while rx.try_recv().is_ok() {}
        cache.ingest_status("a.db", &status_bytes(1, Phase::Removed), false, t0);
        assert_eq!(
            cache.device_summary("a"),
            DeviceSummary {
                total: 1,
                not_ready: 0
            }
        );
        assert_eq!(rx.try_recv().unwrap(), "a");
        cache.ingest_status("a.web", b"", true, t0);
        assert_eq!(rx.try_recv().unwrap(), "a");
        assert_eq!(cache.device_summary("a"), DeviceSummary::default());
        cache.ingest_heartbeat("a", b"", true, t0 + 2000 * sec);
        assert_eq!(rx.try_recv().unwrap(), "a", "heartbeat deleted");
        // The put before the delete, read again (a one-shot read racing the
        // watch), does not bring it back.
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0 + 1900 * sec);
        assert!(cache.heartbeat("a").is_none());
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0 + 2030 * sec);
        assert!(cache.heartbeat("a").is_some(), "a newer put is taken in");
        cache.forget_heartbeat("a");
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0 + 2030 * sec);
        assert!(
            cache.heartbeat("a").is_none(),
            "forgotten until a newer put"
        );
        assert!(cache.heartbeat_devices().is_empty());
    }

    #[test]
    fn remembers_when_a_device_stopped_waiting() {
        use crate::status::testdata::waiting_status_bytes;
        use protocol::Reason;
        let sec = 1_000_000_000i128;
        let cache = StatusCache::detached(Duration::from_secs(60));
        let t0 = now_ns();
        let stopped = |c: &StatusCache| c.report("a", "web").unwrap().stopped_waiting_ns;
        let wait =
            |rev| waiting_status_bytes(rev, Phase::Waiting, Reason::UpdateLocked, Some(1), 0, None);
        cache.ingest_status("a.web", &status_bytes(2, Phase::Pending), false, t0);
        assert_eq!(stopped(&cache), None, "a live report that never waited");
        cache.ingest_status("a.web", &wait(2), false, t0 + sec);
        let r = cache.report("a", "web").unwrap();
        assert_eq!(r.stopped_waiting_ns, None);
        let at = r.wait_at(2);
        assert_eq!(
            at.waiting.map(|(reason, _)| reason),
            Some(Reason::UpdateLocked)
        );
        assert_eq!(r.wait_at(3), WaitAt::default(), "another revision");
        cache.ingest_status(
            "a.web",
            &status_bytes(2, Phase::Pulling),
            false,
            t0 + 9 * sec,
        );
        assert_eq!(
            stopped(&cache),
            Some(t0 + 9 * sec),
            "the first report after waiting"
        );
        cache.ingest_status(
            "a.web",
            &status_bytes(2, Phase::Running),
            false,
            t0 + 12 * sec,
        );
        assert_eq!(
            stopped(&cache),
            Some(t0 + 9 * sec),
            "kept while the revision holds"
        );
        assert_eq!(
            cache.report("a", "web").unwrap().wait_at(2),
            WaitAt {
                waiting: None,
                stopped_ns: Some(t0 + 9 * sec)
            }
        );
        // A lock held past its timeout, then released.
        let lock_timeout = waiting_status_bytes(
            2,
            Phase::Failed,
            Reason::UpdateLockTimeout,
            Some(1),
            0,
            None,
        );
        cache.ingest_status("a.web", &lock_timeout, false, t0 + 20 * sec);
        assert_eq!(stopped(&cache), None);
        cache.ingest_status(
            "a.web",
            &status_bytes(2, Phase::Starting),
            false,
            t0 + 30 * sec,
        );
        assert_eq!(stopped(&cache), Some(t0 + 30 * sec));
        cache.ingest_status(
            "a.web",
            &status_bytes(3, Phase::Pending),
            false,
            t0 + 40 * sec,
        );
        assert_eq!(stopped(&cache), None, "a new revision starts afresh");

        // An operator that restarts reads reports stored before it: one in
        // progress may have waited unseen, so its deadline counts from it.
        let restarted = StatusCache::detached(Duration::from_secs(60));
        restarted.ingest_status("a.web", &status_bytes(2, Phase::Starting), false, t0);
        assert_eq!(stopped(&restarted), Some(t0));
        restarted.ingest_status("b.web", &status_bytes(2, Phase::Healthy), false, t0);
        assert_eq!(
            restarted.report("b", "web").unwrap().stopped_waiting_ns,
            None
        );
    }
}
