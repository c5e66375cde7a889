//! `wire::encode_into`, the encoder that needs no allocator (the one a
//! microcontroller uses), against the golden vectors. The values are built
//! from borrowed strings only, so this test also runs without the `alloc`
//! feature: `cargo test -p protocol --no-default-features --test encode_into`.

#![allow(clippy::unwrap_used, missing_docs)]

mod vectors;

use protocol::limits::MAX_VALUE_SIZE;
use protocol::wire::{EncodeError, encode_into};
use protocol::*;
use vectors::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Encodes `value` into a buffer of the largest value size, then into one
/// of exactly the expected size, and refuses a buffer one byte short.
fn check<T: protocol::wire::Encode>(value: &T, expected: &str) {
    let expected = unhex(expected);
    let mut buf = vec![0u8; MAX_VALUE_SIZE];
    assert_eq!(
        encode_into(value, &mut buf).unwrap(),
        &expected[..],
        "encoding changed"
    );
    let mut exact = vec![0u8; expected.len()];
    assert_eq!(encode_into(value, &mut exact).unwrap(), &expected[..]);
    let mut short = vec![0u8; expected.len() - 1];
    assert_eq!(
        encode_into(value, &mut short),
        Err(EncodeError::BufferTooSmall)
    );
    assert_eq!(
        encode_into(value, &mut []),
        Err(EncodeError::BufferTooSmall)
    );
}

fn container<'a>(name: &'a str, image: &'a str) -> Container<'a> {
    Container::new(Text::borrowed(name), Text::borrowed(image))
}

fn score(c: Container<'_>) -> PodmanV0Score<'_> {
    let mut containers = BoundedVec::new();
    containers.push(c).unwrap();
    PodmanV0Score { containers }
}

fn small() -> PodmanV0Score<'static> {
    score(container("c0", "registry.example.net/team/app-0:1.2.0"))
}

#[test]
fn podman_v0_small() {
    check(&small(), SMALL_SCORE);
}

#[test]
fn podman_v0_typical_design_example() {
    let mut c = container("web", "docker.io/library/nginx:1.27");
    let mut command = BoundedVec::new();
    command.push(Text::borrowed("nginx")).unwrap();
    c.command = Some(command);
    let mut args = BoundedVec::new();
    args.push(Text::borrowed("-g")).unwrap();
    args.push(Text::borrowed("daemon off;")).unwrap();
    c.args = Some(args);
    c.env
        .push(EnvVar {
            name: Text::borrowed("GREETING"),
            value: Text::borrowed("hello"),
        })
        .unwrap();
    c.ports
        .push(Port {
            container_port: 80,
            host_port: Some(8080),
            protocol: PortProtocol::Tcp,
            host_ip: Some(Text::borrowed("0.0.0.0")),
        })
        .unwrap();
    c.volumes
        .push(Volume {
            name: Some(Text::borrowed("data")),
            host_path: None,
            mount_path: Text::borrowed("/data"),
            read_only: false,
        })
        .unwrap();
    c.volumes
        .push(Volume {
            name: None,
            host_path: Some(Text::borrowed("/srv/web")),
            mount_path: Text::borrowed("/srv"),
            read_only: true,
        })
        .unwrap();
    c.labels
        .insert(Text::borrowed("tier"), Text::borrowed("frontend"))
        .unwrap();
    check(&score(c), TYPICAL_SCORE);
}

#[test]
fn podman_v0_security_fields() {
    let mut c = container("c0", "registry.example.net/team/app-0:1.2.0");
    c.privileged = true;
    c.host_network = true;
    c.host_pid = true;
    c.host_ipc = true;
    c.cap_add.push(Text::borrowed("NET_ADMIN")).unwrap();
    c.devices.push(Text::borrowed("/dev/ttyUSB0")).unwrap();
    check(&score(c), SECURITY_SCORE);
}

#[test]
fn desired_state_with_known_variant() {
    // The payload's data is the score's own encoding, made here by
    // encode_into too.
    let mut data = [0u8; 256];
    let data = encode_into(&small(), &mut data).unwrap();
    let d = DesiredState::new(
        Text::borrowed("hello-web"),
        0x2f41_0fb6_e2c0_527d,
        ScorePayload {
            type_name: Text::borrowed("PodmanV0"),
            encoding: PayloadEncoding::Postcard,
            data: Bytes::borrowed(data),
        },
    );
    assert_eq!(d.score.content_hash(), d.revision, "content hash changed");
    check(&d, DESIRED);
}

#[test]
fn desired_state_with_a_rollout_policy() {
    let mut data = [0u8; 256];
    let data = encode_into(&small(), &mut data).unwrap();
    let mut d = DesiredState::new(
        Text::borrowed("hello-web"),
        0x2f41_0fb6_e2c0_527d,
        ScorePayload {
            type_name: Text::borrowed("PodmanV0"),
            encoding: PayloadEncoding::Postcard,
            data: Bytes::borrowed(data),
        },
    );
    d.rollout = ROLLOUT;
    check(&d, DESIRED_STATE_V2);
    d.attempt = 2;
    check(&d, DESIRED_STATE_V3);
    d.gate = vectors::gate();
    check(&d, DESIRED_STATE_V4);
}

#[test]
fn podman_v1_every_new_field() {
    check(&podman_v1_score(), PODMAN_V1_SCORE);
}

#[test]
fn desired_state_carrying_podman_v1() {
    let mut data = [0u8; 512];
    let data = encode_into(&podman_v1_score(), &mut data).unwrap();
    let d = DesiredState::new(
        Text::borrowed("hello-web"),
        0xff79_1685_c0ec_a872,
        ScorePayload {
            type_name: Text::borrowed("PodmanV1"),
            encoding: PayloadEncoding::Postcard,
            data: Bytes::borrowed(data),
        },
    );
    assert_eq!(d.score.content_hash(), d.revision, "content hash changed");
    check(&d, DESIRED_PODMAN_V1);
}

#[test]
fn desired_state_with_unknown_variant() {
    let d = DesiredState::new(
        Text::borrowed("smart-1"),
        42,
        ScorePayload {
            type_name: Text::borrowed("OkdApplyV0"),
            encoding: PayloadEncoding::Json,
            data: Bytes::borrowed(br#"{"x":1}"#),
        },
    );
    check(&d, DESIRED_UNKNOWN);
}

#[test]
fn deployment_status() {
    check(&status(), STATUS);
}

#[test]
fn deployment_status_with_health() {
    check(&status_v2(), STATUS_V2);
}

#[test]
fn deployment_status_waiting() {
    check(&vectors::status_v3(), STATUS_V3);
}

#[test]
fn heartbeat() {
    check(&vectors::heartbeat(&[]), HEARTBEAT);
}

#[test]
fn heartbeat_with_a_warning() {
    check(&vectors::heartbeat(&["disk full"]), HEARTBEAT_V2);
}

#[test]
fn heartbeat_with_labels_and_capabilities() {
    check(&heartbeat_v3(), HEARTBEAT_V3);
}

#[test]
fn an_invalid_value_is_refused_before_encoding() {
    let s = score(container("c.0", "registry.example.net/team/app-0:1.2.0"));
    let mut buf = [0xaau8; 64];
    assert!(matches!(
        encode_into(&s, &mut buf),
        Err(EncodeError::Invalid(_))
    ));
    assert_eq!(buf, [0xaa; 64], "nothing was written");
}
