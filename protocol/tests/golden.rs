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
    // Without warnings a heartbeat is written in version 1, byte for byte
    // what agents and operators of the first release write and read.
    check_borrowed!(Heartbeat, vectors::heartbeat(&[]), HEARTBEAT);
}

#[test]
fn heartbeat_with_a_warning_is_format_version_2() {
    check_borrowed!(Heartbeat, vectors::heartbeat(&["disk full"]), HEARTBEAT_V2);
    // The version-1 fields are unchanged and first: only the version byte
    // and the trailing list differ.
    let (v1, v2) = (unhex(HEARTBEAT), unhex(HEARTBEAT_V2));
    assert_eq!(v2[0], wire::FORMAT_VERSION_2);
    assert_eq!(v1[1..], v2[1..v1.len()]);
}

#[test]
fn a_version_1_heartbeat_still_decodes_without_warnings() {
    let stored = unhex(HEARTBEAT);
    let h: Heartbeat = decode(&stored).unwrap();
    assert_eq!(h.agent_version.as_str(), "0.1.0");
    assert_eq!((h.uptime_secs, h.deployments), (3600, 3));
    assert!(h.warnings.is_empty());
    // A version-1 value with the version-2 field is not version 1.
    let mut bytes = unhex(HEARTBEAT_V2);
    bytes[0] = FORMAT_VERSION;
    assert_eq!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(11)
    );
    // Nor is a version-2 value without it.
    let mut bytes = unhex(HEARTBEAT);
    bytes[0] = wire::FORMAT_VERSION_2;
    assert!(matches!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::Malformed(_)
    ));
}

#[test]
fn a_heartbeat_warning_is_bounded() {
    let long = "x".repeat(limits::MAX_WARNING_LEN + 1);
    let stored = unhex(HEARTBEAT_V2);
    let mut h: Heartbeat = decode(&stored).unwrap();
    h.warnings = BoundedVec::try_from_iter([Text::borrowed(long.as_str())]).unwrap();
    assert!(matches!(
        encode_to_vec(&h).unwrap_err(),
        EncodeError::Invalid(_)
    ));
    // The largest heartbeat every bound allows fits its bucket's values.
    let name = "n".repeat(limits::MAX_NAME_LEN);
    let warning = "w".repeat(limits::MAX_WARNING_LEN);
    let keys: Vec<String> = (0..limits::MAX_DEVICE_LABELS)
        .map(|i| format!("{i:k>63}"))
        .collect();
    let value = "v".repeat(limits::MAX_LABEL_LEN);
    let mut largest = Heartbeat {
        agent_version: Text::borrowed(&name),
        arch: Text::borrowed(&name),
        os: Text::borrowed(&name),
        podman_version: Text::borrowed(&name),
        uptime_secs: u64::MAX,
        deployments: u32::MAX,
        timestamp_ms: u64::MAX,
        warnings: BoundedVec::try_from_iter(
            (0..limits::MAX_WARNINGS).map(|_| Text::borrowed(warning.as_str())),
        )
        .unwrap(),
        kernel: Text::borrowed(&name),
        boot_id: Text::borrowed(&name),
        ..Heartbeat::default()
    };
    for k in &keys {
        largest
            .labels
            .insert(Text::borrowed(k), Text::borrowed(&value))
            .unwrap();
    }
    let versions = BoundedVec::try_from_iter([1u8; limits::MAX_FORMAT_VERSIONS]).unwrap();
    largest.capabilities = Capabilities {
        desired_state_versions: versions.clone(),
        score_types: BoundedVec::try_from_iter((0..limits::MAX_SCORE_TYPES).map(|_| {
            ScoreTypeSupport {
                type_name: Text::borrowed(&name),
                versions: versions.clone(),
            }
        }))
        .unwrap(),
    };
    let size = encode_to_vec(&largest).unwrap().len();
    assert!(
        size <= buckets::DEVICE_HEARTBEAT.max_value_size as usize,
        "{size} bytes"
    );
    assert_eq!(
        buckets::DEVICE_HEARTBEAT.max_value_size as usize,
        limits::MAX_HEARTBEAT_SIZE
    );
}

#[test]
fn heartbeat_with_labels_and_capabilities_is_format_version_3() {
    check_borrowed!(Heartbeat, heartbeat_v3(), HEARTBEAT_V3);
    // Version 2's bytes are unchanged and first.
    let (v2, v3) = (unhex(HEARTBEAT_V2), unhex(HEARTBEAT_V3));
    assert_eq!(v3[0], wire::FORMAT_VERSION_3);
    assert_eq!(v2[1..], v3[1..v2.len()]);
    // Older versions read with the first release's capabilities.
    let old: Heartbeat = decode(&v2).unwrap();
    assert_eq!(old.capabilities, Capabilities::first_release());
    assert!(old.labels.is_empty() && old.kernel.is_empty() && old.boot_id.is_empty());
    assert!(old.capabilities.reads(1, "PodmanV0", 1));
    assert!(!old.capabilities.runs("PodmanV1"));
}

#[test]
fn heartbeat_labels_are_bounded_and_their_syntax_left_to_the_reader() {
    // A label that is no Kubernetes label still travels: the operator
    // drops that label alone (a whole heartbeat lost to one bad label
    // would show the board offline).
    let mut h = heartbeat_v3();
    h.labels
        .insert(Text::borrowed("-bad"), Text::borrowed("x"))
        .unwrap();
    let bytes = encode_to_vec(&h).unwrap();
    let back: Heartbeat = decode(&bytes).unwrap();
    assert!(labels::validate_label_key(back.labels.iter().nth(2).unwrap().0).is_err());
    // Over the length bound it is refused.
    let long = "k".repeat(limits::MAX_LABEL_LEN + 1);
    h.labels
        .insert(Text::borrowed(&long), Text::borrowed("x"))
        .unwrap();
    assert_eq!(
        encode_to_vec(&h).unwrap_err().to_string(),
        "invalid value: labels[3].key is 64 bytes long; the limit is 63"
    );
    // More labels than the bound do not decode (10,000 from a hostile board).
    let mut bytes = unhex(HEARTBEAT_V3);
    let at = bytes.len() - 14 - 22;
    assert_eq!(bytes[at], 2, "the label count");
    bytes.splice(at..=at, [0x90, 0x4e]);
    assert!(matches!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::Malformed(_)
    ));
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
    assert_eq!(wire::FORMAT_VERSION_2, 2);
    assert_eq!(wire::FORMAT_VERSION_3, 3);
    // Versions 2 and 3 exist for heartbeats only.
    let mut bytes = unhex(STATUS);
    bytes[0] = 2;
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(2)
    );
    let mut bytes = unhex(HEARTBEAT_V3);
    bytes[0] = 4;
    assert_eq!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(4)
    );
}

#[test]
fn hex_helpers_round_trip() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), [0, 1, 254, 255]);
}
