//! Postcard vs JSON for small / typical / large scores: size, encode and
//! decode time. Prints a table; run with `cargo bench -p protocol --features json`.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use protocol::wire::{decode, encode_to_vec};
use protocol::{DesiredState, IotScore, PodmanV0Score};

/// Median time per call over several rounds of `iters` calls each.
fn time(iters: u32, mut f: impl FnMut()) -> Duration {
    let mut rounds: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    rounds.sort();
    rounds[rounds.len() / 2]
}

fn main() {
    println!(
        "{:<8} {:>9} {:>9} {:>7} {:>13} {:>13} {:>13} {:>13}",
        "score",
        "postcard",
        "json",
        "ratio",
        "pc encode",
        "json encode",
        "pc decode",
        "json decode"
    );
    for (name, score) in [
        ("small", common::small()),
        ("typical", common::typical()),
        ("large", common::large()),
    ] {
        let iot = IotScore::PodmanV0(score.clone());
        let desired = common::desired(&score);
        let pc = encode_to_vec(&desired).expect("encode");
        let json = serde_json::to_vec(&iot).expect("json");
        let iters = if name == "large" { 2_000 } else { 20_000 };

        let pc_enc = time(iters, || {
            let payload = black_box(&iot).to_payload().expect("payload");
            let d = DesiredState::new(desired.deployment.clone(), desired.revision, payload);
            black_box(encode_to_vec(&d).expect("encode"));
        });
        let json_enc = time(iters, || {
            black_box(serde_json::to_vec(black_box(&iot)).expect("json"));
        });
        let pc_dec = time(iters, || {
            let d: DesiredState = decode(black_box(&pc)).expect("decode");
            let s = d.score.decode().expect("score");
            black_box(s);
        });
        let json_dec = time(iters, || {
            let s: IotScore = serde_json::from_slice(black_box(&json)).expect("json");
            black_box(s);
        });
        println!(
            "{:<8} {:>8}B {:>8}B {:>7.2} {:>11.2?} {:>13.2?} {:>13.2?} {:>13.2?}",
            name,
            pc.len(),
            json.len(),
            pc.len() as f64 / json.len() as f64,
            pc_enc,
            json_enc,
            pc_dec,
            json_dec
        );
        let _: PodmanV0Score = score;
    }
    println!(
        "\npostcard = the whole desired-state value (format byte, deployment, revision, score);\n\
         json = the score as the CRD carries it ({{type, data}}). Times are medians per call."
    );
}
