//! Rollback on the device: a revision that crash-loops is undone by the
//! agent itself, with NATS cut, and after a SIGKILL in the middle of it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::{
    BoundedVec, ContainerV1, DesiredState, IotScore, Phase, PodmanV1Score, Reason, RolloutPolicy,
    Text,
};

const APP: &str = "app";

/// A `PodmanV1` desired state of [`APP`] with `rollout`.
fn desired(
    revision: u64,
    containers: Vec<ContainerV1<'static>>,
    rollout: RolloutPolicy,
) -> Vec<u8> {
    let score = IotScore::PodmanV1(PodmanV1Score {
        containers: BoundedVec::try_from_iter(containers).unwrap(),
    });
    protocol::wire::encode_to_vec(&DesiredState {
        deployment: Text::borrowed(APP),
        revision,
        score: score.to_payload().unwrap(),
        rollout,
    })
    .unwrap()
}

/// Rolls back on failure; `Healthy` once every container ran (and every
/// check passed) for `min_healthy` seconds.
fn guarded(min_healthy: u32) -> RolloutPolicy {
    RolloutPolicy {
        min_healthy_seconds: min_healthy,
        // Long: the crash loop is what triggers the rollback here.
        progress_deadline_seconds: 600,
        auto_rollback: true,
    }
}

/// A crashing revision's policy: not `Healthy` before its first crash.
const SLOW_HEALTHY: u32 = 120;

/// Two sleepers tagged `tag`: every revision replaces both.
fn good(tag: &str) -> Vec<ContainerV1<'static>> {
    vec![
        ContainerV1::from_v0(sleeper("main", tag)),
        ContainerV1::from_v0(sleeper("side", tag)),
    ]
}

/// `main` runs for `secs` seconds, then exits 1, again and again; `side`
/// is a sleeper tagged `tag`.
fn crashing(secs: u32, tag: &str) -> Vec<ContainerV1<'static>> {
    let mut main = ContainerV1::from_v0(sleeper("main", tag));
    main.command = Some(BoundedVec::try_from_iter([Text::borrowed("/bin/sh")]).unwrap());
    main.args = Some(
        BoundedVec::try_from_iter([
            Text::borrowed("-c"),
            Text::owned(format!("sleep {secs}; exit 1")),
        ])
        .unwrap(),
    );
    vec![main, ContainerV1::from_v0(sleeper("side", tag))]
}

fn names(env: &Env) -> Vec<String> {
    vec![
        env.container_name(APP, "main"),
        env.container_name(APP, "side"),
    ]
}

/// Waits until exactly [`APP`]'s containers run, every one created by
/// `revision`.
async fn wait_revision_running(env: &Env, revision: &str) {
    let want = names(env);
    let mut last = Vec::new();
    let prefix = format!("{}_{APP}_", env.device);
    let ok = testkit::wait_until_async(WAIT, || {
        last = env.containers();
        last.retain(|c| c.0.starts_with(&prefix));
        let ok = last.iter().map(|c| c.0.clone()).collect::<Vec<_>>() == want
            && last.iter().all(|c| c.2 == "running" && c.3 == revision);
        async move { ok }
    })
    .await;
    assert!(
        ok,
        "expected {want:?} running at revision {revision}; have {last:?}"
    );
}

/// Revision 1 is Healthy on the device.
async fn healthy_at_1(env: &Env) {
    env.put_raw(APP, desired(1, good("v1"), RolloutPolicy::default()))
        .await;
    env.wait_status(APP, "Healthy at 1", |s| {
        s.phase == Phase::Healthy && s.revision == 1
    })
    .await;
    wait_revision_running(env, "1").await;
}

#[tokio::test]
async fn a_crash_looping_revision_is_rolled_back_offline_and_a_newer_one_applies() {
    let Some(env) = Env::start("rollback").await else {
        return;
    };
    let proxy = testkit::proxy::TcpProxy::to_port(env.nats.port());
    let _agent = env.spawn_agent_via(&proxy.url());
    healthy_at_1(&env).await;
    let marker = env.state_dir().join("failed").join(APP);

    // Revision 2 starts, then crashes after a few seconds: time to cut the
    // device off first.
    env.put_raw(APP, desired(2, crashing(8, "v2"), guarded(SLOW_HEALTHY)))
        .await;
    wait_revision_running(&env, "2").await;
    let refused = proxy.refused();
    proxy.cut();
    assert!(
        !marker.exists(),
        "rolled back before the cut: too slow here"
    );

    // Cut off, the device goes back to revision 1 by itself.
    wait_revision_running(&env, "1").await;
    assert!(marker.exists(), "no failed-revision marker");
    assert!(
        testkit::wait_until_async(WAIT, || async { proxy.refused() > refused }).await,
        "the agent never tried to reconnect"
    );
    proxy.restore();
    let s = env
        .wait_status(APP, "RolledBack from 2 to 1", |s| {
            s.phase == Phase::RolledBack && s.revision == 2
        })
        .await;
    assert_eq!(s.running_revision, Some(1));
    assert_eq!(s.reason, Reason::CrashLoopBackOff, "{}", s.message.as_str());
    assert!(
        s.message
            .starts_with("revision 2 failed (CrashLoopBackOff): ")
            && s.message.contains("running revision 1 again"),
        "{}",
        s.message.as_str()
    );
    // Back in sync (the watch's snapshot, delivering revision 2 again, is
    // done once a deployment put after it runs), the failed revision is
    // not tried again: revision 1's containers are the same.
    let before = env.containers();
    env.put("probe", 1, vec![sleeper("p", "1")]).await;
    env.wait_status("probe", "Running", |s| {
        matches!(s.phase, Phase::Running | Phase::Healthy)
    })
    .await;
    let after: Vec<_> = env
        .containers()
        .into_iter()
        .filter(|c| c.0 != env.container_name("probe", "p"))
        .collect();
    assert_eq!(after, before, "revision 2 was tried again");

    // A newer revision applies.
    env.put_raw(APP, desired(3, good("v3"), guarded(0))).await;
    let s = env
        .wait_status(APP, "Healthy at 3", |s| {
            s.phase == Phase::Healthy && s.revision == 3
        })
        .await;
    assert_eq!(s.running_revision, None);
    wait_revision_running(&env, "3").await;
}

#[tokio::test]
async fn an_agent_killed_as_the_rollback_starts_comes_back_offline_on_one_revision() {
    let Some(mut env) = Env::start("rollbackkill").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    healthy_at_1(&env).await;
    let marker = env.state_dir().join("failed").join(APP);

    env.put_raw(APP, desired(2, crashing(1, "v2"), guarded(SLOW_HEALTHY)))
        .await;
    // SIGKILL the moment the marker is on disk: the reconciler has just
    // been given revision 1 back, and replaces revision 2's containers.
    assert!(
        testkit::wait_until(WAIT, || marker.exists()),
        "revision 2 was never rolled back"
    );
    agent.kill();
    env.nats.stop();
    let left = env.containers();
    eprintln!("left by the kill: {left:?}");

    // Restarted without NATS: revision 1, whole.
    let _agent = env.spawn_agent();
    wait_revision_running(&env, "1").await;
    // And once NATS is back, the device says why.
    env.nats.restart();
    let s = env
        .wait_status(APP, "RolledBack from 2 to 1", |s| {
            s.phase == Phase::RolledBack && s.revision == 2
        })
        .await;
    assert_eq!(s.running_revision, Some(1));
    wait_revision_running(&env, "1").await;
}

#[tokio::test]
async fn an_agent_killed_mid_update_comes_back_offline_on_one_revision() {
    let Some(mut env) = Env::start("rollbackmid").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    healthy_at_1(&env).await;

    env.put_raw(APP, desired(2, crashing(1, "v2"), guarded(SLOW_HEALTHY)))
        .await;
    // SIGKILL as soon as revision 2 has a container: revision 1 still runs
    // beside it, or was just stopped for it.
    assert!(
        testkit::wait_until(WAIT, || env.containers().iter().any(|c| c.3 == "2")),
        "revision 2 never started"
    );
    agent.kill();
    env.nats.stop();
    let left = env.containers();
    eprintln!("left by the kill: {left:?}");

    // Restarted without NATS: the cached revision 2 comes back whole,
    // crashes, and is rolled back (or the cache still held revision 1).
    let _agent = env.spawn_agent();
    wait_revision_running(&env, "1").await;
}

#[tokio::test]
async fn a_revision_whose_check_never_passes_is_rolled_back_at_its_deadline_offline() {
    let Some(env) = Env::start("rollbackcheck").await else {
        return;
    };
    let proxy = testkit::proxy::TcpProxy::to_port(env.nats.port());
    let _agent = env.spawn_agent_via(&proxy.url());
    healthy_at_1(&env).await;
    let marker = env.state_dir().join("failed").join(APP);

    // Revision 2 runs, but its check always fails (and restarts nothing):
    // Unhealthy, which waits for the deadline.
    let mut containers = good("v2");
    let mut check = protocol::HealthCheck::exec(
        BoundedVec::try_from_iter([Text::borrowed("/bin/false")]).unwrap(),
    );
    check.interval_seconds = 1;
    check.failure_threshold = 1;
    check.on_failure = protocol::HealthFailureAction::None;
    containers[0].health_check = Some(check);
    let deadline = RolloutPolicy {
        min_healthy_seconds: 0,
        progress_deadline_seconds: 10,
        auto_rollback: true,
    };
    env.put_raw(APP, desired(2, containers, deadline)).await;
    wait_revision_running(&env, "2").await;
    proxy.cut();
    assert!(
        !marker.exists(),
        "rolled back before the cut: too slow here"
    );

    wait_revision_running(&env, "1").await;
    proxy.restore();
    let s = env
        .wait_status(APP, "RolledBack from 2 to 1", |s| {
            s.phase == Phase::RolledBack && s.revision == 2
        })
        .await;
    assert_eq!(s.running_revision, Some(1));
    assert_eq!(s.reason, Reason::ProgressDeadlineExceeded);
    assert!(
        s.message.starts_with(
            "revision 2 failed (ProgressDeadlineExceeded): not Healthy within 10s (last Unhealthy"
        ),
        "{}",
        s.message.as_str()
    );
}
