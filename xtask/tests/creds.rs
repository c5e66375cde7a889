//! `cargo xtask creds`: the layout and modes of DIR, idempotence, adding and
//! revoking devices, and the generated configuration on a real nats-server
//! (admin alone creates buckets; a revoked device is shut out by a reload).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Every seed file and its contents.
fn seeds(dir: &Path) -> BTreeMap<String, String> {
    files_ending(dir, ".nk")
}

fn public(seed: &str) -> String {
    nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key()
}

/// Every sealing key file (`<id>.xk`) in DIR, checked: one curve seed line
/// and a newline, mode 0600. By name, with its contents.
fn sealing_keys(dir: &Path) -> BTreeMap<String, String> {
    let keys = files_ending(dir, ".xk");
    for (name, seed) in &keys {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        assert!(
            seed.starts_with("SX") && seed.ends_with('\n') && seed.lines().count() == 1,
            "{name} is not one curve seed line: {seed:?}"
        );
        nkeys::XKey::from_seed(seed.trim()).unwrap();
    }
    keys
}

fn sealing_public(seed: &str) -> String {
    nkeys::XKey::from_seed(seed.trim()).unwrap().public_key()
}

#[test]
fn layout_modes_idempotence_add_and_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let out = creds(&dir, &["--device", "pi-1", "--device", "pi-2"]);
    assert!(out.status.success());

    assert_eq!(mode(&dir), 0o700);
    let first = seeds(&dir);
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        ["admin.nk", "operator.nk", "pi-1.nk", "pi-2.nk"]
    );
    for (name, seed) in &first {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        assert!(seed.starts_with("SU"), "{name} is not a user nkey seed");
    }
    let conf = std::fs::read_to_string(dir.join("nats-server.conf")).unwrap();
    assert!(!conf.contains("authorization"), "{conf}");
    for seed in first.values() {
        assert!(conf.contains(&public(seed)), "{conf}");
        assert!(
            !conf.contains(seed.trim()),
            "a seed leaked into the server config"
        );
    }
    assert!(conf.contains("\"_INBOX.pi-1.>\"") && conf.contains("\"_INBOX.pi-2.>\""));

    // Each device has a sealing key; its public key is printed, its seed
    // is nowhere else.
    let sealing = sealing_keys(&dir);
    assert_eq!(
        sealing.keys().cloned().collect::<Vec<_>>(),
        ["pi-1.xk", "pi-2.xk"]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (id, seed) in [("pi-1", &sealing["pi-1.xk"]), ("pi-2", &sealing["pi-2.xk"])] {
        let key = sealing_public(seed);
        assert!(key.starts_with('X'), "{key}");
        assert!(
            stdout.contains(&format!("{id}: sealing key {key}\n")),
            "{stdout}"
        );
        assert!(!stdout.contains(seed.trim()) && !conf.contains(seed.trim()));
    }
    assert_ne!(sealing["pi-1.xk"], sealing["pi-2.xk"]);

    // Idempotent: a second run changes nothing.
    assert!(
        creds(&dir, &["--device", "pi-1", "--device", "pi-2"])
            .status
            .success()
    );
    assert_eq!(seeds(&dir), first);
    assert_eq!(sealing_keys(&dir), sealing);
    assert_eq!(
        std::fs::read_to_string(dir.join("nats-server.conf")).unwrap(),
        conf
    );

    // Adding a device keeps every other key.
    assert!(creds(&dir, &["--device", "pi-3"]).status.success());
    let after = seeds(&dir);
    for (name, seed) in &first {
        assert_eq!(after.get(name), Some(seed), "{name} changed");
    }
    assert!(after.contains_key("pi-3.nk"));
    let mut sealing_after = sealing_keys(&dir);
    assert!(sealing_after.remove("pi-3.xk").is_some());
    assert_eq!(sealing_after, sealing);
    let conf = std::fs::read_to_string(dir.join("nats-server.conf")).unwrap();
    assert!(conf.contains(&public(&after["pi-3.nk"])));
    assert!(conf.contains(&public(&first["pi-1.nk"])));

    // Revoking moves the seed aside and drops the device from the config.
    assert!(creds(&dir, &["--revoke", "pi-2"]).status.success());
    assert!(!dir.join("pi-2.nk").exists());
    let moved = dir.join("revoked/pi-2.nk");
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), first["pi-2.nk"]);
    assert!(!dir.join("pi-2.xk").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("revoked/pi-2.xk")).unwrap(),
        sealing["pi-2.xk"]
    );
    assert_eq!(mode(&dir.join("revoked/pi-2.xk")), 0o600);
    let conf = std::fs::read_to_string(dir.join("nats-server.conf")).unwrap();
    assert!(!conf.contains(&public(&first["pi-2.nk"])), "{conf}");
    assert!(!conf.contains("pi-2"), "{conf}");
    assert!(conf.contains(&public(&first["pi-1.nk"])));
    assert!(conf.contains(&public(&after["pi-3.nk"])));

    // A device from before sealing keys gets one on the next run.
    std::fs::remove_file(dir.join("pi-3.xk")).unwrap();
    assert!(creds(&dir, &[]).status.success());
    let recreated = sealing_keys(&dir);
    assert_eq!(
        recreated.keys().cloned().collect::<Vec<_>>(),
        ["pi-1.xk", "pi-3.xk"]
    );
    assert_eq!(recreated["pi-1.xk"], sealing["pi-1.xk"]);

    // A sealing key others can read is refused, with the fix.
    // It stops the run before the server's authorization changes: a
    // device added meanwhile is not let in half made.
    std::fs::set_permissions(dir.join("pi-1.xk"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf_before = std::fs::read_to_string(dir.join("nats-server.conf")).unwrap();
    let out = creds(&dir, &["--device", "pi-4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pi-1.xk") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("nats-server.conf")).unwrap(),
        conf_before,
        "the server's configuration changed though the run failed"
    );
    // A revocation too stops before moving anything: B's files stay, and
    // the same command works once the key is fixed.
    let out = creds(&dir, &["--revoke", "pi-3"]);
    assert!(!out.status.success());
    assert!(dir.join("pi-3.nk").exists() && dir.join("pi-3.xk").exists());
    assert!(!dir.join("revoked/pi-3.nk").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("nats-server.conf")).unwrap(),
        conf_before
    );
    std::fs::set_permissions(dir.join("pi-1.xk"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A seed others can read is refused, with the fix.
    std::fs::set_permissions(dir.join("pi-1.nk"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = creds(&dir, &["--device", "pi-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn bad_ids_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        vec!["--device", "pi.1"],
        vec!["--device", "a*"],
        vec!["--device", "admin"],
        vec!["--device", "operator"],
        vec!["--revoke", "never-made"],
    ] {
        let out = creds(tmp.path(), &bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[tokio::test]
async fn generated_config_on_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let Some(server) = fleet_server(&dir, &["--device", "pi-1", "--device", "pi-2"]) else {
        return;
    };
    let url = server.url();
    let seed = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.nk")))
            .unwrap()
            .trim()
            .to_string()
    };
    let connect = |seed: String| {
        let url = url.clone();
        async move {
            async_nats::ConnectOptions::new()
                .nkey(seed)
                .request_timeout(Some(Duration::from_secs(2)))
                .connect(url.as_str())
                .await
        }
    };

    // No credentials, or an unknown key: no connection.
    assert!(async_nats::connect(url.as_str()).await.is_err());
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    assert!(connect(stranger).await.is_err());

    // The operator identity cannot create buckets; the admin can.
    let operator = connect(seed("operator")).await.unwrap();
    assert!(testkit::create_buckets(&operator).await.is_err());
    let admin = connect(seed("admin")).await.unwrap();
    testkit::create_buckets(&admin).await.unwrap();

    // Revoke pi-2 and reload: pi-2 is shut out, pi-1 still connects.
    let pi2 = connect(seed("pi-2")).await.unwrap();
    drop(pi2);
    assert!(creds(&dir, &["--revoke", "pi-2"]).status.success());
    server.reload();
    let revoked = std::fs::read_to_string(dir.join("revoked/pi-2.nk")).unwrap();
    let shut_out = testkit::wait_until_async(Duration::from_secs(30), || {
        let c = connect(revoked.trim().to_string());
        async move { c.await.is_err() }
    })
    .await;
    assert!(shut_out, "revoked pi-2 still connects after the reload");
    assert!(connect(seed("pi-1")).await.is_ok());
    // JetStream survived the reload (the buckets are still there).
    let js = async_nats::jetstream::new(admin);
    assert!(js.get_stream("KV_desired-state").await.is_ok());
}
