//! The helpers themselves: servers start, serve, restart and clean up.

#![allow(clippy::unwrap_used, missing_docs)]

use testkit::{NatsServer, PodmanService, create_buckets};

#[tokio::test]
async fn nats_starts_creates_buckets_and_restarts_with_its_store() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    create_buckets(&client).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.publish("$KV.desired-state.dev1.web", "v1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(client);
    server.restart();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("KV_desired-state").await.unwrap();
    let msg = stream
        .direct_get_last_for_subject("$KV.desired-state.dev1.web")
        .await
        .unwrap();
    assert_eq!(&msg.payload[..], b"v1");
}

#[test]
fn podman_service_answers_and_runs_the_busybox_image() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    podman.ensure_busybox_image("localhost/iot-test-busybox:1");
    let out = podman.run(&[
        "--url",
        &podman.uri(),
        "run",
        "--rm",
        "localhost/iot-test-busybox:1",
        "echo",
        "hi",
    ]);
    assert_eq!(out.trim(), "hi");
}
