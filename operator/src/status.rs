//! Device reports back into the Deployment's `.status`.
//!
//! [`StatusCache`] holds the last status of every `<device>.<deployment>`
//! and the last heartbeat of every device, fed by watches on the
//! `device-status` and `device-heartbeat` buckets ([`StatusCache::watch`]) or
//! by a one-off read ([`StatusCache::load`]). [`fold_status`] turns the
//! cache plus what the operator wrote into the CR status: counts over every
//! target, conditions, and entries for the (at most
//! [`MAX_LISTED_DEVICES`]) targets that are not ready.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use protocol::keys::{DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET};
use protocol::{DeploymentKey, Heartbeat, Phase};
use tokio::sync::mpsc;

use crate::apply::{Conflict, PlanError, UnknownType};
use crate::crd::{
    Condition, Deployment, DeploymentStatus, DeviceStatus, MAX_LISTED_DEVICES, revision_string,
};
use crate::nats::{Nats, NatsError};

/// A device's last status for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The status as the agent wrote it.
    pub status: protocol::DeploymentStatus<'static>,
    /// When the server stored it, nanoseconds since the Unix epoch.
    pub stored_at_ns: i128,
}

/// A device's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSeen {
    /// The heartbeat.
    pub heartbeat: Heartbeat<'static>,
    /// When the server stored it, nanoseconds since the Unix epoch.
    pub stored_at_ns: i128,
}

/// Something a reconcile should look at again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A status for this deployment name changed.
    Deployment(String),
    /// This device's heartbeat appeared after being absent or stale.
    Device(String),
}

#[derive(Debug, Default)]
struct Inner {
    /// deployment name -> device -> report.
    reports: HashMap<String, HashMap<String, Report>>,
    heartbeats: HashMap<String, HeartbeatSeen>,
}

/// The last reports of every device, shared by the watches and reconciles.
#[derive(Debug)]
pub struct StatusCache {
    inner: RwLock<Inner>,
    changes: Option<mpsc::UnboundedSender<Change>>,
    heartbeat_timeout: Duration,
}

impl StatusCache {
    /// An empty cache that sends a [`Change`] for every update.
    pub fn new(heartbeat_timeout: Duration) -> (Arc<StatusCache>, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = StatusCache {
            inner: RwLock::default(),
            changes: Some(tx),
            heartbeat_timeout,
        };
        (Arc::new(cache), rx)
    }

    /// An empty cache that notifies nobody.
    pub fn detached(heartbeat_timeout: Duration) -> Arc<StatusCache> {
        Arc::new(StatusCache {
            inner: RwLock::default(),
            changes: None,
            heartbeat_timeout,
        })
    }

    /// How old a heartbeat may be before its device counts as unreachable.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
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
        if deleted {
            let mut inner = self.write();
            if let Some(m) = inner.reports.get_mut(&deployment) {
                m.remove(&device);
            }
        } else {
            let status = match protocol::wire::decode::<protocol::DeploymentStatus<'_>>(value) {
                Ok(s) => s.into_owned(),
                Err(e) => {
                    tracing::warn!(key, error = %e, "undecodable status report ignored");
                    return;
                }
            };
            self.write()
                .reports
                .entry(deployment.clone())
                .or_default()
                .insert(
                    device,
                    Report {
                        status,
                        stored_at_ns,
                    },
                );
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
        let was_fresh = self
            .read()
            .heartbeats
            .get(key)
            .is_some_and(|h| !is_stale(h.stored_at_ns, now, self.heartbeat_timeout));
        if deleted {
            self.write().heartbeats.remove(key);
            return;
        }
        let heartbeat = match protocol::wire::decode::<Heartbeat<'_>>(value) {
            Ok(h) => h.into_owned(),
            Err(e) => {
                tracing::warn!(key, error = %e, "undecodable heartbeat ignored");
                return;
            }
        };
        self.write().heartbeats.insert(
            key.to_string(),
            HeartbeatSeen {
                heartbeat,
                stored_at_ns,
            },
        );
        if !was_fresh {
            self.notify(Change::Device(key.to_string()));
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

    /// Devices whose heartbeat is fresh right now.
    pub fn devices_reporting(&self) -> usize {
        let now = now_ns();
        self.read()
            .heartbeats
            .values()
            .filter(|h| !is_stale(h.stored_at_ns, now, self.heartbeat_timeout))
            .count()
    }

    /// Reads the current content of both buckets once (the CLI's `status`).
    pub async fn load(&self, nats: &Nats) -> Result<(), NatsError> {
        for r in nats.scan(DEVICE_STATUS_BUCKET, ">").await? {
            self.ingest_status(&r.key, &r.value, r.deleted, r.stored_at_ns);
        }
        for r in nats.scan(DEVICE_HEARTBEAT_BUCKET, ">").await? {
            self.ingest_heartbeat(&r.key, &r.value, r.deleted, r.stored_at_ns);
        }
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
            let mut watch = kv.watch_with_history(">").await?;
            tracing::info!(bucket, "watching device reports");
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
                    }
                    // The watch recovers by itself (ordered consumer); an
                    // error item is not the end of the stream.
                    Err(e) => tracing::warn!(bucket, error = %e, "watch error"),
                }
            }
            Ok::<(), async_nats::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(bucket, error = %e, "cannot watch device reports; retrying");
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(20)))).await;
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i128 {
    Timestamp::now().as_nanosecond()
}

fn is_stale(stored_at_ns: i128, now_ns: i128, timeout: Duration) -> bool {
    now_ns - stored_at_ns > timeout.as_nanos() as i128
}

/// RFC 3339 with seconds, as Kubernetes writes times.
pub fn rfc3339(ns: i128) -> String {
    Timestamp::from_nanosecond(ns)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// What the reconcile did, as input to [`fold_status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The revision now on the devices' keys (None before the first write).
    pub revision: Option<u64>,
    /// The JSON of the score with that revision.
    pub score_json: Option<String>,
    /// The devices targeted.
    pub targets: Vec<String>,
    /// Targets owned by another Deployment of the same name.
    pub conflicts: Vec<Conflict>,
    /// Why the spec could not be written, if it could not.
    pub invalid: Option<PlanError>,
    /// Set when the score type is not one this operator knows.
    pub unknown_type: Option<UnknownType>,
}

/// Condition types.
pub mod conditions {
    /// Every target runs the current revision.
    pub const READY: &str = "Ready";
    /// Some targets do not run the current revision yet.
    pub const PROGRESSING: &str = "Progressing";
    /// Some targets failed or are unreachable, or the spec is unusable.
    pub const DEGRADED: &str = "Degraded";
    /// The score does not fit its type; nothing was written.
    pub const INVALID_SCORE: &str = "InvalidScore";
    /// Another Deployment of this name owns some targets' keys.
    pub const CONFLICT: &str = "Conflict";
    /// The score type is unknown to this operator and routed as JSON.
    pub const UNKNOWN_SCORE_TYPE: &str = "UnknownScoreType";
}

/// Why a target is listed in `.status.devices`; the order is the list's,
/// worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attention {
    /// Failed or Unsupported at the current revision.
    Failed,
    /// Another Deployment of this name owns the key; nothing was written.
    Conflict,
    /// The heartbeat is stale.
    Unreachable,
    /// Never reported for this deployment.
    NoReport,
    /// Reports another revision than the current one.
    Outdated,
    /// At the current revision but not (yet) Running or Completed.
    RollingOut,
}

/// The CR status for `deployment`, from what the reconcile did and the
/// devices' reports: exact counts over every target, entries only for the
/// targets not ready (see [`DeploymentStatus::devices`]). `now_ns` is the operator's clock; `prev` conditions
/// keep their transition time while their status does not change.
pub fn fold_status(
    deployment: &Deployment,
    observed: &Observed,
    cache: &StatusCache,
    now_ns: i128,
) -> DeploymentStatus {
    let name = deployment.name_str();
    let generation = deployment.metadata.generation;
    let prev = deployment.status.clone().unwrap_or_default();
    let reports = cache.reports_for(name);
    // Only the devices that need attention, ranked; ready ones are counted.
    let mut not_ready: Vec<(Attention, DeviceStatus)> = Vec::new();
    let (mut up_to_date, mut ready, mut failed) = (0i64, 0i64, 0i64);
    let mut failing: Vec<String> = Vec::new();
    let mut unreachable: Vec<String> = Vec::new();
    for device in &observed.targets {
        if let Some(c) = observed.conflicts.iter().find(|c| &c.device == device) {
            not_ready.push((
                Attention::Conflict,
                DeviceStatus {
                    device: device.clone(),
                    phase: "Conflict".into(),
                    revision: None,
                    message: Some(format!("the key {device}.{name} belongs to {}", c.owner)),
                    last_report_time: None,
                },
            ));
            continue;
        }
        let stale = cache.heartbeat(device).map(|h| {
            (
                is_stale(h.stored_at_ns, now_ns, cache.heartbeat_timeout),
                h.stored_at_ns,
            )
        });
        let report = reports.get(device);
        let current = report.is_some_and(|r| Some(r.status.revision) == observed.revision);
        let reachable = !matches!(stale, Some((true, _)));
        let phase = report.map(|r| r.status.phase);
        let is_failed = current && matches!(phase, Some(Phase::Failed | Phase::Unsupported));
        if current {
            up_to_date += 1;
        }
        if is_failed {
            failed += 1;
            failing.push(device.clone());
        }
        if !reachable {
            unreachable.push(device.clone());
        }
        let attention = if is_failed {
            Attention::Failed
        } else if !reachable {
            Attention::Unreachable
        } else if report.is_none() {
            Attention::NoReport
        } else if !current {
            Attention::Outdated
        } else if matches!(phase, Some(Phase::Running | Phase::Completed)) {
            ready += 1;
            continue;
        } else {
            Attention::RollingOut
        };
        let mut entry = match report {
            Some(r) => DeviceStatus {
                device: device.clone(),
                phase: r.status.phase.as_str().into(),
                revision: Some(revision_string(r.status.revision)),
                message: (!r.status.message.is_empty()).then(|| r.status.message.to_string()),
                last_report_time: Some(rfc3339(r.stored_at_ns)),
            },
            None => DeviceStatus {
                device: device.clone(),
                phase: "Unknown".into(),
                revision: None,
                message: Some("no status reported yet".into()),
                last_report_time: None,
            },
        };
        if let Some((true, seen)) = stale {
            let last = report.map(|r| r.status.phase.as_str()).unwrap_or("none");
            entry.message = Some(format!(
                "unreachable: last heartbeat at {} (last phase: {last})",
                rfc3339(seen)
            ));
            entry.phase = "Unreachable".into();
        }
        not_ready.push((attention, entry));
    }
    let worst_first = |(a, x): &(Attention, DeviceStatus), (b, y): &(Attention, DeviceStatus)| {
        a.cmp(b).then_with(|| x.device.cmp(&y.device))
    };
    let devices_omitted = not_ready.len().saturating_sub(MAX_LISTED_DEVICES) as i64;
    if devices_omitted > 0 {
        // Only the listed ones need sorting (a fresh apply has every target
        // not ready).
        not_ready.select_nth_unstable_by(MAX_LISTED_DEVICES, worst_first);
        not_ready.truncate(MAX_LISTED_DEVICES);
    }
    not_ready.sort_unstable_by(worst_first);
    let devices: Vec<DeviceStatus> = not_ready.into_iter().map(|(_, d)| d).collect();
    let targeted = observed.targets.len() as i64;
    let now = rfc3339(now_ns);
    let mut conds = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = prev
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time,
            observed_generation: generation,
            reason: reason.into(),
            message,
        });
    };
    let all_ready = ready == targeted && observed.invalid.is_none();
    set(
        conditions::READY,
        all_ready,
        if all_ready {
            "AllTargetsReady"
        } else {
            "TargetsNotReady"
        },
        format!("{ready}/{targeted} targets run the current revision"),
    );
    let progressing = up_to_date < targeted;
    set(
        conditions::PROGRESSING,
        progressing,
        if progressing {
            "RollingOut"
        } else {
            "RolloutComplete"
        },
        format!("{up_to_date}/{targeted} targets report the current revision"),
    );
    let spec_broken = observed.invalid.as_ref().filter(|e| !e.is_score_error());
    let degraded = failed > 0 || !unreachable.is_empty() || spec_broken.is_some();
    let degraded_msg = if let Some(e) = spec_broken {
        e.to_string()
    } else if degraded {
        let mut parts = Vec::new();
        if !failing.is_empty() {
            parts.push(format!("failed: {}", short_list(&failing)));
        }
        if !unreachable.is_empty() {
            parts.push(format!("unreachable: {}", short_list(&unreachable)));
        }
        parts.join("; ")
    } else {
        "no target failed or unreachable".into()
    };
    set(
        conditions::DEGRADED,
        degraded,
        if spec_broken.is_some() {
            "InvalidSpec"
        } else if !failing.is_empty() {
            "TargetsFailed"
        } else if degraded {
            "TargetsUnreachable"
        } else {
            "Healthy"
        },
        degraded_msg,
    );
    let score_err = observed.invalid.as_ref().filter(|e| e.is_score_error());
    set(
        conditions::INVALID_SCORE,
        score_err.is_some(),
        if score_err.is_some() {
            "ScoreRejected"
        } else {
            "ScoreValid"
        },
        score_err.map_or_else(|| "the score is valid".into(), |e| e.to_string()),
    );
    let conflict_devices: Vec<String> = observed
        .conflicts
        .iter()
        .map(|c| c.device.clone())
        .collect();
    set(
        conditions::CONFLICT,
        !conflict_devices.is_empty(),
        if conflict_devices.is_empty() {
            "NoConflict"
        } else {
            "KeyOwnedElsewhere"
        },
        match observed.conflicts.first() {
            None => "no other Deployment of this name targets these devices".into(),
            Some(c) => format!(
                "another Deployment named {name} ({}) owns the key on {}; nothing was written there",
                c.owner,
                short_list(&conflict_devices)
            ),
        },
    );
    if let Some(u) = &observed.unknown_type {
        set(
            conditions::UNKNOWN_SCORE_TYPE,
            true,
            "RoutedAsJson",
            u.message(),
        );
    }
    DeploymentStatus {
        observed_generation: generation,
        observed_score_string: observed.score_json.clone(),
        revision: observed.revision.map(revision_string),
        conditions: conds,
        devices,
        devices_omitted,
        targeted,
        up_to_date,
        ready,
        failed,
    }
}

fn short_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// The `iot-operator status [NAME]` table: one row per device and
/// deployment with a desired-state key or a status report, read from NATS.
pub async fn status_table(nats: &Nats, name: Option<&str>) -> Result<String, NatsError> {
    use std::collections::BTreeMap;
    let filter = match name {
        Some(n) => {
            protocol::keys::validate_deployment_name(n)
                .map_err(|e| NatsError::Config(e.to_string()))?;
            format!("*.{n}")
        }
        None => ">".to_string(),
    };
    let cache = StatusCache::detached(Duration::from_secs(90));
    cache.load(nats).await?;
    // (deployment, device) -> desired revision
    let mut rows: BTreeMap<(String, String), Option<u64>> = BTreeMap::new();
    for r in nats
        .scan(protocol::keys::DESIRED_STATE_BUCKET, &filter)
        .await?
    {
        let Ok(k) = DeploymentKey::parse(&r.key) else {
            continue;
        };
        if r.deleted {
            continue;
        }
        let rev = protocol::wire::decode::<protocol::DesiredState<'_>>(&r.value)
            .ok()
            .map(|d| d.revision);
        rows.insert((k.deployment().into(), k.device_id().into()), rev);
    }
    for dep in cache.deployments() {
        if name.is_some_and(|n| n != dep) {
            continue;
        }
        for device in cache.reports_for(&dep).into_keys() {
            rows.entry((dep.clone(), device)).or_insert(None);
        }
    }
    let now = now_ns();
    let mut table = vec![
        [
            "DEPLOYMENT",
            "DEVICE",
            "DESIRED",
            "REPORTED",
            "PHASE",
            "HEARTBEAT",
            "MESSAGE",
        ]
        .map(String::from),
    ];
    for ((dep, device), desired) in rows {
        let report = cache.report(&device, &dep);
        let heartbeat = cache.heartbeat(&device);
        let stale = heartbeat
            .as_ref()
            .is_some_and(|h| is_stale(h.stored_at_ns, now, cache.heartbeat_timeout));
        table.push([
            dep,
            device,
            desired.map_or("-".into(), revision_string),
            report
                .as_ref()
                .map_or("-".into(), |r| revision_string(r.status.revision)),
            match (&report, stale) {
                (_, true) => "Unreachable".into(),
                (Some(r), false) => r.status.phase.as_str().into(),
                (None, false) => "Unknown".into(),
            },
            heartbeat.map_or("never".into(), |h| {
                format!("{}s ago", ((now - h.stored_at_ns).max(0) / 1_000_000_000))
            }),
            report.map_or(String::new(), |r| r.status.message.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeploymentSpec, Rollout, Score};
    use protocol::{BoundedVec, Text};

    /// `(device, phase)` of each device the status lists, in order.
    fn listed(s: &crate::crd::DeploymentStatus) -> Vec<(&str, &str)> {
        s.devices
            .iter()
            .map(|d| (d.device.as_str(), d.phase.as_str()))
            .collect()
    }

    fn status_bytes(revision: u64, phase: Phase) -> Vec<u8> {
        protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
            revision,
            phase,
            containers: BoundedVec::new(),
            message: Text::borrowed(""),
            timestamp_ms: 0,
        })
        .unwrap()
    }

    fn status_bytes_msg(revision: u64, phase: Phase, message: &str) -> Vec<u8> {
        protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
            revision,
            phase,
            containers: BoundedVec::new(),
            message: Text::borrowed(message),
            timestamp_ms: 0,
        })
        .unwrap()
    }

    fn heartbeat_bytes() -> Vec<u8> {
        protocol::wire::encode_to_vec(&Heartbeat {
            agent_version: Text::borrowed("0.1.0"),
            arch: Text::borrowed("aarch64"),
            os: Text::borrowed("linux"),
            podman_version: Text::borrowed("4.3.1"),
            uptime_secs: 1,
            deployments: 1,
            timestamp_ms: 0,
        })
        .unwrap()
    }

    fn deployment() -> Deployment {
        let mut d = Deployment::new(
            "web",
            DeploymentSpec {
                target_devices: vec!["a".into(), "b".into(), "c".into()],
                rollout: Rollout::default(),
                score: Score {
                    type_name: "PodmanV0".into(),
                    data: serde_json::json!({}),
                },
            },
        );
        d.metadata.generation = Some(3);
        d
    }

    #[test]
    fn folds_reports_heartbeats_and_conflicts() {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let now = now_ns();
        let minute = 60_000_000_000i128;
        cache.ingest_status("a.web", &status_bytes(7, Phase::Running), false, now);
        cache.ingest_status("b.web", &status_bytes(7, Phase::Failed), false, now);
        cache.ingest_status("c.web", &status_bytes(7, Phase::Running), false, now);
        cache.ingest_status("a.other", &status_bytes(1, Phase::Running), false, now);
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, now);
        cache.ingest_heartbeat("c", &heartbeat_bytes(), false, now - 2 * minute);
        let mut d = deployment();
        d.spec.target_devices.push("d".into());
        let observed = Observed {
            revision: Some(7),
            score_json: Some("{}".into()),
            targets: vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            conflicts: vec![Conflict {
                device: "e".into(),
                owner: "other/web".into(),
            }],
            ..Default::default()
        };
        let s = fold_status(&d, &observed, &cache, now);
        assert_eq!((s.targeted, s.up_to_date, s.ready, s.failed), (5, 3, 1, 1));
        // The ready device a is only counted; the rest are listed worst first.
        let listed = listed(&s);
        assert_eq!(
            listed,
            [
                ("b", "Failed"),
                ("e", "Conflict"),
                ("c", "Unreachable"),
                ("d", "Unknown")
            ]
        );
        assert_eq!(s.devices_omitted, 0);
        assert_eq!(s.revision.as_deref(), Some("0000000000000007"));
        let cond = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(cond("Ready").status, "False");
        assert_eq!(cond("Degraded").status, "True");
        assert!(
            cond("Degraded").message.contains("failed: b"),
            "{:?}",
            cond("Degraded")
        );
        assert!(cond("Degraded").message.contains("unreachable: c"));
        assert_eq!(cond("Conflict").status, "True");
        assert!(cond("Conflict").message.contains("other/web"));
        assert_eq!(cond("InvalidScore").status, "False");
        assert_eq!(cond("Progressing").status, "True");
        assert_eq!(s.observed_generation, Some(3));
    }

    fn device_id(i: usize) -> String {
        format!("dev-{i:05}")
    }

    /// A cache where every one of `n` targets runs revision 7 with a fresh
    /// heartbeat, and the Observed of that revision.
    fn healthy_fleet(n: usize, now: i128) -> (Arc<StatusCache>, Observed) {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let running = status_bytes(7, Phase::Running);
        let hb = heartbeat_bytes();
        let targets: Vec<String> = (0..n).map(device_id).collect();
        for t in &targets {
            cache.ingest_status(&format!("{t}.web"), &running, false, now);
            cache.ingest_heartbeat(t, &hb, false, now);
        }
        let observed = Observed {
            revision: Some(7),
            score_json: Some("{}".into()),
            targets,
            ..Default::default()
        };
        (cache, observed)
    }

    /// `listed + omitted` must be every target that is not ready.
    fn assert_accounts_for_all(s: &DeploymentStatus) {
        assert_eq!(
            s.devices.len() as i64 + s.devices_omitted,
            s.targeted - s.ready,
            "every not-ready target is listed or counted as omitted"
        );
        assert!(s.devices.len() <= MAX_LISTED_DEVICES);
    }

    #[test]
    fn a_healthy_fleet_of_ten_thousand_lists_no_device() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.failed),
            (10_000, 10_000, 10_000, 0)
        );
        assert!(s.devices.is_empty(), "{:?}", &s.devices[..3]);
        assert_eq!(s.devices_omitted, 0);
        assert_accounts_for_all(&s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["devices"], serde_json::json!([]));
        assert_eq!(
            json["devicesOmitted"], 0,
            "always sent, so a merge patch resets it"
        );
    }

    #[test]
    fn lists_only_not_ready_devices_worst_first() {
        let now = now_ns();
        let minute = 60_000_000_000i128;
        let (cache, mut observed) = healthy_fleet(20, now);
        // Targets are in no particular order; the list is by rank then id.
        let set = |i: usize, rev: u64, phase: Phase| {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(rev, phase),
                false,
                now,
            );
        };
        set(17, 7, Phase::Pulling); // rolling out
        set(3, 6, Phase::Running); // older revision
        set(12, 7, Phase::Unsupported); // failed
        set(5, 7, Phase::Failed); // failed
        set(9, 6, Phase::Failed); // an old revision failed: outdated
        cache.ingest_heartbeat(&device_id(1), &heartbeat_bytes(), false, now - 5 * minute);
        observed.targets.reverse();
        observed.targets.push("never".into());
        observed.targets.push("taken".into());
        observed.conflicts.push(Conflict {
            device: "taken".into(),
            owner: "other/web".into(),
        });
        let s = fold_status(&deployment(), &observed, &cache, now);
        let listed = listed(&s);
        assert_eq!(
            listed,
            [
                ("dev-00005", "Failed"),
                ("dev-00012", "Unsupported"),
                ("taken", "Conflict"),
                ("dev-00001", "Unreachable"),
                ("never", "Unknown"),
                ("dev-00003", "Running"),
                ("dev-00009", "Failed"),
                ("dev-00017", "Pulling"),
            ]
        );
        assert_eq!(s.devices[5].revision.as_deref(), Some("0000000000000006"));
        assert!(
            s.devices[3]
                .message
                .as_deref()
                .unwrap()
                .contains("last phase: Running")
        );
        assert_eq!(
            (s.targeted, s.up_to_date, s.ready, s.failed),
            (22, 18, 14, 2)
        );
        assert_eq!(s.devices_omitted, 0);
        assert_accounts_for_all(&s);
    }

    #[test]
    fn caps_the_list_and_counts_the_rest() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        // 40 failed, then 300 on an older revision, spread over the fleet.
        for i in (0..10_000).step_by(25) {
            let (rev, phase) = if i % 250 == 0 {
                (7, Phase::Failed)
            } else {
                (6, Phase::Running)
            };
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(rev, phase),
                false,
                now,
            );
        }
        for i in (1..10_000).step_by(100) {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes(6, Phase::Running),
                false,
                now,
            );
        }
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!((s.targeted, s.failed), (10_000, 40));
        assert_eq!(s.ready, 10_000 - 400 - 100);
        assert_eq!(s.up_to_date, 10_000 - 360 - 100);
        assert_eq!(s.devices.len(), MAX_LISTED_DEVICES);
        assert_eq!(s.devices_omitted, 500 - MAX_LISTED_DEVICES as i64);
        assert_accounts_for_all(&s);
        assert!(s.devices[..40].iter().all(|d| d.phase == "Failed"));
        assert!(s.devices[40..].iter().all(|d| d.phase == "Running"));
        let ids: Vec<&str> = s.devices.iter().map(|d| d.device.as_str()).collect();
        let mut sorted = ids.clone();
        sorted[..40].sort_unstable();
        sorted[40..].sort_unstable();
        assert_eq!(ids, sorted, "by device id within a rank");
        // The outdated ones listed are the lowest ids of that rank.
        assert_eq!(ids[40..43], ["dev-00001", "dev-00025", "dev-00050"]);
        let again = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(s, again, "the same input folds to the same status");
    }

    #[test]
    fn status_of_ten_thousand_devices_stays_small() {
        let now = now_ns();
        let (cache, observed) = healthy_fleet(10_000, now);
        for i in (0..10_000).step_by(200) {
            cache.ingest_status(
                &format!("{}.web", device_id(i)),
                &status_bytes_msg(
                    7,
                    Phase::Failed,
                    "pull docker.io/library/nginx:1.27: manifest unknown",
                ),
                false,
                now,
            );
        }
        let s = fold_status(&deployment(), &observed, &cache, now);
        assert_eq!(
            (s.ready, s.devices.len(), s.devices_omitted),
            (9_950, 50, 0)
        );
        let fifty = serde_json::to_vec(&s).unwrap().len();
        // A fresh apply: no device reports the revision yet, all listed
        // up to the cap.
        let fresh = Observed {
            revision: Some(8),
            ..observed.clone()
        };
        let s = fold_status(&deployment(), &fresh, &cache, now);
        assert_eq!((s.devices.len(), s.devices_omitted), (100, 9_900));
        let capped = serde_json::to_vec(&s).unwrap().len();
        let (healthy_cache, _) = healthy_fleet(10_000, now);
        let s = fold_status(&deployment(), &observed, &healthy_cache, now);
        let healthy = serde_json::to_vec(&s).unwrap().len();
        println!(
            "status JSON at 10,000 devices: all ready {healthy} B, 50 failed {fifty} B, none at the revision (capped) {capped} B"
        );
        for size in [healthy, fifty, capped] {
            assert!(size < 64 * 1024, "{size} bytes");
        }
        assert!(healthy < fifty);
    }

    #[test]
    fn keeps_transition_times_while_status_holds() {
        let cache = StatusCache::detached(Duration::from_secs(60));
        let t0 = now_ns();
        let mut d = deployment();
        let observed = Observed {
            revision: Some(1),
            targets: vec!["a".into()],
            ..Default::default()
        };
        let first = fold_status(&d, &observed, &cache, t0);
        d.status = Some(first.clone());
        let later = t0 + 3_600_000_000_000;
        let second = fold_status(&d, &observed, &cache, later);
        assert_eq!(first, second, "nothing changed, so nothing may churn");
        cache.ingest_status("a.web", &status_bytes(1, Phase::Running), false, later);
        let third = fold_status(&d, &observed, &cache, later);
        let ready = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, rfc3339(later));
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
        cache.ingest_status("not-a-key", b"x", false, 0);
        cache.ingest_status("a.web2", b"garbage", false, 0);
        assert!(rx.try_recv().is_err());
    }
}
