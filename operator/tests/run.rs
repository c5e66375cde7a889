//! The whole controller (`controller::run`): list and watch through the
//! mock API server, reconcile, and re-reconcile when a device reports.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use operator::status::StatusCache;
use operator::testing::{ApiRequest, MockApiServer, deployment_path};
use operator::{Context, ControllerConfig};
use protocol::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_and_follows_device_reports() {
    let Some(env) = nats_env().await else { return };
    let (client, api) = MockApiServer::start();
    let d = web(&["a"], "nginx:1");
    let rev = operator::plan(&d).unwrap().revision;
    api.insert(&d);
    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        client,
        env.nats.clone(),
        cache,
        ControllerConfig::default(),
    ));
    let run = tokio::spawn(operator::controller::run(ctx, changes));

    let seen: Arc<Mutex<Vec<ApiRequest>>> = Arc::default();
    let status_path = format!("{}/status", deployment_path("default", "web"));
    let patched = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        let mut seen = seen.lock().unwrap();
        seen.extend(api.take());
        seen.iter()
            .any(|r| r.method == "PATCH" && r.path == status_path && pred(&r.body["status"]))
    };
    let first = testkit::wait_until_async(Duration::from_secs(20), || async {
        patched(&|s| s["targeted"] == 1)
    })
    .await;
    assert!(first, "no status patch: {:?}", seen.lock().unwrap());
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].method == "GET",
            "the controller starts by listing: {:?}",
            seen[0]
        );
    }
    assert!(desired(&env.nats, "a", "web").await.is_some());

    put_heartbeat(&env.client, "a").await;
    put_status(&env.client, "a", "web", rev, Phase::Running, "").await;
    let ready = testkit::wait_until_async(Duration::from_secs(20), || async {
        // Ready devices are counted, not listed.
        patched(&|s| s["ready"] == 1 && s["devices"] == serde_json::json!([]))
    })
    .await;
    assert!(
        ready,
        "the report did not reach the status: {:?}",
        seen.lock().unwrap().last()
    );
    run.abort();
    watch.abort();
}
