//! The `iot-operator devices [-l SELECTOR]` table: the fleet inventory read
//! from NATS (heartbeats and status reports), shown as `kubectl get iotdev
//! --show-labels` shows the Device objects, for users without a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};

use super::table::{age, aligned};
use crate::inventory::labels::board_labels;
use crate::nats::{Nats, NatsError};
use crate::status::cache::is_stale;
use crate::status::{HeartbeatSeen, StatusCache, now_ns};

/// Seconds of silence after which `devices` shows a board `Unknown`: the
/// operator's default for the Device's `Ready` condition.
pub const DEFAULT_SILENCE_SECS: u64 = 300;

/// A device's online state, as the `Ready` condition of its Device object
/// says it: `True` while the last heartbeat (stored at `seen_ns`) is at
/// most `timeout` old, else (or with none) `Unknown`: silence does not tell
/// a board that is off from one that cannot reach NATS.
pub(crate) fn online(seen_ns: Option<i128>, now_ns: i128, timeout: Duration) -> &'static str {
    match seen_ns {
        Some(at) if !is_stale(at, now_ns, timeout) => "True",
        _ => "Unknown",
    }
}

/// The `iot-operator devices` table: one row per device with a heartbeat
/// whose valid board labels `selector` matches, sorted by device id.
/// `silence` is how old a heartbeat may be before the device shows
/// `Unknown`.
pub async fn devices_table(
    nats: &Nats,
    selector: &Selector,
    silence: Duration,
) -> Result<String, NatsError> {
    let cache = StatusCache::detached(silence);
    cache.load(nats).await?;
    let rows: Vec<DeviceRow> = cache
        .heartbeat_devices()
        .into_iter()
        .filter_map(|id| {
            let seen = cache.heartbeat(&id)?;
            let not_ready = cache.device_summary(&id).not_ready;
            Some(DeviceRow::new(id, &seen, not_ready))
        })
        .filter(|row| selector.matches(&row.labels))
        .collect();
    Ok(render(&rows, now_ns(), silence))
}

/// One board as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceRow {
    device: String,
    agent: String,
    arch: String,
    /// When the server stored its last heartbeat, ns since the Unix epoch.
    last_seen_ns: i128,
    /// Deployments its agent manages, from the heartbeat.
    deployments: u32,
    /// Of its status reports, those neither Running, Healthy nor Completed
    /// ([`StatusCache::device_summary`]).
    not_ready: u64,
    /// Its valid board labels: what `-l` matches.
    labels: BTreeMap<String, String>,
}

impl DeviceRow {
    fn new(device: String, seen: &HeartbeatSeen, not_ready: u64) -> Self {
        let h = &seen.heartbeat;
        let labels = valid_board_labels(&device, h);
        DeviceRow {
            agent: h.agent_version.as_str().to_string(),
            arch: h.arch.as_str().to_string(),
            last_seen_ns: seen.stored_at_ns,
            deployments: h.deployments,
            not_ready,
            labels,
            device,
        }
    }
}

/// The board's labels that are valid Kubernetes labels, by the
/// inventory's rule ([`board_labels`]): a bad one is left out alone, with
/// a warning, as the operator leaves it off the Device.
fn valid_board_labels(device: &str, h: &protocol::Heartbeat<'_>) -> BTreeMap<String, String> {
    let (valid, invalid) = board_labels(h);
    for bad in invalid {
        tracing::warn!(
            device,
            label = bad.key,
            value = bad.value,
            reason = bad.reason,
            "board label ignored: not a valid Kubernetes label"
        );
    }
    valid
}

/// The table: kubectl's columns for a Device (READY, AGENT, ARCH,
/// LAST-SEEN, DEPLOYMENTS), the not-ready count, and the labels as
/// `--show-labels` prints them.
fn render(rows: &[DeviceRow], now_ns: i128, silence: Duration) -> String {
    let none = || "<none>".to_string();
    let or_none = |s: &str| if s.is_empty() { none() } else { s.to_string() };
    let mut table = vec![
        [
            "DEVICE",
            "READY",
            "AGENT",
            "ARCH",
            "LAST-SEEN",
            "DEPLOYMENTS",
            "NOT-READY",
            "LABELS",
        ]
        .map(String::from),
    ];
    for r in rows {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.push([
            r.device.clone(),
            online(Some(r.last_seen_ns), now_ns, silence).to_string(),
            or_none(&r.agent),
            or_none(&r.arch),
            age(r.last_seen_ns, now_ns),
            r.deployments.to_string(),
            r.not_ready.to_string(),
            if labels.is_empty() {
                none()
            } else {
                labels.join(",")
            },
        ]);
    }
    aligned(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BoundedMap, Heartbeat, Text};

    const S: i128 = 1_000_000_000;

    fn heartbeat(labels: &[(&'static str, &'static str)]) -> Heartbeat<'static> {
        let mut map = BoundedMap::new();
        for (k, v) in labels {
            map.insert(Text::borrowed(k), Text::borrowed(v)).unwrap();
        }
        Heartbeat {
            agent_version: Text::borrowed("0.2.0"),
            arch: Text::borrowed("aarch64"),
            os: Text::borrowed("linux"),
            deployments: 2,
            labels: map,
            ..Heartbeat::default()
        }
    }

    fn seen(labels: &[(&'static str, &'static str)], at: i128) -> HeartbeatSeen {
        HeartbeatSeen {
            heartbeat: heartbeat(labels),
            stored_at_ns: at,
        }
    }

    #[test]
    fn online_while_the_heartbeat_is_fresh() {
        let t = Duration::from_secs(90);
        let now = 1_000 * S;
        assert_eq!(online(Some(now - 90 * S), now, t), "True");
        assert_eq!(online(Some(now - 91 * S), now, t), "Unknown");
        assert_eq!(online(None, now, t), "Unknown");
    }

    #[test]
    fn invalid_board_labels_are_left_out_alone() {
        let h = heartbeat(&[
            ("site", "lyon"),
            ("-bad", "x"),
            ("board", "rpi 4"),
            ("a/b/c", ""),
        ]);
        assert_eq!(
            valid_board_labels("pi", &h),
            BTreeMap::from([("site".to_string(), "lyon".to_string())])
        );
    }

    #[test]
    fn rows_read_like_kubectl_get_iotdev() {
        let now = 1_000_000 * S;
        let silence = Duration::from_secs(300);
        let rows = [
            DeviceRow::new(
                "pi-1".into(),
                &seen(&[("site", "lyon"), ("board", "rpi4")], now - 5 * S),
                1,
            ),
            DeviceRow::new("pi-22".into(), &seen(&[], now - 301 * S), 0),
            DeviceRow::new(
                "old".into(),
                &HeartbeatSeen {
                    heartbeat: Heartbeat::default(),
                    stored_at_ns: now - 4 * 86400 * S,
                },
                0,
            ),
        ];
        assert_eq!(
            render(&rows, now, silence),
            "\
DEVICE  READY    AGENT   ARCH     LAST-SEEN  DEPLOYMENTS  NOT-READY  LABELS
pi-1    True     0.2.0   aarch64  5s         2            1          board=rpi4,site=lyon
pi-22   Unknown  0.2.0   aarch64  5m1s       2            0          <none>
old     Unknown  <none>  <none>   4d         0            0          <none>
"
        );
    }
}
