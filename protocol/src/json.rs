//! From the user's JSON `{type, data}` to a wire payload: the operator's
//! generic router.
//!
//! A type this build knows is parsed strictly (unknown fields rejected),
//! validated against the bounds and postcard-encoded. A type it does not
//! know travels as the user's JSON, so that agents built with a newer
//! protocol can run it without an operator release.

use std::format;
use std::string::{String, ToString};

use crate::desired::{PayloadEncoding, ScorePayload};
use crate::score::{
    IotScore, KNOWN_SCORE_TYPES, PODMAN_V0, PODMAN_V1, PodmanV0Score, PodmanV1Score,
};
use crate::text::{Bytes, Text};
use crate::validate::Validate;
use crate::wire::EncodeError;

/// Why a score's JSON cannot be routed, with the path inside `data` (empty
/// for the score as a whole) in the form `containers[0].ports[1].hostPort`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct JsonScoreError {
    /// Where, relative to `data`; `type` for the type name itself.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Whether this build of the protocol knows `type_name`.
pub fn is_known_type(type_name: &str) -> bool {
    KNOWN_SCORE_TYPES.contains(&type_name)
}

/// Parses the data of a known score type into its Rust form, validated.
pub fn parse_known(
    type_name: &str,
    data: &serde_json::Value,
) -> Result<IotScore<'static>, JsonScoreError> {
    let score = match type_name {
        PODMAN_V0 => IotScore::PodmanV0(parse::<PodmanV0Score<'_>>(data)?.into_owned()),
        PODMAN_V1 => IotScore::PodmanV1(parse::<PodmanV1Score<'_>>(data)?.into_owned()),
        other => {
            return Err(JsonScoreError {
                path: "type".into(),
                reason: format!("`{other}` is not a score type this build knows"),
            });
        }
    };
    score.validate().map_err(|e| JsonScoreError {
        path: e.path.to_string(),
        reason: e.violation.to_string(),
    })?;
    Ok(score)
}

/// A score's data, strictly: unknown fields and wrong types are errors
/// naming their path.
fn parse<'de, T: serde::Deserialize<'de>>(
    data: &'de serde_json::Value,
) -> Result<T, JsonScoreError> {
    serde_path_to_error::deserialize(data).map_err(|e| JsonScoreError {
        path: e.path().to_string().trim_start_matches('.').to_string(),
        reason: e.into_inner().to_string(),
    })
}

/// Routes a score: known types are validated and postcard-encoded, unknown
/// ones carried as the user's JSON.
pub fn payload_from_json(
    type_name: &str,
    data: &serde_json::Value,
) -> Result<ScorePayload<'static>, JsonScoreError> {
    let payload = if is_known_type(type_name) {
        parse_known(type_name, data)?
            .to_payload()
            .map_err(encode_error)?
    } else {
        let json = serde_json::to_vec(data).map_err(|e| JsonScoreError {
            path: String::new(),
            reason: e.to_string(),
        })?;
        ScorePayload {
            type_name: Text::owned(type_name.to_string()),
            encoding: PayloadEncoding::Json,
            data: Bytes::owned(json),
        }
    };
    payload.validate().map_err(|e| JsonScoreError {
        path: if e.path.field == "score.type" {
            "type".into()
        } else {
            String::new()
        },
        reason: e.violation.to_string(),
    })?;
    Ok(payload)
}

fn encode_error(e: EncodeError) -> JsonScoreError {
    match e {
        EncodeError::Invalid(v) => JsonScoreError {
            path: v.path.to_string(),
            reason: v.violation.to_string(),
        },
        other => JsonScoreError {
            path: String::new(),
            reason: other.to_string(),
        },
    }
}
