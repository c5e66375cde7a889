//! Restarts by the agent (`PodmanV1`) on real Podman: back-off that grows,
//! the crash loop as the status says it, out-of-memory kills, pull
//! failures, and a failing health check.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, sleeper};
use protocol::{
    BoundedVec, ContainerState, ContainerV1, HealthCheck, MemoryQuantity, Phase, Reason,
    RestartPolicy, Text,
};

fn texts(v: &[&str]) -> BoundedVec<Text<'static>, { protocol::limits::MAX_ARGS }> {
    BoundedVec::try_from_iter(v.iter().map(|s| Text::owned(s.to_string()))).unwrap()
}

/// A busybox container running `sh -c script`.
fn shell(name: &str, script: &str) -> ContainerV1<'static> {
    let mut c = ContainerV1::from_v0(sleeper(name, "1"));
    c.command = Some(texts(&["/bin/sh"]));
    c.args = Some(texts(&["-c", script]));
    c
}

#[tokio::test]
async fn a_crashing_container_is_restarted_with_growing_back_off() {
    let Some(env) = Env::start("crashloop").await else {
        return;
    };
    env.write_config_with_podman(
        "restart_backoff_initial_secs = 1\nrestart_backoff_max_secs = 4\n",
    );
    let _agent = env.spawn_agent_with_config();
    env.put_v1("dep", 1, vec![shell("app", "exit 1")]).await;
    let name = env.container_name("dep", "app");
    // When each restart count is first seen: the restarts' times.
    let mut seen: Vec<(u32, Instant)> = Vec::new();
    let mut waiting = None;
    let deadline = Instant::now() + common::WAIT;
    while seen.last().is_none_or(|(n, _)| *n < 4) {
        assert!(Instant::now() < deadline, "restarts seen: {seen:?}");
        if let Some(s) = env.status("dep").await
            && let Some(c) = s.containers.first()
        {
            if seen.last().is_none_or(|(n, _)| c.restart_count > *n) {
                seen.push((c.restart_count, Instant::now()));
            }
            if c.state == ContainerState::Waiting && waiting.is_none() {
                waiting = Some(s.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
    // Each restart is reported: the count goes up one at a time.
    let from = counts.iter().position(|n| *n >= 1).unwrap();
    assert_eq!(
        counts[from..],
        (counts[from]..=4).collect::<Vec<_>>()[..],
        "{counts:?}"
    );
    // The waits between restarts 1 -> 2 -> 3 -> 4 are 1, 2 and 4 s: each
    // longer than the one before.
    let at = |n: u32| seen.iter().find(|(c, _)| *c == n).map(|(_, t)| *t).unwrap();
    let gaps: Vec<Duration> = (2..=4).map(|n| at(n) - at(n - 1)).collect();
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "{gaps:?}");
    let s = waiting.expect("a status while waiting");
    assert_eq!(s.phase, Phase::CrashLoopBackOff, "{s:?}");
    assert_eq!(s.reason, Reason::CrashLoopBackOff, "{s:?}");
    let c = &s.containers[0];
    assert_eq!((c.exit_code, c.reason), (Some(1), Reason::CrashLoopBackOff));
    assert!(s.message.contains("back-off"), "{}", s.message.as_str());
    // A restart starts the same container, which Podman never restarts.
    let containers = env.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let i = env.inspect(&name);
    assert_eq!(i["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(i["RestartCount"], 0, "Podman restarted it itself");
}

/// A container over its memory limit is killed; the status says
/// `OOMKilled` exactly when Podman knows it was: Podman 5, not 4 (podman
/// #13102: its conmon writes the `oom` file where Podman 4 does not look),
/// where the kill is an error exit 137.
#[tokio::test]
async fn a_memory_hog_is_killed_and_reported() {
    let Some(env) = Env::start("oom").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let mut c = shell("hog", "sleep 1; x=a; while :; do x=$x$x; done");
    c.resources.memory_limit = Some(MemoryQuantity(16 << 20));
    c.restart_policy = RestartPolicy::Never;
    env.put_v1("dep", 1, vec![c]).await;
    let s = env
        .wait_status("dep", "killed", |s| s.phase == Phase::Failed)
        .await;
    let name = env.container_name("dep", "hog");
    let i = env.inspect(&name);
    assert_eq!(i["HostConfig"]["Memory"], 16 << 20);
    let oom = i["State"]["OOMKilled"].as_bool().unwrap();
    let c = &s.containers[0];
    assert_eq!((c.state, c.exit_code), (ContainerState::Exited, Some(137)));
    let want = if oom {
        Reason::OOMKilled
    } else {
        eprintln!("this Podman does not report OOM kills (podman #13102, fixed in 5.0)");
        Reason::Error
    };
    assert_eq!((c.reason, s.reason), (want, want), "{s:?}");
    assert_eq!(s.message.contains("out of memory"), oom, "{s:?}");
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_image_pull_back_off() {
    let Some(env) = Env::start("pull").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let mut c = shell("app", "sleep 3600");
    c.image = Text::borrowed("localhost/iot-no-such-image:1");
    env.put_v1("dep", 1, vec![c]).await;
    let s = env
        .wait_status("dep", "failed", |s| s.phase == Phase::Failed)
        .await;
    assert_eq!(s.reason, Reason::ImagePullBackOff, "{s:?}");
}

/// A check that passes makes the deployment Healthy; once it fails the
/// status says Unhealthy, then the container is restarted, and passes
/// again. Every status written is read (a KV watch), in order.
#[tokio::test]
async fn a_failing_check_restarts_the_container() {
    use futures::StreamExt;
    let Some(env) = Env::start("check-restart").await else {
        return;
    };
    env.write_config_with_podman(
        "restart_backoff_initial_secs = 1\nrestart_backoff_max_secs = 2\n",
    );
    let mut updates = env.status.watch(env.key("dep")).await.unwrap();
    let _agent = env.spawn_agent_with_config();
    // Its first run passes, then fails after 2 s; the next passes for
    // good (the marker stays in the container's writable layer, which a
    // restart keeps).
    let mut c = shell(
        "app",
        "if [ -e /ran ]; then touch /ok; exec sleep 3600; fi; touch /ran /ok; sleep 2; rm /ok; exec sleep 3600",
    );
    let mut check = HealthCheck::exec(texts(&["cat", "/ok"]));
    check.interval_seconds = 1;
    check.failure_threshold = 1;
    c.health_check = Some(check);
    env.put_v1("dep", 1, vec![c]).await;
    let mut seen = Vec::new();
    loop {
        let entry = tokio::time::timeout(common::WAIT, updates.next())
            .await
            .unwrap_or_else(|_| panic!("statuses so far: {seen:?}"))
            .unwrap()
            .unwrap();
        let s = protocol::wire::decode::<protocol::DeploymentStatus<'_>>(&entry.value)
            .unwrap()
            .into_owned();
        let c = &s.containers[0];
        seen.push((s.phase, c.restart_count, c.health, s.reason));
        if s.phase == Phase::Healthy && c.restart_count == 1 {
            break;
        }
    }
    use protocol::Health;
    let at = |what: (Phase, u32, Option<Health>, Reason)| {
        seen.iter()
            .position(|s| *s == what)
            .unwrap_or_else(|| panic!("no {what:?} in {seen:?}"))
    };
    let healthy = at((Phase::Healthy, 0, Some(Health::Healthy), Reason::None));
    let unhealthy = at((
        Phase::Unhealthy,
        0,
        Some(Health::Unhealthy),
        Reason::HealthCheckFailed,
    ));
    let restarted = seen.iter().position(|s| s.1 == 1).unwrap();
    assert!(healthy < unhealthy && unhealthy < restarted, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.1 <= 1),
        "restarted more than once: {seen:?}"
    );
}
