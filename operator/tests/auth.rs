//! The NATS credential options against a server that requires them.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .unwrap()
}

/// Runs the CLI; fails, with its stderr, unless it succeeds.
fn succeeds(args: &[&str]) {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the CLI; fails unless it could not connect.
fn refused(args: &[&str]) {
    let out = cli(args);
    assert!(!out.status.success(), "{args:?} connected");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS"), "{args:?}: {err}");
}

#[test]
fn nkey_and_password_identities_connect_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.path().join("operator.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let conf = format!(
        "authorization {{\n  users = [\n    {{ nkey: \"{}\" }}\n    {{ user: ops, password: s3cret }}\n  ]\n}}\n",
        user.public_key()
    );
    let Some(server) = testkit::NatsServer::start_with_config(&conf, Default::default()) else {
        return;
    };
    let url = server.url();
    let url = url.as_str();
    let seed = seed_file.to_str().unwrap();
    let status_as_ops = |password| {
        [
            "status",
            "--nats-url",
            url,
            "--nats-user",
            "ops",
            "--nats-password",
            password,
        ]
    };

    succeeds(&["init", "--nats-url", url, "--nats-nkey", seed]);
    succeeds(&status_as_ops("s3cret"));
    refused(&["status", "--nats-url", url]);
    refused(&status_as_ops("wrong"));
    let other = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, other.seed().unwrap()).unwrap();
    refused(&[
        "status",
        "--nats-url",
        url,
        "--nats-nkey",
        other_file.to_str().unwrap(),
    ]);

    let missing = dir.path().join("missing.nk");
    let out = cli(&[
        "status",
        "--nats-url",
        url,
        "--nats-nkey",
        missing.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read nkey seed") && err.contains("missing.nk"),
        "{err}"
    );
}

#[test]
fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if testkit::tls::certificates(d).is_none() {
        return;
    }
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        p("server.pem"),
        p("server-key.pem"),
        p("ca.pem")
    );
    let tls = testkit::NatsOptions {
        scheme: Some("tls"),
        ..Default::default()
    };
    let Some(server) = testkit::NatsServer::start_with_config(&conf, tls) else {
        return;
    };
    let url = server.url();
    let (ca, cert, key) = (p("ca.pem"), p("client.pem"), p("client-key.pem"));
    succeeds(&[
        "init",
        "--nats-url",
        &url,
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    // Without a client certificate the server refuses; without the CA the
    // client refuses the server.
    refused(&["status", "--nats-url", &url, "--nats-tls-ca", &ca]);
    refused(&[
        "status",
        "--nats-url",
        &url,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
}
