//! JSON <-> Rust <-> postcard, the generic router, and the validation rules.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod vectors;

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
    let IotScore::PodmanV0(s) = &score else {
        panic!("not PodmanV0")
    };
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
    let Ok(IotScore::PodmanV0(s)) = serde_json::from_str(common::SEED_MINIMAL_JSON) else {
        panic!("not PodmanV0")
    };
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
        let d = DesiredState::new(Text::borrowed("web"), payload.content_hash(), payload);
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
    let d = DesiredState::new(Text::borrowed("x"), 1, payload);
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
    let Ok(IotScore::PodmanV0(s)) = back.score.decode() else {
        panic!("not PodmanV0")
    };
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

fn v1(container: Value) -> Value {
    json!({"containers": [container]})
}

fn route_v1(container: Value) -> Result<ScorePayload<'static>, JsonScoreError> {
    payload_from_json("PodmanV1", &v1(container))
}

fn parse_v1(container: Value) -> ContainerV1<'static> {
    match json::parse_known("PodmanV1", &v1(container)).unwrap() {
        IotScore::PodmanV1(s) => s.containers[0].clone(),
        other => panic!("not PodmanV1: {other:?}"),
    }
}

#[test]
fn podman_v1_parses_every_new_field() {
    let score: IotScore = serde_json::from_str(common::PODMAN_V1_JSON).unwrap();
    score.validate().unwrap();
    let IotScore::PodmanV1(s) = &score else {
        panic!("not PodmanV1")
    };
    let c = &s.containers[0];
    let check = c.health_check.as_ref().unwrap();
    let Some(HealthCheckAction::HttpGet(h)) = check.action() else {
        panic!("not httpGet")
    };
    assert_eq!(
        (h.path.as_str(), h.port, h.scheme),
        ("/healthz", 80, HttpScheme::Http)
    );
    assert_eq!(h.http_headers[0].name, "X-Probe");
    assert_eq!(check.port(), Some(80));
    assert_eq!(
        (
            check.interval_seconds,
            check.timeout_seconds,
            check.failure_threshold,
            check.success_threshold,
            check.start_period_seconds
        ),
        (5, 2, 4, 2, 10)
    );
    assert_eq!(check.on_failure, HealthFailureAction::Restart);
    assert_eq!(
        c.resources.memory_limit,
        Some(MemoryQuantity(128 * 1024 * 1024))
    );
    assert_eq!(c.resources.cpu_limit, Some(CpuQuantity(500)));
    assert_eq!(c.resources.cpu_limit.unwrap().cores(), 0.5);
    assert_eq!(
        (c.resources.cpu_weight, c.resources.pids_limit),
        (Some(200), Some(64))
    );
    assert_eq!(c.stop_grace_period_seconds, Some(20));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert!(c.read_only_root_filesystem && c.init);
    // Through the router: postcard, decoded back to the same score.
    let v: Value = serde_json::from_str(common::PODMAN_V1_JSON).unwrap();
    let payload = route(&v).unwrap();
    assert_eq!(payload.type_name, "PodmanV1");
    assert_eq!(payload.encoding, PayloadEncoding::Postcard);
    assert_eq!(payload.decode().unwrap(), score);
}

#[test]
fn podman_v1_json_round_trips_with_quantities_as_integers() {
    let score: IotScore = serde_json::from_str(common::PODMAN_V1_JSON).unwrap();
    let v = serde_json::to_value(&score).unwrap();
    let c = &v["data"]["containers"][0];
    assert_eq!(c["resources"]["memoryLimit"], 134_217_728);
    assert_eq!(c["healthCheck"]["httpGet"]["scheme"], "HTTP");
    assert_eq!(c["hostPID"], false);
    // A JSON number is cores, so CPU is written as a millicores string.
    assert_eq!(c["resources"]["cpuLimit"], "500m");
    let text = v.to_string();
    let back: IotScore = serde_json::from_str(&text).unwrap();
    assert_eq!(back, score);
}

#[test]
fn podman_v1_defaults() {
    // Name and image only: what ContainerV1::new and from_v0 give.
    let c = parse_v1(json!({"name": "web", "image": "localhost/x:1"}));
    let new = ContainerV1::new(Text::borrowed("web"), Text::borrowed("localhost/x:1"));
    assert_eq!(c, new);
    assert!(c.health_check.is_none() && c.resources.is_empty());
    assert!(c.user.is_none() && c.working_dir.is_none() && c.stop_grace_period_seconds.is_none());
    assert!(!c.read_only_root_filesystem && !c.init);
    assert_eq!(c.restart_policy, RestartPolicy::Always);
    let v0 = Container::new(Text::borrowed("web"), Text::borrowed("localhost/x:1"));
    assert_eq!(ContainerV1::from_v0(v0), new);
    // A check that names only its action gets Kubernetes' defaults.
    let c = parse_v1(
        json!({"name": "web", "image": "i", "ports": [{"containerPort": 80}],
        "healthCheck": {"httpGet": {"port": 80}}}),
    );
    let check = c.health_check.unwrap();
    assert_eq!(check, HealthCheck::http_get(80));
    assert_eq!(
        (
            check.interval_seconds,
            check.timeout_seconds,
            check.failure_threshold,
            check.success_threshold,
            check.start_period_seconds,
            check.on_failure
        ),
        (10, 1, 3, 1, 0, HealthFailureAction::Restart)
    );
    let h = check.http_get.unwrap();
    assert_eq!((h.path.as_str(), h.scheme), ("/", HttpScheme::Http));
    assert!(h.http_headers.is_empty());
    let c = parse_v1(json!({"name": "web", "image": "i", "hostNetwork": true,
        "healthCheck": {"tcpSocket": {"port": 5432}, "onFailure": "None"}}));
    let check = c.health_check.unwrap();
    assert_eq!(
        check.action(),
        Some(HealthCheckAction::TcpSocket(&TcpSocketCheck { port: 5432 }))
    );
    assert_eq!(check.on_failure, HealthFailureAction::None);
    let command = BoundedVec::try_from_iter([Text::borrowed("true")]).unwrap();
    let c = parse_v1(
        json!({"name": "web", "image": "i", "healthCheck": {"exec": {"command": ["true"]}}}),
    );
    assert_eq!(c.health_check.unwrap(), HealthCheck::exec(command));
}

#[test]
fn quantities_as_kubernetes_writes_them() {
    let mem = |q: Value| {
        parse_v1(json!({"name": "a", "image": "i", "resources": {"memoryLimit": q}}))
            .resources
            .memory_limit
            .unwrap()
            .bytes()
    };
    assert_eq!(mem(json!("128Mi")), 128 << 20);
    assert_eq!(mem(json!("1Gi")), 1 << 30);
    assert_eq!(mem(json!("1.5Gi")), 3 << 29);
    assert_eq!(mem(json!("500M")), 500_000_000);
    assert_eq!(mem(json!("6Mi")), 6 << 20);
    assert_eq!(mem(json!("1T")), 1_000_000_000_000);
    assert_eq!(mem(json!(134_217_728)), 134_217_728);
    assert_eq!(mem(json!(67_108_864.0)), 67_108_864);
    assert_eq!(mem(json!("134217728")), 134_217_728);
    assert_eq!(MemoryQuantity::parse("64k"), Ok(MemoryQuantity(64_000)));
    assert_eq!(MemoryQuantity::parse("64Ki"), Ok(MemoryQuantity(65_536)));
    assert_eq!(MemoryQuantity::parse("2Ti"), Ok(MemoryQuantity(2 << 40)));
    for bad in [
        "", "Mi", "12Q", "1.5", "0.1", "-1Mi", "1e6", "1.Mi", ".5Gi", " 1Mi", "1 Mi", "1mi",
    ] {
        assert_eq!(
            MemoryQuantity::parse(bad),
            Err(QuantityError::Memory),
            "{bad:?}"
        );
    }
    assert_eq!(
        MemoryQuantity::parse("99999999999999999999999Ti"),
        Err(QuantityError::TooLarge)
    );
    let cpu = |q: Value| {
        parse_v1(json!({"name": "a", "image": "i", "resources": {"cpuLimit": q}}))
            .resources
            .cpu_limit
            .unwrap()
            .millicores()
    };
    assert_eq!(cpu(json!("500m")), 500);
    assert_eq!(cpu(json!(0.5)), 500);
    assert_eq!(cpu(json!(0.1)), 100);
    assert_eq!(cpu(json!(2)), 2000);
    assert_eq!(cpu(json!("2")), 2000);
    assert_eq!(cpu(json!("1.5")), 1500);
    assert_eq!(cpu(json!("0.25")), 250);
    assert_eq!(cpu(json!(1.234)), 1234);
    for bad in ["", "m", "1.5m", "0.0005", "abc", "-1", "1e3", "2 "] {
        assert_eq!(CpuQuantity::parse(bad), Err(QuantityError::Cpu), "{bad:?}");
    }
    // In JSON, errors name the field and say what to write.
    for (q, says) in [
        (json!("12Q"), "128Mi"),
        (json!(-1), "128Mi"),
        (json!(1.5), "128Mi"),
        (json!(true), "128Mi"),
    ] {
        let e = route_v1(json!({"name": "a", "image": "i", "resources": {"memoryLimit": q}}))
            .unwrap_err();
        assert_eq!(e.path, "containers[0].resources.memoryLimit", "{q}");
        assert!(e.reason.contains(says), "{q}: {e}");
    }
    for q in [json!("0.0005"), json!(0.0005), json!(-1), json!("fast")] {
        let e =
            route_v1(json!({"name": "a", "image": "i", "resources": {"cpuLimit": q}})).unwrap_err();
        assert_eq!(e.path, "containers[0].resources.cpuLimit", "{q}");
        assert!(e.reason.contains("500m"), "{q}: {e}");
    }
}

#[test]
fn podman_v1_unknown_fields_are_rejected_with_their_path() {
    for (container, path) in [
        (
            json!({"name": "a", "image": "i", "livenessProbe": {}}),
            "containers[0].livenessProbe",
        ),
        (
            json!({"name": "a", "image": "i", "healthCheck": {"tcpSocket": {"port": 80, "host": "x"}}}),
            "containers[0].healthCheck.tcpSocket.host",
        ),
        (
            json!({"name": "a", "image": "i", "healthCheck": {"httpGet": {"port": 80}, "periodSeconds": 5}}),
            "containers[0].healthCheck.periodSeconds",
        ),
        (
            json!({"name": "a", "image": "i", "resources": {"memory": "1Gi"}}),
            "containers[0].resources.memory",
        ),
    ] {
        let e = route_v1(container.clone()).unwrap_err();
        assert_eq!(e.path, path, "{container}");
        assert!(e.reason.contains("unknown field"), "{e}");
    }
    // PodmanV0 is frozen: the new fields are not PodmanV0's.
    let e = payload_from_json(
        "PodmanV0",
        &v1(json!({"name": "a", "image": "i", "init": true})),
    )
    .unwrap_err();
    assert_eq!(e.path, "containers[0].init");
    // The scheme and action are Kubernetes' spellings.
    let e = route_v1(
        json!({"name": "a", "image": "i", "ports": [{"containerPort": 80}],
        "healthCheck": {"httpGet": {"port": 80, "scheme": "http"}}}),
    )
    .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.httpGet.scheme");
    let e = route_v1(
        json!({"name": "a", "image": "i", "ports": [{"containerPort": 80}],
        "healthCheck": {"httpGet": {"port": 80}, "onFailure": "Kill"}}),
    )
    .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.onFailure");
}

#[test]
fn podman_v1_rules_name_the_field_and_the_fix() {
    let web = |extra: Value| {
        let mut c = json!({"name": "web", "image": "i", "ports": [{"containerPort": 8080}]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let check = |extra: Value| {
        let mut hc = json!({"httpGet": {"port": 8080}});
        for (k, v) in extra.as_object().unwrap() {
            hc[k] = v.clone();
        }
        web(json!({"healthCheck": hc}))
    };
    let range = |min, max, actual, unit| Violation::OutOfRange {
        min,
        max,
        actual,
        unit,
    };
    let cases = [
        (
            web(json!({"healthCheck": {"intervalSeconds": 5}})),
            "containers[0].healthCheck",
            Violation::OneOf {
                of: "`exec`, `httpGet` or `tcpSocket`",
            },
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080}, "tcpSocket": {"port": 8080}}})),
            "containers[0].healthCheck",
            Violation::OneOf {
                of: "`exec`, `httpGet` or `tcpSocket`",
            },
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 9090}}})),
            "containers[0].healthCheck.httpGet.port",
            Violation::NotAContainerPort { port: 9090 },
        ),
        (
            web(json!({"healthCheck": {"tcpSocket": {"port": 9090}}})),
            "containers[0].healthCheck.tcpSocket.port",
            Violation::NotAContainerPort { port: 9090 },
        ),
        (
            json!({"name": "dns", "image": "i", "ports": [{"containerPort": 53, "protocol": "UDP"}],
                "healthCheck": {"tcpSocket": {"port": 53}}}),
            "containers[0].healthCheck.tcpSocket.port",
            Violation::NotAContainerPort { port: 53 },
        ),
        (
            web(json!({"healthCheck": {"tcpSocket": {"port": 0}}})),
            "containers[0].healthCheck.tcpSocket.port",
            Violation::PortZero,
        ),
        (
            check(json!({"intervalSeconds": 0})),
            "containers[0].healthCheck.intervalSeconds",
            range(1, 3600, 0, "s"),
        ),
        (
            check(json!({"intervalSeconds": 86_400})),
            "containers[0].healthCheck.intervalSeconds",
            range(1, 3600, 86_400, "s"),
        ),
        (
            check(json!({"timeoutSeconds": 0})),
            "containers[0].healthCheck.timeoutSeconds",
            range(1, 3600, 0, "s"),
        ),
        (
            check(json!({"failureThreshold": 0})),
            "containers[0].healthCheck.failureThreshold",
            range(1, 1000, 0, ""),
        ),
        (
            check(json!({"successThreshold": 1001})),
            "containers[0].healthCheck.successThreshold",
            range(1, 1000, 1001, ""),
        ),
        (
            check(json!({"startPeriodSeconds": 3601})),
            "containers[0].healthCheck.startPeriodSeconds",
            range(0, 3600, 3601, "s"),
        ),
        (
            web(json!({"healthCheck": {"exec": {"command": []}}})),
            "containers[0].healthCheck.exec.command",
            Violation::Empty,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080, "path": "healthz"}}})),
            "containers[0].healthCheck.httpGet.path",
            Violation::NotAbsolute,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080, "path": "/a b"}}})),
            "containers[0].healthCheck.httpGet.path",
            Violation::NotVisibleAscii,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080, "path": "/café"}}})),
            "containers[0].healthCheck.httpGet.path",
            Violation::NotVisibleAscii,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080,
                "httpHeaders": [{"name": "Content-Length", "value": "5"}]}}})),
            "containers[0].healthCheck.httpGet.httpHeaders[0].name",
            Violation::ReservedHeader,
        ),
        (
            web(json!({"workingDir": "/a\u{0}b"})),
            "containers[0].workingDir",
            Violation::ControlCharacter,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080,
                "httpHeaders": [{"name": "X Probe", "value": "1"}]}}})),
            "containers[0].healthCheck.httpGet.httpHeaders[0].name",
            Violation::NotHeaderName,
        ),
        (
            web(json!({"healthCheck": {"httpGet": {"port": 8080,
                "httpHeaders": [{"name": "X-Probe", "value": "1\r\nHost: evil"}]}}})),
            "containers[0].healthCheck.httpGet.httpHeaders[0].value",
            Violation::ControlCharacter,
        ),
        (
            web(json!({"resources": {"memoryLimit": "4Mi"}})),
            "containers[0].resources.memoryLimit",
            Violation::MemoryTooSmall { actual: 4 << 20 },
        ),
        (
            web(json!({"resources": {"memoryLimit": "2Ti"}})),
            "containers[0].resources.memoryLimit",
            range(6 << 20, 1 << 40, 2 << 40, " bytes"),
        ),
        (
            web(json!({"resources": {"cpuLimit": "5m"}})),
            "containers[0].resources.cpuLimit",
            range(10, 1_000_000, 5, "m"),
        ),
        (
            web(json!({"resources": {"cpuWeight": 0}})),
            "containers[0].resources.cpuWeight",
            range(1, 10_000, 0, ""),
        ),
        (
            web(json!({"resources": {"pidsLimit": 0}})),
            "containers[0].resources.pidsLimit",
            range(1, 4_194_304, 0, ""),
        ),
        (
            web(json!({"stopGracePeriodSeconds": 7200})),
            "containers[0].stopGracePeriodSeconds",
            range(0, 3600, 7200, "s"),
        ),
        (
            web(json!({"user": "1000 "})),
            "containers[0].user",
            Violation::Whitespace,
        ),
        (
            web(json!({"user": ":100"})),
            "containers[0].user",
            Violation::NotUser,
        ),
        (
            web(json!({"user": "a:b:c"})),
            "containers[0].user",
            Violation::NotUser,
        ),
        (
            web(json!({"user": ""})),
            "containers[0].user",
            Violation::Empty,
        ),
        (
            web(json!({"workingDir": "srv"})),
            "containers[0].workingDir",
            Violation::NotAbsolute,
        ),
        // The shared rules still apply.
        (
            json!({"name": "a.b", "image": "i"}),
            "containers[0].name",
            Violation::Token(keys::TokenError::InvalidChar { ch: '.', index: 1 }),
        ),
    ];
    for (container, path, violation) in cases {
        let e = route_v1(container.clone()).unwrap_err();
        assert_eq!(e.path, path, "{container}");
        assert_eq!(e.reason, violation.to_string(), "{container}");
    }
    // Containers in a score are unique by name.
    let e = payload_from_json(
        "PodmanV1",
        &json!({"containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "j"}]}),
    )
    .unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.reason),
        ("containers[1].name", Violation::Duplicate.to_string())
    );
    // The messages say what to do.
    assert_eq!(
        Violation::NotAContainerPort { port: 9090 }.to_string(),
        "9090 is not a TCP `containerPort` of this container: add {\"containerPort\": 9090} to its `ports` (a `hostPort` is not needed), or set `hostNetwork`"
    );
    assert!(
        Violation::MemoryTooSmall { actual: 1 }
            .to_string()
            .contains("6 MiB")
    );
    assert_eq!(
        range(1, 3600, 0, "s").to_string(),
        "is 0s; it must be between 1s and 3600s"
    );
}

#[test]
fn podman_v1_edges_that_pass() {
    for container in [
        // hostNetwork: every port is the host's, none need declaring.
        json!({"name": "a", "image": "i", "hostNetwork": true, "healthCheck": {"httpGet": {"port": 9090}}}),
        json!({"name": "a", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}],
            "healthCheck": {"tcpSocket": {"port": 80}, "intervalSeconds": 3600, "timeoutSeconds": 3600,
            "failureThreshold": 1000, "successThreshold": 1000, "startPeriodSeconds": 3600}}),
        json!({"name": "a", "image": "i", "healthCheck": {"exec": {"command": ["pg_isready", "-q"]}}}),
        json!({"name": "a", "image": "i", "resources": {"memoryLimit": "6Mi", "cpuLimit": "10m",
            "cpuWeight": 10000, "pidsLimit": 4194304}}),
        json!({"name": "a", "image": "i", "resources": {"memoryLimit": "1Ti", "cpuLimit": 1000}}),
        json!({"name": "a", "image": "i", "stopGracePeriodSeconds": 0, "user": "nobody"}),
        json!({"name": "a", "image": "i", "user": "1000:1000", "workingDir": "/"}),
        json!({"name": "a", "image": "i", "ports": [{"containerPort": 80}], "healthCheck": {"httpGet": {
            "port": 80, "path": "/ready?full=1", "scheme": "HTTPS",
            "httpHeaders": [{"name": "Authorization", "value": "Bearer a\tb"}]}}}),
    ] {
        route_v1(container.clone()).unwrap_or_else(|e| panic!("{container}: {e}"));
    }
}

#[test]
fn a_health_check_command_is_bounded() {
    let args: Vec<String> = (0..=limits::MAX_ARGS).map(|i| format!("a{i}")).collect();
    let e =
        route_v1(json!({"name": "a", "image": "i", "healthCheck": {"exec": {"command": args}}}))
            .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.exec.command");
    assert!(e.reason.contains("at most 32"), "{e}");
    let long = "x".repeat(limits::MAX_STRING_LEN + 1);
    let e = route_v1(
        json!({"name": "a", "image": "i", "healthCheck": {"exec": {"command": ["sh", long]}}}),
    )
    .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.exec.command[1]");
    let headers: Vec<Value> = (0..=limits::MAX_HTTP_HEADERS)
        .map(|i| json!({"name": format!("X-{i}"), "value": "v"}))
        .collect();
    let e = route_v1(json!({"name": "a", "image": "i", "hostNetwork": true,
        "healthCheck": {"httpGet": {"port": 80, "httpHeaders": headers}}}))
    .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.httpGet.httpHeaders");
    // Numbers that are not what the field holds fail at parsing, named.
    let e = route_v1(
        json!({"name": "a", "image": "i", "ports": [{"containerPort": 80}],
        "healthCheck": {"httpGet": {"port": 80}, "intervalSeconds": -1}}),
    )
    .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.intervalSeconds");
    let e =
        route_v1(json!({"name": "a", "image": "i", "healthCheck": {"tcpSocket": {"port": 70000}}}))
            .unwrap_err();
    assert_eq!(e.path, "containers[0].healthCheck.tcpSocket.port");
}

#[test]
fn podman_v1_json_to_postcard_to_rust_round_trip() {
    for s in [common::podman_v1(), common::large_v1()] {
        let d = common::desired_v1(&s);
        let bytes = encode_to_vec(&d).unwrap();
        let back: DesiredState = decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.score.decode().unwrap(), IotScore::PodmanV1(s));
    }
    // JSON and back gives the same revision (`large_v1`'s sixteen labels
    // would come back sorted: serde_json's objects are).
    let d = common::desired_v1(&common::podman_v1());
    let v = serde_json::to_value(IotScore::PodmanV1(common::podman_v1())).unwrap();
    assert_eq!(route(&v).unwrap().content_hash(), d.revision);
    // The largest PodmanV1 score fits a value.
    assert!(
        encode_to_vec(&common::desired_v1(&common::large_v1()))
            .unwrap()
            .len()
            < limits::MAX_VALUE_SIZE
    );
    // A container's spec hash covers the new fields.
    let a = common::podman_v1().containers[0].clone();
    let mut b = a.clone();
    b.init = false;
    assert_ne!(wire::hash_of(&a), wire::hash_of(&b));
}

#[test]
fn podman_v1_secret_references_in_kubernetes_spelling() {
    let data = json!({"containers": [{
        "name": "app",
        "image": "127.0.0.1:5000/team/app:1",
        "env": [
            {"name": "MODE", "value": "prod"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
        ],
        "volumes": [{
            "mountPath": "/etc/tls",
            "readOnly": true,
            "secret": {"secretName": "tls", "items": [{"key": "ca.crt", "path": "ca.pem"}], "defaultMode": 256}
        }]
    }]});
    let payload = payload_from_json("PodmanV1", &data).unwrap();
    match payload.decode().unwrap() {
        IotScore::PodmanV1(s) => assert_eq!(s, vectors::podman_v1_secrets_score()),
        other => panic!("expected PodmanV1, got {other:?}"),
    }
    let cases = [
        (
            json!({"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
            "containers[0].env[0]",
            Violation::EnvSource,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "", "key": "k"}}}]}]}),
            "containers[0].env[0].valueFrom.secretKeyRef.name",
            Violation::Empty,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"name": "v", "mountPath": "/x", "secret": {"secretName": "s"}}]}]}),
            "containers[0].volumes[0]",
            Violation::VolumeSourceV1,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x"}]}]}),
            "containers[0].volumes[0]",
            Violation::VolumeSourceV1,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x", "secret": {"secretName": "s", "items": [{"key": "a", "path": "a"}, {"key": "k", "path": "../etc/passwd"}]}}]}]}),
            "containers[0].volumes[0].secret.items[1].path",
            Violation::RelativePath,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x", "secret": {"secretName": "s", "items": [{"key": "../k", "path": "k"}]}}]}]}),
            "containers[0].volumes[0].secret.items[0].key",
            Violation::NotSecretKey,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]}]}),
            "containers[0].env[0].valueFrom.secretKeyRef.key",
            Violation::NotSecretKey,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x", "secret": {"secretName": "s", "items": [{"key": "k", "path": "/abs"}]}}]}]}),
            "containers[0].volumes[0].secret.items[0].path",
            Violation::RelativePath,
        ),
        (
            json!({"containers": [{"name": "a", "image": "i", "volumes": [{"mountPath": "/x", "secret": {"secretName": "s", "defaultMode": 1024}}]}]}),
            "containers[0].volumes[0].secret.defaultMode",
            Violation::OutOfRange {
                min: 0,
                max: 0o777,
                actual: 1024,
                unit: "",
            },
        ),
    ];
    for (data, path, violation) in cases {
        let e = payload_from_json("PodmanV1", &data).unwrap_err();
        assert_eq!(e.path, path, "{data}");
        assert_eq!(e.reason, violation.to_string(), "{data}");
    }
    // PodmanV0 has none of it.
    let v0 = json!({"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]});
    assert!(payload_from_json("PodmanV0", &v0).is_err());
}
