//! `cargo xtask creds --jwt`: a fleet in NATS decentralized (JWT) mode.
//!
//! One NATS operator signs two accounts: `IOT` (JetStream enabled), which
//! holds every identity of the fleet, and `SYS`, the system account. `IOT`
//! signs admin and operator users itself, with the same permissions as the
//! nkey mode; devices are signed by a scoped signing key of `IOT` whose
//! template confines a user named `<id>` to that device's subjects, so a
//! device JWT carries no permissions of its own. The server trusts the
//! operator and learns the accounts from `resolver_preload`; a revoked
//! device's user key sits in the `IOT` account's `revocations`.
//!
//! Files in DIR: `nats-operator.nk`, `account.nk`, `device-signer.nk`,
//! `system-account.nk` (seeds, 0600), the JWTs `nats-operator.jwt`,
//! `account.jwt`, `system-account.jwt`, one `.creds` file (0600) per user,
//! a sealing key `<id>.xk` (0600) per device, and `nats-server.conf`. A JWT whose claims would not change is kept as it
//! is, so re-running changes nothing and adding a device touches no other
//! file but the server configuration.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protocol::keys::validate_device_id;
use protocol::permissions::{
    device_publish, device_subscribe, operator_publish, operator_subscribe,
};
use serde_json::{Map, Value, json};

use super::{ADMIN, Fleet, OPERATOR, ensure_seed, revoke_sealing_key, sealing_keys, write_atomic};
use crate::jwt;

/// Marks a JWT-mode DIR: the NATS operator's seed.
pub const OPERATOR_SEED: &str = "nats-operator.nk";
/// Name of the fleet's account.
pub const ACCOUNT_NAME: &str = "IOT";
/// Role of the scoped signing key that signs device users.
pub const DEVICE_ROLE: &str = "device";
/// Stands for the user's name (its device id) in the scoped template.
/// nats-server 2.9 expands it only as a whole subject token, which is how
/// `protocol::permissions` places the device id.
const NAME: &str = "{{name()}}";

/// Creates missing identities, applies revocations, re-signs what changed
/// and rewrites the server configuration.
pub fn generate(dir: &Path, add: &[String], revoke: &[String]) -> Result<Fleet> {
    let operator = ensure_seed(&dir.join(OPERATOR_SEED), nkeys::KeyPair::new_operator)?;
    let account = ensure_seed(&dir.join("account.nk"), nkeys::KeyPair::new_account)?;
    let signer = ensure_seed(&dir.join("device-signer.nk"), nkeys::KeyPair::new_account)?;
    let system = ensure_seed(&dir.join("system-account.nk"), nkeys::KeyPair::new_account)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();

    let account_jwt = dir.join("account.jwt");
    let mut revocations = match fs::read_to_string(&account_jwt) {
        Ok(t) => jwt::decode(&t)
            .with_context(|| format!("{} is not a valid JWT", account_jwt.display()))?
            .get("nats")
            .and_then(|n| n.get("revocations"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        Err(_) => Map::new(),
    };
    for id in revoke {
        let file = dir.join(format!("{id}.creds"));
        let (_, seed) = read_creds(&file)
            .with_context(|| format!("cannot revoke {id:?}: {} is unusable", file.display()))?;
        let public = keypair(&seed, &file)?.public_key();
        revocations.insert(public, json!(now));
        let revoked = dir.join("revoked");
        fs::create_dir_all(&revoked)?;
        fs::rename(&file, revoked.join(format!("{id}.creds")))
            .with_context(|| format!("moving {} to {}", file.display(), revoked.display()))?;
        revoke_sealing_key(dir, id)?;
    }

    let system_jwt = keep_or_sign(
        &dir.join("system-account.jwt"),
        &json!({"sub": system.public_key(), "name": "SYS",
                "nats": {"type": "account", "version": 2, "limits": unlimited(false)}}),
        &operator,
        now,
        0o644,
    )?;
    let operator_jwt = keep_or_sign(
        &dir.join("nats-operator.jwt"),
        &json!({"sub": operator.public_key(), "name": "iot-fleet",
                "nats": {"type": "operator", "version": 2,
                         "system_account": system.public_key()}}),
        &operator,
        now,
        0o644,
    )?;
    let account_jwt = keep_or_sign(
        &account_jwt,
        &account_claims(&account, &signer, revocations),
        &operator,
        now,
        0o644,
    )?;

    let users = [ADMIN, OPERATOR]
        .into_iter()
        .map(String::from)
        .chain(add.iter().cloned());
    for name in users {
        let device = name != ADMIN && name != OPERATOR;
        user_creds(dir, &name, device, &account, &signer, now)?;
    }

    let mut devices = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".creds"))
            && id != ADMIN
            && id != OPERATOR
            && validate_device_id(id).is_ok()
        {
            // Re-sign only if the claims a device should carry changed.
            user_creds(dir, id, true, &account, &signer, now)?;
            devices.push(id.to_string());
        }
    }
    devices.sort();

    let conf = server_config(
        &operator_jwt,
        &[
            (ACCOUNT_NAME, account.public_key(), account_jwt),
            ("SYS", system.public_key(), system_jwt),
        ],
        &system.public_key(),
    );
    // Every sealing key made (and, in `prepare`, checked) first: the
    // server's authorization changes only once the run can complete.
    let sealing_keys = sealing_keys(dir, &devices)?;
    write_atomic(&dir.join("nats-server.conf"), conf.as_bytes(), 0o644)?;
    Ok(Fleet {
        devices,
        sealing_keys,
    })
}

/// NATS limits: -1 is "no limit". `jetstream` adds unlimited JetStream
/// limits, without which JetStream stays off for the account.
fn unlimited(jetstream: bool) -> Value {
    let mut l = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
                       "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    if jetstream && let Value::Object(m) = &mut l {
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            m.insert(k.into(), json!(-1));
        }
    }
    l
}

/// The `IOT` account: JetStream on, the device-scoped signing key, and the
/// revoked user keys (public key -> Unix time; JWTs issued up to then are
/// refused).
fn account_claims(
    account: &nkeys::KeyPair,
    signer: &nkeys::KeyPair,
    revocations: Map<String, Value>,
) -> Value {
    let mut nats = json!({
        "type": "account",
        "version": 2,
        "limits": unlimited(true),
        "signing_keys": [{
            "kind": "user_scope",
            "key": signer.public_key(),
            "role": DEVICE_ROLE,
            "template": {
                "pub": {"allow": device_publish(NAME)},
                "sub": {"allow": device_subscribe(NAME)},
                "subs": -1, "data": -1, "payload": -1
            }
        }]
    });
    if !revocations.is_empty() {
        nats["revocations"] = Value::Object(revocations);
    }
    json!({"sub": account.public_key(), "name": ACCOUNT_NAME, "nats": nats})
}

/// Writes `<name>.creds` unless it already holds a JWT with these claims.
/// The user's key is kept when the file exists, so re-running never
/// changes an identity. Devices are signed by the scoped key and carry no
/// permissions (the server refuses scoped users that do); admin and the
/// operator are signed by the account with explicit permissions.
fn user_creds(
    dir: &Path,
    name: &str,
    device: bool,
    account: &nkeys::KeyPair,
    signer: &nkeys::KeyPair,
    now: u64,
) -> Result<()> {
    let file = dir.join(format!("{name}.creds"));
    let existing = if file.exists() {
        super::check_private(&file)?;
        Some(read_creds(&file)?)
    } else {
        None
    };
    let (user, seed) = match &existing {
        Some((_, seed)) => (keypair(seed, &file)?, seed.clone()),
        None => {
            let kp = nkeys::KeyPair::new_user();
            let seed = kp.seed().map_err(|e| anyhow::anyhow!("nkey seed: {e}"))?;
            (kp, seed)
        }
    };
    let mut nats = json!({"type": "user", "version": 2});
    let issuer = if device {
        nats["issuer_account"] = json!(account.public_key());
        signer
    } else {
        for k in ["subs", "data", "payload"] {
            nats[k] = json!(-1);
        }
        if name == OPERATOR {
            nats["pub"] = json!({"allow": operator_publish()});
            nats["sub"] = json!({"allow": operator_subscribe()});
        }
        account
    };
    let claims = json!({"sub": user.public_key(), "name": name, "nats": nats});
    if let Some((token, _)) = &existing
        && same_claims(token, &claims, issuer)
    {
        return Ok(());
    }
    let token = jwt::encode(&claims, issuer, now)?;
    write_atomic(&file, jwt::creds_file(&token, &seed).as_bytes(), 0o600)
}

/// Keeps the JWT in `path` if it verifies, was issued by `issuer` and says
/// `claims`; otherwise signs a new one there. Returns the JWT in force.
fn keep_or_sign(
    path: &Path,
    claims: &Value,
    issuer: &nkeys::KeyPair,
    now: u64,
    mode: u32,
) -> Result<String> {
    if let Ok(token) = fs::read_to_string(path)
        && same_claims(&token, claims, issuer)
    {
        return Ok(token.trim().to_string());
    }
    let token = jwt::encode(claims, issuer, now)?;
    write_atomic(path, format!("{token}\n").as_bytes(), mode)?;
    Ok(token)
}

/// Whether `token` verifies, names `issuer` and carries `claims` (apart from
/// the issue time and id).
fn same_claims(token: &str, claims: &Value, issuer: &nkeys::KeyPair) -> bool {
    let Ok(mut got) = jwt::decode(token) else {
        return false;
    };
    let iss = got.remove("iss");
    got.remove("iat");
    got.remove("jti");
    iss.as_ref().and_then(Value::as_str) == Some(issuer.public_key().as_str())
        && Value::Object(got) == *claims
}

fn read_creds(file: &Path) -> Result<(String, String)> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    jwt::parse_creds(&text).with_context(|| format!("{} is not a .creds file", file.display()))
}

fn keypair(seed: &str, file: &Path) -> Result<nkeys::KeyPair> {
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| anyhow::anyhow!("{} holds a bad nkey seed: {e}", file.display()))
}

/// The server configuration: trust the operator, and preload `accounts`
/// (name, public key, JWT) into the memory resolver. No `accounts` or
/// `authorization` block, so the no-auth shape of CVE-2023-47090 cannot
/// arise.
fn server_config(operator_jwt: &str, accounts: &[(&str, String, String)], system: &str) -> String {
    let preload: BTreeMap<_, _> = accounts
        .iter()
        .map(|(name, key, token)| (key, format!("  # {name}\n  {key}: \"{token}\"\n")))
        .collect();
    format!(
        "# Generated by `cargo xtask creds --jwt`; regenerate instead of editing.\n\
         # Decentralized JWT mode: users present a JWT signed by the {ACCOUNT_NAME} account,\n\
         # which the operator below signed; the server holds no secret.\n\
         operator: \"{operator_jwt}\"\n\
         system_account: {system}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n{}}}\n",
        preload.into_values().collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_the_device_only_as_a_whole_token() {
        let (account, signer) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_account());
        let c = account_claims(&account, &signer, Map::new());
        let nats = &c["nats"];
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            assert_eq!(nats["limits"][k], -1, "{k}");
        }
        assert!(nats.get("revocations").is_none());
        let scope = &nats["signing_keys"][0];
        assert_eq!(scope["key"], signer.public_key());
        let template = &scope["template"];
        let subjects: Vec<&str> = ["pub", "sub"]
            .iter()
            .flat_map(|k| template[k]["allow"].as_array().unwrap())
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(
            subjects.len(),
            device_publish("x").len() + device_subscribe("x").len()
        );
        for s in &subjects {
            // nats-server 2.9 expands `{{name()}}` only as a whole token.
            assert!(s.split('.').all(|t| t == NAME || !t.contains('{')), "{s}");
        }
        // Everything but the flow-control replies names the device.
        let named = subjects.iter().filter(|s| s.split('.').any(|t| t == NAME));
        assert_eq!(named.count(), subjects.len() - 1, "{subjects:?}");
    }

    #[test]
    fn an_unchanged_jwt_is_kept_and_a_changed_one_re_signed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jwt");
        let issuer = nkeys::KeyPair::new_operator();
        let claims = json!({"sub": "X", "nats": {"type": "operator", "version": 2}});
        let first = keep_or_sign(&path, &claims, &issuer, 1, 0o644).unwrap();
        assert_eq!(
            keep_or_sign(&path, &claims, &issuer, 2, 0o644).unwrap(),
            first
        );
        let other = json!({"sub": "Y", "nats": {"type": "operator", "version": 2}});
        let second = keep_or_sign(&path, &other, &issuer, 3, 0o644).unwrap();
        assert_ne!(second, first);
        assert_eq!(jwt::decode(&second).unwrap()["iat"], 3);
        // Another issuer's key means re-signing too.
        let third = keep_or_sign(&path, &other, &nkeys::KeyPair::new_operator(), 4, 0o644);
        assert_ne!(third.unwrap(), second);
    }
}
