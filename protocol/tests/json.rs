//! JSON <-> Rust <-> postcard, the generic router, and the validation rules.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use protocol::json::{JsonScoreError, payload_from_json};
use protocol::validate::{Validate, Violation};
use protocol::wire::{EncodeError, decode, encode_to_vec};
use protocol::*;
use serde_json::{Value, json};

fn route(v: &Value) -> Result<ScorePayload<'static>, JsonScoreError> {
    payload_from_json(v["type"].as_str().unwrap(), &v["data"])
}

#[test]
fn design_example_parses_with_every_field() {
    let score: IotScore = serde_json::from_str(common::DESIGN_EXAMPLE_JSON).unwrap();
    let IotScore::PodmanV0(s) = &score;
    let c = &s.containers[0];
    assert_eq!(c.name, "web");
    assert_eq!(c.command.as_deref().unwrap()[0], "nginx");
    assert_eq!(c.args.as_deref().unwrap()[1], "daemon off;");
    assert_eq!(c.env[0].name, "GREETING");
    assert_eq!(c.ports[0].host_port, Some(8080));
    assert_eq!(c.ports[0].host_ip.as_deref(), Some("0.0.0.0"));
    assert_eq!(c.volumes[0].name.as_deref(), Some("data"));
    assert_eq!(c.volumes[1].host_path.as_deref(), Some("/srv/web"));
    assert!(c.volumes[1].read_only);
    assert_eq!(c.labels.get("tier").map(|v| v.as_str()), Some("frontend"));
    assert_eq!(c.pull_policy, PullPolicy::IfNotPresent);
    score.validate().unwrap();
}

#[test]
fn seed_minimal_shape_parses_with_defaults() {
    let IotScore::PodmanV0(s) = serde_json::from_str(common::SEED_MINIMAL_JSON).unwrap();
    let c = &s.containers[0];
    assert_eq!(c.restart_policy, RestartPolicy::Always);
    assert_eq!(c.pull_policy, PullPolicy::IfNotPresent);
    assert!(c.command.is_none() && c.env.is_empty() && c.labels.is_empty());
}

#[test]
fn json_is_adjacently_tagged_and_round_trips() {
    let score: IotScore = serde_json::from_str(common::DESIGN_EXAMPLE_JSON).unwrap();
    let v = serde_json::to_value(&score).unwrap();
    assert_eq!(v["type"], "PodmanV0");
    assert!(v["data"]["containers"].is_array());
    assert_eq!(v["data"]["containers"][0]["ports"][0]["hostIP"], "0.0.0.0");
    let text = serde_json::to_string(&v).unwrap();
    let back: IotScore = serde_json::from_str(&text).unwrap();
    assert_eq!(back, score);
}

#[test]
fn json_to_postcard_to_rust_round_trip() {
    for s in [common::small(), common::typical(), common::large()] {
        let payload = IotScore::PodmanV0(s.clone()).to_payload().unwrap();
        let d = DesiredState {
            deployment: Text::borrowed("web"),
            revision: payload.content_hash(),
            score: payload,
        };
        let bytes = encode_to_vec(&d).unwrap();
        let back: DesiredState = decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.score.decode().unwrap(), IotScore::PodmanV0(s));
    }
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let mut v: Value = serde_json::from_str(common::DESIGN_EXAMPLE_JSON).unwrap();
    v["data"]["containers"][0]["ports"][0]["hostPotr"] = json!(1);
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].ports[0].hostPotr");
    assert!(e.reason.contains("hostPotr"), "{e}");

    v = serde_json::from_str(common::DESIGN_EXAMPLE_JSON).unwrap();
    v["data"]["replicas"] = json!(3);
    assert!(route(&v).unwrap_err().reason.contains("replicas"));
}

#[test]
fn wrong_types_name_the_path() {
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].ports[0].containerPort");
}

#[test]
fn bounds_are_typed_errors_with_paths() {
    let env: Vec<Value> = (0..=limits::MAX_ENV)
        .map(|i| json!({"name": format!("V{i}"), "value": "x"}))
        .collect();
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "env": env}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].env");
    assert!(e.reason.contains("32"), "{e}");

    let long = "x".repeat(limits::MAX_STRING_LEN + 1);
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "args": ["ok", long]}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].args[1]");
    assert!(e.reason.contains("limit is 1024"), "{e}");
    let caps: Vec<String> = (0..=limits::MAX_CAPABILITIES)
        .map(|i| format!("C{i}"))
        .collect();
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "capAdd": caps}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].capAdd");
    let devices: Vec<String> = (0..=limits::MAX_DEVICES)
        .map(|i| format!("/dev/d{i}"))
        .collect();
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "devices": devices}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].devices");
    let long_cap = "C".repeat(limits::MAX_NAME_LEN + 1);
    let v = json!({"type": "PodmanV0", "data": {"containers": [{"name": "a", "image": "i", "capAdd": [long_cap]}]}});
    let e = route(&v).unwrap_err();
    assert_eq!(e.path, "containers[0].capAdd[0]");
}

#[test]
fn semantic_rules() {
    let cases = [
        (json!({"containers": []}), "containers", Violation::Empty),
        (
            json!({"containers": [{"name": "a.b", "image": "i"}]}),
            "containers[0].name",
            Violation::Token(keys::TokenError::InvalidChar { ch: '.', index: 1 }),
        ),
        (
            json!({"containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "j"}]}),
            "containers[1].name",
            Violation::Duplicate,
        ),
        (
            json!({"containers": [{"name": "a", "image": ""}]}),
            "containers[0].image",
            Violation::Empty,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x"}]}]}),
            "containers[0].volumes[0]",
            Violation::VolumeSource,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"name": "v", "hostPath": "/h", "mountPath": "/x"}]}]}),
            "containers[0].volumes[0]",
            Violation::VolumeSource,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"hostPath": "rel", "mountPath": "/x"}]}]}),
            "containers[0].volumes[0].hostPath",
            Violation::NotAbsolute,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "ports": [{"containerPort": 0}]}]}),
            "containers[0].ports[0].containerPort",
            Violation::PortZero,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "capAdd": ["NET_ADMIN", ""]}]}),
            "containers[0].capAdd[1]",
            Violation::Empty,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "devices": ["ttyUSB0"]}]}),
            "containers[0].devices[0]",
            Violation::NotAbsolute,
        ),
    ];
    for (data, path, violation) in cases {
        let e = payload_from_json("PodmanV0", &data).unwrap_err();
        assert_eq!(e.path, path, "{data}");
        assert_eq!(e.reason, violation.to_string(), "{data}");
    }
}

#[test]
fn encode_refuses_invalid_values_with_a_typed_error() {
    let mut s = common::small();
    s.containers.push(s.containers[0].clone()).unwrap();
    match encode_to_vec(&s) {
        Err(EncodeError::Invalid(e)) => {
            assert_eq!(e.violation, Violation::Duplicate);
            assert_eq!(e.path.to_string(), "containers[1].name");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn lists_over_their_bound_are_refused_at_push_and_decode() {
    let mut s = common::large();
    assert!(s.containers.push(s.containers[0].clone()).is_err());
    // Hand-craft an encoding with one container more than allowed.
    let one = encode_to_vec(&common::small()).unwrap();
    let container = &one[2..]; // format byte, then length 1, then the container
    let mut bytes = vec![FORMAT_VERSION, (limits::MAX_CONTAINERS + 1) as u8];
    for _ in 0..=limits::MAX_CONTAINERS {
        bytes.extend_from_slice(container);
    }
    assert!(matches!(
        decode::<PodmanV0Score>(&bytes),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn unknown_type_is_routed_as_json_and_reported_unsupported() {
    let data = json!({"manifests": ["a", "b"]});
    let payload = payload_from_json("OkdApplyV0", &data).unwrap();
    assert_eq!(payload.encoding, PayloadEncoding::Json);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload.data).unwrap(),
        data
    );
    let d = DesiredState {
        deployment: Text::borrowed("x"),
        revision: 1,
        score: payload,
    };
    let bytes = encode_to_vec(&d).unwrap();
    let back: DesiredState = decode(&bytes).unwrap();
    match back.score.decode() {
        Err(ScoreError::Unsupported { type_name }) => assert_eq!(type_name, "OkdApplyV0"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn type_names_must_be_identifiers() {
    let e = payload_from_json("has spaces", &json!({})).unwrap_err();
    assert_eq!(e.path, "type");
    assert!(payload_from_json("PodmanV0_x", &json!({})).is_ok());
}

#[test]
fn oversized_unknown_payloads_are_refused() {
    let big = json!({"blob": "x".repeat(limits::MAX_VALUE_SIZE)});
    assert!(payload_from_json("BigV0", &big).is_err());
}

#[test]
fn revision_is_a_stable_content_hash() {
    let a = IotScore::PodmanV0(common::typical()).to_payload().unwrap();
    let b = route(&serde_json::from_str(common::DESIGN_EXAMPLE_JSON).unwrap()).unwrap();
    assert_eq!(a.content_hash(), b.content_hash());
    let c = IotScore::PodmanV0(common::small()).to_payload().unwrap();
    assert_ne!(a.content_hash(), c.content_hash());
}

#[test]
fn decoding_borrows_from_the_buffer() {
    let d = common::desired(&common::typical());
    let bytes = encode_to_vec(&d).unwrap();
    let back: DesiredState = decode(&bytes).unwrap();
    let IotScore::PodmanV0(s) = back.score.decode().unwrap();
    let image = s.containers[0].image.as_str();
    let range = bytes.as_ptr_range();
    let inner = back.score.data.as_ptr_range();
    assert!(range.contains(&inner.start));
    let p = image.as_ptr();
    assert!(
        inner.contains(&p),
        "image string was copied instead of borrowed"
    );
}

#[test]
fn a_new_container_is_what_a_score_with_only_name_and_image_decodes_to() {
    let decoded: protocol::Container<'_> =
        serde_json::from_str(r#"{"name": "web", "image": "localhost/x:1"}"#).unwrap();
    assert_eq!(
        decoded,
        protocol::Container::new(
            protocol::Text::borrowed("web"),
            protocol::Text::borrowed("localhost/x:1")
        )
    );
}
