//! Selector targeting cost: the operator's Device label index
//! ([`operator::targeting::TargetIndex`]) with N labelled Devices and D
//! Deployments selecting them, and a stream of single-Device relabels.
//!
//! Each relabel does what the controller does: the index update that names
//! the Deployments whose selection changed, then one `resolve` per named
//! Deployment (what its reconcile asks the index). The same relabels are
//! then costed the naive way (test every selector before and after, and
//! re-resolve every Deployment by scanning every Device) for comparison.
//!
//! Run: `cargo bench -p e2e --bench targeting [-- --devices 10000 --deployments 100]`
//! (without arguments: a table over 1,000 and 10,000 devices, 10 and 100
//! Deployments).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use operator::targeting::{DeploymentRef, Labels, TargetIndex, TargetSelector, deployment_ref};

#[derive(Parser, Debug)]
#[command(about = "Selector targeting cost: N Devices, D Deployments, single-Device relabels")]
struct Args {
    /// Devices (default: a table over 1,000 and 10,000).
    #[arg(long)]
    devices: Option<usize>,
    /// Deployments (default: a table over 10 and 100).
    #[arg(long)]
    deployments: Option<usize>,
    /// Relabels measured per configuration.
    #[arg(long, default_value_t = 2000)]
    changes: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

const SITES: usize = 50;
const BOARDS: [&str; 3] = ["rpi3", "rpi4", "rpi5"];

/// xorshift64*: a fixed, dependency-free sequence, so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn device_labels(site: usize, board: usize, canary: bool) -> Labels {
    let mut l = BTreeMap::new();
    l.insert("site".to_string(), format!("site-{site:02}"));
    l.insert("board".to_string(), BOARDS[board].to_string());
    l.insert("example.com/rack".to_string(), format!("r{}", site % 7));
    if canary {
        l.insert("canary".to_string(), String::new());
    }
    l
}

/// Deployment `i`'s selector: mostly `site=..` (some with a board), a few
/// `board In (..)` with a site NotIn, and one in ten with expressions only
/// (no anchor: tested on every relabel, and resolved by a scan).
fn selector(i: usize) -> LabelSelector {
    let json = match i % 10 {
        0 => serde_json::json!({"matchExpressions": [
            {"key": "canary", "operator": "Exists"},
            {"key": "site", "operator": "NotIn", "values": [format!("site-{:02}", i % SITES)]}
        ]}),
        1 | 2 => serde_json::json!({"matchExpressions": [
            {"key": "board", "operator": "In", "values": [BOARDS[i % 3]]},
            {"key": "site", "operator": "In", "values": [format!("site-{:02}", i % SITES), format!("site-{:02}", (i + 1) % SITES)]}
        ]}),
        3 | 4 => {
            serde_json::json!({"matchLabels": {"site": format!("site-{:02}", i % SITES), "board": BOARDS[i % 3]}})
        }
        _ => serde_json::json!({"matchLabels": {"site": format!("site-{:02}", i % SITES)}}),
    };
    serde_json::from_value(json).expect("selector JSON")
}

struct Row {
    devices: usize,
    deployments: usize,
    build: Duration,
    resolve_all: Duration,
    targets: usize,
    per_change: Vec<Duration>,
    /// Of which finding the touched Deployments (the index update).
    find: Duration,
    touched: usize,
    naive_per_change: Duration,
}

fn run(devices: usize, deployments: usize, changes: usize) -> Row {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let index = TargetIndex::new();
    let mut labels: Vec<Labels> = (0..devices)
        .map(|_| device_labels(rng.below(SITES), rng.below(3), rng.below(20) == 0))
        .collect();
    let ids: Vec<String> = (0..devices).map(|i| format!("dev-{i:05}")).collect();
    let selectors: Vec<(DeploymentRef, TargetSelector)> = (0..deployments)
        .map(|i| {
            let s = TargetSelector::new(&selector(i)).expect("valid selector");
            (deployment_ref("fleet", &format!("d{i:03}")), s)
        })
        .collect();

    let start = Instant::now();
    index.replace_all(ids.iter().cloned().zip(labels.iter().cloned()).collect());
    let build = start.elapsed();
    let start = Instant::now();
    let targets: usize = selectors
        .iter()
        .map(|(d, s)| index.resolve(d, Some(s)).map_or(0, |t| t.len()))
        .sum();
    let resolve_all = start.elapsed();

    // The relabels: a device moves site (and sometimes board).
    let moves: Vec<(usize, Labels)> = (0..changes)
        .map(|_| {
            let i = rng.below(devices);
            (
                i,
                device_labels(rng.below(SITES), rng.below(3), rng.below(20) == 0),
            )
        })
        .collect();
    let mut per_change = Vec::with_capacity(changes);
    let mut touched = 0;
    let mut find = Duration::ZERO;
    let by_ref: std::collections::HashMap<&DeploymentRef, &TargetSelector> =
        selectors.iter().map(|(d, s)| (d, s)).collect();
    for (i, new) in &moves {
        let start = Instant::now();
        let affected = index.set_device(&ids[*i], Some(new.clone()));
        find += start.elapsed();
        for d in &affected {
            let s = by_ref[d];
            std::hint::black_box(index.resolve(d, Some(s)));
        }
        per_change.push(start.elapsed());
        touched += affected.len();
    }

    // Naive: every selector tested before and after, every Deployment
    // re-resolved by scanning every Device. Fewer changes: it is slow.
    let naive_changes = (changes / 20).max(5);
    let start = Instant::now();
    for (i, new) in moves.iter().take(naive_changes) {
        let old = std::mem::replace(&mut labels[*i], new.clone());
        for (_, s) in &selectors {
            std::hint::black_box(s.matches(&old) != s.matches(new));
            let selected: Vec<&String> = ids
                .iter()
                .zip(&labels)
                .filter(|(_, l)| s.matches(l))
                .map(|(id, _)| id)
                .collect();
            std::hint::black_box(selected);
        }
    }
    let naive_per_change = start.elapsed() / naive_changes as u32;
    per_change.sort_unstable();
    Row {
        devices,
        deployments,
        build,
        resolve_all,
        targets,
        per_change,
        find,
        touched,
        naive_per_change,
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args = Args::parse();
    let device_counts = args.devices.map_or(vec![1_000, 10_000], |n| vec![n]);
    let deployment_counts = args.deployments.map_or(vec![10, 100], |n| vec![n]);
    println!(
        "| devices | deployments | index build | resolve all | targets | per relabel p50 | p99 | mean | of which finding the touched (mean) | touched per relabel | naive per relabel |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &device_counts {
        for &d in &deployment_counts {
            let row = run(n, d, args.changes);
            let changes = row.per_change.len().max(1);
            let total: Duration = row.per_change.iter().sum();
            let pct = |p: usize| row.per_change[(row.per_change.len() - 1) * p / 100];
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                row.devices,
                row.deployments,
                ms(row.build),
                ms(row.resolve_all),
                row.targets,
                us(pct(50)),
                us(pct(99)),
                us(total / changes as u32),
                us(row.find / changes as u32),
                row.touched as f64 / changes as f64,
                us(row.naive_per_change),
            );
        }
    }
}
