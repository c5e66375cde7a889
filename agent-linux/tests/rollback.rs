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
        attempt: 0,
        gate: Default::default(),
        secrets: Default::default(),
    })
    .unwrap()
}

/// Rolls back on failure, with the default `minHealthySeconds` (0: a
/// crash-looping revision is `Healthy` between its crashes, which proves
/// nothing before its deadline).
fn guarded() -> RolloutPolicy {
    RolloutPolicy {
        // Long: the crash loop is what triggers the rollback here.
        progress_deadline_seconds: 600,
        auto_rollback: true,
        ..RolloutPolicy::default()
    }
}

/// Revisions as the operator makes them, content hashes: each one here is
/// numerically lower than the one before.
const R1: u64 = 0xf3a9_1c2e_77d0_4b15;
const R2: u64 = 0x0b7e_52a1_9c3d_e860;
const R3: u64 = 0x05d2_1e0f_438a_bc97;

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

/// `revision` of [`good`] `v1` is proven on the device: `Healthy` at its
/// progress deadline (1 s), stored as the one to go back to.
async fn healthy_at(env: &Env, revision: u64) {
    let value = desired(
        revision,
        good("v1"),
        RolloutPolicy {
            progress_deadline_seconds: 1,
            ..RolloutPolicy::default()
        },
    );
    env.put_raw(APP, value.clone()).await;
    env.wait_status(APP, "Healthy", |s| {
        s.phase == Phase::Healthy && s.revision == revision
    })
    .await;
    wait_revision_running(env, &revision.to_string()).await;
    let stored = env.state_dir().join("healthy").join(APP);
    assert!(
        testkit::wait_until(WAIT, || std::fs::read(&stored).is_ok_and(|v| v == value)),
        "revision {revision} was never stored as the last healthy one"
    );
}

async fn healthy_at_1(env: &Env) {
    healthy_at(env, 1).await;
}

/// `main` runs until the test puts `/crash` in it, then exits 1; again at
/// once after each restart (the file stays in its writable layer).
fn crashing_on_demand(tag: &str) -> Vec<ContainerV1<'static>> {
    let mut c = crashing(0, tag);
    c[0].args = Some(
        BoundedVec::try_from_iter([
            Text::borrowed("-c"),
            Text::borrowed("while [ ! -e /crash ]; do sleep 0.2; done; exit 1"),
        ])
        .unwrap(),
    );
    c
}

/// With revisions that are content hashes, the later one numerically
/// lower: the device goes back by itself, NATS cut, from a revision that
/// was `Healthy` (minHealthySeconds 0) until it crashed.
#[tokio::test]
async fn a_crash_looping_revision_is_rolled_back_offline_and_a_newer_one_applies() {
    let Some(env) = Env::start("rollback").await else {
        return;
    };
    let proxy = testkit::proxy::TcpProxy::to_port(env.nats.port());
    let _agent = env.spawn_agent_via(&proxy.url());
    healthy_at(&env, R1).await;
    let marker = env.state_dir().join("failed").join(APP);

    // R2 runs and is Healthy (not yet proven), until the test makes it
    // crash, with the device cut off.
    env.put_raw(APP, desired(R2, crashing_on_demand("v2"), guarded()))
        .await;
    env.wait_status(APP, "Healthy at R2", |s| {
        s.phase == Phase::Healthy && s.revision == R2
    })
    .await;
    wait_revision_running(&env, &R2.to_string()).await;
    let refused = proxy.refused();
    proxy.cut();
    // Copied in, not `exec`ed: Podman 4 with the file event logger may
    // lose an exec's died event and fail the exec that worked.
    let trigger = env.state_dir().join("crash");
    std::fs::write(&trigger, b"").unwrap();
    let into = format!("{}:/crash", env.container_name(APP, "main"));
    env.podman.run(&["cp", trigger.to_str().unwrap(), &into]);

    // Cut off, the device goes back to R1 by itself.
    wait_revision_running(&env, &R1.to_string()).await;
    assert!(marker.exists(), "no failed-revision marker");
    assert!(
        testkit::wait_until_async(WAIT, || async { proxy.refused() > refused }).await,
        "the agent never tried to reconnect"
    );
    proxy.restore();
    let s = env
        .wait_status(APP, "RolledBack from R2 to R1", |s| {
            s.phase == Phase::RolledBack && s.revision == R2
        })
        .await;
    assert_eq!(s.running_revision, Some(R1));
    assert_eq!(s.reason, Reason::CrashLoopBackOff, "{}", s.message.as_str());
    assert!(
        s.message
            .starts_with(&format!("revision {R2} failed (CrashLoopBackOff): "))
            && s.message.contains(&format!("running revision {R1} again")),
        "{}",
        s.message.as_str()
    );
    // Back in sync (the watch's snapshot, delivering R2 again, is done
    // once a deployment put after it runs), the failed revision is not
    // tried again: R1's containers are the same.
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
    assert_eq!(after, before, "R2 was tried again");

    // A newer revision applies.
    env.put_raw(APP, desired(R3, good("v3"), guarded())).await;
    let s = env
        .wait_status(APP, "Healthy at R3", |s| {
            s.phase == Phase::Healthy && s.revision == R3
        })
        .await;
    assert_eq!(s.running_revision, None);
    wait_revision_running(&env, &R3.to_string()).await;
}

#[tokio::test]
async fn an_agent_killed_as_the_rollback_starts_comes_back_offline_on_one_revision() {
    let Some(mut env) = Env::start("rollbackkill").await else {
        return;
    };
    let mut agent = env.spawn_agent();
    healthy_at_1(&env).await;
    let marker = env.state_dir().join("failed").join(APP);

    env.put_raw(APP, desired(2, crashing(1, "v2"), guarded()))
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

    env.put_raw(APP, desired(2, crashing(1, "v2"), guarded()))
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
    let value = desired(2, containers, deadline);
    env.put_raw(APP, value.clone()).await;
    // Cut the moment the device has it (its desired-state cache holds
    // it): the deadline runs out offline.
    let cached = env.state_dir().join("desired").join(APP);
    assert!(
        testkit::wait_until(WAIT, || std::fs::read(&cached).is_ok_and(|v| v == value)),
        "revision 2 never reached the device"
    );
    proxy.cut();
    wait_revision_running(&env, "2").await;

    wait_revision_running(&env, "1").await;
    assert!(marker.exists(), "no failed-revision marker");
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
