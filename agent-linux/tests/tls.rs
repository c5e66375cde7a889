//! The agent over TLS to a TLS-only nats-server, with certificates made in
//! the test: server authentication with a CA only, and mutual TLS.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use async_nats_device as async_nats;
use common::*;
use protocol::Phase;

async fn run_over_tls(name: &str, mutual: bool) {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    if testkit::tls::certificates(d).is_none() {
        return;
    }
    let Some(env) = tls_env(name, d, mutual).await else {
        return;
    };
    let p = |f: &str| d.join(f);
    assert!(env.nats.url().starts_with("tls://"));
    write_tls_config(
        &env,
        &p("ca.pem"),
        mutual.then(|| (p("client.pem"), p("client-key.pem"))),
    );
    let _agent = env.spawn_agent_with_config();
    env.put("web", 1, vec![sleeper("c", "1")]).await;
    env.wait_status("web", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    env.delete("web").await;
    env.wait_status("web", "Removed", |s| s.phase == Phase::Removed)
        .await;
}

/// A TLS-only nats-server with the certificates in `d` (made by
/// `testkit::tls::certificates`), asking for client certificates when
/// `verify`, and the test's admin connection to it.
async fn tls_env(name: &str, d: &Path, verify: bool) -> Option<Env> {
    let p = |f: &str| d.join(f);
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n}}\n",
            p("server.pem").display(),
            p("server-key.pem").display(),
            p("ca.pem").display()
        ),
    )
    .unwrap();
    let nats = testkit::NatsServer::start_with(testkit::NatsOptions {
        config_file: Some(conf),
        scheme: Some("tls"),
        ..Default::default()
    })?;
    let mut admin = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(p("ca.pem"));
    if verify {
        admin = admin.add_client_certificate(p("client.pem"), p("client-key.pem"));
    }
    Env::start_on(unique(name), nats, admin).await
}

fn write_tls_config(
    env: &Env,
    ca: &Path,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
) {
    env.write_config();
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str(&format!("[nats.tls]\nca = \"{}\"\n", ca.display()));
    if let Some((cert, key)) = client {
        text.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    std::fs::write(env.config_path(), text).unwrap();
}

#[tokio::test]
async fn agent_over_tls_with_a_ca() {
    run_over_tls("tlsca", false).await;
}

#[tokio::test]
async fn agent_over_mutual_tls() {
    run_over_tls("mtls", true).await;
}

/// A TLS-only server that wants a client certificate does not let an agent
/// without one in: nothing is applied, and the agent says why.
#[tokio::test]
async fn mutual_tls_refuses_an_agent_without_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    if testkit::tls::certificates(d).is_none() {
        return;
    }
    let Some(env) = tls_env("mtlsno", d, true).await else {
        return;
    };
    let p = |f: &str| d.join(f);
    write_tls_config(&env, &p("ca.pem"), None);
    let log = env.dir.path().join("agent.log");
    let _agent = env.spawn_agent_logged(&env.config_path(), &log);
    env.put("web", 1, vec![sleeper("c", "1")]).await;
    // The agent keeps trying; it must never get the value.
    let tried = testkit::wait_until(WAIT, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("nats") && !l.contains("connected"))
            .count()
            >= 2
    });
    assert!(
        tried,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(env.status("web").await.is_none());
    assert!(env.containers().is_empty());
}
