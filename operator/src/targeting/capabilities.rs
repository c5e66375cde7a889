//! Which targets not to write because their agent said, in its last
//! heartbeat, that it cannot read the value: the operator never writes a
//! device what it cannot decode. A device without a heartbeat yet is
//! written to (boards flashed before their first boot get their key).
//! Each target is checked against the value it would get
//! ([`Plan::value_for`]): a Device's own maintenance windows may need a
//! newer format than the Deployment's value, and sealed secrets need
//! format 5 and the device's sealing key.

use std::collections::BTreeMap;

use protocol::{Capabilities, DesiredState, PayloadEncoding};

use crate::apply::Plan;
use crate::status::HeartbeatSeen;

/// What a plan's value asks of the agent that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Format version of the `DesiredState`.
    pub desired_version: u8,
    /// The score type.
    pub type_name: String,
    /// Format version of the score's own encoding; `None` for a type routed
    /// as JSON (what matters then is that the agent runs the type).
    pub score_version: Option<u8>,
}

impl Requirement {
    /// What `plan`'s value needs; `None` if it does not decode (it always
    /// does: [`crate::apply::plan`] encoded it).
    pub fn of(plan: &Plan) -> Option<Requirement> {
        Requirement::of_value(&plan.value)
    }

    /// What an encoded value needs; `None` if it does not decode.
    pub fn of_value(value: &[u8]) -> Option<Requirement> {
        let desired: DesiredState<'_> = protocol::wire::decode(value).ok()?;
        // A known type's data is its own versioned encoding: the format
        // byte is what the agent must read, whatever this build would
        // write today.
        let score_version = match desired.score.encoding {
            PayloadEncoding::Json => None,
            PayloadEncoding::Postcard => Some(*desired.score.data.as_slice().first()?),
        };
        Some(Requirement {
            desired_version: desired.format_version(),
            type_name: desired.score.type_name.as_str().to_string(),
            score_version,
        })
    }

    /// Whether an agent with `caps` reads it.
    pub fn readable_by(&self, caps: &Capabilities<'_>) -> bool {
        match self.score_version {
            Some(v) => caps.reads(self.desired_version, &self.type_name, v),
            None => {
                caps.desired_state_versions.contains(&self.desired_version)
                    && caps.runs(&self.type_name)
            }
        }
    }

    fn describe(&self) -> String {
        match self.score_version {
            Some(v) => format!(
                "{} format {v} in DesiredState format {}",
                self.type_name, self.desired_version
            ),
            None => format!(
                "{} (routed as JSON) in DesiredState format {}",
                self.type_name, self.desired_version
            ),
        }
    }

    /// Whether an agent with `caps` reads the score itself (its type and
    /// format), whatever DesiredState format carries it.
    fn score_readable_by(&self, caps: &Capabilities<'_>) -> bool {
        match self.score_version {
            Some(v) => caps
                .score_types
                .iter()
                .any(|s| s.type_name.as_str() == self.type_name && s.versions.contains(&v)),
            None => caps.runs(&self.type_name),
        }
    }

    /// Why an agent whose heartbeat is `seen` cannot read it.
    pub fn refusal(&self, seen: &HeartbeatSeen) -> String {
        let hb = &seen.heartbeat;
        let caps = &hb.capabilities;
        let agent = if hb.agent_version.is_empty() {
            "the agent".to_string()
        } else {
            format!("agent {}", hb.agent_version.as_str())
        };
        let versions = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
        // The score alone would do: say what in the spec needs the newer
        // format, and the two ways out.
        if self.score_readable_by(caps)
            && !caps.desired_state_versions.contains(&self.desired_version)
            && let Some((what, instead)) = carried_from(self.desired_version)
        {
            return format!(
                "held back: {agent} reads DesiredState format {} and cannot receive {what}, which needs format {}; update the agent on this device, or {instead} (its key is not written; what it ran before keeps running)",
                versions(&caps.desired_state_versions),
                self.desired_version
            );
        }
        let types = caps
            .score_types
            .iter()
            .map(|s| {
                format!(
                    "{} (format {})",
                    s.type_name.as_str(),
                    versions(&s.versions)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "held back: {agent} reads DesiredState format {} and score types {}, not {}; update the agent on this device (its key is not written; what it ran before keeps running)",
            versions(&caps.desired_state_versions),
            if types.is_empty() {
                "none".into()
            } else {
                types
            },
            self.describe()
        )
    }
}

/// What the spec holds that only DesiredState format `version` carries.
/// and the other way out besides updating the agent.
fn carried_from(version: u8) -> Option<(&'static str, &'static str)> {
    match version {
        2 => Some((
            "the rollout policy (spec.rollout autoRollback, progressDeadlineSeconds, minHealthySeconds not at their defaults false, 600, 0)",
            "set spec.rollout's fields to their defaults",
        )),
        3 => Some((
            "a retry of a failed revision (annotation iot.nationtech.io/retry-rollout)",
            "change the spec (a new revision) instead of retrying",
        )),
        4 => Some((
            "an update gate (spec.rollout updateLock, maintenanceWindows or force, or the Device's spec.maintenance.windows)",
            "remove them",
        )),
        5 => Some((
            "sealed secrets (env valueFrom.secretKeyRef, secret volumes, spec.imagePullSecrets)",
            "remove the references to Secrets",
        )),
        _ => None,
    }
}

/// The targets of `plan` whose last heartbeat says they cannot read the
/// value they would get, each with the reason, and those that cannot
/// receive its sealed values ([`Plan::unsealed`]: no sealing key known).
pub fn held_back(
    plan: &Plan,
    heartbeat: impl Fn(&str) -> Option<HeartbeatSeen>,
) -> BTreeMap<String, String> {
    let common = Requirement::of(plan);
    let mut held = plan.unsealed.clone();
    held.extend(plan.targets
        .iter()
        .filter(|device| !plan.unsealed.contains_key(*device))
        .filter_map(|device| {
            let seen = heartbeat(device)?;
            let req = match plan.device_values.get(device) {
                Some(own) => Requirement::of_value(own),
                None => common.clone(),
            };
            let Some(req) = req else {
                // Fail closed: what cannot be checked is not written to a
                // device that said what it reads.
                return Some((
                    device.clone(),
                    "held back: the operator cannot read back the value it encoded (a bug; please report it)".to_string(),
                ));
            };
            (!req.readable_by(&seen.heartbeat.capabilities))
                .then(|| (device.clone(), req.refusal(&seen)))
        }));
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BoundedVec, Heartbeat, ScoreTypeSupport, Text};

    fn seen(caps: Capabilities<'static>) -> HeartbeatSeen {
        HeartbeatSeen {
            heartbeat: Heartbeat {
                agent_version: Text::borrowed("0.2.0"),
                capabilities: caps,
                ..Heartbeat::default()
            },
            stored_at_ns: 0,
        }
    }

    fn caps(types: &[(&'static str, u8)]) -> Capabilities<'static> {
        Capabilities {
            desired_state_versions: BoundedVec::try_from_iter([1]).unwrap(),
            score_types: BoundedVec::try_from_iter(types.iter().map(|(t, v)| ScoreTypeSupport {
                type_name: Text::borrowed(t),
                versions: BoundedVec::try_from_iter([*v]).unwrap(),
            }))
            .unwrap(),
        }
    }

    fn plan_of(ty: &str, data: serde_json::Value) -> Plan {
        plan_with(ty, data, Default::default())
    }

    fn plan_with(ty: &str, data: serde_json::Value, rollout: crate::crd::Rollout) -> Plan {
        let targets = ["new", "old", "none", "silent"];
        let mut d = crate::crd::Deployment::for_test("fleet", "web", &targets, ty, data);
        d.spec.rollout = rollout;
        crate::apply::plan(&d).unwrap()
    }

    #[test]
    fn holds_back_what_the_heartbeat_cannot_read() {
        let podman = plan_of(
            "PodmanV0",
            serde_json::json!({"containers": [{"name": "web", "image": "nginx:1"}]}),
        );
        let req = Requirement::of(&podman).unwrap();
        assert_eq!((req.desired_version, req.score_version), (1, Some(1)));
        let hb = |d: &str| match d {
            "new" => Some(seen(Capabilities::this_build())),
            // A version-1 heartbeat decodes to the first release's: PodmanV0.
            "old" => Some(seen(Capabilities::first_release())),
            "none" => Some(seen(caps(&[]))),
            _ => None,
        };
        let held = held_back(&podman, hb);
        assert_eq!(held.keys().collect::<Vec<_>>(), ["none"]);
        assert_eq!(
            held["none"],
            "held back: agent 0.2.0 reads DesiredState format 1 and score types none, not PodmanV0 format 1 in DesiredState format 1; update the agent on this device (its key is not written; what it ran before keeps running)"
        );
        // A newer score format than the agent reads.
        let newer = |d: &str| (d == "old").then(|| seen(caps(&[("PodmanV0", 7)])));
        assert_eq!(
            held_back(&podman, newer).keys().collect::<Vec<_>>(),
            ["old"]
        );

        // Routed as JSON: the agent must run the type.
        let json = plan_of("FancyV9", serde_json::json!({"x": 1}));
        assert_eq!(Requirement::of(&json).unwrap().score_version, None);
        let hb = |d: &str| match d {
            "new" => Some(seen(caps(&[("FancyV9", 3)]))),
            "old" => Some(seen(Capabilities::first_release())),
            _ => None,
        };
        let held = held_back(&json, hb);
        assert_eq!(held.keys().collect::<Vec<_>>(), ["old"]);
        assert!(
            held["old"].contains("PodmanV0 (format 1), not FancyV9 (routed as JSON)"),
            "{}",
            held["old"]
        );
    }

    /// An agent of the release before the rollout policy: its heartbeat
    /// lists DesiredState 1 and both score types.
    fn before_rollout() -> Capabilities<'static> {
        let mut caps = Capabilities::this_build();
        caps.desired_state_versions = BoundedVec::try_from_iter([1]).unwrap();
        caps
    }

    #[test]
    fn a_rollout_policy_goes_only_to_agents_that_read_it() {
        let data = serde_json::json!({"containers": [{"name": "web", "image": "nginx:1"}]});
        let policy = crate::crd::Rollout {
            auto_rollback: true,
            ..Default::default()
        };
        let hb = |d: &str| match d {
            "new" => Some(seen(Capabilities::this_build())),
            "old" => Some(seen(before_rollout())),
            "none" => Some(seen(Capabilities::first_release())),
            _ => None,
        };
        for ty in ["PodmanV0", "PodmanV1"] {
            // The default policy is DesiredState 1: every agent that runs
            // the type reads it.
            let plain = plan_of(ty, data.clone());
            assert_eq!(Requirement::of(&plain).unwrap().desired_version, 1);
            let held = held_back(&plain, hb);
            let expect: &[&str] = if ty == "PodmanV0" { &[] } else { &["none"] };
            assert_eq!(held.keys().collect::<Vec<_>>(), expect, "{ty}");

            let with_policy = plan_with(ty, data.clone(), policy.clone());
            let req = Requirement::of(&with_policy).unwrap();
            assert_eq!(req.desired_version, 2);
            let held = held_back(&with_policy, hb);
            assert_eq!(held.keys().collect::<Vec<_>>(), ["none", "old"], "{ty}");
            // It reads the score: the message says what it cannot read
            // and the two ways out.
            assert_eq!(
                held["old"],
                "held back: agent 0.2.0 reads DesiredState format 1 and cannot receive the rollout policy (spec.rollout autoRollback, progressDeadlineSeconds, minHealthySeconds not at their defaults false, 600, 0), which needs format 2; update the agent on this device, or set spec.rollout's fields to their defaults (its key is not written; what it ran before keeps running)"
            );
        }
        // Neither the score nor the format: the full account.
        let with_policy = plan_with("PodmanV1", data, policy);
        let held = held_back(&with_policy, hb);
        assert!(
            held["none"].contains("not PodmanV1 format 1 in DesiredState format 2"),
            "{}",
            held["none"]
        );
    }

    /// A gate (DesiredState 4) goes only to agents that read it, device
    /// by device: a Device's own windows need format 4 for that device
    /// alone.
    #[test]
    fn a_gate_goes_only_to_agents_that_read_it() {
        let data = serde_json::json!({"containers": [{"name": "web", "image": "nginx:1"}]});
        let before_gate = || {
            let mut caps = Capabilities::this_build();
            caps.desired_state_versions = BoundedVec::try_from_iter([1, 2, 3]).unwrap();
            seen(caps)
        };
        let hb = |d: &str| match d {
            "new" => Some(seen(Capabilities::this_build())),
            "old" | "none" => Some(before_gate()),
            _ => None,
        };
        let window = crate::crd::MaintenanceWindowSpec {
            at: "0 2 * * *".into(),
            time_zone: "UTC".into(),
            duration: "2h".into(),
        };
        let gated = plan_with(
            "PodmanV1",
            data.clone(),
            crate::crd::Rollout {
                maintenance_windows: vec![window.clone()],
                ..Default::default()
            },
        );
        assert_eq!(Requirement::of(&gated).unwrap().desired_version, 4);
        let held = held_back(&gated, hb);
        assert_eq!(held.keys().collect::<Vec<_>>(), ["none", "old"]);
        assert_eq!(
            held["old"],
            "held back: agent 0.2.0 reads DesiredState format 1, 2, 3 and cannot receive an update gate (spec.rollout updateLock, maintenanceWindows or force, or the Device's spec.maintenance.windows), which needs format 4; update the agent on this device, or remove them (its key is not written; what it ran before keeps running)"
        );
        // No gate on the Deployment; one Device has its own windows.
        let mut plain = plan_of("PodmanV1", data);
        plain.set_device_windows(|d| (d == "old").then(|| vec![window.clone()]));
        let held = held_back(&plain, hb);
        assert_eq!(
            held.keys().collect::<Vec<_>>(),
            ["old"],
            "only the device with windows"
        );
        assert!(held["old"].contains("needs format 4"), "{}", held["old"]);
    }

    /// A retry (DesiredState 3) goes only to agents that read it; an agent
    /// of the release before (DesiredState 1 and 2) keeps what it runs.
    #[test]
    fn a_retry_goes_only_to_agents_that_read_it() {
        let data = serde_json::json!({"containers": [{"name": "web", "image": "nginx:1"}]});
        let mut retry = plan_of("PodmanV1", data);
        retry.set_attempt(1).unwrap();
        assert_eq!(Requirement::of(&retry).unwrap().desired_version, 3);
        let hb = |d: &str| match d {
            "new" => Some(seen(Capabilities::this_build())),
            "old" => Some(seen({
                let mut caps = Capabilities::this_build();
                caps.desired_state_versions = BoundedVec::try_from_iter([1, 2]).unwrap();
                caps
            })),
            _ => None,
        };
        let held = held_back(&retry, hb);
        assert_eq!(held.keys().collect::<Vec<_>>(), ["old"]);
        assert_eq!(
            held["old"],
            "held back: agent 0.2.0 reads DesiredState format 1, 2 and cannot receive a retry of a failed revision (annotation iot.nationtech.io/retry-rollout), which needs format 3; update the agent on this device, or change the spec (a new revision) instead of retrying (its key is not written; what it ran before keeps running)"
        );
    }
}
