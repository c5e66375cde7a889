//! `cargo xtask creds --jwt`: decentralized JWT mode. The layout and modes
//! of DIR, the claims it signs (scoped device key with a `{{name()}}`
//! template, JetStream limits on the account), idempotence, adding and
//! revoking devices, and the configuration on a real nats-server: admin
//! alone creates buckets, device A's permission matrix (shared with the
//! nkey mode through `testkit::least_privilege`), the operator's KV access
//! under operator.creds, and a revoked device shut out by a reload while
//! A carries on.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use data_encoding::BASE64URL_NOPAD;
use serde_json::Value;
use testkit::least_privilege;

/// `cargo xtask creds --jwt --out DIR ARGS...`.
fn jwt_creds(dir: &Path, args: &[&str]) -> std::process::Output {
    creds(dir, &[&["--jwt"], args].concat())
}

/// Every file in DIR and its contents.
fn files(dir: &Path) -> BTreeMap<String, String> {
    files_ending(dir, "")
}

/// The claims of a JWT, and a check that the issuer's key signed it.
fn claims(token: &str) -> Value {
    let (signed, sig) = token.trim().rsplit_once('.').unwrap();
    let payload = signed.split('.').nth(1).unwrap();
    let c: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(payload.as_bytes()).unwrap()).unwrap();
    let iss = nkeys::KeyPair::from_public_key(c["iss"].as_str().unwrap()).unwrap();
    iss.verify(
        signed.as_bytes(),
        &BASE64URL_NOPAD.decode(sig.as_bytes()).unwrap(),
    )
    .unwrap();
    c
}

/// The JWT and seed of a `.creds` file.
fn parse_creds(text: &str) -> (String, String) {
    let after = |marker: &str| {
        let mut lines = text.lines();
        lines.find(|l| l.contains(marker)).unwrap();
        lines.next().unwrap().trim().to_string()
    };
    (after("BEGIN NATS USER JWT"), after("BEGIN USER NKEY SEED"))
}

fn public(seed_file: &Path) -> String {
    let seed = std::fs::read_to_string(seed_file).unwrap();
    nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key()
}

#[test]
fn layout_claims_idempotence_add_and_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let out = jwt_creds(&dir, &["--device", "pi-1", "--device", "pi-2"]);
    assert!(out.status.success());
    assert_eq!(mode(&dir), 0o700);
    let first = files(&dir);
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        [
            "account.jwt",
            "account.nk",
            "admin.creds",
            "device-signer.nk",
            "nats-operator.jwt",
            "nats-operator.nk",
            "nats-server.conf",
            "operator.creds",
            "pi-1.creds",
            "pi-1.xk",
            "pi-2.creds",
            "pi-2.xk",
            "system-account.jwt",
            "system-account.nk",
        ]
    );
    for name in first
        .keys()
        .filter(|n| n.ends_with(".nk") || n.ends_with(".creds") || n.ends_with(".xk"))
    {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    // The devices' sealing keys, as in nkey mode; the public key printed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in ["pi-1", "pi-2"] {
        let seed = &first[&format!("{id}.xk")];
        assert!(seed.starts_with("SX") && seed.lines().count() == 1 && seed.ends_with('\n'));
        let key = nkeys::XKey::from_seed(seed.trim()).unwrap().public_key();
        assert!(
            stdout.contains(&format!("{id}: sealing key {key}\n")),
            "{stdout}"
        );
    }

    let operator_key = public(&dir.join("nats-operator.nk"));
    let account_key = public(&dir.join("account.nk"));
    let signer_key = public(&dir.join("device-signer.nk"));
    let op = claims(&first["nats-operator.jwt"]);
    assert_eq!(op["iss"], operator_key, "the operator JWT is self-signed");
    assert_eq!(op["sub"], operator_key);
    assert_eq!(op["nats"]["type"], "operator");
    let acc = claims(&first["account.jwt"]);
    assert_eq!(acc["iss"], operator_key);
    assert_eq!(
        (&acc["sub"], &acc["name"]),
        (&account_key.clone().into(), &"IOT".into())
    );
    assert_eq!(acc["nats"]["version"], 2);
    for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
        assert_eq!(acc["nats"]["limits"][k], -1, "JetStream limit {k}");
    }
    let scope = &acc["nats"]["signing_keys"][0];
    assert_eq!(scope["kind"], "user_scope");
    assert_eq!(scope["key"], signer_key);
    let template = serde_json::to_string(&scope["template"]).unwrap();
    assert!(
        template.contains(
            "\"$JS.API.CONSUMER.CREATE.KV_desired-state.*.$KV.desired-state.{{name()}}.>\""
        ) && template.contains("\"_INBOX.{{name()}}.>\""),
        "{template}"
    );
    assert!(!template.contains("STREAM.INFO"), "{template}");

    // Devices: signed by the scoped key, named by their id, no permissions
    // of their own. Admin and operator: signed by the account itself.
    let (jwt, seed) = parse_creds(&first["pi-1.creds"]);
    let dev = claims(&jwt);
    let user_key = nkeys::KeyPair::from_seed(&seed).unwrap().public_key();
    assert_eq!(
        (&dev["iss"], &dev["sub"]),
        (&signer_key.clone().into(), &user_key.into())
    );
    assert_eq!(dev["name"], "pi-1");
    assert_eq!(dev["nats"]["issuer_account"], account_key);
    assert!(dev["nats"].get("pub").is_none() && dev["nats"].get("sub").is_none());
    let opu = claims(&parse_creds(&first["operator.creds"]).0);
    assert_eq!(opu["iss"], account_key);
    let allowed: Vec<String> = serde_json::from_value(opu["nats"]["pub"]["allow"].clone()).unwrap();
    assert_eq!(allowed, protocol::permissions::operator_publish());
    assert_eq!(
        claims(&parse_creds(&first["admin.creds"]).0)["iss"],
        account_key
    );

    let conf = &first["nats-server.conf"];
    assert!(
        conf.contains("resolver: MEMORY") && conf.contains("resolver_preload"),
        "{conf}"
    );
    assert!(
        !conf.contains("authorization") && !conf.contains("accounts {"),
        "{conf}"
    );
    assert!(conf.contains(first["account.jwt"].trim()));
    for (name, text) in &first {
        if name.ends_with(".nk") || name.ends_with(".creds") || name.ends_with(".xk") {
            let seed = text.lines().find(|l| l.starts_with('S')).unwrap();
            assert!(
                !conf.contains(seed),
                "{name}'s seed leaked into the server config"
            );
        }
    }

    // Idempotent: a second run changes nothing.
    assert!(
        jwt_creds(&dir, &["--device", "pi-1", "--device", "pi-2"])
            .status
            .success()
    );
    assert_eq!(files(&dir), first);

    // Adding a device adds its .creds file and changes nothing else.
    assert!(jwt_creds(&dir, &["--device", "pi-3"]).status.success());
    let mut after = files(&dir);
    assert!(after.remove("pi-3.creds").is_some());
    assert!(after.remove("pi-3.xk").is_some());
    assert_eq!(after, first);

    // Revoking moves the .creds aside and lists its key in the account,
    // re-signed by the operator; nothing else changes.
    let pi2 = nkeys::KeyPair::from_seed(&parse_creds(&first["pi-2.creds"]).1)
        .unwrap()
        .public_key();
    assert!(jwt_creds(&dir, &["--revoke", "pi-2"]).status.success());
    assert!(!dir.join("pi-2.creds").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("revoked/pi-2.creds")).unwrap(),
        first["pi-2.creds"]
    );
    assert!(!dir.join("pi-2.xk").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("revoked/pi-2.xk")).unwrap(),
        first["pi-2.xk"]
    );
    let acc = claims(&std::fs::read_to_string(dir.join("account.jwt")).unwrap());
    assert_eq!(acc["iss"], operator_key);
    assert!(acc["nats"]["revocations"][&pi2].as_u64().is_some(), "{acc}");
    let revoked = files(&dir);
    assert!(revoked["nats-server.conf"].contains(revoked["account.jwt"].trim()));
    for name in [
        "pi-1.creds",
        "pi-1.xk",
        "admin.creds",
        "operator.creds",
        "nats-operator.jwt",
    ] {
        assert_eq!(revoked[name], first[name], "{name} changed");
    }
    // ... and revoking is remembered by later runs.
    assert!(jwt_creds(&dir, &["--device", "pi-4"]).status.success());
    let acc = claims(&std::fs::read_to_string(dir.join("account.jwt")).unwrap());
    assert!(acc["nats"]["revocations"][&pi2].as_u64().is_some(), "{acc}");

    // A .creds file others can read is refused, with the fix.
    std::fs::set_permissions(
        dir.join("pi-1.creds"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = jwt_creds(&dir, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn modes_do_not_mix_and_unknown_devices_are_not_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let jwt = tmp.path().join("jwt");
    assert!(jwt_creds(&jwt, &["--device", "pi-1"]).status.success());
    let out = creds(&jwt, &["--device", "pi-2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("JWT"), "{}", stderr(&out));
    let nk = tmp.path().join("nk");
    assert!(creds(&nk, &["--device", "pi-1"]).status.success());
    let out = jwt_creds(&nk, &["--device", "pi-2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nkey"), "{}", stderr(&out));
    let out = jwt_creds(&jwt, &["--revoke", "never-made"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("never-made"), "{}", stderr(&out));
}

/// Connect options for the identity in `DIR/<name>.creds`.
async fn with_creds(file: PathBuf) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_credentials_file(file)
        .await
        .unwrap()
        .request_timeout(Some(Duration::from_secs(2)))
}

#[tokio::test]
async fn jwt_fleet_on_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let (a, b) = ("dev-a", "dev-b");
    let Some(server) = fleet_server(&dir, &["--jwt", "--device", a, "--device", b]) else {
        return;
    };
    let url = server.url();
    let file = |name: &str| dir.join(format!("{name}.creds"));

    // No credentials, or a user the account did not sign: no connection.
    assert!(async_nats::connect(url.as_str()).await.is_err());
    let stranger = tmp.path().join("stranger.creds");
    let foreign = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let forged = {
        // A well-formed user JWT from an account the operator never signed.
        let (jwt, _) = parse_creds(&std::fs::read_to_string(file(a)).unwrap());
        let (signed, _) = jwt.rsplit_once('.').unwrap();
        let sig = foreign.sign(signed.as_bytes()).unwrap();
        format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
    };
    std::fs::write(
        &stranger,
        format!(
            "-----BEGIN NATS USER JWT-----\n{forged}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    assert!(
        with_creds(stranger)
            .await
            .connect(url.as_str())
            .await
            .is_err()
    );

    // The operator identity cannot create buckets; the admin can.
    let operator = with_creds(file("operator"))
        .await
        .custom_inbox_prefix(protocol::permissions::OPERATOR_INBOX_PREFIX)
        .connect(url.as_str())
        .await
        .unwrap();
    assert!(testkit::create_buckets(&operator).await.is_err());
    let admin = with_creds(file("admin"))
        .await
        .connect(url.as_str())
        .await
        .unwrap();
    testkit::create_buckets(&admin).await.unwrap();

    // The operator writes desired state for both devices and reads it back
    // (put, direct get, key listing, watch), as its reconcile does.
    let js = async_nats::jetstream::new(operator.clone());
    let desired = js.get_key_value("desired-state").await.unwrap();
    for d in [a, b] {
        desired.put(format!("{d}.web"), "v1".into()).await.unwrap();
    }
    assert_eq!(
        desired.get(format!("{a}.web")).await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    let mut watch = desired.watch_with_history(">").await.unwrap();
    use futures::StreamExt as _;
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert!(first.is_some_and(|e| e.is_ok()), "operator watch");
    let admin_js = async_nats::jetstream::new(admin.clone());
    let status = admin_js.get_key_value("device-status").await.unwrap();
    status
        .put(format!("{b}.web"), vec![1, 2, 3].into())
        .await
        .unwrap();

    // Device A under its scoped JWT: the permission matrix.
    let (client, errors) = least_privilege::device_client(&url, a, with_creds(file(a)).await)
        .await
        .unwrap();
    least_privilege::device_matrix(&client, &errors, a, b, &status).await;
    // The operator reads device status (A wrote a probe key).
    let status_op = js.get_key_value("device-status").await.unwrap();
    assert!(status_op.get(format!("{a}.probe")).await.unwrap().is_some());

    // Revoke B (re-sign the account) and reload: B is shut out, A and the
    // operator carry on.
    let (b_client, _) = least_privilege::device_client(&url, b, with_creds(file(b)).await)
        .await
        .unwrap();
    drop(b_client);
    assert!(jwt_creds(&dir, &["--revoke", b]).status.success());
    server.reload();
    let revoked = dir.join(format!("revoked/{b}.creds"));
    let shut_out = testkit::wait_until_async(Duration::from_secs(30), || {
        let revoked = revoked.clone();
        let url = url.clone();
        async move {
            with_creds(revoked)
                .await
                .connect(url.as_str())
                .await
                .is_err()
        }
    })
    .await;
    assert!(shut_out, "revoked {b} still connects after the reload");
    let (a_client, a_errors) = least_privilege::device_client(&url, a, with_creds(file(a)).await)
        .await
        .unwrap();
    let ds = async_nats::jetstream::new(a_client)
        .get_stream_no_info("KV_desired-state")
        .await
        .unwrap();
    desired.put(format!("{a}.web"), "v2".into()).await.unwrap();
    let got = ds
        .direct_get_last_for_subject(format!("$KV.desired-state.{a}.web"))
        .await
        .unwrap();
    assert_eq!(&got.payload[..], b"v2");
    assert!(a_errors.lock().unwrap().is_empty());
    // JetStream survived the reload.
    assert!(admin_js.get_stream("KV_desired-state").await.is_ok());
}
