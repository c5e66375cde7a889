//! Update locks and maintenance windows against a real Kubernetes API
//! server (`testkit::kube`): the CRDs take the new fields and refuse
//! out-of-range ones, and the real controller loop, as the service account
//! of `deploy/operator.yaml`, writes each device its windows (a Device's
//! own win), follows a Device's edits, and answers a bad cron expression
//! with a condition naming the field while the keys written before stay.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::apiserver::*;

use std::sync::Arc;
use std::time::Duration;

use common::{desired, nats_env};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use operator::crd::{Deployment, Device};
use operator::{Context, ControllerConfig, StatusCache};
use protocol::DesiredState;
use serde_json::{Value, json};
use testkit::kube::KubeApiServer;

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "iot.nationtech.io",
        "v1alpha1",
        kind,
    ))
}

fn window(at: &str, tz: &str, duration: &str) -> Value {
    json!({"at": at, "timeZone": tz, "duration": duration})
}

fn gated(name: &str, rollout: Value) -> Value {
    let mut d = deployment_json("default", name, json!(["pi-1"]), "PodmanV1");
    d["spec"]["rollout"] = rollout;
    d
}

fn device(name: &str, windows: Value) -> Value {
    json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name},
        "spec": {"maintenance": {"windows": windows}},
    })
}

#[tokio::test]
async fn the_crds_take_the_gate_and_refuse_out_of_range_values() {
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    let deployments: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource("Deployment"));
    let devices: Api<DynamicObject> = Api::all_with(client.clone(), &resource("Device"));

    let rollout = json!({
        "updateLock": {"timeoutSeconds": 604800, "onTimeout": "Force"},
        "maintenanceWindows": [window("0 2 * * *", "Europe/Paris", "2h")],
        "force": true,
    });
    create(&deployments, gated("kiosk", rollout.clone()))
        .await
        .unwrap();
    let typed: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = typed.get("kiosk").await.unwrap();
    assert_eq!(
        serde_json::to_value(&d.spec.rollout).unwrap()["updateLock"],
        rollout["updateLock"]
    );
    assert_eq!(
        d.spec.rollout.maintenance_windows[0].time_zone,
        "Europe/Paris"
    );
    assert!(d.spec.rollout.force);
    // `updateLock: {}`: the defaults filled in by the server.
    create(&deployments, gated("lock", json!({"updateLock": {}})))
        .await
        .unwrap();
    let d = typed.get("lock").await.unwrap();
    let lock = d.spec.rollout.update_lock.unwrap();
    assert_eq!(lock.timeout_seconds, 0);
    assert_eq!(lock.on_timeout, operator::crd::OnLockTimeout::Fail);

    refused(
        &deployments,
        gated("long", json!({"updateLock": {"timeoutSeconds": 604801}})),
        "spec.rollout.updateLock.timeoutSeconds",
    )
    .await;
    refused(
        &deployments,
        gated("later", json!({"updateLock": {"onTimeout": "Later"}})),
        "spec.rollout.updateLock.onTimeout",
    )
    .await;
    let nine: Vec<Value> = (0..9).map(|_| window("0 2 * * *", "UTC", "1h")).collect();
    refused(
        &deployments,
        gated("nine", json!({"maintenanceWindows": nine})),
        "must have at most 8 items",
    )
    .await;
    refused(
        &deployments,
        gated(
            "no-tz",
            json!({"maintenanceWindows": [{"at": "0 2 * * *", "duration": "1h"}]}),
        ),
        "timeZone: Required value",
    )
    .await;

    create(
        &devices,
        device(
            "pi-1",
            json!([window("30 3 * * SAT,SUN", "Europe/Lisbon", "90m")]),
        ),
    )
    .await
    .unwrap();
    let typed: Api<Device> = Api::all(client.clone());
    assert_eq!(
        typed.get("pi-1").await.unwrap().spec.windows()[0].duration,
        "90m"
    );
    refused(
        &devices,
        device("pi-2", json!(nine)),
        "must have at most 8 items",
    )
    .await;
    refused(
        &devices,
        device(
            "pi-3",
            json!([{"at": "", "timeZone": "UTC", "duration": "1h"}]),
        ),
        "spec.maintenance.windows[0].at",
    )
    .await;
}

/// `(at, timeZone, seconds)` of each window of `device`'s key for `name`.
async fn key_windows(
    env: &common::Env,
    device: &str,
    name: &str,
) -> Option<Vec<(String, String, u32)>> {
    let rec = desired(&env.nats, device, name)
        .await
        .filter(|r| !r.deleted)?;
    let v: DesiredState<'_> = protocol::wire::decode(&rec.value).unwrap();
    Some(
        v.gate
            .windows
            .iter()
            .map(|w| {
                (
                    w.at.to_string(),
                    w.time_zone.to_string(),
                    w.duration_seconds,
                )
            })
            .collect(),
    )
}

async fn key_windows_become(
    env: &common::Env,
    device: &str,
    name: &str,
    want: &[(&str, &str, u32)],
) {
    let want: Vec<(String, String, u32)> = want
        .iter()
        .map(|(a, t, s)| (a.to_string(), t.to_string(), *s))
        .collect();
    eventually(&format!("{device}.{name} holds {want:?}"), || async {
        match key_windows(env, device, name).await {
            Some(got) if got == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn the_controller_writes_windows_and_refuses_a_bad_cron_keeping_the_keys() {
    let Some(env) = nats_env().await else { return };
    let Some(server) = KubeApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crds(&server).await;
    create_namespace(&client, "fleet").await;
    let operator_client = operator_identity(&server, &client).await;
    let devices: Api<DynamicObject> = Api::all_with(client.clone(), &resource("Device"));
    // pi-1 has windows of its own before the operator starts.
    create(
        &devices,
        device(
            "pi-1",
            json!([window("30 3 * * SAT,SUN", "Europe/Lisbon", "90m")]),
        ),
    )
    .await
    .unwrap();

    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    let watch = tokio::spawn(cache.clone().watch(env.nats.clone()));
    let ctx = Arc::new(Context::new(
        operator_client,
        env.nats.clone(),
        cache,
        ControllerConfig::default(),
    ));
    let controller = tokio::spawn(operator::controller::run(ctx.clone(), changes));

    let api: Api<Deployment> = Api::namespaced(client.clone(), "fleet");
    let mut body = deployment_json("fleet", "kiosk", json!(["pi-1", "pi-2"]), "PodmanV1");
    body["spec"]["rollout"] =
        json!({"maintenanceWindows": [window("0 2 * * *", "Europe/Paris", "2h")]});
    let d: Deployment = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    key_windows_become(
        &env,
        "pi-2",
        "kiosk",
        &[("0 2 * * *", "Europe/Paris", 7200)],
    )
    .await;
    key_windows_become(
        &env,
        "pi-1",
        "kiosk",
        &[("30 3 * * SAT,SUN", "Europe/Lisbon", 5400)],
    )
    .await;

    // The Device edited: its key follows, without any Deployment change.
    let patch = json!({"spec": {"maintenance": {"windows": [window("0 4 * * *", "UTC", "1h")]}}});
    devices
        .patch("pi-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    key_windows_become(&env, "pi-1", "kiosk", &[("0 4 * * *", "UTC", 3600)]).await;

    // An unknown time zone on the Device: a warning Event on it, its key
    // as it was.
    let patch =
        json!({"spec": {"maintenance": {"windows": [window("0 4 * * *", "Mars/Olympus", "1h")]}}});
    devices
        .patch("pi-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let events: Api<Event> = Api::all(client.clone());
    let note = eventually(
        "an InvalidMaintenanceWindows event on the Device",
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("InvalidMaintenanceWindows")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pi-1")
                })
                .and_then(|e| e.note.clone())
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
                    )
                })
        },
    )
    .await;
    assert!(
        note.contains(
            "spec.maintenance.windows[0].timeZone: \"Mars/Olympus\" is not an IANA time zone"
        ),
        "{note}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        key_windows(&env, "pi-1", "kiosk").await.unwrap(),
        [("0 4 * * *".to_string(), "UTC".to_string(), 3600)]
    );

    // A bad cron on the Deployment: a condition naming the field, the keys
    // as they were.
    let patch = json!({"spec": {"rollout": {"maintenanceWindows": [window("0 25 * * *", "Europe/Paris", "2h")]}}});
    api.patch("kiosk", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let v = deployment_where(&api, "kiosk", "a condition naming the field", |v| {
        v["status"]["observedGeneration"] == 2
            && v["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["status"] == "True"
                        && c["message"].as_str().is_some_and(|m| {
                            m.starts_with("spec.rollout.maintenanceWindows[0].at: \"0 25 * * *\"")
                        })
                })
            })
    })
    .await;
    let degraded = condition(&v, "Degraded").unwrap();
    assert_eq!(degraded["reason"], "InvalidSpec", "{degraded}");
    assert_eq!(
        key_windows(&env, "pi-2", "kiosk").await.unwrap(),
        [("0 2 * * *".to_string(), "Europe/Paris".to_string(), 7200)]
    );
    assert_eq!(
        key_windows(&env, "pi-1", "kiosk").await.unwrap(),
        [("0 4 * * *".to_string(), "UTC".to_string(), 3600)]
    );

    controller.abort();
    watch.abort();
}
