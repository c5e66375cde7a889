#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use protocol::sealed::{Binding, Purpose, RegistryLogin};
use protocol::{DesiredState, Text};
use sealing::DeviceKey;
use serde_json::json;

use super::*;
use crate::apply::{Plan, plan};
use crate::crd::{Deployment, DeploymentSpec, Rollout, Score};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn score() -> serde_json::Value {
    json!({"containers": [{
        "name": "web",
        "image": "registry.example.com/team/web:1",
        "env": [
            {"name": "MODE", "value": "prod"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        ],
        "volumes": [
            {"mountPath": "/etc/tls", "secret": {"secretName": "tls"}},
            {"mountPath": "/etc/db", "secret": {"secretName": "db", "items": [{"key": "user", "path": "user"}]}},
        ],
    }, {"name": "side", "image": "busybox"}]})
}

fn deployment(data: serde_json::Value, pull: &[&str]) -> Deployment {
    let mut d = Deployment::new(
        "web",
        DeploymentSpec {
            target_devices: vec!["a".into(), "b".into()],
            target_selector: None,
            rollout: Rollout::default(),
            score: Score {
                type_name: "PodmanV1".into(),
                data,
            },
            image_pull_secrets: pull
                .iter()
                .map(|n| ImagePullSecret {
                    name: n.to_string(),
                })
                .collect(),
        },
    );
    d.metadata.namespace = Some("fleet".into());
    d
}

fn secret(name: &str, type_: Option<&str>, rv: &str, data: &[(&str, &str)]) -> Secret {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "fleet", "uid": format!("uid-{name}"), "resourceVersion": rv},
        "type": type_,
        "data": data,
    }))
    .unwrap()
}

fn regcred(rv: &str, host: &str, user: &str, password: &str) -> Secret {
    let config = json!({"auths": {host: {"auth": b64(&format!("{user}:{password}"))}}});
    secret(
        "regcred",
        Some(DOCKER_CONFIG_JSON_TYPE),
        rv,
        &[(DOCKER_CONFIG_JSON_KEY, &config.to_string())],
    )
}

fn store(secrets: Vec<Secret>) -> BTreeMap<String, Secret> {
    secrets
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect()
}

fn all_secrets(rv: &str) -> BTreeMap<String, Secret> {
    store(vec![
        secret(
            "db",
            None,
            rv,
            &[("password", "hunter2"), ("user", "app"), ("unused", "x")],
        ),
        secret(
            "tls",
            Some("kubernetes.io/tls"),
            rv,
            &[("tls.crt", "CERT"), ("tls.key", "KEY")],
        ),
        regcred(rv, "https://registry.example.com/v2/", "robot", "s3cret"),
    ])
}

fn refs_of(d: &Deployment) -> References {
    References::of(plan(d).unwrap().score(), &d.spec.image_pull_secrets)
}

fn resolve_in(
    refs: &References,
    secrets: &BTreeMap<String, Secret>,
    f: Fingerprint,
) -> Result<Resolved, SecretError> {
    resolve_from(refs, "fleet", |n| secrets.get(n), f)
}

#[test]
fn references_are_env_keys_volumes_and_pull_secrets() {
    let refs = refs_of(&deployment(score(), &["regcred"]));
    assert_eq!(
        refs.keys.keys().cloned().collect::<Vec<_>>(),
        [
            ("db".to_string(), "password".to_string()),
            ("db".into(), "user".into())
        ]
    );
    assert_eq!(
        refs.keys[&("db".into(), "password".into())],
        "spec.score.data.containers[0].env[1].valueFrom.secretKeyRef"
    );
    assert_eq!(refs.whole.keys().collect::<Vec<_>>(), ["tls"]);
    assert_eq!(
        refs.registries.iter().collect::<Vec<_>>(),
        ["docker.io", "registry.example.com"]
    );
    assert_eq!(refs.pull_secrets, ["regcred"]);
    assert_eq!(
        refs.secret_names().into_iter().collect::<Vec<_>>(),
        ["db", "regcred", "tls"]
    );
    // Nothing referenced: nothing to resolve.
    let plain = deployment(
        json!({"containers": [{"name": "web", "image": "nginx"}]}),
        &[],
    );
    assert!(refs_of(&plain).is_empty());
}

#[test]
fn resolves_values_whole_secrets_and_the_login_per_registry() {
    let refs = refs_of(&deployment(score(), &["regcred"]));
    let r = resolve_in(&refs, &all_secrets("1"), Fingerprint::Versions).unwrap();
    let got: Vec<(&str, &str, &[u8])> = r
        .values
        .iter()
        .map(|((s, k), v)| (s.as_str(), k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("db", "password", &b"hunter2"[..]),
            ("db", "user", b"app"),
            ("tls", "tls.crt", b"CERT"),
            ("tls", "tls.key", b"KEY"),
        ]
    );
    assert_eq!(
        r.logins.keys().collect::<Vec<_>>(),
        ["registry.example.com"]
    );
    let login = &r.logins["registry.example.com"];
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("robot", "s3cret")
    );
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    // The digest holds no clear text: uids and resourceVersions only.
    let digest = String::from_utf8_lossy(&r.digest).to_string();
    assert!(
        digest.contains("uid-db") && !digest.contains("hunter2"),
        "{digest}"
    );
}

#[test]
fn docker_hub_logins_match_images_without_a_registry() {
    let d = deployment(
        json!({"containers": [{"name": "web", "image": "team/web:1"}]}),
        &["other", "regcred"],
    );
    let refs = refs_of(&d);
    let other = secret(
        "other",
        Some(DOCKER_CONFIG_JSON_TYPE),
        "1",
        &[(
            DOCKER_CONFIG_JSON_KEY,
            &json!({"auths": {"quay.io": {"username": "q", "password": "q"}}}).to_string(),
        )],
    );
    for alias in [
        "docker.io",
        "index.docker.io",
        "https://index.docker.io/v1/",
        "registry-1.docker.io",
    ] {
        let secrets = store(vec![other.clone(), regcred("1", alias, "hub", "pw")]);
        let r = resolve_in(&refs, &secrets, Fingerprint::Versions).unwrap();
        assert_eq!(
            r.logins.keys().collect::<Vec<_>>(),
            ["docker.io"],
            "{alias}"
        );
        assert_eq!(r.logins["docker.io"].username.as_str(), "hub");
        // Only the Secret that gave a login is in the digest.
        let digest = String::from_utf8_lossy(&r.digest).to_string();
        assert!(
            digest.contains("uid-regcred") && !digest.contains("uid-other"),
            "{digest}"
        );
    }
}

#[test]
fn resolution_errors_name_the_secret_and_key_never_a_value() {
    let d = deployment(score(), &["regcred"]);
    let refs = refs_of(&d);
    let check =
        |secrets: BTreeMap<String, Secret>, want: &dyn Fn(&SecretError) -> bool, text: &str| {
            let e = resolve_in(&refs, &secrets, Fingerprint::Versions).unwrap_err();
            assert!(want(&e), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(text), "{msg}");
            for value in ["hunter2", "s3cret", "CERT", "KEY\""] {
                assert!(!msg.contains(value), "{msg}");
            }
        };
    let mut s = all_secrets("1");
    s.remove("db");
    check(
        s,
        &|e| matches!(e, SecretError::NotFound { secret, .. } if secret == "db"),
        "Secret \"db\" (referenced by spec.score.data.containers[0].env[1].valueFrom.secretKeyRef) does not exist in namespace \"fleet\"",
    );
    let mut s = all_secrets("1");
    s.insert("db".into(), secret("db", None, "1", &[("user", "app")]));
    check(
        s,
        &|e| matches!(e, SecretError::KeyMissing { key, .. } if key == "password"),
        "Secret \"db\" has no key \"password\"",
    );
    let mut s = all_secrets("1");
    s.insert(
        "regcred".into(),
        secret("regcred", Some("Opaque"), "1", &[("password", "s3cret")]),
    );
    check(
        s,
        &|e| matches!(e, SecretError::WrongType { found, .. } if found == "Opaque"),
        "Secret \"regcred\" in spec.imagePullSecrets is of type \"Opaque\", not kubernetes.io/dockerconfigjson",
    );
    let broken = |config: &str| {
        let mut s = all_secrets("1");
        s.insert(
            "regcred".into(),
            secret(
                "regcred",
                Some(DOCKER_CONFIG_JSON_TYPE),
                "1",
                &[(DOCKER_CONFIG_JSON_KEY, config)],
            ),
        );
        s
    };
    // A broken entry for the registry the images use fails...
    check(
        broken(r#"{"auths": {"https://Registry.Example.com/v2/": {"auth": "s3cret"}}}"#),
        &|e| matches!(e, SecretError::MalformedDockerConfig { .. }),
        "Secret \"regcred\" in spec.imagePullSecrets: .dockerconfigjson auths.\"https://Registry.Example.com/v2/\".auth is not base64",
    );
    // ...one for a registry they do not use (or an email-only entry) is
    // skipped, as the kubelet skips it.
    let r = resolve_in(
        &refs,
        &broken(
            r#"{"auths": {"r.io": {"auth": "s3cret"}, "mail.io": {"email": "a@b"}, "registry.example.com": {"username": "u", "password": "p"}}}"#,
        ),
        Fingerprint::Versions,
    )
    .unwrap();
    assert_eq!(
        r.logins.keys().collect::<Vec<_>>(),
        ["registry.example.com"]
    );
    let mut s = all_secrets("1");
    let big = "x".repeat(protocol::sealed::MAX_SECRET_SIZE + 1);
    s.insert(
        "db".into(),
        secret("db", None, "1", &[("password", &big), ("user", "u")]),
    );
    check(
        s,
        &|e| matches!(e, SecretError::TooLarge { .. }),
        "key \"password\" of Secret \"db\" is 16385 bytes",
    );
}

#[test]
fn the_digest_follows_resource_versions_and_local_values() {
    let refs = refs_of(&deployment(score(), &["regcred"]));
    let v1 = resolve_in(&refs, &all_secrets("1"), Fingerprint::Versions).unwrap();
    let v1_again = resolve_in(&refs, &all_secrets("1"), Fingerprint::Versions).unwrap();
    let v2 = resolve_in(&refs, &all_secrets("2"), Fingerprint::Versions).unwrap();
    assert_eq!(v1.digest, v1_again.digest);
    assert_ne!(
        v1.digest, v2.digest,
        "a new resourceVersion is a new digest"
    );
    // Local files: the values' HMAC under the CLI's own key, never a
    // plain hash of them (which anyone seeing the revision could test
    // guesses against).
    let key = DigestKey::from_bytes(&[7; 32]);
    let l1 = resolve_in(&refs, &all_secrets("1"), Fingerprint::Values(&key)).unwrap();
    let l2 = resolve_in(&refs, &all_secrets("2"), Fingerprint::Values(&key)).unwrap();
    assert_eq!(l1.digest, l2.digest, "same values");
    assert_eq!(l1.digest.len(), 32);
    let other_key = DigestKey::from_bytes(&[8; 32]);
    let elsewhere = resolve_in(&refs, &all_secrets("1"), Fingerprint::Values(&other_key)).unwrap();
    assert_ne!(
        l1.digest, elsewhere.digest,
        "keyed: another machine's key differs"
    );
    // Not the unkeyed SHA-256 of the values as the old digest made it.
    let mut plain = Vec::new();
    for ((secret, key), value) in &l1.values {
        for b in [&b"value"[..], secret.as_bytes(), key.as_bytes(), value] {
            plain.extend_from_slice(&(b.len() as u64).to_le_bytes());
            plain.extend_from_slice(b);
        }
    }
    for (registry, login) in &l1.logins {
        for b in [
            &b"login"[..],
            registry.as_bytes(),
            login.username.as_bytes(),
            login.password.as_bytes(),
            login.identity_token.as_bytes(),
        ] {
            plain.extend_from_slice(&(b.len() as u64).to_le_bytes());
            plain.extend_from_slice(b);
        }
    }
    assert_ne!(
        l1.digest,
        ring::digest::digest(&ring::digest::SHA256, &plain).as_ref(),
        "a plain hash of the values"
    );
    let mut rotated = all_secrets("1");
    rotated.insert(
        "regcred".into(),
        regcred("1", "registry.example.com", "robot", "n3w"),
    );
    let l3 = resolve_in(&refs, &rotated, Fingerprint::Values(&key)).unwrap();
    assert_ne!(l1.digest, l3.digest, "a rotated password");
    // And the plan's revision follows.
    let d = deployment(score(), &["regcred"]);
    let revision = |r: Resolved| {
        let mut p = plan(&d).unwrap();
        p.set_secrets(r, |_| None).unwrap();
        p.revision
    };
    let base = plan(&d).unwrap().revision;
    let (r1, r2) = (revision(v1), revision(v2));
    assert!(r1 != r2 && r1 != base && r2 != base);
    assert_eq!(revision(v1_again), r1);
}

fn sealed_plan(keys: &BTreeMap<&str, String>) -> (Plan, Deployment) {
    let d = deployment(score(), &["regcred"]);
    let refs = refs_of(&d);
    let resolved = resolve_in(&refs, &all_secrets("1"), Fingerprint::Versions).unwrap();
    let mut p = plan(&d).unwrap();
    p.set_secrets(resolved, |t| keys.get(t).cloned()).unwrap();
    (p, d)
}

/// The next reconcile's plan reuses each device's sealed set through the
/// controller's cache (the same bytes: nothing sealed again, nothing to
/// write), but seals again for a device whose key changed, for a new
/// revision (a rotated Secret), and after the Deployment is forgotten.
#[test]
fn later_plans_reuse_the_cached_sets_while_revision_and_key_hold() {
    let (a, b) = (DeviceKey::generate(), DeviceKey::generate());
    let mut keys = BTreeMap::from([
        ("a", a.public_key().to_string()),
        ("b", b.public_key().to_string()),
    ]);
    let d = deployment(score(), &["regcred"]);
    let refs = refs_of(&d);
    let cache = seal::SealCache::default();
    let planned = |keys: &BTreeMap<&str, String>, version: &str| {
        let resolved = resolve_in(&refs, &all_secrets(version), Fingerprint::Versions).unwrap();
        let mut p = plan(&d).unwrap();
        p.set_secrets_reusing(resolved, |t| keys.get(t).cloned(), &cache)
            .unwrap();
        p
    };
    let first = planned(&keys, "1");
    let second = planned(&keys, "1");
    for device in ["a", "b"] {
        assert_eq!(
            first.value_for(device),
            second.value_for(device),
            "{device} sealed again"
        );
    }
    // B reports a new key: only B is sealed again, to it.
    let b2 = DeviceKey::generate();
    keys.insert("b", b2.public_key().to_string());
    let third = planned(&keys, "1");
    assert_eq!(third.value_for("a"), first.value_for("a"));
    assert_ne!(third.value_for("b"), first.value_for("b"));
    let v: DesiredState<'_> = protocol::wire::decode(third.value_for("b")).unwrap();
    assert!(
        v.secrets
            .values
            .iter()
            .all(|s| s.sealed.recipient.as_str() == b2.public_key())
    );
    // A rotated Secret: a new revision, every device sealed anew.
    let rotated = planned(&keys, "2");
    assert_ne!(rotated.revision, third.revision);
    for device in ["a", "b"] {
        assert_ne!(rotated.value_for(device), third.value_for(device));
    }
    // Forgotten (the Deployment deleted): sealed anew.
    cache.forget(rotated.owner.as_ref());
    let fresh = planned(&keys, "2");
    assert_ne!(fresh.value_for("a"), rotated.value_for("a"));
}

/// Each seal draws a fresh ephemeral key: identical sealed parts before
/// and after a re-encoding mean the values were not sealed again.
#[test]
fn re_encodings_reuse_the_sealed_values() {
    let (a, b) = (DeviceKey::generate(), DeviceKey::generate());
    let keys = BTreeMap::from([
        ("a", a.public_key().to_string()),
        ("b", b.public_key().to_string()),
    ]);
    let (mut p, _) = sealed_plan(&keys);
    let sets = |p: &Plan| {
        ["a", "b"].map(|device| {
            let d: DesiredState<'_> = protocol::wire::decode(p.value_for(device)).unwrap();
            (d.attempt, d.gate.windows.len(), d.secrets.into_owned())
        })
    };
    let before = sets(&p);
    let again = {
        let (q, _) = sealed_plan(&keys);
        sets(&q)
    };
    assert_ne!(before[0].2, again[0].2, "two seals of a value differ");
    p.set_attempt(2).unwrap();
    let window = crate::crd::MaintenanceWindowSpec {
        at: "0 2 * * *".into(),
        time_zone: "UTC".into(),
        duration: "1h".into(),
    };
    p.set_device_windows(|d| (d == "a").then(|| vec![window.clone()]));
    let after = sets(&p);
    for (i, (attempt, windows, set)) in after.iter().enumerate() {
        assert_eq!(*attempt, 2);
        assert_eq!(*windows, usize::from(i == 0));
        assert_eq!(*set, before[i].2, "device {i} sealed again");
    }
    let (mut q, _) = sealed_plan(&keys);
    let q_before = sets(&q);
    q.copy_device_windows(&p).unwrap();
    let q_after = sets(&q);
    assert_eq!(q_after[0].1, 1);
    for i in 0..2 {
        assert_eq!(
            q_after[i].2, q_before[i].2,
            "copy_device_windows sealed again"
        );
    }
}

#[test]
fn each_device_gets_values_only_its_key_opens() {
    let (a, b) = (DeviceKey::generate(), DeviceKey::generate());
    let keys = BTreeMap::from([
        ("a", a.public_key().to_string()),
        ("b", b.public_key().to_string()),
    ]);
    let (p, _) = sealed_plan(&keys);
    assert!(p.has_secrets() && p.unsealed.is_empty());
    for (device, key, other) in [("a", &a, &b), ("b", &b, &a)] {
        let value = p.value_for(device);
        assert_eq!(value[0], 5);
        assert!(!value.windows(7).any(|w| w == b"hunter2"));
        let desired: DesiredState<'_> = protocol::wire::decode(value).unwrap();
        assert_eq!(desired.revision, p.revision);
        let v = desired.secrets.value_for("db", "password").unwrap();
        let binding = Binding {
            device: Text::borrowed(device),
            deployment: Text::borrowed("web"),
            revision: p.revision,
            purpose: Purpose::Value {
                secret: Text::borrowed("db"),
                key: Text::borrowed("password"),
            },
        };
        assert_eq!(&key.open(&v.sealed, &binding).unwrap()[..], b"hunter2");
        assert!(
            other.open(&v.sealed, &binding).is_err(),
            "{device}'s value opens with another key"
        );
        let mut relabelled = v.sealed.clone();
        relabelled.recipient = Text::owned(other.public_key().to_string());
        assert!(other.open(&relabelled, &binding).is_err());
        // Every key of the whole Secret, and the registry login.
        assert!(desired.secrets.value_for("tls", "tls.key").is_some());
        assert_eq!(desired.secrets.values.len(), 4);
        let pull = desired.secrets.pull_for("registry.example.com").unwrap();
        let login = key
            .open(
                &pull.sealed,
                &Binding {
                    purpose: Purpose::Pull {
                        registry: Text::borrowed("registry.example.com"),
                    },
                    ..binding.clone()
                },
            )
            .unwrap();
        let login: RegistryLogin<'_> = postcard::from_bytes(&login).unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("robot", "s3cret")
        );
    }
}

#[test]
fn a_device_without_a_sealing_key_is_held_with_what_to_do() {
    let a = DeviceKey::generate();
    let keys = BTreeMap::from([("a", a.public_key().to_string())]);
    let (p, _) = sealed_plan(&keys);
    assert_eq!(p.unsealed.keys().collect::<Vec<_>>(), ["b"]);
    assert!(
        p.unsealed["b"].contains("reports no sealing key"),
        "{}",
        p.unsealed["b"]
    );
    assert!(
        p.unsealed["b"].contains("set [secrets] key_file"),
        "{}",
        p.unsealed["b"]
    );
    let held = crate::targeting::capabilities::held_back(&p, |_| None);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["b"]);
    // A key that is not a curve key: held too, saying why.
    let keys = BTreeMap::from([("a", a.public_key().to_string()), ("b", "UABC".to_string())]);
    let (p, _) = sealed_plan(&keys);
    assert!(
        p.unsealed["b"].contains("cannot be sealed"),
        "{}",
        p.unsealed["b"]
    );
}

#[test]
fn a_value_sealed_again_is_equivalent_until_the_key_changes() {
    let (a, b) = (DeviceKey::generate(), DeviceKey::generate());
    let keys = BTreeMap::from([
        ("a", a.public_key().to_string()),
        ("b", b.public_key().to_string()),
    ]);
    let (p1, _) = sealed_plan(&keys);
    let (p2, _) = sealed_plan(&keys);
    assert_ne!(p1.value_for("a"), p2.value_for("a"), "fresh ephemeral keys");
    assert!(seal::equivalent(p1.value_for("a"), p2.value_for("a")));
    assert!(
        !seal::equivalent(p1.value_for("a"), p1.value_for("b")),
        "another device's key"
    );
    let rotated = DeviceKey::generate();
    let keys = BTreeMap::from([
        ("a", rotated.public_key().to_string()),
        ("b", b.public_key().to_string()),
    ]);
    let (p3, _) = sealed_plan(&keys);
    assert_eq!(p3.revision, p1.revision, "a new key is not a new revision");
    assert!(!seal::equivalent(p1.value_for("a"), p3.value_for("a")));
    // Values without sealed parts compare as bytes.
    let plain = plan(&deployment(
        json!({"containers": [{"name": "w", "image": "nginx"}]}),
        &[],
    ))
    .unwrap();
    assert!(seal::equivalent(&plain.value, &plain.value));
    assert!(!seal::equivalent(&plain.value, p1.value_for("a")));
}

#[test]
fn nothing_referenced_leaves_the_values_byte_identical() {
    let d = deployment(
        json!({"containers": [{"name": "w", "image": "nginx"}]}),
        &[],
    );
    let before = plan(&d).unwrap();
    let refs = refs_of(&d);
    let r = resolve_in(&refs, &BTreeMap::new(), Fingerprint::Versions).unwrap();
    assert!(r.is_empty() && r.digest.is_empty());
    let mut after = plan(&d).unwrap();
    after
        .set_secrets(r, |_| Some(DeviceKey::generate().public_key().to_string()))
        .unwrap();
    assert_eq!(after, before);
    assert!(!after.has_secrets());
    // Pull secrets with no login for the images' registries seal nothing:
    // the same value and revision as without them.
    let d = deployment(
        json!({"containers": [{"name": "w", "image": "nginx"}]}),
        &["regcred"],
    );
    let refs = refs_of(&d);
    let secrets = store(vec![regcred("1", "quay.io", "u", "p")]);
    let r = resolve_in(&refs, &secrets, Fingerprint::Versions).unwrap();
    assert!(r.is_empty());
    let mut p = plan(&d).unwrap();
    p.set_secrets(r, |_| None).unwrap();
    assert_eq!(p.value, before.value);
    assert_eq!(p.revision, before.revision);
}

#[test]
fn local_files_and_directories_of_secret_manifests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2}\ndata:\n  user: YXBw\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: tls, namespace: other}\nstringData: {tls.crt: OTHER}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tls.json"),
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "fleet"}, "data": {"tls.crt": b64("CERT")}},
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let local = local::LocalSecrets::load(dir.path()).unwrap();
    assert_eq!(local.len(), 3);
    let d = deployment(score(), &[]);
    let r = local
        .resolve("fleet", &refs_of(&d), &DigestKey::from_bytes(&[1; 32]))
        .unwrap();
    let got: Vec<(&str, &str, &[u8])> = r
        .values
        .iter()
        .map(|((s, k), v)| (s.as_str(), k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("db", "password", &b"hunter2"[..]),
            ("db", "user", b"app"),
            ("tls", "tls.crt", b"CERT"),
        ]
    );
    // Another namespace sees the namespace-less db, not fleet's tls.
    let e = local
        .resolve("elsewhere", &refs_of(&d), &DigestKey::from_bytes(&[1; 32]))
        .unwrap_err();
    assert!(
        matches!(e, SecretError::NotFound { ref secret, .. } if secret == "tls"),
        "{e}"
    );
    // Bad files: named, never quoting a value.
    std::fs::write(
        dir.path().join("zz.yaml"),
        "kind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let e = local::LocalSecrets::load(dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("zz.yaml, document 0: is kind \"ConfigMap\""),
        "{e}"
    );
    std::fs::write(
        dir.path().join("zz.yaml"),
        "kind: Secret\nmetadata: {name: x}\ndata: {k: [hunter2]}\n",
    )
    .unwrap();
    let e = local::LocalSecrets::load(dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("zz.yaml, document 0: not a valid Secret manifest"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
}
