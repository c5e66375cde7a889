//! Sample values shared by the protocol's tests and bench.
#![allow(dead_code)]

use protocol::*;

/// The design's example score (every common container field), as the CRD
/// carries it.
pub const DESIGN_EXAMPLE_JSON: &str = r#"{
  "type": "PodmanV0",
  "data": {
    "containers": [
      {
        "name": "web",
        "image": "docker.io/library/nginx:1.27",
        "command": ["nginx"],
        "args": ["-g", "daemon off;"],
        "env": [{"name": "GREETING", "value": "hello"}],
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "TCP", "hostIP": "0.0.0.0"}],
        "volumes": [
          {"name": "data", "mountPath": "/data"},
          {"hostPath": "/srv/web", "mountPath": "/srv", "readOnly": true}
        ],
        "restartPolicy": "Always",
        "pullPolicy": "IfNotPresent",
        "labels": {"tier": "frontend"}
      }
    ]
  }
}"#;

/// The seed PR's minimal shape: one container, name and image only.
pub const SEED_MINIMAL_JSON: &str = r#"{"type":"PodmanV0","data":{"containers":[{"name":"hello","image":"docker.io/library/busybox:1.36"}]}}"#;

/// A small score: one container, name and image.
pub fn small() -> PodmanV0Score<'static> {
    let mut containers = BoundedVec::new();
    containers.push(container(0, 0)).unwrap();
    PodmanV0Score { containers }
}

/// A typical score: [`DESIGN_EXAMPLE_JSON`].
pub fn typical() -> PodmanV0Score<'static> {
    match serde_json::from_str::<IotScore>(DESIGN_EXAMPLE_JSON).unwrap() {
        IotScore::PodmanV0(s) => s.into_owned(),
        other => panic!("not PodmanV0: {other:?}"),
    }
}

/// A large score: every list at its bound, strings of realistic length.
pub fn large() -> PodmanV0Score<'static> {
    let mut containers = BoundedVec::new();
    for c in 0..protocol::limits::MAX_CONTAINERS {
        containers.push(container(c, 1)).unwrap();
    }
    PodmanV0Score { containers }
}

fn container(i: usize, fill: usize) -> Container<'static> {
    use protocol::limits::*;
    let n = |cap: usize| if fill == 0 { 0 } else { cap };
    let mut c = Container::new(
        Text::owned(format!("c{i}")),
        Text::owned(format!("registry.example.net/team/app-{i}:1.2.{i}")),
    );
    if fill > 0 {
        c.command = Some(
            BoundedVec::try_from_iter((0..4).map(|a| Text::owned(format!("/bin/app{a}")))).unwrap(),
        );
        c.args = Some(
            BoundedVec::try_from_iter(
                (0..n(8)).map(|a| Text::owned(format!("--flag-{a}=value-{a}"))),
            )
            .unwrap(),
        );
    }
    for e in 0..n(MAX_ENV) {
        c.env
            .push(EnvVar {
                name: Text::owned(format!("VAR_{e}")),
                value: Text::owned(format!("value-number-{e}")),
            })
            .unwrap();
    }
    for p in 0..n(MAX_PORTS) {
        c.ports
            .push(Port {
                container_port: 8000 + p as u16,
                host_port: Some(18000 + (i * 100 + p) as u16),
                protocol: if p % 2 == 0 {
                    PortProtocol::Tcp
                } else {
                    PortProtocol::Udp
                },
                host_ip: Some(Text::borrowed("127.0.0.1")),
            })
            .unwrap();
    }
    for v in 0..n(MAX_VOLUMES) {
        c.volumes
            .push(Volume {
                name: (v % 2 == 0).then(|| Text::owned(format!("vol-{v}"))),
                host_path: (v % 2 == 1).then(|| Text::owned(format!("/srv/data/{v}"))),
                mount_path: Text::owned(format!("/mnt/{v}")),
                read_only: v % 3 == 0,
            })
            .unwrap();
    }
    for l in 0..n(MAX_LABELS) {
        c.labels
            .insert(
                Text::owned(format!("label-{l}")),
                Text::owned(format!("value-{l}")),
            )
            .unwrap();
    }
    c
}

/// A desired state carrying `score`.
pub fn desired(score: &PodmanV0Score<'_>) -> DesiredState<'static> {
    let payload = IotScore::PodmanV0(score.clone().into_owned())
        .to_payload()
        .unwrap();
    DesiredState::new(Text::borrowed("hello-web"), payload.content_hash(), payload)
}

/// A `PodmanV1` score setting every field `PodmanV0` lacks (the README's
/// example); the golden vector `PODMAN_V1_SCORE` is its encoding.
pub const PODMAN_V1_JSON: &str = r#"{
  "type": "PodmanV1",
  "data": {
    "containers": [
      {
        "name": "web",
        "image": "docker.io/library/nginx:1.27",
        "ports": [{"containerPort": 80, "hostPort": 8080}],
        "healthCheck": {
          "httpGet": {"path": "/healthz", "port": 80, "httpHeaders": [{"name": "X-Probe", "value": "iot"}]},
          "intervalSeconds": 5,
          "timeoutSeconds": 2,
          "failureThreshold": 4,
          "successThreshold": 2,
          "startPeriodSeconds": 10,
          "onFailure": "Restart"
        },
        "resources": {"memoryLimit": "128Mi", "cpuLimit": "500m", "cpuWeight": 200, "pidsLimit": 64},
        "stopGracePeriodSeconds": 20,
        "user": "1000:1000",
        "workingDir": "/srv",
        "readOnlyRootFilesystem": true,
        "init": true,
        "updateLock": true
      }
    ]
  }
}"#;

/// [`PODMAN_V1_JSON`]'s score.
pub fn podman_v1() -> PodmanV1Score<'static> {
    match serde_json::from_str::<IotScore>(PODMAN_V1_JSON).unwrap() {
        IotScore::PodmanV1(s) => s.into_owned(),
        other => panic!("not PodmanV1: {other:?}"),
    }
}

/// A large `PodmanV1` score: [`large`]'s containers, each with an exec
/// check of [`protocol::limits::MAX_ARGS`] arguments and every limit.
pub fn large_v1() -> PodmanV1Score<'static> {
    let mut s = PodmanV1Score::from_v0(large());
    let command = BoundedVec::try_from_iter(
        (0..protocol::limits::MAX_ARGS).map(|a| Text::owned(format!("--check-{a}"))),
    )
    .unwrap();
    let mut containers = BoundedVec::new();
    for c in s.containers.iter() {
        let mut c = c.clone();
        c.health_check = Some(HealthCheck::exec(command.clone()));
        c.resources = Resources {
            memory_limit: Some(MemoryQuantity(512 << 20)),
            cpu_limit: Some(CpuQuantity(1500)),
            cpu_weight: Some(100),
            pids_limit: Some(256),
        };
        c.user = Some(Text::borrowed("nobody:nogroup"));
        c.working_dir = Some(Text::borrowed("/var/lib/app"));
        containers.push(c).unwrap();
    }
    s.containers = containers;
    s
}

/// A desired state carrying a `PodmanV1` `score`.
pub fn desired_v1(score: &PodmanV1Score<'_>) -> DesiredState<'static> {
    let payload = IotScore::PodmanV1(score.clone().into_owned())
        .to_payload()
        .unwrap();
    DesiredState::new(Text::borrowed("hello-web"), payload.content_hash(), payload)
}
