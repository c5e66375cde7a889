//! The manifests under deploy/: the operator's RBAC matches what it does,
//! its Deployment uses settings the binary reads, and the NATS server
//! configuration example runs with the operator on it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn operator_yaml_has_least_privilege_rbac() {
    let d = docs("deploy/operator.yaml");
    let kinds: Vec<&str> = d.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let rules = &find(&d, "ClusterRole")["rules"];
    assert_eq!(
        *rules,
        json!([
            {"apiGroups": ["iot.nationtech.io"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["iot.nationtech.io"], "resources": ["deployments/status"], "verbs": ["get", "patch"]},
            {"apiGroups": ["iot.nationtech.io"], "resources": ["deployments/finalizers"], "verbs": ["update"]},
            {"apiGroups": ["iot.nationtech.io"], "resources": ["devices"], "verbs": ["get", "list", "watch", "create", "patch"]},
            {"apiGroups": ["iot.nationtech.io"], "resources": ["devices/status"], "verbs": ["get", "patch"]},
            {"apiGroups": ["iot.nationtech.io"], "resources": ["devices/finalizers"], "verbs": ["update"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["apps"], "resources": ["controllerrevisions"], "verbs": ["get", "list", "create", "delete"]},
            // Referenced Secrets, by name only: no list, no watch.
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        ])
    );
    let binding = find(&d, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "iot-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "iot-system");
}

/// The metrics Service is what a prometheus-operator ServiceMonitor needs
/// (labels to select, a named port serving the container's metrics port),
/// the pod annotations and `METRICS_ADDR` name the same port, and the
/// NetworkPolicy lets scrapes in.
#[test]
fn the_metrics_port_is_served_and_reachable() {
    let d = docs("deploy/operator.yaml");
    let dep = find(&d, "Deployment");
    let pod = &dep["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let port = &c["ports"][0];
    assert_eq!(port["name"], "metrics");
    let number = port["containerPort"].as_u64().unwrap();
    let addr = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "METRICS_ADDR")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(addr.ends_with(&format!(":{number}")), "{addr}");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        number.to_string()
    );

    let service = d
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "iot-operator-metrics")
        .expect("the metrics Service");
    assert_eq!(
        service["metadata"]["namespace"],
        dep["metadata"]["namespace"]
    );
    // A ServiceMonitor selects Services by label.
    let labels = service["metadata"]["labels"].as_object().unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "iot-operator");
    assert_eq!(labels["app.kubernetes.io/component"], "metrics");
    // The Service's selector picks the operator's pods.
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "{k}");
    }
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0]["name"], "metrics",
        "a ServiceMonitor endpoint names it"
    );
    assert_eq!(ports[0]["targetPort"], "metrics");

    let policy = find(&d, "NetworkPolicy");
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod["metadata"]["labels"][k], v, "{k}");
    }
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert!(
        ingress.iter().any(|rule| {
            rule["ports"].as_array().unwrap().iter().any(|p| {
                (p["port"] == number || p["port"] == "metrics")
                    && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
            })
        }),
        "no ingress to the metrics port: {ingress:?}"
    );
}

#[test]
fn operator_deployment_matches_the_binary() {
    let d = docs("deploy/operator.yaml");
    let dep = find(&d, "Deployment");
    assert_eq!(
        dep["spec"]["replicas"], 1,
        "no leader election: one replica"
    );
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        format!("localhost/iot-operator:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], c["ports"][0]["name"],
            "{probe}"
        );
        // Longer than the kubelet's 1 s default, and than the operator's
        // wait for the API server: a slow API server answers (and its
        // answer is cached) before the probe gives up.
        assert!(
            c[probe]["timeoutSeconds"].as_f64().unwrap()
                > operator::metrics::ready::ApiServerReachable::TIMEOUT.as_secs_f64(),
            "{probe}: timeoutSeconds {}",
            c[probe]["timeoutSeconds"]
        );
    }
    assert!(c["resources"]["limits"]["memory"].is_string());
    // Credentials reach the operator only as files from the Secret; no
    // environment variable takes a value from a Secret.
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["valueFrom"].get("secretKeyRef").is_none()),
        "{}",
        c["env"]
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/iot-operator/nats");
    let volume = &dep["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "iot-operator-nats");
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
    let help = Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for env in c["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        if name == "POD_NAME" || name == "RUST_LOG" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {name}")),
            "{name} is not read by `iot-operator run`:\n{help}"
        );
    }
    for commented in ["NATS_NKEY", "NATS_CREDS", "NATS_TLS_CA"] {
        assert!(help.contains(&format!("[env: {commented}")), "{commented}");
    }
}

#[test]
fn example_passes_the_crd_rules() {
    let d = docs("deploy/examples/hello.yaml");
    assert_eq!(d.len(), 1);
    let ex = &d[0];
    assert_eq!(ex["metadata"]["name"], "hello-web");
    assert_eq!(ex["metadata"]["namespace"], "default");
    assert_eq!(ex["spec"]["targetDevices"], json!(["demo-device"]));
    let c = &ex["spec"]["score"]["data"]["containers"][0];
    assert_eq!(c["image"], "localhost/iot-hello:1");
    assert_eq!(
        c["command"],
        json!(["httpd", "-f", "-p", "8080", "-h", "/www"])
    );
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 8080, "hostPort": 18080, "hostIP": "127.0.0.1"}])
    );
    assert_eq!(c["pullPolicy"], "IfNotPresent");
    let eval = |rule: &str, v: Value| {
        let p = cel_interpreter::Program::compile(rule).unwrap();
        let mut ctx = cel_interpreter::Context::default();
        ctx.add_variable_from_value("self", cel_interpreter::to_value(v).unwrap());
        p.execute(&ctx).unwrap() == cel_interpreter::Value::Bool(true)
    };
    assert!(eval(operator::crd::NAME_RULE, ex.clone()));
    assert!(eval(
        operator::crd::SCORE_TYPE_RULE,
        ex["spec"]["score"]["type"].clone()
    ));
    for t in ex["spec"]["targetDevices"].as_array().unwrap() {
        assert!(eval(operator::crd::DEVICE_RULE, t.clone()));
    }
}

/// Every example Deployment is one the operator writes: it plans, and
/// only the ones with a rollout policy need DesiredState format 2, and the
/// one with an update gate format 4 (and the one with Secrets format 5,
/// per device, once they are resolved).
#[test]
fn every_example_plans() {
    let mut planned = Vec::new();
    for entry in std::fs::read_dir(repo("deploy/examples")).unwrap() {
        let path = entry.unwrap().path();
        for d in operator::manifest::read(&path).unwrap() {
            let plan = operator::plan(&d).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(plan.unknown_type.is_none(), "{}", path.display());
            planned.push((
                d.name_str().to_string(),
                d.spec.score.type_name.clone(),
                plan.value[0],
            ));
        }
    }
    planned.sort();
    assert_eq!(
        planned,
        [
            ("canary-web".into(), "PodmanV1".into(), 2),
            ("health-web".into(), "PodmanV1".into(), 2),
            ("hello-web".into(), "PodmanV0".into(), 1),
            ("kiosk".into(), "PodmanV1".into(), 4),
            // Its Secrets are sealed per device (format 5) once resolved;
            // the plan alone carries none.
            ("private-web".into(), "PodmanV1".into(), 1),
            ("sensor-reader".into(), "PodmanV0".into(), 1),
        ]
    );
}

#[tokio::test]
async fn nats_config_example_serves_the_operator() {
    // Ports come from the test (flags override the file); the store is the
    // test's own, and nats-server refuses `-sd` beside a `store_dir`, so
    // that one line is dropped from a copy.
    let text = std::fs::read_to_string(repo("deploy/nats/nats-server.conf")).unwrap();
    assert!(text.contains("store_dir: /var/lib/nats"));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats-server.conf");
    let copy: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("store_dir"))
        .collect();
    std::fs::write(&conf, copy.join("\n")).unwrap();
    let monitor = testkit::free_port().to_string();
    let Some(server) = testkit::NatsServer::start_with(testkit::NatsOptions {
        config_file: Some(conf),
        extra_args: vec!["-m".into(), monitor],
        scheme: None,
    }) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .args(["init", "--nats-url", &server.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .args(["apply", "-f"])
        .arg(repo("deploy/examples/hello.yaml"))
        .args(["--nats-url", &server.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 written"));
}
