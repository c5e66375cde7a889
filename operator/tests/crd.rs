//! The CRD: `deploy/crd.yaml` is the generator's output, the schema has the
//! agreed shape, and every CEL rule in it is evaluated with a Rust CEL
//! interpreter on passing and failing samples.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use cel_interpreter::{Context, Program, Value};
use serde_json::{Value as Json, json};

fn crd_json() -> Json {
    serde_json::to_value(operator::crd::crd()).unwrap()
}

fn schema() -> Json {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every `x-kubernetes-validations` rule, by the schema path it sits on
/// (`""` for the root, `spec.score.type`, `spec.targetDevices[]`).
fn rules() -> BTreeMap<String, Vec<(String, String)>> {
    fn walk(node: &Json, path: &str, out: &mut BTreeMap<String, Vec<(String, String)>>) {
        if let Some(v) = node
            .get("x-kubernetes-validations")
            .and_then(Json::as_array)
        {
            for r in v {
                out.entry(path.to_string()).or_default().push((
                    r["rule"].as_str().unwrap().to_string(),
                    r["message"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(props) = node.get("properties").and_then(Json::as_object) {
            for (k, v) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&schema(), "", &mut out);
    out
}

fn eval(rule: &str, self_value: Json) -> bool {
    let program = Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
    let mut ctx = Context::default();
    ctx.add_variable_from_value("self", cel_interpreter::to_value(self_value).unwrap());
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => b,
        other => panic!("{rule} did not evaluate to a bool: {other:?}"),
    }
}

fn only_rule(path: &str) -> (String, String) {
    let all = rules();
    let r = all
        .get(path)
        .unwrap_or_else(|| panic!("no rule at {path:?}: {all:?}"));
    assert_eq!(r.len(), 1, "{path}: {r:?}");
    r[0].clone()
}

#[test]
fn deploy_crd_yaml_is_the_generated_crd() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml"))
            .unwrap();
    let generated = operator::crd::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "deploy/crd.yaml is stale: run `cargo run -p operator -- gen-crd > deploy/crd.yaml`"
    );
}

#[test]
fn gen_crd_prints_the_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .arg("gen-crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        operator::crd::crd_yaml().unwrap()
    );
}

#[test]
fn names_scope_and_columns() {
    let crd = crd_json();
    let spec = &crd["spec"];
    assert_eq!(crd["metadata"]["name"], "deployments.iot.nationtech.io");
    assert_eq!(spec["group"], "iot.nationtech.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "Deployment");
    assert_eq!(spec["names"]["categories"], json!(["iot"]));
    let short: Vec<&str> = spec["names"]["shortNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // apps/v1 Deployment owns `deploy`; ours must not collide with it.
    assert!(
        short.contains(&"iotdeploy") && !short.contains(&"deploy"),
        "{short:?}"
    );
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in ["Type", "Targets", "Ready", "Healthy", "Up-to-date", "Age"] {
        assert!(columns.contains(&c), "{columns:?}");
    }
}

#[test]
fn schema_shape() {
    let s = schema();
    let spec = &s["properties"]["spec"];
    let score = &spec["properties"]["score"];
    assert_eq!(score["properties"]["type"]["minLength"], 1);
    assert_eq!(
        score["properties"]["data"],
        json!({"description": score["properties"]["data"]["description"], "type": "object", "x-kubernetes-preserve-unknown-fields": true})
    );
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(
        text.matches("x-kubernetes-preserve-unknown-fields").count(),
        1,
        "only score.data is free-form"
    );
    let score_text = serde_json::to_string(score).unwrap();
    assert_eq!(
        score_text.matches("x-kubernetes-validations").count(),
        1,
        "one validations block for score"
    );
    assert_eq!(
        spec["properties"]["rollout"]["properties"]["strategy"]["enum"],
        json!(["AllAtOnce", "BatchSequence"])
    );
    assert_eq!(
        spec["properties"]["rollout"]["properties"]["strategy"]["default"],
        "AllAtOnce"
    );
    // The rollout policy the devices apply: bounded and documented here,
    // checked again by `plan`.
    let rollout = &spec["properties"]["rollout"]["properties"];
    for (field, default, min) in [
        ("progressDeadlineSeconds", 600, 1),
        ("minHealthySeconds", 0, 0),
    ] {
        let f = &rollout[field];
        assert_eq!(f["type"], "integer", "{field}");
        assert_eq!(f["default"], default, "{field}");
        assert_eq!(f["minimum"].as_f64(), Some(f64::from(min)), "{field}");
        assert_eq!(
            f["maximum"].as_f64(),
            Some(f64::from(operator::crd::MAX_ROLLOUT_SECONDS)),
            "{field}"
        );
        assert!(
            f["description"].as_str().unwrap().contains("Healthy"),
            "{field}: {f}"
        );
    }
    assert_eq!(rollout["autoRollback"]["type"], "boolean");
    assert_eq!(rollout["autoRollback"]["default"], false);
    assert!(
        rollout["autoRollback"]["description"]
            .as_str()
            .unwrap()
            .contains("RolledBack")
    );
    assert_eq!(
        serde_json::from_value::<operator::crd::Rollout>(
            spec["properties"]["rollout"]["default"].clone()
        )
        .unwrap(),
        operator::crd::Rollout::default(),
        "the schema's default is the operator's"
    );
    assert_eq!(
        spec["required"],
        json!(["score"]),
        "targetDevices may be absent"
    );
    let selector = &spec["properties"]["targetSelector"];
    assert_eq!(
        selector["properties"]["matchExpressions"]["items"]["properties"]["operator"]["enum"],
        json!(["In", "NotIn", "Exists", "DoesNotExist"])
    );
    assert!(
        selector["description"]
            .as_str()
            .unwrap()
            .contains("union of the"),
        "{selector}"
    );
    let status = &s["properties"]["status"]["properties"];
    for f in [
        "observedGeneration",
        "observedScoreString",
        "revision",
        "conditions",
        "devices",
        "devicesOmitted",
        "targeted",
        "upToDate",
        "ready",
        "healthy",
        "failed",
    ] {
        assert!(status.get(f).is_some(), "status.{f} missing");
    }
    let cond = &status["conditions"]["items"];
    assert_eq!(
        cond["required"],
        json!(["lastTransitionTime", "message", "reason", "status", "type"])
    );
    assert_eq!(
        status["devices"]["maxItems"],
        json!(operator::crd::MAX_LISTED_DEVICES),
        "the list is capped"
    );
    for f in ["device", "phase", "revision", "message", "lastReportTime"] {
        assert!(
            status["devices"]["items"]["properties"].get(f).is_some(),
            "devices[].{f}"
        );
    }
    let paths: Vec<String> = rules().into_keys().collect();
    assert_eq!(
        paths,
        [
            "",
            "spec",
            "spec.rollout.batches[].limit",
            "spec.rollout.batches[].selector.matchExpressions[]",
            "spec.rollout.batches[].selector.matchExpressions[].key",
            "spec.rollout.batches[].selector.matchExpressions[].values[]",
            "spec.rollout.batches[].selector.matchLabels",
            "spec.rollout.maxUnavailable",
            "spec.score.type",
            "spec.targetDevices[]",
            "spec.targetSelector.matchExpressions[]",
            "spec.targetSelector.matchExpressions[].key",
            "spec.targetSelector.matchExpressions[].values[]",
            "spec.targetSelector.matchLabels",
        ]
    );
}

#[test]
fn targets_rule() {
    let (rule, message) = only_rule("spec");
    assert!(message.contains("targetDevices") && message.contains("targetSelector"));
    let score = json!({"type": "PodmanV0", "data": {}});
    assert!(eval(&rule, json!({"targetDevices": ["a"], "score": score})));
    assert!(eval(&rule, json!({"targetSelector": {}, "score": score})));
    assert!(eval(
        &rule,
        json!({"targetDevices": [], "targetSelector": {"matchLabels": {"site": "lyon"}}, "score": score})
    ));
    assert!(!eval(&rule, json!({"targetDevices": [], "score": score})));
    assert!(!eval(&rule, json!({"score": score})));
}

#[test]
fn selector_rules() {
    let (values_rule, _) = only_rule("spec.targetSelector.matchExpressions[]");
    let expr = |op: &str, values: Option<Json>| match values {
        Some(v) => json!({"key": "site", "operator": op, "values": v}),
        None => json!({"key": "site", "operator": op}),
    };
    assert!(eval(&values_rule, expr("In", Some(json!(["a"])))));
    assert!(eval(&values_rule, expr("NotIn", Some(json!(["a", "b"])))));
    assert!(eval(&values_rule, expr("Exists", None)));
    assert!(eval(&values_rule, expr("DoesNotExist", Some(json!([])))));
    assert!(!eval(&values_rule, expr("In", None)));
    assert!(!eval(&values_rule, expr("In", Some(json!([])))));
    assert!(!eval(&values_rule, expr("Exists", Some(json!(["a"])))));
    let (key_rule, _) = only_rule("spec.targetSelector.matchExpressions[].key");
    let (value_rule, _) = only_rule("spec.targetSelector.matchExpressions[].values[]");
    let (keys_rule, _) = only_rule("spec.targetSelector.matchLabels");
    for key in [
        "site",
        "example.com/site",
        "a_b.c-d",
        "Bad Key",
        "-a",
        "UP.com/x",
        "a/b/c",
        "x/",
    ] {
        let ours = operator::targeting::TargetSelector::new(
            &serde_json::from_value(
                json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}),
            )
            .unwrap(),
        )
        .is_ok();
        assert_eq!(eval(&key_rule, json!(key)), ours, "key {key:?}");
        assert_eq!(
            eval(&keys_rule, json!({key: "v"})),
            ours,
            "matchLabels key {key:?}"
        );
    }
    for value in ["", "lyon", "a.b_c-d", "-no", "no-", "has space"] {
        let ours = operator::targeting::TargetSelector::new(
            &serde_json::from_value(json!({"matchLabels": {"site": value}})).unwrap(),
        )
        .is_ok();
        assert_eq!(eval(&value_rule, json!(value)), ours, "value {value:?}");
    }
}

/// The phases and reasons are enums in the schema, written as the same
/// strings as when they were free text, so statuses written before read back.
#[test]
fn phases_and_reasons_are_documented_enums() {
    use operator::crd::{ConditionReason, DevicePhase, DeviceStatus};
    let s = schema();
    let status = &s["properties"]["status"]["properties"];
    let phases = &status["devices"]["items"]["properties"]["phase"]["enum"];
    for p in [
        "Running",
        "Failed",
        "Conflict",
        "Unknown",
        "Unreachable",
        "Healthy",
        "Unhealthy",
        "CrashLoopBackOff",
        "RolledBack",
    ] {
        assert!(
            phases.as_array().unwrap().contains(&json!(p)),
            "{p}: {phases}"
        );
    }
    let reasons = &status["conditions"]["items"]["properties"]["reason"]["enum"];
    for r in [
        "AllTargetsReady",
        "KeyOwnedElsewhere",
        "RoutedAsJson",
        "TargetsUnhealthy",
    ] {
        assert!(
            reasons.as_array().unwrap().contains(&json!(r)),
            "{r}: {reasons}"
        );
    }
    assert_eq!(json!(DevicePhase::Unreachable), json!("Unreachable"));
    // Every agent phase is written under the agent's own name.
    for p in [
        protocol::Phase::Pending,
        protocol::Phase::Pulling,
        protocol::Phase::Starting,
        protocol::Phase::Running,
        protocol::Phase::Failed,
        protocol::Phase::Unsupported,
        protocol::Phase::Removed,
        protocol::Phase::Completed,
        protocol::Phase::Healthy,
        protocol::Phase::Unhealthy,
        protocol::Phase::CrashLoopBackOff,
        protocol::Phase::RolledBack,
    ] {
        assert_eq!(json!(DevicePhase::from(p)), json!(p.as_str()));
        assert!(
            phases.as_array().unwrap().contains(&json!(p.as_str())),
            "{p}"
        );
    }
    let device = &status["devices"]["items"]["properties"];
    for f in ["reason", "runningRevision"] {
        assert!(device[f]["description"].is_string(), "devices[].{f}");
    }
    assert_eq!(status["healthy"]["type"], "integer");
    assert_eq!(
        json!(ConditionReason::TargetsFailed),
        json!("TargetsFailed")
    );
    let written: DeviceStatus = serde_json::from_value(json!({
        "device": "a", "phase": "Conflict", "revision": null,
        "message": "the key a.web belongs to other/web", "lastReportTime": null
    }))
    .unwrap();
    assert_eq!(written.phase, DevicePhase::Conflict);
    assert!(
        serde_json::from_value::<DeviceStatus>(json!({"device": "a", "phase": "Sleeping"}))
            .is_err()
    );
}

#[test]
fn score_type_rule() {
    let (rule, message) = only_rule("spec.score.type");
    assert!(message.contains("PodmanV0"), "{message}");
    for ok in ["PodmanV0", "_x", "OkdApplyV0", "PdomanV0"] {
        assert!(eval(&rule, json!(ok)), "{ok} must pass");
    }
    for bad in ["has spaces", "0Podman", "Podman-V0", "Podman.V0", "pod*"] {
        assert!(!eval(&rule, json!(bad)), "{bad} must fail");
    }
}

#[test]
fn name_rule() {
    let (rule, message) = only_rule("");
    assert!(message.contains("no '.'"), "{message}");
    let named = |n: &str| json!({"metadata": {"name": n}, "spec": {}});
    for ok in ["hello-web", "a", "web_1", &"a".repeat(63)] {
        assert!(eval(&rule, named(ok)), "{ok} must pass");
    }
    for bad in ["hello.web", "a.b.c", &"a".repeat(64)] {
        assert!(!eval(&rule, named(bad)), "{bad} must fail");
    }
}

#[test]
fn device_id_rule() {
    let (rule, message) = only_rule("spec.targetDevices[]");
    assert!(message.contains("'*'"), "{message}");
    for ok in ["pi-001", "demo-device", "A_1"] {
        assert!(eval(&rule, json!(ok)), "{ok} must pass");
    }
    for bad in ["pi*", "pi.001", "pi 1", ">", "pi>", "", "é"] {
        assert!(!eval(&rule, json!(bad)), "{bad:?} must fail");
    }
}

/// The operator enforces the same rules as the apiserver, so a manifest
/// the CRD rejects is rejected by `iot-operator apply` too.
#[test]
fn operator_agrees_with_the_cel_rules() {
    let (type_rule, _) = only_rule("spec.score.type");
    let (device_rule, _) = only_rule("spec.targetDevices[]");
    for t in ["PodmanV0", "has spaces", "X1", "1X", "a-b"] {
        let cel = eval(&type_rule, json!(t));
        let d: operator::Deployment = serde_json::from_value(json!({
            "apiVersion": "iot.nationtech.io/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "n"},
            "spec": {"targetDevices": ["d"], "score": {"type": t, "data": {}}}
        }))
        .unwrap();
        let ours = !matches!(operator::plan(&d), Err(e) if e.to_string().contains("type"));
        assert_eq!(cel, ours, "type {t:?}");
    }
    for dev in ["ok", "pi*", "a.b", "x y"] {
        let cel = eval(&device_rule, json!(dev));
        let ours = protocol::keys::validate_device_id(dev).is_ok();
        assert_eq!(cel, ours, "device {dev:?}");
    }
}
