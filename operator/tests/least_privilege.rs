//! The operator under its own identity from the generated configuration
//! (`protocol::permissions::nats_server_config`, nkeys): `init` needs the
//! admin identity, and apply / status / delete / the reconcile's KV access
//! and status watches all work as the operator. Sizes over the bounds are
//! refused by the operator and, for a raw put, by the bucket.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use operator::status::StatusCache;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::Phase;
use protocol::permissions::{OPERATOR_INBOX_PREFIX, Role, nats_server_config};

fn identity(dir: &Path, name: &str) -> (std::path::PathBuf, String, String) {
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().unwrap();
    let file = dir.join(format!("{name}.nk"));
    std::fs::write(&file, format!("{seed}\n")).unwrap();
    (file, seed, kp.public_key())
}

#[tokio::test]
async fn operator_flow_under_its_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_file, _, admin_pub) = identity(d, "admin");
    let (op_file, op_seed, op_pub) = identity(d, "operator");
    let (_, dev_seed, dev_pub) = identity(d, "demo-device");
    let conf = nats_server_config(&[
        (Role::Admin, &admin_pub),
        (Role::Operator, &op_pub),
        (Role::Device("demo-device"), &dev_pub),
    ]);
    let Some(server) = testkit::NatsServer::start_with_config(&conf, Default::default()) else {
        return;
    };
    eprintln!("{}", server.version());
    let url = server.url();

    // The operator identity cannot create the buckets; the admin can.
    let out = cli(&url, Some(&op_file), &["init"]);
    assert!(
        !out.status.success(),
        "the operator identity created buckets"
    );
    let out = ok(&cli(&url, Some(&admin_file), &["init"]));
    assert!(out.contains("created buckets"), "{out}");

    // apply / status / delete as the operator.
    let hello = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/hello.yaml"
    ));
    let file = hello.to_str().unwrap();
    let out = ok(&cli(&url, Some(&op_file), &["apply", "-f", file]));
    assert!(out.contains("1 written"), "{out}");
    let out = ok(&cli(&url, Some(&op_file), &["apply", "-f", file]));
    assert!(out.contains("1 unchanged"), "{out}");

    // The device reports under its own identity; the operator reads it.
    let device = async_nats::ConnectOptions::new()
        .nkey(dev_seed)
        .custom_inbox_prefix(protocol::permissions::device_inbox_prefix("demo-device"))
        .connect(url.as_str())
        .await
        .unwrap();
    let plan = operator::plan(&operator::manifest::read(hello).unwrap().remove(0)).unwrap();
    put_status(
        &device,
        "demo-device",
        "hello-web",
        plan.revision,
        Phase::Running,
        "fine",
    )
    .await;
    put_heartbeat(&device, "demo-device").await;
    let out = ok(&cli(&url, Some(&op_file), &["status", "hello-web"]));
    assert!(out.contains("Running"), "{out}");

    // The controller's KV access and status watch as the operator.
    let client = async_nats::ConnectOptions::new()
        .nkey(op_seed)
        .custom_inbox_prefix(OPERATOR_INBOX_PREFIX)
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(url.as_str())
        .await
        .unwrap();
    let nats = operator::nats::Nats::from_client(client.clone());
    assert!(nats.ensure_buckets(false).await.unwrap().is_empty());
    let (cache, _changes) = StatusCache::new(Duration::from_secs(90));
    cache.load(&nats).await.unwrap();
    assert!(cache.report("demo-device", "hello-web").is_some());
    tokio::spawn(cache.clone().watch(nats.clone()));
    let (kube, api) = MockApiServer::start();
    let ctx = Arc::new(Context::new(
        kube,
        nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let mut dep = with_finalizer(deployment(
        "default",
        "web2",
        &["demo-device"],
        "PodmanV0",
        podman("localhost/iot-hello:1"),
    ));
    dep.metadata.uid = Some("u2".into());
    api.insert(&dep);
    reconcile(Arc::new(dep), ctx).await.unwrap();
    let rec = desired(&nats, "demo-device", "web2").await.unwrap();
    assert!(!rec.deleted);
    // A fresh report reaches the watching cache.
    put_status(&device, "demo-device", "web2", 7, Phase::Running, "").await;
    let seen = testkit::wait_until_async(Duration::from_secs(30), || {
        let hit = cache
            .report("demo-device", "web2")
            .is_some_and(|r| r.status.revision == 7);
        async move { hit }
    })
    .await;
    assert!(seen, "the operator's status watch did not see the report");

    let out = ok(&cli(&url, Some(&op_file), &["delete", "-f", file]));
    assert!(out.contains("removed from 1 device"), "{out}");

    // Decommissioning (a deleted Device) as the operator: its desired
    // state, status and heartbeat keys get delete markers ...
    let done = operator::inventory::decommission(&nats, "demo-device")
        .await
        .unwrap();
    assert_eq!((done.status, done.heartbeat), (2, true), "{done:?}");
    for (bucket, filter) in [
        ("device-status", "demo-device.>"),
        ("device-heartbeat", "demo-device"),
        ("desired-state", "demo-device.>"),
    ] {
        let recs = nats.scan(bucket, filter).await.unwrap();
        assert!(recs.iter().all(|r| r.deleted), "{bucket}: {recs:?}");
    }
    // ... but purging those buckets or deleting their messages stays
    // denied (the buckets also refuse it).
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = errors.clone();
    let watcher = async_nats::ConnectOptions::new()
        .nkey(
            std::fs::read_to_string(&op_file)
                .unwrap()
                .trim()
                .to_string(),
        )
        .custom_inbox_prefix(OPERATOR_INBOX_PREFIX)
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url.as_str())
        .await
        .unwrap();
    for subject in [
        "$JS.API.STREAM.PURGE.KV_device-status",
        "$JS.API.STREAM.MSG.DELETE.KV_device-heartbeat",
    ] {
        let r = watcher.request(subject, "{}".into()).await;
        assert!(r.is_err(), "{subject} was allowed: {r:?}");
        let denied = testkit::wait_until_async(Duration::from_secs(10), || {
            let hit =
                errors.lock().unwrap().iter().any(|e| {
                    e.to_lowercase().contains("permissions violation") && e.contains(subject)
                });
            async move { hit }
        })
        .await;
        assert!(
            denied,
            "{subject}: no permissions violation: {:?}",
            errors.lock().unwrap()
        );
    }

    // Over the bounds: the operator refuses a score with too many
    // containers and writes nothing ...
    let containers: Vec<String> = (0..=protocol::limits::MAX_CONTAINERS)
        .map(|i| format!("{{name: c{i}, image: localhost/x:1}}"))
        .collect();
    let big = d.join("big.yaml");
    std::fs::write(
        &big,
        format!(
            "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\nmetadata: {{name: big}}\nspec:\n  targetDevices: [demo-device]\n  score:\n    type: PodmanV0\n    data: {{containers: [{}]}}\n",
            containers.join(", ")
        ),
    )
    .unwrap();
    let out = cli(
        &url,
        Some(&op_file),
        &["apply", "-f", big.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at most 8") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(desired(&nats, "demo-device", "big").await.is_none());
    // ... and the bucket refuses a raw value over max_value_size, even from
    // an identity that may write there.
    let js = async_nats::jetstream::new(client);
    let raw = vec![0u8; protocol::limits::MAX_VALUE_SIZE + 1];
    let r = match js
        .publish("$KV.desired-state.demo-device.raw", raw.into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let e = r.expect_err("the bucket took a value over max_value_size");
    assert!(e.to_lowercase().contains("message size"), "{e}");
}
