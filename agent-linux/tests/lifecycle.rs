//! Create, update, no-op, delete, agent restart: real nats-server, real
//! Podman, the real agent binary.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::{ContainerState, Phase};

#[tokio::test]
async fn create_update_noop_delete() {
    let Some(env) = Env::start("life").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let port = testkit::free_port();

    // Create: running and reachable on its published port.
    env.put("web", 100, vec![web("httpd", port)]).await;
    let s = env
        .wait_status("web", "Running at 100", |s| {
            s.phase == Phase::Healthy && s.revision == 100
        })
        .await;
    assert_eq!(s.containers[0].state, ContainerState::Running);
    let name = env.container_name("web", "httpd");
    let before = env.wait_running(std::slice::from_ref(&name)).await;
    assert_eq!(before[0].3, "100", "revision label");
    assert!(
        testkit::wait_until(WAIT, || http_get(port)
            .is_some_and(|b| b.contains("hello from busybox"))),
        "httpd not reachable on 127.0.0.1:{port}"
    );

    // Heartbeat arrives.
    let hb = env.heartbeat.get(&env.device).await.unwrap();
    let hb = match hb {
        Some(v) => v,
        None => {
            assert!(
                testkit::wait_until_async(WAIT, || async {
                    env.heartbeat
                        .get(&env.device)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                })
                .await
            );
            env.heartbeat.get(&env.device).await.unwrap().unwrap()
        }
    };
    let hb = protocol::wire::decode::<protocol::Heartbeat<'_>>(&hb).unwrap();
    assert_eq!(hb.agent_version.as_str(), env!("CARGO_PKG_VERSION"));
    assert!(!hb.podman_version.is_empty());

    // Unchanged spec under a new revision, plus a second container: the
    // first is untouched (same id), the second is created.
    env.put("web", 101, vec![web("httpd", port), sleeper("side", "a")])
        .await;
    env.wait_status("web", "Running at 101", |s| {
        s.phase == Phase::Healthy && s.revision == 101 && s.containers.len() == 2
    })
    .await;
    let side = env.container_name("web", "side");
    let now = env.wait_running(&[name.clone(), side.clone()]).await;
    let httpd_now = now.iter().find(|c| c.0 == name).unwrap();
    assert_eq!(httpd_now.1, before[0].1, "unchanged container was replaced");

    // The same value again: nothing changes.
    env.put("web", 101, vec![web("httpd", port), sleeper("side", "a")])
        .await;
    // Update: only the changed container is replaced.
    env.put("web", 102, vec![web("httpd", port), sleeper("side", "b")])
        .await;
    env.wait_status("web", "Running at 102", |s| {
        s.phase == Phase::Healthy && s.revision == 102
    })
    .await;
    let after = env.wait_running(&[name.clone(), side.clone()]).await;
    let side_before = now.iter().find(|c| c.0 == side).unwrap();
    let side_after = after.iter().find(|c| c.0 == side).unwrap();
    assert_ne!(side_after.1, side_before.1, "changed container kept");
    assert_eq!(side_after.3, "102");
    assert_eq!(after.iter().find(|c| c.0 == name).unwrap().1, before[0].1);

    // Delete: containers removed, status Removed.
    env.delete("web").await;
    env.wait_status("web", "Removed", |s| s.phase == Phase::Removed)
        .await;
    assert!(testkit::wait_until(WAIT, || env.containers().is_empty()));
}

#[tokio::test]
async fn agent_killed_and_restarted_creates_no_duplicates() {
    let Some(env) = Env::start("restart").await else {
        return;
    };
    // A container of another device on the same Podman must survive our sweep.
    let other = Env::start("other").await.unwrap();
    other.podman.run(&[
        "create",
        "--name",
        &other.container_name("x", "y"),
        "--label",
        "io.nationtech.iot.managed-by=iot-agent",
        "--label",
        &format!("io.nationtech.iot.device={}", other.device),
        "--label",
        "io.nationtech.iot.deployment=x",
        IMAGE,
        "/bin/sleep",
        "1",
    ]);
    // An orphan of our own device (deployment no longer desired).
    env.podman.run(&[
        "create",
        "--name",
        &env.container_name("gone", "c"),
        "--label",
        "io.nationtech.iot.managed-by=iot-agent",
        "--label",
        &format!("io.nationtech.iot.device={}", env.device),
        "--label",
        "io.nationtech.iot.deployment=gone",
        IMAGE,
        "/bin/sleep",
        "1",
    ]);

    let mut agent = env.spawn_agent();
    env.put("a", 1, vec![sleeper("one", "x"), sleeper("two", "x")])
        .await;
    env.put("b", 7, vec![sleeper("three", "x")]).await;
    let names = vec![
        env.container_name("a", "one"),
        env.container_name("a", "two"),
        env.container_name("b", "three"),
    ];
    let first = env.wait_running(&names).await;

    for round in 0..3 {
        agent.kill();
        agent = env.spawn_agent();
        env.wait_status("b", "Healthy", |s| s.phase == Phase::Healthy)
            .await;
        // Give a duplicate every chance to appear: one more update round trip.
        env.put("c", round, vec![sleeper("four", &round.to_string())])
            .await;
        let mut all = names.clone();
        all.push(env.container_name("c", "four"));
        let now = env.wait_running(&all).await;
        for c in &first {
            assert_eq!(
                now.iter().find(|n| n.0 == c.0).unwrap().1,
                c.1,
                "{} was recreated",
                c.0
            );
        }
    }
    assert_eq!(other.containers().len(), 1, "foreign container touched");
}
