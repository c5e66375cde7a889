//! Offline first and resumable: NATS restarts, starting without NATS,
//! deletes made while the agent was down.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::Phase;

#[tokio::test]
async fn nats_restart_with_store_then_update_is_applied() {
    let Some(mut env) = Env::start("natsrestart").await else {
        return;
    };
    let _agent = env.spawn_agent();
    env.put("svc", 1, vec![sleeper("main", "v1")]).await;
    env.wait_status("svc", "Running at 1", |s| {
        s.phase == Phase::Healthy && s.revision == 1
    })
    .await;
    let name = env.container_name("svc", "main");
    let before = env.wait_running(std::slice::from_ref(&name)).await;

    env.nats.restart();
    // Running containers are left alone while NATS is away, and an update
    // made after the restart reaches the agent.
    env.put("svc", 2, vec![sleeper("main", "v2")]).await;
    env.wait_status("svc", "Running at 2", |s| {
        s.phase == Phase::Healthy && s.revision == 2
    })
    .await;
    let after = env.wait_running(std::slice::from_ref(&name)).await;
    assert_ne!(after[0].1, before[0].1);
    assert_eq!(after[0].3, "2");

    // A second restart, with a delete made right after it.
    env.nats.restart();
    env.delete("svc").await;
    env.wait_status("svc", "Removed", |s| s.phase == Phase::Removed)
        .await;
    assert!(testkit::wait_until(WAIT, || env.containers().is_empty()));
}

#[tokio::test]
async fn agent_started_without_nats_restores_from_cache() {
    let Some(mut env) = Env::start("offline").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    env.put("app", 5, vec![sleeper("a", "1"), sleeper("b", "1")])
        .await;
    env.wait_status("app", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    let names = [
        env.container_name("app", "a"),
        env.container_name("app", "b"),
    ];
    env.wait_running(&names).await;

    // Power cut: agent, NATS and the containers are gone.
    agent.kill();
    env.nats.stop();
    env.podman
        .remove_labelled("io.nationtech.iot.device", &env.device);
    assert!(env.containers().is_empty());

    // Boot with no NATS: the cache brings the workloads back.
    let mut agent = env.spawn_agent();
    let restored = env.wait_running(&names).await;

    // A reboot that keeps the containers but stops them (no
    // podman-restart.service): the same containers are started again.
    agent.kill();
    for (name, ..) in &restored {
        env.podman.run(&["stop", "-t", "0", name]);
    }
    let _agent = env.spawn_agent();
    let again = env.wait_running(&names).await;
    assert_eq!(
        again.iter().map(|c| &c.1).collect::<Vec<_>>(),
        restored.iter().map(|c| &c.1).collect::<Vec<_>>(),
        "stopped containers were recreated instead of started"
    );

    // And once NATS is back the status catches up.
    env.nats.restart();
    env.wait_status("app", "Running at 5", |s| {
        s.phase == Phase::Healthy && s.revision == 5
    })
    .await;
}

#[tokio::test]
async fn delete_while_agent_down_is_applied_on_start() {
    let Some(env) = Env::start("offdelete").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    env.put("keep", 1, vec![sleeper("k", "1")]).await;
    env.put("drop", 1, vec![sleeper("d", "1")]).await;
    env.put("purged", 1, vec![sleeper("p", "1")]).await;
    let all = [
        env.container_name("keep", "k"),
        env.container_name("drop", "d"),
        env.container_name("purged", "p"),
    ];
    let before = env.wait_running(&all).await;

    agent.kill();
    env.delete("drop").await;
    env.desired.purge(env.key("purged")).await.unwrap();

    let _agent = env.spawn_agent();
    env.wait_status("drop", "Removed", |s| s.phase == Phase::Removed)
        .await;
    env.wait_status("purged", "Removed", |s| s.phase == Phase::Removed)
        .await;
    let keep = env.wait_running(&all[..1]).await;
    assert_eq!(keep[0].1, before.iter().find(|c| c.0 == all[0]).unwrap().1);
    let cached: Vec<_> = std::fs::read_dir(env.state_dir().join("desired"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cached, vec!["keep".to_string()]);
}

/// Only the agent's link is cut (the server keeps taking writes): what is
/// written while the board is cut off reaches it once the link is back,
/// though its live subscription never saw those writes.
#[tokio::test]
async fn writes_made_while_the_agent_is_cut_off_are_applied_on_reconnect() {
    let Some(env) = Env::start("netcut").await else {
        return;
    };
    let proxy = testkit::proxy::TcpProxy::to_port(env.nats.port());
    let _agent = env.spawn_agent_via(&proxy.url());
    env.put("a", 1, vec![sleeper("main", "v1")]).await;
    env.put("b", 1, vec![sleeper("main", "v1")]).await;
    for d in ["a", "b"] {
        env.wait_status(d, "Running at 1", |s| {
            s.phase == Phase::Healthy && s.revision == 1
        })
        .await;
    }
    let (a, b) = (
        env.container_name("a", "main"),
        env.container_name("b", "main"),
    );
    let before = env.wait_running(&[a.clone(), b.clone()]).await;
    assert!(
        proxy.accepted() >= 1,
        "the agent did not connect through the proxy"
    );

    // Cut off, the agent misses an update and a delete.
    let refused = proxy.refused();
    proxy.cut();
    env.put("a", 2, vec![sleeper("main", "v2")]).await;
    env.delete("b").await;
    // It has noticed once it tries to reconnect.
    assert!(
        testkit::wait_until_async(WAIT, || async { proxy.refused() > refused }).await,
        "the agent never tried to reconnect"
    );
    assert_eq!(
        env.containers(),
        before,
        "the agent changed its containers while it was cut off"
    );
    proxy.restore();

    env.wait_status("a", "Running at 2", |s| {
        s.phase == Phase::Healthy && s.revision == 2
    })
    .await;
    env.wait_status("b", "Removed", |s| s.phase == Phase::Removed)
        .await;
    let after = env.wait_running(std::slice::from_ref(&a)).await;
    let old_a = before.iter().find(|c| c.0 == a).unwrap();
    assert_ne!(after[0].1, old_a.1, "a's container was not replaced");
    assert_eq!(after[0].3, "2");

    // A second cut, during which a new deployment appears.
    let refused = proxy.refused();
    proxy.cut();
    env.put("c", 1, vec![sleeper("main", "v1")]).await;
    assert!(
        testkit::wait_until_async(WAIT, || async { proxy.refused() > refused }).await,
        "the agent never tried to reconnect"
    );
    proxy.restore();
    env.wait_status("c", "Running at 1", |s| {
        s.phase == Phase::Healthy && s.revision == 1
    })
    .await;
    let c = env.container_name("c", "main");
    let last = env.wait_running(&[a.clone(), c]).await;
    let kept_a = last.iter().find(|x| x.0 == a).unwrap();
    assert_eq!(
        kept_a.1, after[0].1,
        "a was recreated though it did not change"
    );
}
