//! The desired-state bucket republishes what it stores to `$KVR`, where
//! agents watch; a bucket made before that is upgraded by `init` where the
//! server allows it, and refused with the fix where it does not. A
//! heartbeat bucket made with the first release's 1 KiB values is raised.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use futures::StreamExt;
use operator::nats::{KvWrite, Nats, NatsError, stream_config};
use protocol::buckets::{DESIRED_STATE, DEVICE_HEARTBEAT};

#[tokio::test]
async fn stored_values_and_deletes_are_republished_with_their_sequence() {
    let Some(server) = testkit::NatsServer::start() else {
        return;
    };
    let nats = Nats::from_client(async_nats::connect(server.url()).await.unwrap());
    nats.ensure_buckets(true).await.unwrap();
    let mut live = nats
        .client()
        .subscribe("$KVR.desired-state.pi-1.>")
        .await
        .unwrap();
    nats.client().flush().await.unwrap();
    let put = KvWrite::Put {
        key: "pi-1.web".into(),
        value: "v1".into(),
        owner: "default/web".into(),
    };
    let del = KvWrite::Delete {
        key: "pi-1.web".into(),
    };
    let other = KvWrite::Put {
        key: "pi-2.web".into(),
        value: "v1".into(),
        owner: "default/web".into(),
    };
    nats.write("desired-state", vec![put, other]).await.unwrap();
    nats.write("desired-state", vec![del]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("a republished message")
            .unwrap();
        let h = m.headers.clone().unwrap_or_default();
        let header = |k: &str| h.get(k).map(|v| v.as_str().to_string());
        got.push((
            m.subject.to_string(),
            header("Nats-Sequence"),
            header("KV-Operation"),
            m.payload.to_vec(),
        ));
    }
    assert_eq!(
        got,
        [
            (
                "$KVR.desired-state.pi-1.web".to_string(),
                Some("1".to_string()),
                None,
                b"v1".to_vec()
            ),
            (
                "$KVR.desired-state.pi-1.web".to_string(),
                Some("3".to_string()),
                Some("DEL".to_string()),
                vec![]
            ),
        ]
    );
}

#[tokio::test]
async fn a_bucket_without_republish_is_upgraded_by_init_or_refused_with_the_fix() {
    let Some(server) = testkit::NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut old = stream_config(&DESIRED_STATE);
    old.republish = None;
    // An admin's own setting, which adding RePublish must keep.
    old.description = Some("tuned by the admin".into());
    js.create_stream(old).await.unwrap();
    let nats = Nats::from_client(client);

    // The operator alone (no stream edits) stops instead of writing where
    // agents do not listen.
    let e = nats.ensure_buckets(false).await.unwrap_err();
    assert!(matches!(e, NatsError::BucketOutdated { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("$KVR.desired-state.>") && text.contains("iot-operator init"),
        "{text}"
    );

    // `init` adds it where the server can (2.10+); 2.9 refuses (10052) and
    // the error says what to do.
    let v29 = server.version().contains("v2.9.");
    match nats.ensure_buckets(true).await {
        Ok(changed) => {
            assert!(!v29, "2.9 cannot add RePublish, yet init succeeded");
            assert!(
                changed.contains(&"desired-state (RePublish added)".to_string()),
                "{changed:?}"
            );
            let mut s = js.get_stream("KV_desired-state").await.unwrap();
            let c = s.info().await.unwrap().config.clone();
            assert_eq!(c.republish, stream_config(&DESIRED_STATE).republish);
            assert_eq!(c.description.as_deref(), Some("tuned by the admin"));
            assert_eq!(
                nats.ensure_buckets(false).await.unwrap(),
                Vec::<String>::new()
            );
        }
        Err(e) => {
            assert!(v29, "init failed on {}: {e}", server.version());
            assert!(matches!(e, NatsError::BucketOutdated { .. }), "{e}");
            assert!(e.to_string().contains("upgrade the server"), "{e}");
        }
    }
}

#[tokio::test]
async fn init_raises_the_first_release_heartbeat_limit_and_the_controller_runs_on() {
    let Some(server) = testkit::NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for spec in protocol::buckets::ALL {
        let mut config = stream_config(&spec);
        if spec == DEVICE_HEARTBEAT {
            config.max_message_size = 1024;
        }
        js.create_stream(config).await.unwrap();
    }
    let nats = Nats::from_client(client);
    let big = vec![b'x'; 2000];
    let refused = js
        .publish("$KV.device-heartbeat.pi-1", big.clone().into())
        .await
        .unwrap()
        .await;
    assert!(refused.is_err(), "a 2000-byte value fits a 1 KiB bucket");

    // Without stream edits the controller starts anyway (a warning).
    assert_eq!(
        nats.ensure_buckets(false).await.unwrap(),
        Vec::<String>::new()
    );
    // `init` raises it, on 2.9 as on current servers.
    let changed = nats.ensure_buckets(true).await.unwrap();
    assert!(
        changed.contains(&"device-heartbeat (max value raised to 4096 bytes)".to_string()),
        "{changed:?}"
    );
    js.publish("$KV.device-heartbeat.pi-1", big.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        nats.ensure_buckets(false).await.unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn testkit_creates_the_buckets_the_operator_creates() {
    for spec in protocol::buckets::ALL {
        assert_eq!(
            testkit::stream_config(&spec),
            stream_config(&spec),
            "{}: testkit's stream differs from the operator's",
            spec.name
        );
    }
}
