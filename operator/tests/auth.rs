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

#[test]
fn nkey_and_password_identities_connect_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.path().join("operator.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{\n  users = [\n    {{ nkey: \"{}\" }}\n    {{ user: ops, password: s3cret }}\n  ]\n}}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let Some(server) = testkit::NatsServer::start_with(testkit::NatsOptions {
        config_file: Some(conf),
        ..Default::default()
    }) else {
        return;
    };
    let url = server.url();
    let seed = seed_file.to_str().unwrap();

    let out = cli(&["init", "--nats-url", &url, "--nats-nkey", seed]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "status",
        "--nats-url",
        &url,
        "--nats-user",
        "ops",
        "--nats-password",
        "s3cret",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for bad in [
        vec!["status", "--nats-url", &url],
        vec![
            "status",
            "--nats-url",
            &url,
            "--nats-user",
            "ops",
            "--nats-password",
            "wrong",
        ],
    ] {
        let out = cli(&bad);
        assert!(!out.status.success(), "{bad:?} connected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot connect to NATS"), "{err}");
    }
    let other = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, other.seed().unwrap()).unwrap();
    let out = cli(&[
        "status",
        "--nats-url",
        &url,
        "--nats-nkey",
        other_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "an unknown nkey connected");

    let missing = dir.path().join("missing.nk");
    let out = cli(&[
        "status",
        "--nats-url",
        &url,
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
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            p("server.pem"),
            p("server-key.pem"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let Some(server) = testkit::NatsServer::start_with(testkit::NatsOptions {
        config_file: Some(conf),
        scheme: Some("tls"),
        ..Default::default()
    }) else {
        return;
    };
    let url = server.url();
    let (ca, cert, key) = (p("ca.pem"), p("client.pem"), p("client-key.pem"));
    let out = cli(&[
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a client certificate the server refuses; without the CA the
    // client refuses the server.
    for bad in [
        vec!["status", "--nats-url", &url, "--nats-tls-ca", &ca],
        vec![
            "status",
            "--nats-url",
            &url,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ],
    ] {
        let out = cli(&bad);
        assert!(!out.status.success(), "{bad:?} connected");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to NATS"));
    }
}
