//! The fleet's gauges, computed at each scrape from what the operator
//! already holds in memory: the devices' heartbeats and reports (the
//! [`StatusCache`] its watch keeps current) and the Deployments as the
//! controller's watch has them ([`Deployments`], with the `.status` the
//! controller last wrote).
//!
//! A `prometheus-client` [`Collector`] rather than gauges set as things
//! change: every figure here is derived from state that changes in many
//! places (a heartbeat, a report, silence that merely lasts, a Deployment
//! deleted), and a gauge set at each of them would go stale as soon as one
//! place is missed, or keep the series of a device or Deployment long
//! gone. Read at scrape time, a series exists exactly while its device or
//! Deployment does, and "online" is judged at the moment of the scrape.
//! The cost is one pass over the cache under its read lock and one over
//! the Deployment store per scrape (a few milliseconds at 10,000 devices).
//!
//! Cardinality: the fleet-wide series are a handful; per Deployment, six
//! series (labels `namespace`, `deployment`); per agent version, one, for
//! at most [`AGENT_VERSION_LIMIT`] versions (those with most devices; the
//! rest are summed under `version="other"`); per
//! device (label `device`), four, so they grow with the fleet: at most
//! [`FleetConfig::device_series_limit`] devices get them (by id order; 0
//! turns them off), and `iot_operator_device_series_omitted` counts the
//! devices left out. Label values are device ids and Kubernetes names
//! (validated tokens) and agent versions (bounded text from heartbeats).
//!
//! Until the status watch has replayed both buckets' history
//! ([`StatusCache::caught_up`]) the device-derived families are left out
//! (missing series rather than counts too low); the per-Deployment ones,
//! read from the Deployments' `.status`, show from the start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::controller::{Clock, Deployments};
use crate::status::cache::is_stale;
use crate::status::{StatusCache, now_ns};

/// Settings of the fleet gauges.
#[derive(Debug, Clone, Copy)]
pub struct FleetConfig {
    /// Silence after which a device counts as offline: the inventory's
    /// (`--device-silence-secs`), so that "online" here is what a Device's
    /// Ready says in `kubectl get iotdev`.
    pub silence: Duration,
    /// At most this many devices get per-device series (the first by id);
    /// 0: none.
    pub device_series_limit: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            silence: Duration::from_secs(crate::cli::DEFAULT_SILENCE_SECS),
            device_series_limit: 10_000,
        }
    }
}

/// The fleet's gauges, a [`Collector`] to register with the registry
/// `/metrics` encodes.
pub struct Fleet {
    cache: Arc<StatusCache>,
    deployments: Deployments,
    config: FleetConfig,
    clock: Clock,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("deployments", &self.deployments)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The gauges of the devices in `cache` and the Deployments of
    /// `deployments`, with the system clock.
    pub fn new(cache: Arc<StatusCache>, deployments: Deployments, config: FleetConfig) -> Fleet {
        Fleet {
            cache,
            deployments,
            config,
            clock: Arc::new(now_ns),
        }
    }

    /// The same gauges judged at the times `clock` gives (nanoseconds since
    /// the Unix epoch).
    pub fn with_clock(mut self, clock: Clock) -> Fleet {
        self.clock = clock;
        self
    }
}

/// Encodes one gauge family: its descriptor, then a sample per label set.
fn gauges<L, N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, N)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    N: EncodeGaugeValue,
    ConstGauge<N>: EncodeMetric,
{
    // Ended with a period as the registry's own series are.
    let help = format!("{help}.");
    let mut family = encoder.encode_descriptor(name, &help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let help = format!("{help}.");
    let metric = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A count as a gauge's value (saturating: never in practice).
fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// At most this many agent versions get their own series of
/// `iot_operator_devices_by_agent_version`: the version is free text from
/// the devices' heartbeats.
pub const AGENT_VERSION_LIMIT: usize = 50;

/// The label of the devices whose agent version is not among the
/// [`AGENT_VERSION_LIMIT`] with most devices.
const OTHER_VERSIONS: &str = "other";

/// Devices per agent version: the `limit` versions with most devices (ties
/// by version), then the rest summed under [`OTHER_VERSIONS`] (a device
/// whose version is literally `other` counts there too); sorted by version.
fn by_agent_version<'a>(
    versions: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<(&'a str, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in versions {
        *counts.entry(v).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    // Stable: equal counts keep their version order.
    ranked.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (version, n)) in ranked.into_iter().enumerate() {
        let label = if i < limit { version } else { OTHER_VERSIONS };
        *kept.entry(label).or_default() += n;
    }
    kept.into_iter().collect()
}

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.encode_deployments(&mut encoder)?;
        // While the status watch replays the buckets' history the cache
        // holds only part of the fleet: no device series rather than
        // counts too low (a dashboard shows a gap, an alert on "offline"
        // or "reporting" does not fire on a restart).
        if !self.cache.caught_up() {
            return Ok(());
        }
        let now = (self.clock)();
        let devices = self.cache.device_facts();
        let online: Vec<bool> = devices
            .iter()
            .map(|d| !is_stale(d.heartbeat_at_ns, now, self.config.silence))
            .collect();
        let n_online = online.iter().filter(|o| **o).count();
        gauges(
            &mut encoder,
            "iot_operator_devices",
            "Devices with a heartbeat, by state: online (a heartbeat within --device-silence-secs, a Device's Ready True) or offline",
            None,
            [
                ([("state", "online")], count(n_online)),
                ([("state", "offline")], count(devices.len() - n_online)),
            ],
        )?;
        let timeout = self.cache.heartbeat_timeout();
        gauge(
            &mut encoder,
            "iot_operator_devices_reporting",
            "Devices whose heartbeat is fresh (within --heartbeat-timeout-secs, after which a Deployment shows them Unreachable)",
            count(
                devices
                    .iter()
                    .filter(|d| !is_stale(d.heartbeat_at_ns, now, timeout))
                    .count(),
            ),
        )?;
        gauges(
            &mut encoder,
            "iot_operator_devices_by_agent_version",
            &format!(
                "Devices with a heartbeat, online or not, by the agent version their last heartbeat gives: the {AGENT_VERSION_LIMIT} versions with most devices, the rest summed under version {OTHER_VERSIONS}"
            ),
            None,
            by_agent_version(
                devices.iter().map(|d| d.agent_version.as_str()),
                AGENT_VERSION_LIMIT,
            )
            .into_iter()
            .map(|(version, n)| ([("version", version)], count(n))),
        )?;

        let limit = self.config.device_series_limit.min(devices.len());
        let listed = &devices[..limit];
        gauges(
            &mut encoder,
            "iot_operator_device_online",
            "1 while the device's heartbeat is within --device-silence-secs (its Device's Ready is True), else 0",
            None,
            listed
                .iter()
                .zip(&online)
                .map(|(d, o)| ([("device", d.device.as_str())], i64::from(*o))),
        )?;
        gauges(
            &mut encoder,
            "iot_operator_device_last_heartbeat_timestamp",
            "When the device's last heartbeat was stored in NATS (server time)",
            Some(&Unit::Seconds),
            listed.iter().map(|d| {
                (
                    [("device", d.device.as_str())],
                    d.heartbeat_at_ns as f64 / 1e9,
                )
            }),
        )?;
        gauges(
            &mut encoder,
            "iot_operator_device_deployments",
            "Deployments the device reports on (those it reports Removed aside)",
            None,
            listed
                .iter()
                .map(|d| ([("device", d.device.as_str())], count(d.deployments.total))),
        )?;
        gauges(
            &mut encoder,
            "iot_operator_device_deployments_not_ready",
            "Of the device's deployments, those it reports neither Running, Healthy nor Completed",
            None,
            listed.iter().map(|d| {
                (
                    [("device", d.device.as_str())],
                    count(d.deployments.not_ready),
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "iot_operator_device_series_omitted",
            "Devices left without per-device series by --metrics-device-series-limit",
            count(devices.len() - limit),
        )?;
        Ok(())
    }
}

impl Fleet {
    /// Per Deployment, the counts of its `.status` as the controller last
    /// wrote it; a Deployment without a status yet (never reconciled) has
    /// no series rather than zeros that would read as "nothing healthy".
    fn encode_deployments(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let mut rows: Vec<(String, String, crate::crd::DeploymentStatus)> = self
            .deployments
            .state()
            .unwrap_or_default()
            .iter()
            .filter_map(|d| {
                let status = d.status.clone()?;
                Some((
                    d.namespace_or_default().to_string(),
                    d.name_str().to_string(),
                    status,
                ))
            })
            .collect();
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        type Field = fn(&crate::crd::DeploymentStatus) -> i64;
        let families: [(&str, &str, Field); 6] = [
            (
                "iot_operator_deployment_targeted_devices",
                "Devices the Deployment targets (status.targeted)",
                |s| s.targeted,
            ),
            (
                "iot_operator_deployment_up_to_date_devices",
                "Targets reporting the Deployment's current revision (status.upToDate)",
                |s| s.up_to_date,
            ),
            (
                "iot_operator_deployment_ready_devices",
                "Targets running the current revision and reachable (status.ready)",
                |s| s.ready,
            ),
            (
                "iot_operator_deployment_healthy_devices",
                "Ready targets reporting Healthy: every container runs and every health check passes (status.healthy)",
                |s| s.healthy,
            ),
            (
                "iot_operator_deployment_failed_devices",
                "Targets that failed the current revision, or are held back (status.failed)",
                |s| s.failed,
            ),
            (
                "iot_operator_deployment_waiting_devices",
                "Targets waiting to apply the current revision: update lock, maintenance window, clock (status.waiting)",
                |s| s.waiting,
            ),
        ];
        for (name, help, field) in families {
            gauges(
                encoder,
                name,
                help,
                None,
                rows.iter().map(|(ns, deployment, status)| {
                    (
                        [
                            ("namespace", ns.as_str()),
                            ("deployment", deployment.as_str()),
                        ],
                        field(status),
                    )
                }),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Deployment, DeploymentStatus};
    use crate::status::testdata::{heartbeat_bytes, status_bytes};
    use prometheus_client::registry::Registry;
    use protocol::Phase;

    const SEC: i128 = 1_000_000_000;

    fn deployment(ns: &str, name: &str, status: Option<DeploymentStatus>) -> Deployment {
        let mut d = Deployment::for_test(ns, name, &["a"], "PodmanV0", serde_json::json!({}));
        d.status = status;
        d
    }

    fn scrape(fleet: Fleet) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(fleet));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn has(out: &str, line: &str) {
        assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
    }

    fn caught_up(cache: &StatusCache) {
        cache.mark_caught_up(protocol::keys::DEVICE_STATUS_BUCKET);
        cache.mark_caught_up(protocol::keys::DEVICE_HEARTBEAT_BUCKET);
    }

    #[test]
    fn gauges_come_from_the_cache_and_the_deployments_at_scrape_time() {
        let t0 = now_ns();
        let cache = StatusCache::detached(Duration::from_secs(90));
        caught_up(&cache);
        // a: fresh; b: 200 s silent (reporting no more, still online);
        // c: 400 s silent (offline).
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0);
        cache.ingest_heartbeat("b", &heartbeat_bytes(), false, t0 - 200 * SEC);
        cache.ingest_heartbeat("c", &heartbeat_bytes(), false, t0 - 400 * SEC);
        cache.ingest_status("a.web", &status_bytes(1, Phase::Running), false, t0);
        cache.ingest_status("a.db", &status_bytes(1, Phase::CrashLoopBackOff), false, t0);
        cache.ingest_status("a.old", &status_bytes(1, Phase::Removed), false, t0);
        let version = cache
            .heartbeat("a")
            .unwrap()
            .heartbeat
            .agent_version
            .as_str()
            .to_string();

        let deployments = Deployments::default();
        let (reader, mut writer) = kube::runtime::reflector::store::<Deployment>();
        deployments.set(reader);
        let status = DeploymentStatus {
            targeted: 3,
            up_to_date: 2,
            ready: 1,
            healthy: 1,
            failed: 1,
            waiting: 0,
            ..DeploymentStatus::default()
        };
        for d in [
            deployment("prod", "web", Some(status)),
            deployment("prod", "new", None),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(d));
        }
        let clock: Clock = Arc::new(move || t0);
        let config = FleetConfig {
            silence: Duration::from_secs(300),
            device_series_limit: 2,
        };
        let fleet =
            Fleet::new(cache.clone(), deployments.clone(), config).with_clock(clock.clone());
        let out = scrape(fleet);
        for line in [
            "# TYPE iot_operator_devices gauge",
            "iot_operator_devices{state=\"online\"} 2",
            "iot_operator_devices{state=\"offline\"} 1",
            "iot_operator_devices_reporting 1",
            &format!("iot_operator_devices_by_agent_version{{version=\"{version}\"}} 3"),
            "iot_operator_deployment_targeted_devices{namespace=\"prod\",deployment=\"web\"} 3",
            "iot_operator_deployment_up_to_date_devices{namespace=\"prod\",deployment=\"web\"} 2",
            "iot_operator_deployment_ready_devices{namespace=\"prod\",deployment=\"web\"} 1",
            "iot_operator_deployment_healthy_devices{namespace=\"prod\",deployment=\"web\"} 1",
            "iot_operator_deployment_failed_devices{namespace=\"prod\",deployment=\"web\"} 1",
            "iot_operator_deployment_waiting_devices{namespace=\"prod\",deployment=\"web\"} 0",
            "iot_operator_device_online{device=\"a\"} 1",
            "iot_operator_device_online{device=\"b\"} 1",
            "iot_operator_device_deployments{device=\"a\"} 2",
            "iot_operator_device_deployments_not_ready{device=\"a\"} 1",
            "iot_operator_device_deployments{device=\"b\"} 0",
            "# UNIT iot_operator_device_last_heartbeat_timestamp_seconds seconds",
            "iot_operator_device_series_omitted 1",
        ] {
            has(&out, line);
        }
        assert!(
            !out.contains("deployment=\"new\""),
            "no status, no series:\n{out}"
        );
        assert!(!out.contains("device=\"c\""), "over the limit:\n{out}");

        // Silence that lasts turns a device offline with nothing else
        // happening: judged at the scrape.
        let later: Clock = Arc::new(move || t0 + 150 * SEC);
        let out = scrape(Fleet::new(cache.clone(), deployments.clone(), config).with_clock(later));
        has(&out, "iot_operator_devices{state=\"online\"} 1");
        has(&out, "iot_operator_device_online{device=\"b\"} 0");

        // A deleted Deployment and a forgotten device leave no series.
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(deployment(
            "prod", "web", None,
        )));
        cache.forget_heartbeat("a");
        let out = scrape(Fleet::new(cache, deployments, config).with_clock(clock));
        assert!(!out.contains("deployment=\"web\""), "{out}");
        assert!(!out.contains("device=\"a\""), "{out}");
        has(&out, "iot_operator_device_series_omitted 0");
    }

    #[test]
    fn before_the_controller_starts_only_the_devices_show() {
        let cache = StatusCache::detached(Duration::from_secs(90));
        caught_up(&cache);
        let config = FleetConfig {
            device_series_limit: 0,
            ..FleetConfig::default()
        };
        let out = scrape(Fleet::new(cache, Deployments::default(), config));
        has(&out, "iot_operator_devices{state=\"online\"} 0");
        has(&out, "iot_operator_device_series_omitted 0");
        assert!(!out.contains("targeted_devices{"), "{out}");
    }

    #[test]
    fn while_the_watch_replays_only_the_deployments_show() {
        let t0 = now_ns();
        let cache = StatusCache::detached(Duration::from_secs(90));
        cache.ingest_heartbeat("a", &heartbeat_bytes(), false, t0);
        let deployments = Deployments::default();
        let (reader, mut writer) = kube::runtime::reflector::store::<Deployment>();
        deployments.set(reader);
        let status = DeploymentStatus {
            targeted: 3,
            ..DeploymentStatus::default()
        };
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(deployment(
            "prod",
            "web",
            Some(status),
        )));
        let clock: Clock = Arc::new(move || t0);
        let fleet = || {
            Fleet::new(cache.clone(), deployments.clone(), FleetConfig::default())
                .with_clock(clock.clone())
        };

        // The heartbeats replayed, the reports not yet.
        cache.mark_caught_up(protocol::keys::DEVICE_HEARTBEAT_BUCKET);
        let out = scrape(fleet());
        has(
            &out,
            "iot_operator_deployment_targeted_devices{namespace=\"prod\",deployment=\"web\"} 3",
        );
        for family in [
            "iot_operator_devices",
            "iot_operator_devices_reporting",
            "iot_operator_devices_by_agent_version",
            "iot_operator_device_online",
            "iot_operator_device_last_heartbeat_timestamp_seconds",
            "iot_operator_device_deployments",
            "iot_operator_device_deployments_not_ready",
            "iot_operator_device_series_omitted",
        ] {
            assert!(
                !out.lines().any(|l| l.starts_with(&format!("{family} "))
                    || l.starts_with(&format!("{family}{{"))
                    || l.starts_with(&format!("# TYPE {family} "))),
                "{family} while replaying:\n{out}"
            );
        }

        cache.mark_caught_up(protocol::keys::DEVICE_STATUS_BUCKET);
        let out = scrape(fleet());
        has(&out, "iot_operator_devices{state=\"online\"} 1");
        has(&out, "iot_operator_device_online{device=\"a\"} 1");
    }

    #[test]
    fn agent_versions_beyond_the_limit_are_summed_as_other() {
        // 3 devices on 1.0, 2 on 0.9, 2 on 0.8, 1 on 0.7 and 1 claiming
        // "other": the two versions with most devices (0.8 before 0.9 on a
        // tie: by version) keep their series.
        let devices = [
            "1.0", "0.9", "1.0", "0.8", "0.7", "0.9", "1.0", "0.8", "other",
        ];
        assert_eq!(
            by_agent_version(devices, 2),
            vec![("0.8", 2), ("1.0", 3), ("other", 4)]
        );
        assert_eq!(
            by_agent_version(devices, 10),
            vec![("0.7", 1), ("0.8", 2), ("0.9", 2), ("1.0", 3), ("other", 1)]
        );
        assert_eq!(by_agent_version(devices, 0), vec![("other", 9)]);
        assert_eq!(by_agent_version([], 2), vec![]);

        // Through the collector: at most AGENT_VERSION_LIMIT + 1 series.
        let t0 = now_ns();
        let cache = StatusCache::detached(Duration::from_secs(90));
        caught_up(&cache);
        let base_bytes = heartbeat_bytes();
        let base: protocol::Heartbeat<'_> = protocol::wire::decode(&base_bytes).unwrap();
        let n = AGENT_VERSION_LIMIT + 5;
        for i in 0..n {
            let mut h = base.clone();
            let version = format!("9.9.{i}");
            h.agent_version = protocol::Text::borrowed(&version);
            let bytes = protocol::wire::encode_to_vec(&h).unwrap();
            cache.ingest_heartbeat(&format!("d{i}"), &bytes, false, t0);
        }
        let config = FleetConfig {
            device_series_limit: 0,
            ..FleetConfig::default()
        };
        let clock: Clock = Arc::new(move || t0);
        let out = scrape(Fleet::new(cache, Deployments::default(), config).with_clock(clock));
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("iot_operator_devices_by_agent_version{"))
            .collect();
        assert_eq!(series.len(), AGENT_VERSION_LIMIT + 1, "{out}");
        has(
            &out,
            "iot_operator_devices_by_agent_version{version=\"other\"} 5",
        );
    }
}
