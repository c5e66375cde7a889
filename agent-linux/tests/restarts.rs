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
    // Every status written, in order.
    let mut updates = env.status.watch(env.key("dep")).await.unwrap();
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
    // Once it crashed, never Healthy (not even in the pass that restarts
    // it, with the default minHealthySeconds 0: its first run may be, as
    // Podman says it runs until it notices the exit), and never Failed (an
    // exit right after a restart is not an error of its own).
    let mut phases = Vec::new();
    while phases.last().is_none_or(|(_, n)| *n < 4) {
        use futures::StreamExt;
        let entry = tokio::time::timeout(common::WAIT, updates.next())
            .await
            .unwrap_or_else(|_| panic!("statuses so far: {phases:?}"))
            .unwrap()
            .unwrap();
        let s = protocol::wire::decode::<protocol::DeploymentStatus<'_>>(&entry.value).unwrap();
        phases.push((s.phase, s.containers.first().map_or(0, |c| c.restart_count)));
    }
    assert!(
        phases
            .iter()
            .all(|(p, n)| *p != Phase::Failed && (*n == 0 || *p != Phase::Healthy)),
        "{phases:?}"
    );
    assert!(
        phases.iter().any(|(p, _)| *p == Phase::CrashLoopBackOff),
        "{phases:?}"
    );
}

/// A container over its memory limit is killed; the status says
/// `OOMKilled`: from Podman's inspect on Podman 5, from the kernel's log
/// on Podman 4, which never says so (podman #13102). Without a readable
/// `/dev/kmsg` (not root) Podman 4's answer is all there is: exit 137.
/// A container that exits 137 by itself beside it is not OOM-killed.
#[tokio::test]
async fn a_memory_hog_is_killed_and_reported() {
    let Some(env) = Env::start("oom").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let mut c = shell("hog", "sleep 1; x=a; while :; do x=$x$x; done");
    c.resources.memory_limit = Some(MemoryQuantity(16 << 20));
    c.restart_policy = RestartPolicy::Never;
    let mut other = shell("other", "sleep 1; exit 137");
    other.restart_policy = RestartPolicy::Never;
    env.put_v1("dep", 1, vec![c, other]).await;
    let s = env
        .wait_status("dep", "both exited", |s| {
            s.phase == Phase::Failed
                && s.containers.len() == 2
                && s.containers
                    .iter()
                    .all(|c| c.state == ContainerState::Exited)
        })
        .await;
    let o = &s.containers[1];
    assert_eq!((o.exit_code, o.reason), (Some(137), Reason::Error), "{s:?}");
    let name = env.container_name("dep", "hog");
    let i = env.inspect(&name);
    assert_eq!(i["HostConfig"]["Memory"], 16 << 20);
    let oom = i["State"]["OOMKilled"].as_bool().unwrap();
    let c = &s.containers[0];
    assert_eq!((c.state, c.exit_code), (ContainerState::Exited, Some(137)));
    let kmsg = std::fs::File::open(agent_linux::oom::KMSG).is_ok();
    if !oom && !kmsg {
        eprintln!("Podman 4 without a readable /dev/kmsg: an OOM kill is exit 137, Error");
    }
    let want = if oom || kmsg {
        Reason::OOMKilled
    } else {
        Reason::Error
    };
    assert_eq!((c.reason, s.reason), (want, want), "{s:?}");
    assert_eq!(
        s.message.contains("out of memory"),
        want == Reason::OOMKilled,
        "{s:?}"
    );
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

/// An agent restart does not skip the back-off: a container the new agent
/// finds exited starts again no sooner than the initial back-off after
/// its exit (Podman's own `FinishedAt` and `StartedAt` say when).
#[tokio::test]
async fn an_agent_restart_keeps_the_back_off() {
    let Some(env) = Env::start("crashrestart").await else {
        return;
    };
    env.write_config_with_podman(
        "restart_backoff_initial_secs = 3\nrestart_backoff_max_secs = 6\n",
    );
    let mut agent = env.spawn_agent_with_config();
    env.put_v1("dep", 1, vec![shell("app", "exit 1")]).await;
    env.wait_status("dep", "waiting", |s| {
        s.containers
            .first()
            .is_some_and(|c| c.state == ContainerState::Waiting)
    })
    .await;
    agent.kill();
    let name = env.container_name("dep", "app");
    let time = |i: &serde_json::Value, field: &str| {
        let s = i["State"][field].as_str().unwrap().to_string();
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{field} {s}: {e}"))
    };
    let before = env.inspect(&name);
    let state = before["State"]["Status"].as_str().unwrap_or("");
    assert!(matches!(state, "exited" | "stopped"), "{state}");
    let finished = time(&before, "FinishedAt");
    let _agent = env.spawn_agent_with_config();
    // (A run that exits at once may have a StartedAt after its
    // FinishedAt: Podman notes the start once the process is under way.)
    let last_run = time(&before, "StartedAt");
    let mut started = last_run;
    assert!(
        testkit::wait_until(common::WAIT, || {
            started = time(&env.inspect(&name), "StartedAt");
            started != last_run
        }),
        "never started again"
    );
    assert!(
        started - finished >= time::Duration::seconds(3),
        "started {started} after it finished at {finished}: the back-off was skipped"
    );
}
