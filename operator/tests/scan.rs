//! `Nats::scan` against a real nats-server while the keys it reads are
//! being rewritten, as heartbeats and statuses are all the time.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

/// nats-server 2.9 could keep a scan's pending count at 1 while a key of
/// a history-1 bucket was rewritten, so the scan waited for its 30 s
/// timeout (about 5 in 300 here; `iot-operator status` then failed). Each
/// scan must end, with every key: a key whose snapshot record was replaced
/// before delivery comes later, after other keys' newer records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_ends_with_every_key_while_they_are_rewritten() {
    let Some(env) = nats_env().await else { return };
    let js = async_nats::jetstream::new(env.client.clone());
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            for key in ["dev-a", "dev-b", "dev-c"] {
                let ack = js
                    .publish(format!("$KV.device-heartbeat.{key}"), i.to_string().into())
                    .await
                    .unwrap();
                ack.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Every key written once before the first scan.
    while env.nats.scan("device-heartbeat", ">").await.unwrap().len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut last = 0;
    for n in 0..300 {
        let records = tokio::time::timeout(
            Duration::from_secs(10),
            env.nats.scan("device-heartbeat", ">"),
        )
        .await
        .unwrap_or_else(|_| panic!("scan {n} did not end"))
        .unwrap();
        let mut keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["dev-a", "dev-b", "dev-c"],
            "scan {n}: every key once"
        );
        let a = records.iter().find(|r| r.key == "dev-a").unwrap();
        let value: u64 = std::str::from_utf8(&a.value).unwrap().parse().unwrap();
        assert!(value >= last, "scan {n}: went back from {last} to {value}");
        last = value;
    }
    writer.abort();
}
