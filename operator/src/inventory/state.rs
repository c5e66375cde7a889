//! A Device's `.status` from what the operator knows of the board: its
//! last heartbeat, its deployment reports, and what the Deployment
//! controller holds back from it ([`crate::capability_gate`]).

use std::time::Duration;

use crate::capability_gate::Held;
use crate::crd::device::{DeviceCapabilities, DeviceDeployments, DeviceState, SystemInfo};
use crate::crd::{Condition, ConditionReason};
use crate::status::HeartbeatSeen;
use crate::status::cache::{DeviceSummary, is_stale, rfc3339};

use super::labels::Labels;

/// Condition types of a Device.
pub mod conditions {
    /// True while heartbeats arrive.
    pub const READY: &str = "Ready";
    /// True while the board's heartbeat carries warnings.
    pub const WARNINGS: &str = "Warnings";
    /// True while some Deployment targeting the board is held back because
    /// its agent cannot read the score.
    pub const UNSUPPORTED: &str = "Unsupported";
}

/// Everything a Device's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The board's last heartbeat, if the operator has one.
    pub heartbeat: Option<&'a HeartbeatSeen>,
    /// Its deployment reports, summed up.
    pub deployments: DeviceSummary,
    /// What the Deployment controller holds back from it, by owner.
    pub held: &'a Held,
    /// Its valid board labels (see [`super::labels::board_labels`]).
    pub board_labels: &'a Labels,
    /// How long without a heartbeat before Ready turns Unknown.
    pub silence: Duration,
    /// The operator's clock, nanoseconds since the Unix epoch.
    pub now_ns: i128,
}

/// The status of a Device at `generation`, given its previous status
/// `prev` (conditions keep their transition time while their status holds;
/// what is known only from a heartbeat is kept when there is none).
pub fn device_state(
    prev: Option<&DeviceState>,
    generation: Option<i64>,
    i: Inputs<'_>,
) -> DeviceState {
    let mut next = match i.heartbeat {
        Some(seen) => from_heartbeat(seen, i.board_labels),
        None => prev
            .cloned()
            .map(|p| DeviceState {
                conditions: Vec::new(),
                ..p
            })
            .unwrap_or_default(),
    };
    next.deployments = Some(DeviceDeployments {
        total: i64::try_from(i.deployments.total).unwrap_or(i64::MAX),
        not_ready: i64::try_from(i.deployments.not_ready).unwrap_or(i64::MAX),
    });
    let warnings = i.heartbeat.map(HeartbeatSeen::warnings);
    let verdicts = [
        ready(i.heartbeat, next.last_seen.as_deref(), i.silence, i.now_ns),
        board_warnings(warnings.as_deref()),
        unsupported(i.held),
    ];
    next.conditions = verdicts
        .into_iter()
        .map(|v| v.into_condition(prev, generation, i.now_ns))
        .collect();
    next
}

fn from_heartbeat(seen: &HeartbeatSeen, board_labels: &Labels) -> DeviceState {
    let h = &seen.heartbeat;
    DeviceState {
        last_seen: Some(rfc3339(seen.stored_at_ns)),
        system_info: Some(SystemInfo {
            agent_version: h.agent_version.as_str().to_string(),
            architecture: h.arch.as_str().to_string(),
            operating_system: h.os.as_str().to_string(),
            kernel_version: h.kernel.as_str().to_string(),
            podman_version: h.podman_version.as_str().to_string(),
            boot_id: h.boot_id.as_str().to_string(),
            uptime_seconds: i64::try_from(h.uptime_secs).unwrap_or(i64::MAX),
        }),
        deployments: None,
        capabilities: Some(DeviceCapabilities::from(&h.capabilities)),
        board_labels: board_labels.clone(),
        sealing_key: (!h.sealing_key.is_empty()).then(|| h.sealing_key.as_str().to_string()),
        conditions: Vec::new(),
    }
}

/// A condition's content, before its transition time is known.
struct Verdict {
    type_: &'static str,
    status: &'static str,
    reason: ConditionReason,
    message: String,
}

impl Verdict {
    fn into_condition(
        self,
        prev: Option<&DeviceState>,
        generation: Option<i64>,
        now_ns: i128,
    ) -> Condition {
        let last_transition_time = prev
            .into_iter()
            .flat_map(|p| &p.conditions)
            .find(|c| c.type_ == self.type_ && c.status == self.status)
            .map_or_else(|| rfc3339(now_ns), |c| c.last_transition_time.clone());
        Condition {
            type_: self.type_.into(),
            status: self.status.into(),
            last_transition_time,
            observed_generation: generation,
            reason: self.reason,
            message: self.message,
        }
    }
}

// Messages hold nothing that changes at every heartbeat: a changed message
// is a status change, hence a write.
fn ready(
    heartbeat: Option<&HeartbeatSeen>,
    last_seen: Option<&str>,
    silence: Duration,
    now_ns: i128,
) -> Verdict {
    let (status, reason, message) = match (heartbeat, last_seen) {
        (Some(h), _) if !is_stale(h.stored_at_ns, now_ns, silence) => (
            "True",
            ConditionReason::HeartbeatReceived,
            "the board's heartbeats arrive".to_string(),
        ),
        (_, Some(seen)) => (
            "Unknown",
            ConditionReason::HeartbeatMissing,
            format!(
                "no heartbeat for more than {}s; last one at {seen}",
                silence.as_secs()
            ),
        ),
        (_, None) => (
            "Unknown",
            ConditionReason::NeverSeen,
            "no heartbeat from this board yet".to_string(),
        ),
    };
    Verdict {
        type_: conditions::READY,
        status,
        reason,
        message,
    }
}

/// `None`: no heartbeat to tell (never seen, or its heartbeat deleted).
fn board_warnings(warnings: Option<&[String]>) -> Verdict {
    let (status, reason, message) = match warnings {
        None => (
            "Unknown",
            ConditionReason::HeartbeatMissing,
            "no heartbeat from the board to tell".to_string(),
        ),
        Some([]) => (
            "False",
            ConditionReason::NoBoardWarnings,
            "the board reports no warnings".to_string(),
        ),
        Some(w) => ("True", ConditionReason::BoardWarns, w.join("; ")),
    };
    Verdict {
        type_: conditions::WARNINGS,
        status,
        reason,
        message,
    }
}

fn unsupported(held: &Held) -> Verdict {
    let (status, reason, message) = if held.is_empty() {
        (
            "False",
            ConditionReason::AllScoresReadable,
            "the board can read every Deployment targeting it".to_string(),
        )
    } else {
        let list: Vec<String> = held
            .iter()
            .map(|(owner, why)| format!("{owner}: {why}"))
            .collect();
        (
            "True",
            ConditionReason::ScoreUnreadable,
            format!("not written to this board: {}", list.join("; ")),
        )
    };
    Verdict {
        type_: conditions::UNSUPPORTED,
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BoundedVec, Heartbeat, Text};

    const T0: i128 = 1_767_225_600_000_000_000;
    const SEC: i128 = 1_000_000_000;

    fn seen(at: i128, warning: Option<&'static str>) -> HeartbeatSeen {
        HeartbeatSeen {
            heartbeat: Heartbeat {
                agent_version: Text::borrowed("0.2.0"),
                arch: Text::borrowed("aarch64"),
                os: Text::borrowed("linux"),
                uptime_secs: 42,
                warnings: BoundedVec::try_from_iter(warning.map(Text::borrowed)).unwrap(),
                ..Heartbeat::default()
            }
            .into_owned(),
            stored_at_ns: at,
        }
    }

    fn state(
        prev: Option<&DeviceState>,
        hb: Option<&HeartbeatSeen>,
        held: &Held,
        now: i128,
    ) -> DeviceState {
        device_state(
            prev,
            Some(3),
            Inputs {
                heartbeat: hb,
                deployments: DeviceSummary {
                    total: 2,
                    not_ready: 1,
                },
                held,
                board_labels: &Labels::new(),
                silence: Duration::from_secs(300),
                now_ns: now,
            },
        )
    }

    fn cond<'a>(s: &'a DeviceState, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_fresh_heartbeat_is_ready_with_its_system_info() {
        let hb = seen(T0, None);
        let s = state(None, Some(&hb), &Held::new(), T0 + SEC);
        assert_eq!(s.last_seen.as_deref(), Some("2026-01-01T00:00:00Z"));
        let info = s.system_info.as_ref().unwrap();
        assert_eq!(
            (info.agent_version.as_str(), info.uptime_seconds),
            ("0.2.0", 42)
        );
        assert_eq!(
            s.deployments,
            Some(DeviceDeployments {
                total: 2,
                not_ready: 1
            })
        );
        let ready = cond(&s, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason),
            ("True", ConditionReason::HeartbeatReceived)
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(cond(&s, conditions::WARNINGS).status, "False");
        assert_eq!(cond(&s, conditions::UNSUPPORTED).status, "False");
    }

    #[test]
    fn the_sealing_key_is_the_latest_heartbeats() {
        let mut hb = seen(T0, None);
        let s = state(None, Some(&hb), &Held::new(), T0 + SEC);
        assert_eq!(s.sealing_key, None, "an agent without a key");
        hb.heartbeat.sealing_key = Text::borrowed("XKEY1");
        let s = state(Some(&s), Some(&hb), &Held::new(), T0 + SEC);
        assert_eq!(s.sealing_key.as_deref(), Some("XKEY1"));
        hb.heartbeat.sealing_key = Text::borrowed("XKEY2");
        let s = state(Some(&s), Some(&hb), &Held::new(), T0 + 2 * SEC);
        assert_eq!(s.sealing_key.as_deref(), Some("XKEY2"));
        // No heartbeat since: the last one known stays.
        let s = state(Some(&s), None, &Held::new(), T0 + 3 * SEC);
        assert_eq!(s.sealing_key.as_deref(), Some("XKEY2"));
    }

    #[test]
    fn silence_turns_ready_unknown_and_transition_times_hold() {
        let hb = seen(T0, None);
        let first = state(None, Some(&hb), &Held::new(), T0 + SEC);
        let later = state(Some(&first), Some(&hb), &Held::new(), T0 + 100 * SEC);
        assert_eq!(
            later.conditions, first.conditions,
            "no change, same transition times"
        );
        let silent = state(Some(&first), Some(&hb), &Held::new(), T0 + 301 * SEC);
        let ready = cond(&silent, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason),
            ("Unknown", ConditionReason::HeartbeatMissing)
        );
        assert_eq!(ready.last_transition_time, "2026-01-01T00:05:01Z");
        assert!(
            ready.message.contains("2026-01-01T00:00:00Z"),
            "{}",
            ready.message
        );
        // The other conditions did not change: their times stay.
        assert_eq!(
            cond(&silent, conditions::WARNINGS),
            cond(&first, conditions::WARNINGS)
        );
    }

    #[test]
    fn without_a_heartbeat_the_last_known_facts_stay() {
        let never = state(None, None, &Held::new(), T0);
        let ready = cond(&never, conditions::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason),
            ("Unknown", ConditionReason::NeverSeen)
        );
        assert!(never.system_info.is_none());
        let hb = seen(T0, None);
        let known = state(None, Some(&hb), &Held::new(), T0);
        let gone = state(Some(&known), None, &Held::new(), T0 + SEC);
        assert_eq!(gone.system_info, known.system_info);
        assert_eq!(
            cond(&gone, conditions::READY).reason,
            ConditionReason::HeartbeatMissing
        );
    }

    #[test]
    fn warnings_and_held_deployments_are_conditions() {
        let hb = seen(T0, Some("disk full"));
        let mut held = Held::new();
        held.insert("ns/web".into(), "PodmanV1 unknown to the agent".into());
        let s = state(None, Some(&hb), &held, T0);
        let w = cond(&s, conditions::WARNINGS);
        assert_eq!(
            (w.status.as_str(), w.reason, w.message.as_str()),
            ("True", ConditionReason::BoardWarns, "disk full")
        );
        let u = cond(&s, conditions::UNSUPPORTED);
        assert_eq!(
            (u.status.as_str(), u.reason),
            ("True", ConditionReason::ScoreUnreadable)
        );
        assert!(
            u.message.contains("ns/web: PodmanV1 unknown"),
            "{}",
            u.message
        );
    }
}
