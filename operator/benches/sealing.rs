//! What sealing Secrets per device costs the operator at fleet scale: one
//! Deployment with a registry login and two Secret values, targeting N
//! devices that each report their own key.
//!
//! Measured, each over the whole fleet, in this process (the operator's
//! work; the NATS writes are one per device with or without secrets):
//! - `seal`: [`operator::Plan::set_secrets`] sealing every value to every
//!   device (what a new revision, a rotated Secret or the operator's start
//!   costs);
//! - `reuse`: the next reconcile's plan with the controller's
//!   [`operator::secrets::seal::SealCache`] (what each no-op reconcile
//!   costs; it must give the same bytes);
//! - `compare`: [`operator::secrets::seal::equivalent`] on every device's
//!   key against a plan sealed afresh (what a no-op reconcile would cost
//!   without the cache on top of sealing again, since two seals never give
//!   the same bytes);
//! - the bytes of a device's value with and without the sealed values.
//!
//! Run: `cargo bench -p operator --bench sealing [-- --devices 10000]`
//! (without arguments: a table over 1,000 and 10,000 devices).
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use operator::apply::plan;
use operator::crd::Deployment;
use operator::secrets::Login;
use operator::secrets::Resolved;
use operator::secrets::seal::{SealCache, equivalent};
use sealing::{DeviceKey, Zeroizing};

#[derive(Parser, Debug)]
#[command(about = "Sealing cost: one Deployment with a login and two values, N devices")]
struct Args {
    /// Devices (default: a table over 1,000 and 10,000).
    #[arg(long)]
    devices: Option<usize>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn deployment() -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "iot.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "fleet", "uid": "bench"},
        "spec": {
            "targetDevices": ["pi-00000"],
            "imagePullSecrets": [{"name": "regcred"}],
            "score": {"type": "PodmanV1", "data": {"containers": [{
                "name": "web",
                "image": "registry.example.com/team/web:1.4.2",
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "token"}}}
                ]
            }]}}
        }
    }))
    .unwrap()
}

fn resolved() -> Resolved {
    let mut values = BTreeMap::new();
    values.insert(
        ("db".to_string(), "password".to_string()),
        Zeroizing::new(b"correct-horse-battery-staple".to_vec()),
    );
    values.insert(
        ("db".to_string(), "token".to_string()),
        Zeroizing::new(vec![b'x'; 64]),
    );
    let mut logins = BTreeMap::new();
    logins.insert(
        "registry.example.com".to_string(),
        Login {
            username: Zeroizing::new("robot$fleet".to_string()),
            password: Zeroizing::new("a-registry-password-of-32-bytes!".to_string()),
            identity_token: Zeroizing::new(String::new()),
        },
    );
    Resolved {
        values,
        logins,
        digest: vec![7; 32],
    }
}

struct Row {
    devices: usize,
    seal_ms: f64,
    reuse_ms: f64,
    compare_ms: f64,
    plain_bytes: usize,
    sealed_bytes: usize,
}

fn measure(devices: usize) -> Row {
    let ids: Vec<String> = (0..devices).map(|i| format!("pi-{i:05}")).collect();
    let keys: BTreeMap<&str, String> = ids
        .iter()
        .map(|id| (id.as_str(), DeviceKey::generate().public_key().to_string()))
        .collect();
    let d = deployment();
    let mut plain = plan(&d).unwrap();
    plain.add_targets(ids.iter().cloned());
    let plain_bytes = plain.value_for(&ids[0]).len();

    let cache = SealCache::default();
    let mut sealed = plan(&d).unwrap();
    sealed.add_targets(ids.iter().cloned());
    let start = Instant::now();
    sealed
        .set_secrets_reusing(resolved(), |t| keys.get(t).cloned(), &cache)
        .unwrap();
    let seal_ms = start.elapsed().as_secs_f64() * 1e3;
    let sealed_bytes = sealed.value_for(&ids[0]).len();

    let mut reused = plan(&d).unwrap();
    reused.add_targets(ids.iter().cloned());
    let start = Instant::now();
    reused
        .set_secrets_reusing(resolved(), |t| keys.get(t).cloned(), &cache)
        .unwrap();
    let reuse_ms = start.elapsed().as_secs_f64() * 1e3;
    let same = ids
        .iter()
        .filter(|id| sealed.value_for(id) == reused.value_for(id))
        .count();
    assert_eq!(same, devices, "the cache did not give the same bytes");

    let mut again = plan(&d).unwrap();
    again.add_targets(ids.iter().cloned());
    again
        .set_secrets(resolved(), |t| keys.get(t).cloned())
        .unwrap();
    let start = Instant::now();
    let current = ids
        .iter()
        .filter(|id| equivalent(sealed.value_for(id), again.value_for(id)))
        .count();
    let compare_ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(current, devices, "a re-seal counted as a change");
    Row {
        devices,
        seal_ms,
        reuse_ms,
        compare_ms,
        plain_bytes,
        sealed_bytes,
    }
}

fn main() {
    let args = Args::parse();
    let sizes = args
        .devices
        .map_or_else(|| vec![1_000, 10_000], |n| vec![n]);
    println!(
        "| devices | seal all (ms) | per device (µs) | next plan, cache (ms) | compare all, fresh seals (ms) | value bytes without / with secrets |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let r = measure(n);
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {} / {} |",
            r.devices,
            r.seal_ms,
            r.seal_ms * 1e3 / r.devices as f64,
            r.reuse_ms,
            r.compare_ms,
            r.plain_bytes,
            r.sealed_bytes
        );
    }
}
