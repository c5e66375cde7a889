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
        other => panic!("not PodmanV0: {other:?}"),
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
    let d = DesiredState::new(
        Text::borrowed("smart-1"),
        42,
        ScorePayload {
            type_name: Text::borrowed("OkdApplyV0"),
            encoding: PayloadEncoding::Json,
            data: Bytes::borrowed(br#"{"x":1}"#),
        },
    );
    check_borrowed!(DesiredState, d, DESIRED_UNKNOWN);
}

#[test]
fn deployment_status() {
    // Nothing of version 2 set: version 1, byte for byte what agents and
    // operators of the first release write and read.
    check_borrowed!(DeploymentStatus, vectors::status(), STATUS);
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
        sealing_key: Text::borrowed(&name),
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
    for (i, p) in [
        Phase::Healthy,
        Phase::Unhealthy,
        Phase::CrashLoopBackOff,
        Phase::RolledBack,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(p).unwrap(), [8 + i as u8]);
    }
    assert_eq!(
        postcard::to_allocvec(&ContainerState::Waiting).unwrap(),
        [8]
    );
    for (i, r) in [
        Reason::None,
        Reason::CrashLoopBackOff,
        Reason::OOMKilled,
        Reason::ImagePullBackOff,
        Reason::HealthCheckFailed,
        Reason::Error,
        Reason::ProgressDeadlineExceeded,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(r).unwrap(), [i as u8]);
    }
    for (i, h) in [Health::Starting, Health::Healthy, Health::Unhealthy]
        .iter()
        .enumerate()
    {
        assert_eq!(postcard::to_allocvec(h).unwrap(), [i as u8]);
    }
    assert_eq!(postcard::to_allocvec(&HttpScheme::Https).unwrap(), [1]);
    assert_eq!(
        postcard::to_allocvec(&HealthFailureAction::None).unwrap(),
        [1]
    );
    assert_eq!(postcard::to_allocvec(&PortProtocol::Udp).unwrap(), [1]);
    assert_eq!(postcard::to_allocvec(&PayloadEncoding::Json).unwrap(), [1]);
}

#[test]
fn format_version_is_the_first_byte() {
    assert_eq!(FORMAT_VERSION, 1);
    assert_eq!(wire::FORMAT_VERSION_2, 2);
    assert_eq!(wire::FORMAT_VERSION_3, 3);
    assert_eq!(wire::FORMAT_VERSION_4, 4);
    assert_eq!(wire::FORMAT_VERSION_5, 5);
    // Version 4 exists for desired states and heartbeats only.
    let mut bytes = unhex(STATUS_V3);
    bytes[0] = 4;
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(4)
    );
    let mut bytes = unhex(DESIRED_STATE_V5);
    bytes[0] = 6;
    assert_eq!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(6)
    );
    // A score's own encoding has version 1 only.
    let mut bytes = unhex(PODMAN_V1_SCORE);
    bytes[0] = 2;
    assert_eq!(
        decode::<PodmanV1Score>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(2)
    );
    let mut bytes = unhex(HEARTBEAT_V4);
    bytes[0] = 5;
    assert_eq!(
        decode::<Heartbeat>(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion(5)
    );
}

#[test]
fn podman_v1_every_new_field() {
    // The README's JSON example decodes to the vector's value.
    assert_eq!(common::podman_v1(), vectors::podman_v1_score());
    check_borrowed!(PodmanV1Score, vectors::podman_v1_score(), PODMAN_V1_SCORE);
}

#[test]
fn the_readme_podman_v1_example_is_the_vector() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("### `PodmanV1`").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let a: serde_json::Value = serde_json::from_str(example).unwrap();
    let b: serde_json::Value = serde_json::from_str(common::PODMAN_V1_JSON).unwrap();
    assert_eq!(a, b, "protocol/README.md's PodmanV1 example");
}

#[test]
fn a_podman_v1_container_is_podman_v0_fields_then_the_new_ones() {
    // With every new field at its default, a PodmanV1 score is PodmanV0's
    // bytes, then one byte per new field: none, four unset limits, none,
    // none, none, false, false, false.
    let v1 = PodmanV1Score::from_v0(common::small());
    let bytes = encode_to_vec(&v1).unwrap();
    assert_eq!(hex(&bytes), format!("{SMALL_SCORE}{}", "00".repeat(11)));
    assert_eq!(
        v1.containers[0],
        ContainerV1::new(
            Text::borrowed("c0"),
            Text::borrowed("registry.example.net/team/app-0:1.2.0")
        )
    );
}

#[test]
fn desired_state_carrying_podman_v1() {
    let d = common::desired_v1(&vectors::podman_v1_score());
    assert_eq!(d.revision, 0xff79_1685_c0ec_a872, "content hash changed");
    assert_eq!(
        d.format_version(),
        FORMAT_VERSION,
        "a new score type is no new envelope"
    );
    check_borrowed!(DesiredState, d.clone(), DESIRED_PODMAN_V1);
    let stored = unhex(DESIRED_PODMAN_V1);
    let back: DesiredState = decode(&stored).unwrap();
    assert_eq!(
        back.score.decode().unwrap(),
        IotScore::PodmanV1(vectors::podman_v1_score())
    );
}

#[test]
fn a_score_type_this_build_does_not_know_is_unsupported_naming_the_known_ones() {
    // What an agent of the previous release does with a PodmanV1 payload
    // (its KNOWN_SCORE_TYPES had PodmanV0 only): the envelope decodes (it
    // is format version 1), the score is Unsupported. Shown here with a
    // type this build does not know, sent as postcard like a known one.
    let mut d = common::desired_v1(&vectors::podman_v1_score());
    d.score.type_name = Text::borrowed("PodmanV2");
    let bytes = encode_to_vec(&d).unwrap();
    assert_eq!(bytes[0], FORMAT_VERSION);
    let back: DesiredState = decode(&bytes).unwrap();
    let e = back.score.decode().unwrap_err();
    assert!(
        matches!(&e, ScoreError::Unsupported { type_name } if type_name == "PodmanV2"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "score type `PodmanV2` is not supported by this agent (it knows: PodmanV0, PodmanV1)"
    );
    assert_eq!(score::KNOWN_SCORE_TYPES, ["PodmanV0", "PodmanV1"]);
}

#[test]
fn desired_state_v2_carries_the_rollout_policy() {
    let mut d = common::desired(&common::small());
    d.rollout = ROLLOUT;
    assert_eq!(d.format_version(), wire::FORMAT_VERSION_2);
    check_borrowed!(DesiredState, d, DESIRED_STATE_V2);
    // Version 1's fields are unchanged and first; the policy follows.
    let (v1, v2) = (unhex(DESIRED), unhex(DESIRED_STATE_V2));
    assert_eq!(v2[0], wire::FORMAT_VERSION_2);
    assert_eq!(v1[1..], v2[1..v1.len()]);
    assert_eq!(v2[v1.len()..], [30, 120, 1]);
    // Version 1 reads with the default policy, which writes version 1.
    let old: DesiredState = decode(&v1).unwrap();
    assert_eq!(old.rollout, RolloutPolicy::default());
    assert_eq!(
        RolloutPolicy::default(),
        RolloutPolicy {
            min_healthy_seconds: 0,
            progress_deadline_seconds: 600,
            auto_rollback: false
        }
    );
    // Any policy but the default needs version 2, even one field.
    let mut one = old.clone();
    one.rollout.auto_rollback = true;
    assert_eq!(encode_to_vec(&one).unwrap()[0], wire::FORMAT_VERSION_2);
    // A version-1 value with the policy is not version 1, nor a version-2
    // value without it.
    let mut bytes = v2.clone();
    bytes[0] = FORMAT_VERSION;
    assert_eq!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(3)
    );
    let mut bytes = v1.clone();
    bytes[0] = wire::FORMAT_VERSION_2;
    assert!(matches!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::Malformed(_)
    ));
}

#[test]
fn desired_state_v3_carries_the_attempt() {
    let mut d = common::desired(&common::small());
    d.rollout = ROLLOUT;
    d.attempt = 2;
    assert_eq!(d.format_version(), wire::FORMAT_VERSION_3);
    check_borrowed!(DesiredState, d, DESIRED_STATE_V3);
    // Version 2's fields are unchanged and first; the attempt follows.
    let (v2, v3) = (unhex(DESIRED_STATE_V2), unhex(DESIRED_STATE_V3));
    assert_eq!(v3[0], wire::FORMAT_VERSION_3);
    assert_eq!(v2[1..], v3[1..v2.len()]);
    assert_eq!(v3[v2.len()..], [2]);
    // Versions 1 and 2 read as the first attempt, which writes them.
    let old: DesiredState = decode(&v2).unwrap();
    assert_eq!(old.attempt, 0);
    assert_eq!(encode_to_vec(&old).unwrap(), v2);
    let v1 = unhex(DESIRED);
    let first: DesiredState = decode(&v1).unwrap();
    assert_eq!(first.attempt, 0);
    // A retry needs version 3 even with the default policy, which it then
    // carries.
    let mut retry = first.clone();
    retry.attempt = 1;
    let bytes = encode_to_vec(&retry).unwrap();
    assert_eq!(bytes[0], wire::FORMAT_VERSION_3);
    assert_eq!(decode::<DesiredState>(&bytes).unwrap(), retry);
    // A version-2 value with an attempt is not version 2.
    let mut bytes = v3.clone();
    bytes[0] = wire::FORMAT_VERSION_2;
    assert_eq!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(1)
    );
}

#[test]
fn the_rollout_policy_is_bounded_naming_the_field() {
    let mut d = common::desired(&common::small());
    d.rollout.progress_deadline_seconds = 0;
    assert_eq!(
        encode_to_vec(&d).unwrap_err().to_string(),
        "invalid value: rollout.progressDeadlineSeconds is 0s; it must be between 1s and 86400s"
    );
    d.rollout.progress_deadline_seconds = 600;
    d.rollout.min_healthy_seconds = 86_401;
    assert_eq!(
        encode_to_vec(&d).unwrap_err().to_string(),
        "invalid value: rollout.minHealthySeconds is 86401s; it must be between 0s and 86400s"
    );
    // Decoding checks it too.
    let mut bytes = unhex(DESIRED_STATE_V2);
    let at = bytes.len() - 2;
    assert_eq!(bytes[at], 120);
    bytes[at] = 0;
    assert!(matches!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::Invalid(_)
    ));
}

#[test]
fn deployment_status_v2_carries_health() {
    check_borrowed!(DeploymentStatus, vectors::status_v2(), STATUS_V2);
    // Version 1 reads with no health, no reason, no running revision.
    let stored = unhex(STATUS);
    let old: DeploymentStatus = decode(&stored).unwrap();
    assert_eq!(old, vectors::status());
    assert!(
        old.containers
            .iter()
            .all(|c| c.health.is_none() && c.reason == Reason::None)
    );
    assert_eq!((old.reason, old.running_revision), (Reason::None, None));
}

#[test]
fn a_status_is_written_in_version_2_only_when_it_holds_something_new() {
    use protocol::wire::Encode;
    let v1 = unhex(STATUS);
    // Each new field alone needs version 2; the version-1 body stays first
    // and unchanged, the new fields follow.
    let mut cases: Vec<(&str, DeploymentStatus<'static>)> = Vec::new();
    let mut s = vectors::status();
    s.reason = Reason::Error;
    cases.push(("reason", s));
    let mut s = vectors::status();
    s.running_revision = Some(7);
    cases.push(("running revision", s));
    let mut s = vectors::status();
    let mut web = s.containers[0].clone();
    web.health = Some(Health::Starting);
    s.containers = BoundedVec::try_from_iter([web, s.containers[1].clone()]).unwrap();
    cases.push(("a container's health", s));
    let mut s = vectors::status();
    let mut log = s.containers[1].clone();
    log.reason = Reason::OOMKilled;
    s.containers = BoundedVec::try_from_iter([s.containers[0].clone(), log]).unwrap();
    cases.push(("a container's reason", s));
    for (what, s) in cases {
        assert_eq!(s.format_version(), wire::FORMAT_VERSION_2, "{what}");
        let bytes = encode_to_vec(&s).unwrap();
        assert_eq!(bytes[0], wire::FORMAT_VERSION_2, "{what}");
        assert_eq!(v1[1..], bytes[1..v1.len()], "{what}");
        let back: DeploymentStatus = decode(&bytes).unwrap();
        assert_eq!(back, s, "{what}");
    }
    // So does a phase or a state version 1 does not have.
    for phase in [
        Phase::Healthy,
        Phase::Unhealthy,
        Phase::CrashLoopBackOff,
        Phase::RolledBack,
    ] {
        let mut s = vectors::status();
        s.phase = phase;
        assert_eq!(s.format_version(), wire::FORMAT_VERSION_2, "{phase}");
    }
    let mut s = vectors::status();
    let log = ContainerStatus::new(Text::borrowed("log"), ContainerState::Waiting);
    s.containers = BoundedVec::try_from_iter([log]).unwrap();
    assert_eq!(s.format_version(), wire::FORMAT_VERSION_2);
    // Every version-1 phase and state with nothing else new stays version 1.
    let mut s = vectors::status();
    s.phase = Phase::Completed;
    let c = ContainerStatus::new(Text::borrowed("c"), ContainerState::Unknown);
    s.containers = BoundedVec::try_from_iter([c]).unwrap();
    assert_eq!(s.format_version(), FORMAT_VERSION);
}

#[test]
fn a_status_v2_must_say_every_containers_health() {
    // One (health, reason) pair per container, in order: a list of another
    // length is malformed, not silently matched up.
    let mut bytes = unhex(STATUS_V2);
    let tail = bytes.len() - 7;
    assert_eq!(bytes[tail], 2, "the pairs' count");
    bytes[tail] = 1;
    bytes.truncate(bytes.len() - 3);
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::Malformed(wire::PostcardError::Content)
    );
    // A version-1 value with the version-2 fields is not version 1.
    let mut bytes = unhex(STATUS_V2);
    bytes[0] = FORMAT_VERSION;
    assert!(decode::<DeploymentStatus>(&bytes).is_err());
    // A version-1 value with a phase only version 2 has is refused, as a
    // decoder of the first release refuses it (Healthy is phase 8).
    let mut bytes = unhex(STATUS);
    let phase = 1 + 1; // the format byte, then the revision (one varint byte)
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap().phase,
        Phase::Running
    );
    assert_eq!(bytes[phase], Phase::Running as u8);
    bytes[phase] = Phase::Healthy as u8;
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::Malformed(wire::PostcardError::BadTag)
    );
    // Nor is a version-2 value without them.
    let mut bytes = unhex(STATUS);
    bytes[0] = wire::FORMAT_VERSION_2;
    assert!(matches!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::Malformed(_)
    ));
}

#[test]
fn this_build_reads_desired_state_5_and_runs_podman_v1() {
    let caps = Capabilities::this_build();
    assert_eq!(caps.desired_state_versions[..], [1, 2, 3, 4, 5]);
    assert!(caps.reads(2, "PodmanV0", 1));
    assert!(caps.reads(2, "PodmanV1", 1));
    assert!(caps.reads(3, "PodmanV1", 1));
    assert!(caps.reads(4, "PodmanV1", 1));
    assert!(caps.reads(5, "PodmanV1", 1));
    assert!(!caps.reads(6, "PodmanV1", 1));
    let first = Capabilities::first_release();
    assert!(!first.reads(2, "PodmanV0", 1));
    assert!(!first.runs("PodmanV1"));
    // The capabilities travel in a version-4 heartbeat: five versions are
    // more than version 3 lists.
    let mut h = vectors::heartbeat(&[]);
    h.capabilities = caps.clone();
    let bytes = encode_to_vec(&h).unwrap();
    assert_eq!(bytes[0], wire::FORMAT_VERSION_4);
    assert_eq!(decode::<Heartbeat>(&bytes).unwrap().capabilities, caps);
}

#[test]
fn hex_helpers_round_trip() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), [0, 1, 254, 255]);
}

#[test]
fn desired_state_v4_carries_the_update_gate() {
    let mut d = common::desired(&common::small());
    d.rollout = ROLLOUT;
    d.attempt = 2;
    d.gate = vectors::gate();
    assert_eq!(d.format_version(), wire::FORMAT_VERSION_4);
    check_borrowed!(DesiredState, d.clone(), DESIRED_STATE_V4);
    // Version 3's fields are unchanged and first; the gate follows.
    let (v3, v4) = (unhex(DESIRED_STATE_V3), unhex(DESIRED_STATE_V4));
    assert_eq!(v3[1..], v4[1..v3.len()]);
    // Older versions read with nothing gating them, and write themselves.
    for old in [DESIRED, DESIRED_STATE_V2, DESIRED_STATE_V3] {
        let bytes = unhex(old);
        let read: DesiredState = decode(&bytes).unwrap();
        assert!(read.gate.is_open(), "{old}");
        assert_eq!(encode_to_vec(&read).unwrap(), bytes);
    }
    // Any one gate field needs version 4, even on a first attempt with the
    // default policy.
    let v1 = unhex(DESIRED);
    let first: DesiredState = decode(&v1).unwrap();
    for gate in [
        UpdateGate {
            force: true,
            ..UpdateGate::default()
        },
        UpdateGate {
            update_lock: Some(UpdateLockPolicy::default()),
            ..UpdateGate::default()
        },
        UpdateGate {
            windows: vectors::gate().windows,
            ..UpdateGate::default()
        },
    ] {
        let mut g = first.clone();
        g.gate = gate;
        let bytes = encode_to_vec(&g).unwrap();
        assert_eq!(bytes[0], wire::FORMAT_VERSION_4, "{:?}", g.gate);
        assert_eq!(decode::<DesiredState>(&bytes).unwrap(), g);
    }
    // A version-3 value with a gate is not version 3.
    let mut bytes = v4.clone();
    bytes[0] = wire::FORMAT_VERSION_3;
    assert!(matches!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(_)
    ));
    // Nor is a version-4 value without one.
    let mut bytes = v3.clone();
    bytes[0] = wire::FORMAT_VERSION_4;
    assert!(decode::<DesiredState>(&bytes).is_err());
}

#[test]
fn the_update_gate_is_bounded_naming_the_field() {
    let mut d = common::desired(&common::small());
    d.gate = vectors::gate();
    let err = |d: &DesiredState| encode_to_vec(d).unwrap_err().to_string();
    let mut g = d.clone();
    g.gate.windows = BoundedVec::try_from_iter([MaintenanceWindow {
        duration_seconds: 0,
        ..vectors::gate().windows[0].clone()
    }])
    .unwrap();
    assert_eq!(
        err(&g),
        "invalid value: gate.windows[0].durationSeconds is 0s; it must be between 1s and 86400s"
    );
    g.gate.windows = BoundedVec::try_from_iter([MaintenanceWindow {
        duration_seconds: 86_401,
        ..vectors::gate().windows[0].clone()
    }])
    .unwrap();
    assert!(err(&g).contains("gate.windows[0].durationSeconds is 86401s"));
    g.gate.windows = BoundedVec::try_from_iter([MaintenanceWindow {
        time_zone: Text::borrowed(""),
        ..vectors::gate().windows[0].clone()
    }])
    .unwrap();
    assert_eq!(
        err(&g),
        "invalid value: gate.windows[0].timeZone must not be empty"
    );
    let long = "*".repeat(protocol::limits::MAX_CRON_LEN + 1);
    g.gate.windows = BoundedVec::try_from_iter([MaintenanceWindow {
        at: Text::borrowed(&long),
        ..vectors::gate().windows[0].clone()
    }])
    .unwrap();
    assert!(err(&g).starts_with("invalid value: gate.windows[0].at is 129 bytes long"));
    let mut g = d.clone();
    g.gate.update_lock = Some(UpdateLockPolicy {
        timeout_seconds: protocol::limits::MAX_LOCK_TIMEOUT_SECONDS + 1,
        on_timeout: LockTimeout::Force,
    });
    assert_eq!(
        err(&g),
        "invalid value: gate.updateLock.timeoutSeconds is 604801s; it must be between 0s and 604800s"
    );
    // Decoding checks it too: the window's duration (7200, two varint
    // bytes) set to 0.
    let mut bytes = unhex(DESIRED_STATE_V4);
    let at = bytes.len() - 3;
    assert_eq!(bytes[at..at + 2], [0xa0, 0x38]);
    bytes.splice(at..at + 2, [0]);
    assert!(matches!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::Invalid(_)
    ));
}

#[test]
fn deployment_status_v3_says_why_and_since_when_it_waits() {
    check_borrowed!(DeploymentStatus, vectors::status_v3(), STATUS_V3);
    use protocol::wire::Encode;
    // Each of the new phase, the new reasons and `waiting` alone needs
    // version 3; version 2's fields stay first and unchanged.
    let mut cases: Vec<(&str, DeploymentStatus<'static>)> = Vec::new();
    let mut s = vectors::status_v2();
    s.phase = Phase::Waiting;
    cases.push(("phase Waiting", s));
    for reason in [
        Reason::UpdateLocked,
        Reason::OutsideMaintenanceWindow,
        Reason::UpdateLockTimeout,
        Reason::ClockNotSynchronized,
    ] {
        let mut s = vectors::status_v2();
        s.reason = reason;
        cases.push((reason.as_str(), s));
    }
    let mut s = vectors::status_v2();
    s.waiting = Some(Waiting {
        since_ms: 1,
        until_ms: Some(2),
    });
    cases.push(("waiting", s));
    let v2 = unhex(STATUS_V2);
    for (what, s) in cases {
        assert_eq!(s.format_version(), wire::FORMAT_VERSION_3, "{what}");
        let bytes = encode_to_vec(&s).unwrap();
        let back: DeploymentStatus = decode(&bytes).unwrap();
        assert_eq!(back, s, "{what}");
        if s.reason == vectors::status_v2().reason && s.phase == Phase::RolledBack {
            assert_eq!(v2[1..], bytes[1..v2.len()], "{what}");
        }
    }
    // Version 2 reads without `waiting` and writes itself.
    let old: DeploymentStatus = decode(&v2).unwrap();
    assert_eq!(old.waiting, None);
    assert_eq!(encode_to_vec(&old).unwrap(), v2);
    // A version-2 value with the Waiting phase is refused, as an operator
    // of the previous release refuses it: phase 12 is not version 2's.
    let mut bytes = unhex(STATUS_V2);
    let phase = 2; // the format byte, then the revision (one varint byte)
    assert_eq!(bytes[phase], Phase::RolledBack as u8);
    bytes[phase] = Phase::Waiting as u8;
    assert_eq!(
        decode::<DeploymentStatus>(&bytes).unwrap_err(),
        DecodeError::Malformed(wire::PostcardError::BadTag)
    );
    // Nor does version 2 carry `waiting`.
    let mut bytes = unhex(STATUS_V3);
    bytes[0] = wire::FORMAT_VERSION_2;
    assert!(decode::<DeploymentStatus>(&bytes).is_err());
}

#[test]
fn the_new_tags_are_appended() {
    assert_eq!(postcard::to_allocvec(&Phase::Waiting).unwrap(), [12]);
    for (i, r) in [
        Reason::UpdateLocked,
        Reason::OutsideMaintenanceWindow,
        Reason::UpdateLockTimeout,
        Reason::ClockNotSynchronized,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(postcard::to_allocvec(r).unwrap(), [7 + i as u8]);
    }
    assert_eq!(postcard::to_allocvec(&LockTimeout::Fail).unwrap(), [0]);
    assert_eq!(postcard::to_allocvec(&LockTimeout::Force).unwrap(), [1]);
}

#[test]
fn a_volume_over_the_update_lock_directory_is_refused() {
    for path in ["/run/iot-agent", "/run/iot-agent/", "/run/iot-agent/x"] {
        let json = format!(
            r#"{{"containers": [{{"name": "a", "image": "busybox", "volumes": [{{"name": "v", "mountPath": "{path}"}}]}}]}}"#
        );
        let err =
            protocol::json::payload_from_json("PodmanV1", &serde_json::from_str(&json).unwrap())
                .unwrap_err();
        assert_eq!(err.path, "containers[0].volumes[0].mountPath", "{path}");
        assert!(err.reason.contains("updateLock: true"), "{}", err.reason);
    }
    // A path that only starts the same is the score's.
    let json = r#"{"containers": [{"name": "a", "image": "busybox", "volumes": [{"name": "v", "mountPath": "/run/iot-agent2"}]}]}"#;
    assert!(
        protocol::json::payload_from_json("PodmanV1", &serde_json::from_str(json).unwrap()).is_ok()
    );
}

#[test]
fn heartbeat_with_a_sealing_key_is_format_version_4() {
    check_borrowed!(Heartbeat, vectors::heartbeat_v4(), HEARTBEAT_V4);
    // Version 3's bytes are unchanged and first; the key follows.
    let (v3, v4) = (unhex(HEARTBEAT_V3), unhex(HEARTBEAT_V4));
    assert_eq!(v3[1..], v4[1..v3.len()]);
    // Older versions read with no key.
    let old: Heartbeat = decode(&v3).unwrap();
    assert!(old.sealing_key.is_empty());
    assert_eq!(encode_to_vec(&old).unwrap(), v3);
    // More format versions than the previous release decodes make it
    // version 4 too (that release refuses a longer list in version 3).
    let mut h = vectors::heartbeat_v3();
    h.capabilities = Capabilities::this_build();
    assert!(h.capabilities.desired_state_versions.len() > limits::MAX_FORMAT_VERSIONS_V3);
    let bytes = encode_to_vec(&h).unwrap();
    assert_eq!(bytes[0], wire::FORMAT_VERSION_4);
    assert_eq!(decode::<Heartbeat>(&bytes).unwrap(), h);
}

#[test]
fn desired_state_v5_carries_sealed_secrets() {
    let mut d = common::desired(&common::small());
    d.rollout = ROLLOUT;
    d.attempt = 2;
    d.gate = vectors::gate();
    d.secrets = vectors::secrets();
    assert_eq!(d.format_version(), wire::FORMAT_VERSION_5);
    check_borrowed!(DesiredState, d.clone(), DESIRED_STATE_V5);
    // Version 4's fields are unchanged and first; the secrets follow.
    let (v4, v5) = (unhex(DESIRED_STATE_V4), unhex(DESIRED_STATE_V5));
    assert_eq!(v4[1..], v5[1..v4.len()]);
    // Older versions read with nothing sealed, and write themselves.
    for old in [
        DESIRED,
        DESIRED_STATE_V2,
        DESIRED_STATE_V3,
        DESIRED_STATE_V4,
    ] {
        let bytes = unhex(old);
        let read: DesiredState = decode(&bytes).unwrap();
        assert!(read.secrets.is_empty(), "{old}");
        assert_eq!(encode_to_vec(&read).unwrap(), bytes);
    }
    // Secrets alone need version 5, even on a first attempt, ungated.
    let v1 = unhex(DESIRED);
    let mut first: DesiredState = decode(&v1).unwrap();
    first.secrets = vectors::secrets();
    let bytes = encode_to_vec(&first).unwrap();
    assert_eq!(bytes[0], wire::FORMAT_VERSION_5);
    assert_eq!(decode::<DesiredState>(&bytes).unwrap(), first);
    // A version-4 value with secrets is not version 4.
    let mut bytes = v5.clone();
    bytes[0] = wire::FORMAT_VERSION_4;
    assert!(matches!(
        decode::<DesiredState>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(_)
    ));
    // Lookups by reference.
    assert!(d.secrets.pull_for("127.0.0.1:5000").is_some());
    assert!(d.secrets.pull_for("docker.io").is_none());
    assert!(d.secrets.value_for("db", "password").is_some());
    assert!(d.secrets.value_for("db", "user").is_none());
}

#[test]
fn sealed_secrets_are_bounded_naming_the_field() {
    let mut d = common::desired(&common::small());
    d.secrets = vectors::secrets();
    let err = |d: &DesiredState| encode_to_vec(d).unwrap_err().to_string();
    let value = |f: &dyn Fn(&mut SecretValue)| {
        let mut v = vectors::secrets().values[0].clone();
        f(&mut v);
        let mut g = d.clone();
        g.secrets.values = BoundedVec::try_from_iter([v]).unwrap();
        g
    };
    assert_eq!(
        err(&value(&|v| v.key = Text::borrowed(""))),
        "invalid value: secrets.values[0].key must not be empty"
    );
    assert_eq!(
        err(&value(&|v| v.sealed.recipient = Text::borrowed(""))),
        "invalid value: secrets.values[0].sealed.recipient must not be empty"
    );
    assert_eq!(
        err(&value(&|v| v.sealed.sender = Text::borrowed(""))),
        "invalid value: secrets.values[0].sealed.sender must not be empty"
    );
    assert_eq!(
        err(&value(&|v| v.key = Text::borrowed("../passwd"))),
        format!(
            "invalid value: secrets.values[0].key {}",
            validate::Violation::NotSecretKey
        )
    );
    let big = vec![0u8; sealed::MAX_SEALED_SIZE + 1];
    let big = value(&|v| v.sealed.boxed = Bytes::owned(big.clone()));
    assert!(
        err(&big).starts_with("invalid value: secrets.values[0].sealed.boxed is 17409 bytes long")
    );
}

#[test]
fn the_binding_inside_a_sealed_box() {
    // The sealing crate seals postcard of `SealedPlaintext`; its binding's
    // bytes are pinned so that an operator and an agent of different
    // builds agree on what a value was sealed for.
    assert_eq!(
        hex(&postcard::to_allocvec(&vectors::binding()).unwrap()),
        BINDING
    );
    let pull = Purpose::Pull {
        registry: Text::borrowed("127.0.0.1:5000"),
    };
    assert_eq!(postcard::to_allocvec(&pull).unwrap()[0], 0);
    let plain = SealedPlaintext {
        binding: vectors::binding(),
        value: Bytes::borrowed(b"s3cret"),
    };
    let bytes = postcard::to_allocvec(&plain).unwrap();
    assert_eq!(hex(&bytes), format!("{BINDING}06{}", hex(b"s3cret")));
    assert_eq!(
        postcard::from_bytes::<SealedPlaintext>(&bytes).unwrap(),
        plain
    );
}

#[test]
fn podman_v1_secret_references() {
    check_borrowed!(
        PodmanV1Score,
        vectors::podman_v1_secrets_score(),
        PODMAN_V1_SECRETS_SCORE
    );
}
