//! The device permission matrix of the contract (`protocol::permissions`),
//! checked with a raw client against a real server, whatever the
//! authentication (nkeys in the generated configuration, or a JWT fleet's
//! `.creds` file): what device A may do works, and everything else is
//! refused with a "Permissions Violation" naming the subject.
//!
//! The subjects, stream names and headers below (`$KV.desired-state.<id>.>`,
//! `$KVR...`, `Nats-Rollup`) are spelled out by hand on purpose, not taken
//! from `protocol::keys`/`protocol::kv`: this matrix is an independent
//! spelling of the wire contract, so a change there that moved a device's
//! subjects would fail here instead of passing along with the code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};

use crate::wait_until_async;

/// Server errors a client was sent, as text.
pub type ServerErrors = Arc<Mutex<Vec<String>>>;

/// Connects with `opts` (the device's credentials) under device `device`'s
/// inbox prefix, recording the server errors it is sent.
pub async fn device_client(
    url: &str,
    device: &str,
    opts: async_nats::ConnectOptions,
) -> Result<(async_nats::Client, ServerErrors), async_nats::ConnectError> {
    let errors = ServerErrors::default();
    let sink = errors.clone();
    let client = opts
        .custom_inbox_prefix(protocol::permissions::device_inbox_prefix(device))
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().expect("errors lock").push(e.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, errors))
}

/// Waits for a "Permissions Violation" naming `subject_part`; panics
/// (naming `what`) if none arrives.
pub async fn expect_violation(errors: &ServerErrors, what: &str, subject_part: &str) {
    let seen = wait_until_async(Duration::from_secs(10), || {
        let hit = errors.lock().expect("errors lock").iter().any(|e| {
            e.to_ascii_lowercase().contains("permissions violation") && e.contains(subject_part)
        });
        async move { hit }
    })
    .await;
    assert!(
        seen,
        "{what}: no permissions violation naming {subject_part:?}; server errors: {:?}",
        errors.lock().expect("errors lock")
    );
}

fn ordered(filter: &str, name: &str, client: &async_nats::Client) -> push::OrderedConfig {
    push::OrderedConfig {
        name: Some(name.to_string()),
        deliver_subject: client.new_inbox(),
        filter_subject: filter.to_string(),
        deliver_policy: DeliverPolicy::LastPerSubject,
        ..Default::default()
    }
}

/// Publishes to a stream subject and waits for its ack: `Err` (as text)
/// when the server denies or the stream refuses it.
async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: &'static str,
) -> Result<(), String> {
    match js
        .publish_with_headers(subject, headers, payload.into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the matrix as device `a` (`client` and `errors` from
/// [`device_client`]). Expects the buckets to exist (created with the
/// contract's settings), `desired-state` to hold `<a>.web` and `<b>.web`,
/// and `device-status` to hold `<b>.web` = `[1, 2, 3]`, which `status` (a
/// handle with read access) checks after the rollup attempt. Panics on the
/// first check that fails.
///
/// A's own direct get, watch, live subscription and status write work;
/// watching B's keys, the whole bucket (bucket-wide filter and unfiltered
/// create), direct get of B's key, get by sequence, STREAM.INFO, writing
/// B's status, creating a bucket and subscribing to B's (or everyone's)
/// republished keys are each denied; a rollup on A's own status key is
/// refused by the stream and B's status survives.
pub async fn device_matrix(
    client: &async_nats::Client,
    errors: &ServerErrors,
    a: &str,
    b: &str,
    status: &jetstream::kv::Store,
) {
    let js = jetstream::new(client.clone());
    let ds = js
        .get_stream_no_info("KV_desired-state")
        .await
        .expect("stream handle without info");

    // What A may do works (so the denials below are not a broken client).
    let own = ds
        .direct_get_last_for_subject(format!("$KV.desired-state.{a}.web"))
        .await;
    assert!(own.is_ok(), "own direct get: {own:?}");
    let own = ds
        .create_consumer(ordered(
            &format!("$KV.desired-state.{a}.>"),
            "own-watch",
            client,
        ))
        .await;
    assert!(own.is_ok(), "own watch: {:?}", own.err());
    let own = publish_acked(
        &js,
        format!("$KV.device-status.{a}.probe"),
        Default::default(),
        "x",
    )
    .await;
    assert!(own.is_ok(), "own status write: {own:?}");
    let _own_live = client
        .subscribe(format!("$KVR.desired-state.{a}.>"))
        .await
        .expect("own live subscription");
    client.flush().await.expect("flush");
    assert!(
        errors.lock().expect("errors lock").is_empty(),
        "{:?}",
        errors.lock().expect("errors lock")
    );

    // 1. Watching B's keys.
    let r = ds
        .create_consumer(ordered(&format!("$KV.desired-state.{b}.>"), "w-b", client))
        .await;
    assert!(r.is_err(), "watched B's keys");
    expect_violation(errors, "watch B", &format!("$KV.desired-state.{b}.>")).await;
    // 2. Watching the whole bucket: with a bucket-wide filter, and with no
    // filter (the unfiltered create subject).
    let r = ds
        .create_consumer(ordered("$KV.desired-state.>", "w-all", client))
        .await;
    assert!(r.is_err(), "watched the whole bucket");
    expect_violation(errors, "watch all", "w-all.$KV.desired-state.>").await;
    let r = ds.create_consumer(ordered("", "w-none", client)).await;
    assert!(r.is_err(), "unfiltered consumer create");
    expect_violation(
        errors,
        "unfiltered",
        "$JS.API.CONSUMER.CREATE.KV_desired-state.w-none",
    )
    .await;
    // 3. Direct get of B's key.
    let r = ds
        .direct_get_last_for_subject(format!("$KV.desired-state.{b}.web"))
        .await;
    assert!(r.is_err(), "read B's key");
    expect_violation(
        errors,
        "direct get B",
        &format!("$KV.desired-state.{b}.web"),
    )
    .await;
    // 4. Get by sequence.
    let r = ds.direct_get(1).await;
    assert!(r.is_err(), "get by sequence");
    expect_violation(
        errors,
        "get by sequence",
        "\"$JS.API.DIRECT.GET.KV_desired-state\"",
    )
    .await;
    // 5. STREAM.INFO (lists every key with a subjects filter).
    let r = js.get_stream("KV_desired-state").await;
    assert!(r.is_err(), "stream info");
    expect_violation(
        errors,
        "stream info",
        "$JS.API.STREAM.INFO.KV_desired-state",
    )
    .await;
    // 6. Writing B's status.
    let r = publish_acked(
        &js,
        format!("$KV.device-status.{b}.web"),
        Default::default(),
        "forged",
    )
    .await;
    assert!(r.is_err(), "forged B's status");
    expect_violation(
        errors,
        "write B's status",
        &format!("$KV.device-status.{b}.web"),
    )
    .await;
    // 7. Creating a bucket.
    let r = js
        .create_stream(jetstream::stream::Config {
            name: "KV_evil".into(),
            subjects: vec!["$KV.evil.>".into()],
            ..Default::default()
        })
        .await;
    assert!(r.is_err(), "created a bucket");
    expect_violation(errors, "create bucket", "$JS.API.STREAM.CREATE.KV_evil").await;
    // 8. Listening to B's republished desired state, or to every device's.
    let _live_b = client
        .subscribe(format!("$KVR.desired-state.{b}.>"))
        .await
        .expect("subscribe is sent");
    expect_violation(errors, "live B", &format!("$KVR.desired-state.{b}.>")).await;
    let _live_all = client.subscribe("$KVR.>").await.expect("subscribe is sent");
    expect_violation(errors, "live all", "\"$KVR.>\"").await;
    // 9. A rollup on its own status key: allowed subject, refused by the
    // stream (created with rollups disallowed), and B's status survives.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "all");
    let r = publish_acked(&js, format!("$KV.device-status.{a}.web"), headers, "wipe").await;
    let e = r.expect_err("a rollup was accepted");
    assert!(e.to_ascii_lowercase().contains("rollup"), "{e}");
    let kept = status
        .get(format!("{b}.web"))
        .await
        .expect("read B's status");
    assert_eq!(
        kept.as_deref(),
        Some(&[1u8, 2, 3][..]),
        "B's status was wiped"
    );
}

/// Runs the workspace's `cargo xtask creds --out DIR ARGS...` (built on
/// demand by the cargo running the tests), so tests of other crates use the
/// files a user would get, e.g. a JWT fleet's `.creds`. Panics, with the
/// output, if it fails.
pub fn xtask_creds(dir: &std::path::Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--manifest-path",
            manifest,
            "-p",
            "xtask",
            "--",
        ])
        .args(["creds", "--out"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo xtask creds {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
