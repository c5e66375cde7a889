//! Least privilege against a real nats-server started with the generated
//! configuration (`protocol::permissions::nats_server_config`, nkeys, as
//! `cargo xtask creds` writes it): device A runs from its own keys, every
//! other access is denied and reported as a permission violation, the agent
//! names a denial in its log, and a revoked device is shut out while the
//! others continue. Runs on whichever server `NATS_SERVER_BIN` names (CI
//! runs it on 2.9.10 and 2.15).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use async_nats_device as async_nats;
use common::*;
use protocol::Phase;
use protocol::permissions::{Role, device_inbox_prefix, nats_server_config};

struct Identity {
    seed_file: PathBuf,
    public: String,
}

fn identity(dir: &Path, name: &str) -> Identity {
    let kp = nkeys::KeyPair::new_user();
    let seed_file = dir.join(format!("{name}.nk"));
    std::fs::write(&seed_file, format!("{}\n", kp.seed().unwrap())).unwrap();
    Identity {
        seed_file,
        public: kp.public_key(),
    }
}

fn seed(id: &Identity) -> String {
    std::fs::read_to_string(&id.seed_file)
        .unwrap()
        .trim()
        .to_string()
}

/// Writes the server configuration for admin, operator and `devices`.
fn write_conf(conf: &Path, admin: &Identity, operator: &Identity, devices: &[(&str, &Identity)]) {
    let mut users = vec![
        (Role::Admin, admin.public.as_str()),
        (Role::Operator, operator.public.as_str()),
    ];
    for (id, key) in devices {
        users.push((Role::Device(id), key.public.as_str()));
    }
    std::fs::write(conf, nats_server_config(&users)).unwrap();
}

/// Points the agent configuration at `device_id` with the nkey `seed_file`.
fn agent_config(env: &Env, path: &Path, device_id: &str, seed_file: &Path, state: &str) {
    env.write_config();
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace(
            &format!("device_id = \"{}\"", env.device),
            &format!("device_id = \"{device_id}\""),
        )
        .replace(
            &env.state_dir().display().to_string(),
            &env.dir.path().join(state).display().to_string(),
        )
        .replace(
            "type = \"none\"",
            &format!("type = \"nkey\"\nseed_file = \"{}\"", seed_file.display()),
        );
    std::fs::write(path, text).unwrap();
}

/// A raw client with a device's identity and inbox prefix, recording the
/// server errors it is sent.
async fn device_client(
    url: &str,
    device: &str,
    id: &Identity,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .nkey(seed(id))
        .custom_inbox_prefix(device_inbox_prefix(device))
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, errors)
}

/// Waits for a "Permissions Violation" naming `subject_part`.
async fn expect_violation(errors: &Arc<Mutex<Vec<String>>>, what: &str, subject_part: &str) {
    let seen = testkit::wait_until_async(Duration::from_secs(10), || {
        let hit = errors.lock().unwrap().iter().any(|e| {
            e.to_ascii_lowercase().contains("permissions violation") && e.contains(subject_part)
        });
        async move { hit }
    })
    .await;
    assert!(
        seen,
        "{what}: no permissions violation naming {subject_part:?}; server errors: {:?}",
        errors.lock().unwrap()
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

#[tokio::test]
async fn device_permission_matrix_revocation_and_reporting() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    let (admin, operator) = (identity(k, "admin"), identity(k, "operator"));
    let a = unique("pa");
    let b = unique("pb");
    let (ka, kb) = (identity(k, &a), identity(k, &b));
    let conf = k.join("nats-server.conf");
    write_conf(&conf, &admin, &operator, &[(&a, &ka), (&b, &kb)]);

    // Reloadable: JetStream in the configuration, not only by flags.
    let Some(nats) = testkit::NatsServer::start_reloadable(testkit::NatsOptions {
        config_file: Some(conf.clone()),
        ..Default::default()
    }) else {
        return;
    };
    let Some(env) = Env::start_on(
        a.clone(),
        nats,
        async_nats::ConnectOptions::new().nkey(seed(&admin)),
    )
    .await
    else {
        return;
    };
    let url = env.nats.url();

    // Device A's agent, under A's identity, applies A's key.
    let cfg_a = env.dir.path().join("a.toml");
    agent_config(&env, &cfg_a, &a, &ka.seed_file, "state-a");
    let _agent_a = env.spawn_agent_logged(&cfg_a, &env.dir.path().join("a.log"));
    env.put("web", 1, vec![sleeper("c", "1")]).await;
    env.wait_status("web", "Running", |s| s.phase == Phase::Running)
        .await;
    // Device B's key and status exist too (written by the admin).
    let b_key = format!("{b}.web");
    env.desired
        .put(
            &b_key,
            encode_desired("web", 1, vec![sleeper("c", "b")]).into(),
        )
        .await
        .unwrap();
    env.status.put(&b_key, vec![1, 2, 3].into()).await.unwrap();

    let (client, errors) = device_client(&url, &a, &ka).await;
    let js = jetstream::new(client.clone());
    let ds = js.get_stream_no_info("KV_desired-state").await.unwrap();

    // What A may do works (so the denials below are not a broken client).
    let own = ds
        .direct_get_last_for_subject(format!("$KV.desired-state.{a}.web"))
        .await;
    assert!(own.is_ok(), "own direct get: {own:?}");
    let own = ds
        .create_consumer(ordered(
            &format!("$KV.desired-state.{a}.>"),
            "own-watch",
            &client,
        ))
        .await;
    assert!(own.is_ok(), "own watch: {:?}", own.err());
    js.publish(format!("$KV.device-status.{a}.probe"), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );

    // 1. Watching B's keys.
    let r = ds
        .create_consumer(ordered(&format!("$KV.desired-state.{b}.>"), "w-b", &client))
        .await;
    assert!(r.is_err(), "watched B's keys");
    expect_violation(&errors, "watch B", &format!("$KV.desired-state.{b}.>")).await;
    // 2. Watching the whole bucket: with a bucket-wide filter, and with no
    // filter (the unfiltered create subject).
    let r = ds
        .create_consumer(ordered("$KV.desired-state.>", "w-all", &client))
        .await;
    assert!(r.is_err(), "watched the whole bucket");
    expect_violation(&errors, "watch all", "w-all.$KV.desired-state.>").await;
    let r = ds.create_consumer(ordered("", "w-none", &client)).await;
    assert!(r.is_err(), "unfiltered consumer create");
    expect_violation(
        &errors,
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
        &errors,
        "direct get B",
        &format!("$KV.desired-state.{b}.web"),
    )
    .await;
    // 4. Get by sequence.
    let r = ds.direct_get(1).await;
    assert!(r.is_err(), "get by sequence");
    expect_violation(
        &errors,
        "get by sequence",
        "\"$JS.API.DIRECT.GET.KV_desired-state\"",
    )
    .await;
    // 5. STREAM.INFO (lists every key with a subjects filter).
    let r = js.get_stream("KV_desired-state").await;
    assert!(r.is_err(), "stream info");
    expect_violation(
        &errors,
        "stream info",
        "$JS.API.STREAM.INFO.KV_desired-state",
    )
    .await;
    // 6. Writing B's status.
    let r = match js
        .publish(format!("$KV.device-status.{b}.web"), "forged".into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(r.is_err(), "forged B's status");
    expect_violation(
        &errors,
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
    expect_violation(&errors, "create bucket", "$JS.API.STREAM.CREATE.KV_evil").await;
    // 8. A rollup on its own status key: allowed subject, refused by the
    // stream (created with rollups disallowed), and B's status survives.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "all");
    let r = match js
        .publish_with_headers(format!("$KV.device-status.{a}.web"), headers, "wipe".into())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let e = r.expect_err("a rollup was accepted");
    assert!(e.to_ascii_lowercase().contains("rollup"), "{e}");
    let kept = env.status.get(&b_key).await.unwrap();
    assert_eq!(
        kept.as_deref(),
        Some(&[1u8, 2, 3][..]),
        "B's status was wiped"
    );

    // The agent names a denial: an agent for device C holding A's key
    // (stolen or mixed-up credentials) says so in its log.
    let c = unique("pc");
    let cfg_c = env.dir.path().join("c.toml");
    let log_c = env.dir.path().join("c.log");
    agent_config(&env, &cfg_c, &c, &ka.seed_file, "state-c");
    let mut agent_c = env.spawn_agent_logged(&cfg_c, &log_c);
    let named = testkit::wait_until(WAIT, || {
        let log = std::fs::read_to_string(&log_c).unwrap_or_default();
        log.lines()
            .any(|l| l.starts_with("ERROR") && l.contains("permission denied") && l.contains(&c))
    });
    agent_c.kill();
    assert!(
        named,
        "the agent did not report the denial:\n{}",
        std::fs::read_to_string(&log_c).unwrap_or_default()
    );

    // Revocation: B connects, then B is dropped from the configuration and
    // the server reloaded; B is shut out, A carries on.
    let (b_client, _) = device_client(&url, &b, &kb).await;
    drop(b_client);
    write_conf(&conf, &admin, &operator, &[(&a, &ka)]);
    env.nats.reload();
    let shut_out = testkit::wait_until_async(WAIT, || async {
        async_nats::ConnectOptions::new()
            .nkey(seed(&kb))
            .connect(url.as_str())
            .await
            .is_err()
    })
    .await;
    assert!(shut_out, "revoked device B still connects");
    let (a_client, _) = device_client(&url, &a, &ka).await;
    drop(a_client);
    env.put("web", 2, vec![sleeper("c", "2")]).await;
    env.wait_status("web", "Running at 2", |s| {
        s.phase == Phase::Running && s.revision == 2
    })
    .await;
}
