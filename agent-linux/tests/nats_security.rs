//! Least privilege against a real nats-server started with the generated
//! configuration (`protocol::permissions::nats_server_config`, nkeys, as
//! `cargo xtask creds` writes it): device A runs from its own keys, every
//! other access is denied and reported as a permission violation, the agent
//! names a denial in its log, and a revoked device is shut out while the
//! others continue. The same in decentralized JWT mode, from the files
//! `cargo xtask creds --jwt` writes (the agent on a `.creds` file). The
//! matrix itself is `testkit::least_privilege`. Runs on whichever server
//! `NATS_SERVER_BIN` names (CI runs it on 2.9.10 and 2.15).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use async_nats_device as async_nats;
use common::*;
use protocol::Phase;
use protocol::permissions::{Role, nats_server_config};
use testkit::least_privilege::{self, ServerErrors};

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

/// `[nats.credentials]` body for the nkey in `seed_file`.
fn nkey(seed_file: &Path) -> String {
    format!("type = \"nkey\"\nseed_file = \"{}\"", seed_file.display())
}

/// Points the agent configuration at `device_id` with `credentials` (the
/// `[nats.credentials]` body).
fn agent_config(env: &Env, path: &Path, device_id: &str, credentials: &str, state: &str) {
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
        .replace("type = \"none\"", credentials);
    std::fs::write(path, text).unwrap();
}

/// A raw client with a device's nkey and inbox prefix, recording the server
/// errors it is sent.
async fn device_client(
    url: &str,
    device: &str,
    id: &Identity,
) -> (async_nats::Client, ServerErrors) {
    let opts = async_nats::ConnectOptions::new().nkey(seed(id));
    least_privilege::device_client(url, device, opts)
        .await
        .unwrap()
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

    let _agent_a = apply_as_a_then_matrix(
        &env,
        &a,
        &b,
        &nkey(&ka.seed_file),
        device_client(&url, &a, &ka).await,
    )
    .await;

    // The agent names a denial: an agent for device C holding A's key
    // (stolen or mixed-up credentials) says so in its log.
    let c = unique("pc");
    let cfg_c = env.dir.path().join("c.toml");
    let log_c = env.dir.path().join("c.log");
    agent_config(&env, &cfg_c, &c, &nkey(&ka.seed_file), "state-c");
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
    let seed_b = seed(&kb);
    shut_out_then_a_carries_on(
        &env,
        async || async_nats::ConnectOptions::new().nkey(seed_b.clone()),
        async_nats::ConnectOptions::new().nkey(seed(&ka)),
    )
    .await;
}

/// Device A's agent, under A's `credentials`, applies A's key; B's key and
/// status exist too (written by the admin); then the permission matrix runs
/// as A on `client`. Returns A's agent.
async fn apply_as_a_then_matrix(
    env: &Env,
    a: &str,
    b: &str,
    credentials: &str,
    (client, errors): (async_nats::Client, ServerErrors),
) -> Agent {
    let cfg_a = env.dir.path().join("a.toml");
    agent_config(env, &cfg_a, a, credentials, "state-a");
    let agent = env.spawn_agent_logged(&cfg_a, &env.dir.path().join("a.log"));
    env.put("web", 1, vec![sleeper("c", "1")]).await;
    env.wait_status("web", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    let b_key = format!("{b}.web");
    env.desired
        .put(
            &b_key,
            encode_desired("web", 1, vec![sleeper("c", "b")]).into(),
        )
        .await
        .unwrap();
    env.status.put(&b_key, vec![1, 2, 3].into()).await.unwrap();
    least_privilege::device_matrix(&client, &errors, a, b, &env.status).await;
    agent
}

/// After B's revocation and a reload: B (connecting with `b_opts`) is shut
/// out, A still connects (with `a_opts`), and A's agent still applies a new
/// revision.
async fn shut_out_then_a_carries_on(
    env: &Env,
    b_opts: impl AsyncFn() -> async_nats::ConnectOptions,
    a_opts: async_nats::ConnectOptions,
) {
    let url = env.nats.url();
    let shut_out = testkit::wait_until_async(WAIT, || async {
        b_opts().await.connect(url.as_str()).await.is_err()
    })
    .await;
    assert!(shut_out, "revoked device B still connects");
    drop(a_opts.connect(url.as_str()).await.unwrap());
    env.put("web", 2, vec![sleeper("c", "2")]).await;
    env.wait_status("web", "Running at 2", |s| {
        s.phase == Phase::Healthy && s.revision == 2
    })
    .await;
}

/// Decentralized JWT mode, with the files `cargo xtask creds --jwt` writes:
/// device A's agent applies its keys with its `.creds` file (credentials
/// type `creds-file`), the permission matrix holds under A's scoped JWT, and
/// revoking B (the account re-signed, the server reloaded) shuts B out while
/// A keeps applying.
#[tokio::test]
async fn jwt_fleet_permission_matrix_and_revocation() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path().join("fleet");
    let (a, b) = (unique("ja"), unique("jb"));
    least_privilege::xtask_creds(&dir, &["--jwt", "--device", &a, "--device", &b]);
    let Some(nats) = testkit::NatsServer::start_reloadable(testkit::NatsOptions {
        config_file: Some(dir.join("nats-server.conf")),
        ..Default::default()
    }) else {
        return;
    };
    let creds = |name: &str| dir.join(format!("{name}.creds"));
    let opts = |file: PathBuf| async move {
        async_nats::ConnectOptions::with_credentials_file(file)
            .await
            .unwrap()
    };
    let Some(env) = Env::start_on(a.clone(), nats, opts(creds("admin")).await).await else {
        return;
    };
    let url = env.nats.url();
    let a_client = least_privilege::device_client(&url, &a, opts(creds(&a)).await)
        .await
        .unwrap();
    let _agent_a = apply_as_a_then_matrix(
        &env,
        &a,
        &b,
        &format!("type = \"creds-file\"\npath = \"{}\"", creds(&a).display()),
        a_client,
    )
    .await;

    let (b_client, _) = least_privilege::device_client(&url, &b, opts(creds(&b)).await)
        .await
        .unwrap();
    drop(b_client);
    least_privilege::xtask_creds(&dir, &["--jwt", "--revoke", &b]);
    env.nats.reload();
    let revoked = dir.join(format!("revoked/{b}.creds"));
    shut_out_then_a_carries_on(&env, || opts(revoked.clone()), opts(creds(&a)).await).await;
}
