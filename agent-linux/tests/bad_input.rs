//! Bad input is reported per deployment and stops nothing else.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::Phase;

#[tokio::test]
async fn bad_input_is_reported_and_isolated() {
    let Some(env) = Env::start("bad").await else {
        return;
    };
    let _agent = env.spawn_agent();

    // A port taken by someone else on the host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();

    env.put("good", 1, vec![sleeper("ok", "1")]).await;
    env.put_raw("garbage", vec![1, 0xff, 0xfe, 0x00]).await;
    env.put_raw("future", encode_unknown_variant("future", 9))
        .await;
    let mut missing = sleeper("img", "1");
    missing.image = protocol::Text::borrowed("localhost/iot-agent-test:does-not-exist");
    env.put("nopull", 3, vec![missing]).await;
    env.put("portclash", 4, vec![web("httpd", taken_port)])
        .await;
    let mut bind = sleeper("bind", "1");
    bind.volumes = protocol::BoundedVec::try_from_iter([protocol::Volume {
        name: None,
        host_path: Some(protocol::Text::borrowed("/etc")),
        mount_path: protocol::Text::borrowed("/host-etc"),
        read_only: true,
    }])
    .unwrap();
    env.put("hostpath", 5, vec![bind]).await;

    let s = env
        .wait_status("garbage", "Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(s.message.contains("decode"), "{}", s.message.as_str());
    let s = env
        .wait_status("future", "Unsupported", |s| s.phase == Phase::Unsupported)
        .await;
    assert!(s.message.contains("PodmanV9"), "{}", s.message.as_str());
    assert_eq!(s.revision, 9);
    let s = env
        .wait_status("nopull", "Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        s.message.contains("does-not-exist"),
        "{}",
        s.message.as_str()
    );
    assert_eq!(s.revision, 3);
    let s = env
        .wait_status("portclash", "Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        s.message.contains("address already in use") || s.message.contains(&taken_port.to_string()),
        "{}",
        s.message.as_str()
    );
    let s = env
        .wait_status("hostpath", "Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        s.message.contains("allowed_host_paths"),
        "{}",
        s.message.as_str()
    );

    // The good deployment runs regardless.
    env.wait_status("good", "Healthy", |s| s.phase == Phase::Healthy)
        .await;

    // A newer revision interrupts the pull retries.
    env.put("nopull", 6, vec![sleeper("img", "2")]).await;
    env.wait_status("nopull", "Running at 6", |s| {
        s.phase == Phase::Healthy && s.revision == 6
    })
    .await;
    // Freeing the port lets the retry succeed.
    drop(taken);
    env.wait_status("portclash", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    env.wait_running(&[
        env.container_name("good", "ok"),
        env.container_name("nopull", "img"),
        env.container_name("portclash", "httpd"),
    ])
    .await;
}

/// A `PodmanV1` health check on a port the container does not declare, which
/// the operator refuses, is refused by the agent too when it arrives anyway
/// (here: a valid value with the declared port changed in its bytes), with
/// the field and the fix in the status; the agent creates nothing for it.
#[tokio::test]
async fn a_bad_health_check_that_arrives_anyway_is_refused_naming_the_field() {
    let Some(env) = Env::start("bad-check").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let mut c = protocol::ContainerV1::new(
        protocol::Text::borrowed("web"),
        protocol::Text::borrowed("localhost/iot-agent-test:does-not-matter"),
    );
    c.ports = protocol::BoundedVec::try_from_iter([protocol::Port {
        container_port: 8080,
        host_port: None,
        protocol: protocol::PortProtocol::Tcp,
        host_ip: None,
    }])
    .unwrap();
    c.health_check = Some(protocol::HealthCheck::http_get(8080));
    let mut value = encode_desired_v1("checked", 7, vec![c]);
    // 8080 is the varint 0x90 0x3f; its first occurrence is the declared
    // port, which becomes 8081: the check's port is then undeclared.
    let at = value
        .windows(2)
        .position(|w| w == [0x90, 0x3f])
        .expect("the declared port in the encoding");
    value[at] = 0x91;
    env.put_raw("checked", value).await;
    let s = env
        .wait_status("checked", "Failed", |s| s.phase == Phase::Failed)
        .await;
    assert_eq!(s.revision, 7);
    for part in [
        "containers[0].healthCheck.httpGet.port",
        "8080",
        "containerPort",
    ] {
        assert!(s.message.contains(part), "{part}: {}", s.message.as_str());
    }
    assert!(
        env.containers()
            .iter()
            .all(|(name, ..)| !name.contains("checked")),
        "a container was created for a refused score"
    );
}
