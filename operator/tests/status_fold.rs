//! Device reports put into a real NATS reach the CR status patch: the
//! status cache's watches pick them up, and the real reconcile folds them.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use operator::crd::revision_string;
use operator::status::{Change, StatusCache, now_ns};
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::Phase;

fn cond<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn device<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == id)
        .unwrap()
}

fn listed(status: &serde_json::Value) -> Vec<&str> {
    status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn reports_in_nats_fold_into_the_status_patch() {
    let Some(env) = nats_env().await else { return };
    let (client, api) = MockApiServer::start();
    let (cache, mut changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        env.nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let d = web(&["a", "b", "c"], "nginx:1");
    let rev = operator::plan(&d).unwrap().revision;
    api.insert(&d);
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    api.take();

    // What agents write: a runs it, b failed it, c still pulls an old one.
    for dev in ["a", "b", "c"] {
        put_heartbeat(&env.client, dev).await;
    }
    put_status(&env.client, "a", "web", rev, Phase::Running, "").await;
    put_status(
        &env.client,
        "b",
        "web",
        rev,
        Phase::Failed,
        "pull nginx:1: no such image",
    )
    .await;
    put_status(&env.client, "c", "web", 42, Phase::Pulling, "").await;
    put_status(&env.client, "a", "ghost", 1, Phase::Running, "").await;
    let seen = testkit::wait_until_async(Duration::from_secs(10), || async {
        cache.report("a", "web").is_some()
            && cache.report("b", "web").is_some()
            && cache.report("c", "web").is_some()
            && cache.heartbeat("c").is_some()
    })
    .await;
    assert!(seen, "the watches did not deliver the reports");
    let mut got = Vec::new();
    while let Ok(c) = changes.try_recv() {
        got.push(c);
    }
    assert!(got.contains(&Change::Deployment("web".into())), "{got:?}");
    assert!(got.contains(&Change::Device("a".into())), "{got:?}");

    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    assert_eq!(lines(&reqs), status_patch_and_event("default", "web"));
    let status = &reqs[0].body["status"];
    assert_eq!(
        (
            &status["targeted"],
            &status["upToDate"],
            &status["ready"],
            &status["failed"]
        ),
        (&3.into(), &2.into(), &1.into(), &1.into())
    );
    // Only the devices not ready are listed, worst first: a (ready) is
    // counted and left out.
    assert_eq!(listed(status), ["b", "c"]);
    assert_eq!(status["devicesOmitted"], 0);
    let b = device(status, "b");
    assert_eq!(b["phase"], "Failed");
    assert_eq!(b["revision"], revision_string(rev));
    assert!(b["lastReportTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["message"], "pull nginx:1: no such image");
    let c = device(status, "c");
    assert_eq!(c["phase"], "Pulling");
    assert_eq!(c["revision"], revision_string(42));
    assert_eq!(cond(status, "Ready")["status"], "False");
    assert_eq!(cond(status, "Progressing")["status"], "True");
    let degraded = cond(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "TargetsFailed");
    assert_eq!(degraded["message"], "failed: b");
    assert_eq!(reqs[1].body["reason"], "Degraded");
    assert_eq!(reqs[1].body["type"], "Warning");

    // Everything runs the revision now: Ready, and Degraded clears.
    put_status(&env.client, "b", "web", rev, Phase::Running, "").await;
    put_status(&env.client, "c", "web", rev, Phase::Running, "").await;
    let seen = testkit::wait_until_async(Duration::from_secs(10), || async {
        ["b", "c"].iter().all(|dev| {
            cache
                .report(dev, "web")
                .is_some_and(|r| r.status.phase == Phase::Running && r.status.revision == rev)
        })
    })
    .await;
    assert!(seen);
    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    assert_eq!(reqs.len(), 1, "status only: {reqs:?}");
    let status = &reqs[0].body["status"];
    assert_eq!(
        (&status["ready"], &status["upToDate"]),
        (&3.into(), &3.into())
    );
    assert_eq!(
        status["devices"],
        serde_json::json!([]),
        "a ready fleet lists none"
    );
    assert_eq!(status["devicesOmitted"], 0);
    assert_eq!(cond(status, "Ready")["status"], "True");
    assert_eq!(cond(status, "Progressing")["status"], "False");
    assert_eq!(cond(status, "Degraded")["status"], "False");

    // An hour later without heartbeats every device is unreachable.
    let later = Arc::new(
        Context::new(
            client,
            env.nats.clone(),
            cache.clone(),
            ControllerConfig::default(),
        )
        .with_clock(Arc::new(|| now_ns() + 3_600_000_000_000)),
    );
    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), later).await.unwrap();
    let reqs = api.take();
    let status = &reqs[0].body["status"];
    assert_eq!(status["ready"], 0);
    assert_eq!(listed(status), ["a", "b", "c"]);
    for dev in ["a", "b", "c"] {
        let e = device(status, dev);
        assert_eq!(e["phase"], "Unreachable");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("last phase: Running"),
            "{e}"
        );
    }
    let degraded = cond(status, "Degraded");
    assert_eq!(degraded["reason"], "TargetsUnreachable");
    assert_eq!(degraded["message"], "unreachable: a, b, c");
    watch.abort();
}

#[tokio::test]
async fn watches_survive_a_nats_restart() {
    let Some(mut env) = nats_env().await else {
        return;
    };
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    put_status(&env.client, "a", "web", 1, Phase::Running, "").await;
    assert!(
        testkit::wait_until_async(Duration::from_secs(10), || async {
            cache.report("a", "web").is_some()
        })
        .await
    );
    env.server.restart();
    // Publish until the client has reconnected and the server stored it.
    let stored = testkit::wait_until_async(Duration::from_secs(30), || async {
        let js = async_nats::jetstream::new(env.client.clone());
        let value = protocol::wire::encode_to_vec(&protocol::DeploymentStatus {
            revision: 2,
            phase: Phase::Running,
            containers: protocol::BoundedVec::new(),
            message: protocol::Text::borrowed(""),
            timestamp_ms: 0,
            reason: protocol::Reason::None,
            running_revision: None,
            waiting: None,
        })
        .unwrap();
        match js.publish("$KV.device-status.a.web", value.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(stored, "could not publish after the restart");
    let seen = testkit::wait_until_async(Duration::from_secs(40), || async {
        cache
            .report("a", "web")
            .is_some_and(|r| r.status.revision == 2)
    })
    .await;
    assert!(seen, "the status watch did not come back after the restart");
    watch.abort();
}

/// An agent's heartbeat listing `caps` (what it reads).
async fn put_heartbeat_reading(
    client: &async_nats::Client,
    device: &str,
    caps: protocol::Capabilities<'static>,
) {
    let hb = protocol::Heartbeat {
        agent_version: protocol::Text::borrowed("0.3.0"),
        arch: protocol::Text::borrowed("aarch64"),
        os: protocol::Text::borrowed("linux"),
        podman_version: protocol::Text::borrowed("4.3.1"),
        uptime_secs: 5,
        deployments: 1,
        capabilities: caps,
        ..protocol::Heartbeat::default()
    };
    publish_heartbeat(client, device, &hb).await;
}

/// Health reports (DeploymentStatus format version 2, as an agent with
/// health checks writes them) fold into the status patch: phases, reasons,
/// the rolled-back revision, the healthy count and the conditions'
/// messages; an agent that cannot read the rollout policy is held back.
#[tokio::test]
async fn health_reports_in_nats_fold_into_the_status_patch() {
    use protocol::{ContainerState, Health, Reason};
    let Some(env) = nats_env().await else { return };
    let (client, api) = MockApiServer::start();
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        env.nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let data = serde_json::json!({"containers": [{
        "name": "web", "image": "nginx:1.27",
        "ports": [{"containerPort": 80}],
        "healthCheck": {"httpGet": {"port": 80}},
        "resources": {"memoryLimit": "64Mi"}
    }]});
    let mut d = with_finalizer(deployment(
        "default",
        "web",
        &["a", "b", "c", "d", "e", "old"],
        "PodmanV1",
        data,
    ));
    d.spec.rollout.auto_rollback = true;
    d.spec.rollout.min_healthy_seconds = 30;
    let rev = operator::plan(&d).unwrap().revision;
    for dev in ["a", "b", "c", "d", "e"] {
        put_heartbeat_reading(&env.client, dev, protocol::Capabilities::this_build()).await;
    }
    // The release before the rollout policy: PodmanV1, DesiredState 1.
    let mut before = protocol::Capabilities::this_build();
    before.desired_state_versions = protocol::BoundedVec::try_from_iter([1]).unwrap();
    put_heartbeat_reading(&env.client, "old", before).await;
    assert!(
        testkit::wait_until_async(Duration::from_secs(10), || async {
            ["a", "b", "c", "d", "e", "old"]
                .iter()
                .all(|dev| cache.heartbeat(dev).is_some())
        })
        .await
    );
    api.insert(&d);
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    api.take();
    let written = desired(&env.nats, "a", "web").await.unwrap();
    assert_eq!(written.value[0], 2, "the policy needs DesiredState 2");
    assert!(
        desired(&env.nats, "old", "web").await.is_none(),
        "never written what it cannot read"
    );

    let old_rev = 0x00c0_ffee;
    let reports = [
        (
            "a",
            health_status(
                rev,
                Phase::Healthy,
                Reason::None,
                None,
                ContainerState::Running,
                Some(Health::Healthy),
                0,
            ),
        ),
        (
            "b",
            health_status(
                rev,
                Phase::CrashLoopBackOff,
                Reason::OOMKilled,
                None,
                ContainerState::Waiting,
                None,
                3,
            ),
        ),
        (
            "c",
            health_status(
                rev,
                Phase::Unhealthy,
                Reason::HealthCheckFailed,
                None,
                ContainerState::Running,
                Some(Health::Unhealthy),
                1,
            ),
        ),
        (
            "d",
            health_status(
                rev,
                Phase::RolledBack,
                Reason::HealthCheckFailed,
                Some(old_rev),
                ContainerState::Running,
                Some(Health::Healthy),
                0,
            ),
        ),
        (
            "e",
            health_status(
                rev,
                Phase::Running,
                Reason::None,
                None,
                ContainerState::Running,
                Some(Health::Starting),
                0,
            ),
        ),
    ];
    for (dev, status) in &reports {
        publish_status(&env.client, dev, "web", status).await;
    }
    let seen = testkit::wait_until_async(Duration::from_secs(10), || async {
        reports
            .iter()
            .all(|(dev, s)| cache.report(dev, "web").is_some_and(|r| r.status == *s))
    })
    .await;
    assert!(seen, "the watch did not deliver the reports as written");

    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    let patch = reqs
        .iter()
        .find(|r| r.line().ends_with("/status"))
        .expect("a status patch");
    let status = &patch.body["status"];
    let counts = ["targeted", "upToDate", "ready", "healthy", "failed"].map(|k| &status[k]);
    assert_eq!(
        counts,
        [6, 5, 2, 1, 2].map(serde_json::Value::from).each_ref(),
        "{status}"
    );
    assert_eq!(listed(status), ["d", "old", "b", "c"]);
    let rolled = device(status, "d");
    assert_eq!(rolled["phase"], "RolledBack");
    assert_eq!(rolled["reason"], "HealthCheckFailed");
    assert_eq!(rolled["revision"], revision_string(rev));
    assert_eq!(rolled["runningRevision"], revision_string(old_rev));
    let old = device(status, "old");
    assert_eq!(old["phase"], "Unsupported");
    assert!(
        old["message"]
            .as_str()
            .unwrap()
            .contains("cannot receive the rollout policy"),
        "{old}"
    );
    assert_eq!(device(status, "b")["phase"], "CrashLoopBackOff");
    assert_eq!(device(status, "b")["reason"], "OOMKilled");
    assert_eq!(device(status, "c")["phase"], "Unhealthy");
    assert_eq!(device(status, "c")["reason"], "HealthCheckFailed");
    assert_eq!(
        cond(status, "Ready")["message"],
        "2/6 targets run the current revision (1 Healthy); 1 device CrashLoopBackOff (OOMKilled), 1 device RolledBack (HealthCheckFailed), 1 device Unhealthy (HealthCheckFailed), 1 device Unsupported"
    );
    let degraded = cond(status, "Degraded");
    assert_eq!(degraded["reason"], "TargetsFailed");
    assert_eq!(
        degraded["message"],
        "failed: d, old; unhealthy: b, c; 1 device CrashLoopBackOff (OOMKilled), 1 device RolledBack (HealthCheckFailed), 1 device Unhealthy (HealthCheckFailed), 1 device Unsupported"
    );

    // The crash loop and the check recover; the rolled-back device gets
    // nothing new, so it stays RolledBack.
    for dev in ["b", "c", "e"] {
        let s = health_status(
            rev,
            Phase::Healthy,
            Reason::None,
            None,
            ContainerState::Running,
            Some(Health::Healthy),
            3,
        );
        publish_status(&env.client, dev, "web", &s).await;
    }
    assert!(
        testkit::wait_until_async(Duration::from_secs(10), || async {
            ["b", "c", "e"].iter().all(|dev| {
                cache
                    .report(dev, "web")
                    .is_some_and(|r| r.status.phase == Phase::Healthy)
            })
        })
        .await
    );
    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    let patch = reqs
        .iter()
        .find(|r| r.line().ends_with("/status"))
        .expect("a status patch");
    let status = &patch.body["status"];
    let counts = ["ready", "healthy", "failed"].map(|k| &status[k]);
    assert_eq!(counts, [4, 4, 2].map(serde_json::Value::from).each_ref());
    assert_eq!(listed(status), ["d", "old"]);
    assert_eq!(
        cond(status, "Degraded")["message"],
        "failed: d, old; 1 device RolledBack (HealthCheckFailed), 1 device Unsupported"
    );
    watch.abort();
}

/// Devices that hold the revision back (DeploymentStatus format version 3:
/// phase Waiting with since/until) fold into the status patch: listed as
/// Waiting with their reason, since, until and the revision they still
/// run, counted as waiting (not failed, not up to date), the Deployment
/// not Ready and Progressing with why; an update lock held past its
/// timeout is a failure. Reports of the release before (versions 1 and 2)
/// fold beside them as ever.
#[tokio::test]
async fn waiting_reports_in_nats_fold_into_the_status_patch() {
    use protocol::{ContainerState, Health, Reason, Waiting};
    let Some(env) = nats_env().await else { return };
    let (client, api) = MockApiServer::start();
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        env.nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let d = web(&["a", "b", "c", "d", "e"], "nginx:1");
    let rev = operator::plan(&d).unwrap().revision;
    let old_rev = 0x00c0_ffee;
    api.insert(&d);
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    api.take();
    for dev in ["a", "b", "c", "d", "e"] {
        put_heartbeat(&env.client, dev).await;
    }
    // 2026-12-06T09:03:11Z and 2026-12-07T01:00:00Z.
    let (since_ms, until_ms) = (1_796_547_791_000, 1_796_605_200_000);
    let held = |phase, reason, until_ms, message| protocol::DeploymentStatus {
        revision: rev,
        phase,
        containers: protocol::BoundedVec::new(),
        message: protocol::Text::borrowed(message),
        timestamp_ms: since_ms,
        reason,
        running_revision: Some(old_rev),
        waiting: Some(Waiting { since_ms, until_ms }),
    };
    let reports = [
        (
            "a",
            held(
                Phase::Waiting,
                Reason::UpdateLocked,
                None,
                "update lock held by pid 4242 (kiosk); images pulled",
            ),
        ),
        (
            "b",
            held(
                Phase::Waiting,
                Reason::OutsideMaintenanceWindow,
                Some(until_ms),
                "outside the maintenance windows; images pulled",
            ),
        ),
        (
            "c",
            held(
                Phase::Failed,
                Reason::UpdateLockTimeout,
                None,
                "update lock held longer than 600 s",
            ),
        ),
        (
            "e",
            health_status(
                rev,
                Phase::Healthy,
                Reason::None,
                None,
                ContainerState::Running,
                Some(Health::Healthy),
                0,
            ),
        ),
    ];
    assert_eq!(protocol::wire::encode_to_vec(&reports[0].1).unwrap()[0], 3);
    for (dev, status) in &reports {
        publish_status(&env.client, dev, "web", status).await;
    }
    // d: what an agent of the first release writes (format version 1).
    put_status(&env.client, "d", "web", rev, Phase::Running, "").await;
    let seen = testkit::wait_until_async(Duration::from_secs(10), || async {
        reports
            .iter()
            .all(|(dev, s)| cache.report(dev, "web").is_some_and(|r| r.status == *s))
            && cache.report("d", "web").is_some()
    })
    .await;
    assert!(seen, "the watch did not deliver the reports as written");

    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    let patch = reqs
        .iter()
        .find(|r| r.line().ends_with("/status"))
        .expect("a status patch");
    let status = &patch.body["status"];
    let counts = [
        "targeted", "upToDate", "ready", "healthy", "failed", "waiting",
    ]
    .map(|k| &status[k]);
    assert_eq!(
        counts,
        [5, 3, 2, 1, 1, 2].map(serde_json::Value::from).each_ref(),
        "{status}"
    );
    assert_eq!(listed(status), ["c", "a", "b"]);
    let a = device(status, "a");
    assert_eq!(a["phase"], "Waiting");
    assert_eq!(a["reason"], "UpdateLocked");
    assert_eq!(a["revision"], revision_string(rev));
    assert_eq!(a["runningRevision"], revision_string(old_rev));
    assert_eq!(a["waitingSince"], "2026-12-06T09:03:11Z");
    assert!(a.get("waitingUntil").is_none(), "{a}");
    assert_eq!(
        a["message"],
        "update lock held by pid 4242 (kiosk); images pulled"
    );
    let b = device(status, "b");
    assert_eq!(b["phase"], "Waiting");
    assert_eq!(b["reason"], "OutsideMaintenanceWindow");
    assert_eq!(b["waitingUntil"], "2026-12-07T01:00:00Z");
    let c = device(status, "c");
    assert_eq!(c["phase"], "Failed");
    assert_eq!(c["reason"], "UpdateLockTimeout");
    assert_eq!(c["waitingSince"], "2026-12-06T09:03:11Z");
    let ready = cond(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(
        ready["message"],
        "2/5 targets run the current revision (1 Healthy); 1 device Failed (UpdateLockTimeout), 1 device Waiting (OutsideMaintenanceWindow), 1 device Waiting (UpdateLocked)"
    );
    let progressing = cond(status, "Progressing");
    assert_eq!(progressing["status"], "True");
    assert_eq!(progressing["reason"], "RollingOut");
    assert_eq!(
        progressing["message"],
        "3/5 targets report the current revision; 2 devices waiting: 1 OutsideMaintenanceWindow (until 2026-12-07T01:00:00Z), 1 UpdateLocked (since 2026-12-06T09:03:11Z)"
    );
    let degraded = cond(status, "Degraded");
    assert_eq!(degraded["reason"], "TargetsFailed");
    assert_eq!(
        degraded["message"],
        "failed: c; 1 device Failed (UpdateLockTimeout)"
    );

    // The lock is released and the window opens: both apply.
    for dev in ["a", "b"] {
        put_status(&env.client, dev, "web", rev, Phase::Running, "").await;
    }
    assert!(
        testkit::wait_until_async(Duration::from_secs(10), || async {
            ["a", "b"].iter().all(|dev| {
                cache
                    .report(dev, "web")
                    .is_some_and(|r| r.status.phase == Phase::Running)
            })
        })
        .await
    );
    let d = api.get("default", "web").unwrap();
    reconcile(Arc::new(d), ctx.clone()).await.unwrap();
    let reqs = api.take();
    let patch = reqs
        .iter()
        .find(|r| r.line().ends_with("/status"))
        .expect("a status patch");
    let status = &patch.body["status"];
    let counts = ["upToDate", "ready", "failed", "waiting"].map(|k| &status[k]);
    assert_eq!(
        counts,
        [5, 4, 1, 0].map(serde_json::Value::from).each_ref(),
        "{status}"
    );
    assert_eq!(listed(status), ["c"]);
    assert_eq!(
        cond(status, "Progressing")["message"],
        "5/5 targets report the current revision"
    );
    watch.abort();
}
