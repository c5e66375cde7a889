//! Decoding hostile bytes never panics: arbitrary input, truncations and
//! single-byte corruptions of valid encodings all give a value or an error.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod vectors;

use proptest::prelude::*;
use protocol::wire::{decode, encode_to_vec};
use protocol::*;

fn decode_all(bytes: &[u8]) {
    let _ = decode::<DesiredState>(bytes).map(|d| {
        let _ = d.score.decode();
    });
    let _ = decode::<PodmanV0Score>(bytes);
    let _ = decode::<PodmanV1Score>(bytes);
    let _ = decode::<DeploymentStatus>(bytes);
    let _ = decode::<Heartbeat>(bytes);
}

fn samples() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in [common::small(), common::typical(), common::large()] {
        out.push(encode_to_vec(&s).unwrap());
        out.push(encode_to_vec(&common::desired(&s)).unwrap());
    }
    for s in [common::podman_v1(), common::large_v1()] {
        out.push(encode_to_vec(&s).unwrap());
        out.push(encode_to_vec(&common::desired_v1(&s)).unwrap());
    }
    // Every format version of every value, so each path is fuzzed.
    for hex in [
        vectors::HEARTBEAT,
        vectors::HEARTBEAT_V2,
        vectors::HEARTBEAT_V3,
        vectors::DESIRED_STATE_V2,
        vectors::DESIRED_STATE_V3,
        vectors::STATUS,
        vectors::STATUS_V2,
        vectors::PODMAN_V1_SCORE,
    ] {
        let digits: Vec<char> = hex.chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            digits
                .chunks(2)
                .map(|p| u8::from_str_radix(&p.iter().collect::<String>(), 16).unwrap())
                .collect(),
        );
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_format_byte(mut bytes in proptest::collection::vec(any::<u8>(), 1..512)) {
        bytes[0] = FORMAT_VERSION;
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_format_byte_2(mut bytes in proptest::collection::vec(any::<u8>(), 1..512)) {
        bytes[0] = 2;
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_valid_encodings(which in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut samples = samples();
        let mut bytes = samples.swap_remove(which.index(samples.len()));
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        decode_all(&bytes);
    }
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in samples() {
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            decode_all(cut);
            assert!(
                decode::<DesiredState>(cut).is_err()
                    || decode::<PodmanV0Score>(cut).is_err()
                    || decode::<PodmanV1Score>(cut).is_err()
            );
        }
    }
    let full = encode_to_vec(&common::desired(&common::typical())).unwrap();
    for len in 0..full.len() {
        assert!(decode::<DesiredState>(&full[..len]).is_err(), "len {len}");
    }
    // Also where a shorter version would end: a version-2 value cut after
    // its version-1 fields is not a version-1 value.
    let mut d = common::desired_v1(&common::large_v1());
    d.rollout.auto_rollback = true;
    let full = encode_to_vec(&d).unwrap();
    for len in 0..full.len() {
        assert!(decode::<DesiredState>(&full[..len]).is_err(), "len {len}");
    }
    let full = encode_to_vec(&vectors::status_v2()).unwrap();
    for len in 0..full.len() {
        assert!(
            decode::<DeploymentStatus>(&full[..len]).is_err(),
            "len {len}"
        );
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_to_vec(&common::small()).unwrap();
    bytes.push(0);
    assert_eq!(
        decode::<PodmanV0Score>(&bytes).unwrap_err(),
        DecodeError::TrailingBytes(1)
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let bytes = vec![FORMAT_VERSION; limits::MAX_VALUE_SIZE + 1];
    assert!(matches!(
        decode::<DesiredState>(&bytes),
        Err(DecodeError::TooLarge(_))
    ));
}
