//! `PodmanV1` on real Podman: each new field lands in the container, and
//! `PodmanV0` containers stay as an older agent made them.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, sleeper};
use protocol::{ContainerV1, CpuQuantity, MemoryQuantity, Phase, Resources, Text};

fn running(s: &protocol::DeploymentStatus<'_>) -> bool {
    matches!(s.phase, Phase::Running | Phase::Healthy)
}

#[tokio::test]
async fn every_new_field_lands_in_podman() {
    let Some(env) = Env::start("v1-fields").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let mut c = ContainerV1::from_v0(sleeper("app", "1"));
    c.resources = Resources {
        memory_limit: Some(MemoryQuantity(64 << 20)),
        cpu_limit: Some(CpuQuantity(500)),
        cpu_weight: Some(100),
        pids_limit: Some(50),
    };
    c.user = Some(Text::borrowed("1000:1000"));
    c.working_dir = Some(Text::borrowed("/www"));
    c.read_only_root_filesystem = true;
    c.init = true;
    c.stop_grace_period_seconds = Some(3);
    env.put_v1("dep", 1, vec![c]).await;
    let s = env.wait_status("dep", "running", running).await;
    assert_eq!(s.revision, 1);
    let name = env.container_name("dep", "app");
    let i = env.inspect(&name);
    let host = &i["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20, "{host}");
    // No swap beyond the limit.
    assert_eq!(host["MemorySwap"], 64 << 20, "{host}");
    assert_eq!(
        (host["CpuQuota"].as_i64(), host["CpuPeriod"].as_i64()),
        (Some(50_000), Some(100_000)),
        "{host}"
    );
    // cpu.weight 100 as the shares crun and runc turn back into it.
    assert_eq!(
        host["CpuShares"].as_u64(),
        Some(agent_linux::podman::cpu_shares(100))
    );
    assert_eq!(host["PidsLimit"], 50, "{host}");
    assert_eq!(host["ReadonlyRootfs"], true, "{host}");
    assert_eq!(host["Init"], true, "{host}");
    // The agent restarts PodmanV1 containers, not Podman.
    assert_eq!(host["RestartPolicy"]["Name"].as_str().unwrap_or(""), "no");
    let config = &i["Config"];
    assert_eq!(config["User"], "1000:1000", "{config}");
    assert_eq!(config["WorkingDir"], "/www", "{config}");
    assert_eq!(config["StopTimeout"], 3, "{config}");
    assert_eq!(
        config["Labels"]["io.nationtech.iot.stop-timeout"], "3",
        "{config}"
    );

    // And they hold inside: the user, the directory, the read-only root
    // with a writable /tmp, init as PID 1, the limits in the cgroup.
    let exec = |args: &[&str]| {
        let mut cmd = env.podman.command();
        cmd.arg("exec").args(args);
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(exec(&[&name, "id", "-u"]), (true, "1000".into()));
    assert_eq!(exec(&[&name, "sh", "-c", "pwd"]), (true, "/www".into()));
    assert!(!exec(&["--user", "0", &name, "touch", "/x"]).0);
    assert!(exec(&["--user", "0", &name, "touch", "/tmp/y"]).0);
    let (_, comm) = exec(&[&name, "cat", "/proc/1/comm"]);
    assert!(
        comm.contains("init") || comm.contains("catatonit"),
        "{comm}"
    );
    let pids = exec(&[
        &name,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
    ]);
    assert_eq!(pids, (true, "50".into()));
}

/// An agent that runs `PodmanV1` computes a `PodmanV0` container's spec
/// hash as older agents did (of the `Container`, not of its `PodmanV1`
/// form), so an agent upgrade does not replace running containers; and
/// Podman still restarts them.
#[tokio::test]
async fn podman_v0_containers_keep_their_hash_and_podmans_restarts() {
    let Some(env) = Env::start("v1-keeps-v0").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    let c = sleeper("app", "1");
    // What every agent before PodmanV1 labelled the container with.
    let old_hash = format!("{:016x}", protocol::wire::hash_of(&c));
    let as_v1 = format!(
        "{:016x}",
        protocol::wire::hash_of(&ContainerV1::from_v0(c.clone()))
    );
    assert_ne!(old_hash, as_v1, "the test would not tell them apart");
    env.put("dep", 1, vec![c]).await;
    let s = env.wait_status("dep", "running", running).await;
    // A PodmanV0 deployment with nothing new to say stays version 1; a
    // healthy one is version 2.
    assert_eq!(s.phase, Phase::Healthy);
    let name = env.container_name("dep", "app");
    let before = env.inspect(&name);
    assert_eq!(
        before["Config"]["Labels"]["io.nationtech.iot.spec-hash"],
        old_hash.as_str()
    );
    assert_eq!(before["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert!(
        before["Config"]["Labels"]
            .get("io.nationtech.iot.stop-timeout")
            .is_none()
    );
    // A new agent leaves it as it is.
    agent.terminate();
    let _agent = env.spawn_agent();
    // The new agent's first pass publishes afresh.
    let first = s.timestamp_ms;
    let s = env
        .wait_status("dep", "reported by the new agent", |s| {
            running(s) && s.timestamp_ms > first
        })
        .await;
    assert_eq!(s.revision, 1);
    let after = env.inspect(&name);
    assert_eq!(after["Id"], before["Id"], "the container was replaced");
    assert_eq!(after["State"]["StartedAt"], before["State"]["StartedAt"]);
}

/// HTTP and TCP checks run by the agent reach the container through a
/// published port and over the Podman bridge; both pass: Healthy.
#[tokio::test]
async fn http_and_tcp_checks_make_it_healthy() {
    let Some(env) = Env::start("v1-checks").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let port = testkit::free_port();
    let mut published = ContainerV1::from_v0(common::web("pub", port));
    let mut check = protocol::HealthCheck::http_get(80);
    check.interval_seconds = 1;
    published.health_check = Some(check);
    // Declared, not published: checked at its bridge address.
    let mut bridge = ContainerV1::from_v0(common::web("bridge", port));
    bridge.ports = protocol::BoundedVec::try_from_iter([protocol::Port {
        container_port: 80,
        host_port: None,
        protocol: protocol::PortProtocol::Tcp,
        host_ip: None,
    }])
    .unwrap();
    let mut check = protocol::HealthCheck::tcp_socket(80);
    check.interval_seconds = 1;
    bridge.health_check = Some(check);
    env.put_v1("dep", 1, vec![published, bridge]).await;
    let s = env
        .wait_status("dep", "healthy", |s| s.phase == Phase::Healthy)
        .await;
    let health: Vec<_> = s.containers.iter().map(|c| c.health).collect();
    assert_eq!(health, [Some(protocol::Health::Healthy); 2], "{s:?}");
}

/// An HTTP check of a container on the host's network reaches it at
/// 127.0.0.1 and the check's port (no `ports` needed); the device's
/// policy must allow host namespaces for it to run at all.
#[tokio::test]
async fn an_http_check_reaches_a_host_network_container() {
    let Some(env) = Env::start("v1-hostnet").await else {
        return;
    };
    env.write_config_with_podman("\n[security]\nallow_host_namespaces = true\n");
    let _agent = env.spawn_agent_with_config();
    let port = testkit::free_port();
    let mut c = ContainerV1::from_v0(common::web("host", port));
    c.ports = protocol::BoundedVec::new();
    c.host_network = true;
    c.args = Some(
        protocol::BoundedVec::try_from_iter([
            Text::borrowed("-f"),
            Text::borrowed("-p"),
            Text::owned(format!("127.0.0.1:{port}")),
            Text::borrowed("-h"),
            Text::borrowed("/www"),
        ])
        .unwrap(),
    );
    let mut check = protocol::HealthCheck::http_get(port);
    check.interval_seconds = 1;
    c.health_check = Some(check);
    env.put_v1("dep", 1, vec![c]).await;
    let s = env
        .wait_status("dep", "healthy", |s| s.phase == Phase::Healthy)
        .await;
    assert_eq!(s.containers[0].health, Some(protocol::Health::Healthy));
    let i = env.inspect(&env.container_name("dep", "host"));
    assert_eq!(
        i["HostConfig"]["NetworkMode"], "host",
        "{}",
        i["HostConfig"]
    );
    // The check is what says so: the server answers on the host.
    let answer = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(answer.is_ok(), "nothing listens on 127.0.0.1:{port}");
}
