//! The `iot-operator status [NAME]` table, read from NATS.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::status::Health;
use protocol::{DeploymentKey, DeploymentStatus, Phase};

use super::devices_table::online;
use super::table::aligned;
use crate::crd::{DevicePhase, revision_string};
use crate::nats::{Nats, NatsError};
use crate::status::cache::is_stale;
use crate::status::fold::rfc3339_ms;
use crate::status::{StatusCache, device_reason, now_ns};

/// The `iot-operator status [NAME]` table: one row per device and
/// deployment with a desired-state key or a status report, read from NATS:
/// its phase with the agent's reason (`CrashLoopBackOff (OOMKilled)`,
/// `Waiting (UpdateLocked since 2026-12-06T09:03:11Z)`), its
/// health checks and restarts, and the device's online state (`True` while its heartbeat is fresh, else
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
            "HEALTH",
            "RESTARTS",
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
        let status = report.as_ref().map(|r| &r.status);
        table.push([
            dep,
            device,
            desired.map_or("-".into(), revision_string),
            status.map_or("-".into(), |s| revision_string(s.revision)),
            match (status, stale) {
                (_, true) => DevicePhase::Unreachable.to_string(),
                (Some(s), false) => phase_cell(s),
                (None, false) => DevicePhase::Unknown.to_string(),
            },
            status.map_or("-".into(), health_cell),
            status.map_or("-".into(), restarts_cell),
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

/// The PHASE cell: the phase, the revision a rolled-back device runs again,
/// and the reason when it says more than the phase
/// (`CrashLoopBackOff (OOMKilled)`, `RolledBack to 00000000000000a1
/// (HealthCheckFailed)`); for a device that waits, until when it expects
/// to apply the revision, else since when it waits (`Waiting
/// (OutsideMaintenanceWindow until 2026-12-07T01:00:00Z)`, `Waiting
/// (UpdateLocked since 2026-12-06T09:03:11Z)`, `Failed (UpdateLockTimeout
/// since ...)`). A waiting device's running revision is not shown: it is
/// the one before (the DESIRED and REPORTED columns show the new one).
fn phase_cell(s: &DeploymentStatus<'_>) -> String {
    let mut cell = s.phase.to_string();
    if let Some(running) = s.running_revision.filter(|_| s.phase != Phase::Waiting) {
        cell.push_str(&format!(" to {}", revision_string(running)));
    }
    let when = s.waiting.map(|w| match w.until_ms {
        Some(until) => format!("until {}", rfc3339_ms(until)),
        None => format!("since {}", rfc3339_ms(w.since_ms)),
    });
    match (device_reason(s).filter(|r| *r != s.phase.as_str()), when) {
        (Some(reason), Some(when)) => cell.push_str(&format!(" ({reason} {when})")),
        (Some(reason), None) => cell.push_str(&format!(" ({reason})")),
        (None, Some(when)) => cell.push_str(&format!(" ({when})")),
        (None, None) => {}
    }
    cell
}

/// The HEALTH cell, over the containers with a health check: `Healthy`
/// when every check passes, else the worst state with how many pass
/// (`Unhealthy 1/2`, `Starting 0/1`); `-` when no container has a check.
fn health_cell(s: &DeploymentStatus<'_>) -> String {
    let checked: Vec<Health> = s.containers.iter().filter_map(|c| c.health).collect();
    if checked.is_empty() {
        return "-".into();
    }
    let healthy = checked.iter().filter(|h| **h == Health::Healthy).count();
    let worst = if checked.contains(&Health::Unhealthy) {
        "Unhealthy"
    } else if healthy < checked.len() {
        "Starting"
    } else {
        return "Healthy".into();
    };
    format!("{worst} {healthy}/{}", checked.len())
}

/// The RESTARTS cell: restarts of every container together, as kubectl's
/// RESTARTS column counts a pod's.
fn restarts_cell(s: &DeploymentStatus<'_>) -> String {
    if s.containers.is_empty() {
        return "-".into();
    }
    s.containers
        .iter()
        .map(|c| u64::from(c.restart_count))
        .sum::<u64>()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::status::Reason;
    use protocol::{BoundedVec, ContainerState, ContainerStatus, Phase, Text};

    fn status(
        phase: Phase,
        reason: Reason,
        containers: &[(Option<Health>, u32)],
    ) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision: 2,
            phase,
            containers: BoundedVec::try_from_iter(containers.iter().map(|(health, restarts)| {
                let mut c = ContainerStatus::new(Text::borrowed("c"), ContainerState::Running);
                c.health = *health;
                c.restart_count = *restarts;
                c
            }))
            .unwrap(),
            message: Text::borrowed(""),
            timestamp_ms: 0,
            reason,
            running_revision: None,
            waiting: None,
        }
    }

    #[test]
    fn phase_shows_the_reason_when_it_says_more() {
        let s = status(Phase::Running, Reason::None, &[]);
        assert_eq!(phase_cell(&s), "Running");
        let s = status(Phase::CrashLoopBackOff, Reason::OOMKilled, &[]);
        assert_eq!(phase_cell(&s), "CrashLoopBackOff (OOMKilled)");
        let s = status(Phase::CrashLoopBackOff, Reason::CrashLoopBackOff, &[]);
        assert_eq!(phase_cell(&s), "CrashLoopBackOff");
        let mut s = status(Phase::RolledBack, Reason::HealthCheckFailed, &[]);
        s.running_revision = Some(1);
        assert_eq!(
            phase_cell(&s),
            "RolledBack to 0000000000000001 (HealthCheckFailed)"
        );
        // A container's reason explains when the deployment's is not set.
        let mut c = ContainerStatus::new(Text::borrowed("c"), ContainerState::Exited);
        c.reason = Reason::ImagePullBackOff;
        let mut s = status(Phase::Failed, Reason::None, &[]);
        s.containers = BoundedVec::try_from_iter([c]).unwrap();
        assert_eq!(phase_cell(&s), "Failed (ImagePullBackOff)");
    }

    #[test]
    fn a_waiting_device_shows_why_and_until_or_since_when() {
        use protocol::status::Waiting;
        // 2026-12-06T09:03:11Z and 2026-12-07T01:00:00Z.
        let (since, until) = (1_796_547_791_000, 1_796_605_200_000);
        let mut s = status(Phase::Waiting, Reason::UpdateLocked, &[]);
        s.running_revision = Some(1);
        s.waiting = Some(Waiting {
            since_ms: since,
            until_ms: None,
        });
        assert_eq!(
            phase_cell(&s),
            "Waiting (UpdateLocked since 2026-12-06T09:03:11Z)"
        );
        s.reason = Reason::OutsideMaintenanceWindow;
        s.waiting = Some(Waiting {
            since_ms: since,
            until_ms: Some(until),
        });
        assert_eq!(
            phase_cell(&s),
            "Waiting (OutsideMaintenanceWindow until 2026-12-07T01:00:00Z)"
        );
        let mut s = status(Phase::Failed, Reason::UpdateLockTimeout, &[]);
        s.waiting = Some(Waiting {
            since_ms: since,
            until_ms: None,
        });
        assert_eq!(
            phase_cell(&s),
            "Failed (UpdateLockTimeout since 2026-12-06T09:03:11Z)"
        );
    }

    #[test]
    fn health_and_restarts_over_the_containers() {
        let none = status(Phase::Running, Reason::None, &[]);
        assert_eq!(
            (health_cell(&none), restarts_cell(&none)),
            ("-".into(), "-".into())
        );
        let unchecked = status(Phase::Running, Reason::None, &[(None, 0), (None, 3)]);
        assert_eq!(
            (health_cell(&unchecked), restarts_cell(&unchecked)),
            ("-".into(), "3".into())
        );
        let healthy = status(
            Phase::Healthy,
            Reason::None,
            &[
                (Some(Health::Healthy), 1),
                (None, 0),
                (Some(Health::Healthy), 1),
            ],
        );
        assert_eq!(
            (health_cell(&healthy), restarts_cell(&healthy)),
            ("Healthy".into(), "2".into())
        );
        let starting = status(
            Phase::Running,
            Reason::None,
            &[(Some(Health::Healthy), 0), (Some(Health::Starting), 0)],
        );
        assert_eq!(health_cell(&starting), "Starting 1/2");
        let unhealthy = status(
            Phase::Unhealthy,
            Reason::HealthCheckFailed,
            &[(Some(Health::Starting), 0), (Some(Health::Unhealthy), 5)],
        );
        assert_eq!(health_cell(&unhealthy), "Unhealthy 0/2");
    }
}
