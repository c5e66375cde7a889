//! When the inventory writes a Device's status: on a transition, or when
//! the object's `lastSeen` is older than the refresh interval; never per
//! heartbeat (the reason Kubernetes moved node heartbeats to Leases,
//! KEP-0009). And when to look at a Device again.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::device::DeviceState;

/// Whether `next` must be written over `prev` (the object's status) at
/// `now_ns`: something other than `lastSeen` and uptime changed, or
/// `lastSeen` moved and the written one is at least `refresh` old.
pub fn status_patch_needed(
    prev: Option<&DeviceState>,
    next: &DeviceState,
    refresh: Duration,
    now_ns: i128,
) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    if meaningful(prev) != meaningful(next) {
        return true;
    }
    if prev.last_seen == next.last_seen {
        return false;
    }
    match prev.last_seen.as_deref().and_then(parse_ns) {
        Some(written) => now_ns - written >= refresh.as_nanos() as i128,
        // A lastSeen appearing, or one the operator cannot read: write.
        None => true,
    }
}

/// The status without what changes at every heartbeat.
fn meaningful(s: &DeviceState) -> DeviceState {
    let mut s = s.clone();
    s.last_seen = s.last_seen.map(|_| String::new());
    if let Some(info) = &mut s.system_info {
        info.uptime_seconds = 0;
    }
    s
}

fn parse_ns(rfc3339: &str) -> Option<i128> {
    rfc3339.parse::<Timestamp>().ok().map(|t| t.as_nanosecond())
}

/// How long until the Device needs looking at again without any news:
/// when Ready would turn Unknown (its last heartbeat, stored at
/// `heartbeat_ns`, plus `silence`), or when the written `lastSeen` is due
/// a refresh; at least a second, at most `refresh`.
pub fn next_check(
    written: &DeviceState,
    heartbeat_ns: Option<i128>,
    silence: Duration,
    refresh: Duration,
    now_ns: i128,
) -> Duration {
    let mut due = now_ns + refresh.as_nanos() as i128;
    if let Some(h) = heartbeat_ns {
        let silent_at = h + silence.as_nanos() as i128;
        if silent_at >= now_ns {
            due = due.min(silent_at);
        }
    }
    if let Some(w) = written.last_seen.as_deref().and_then(parse_ns) {
        let refresh_at = w + refresh.as_nanos() as i128;
        if refresh_at >= now_ns {
            due = due.min(refresh_at);
        }
    }
    // Past the instant, so that the check sees the change.
    let wait =
        Duration::from_nanos(u64::try_from(due - now_ns).unwrap_or(0)) + Duration::from_millis(500);
    wait.clamp(Duration::from_secs(1), refresh.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Condition;
    use crate::crd::ConditionReason;
    use crate::crd::device::{DeviceDeployments, SystemInfo};

    const T0: i128 = 1_767_225_600_000_000_000;
    const SEC: i128 = 1_000_000_000;
    const REFRESH: Duration = Duration::from_secs(300);

    fn s(last_seen: &str, uptime: i64, total: i64, ready: &str) -> DeviceState {
        DeviceState {
            last_seen: Some(last_seen.into()),
            system_info: Some(SystemInfo {
                agent_version: "0.2.0".into(),
                uptime_seconds: uptime,
                ..SystemInfo::default()
            }),
            deployments: Some(DeviceDeployments {
                total,
                not_ready: 0,
            }),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
                observed_generation: Some(1),
                reason: ConditionReason::HeartbeatReceived,
                message: String::new(),
            }],
            ..DeviceState::default()
        }
    }

    #[test]
    fn a_new_heartbeat_alone_is_written_only_when_due() {
        let written = s("2026-01-01T00:00:00Z", 10, 1, "True");
        let next = s("2026-01-01T00:00:30Z", 40, 1, "True");
        assert!(!status_patch_needed(
            Some(&written),
            &next,
            REFRESH,
            T0 + 30 * SEC
        ));
        assert!(!status_patch_needed(
            Some(&written),
            &next,
            REFRESH,
            T0 + 299 * SEC
        ));
        assert!(status_patch_needed(
            Some(&written),
            &next,
            REFRESH,
            T0 + 300 * SEC
        ));
        assert!(
            !status_patch_needed(Some(&written), &written, REFRESH, T0 + 3000 * SEC),
            "nothing new"
        );
    }

    #[test]
    fn transitions_are_written_at_once() {
        let written = s("2026-01-01T00:00:00Z", 10, 1, "True");
        assert!(status_patch_needed(None, &written, REFRESH, T0));
        let more = s("2026-01-01T00:00:30Z", 40, 2, "True");
        assert!(status_patch_needed(
            Some(&written),
            &more,
            REFRESH,
            T0 + 30 * SEC
        ));
        let silent = s("2026-01-01T00:00:00Z", 10, 1, "Unknown");
        assert!(status_patch_needed(
            Some(&written),
            &silent,
            REFRESH,
            T0 + 301 * SEC
        ));
        let mut upgraded = s("2026-01-01T00:00:30Z", 1, 1, "True");
        upgraded.system_info.as_mut().unwrap().agent_version = "0.3.0".into();
        assert!(status_patch_needed(
            Some(&written),
            &upgraded,
            REFRESH,
            T0 + 30 * SEC
        ));
    }

    #[test]
    fn fifty_heartbeats_cost_at_most_the_refreshes() {
        // One heartbeat every 30 s for 25 minutes: writes only every 5 min.
        let mut written = s("2026-01-01T00:00:00Z", 0, 1, "True");
        let mut writes = 0;
        for n in 1..=50i128 {
            let at = T0 + n * 30 * SEC;
            let next = s(&crate::status::rfc3339(at), (n * 30) as i64, 1, "True");
            if status_patch_needed(Some(&written), &next, REFRESH, at) {
                writes += 1;
                written = next;
            }
        }
        assert_eq!(writes, 5);
    }

    #[test]
    fn the_next_check_is_the_nearest_of_silence_and_refresh() {
        let written = s("2026-01-01T00:00:00Z", 0, 1, "True");
        let silence = Duration::from_secs(60);
        let d = next_check(
            &written,
            Some(T0 + 30 * SEC),
            silence,
            REFRESH,
            T0 + 40 * SEC,
        );
        assert_eq!(d, Duration::from_millis(50_500));
        // Already silent: the refresh is next.
        let d = next_check(&written, Some(T0), silence, REFRESH, T0 + 100 * SEC);
        assert_eq!(d, Duration::from_millis(200_500));
        // Everything past: a full interval.
        let d = next_check(&written, Some(T0), silence, REFRESH, T0 + 1000 * SEC);
        assert_eq!(d, REFRESH);
    }
}
