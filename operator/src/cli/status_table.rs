//! The `iot-operator status [NAME]` table, read from NATS.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::DeploymentKey;

use super::devices_table::online;
use super::table::aligned;
use crate::crd::{DevicePhase, revision_string};
use crate::nats::{Nats, NatsError};
use crate::status::cache::is_stale;
use crate::status::{StatusCache, now_ns};

/// The `iot-operator status [NAME]` table: one row per device and
/// deployment with a desired-state key or a status report, read from NATS,
/// with the device's online state (`True` while its heartbeat is fresh, else
/// `Unknown`, as its Device's Ready condition); then, when any of those
/// devices warns in its heartbeat, one row per device and warning.
pub async fn status_table(nats: &Nats, name: Option<&str>) -> Result<String, NatsError> {
    let filter = match name {
        Some(n) => {
            protocol::keys::validate_deployment_name(n)
                .map_err(|source| NatsError::InvalidKey { source })?;
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
    let mut warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut table = vec![
        [
            "DEPLOYMENT",
            "DEVICE",
            "DESIRED",
            "REPORTED",
            "PHASE",
            "ONLINE",
            "HEARTBEAT",
            "MESSAGE",
        ]
        .map(String::from),
    ];
    for ((dep, device), desired) in rows {
        let report = cache.report(&device, &dep);
        let heartbeat = cache.heartbeat(&device);
        if let Some(h) = &heartbeat
            && !h.heartbeat.warnings.is_empty()
        {
            warnings.insert(device.clone(), h.warnings());
        }
        let stale = heartbeat
            .as_ref()
            .is_some_and(|h| is_stale(h.stored_at_ns, now, cache.heartbeat_timeout()));
        let online = online(
            heartbeat.as_ref().map(|h| h.stored_at_ns),
            now,
            cache.heartbeat_timeout(),
        );
        table.push([
            dep,
            device,
            desired.map_or("-".into(), revision_string),
            report
                .as_ref()
                .map_or("-".into(), |r| revision_string(r.status.revision)),
            match (&report, stale) {
                (_, true) => DevicePhase::Unreachable.to_string(),
                (Some(r), false) => r.status.phase.to_string(),
                (None, false) => DevicePhase::Unknown.to_string(),
            },
            online.to_string(),
            heartbeat.map_or("never".into(), |h| {
                format!("{}s ago", ((now - h.stored_at_ns).max(0) / 1_000_000_000))
            }),
            report.map_or(String::new(), |r| r.status.message.to_string()),
        ]);
    }
    let mut out = aligned(&table);
    if !warnings.is_empty() {
        let mut rows = vec![["DEVICE", "WARNING"].map(String::from)];
        for (device, ws) in warnings {
            rows.extend(ws.into_iter().map(|w| [device.clone(), w]));
        }
        out.push('\n');
        out.push_str(&aligned(&rows));
    }
    Ok(out)
}
