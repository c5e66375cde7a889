//! The real `kubectl` against testkit's real kube-apiserver: it reaches the
//! server, and `kubectl wait` sees conditions as the server stores them.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use testkit::kube::KubeApiServer;
use testkit::kubectl::Kubectl;

/// A namespaced CRD with a status subresource (so a spec change bumps
/// `metadata.generation` and status is written apart) and a free-form schema.
const CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.testkit.example.com}
spec:
  group: testkit.example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// Starts a server and kubectl for it, or `None` when either is missing
/// outside CI.
async fn start() -> Option<(KubeApiServer, Kubectl)> {
    let server = KubeApiServer::start().await?;
    let kubectl = Kubectl::for_apiserver(&server)?;
    Some((server, kubectl))
}

/// Runs kubectl and returns its stdout; panics with stderr when it fails.
fn ok(kubectl: &Kubectl, args: &[&str]) -> String {
    let out = kubectl.run(args).expect("run kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Creates the Widget CRD with `kubectl apply` and waits for it with
/// `kubectl wait --for=condition=Established`.
fn install_crd(server: &KubeApiServer, kubectl: &Kubectl) {
    let file = server.dir().join("widget-crd.yaml");
    std::fs::write(&file, CRD).unwrap();
    ok(kubectl, &["apply", "-f", file.to_str().unwrap()]);
    ok(
        kubectl,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.testkit.example.com",
            "--timeout=60s",
        ],
    );
}

#[tokio::test]
async fn kubectl_reaches_the_server_and_waits_for_a_condition() {
    let Some((server, kubectl)) = start().await else {
        return;
    };
    let namespaces = ok(&kubectl, &["get", "namespaces", "-o", "name"]);
    assert!(
        namespaces.lines().any(|l| l == "namespace/default"),
        "{namespaces}"
    );
    install_crd(&server, &kubectl);
    let crds = ok(&kubectl, &["get", "crd", "-o", "name"]);
    assert!(
        crds.contains("customresourcedefinition.apiextensions.k8s.io/widgets.testkit.example.com"),
        "{crds}"
    );
}

/// `kubectl wait --for=condition=Ready` on a Widget in `default`, 3 s at most.
fn wait_ready(kubectl: &Kubectl) -> Output {
    kubectl
        .run(&[
            "-n",
            "default",
            "wait",
            "--for=condition=Ready",
            "widget/w",
            "--timeout=3s",
        ])
        .expect("run kubectl wait")
}

/// Writes the Widget's status (a Ready=True condition, and `status` merged
/// as given) through the status subresource, as a controller would.
fn set_status(kubectl: &Kubectl, condition_generation: Option<i64>, status: serde_json::Value) {
    let mut ready = serde_json::json!({"type": "Ready", "status": "True", "reason": "Done",
        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    if let Some(g) = condition_generation {
        ready["observedGeneration"] = g.into();
    }
    let mut status = status;
    status["conditions"] = serde_json::json!([ready]);
    let patch = serde_json::json!({ "status": status }).to_string();
    ok(
        kubectl,
        &[
            "-n",
            "default",
            "patch",
            "widget",
            "w",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
    );
}

/// What issue 17's `kubectl wait --for=condition=Ready iotdeploy/...` relies
/// on: kubectl ignores a condition whose `observedGeneration` (else
/// `status.observedGeneration`) is below `metadata.generation`, so a Ready
/// left over from the previous generation does not end the wait.
#[tokio::test]
async fn kubectl_wait_ignores_a_condition_of_an_older_generation() {
    let Some((server, kubectl)) = start().await else {
        return;
    };
    install_crd(&server, &kubectl);
    let file = server.dir().join("widget.yaml");
    std::fs::write(
        &file,
        "{apiVersion: testkit.example.com/v1, kind: Widget, metadata: {name: w, namespace: default}, spec: {size: 1}}",
    )
    .unwrap();
    ok(&kubectl, &["apply", "-f", file.to_str().unwrap()]);
    set_status(&kubectl, Some(1), serde_json::json!({}));
    let out = wait_ready(&kubectl);
    assert!(
        out.status.success(),
        "generation 1, Ready of 1: {}",
        text(&out)
    );

    let spec = r#"{"spec":{"size":2}}"#;
    ok(
        &kubectl,
        &[
            "-n",
            "default",
            "patch",
            "widget",
            "w",
            "--type=merge",
            "-p",
            spec,
        ],
    );
    let generation = ok(
        &kubectl,
        &[
            "-n",
            "default",
            "get",
            "widget",
            "w",
            "-o",
            "jsonpath={.metadata.generation}",
        ],
    );
    assert_eq!(generation, "2");
    let out = wait_ready(&kubectl);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "generation 2, Ready of 1 must not satisfy the wait: {}",
        text(&out)
    );
    // Without its own observedGeneration the condition is judged by the
    // status's.
    set_status(&kubectl, None, serde_json::json!({"observedGeneration": 1}));
    let out = wait_ready(&kubectl);
    assert!(
        !out.status.success(),
        "status.observedGeneration 1: {}",
        text(&out)
    );

    set_status(
        &kubectl,
        Some(2),
        serde_json::json!({"observedGeneration": null}),
    );
    let out = wait_ready(&kubectl);
    assert!(
        out.status.success(),
        "generation 2, Ready of 2: {}",
        text(&out)
    );
}
