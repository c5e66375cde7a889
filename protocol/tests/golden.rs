//! Exact bytes of each wire value. A failure here means the wire format
//! changed: that breaks every deployed agent, so it needs a new format
//! version or a new score variant, never an edit of these vectors.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod vectors;

use protocol::wire::{decode, encode_to_vec};
use protocol::*;
use vectors::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// For borrowed types: decode must borrow from the buffer it was given.
macro_rules! check_borrowed {
    ($ty:ty, $value:expr, $expected:expr) => {{
        let value = $value;
        let bytes = encode_to_vec(&value).unwrap();
        assert_eq!(hex(&bytes), $expected, "encoding changed");
        let stored = unhex($expected);
        let back: $ty = decode(&stored).unwrap();
        assert_eq!(back, value);
    }};
}

#[test]
fn podman_v0_small() {
    check_borrowed!(PodmanV0Score, common::small(), SMALL_SCORE);
}

#[test]
fn podman_v0_typical_design_example() {
    check_borrowed!(PodmanV0Score, common::typical(), TYPICAL_SCORE);
}

#[test]
fn podman_v0_security_fields() {
    // The fields an agent's policy refuses by default (privileged, host
    // namespaces, capabilities, devices) are on the wire so it can name them.
    // The JSON spelling is the Kubernetes one (hostPID, hostIPC, capAdd).
    let json = r#"{"type":"PodmanV0","data":{"containers":[{"name":"c0",
        "image":"registry.example.net/team/app-0:1.2.0","privileged":true,
        "hostNetwork":true,"hostPID":true,"hostIPC":true,
        "capAdd":["NET_ADMIN"],"devices":["/dev/ttyUSB0"]}]}}"#;
    let s = match serde_json::from_str::<IotScore>(json).unwrap() {
        IotScore::PodmanV0(s) => s.into_owned(),
    };
    let c = &s.containers[0];
    assert!(c.privileged && c.host_network && c.host_pid && c.host_ipc);
    assert_eq!(c.cap_add[0].as_str(), "NET_ADMIN");
    assert_eq!(c.devices[0].as_str(), "/dev/ttyUSB0");
    check_borrowed!(PodmanV0Score, s, SECURITY_SCORE);
}

#[test]
fn desired_state_with_known_variant() {
    let d = common::desired(&common::small());
    assert_eq!(d.revision, 0x2f41_0fb6_e2c0_527d, "content hash changed");
    check_borrowed!(DesiredState, d, DESIRED);
}

#[test]
fn desired_state_with_unknown_variant_carries_json() {
    let d = DesiredState {
        deployment: Text::borrowed("smart-1"),
        revision: 42,
        score: ScorePayload {
            type_name: Text::borrowed("OkdApplyV0"),
            encoding: PayloadEncoding::Json,
            data: Bytes::borrowed(br#"{"x":1}"#),
        },
    };
    check_borrowed!(DesiredState, d, DESIRED_UNKNOWN);
}

#[test]
fn deployment_status() {
    let mut containers = BoundedVec::new();
    containers
        .push(ContainerStatus {
            name: Text::borrowed("web"),
            state: ContainerState::Running,
            exit_code: None,
            restart_count: 0,
        })
        .unwrap();
    containers
        .push(ContainerStatus {
            name: Text::borrowed("log"),
            state: ContainerState::Exited,
            exit_code: Some(1),
            restart_count: 2,
        })
        .unwrap();
    let s = DeploymentStatus {
        revision: 42,
        phase: Phase::Running,
        containers,
        message: Text::borrowed("exited from 1234"),
        timestamp_ms: 1_764_000_000_000,
    };
    check_borrowed!(DeploymentStatus, s, STATUS);
}

#[test]
fn heartbeat() {
    let h = Heartbeat {
        agent_version: Text::borrowed("0.1.0"),
        arch: Text::borrowed("aarch64"),
        os: Text::borrowed("linux"),
        podman_version: Text::borrowed("4.3.1"),
        uptime_secs: 3600,
        deployments: 3,
        timestamp_ms: 1_764_000_000_000,
    };
    check_borrowed!(Heartbeat, h, HEARTBEAT);
}

#[test]
fn enum_tags_are_frozen() {
    // postcard encodes an enum as its variant index: reordering variants is
    // a wire change. Each index is pinned here.
    for (i, p) in [
        Phase::Pending,
        Phase::Pulling,
        Phase::Starting,
        Phase::Running,
        Phase::Failed,
        Phase::Unsupported,
        Phase::Removed,
        Phase::Completed,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(p).unwrap(), [i as u8]);
    }
    for (i, s) in [
        ContainerState::Missing,
        ContainerState::Created,
        ContainerState::Running,
        ContainerState::Paused,
        ContainerState::Restarting,
        ContainerState::Exited,
        ContainerState::Dead,
        ContainerState::Unknown,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(s).unwrap(), [i as u8]);
    }
    for (i, r) in [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(r).unwrap(), [i as u8]);
    }
    for (i, p) in [
        PullPolicy::Always,
        PullPolicy::IfNotPresent,
        PullPolicy::Never,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(p).unwrap(), [i as u8]);
    }
    assert_eq!(postcard::to_allocvec(&PortProtocol::Udp).unwrap(), [1]);
    assert_eq!(postcard::to_allocvec(&PayloadEncoding::Json).unwrap(), [1]);
}

#[test]
fn format_version_is_the_first_byte() {
    assert_eq!(FORMAT_VERSION, 1);
    let mut bytes = unhex(HEARTBEAT);
    bytes[0] = 2;
    assert_eq!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(2)
    );
}

#[test]
fn hex_helpers_round_trip() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), [0, 1, 254, 255]);
}
