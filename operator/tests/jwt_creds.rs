//! The operator CLI on a decentralized JWT fleet, with the files `cargo
//! xtask creds --jwt` writes: `init` is refused under `operator.creds` and
//! works under `admin.creds` (`--nats-creds`); apply / status / delete work
//! under `operator.creds`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::Output;

/// `iot-operator ARGS --nats-url URL --nats-creds CREDS`, with no NATS
/// credentials taken from the caller's environment.
fn run(url: &str, creds: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_iot-operator"))
        .args(args)
        .arg("--nats-url")
        .arg(url)
        .arg("--nats-creds")
        .arg(creds)
        .env_remove("NATS_NKEY")
        .env_remove("NATS_CREDS")
        .output()
        .unwrap()
}

/// Standard output of a run that succeeded; the whole output otherwise.
fn stdout_of_success(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "exit {:?}: {text}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn operator_cli_under_jwt_creds() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    testkit::least_privilege::xtask_creds(&fleet, &["--jwt", "--device", "demo-device"]);
    let Some(server) = testkit::NatsServer::start_with(testkit::NatsOptions {
        config_file: Some(fleet.join("nats-server.conf")),
        ..Default::default()
    }) else {
        return;
    };
    eprintln!("{}", server.version());
    let url = server.url();
    let (admin, operator) = (fleet.join("admin.creds"), fleet.join("operator.creds"));

    let out = run(&url, &operator, &["init"]);
    assert!(
        !out.status.success(),
        "the operator identity created buckets"
    );
    let out = stdout_of_success(run(&url, &admin, &["init"]));
    assert!(out.contains("created buckets"), "{out}");

    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/hello.yaml");
    let out = stdout_of_success(run(&url, &operator, &["apply", "-f", hello]));
    assert!(out.contains("1 written"), "{out}");
    let out = stdout_of_success(run(&url, &operator, &["status", "hello-web"]));
    assert!(out.contains("demo-device"), "{out}");
    let out = stdout_of_success(run(&url, &operator, &["delete", "-f", hello]));
    assert!(out.contains("removed from 1 device"), "{out}");
}
