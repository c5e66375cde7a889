//! `Nats::scan` against a real nats-server while the keys it reads are
//! being rewritten, as heartbeats and statuses are all the time.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

/// nats-server 2.9 could keep a scan's pending count at 1 while a key of
/// a history-1 bucket was rewritten, so the scan waited for its 30 s
/// timeout (about 5 in 300 here; `iot-operator status` then failed). Each
/// scan must end, with the key's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_ends_while_its_key_is_rewritten() {
    let Some(env) = nats_env().await else { return };
    let js = async_nats::jetstream::new(env.client.clone());
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            let ack = js
                .publish("$KV.device-heartbeat.dev-a", i.to_string().into())
                .await
                .unwrap();
            ack.await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut last = 0;
    for n in 0..300 {
        let records = tokio::time::timeout(
            Duration::from_secs(10),
            env.nats.scan("device-heartbeat", ">"),
        )
        .await
        .unwrap_or_else(|_| panic!("scan {n} did not end"))
        .unwrap();
        assert_eq!(records.len(), 1, "scan {n}: one key");
        let value: u64 = std::str::from_utf8(&records[0].value)
            .unwrap()
            .parse()
            .unwrap();
        assert!(value >= last, "scan {n}: went back from {last} to {value}");
        last = value;
    }
    writer.abort();
}
