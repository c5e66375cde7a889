//! The value of a `desired-state` key: which score a deployment runs on this
//! device, at which revision.

use serde::{Deserialize, Serialize};

use crate::keys::validate_token;
use crate::limits::{MAX_TYPE_NAME_LEN, MAX_VALUE_SIZE};
use crate::score::{IotScore, KNOWN_SCORE_TYPES, PODMAN_V0, PodmanV0Score, ScoreError};
use crate::text::{Bytes, Text};
use crate::validate::{FieldPath, Validate, ValidationError, Violation, check_len, fail};
use crate::wire;

/// How a [`ScorePayload`]'s data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PayloadEncoding {
    /// postcard of the variant's data type (with its own format byte):
    /// variants the operator was built with, validated before writing.
    Postcard,
    /// The JSON the user wrote: variants the operator does not know, routed
    /// unchanged so that new agents can run them without an operator release.
    Json,
}

/// A score as it travels: its type name and its data.
///
/// Decoding a payload never fails because of an unknown type; that is only
/// found out by [`ScorePayload::decode`], which returns
/// [`ScoreError::Unsupported`] so the agent can report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ScorePayload<'a> {
    /// The variant's type name, e.g. `PodmanV0`.
    #[serde(borrow)]
    pub type_name: Text<'a>,
    /// How `data` is encoded.
    pub encoding: PayloadEncoding,
    /// The variant's data.
    #[serde(borrow)]
    pub data: Bytes<'a>,
}

impl<'a> ScorePayload<'a> {
    /// The score this payload carries, borrowing from it.
    pub fn decode(&'a self) -> Result<IotScore<'a>, ScoreError<'a>> {
        if !KNOWN_SCORE_TYPES.contains(&self.type_name.as_str()) {
            return Err(ScoreError::Unsupported {
                type_name: self.type_name.clone(),
            });
        }
        if self.encoding != PayloadEncoding::Postcard {
            return Err(ScoreError::UnexpectedEncoding {
                type_name: self.type_name.clone(),
            });
        }
        match self.type_name.as_str() {
            PODMAN_V0 => wire::decode::<PodmanV0Score<'a>>(&self.data)
                .map(IotScore::PodmanV0)
                .map_err(ScoreError::Decode),
            _ => Err(ScoreError::Unsupported {
                type_name: self.type_name.clone(),
            }),
        }
    }

    /// A content hash of the payload (FNV-1a 64 over type, encoding, data),
    /// stable across builds: equal payloads hash equal everywhere.
    pub fn content_hash(&self) -> u64 {
        let mut h = wire::Fnv1a64::new();
        h.write(self.type_name.as_bytes());
        h.write(&[0, self.encoding as u8]);
        h.write(&self.data);
        h.finish()
    }

    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> ScorePayload<'static> {
        ScorePayload {
            type_name: self.type_name.into_owned(),
            encoding: self.encoding,
            data: self.data.into_owned(),
        }
    }
}

#[cfg(feature = "alloc")]
impl IotScore<'_> {
    /// Validates and encodes this score as a postcard payload.
    pub fn to_payload(&self) -> Result<ScorePayload<'static>, crate::wire::EncodeError> {
        let data = match self {
            IotScore::PodmanV0(s) => wire::encode_to_vec(s)?,
        };
        Ok(ScorePayload {
            type_name: Text::borrowed(self.type_name()),
            encoding: PayloadEncoding::Postcard,
            data: Bytes::owned(data),
        })
    }
}

impl Validate for ScorePayload<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        let path = FieldPath::top("score.type");
        check_len(path, &self.type_name, MAX_TYPE_NAME_LEN)?;
        // Same shape rule as the CRD's CEL: a Rust identifier.
        let mut chars = self.type_name.chars();
        let ident = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return fail(path, Violation::NotIdentifier);
        }
        if self.data.len() > MAX_VALUE_SIZE {
            return fail(
                FieldPath::top("score.data"),
                Violation::TooLong {
                    limit: MAX_VALUE_SIZE,
                    actual: self.data.len(),
                },
            );
        }
        Ok(())
    }
}

/// The value of `desired-state` key `<device_id>.<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DesiredState<'a> {
    /// The deployment's name (the key's second token).
    #[serde(borrow)]
    pub deployment: Text<'a>,
    /// Chosen by the operator; agents echo it in their status so the operator
    /// knows which devices run what.
    pub revision: u64,
    /// What to run.
    #[serde(borrow)]
    pub score: ScorePayload<'a>,
}

impl Validate for DesiredState<'_> {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Err(e) = validate_token(&self.deployment) {
            return fail(FieldPath::top("deployment"), Violation::Token(e));
        }
        self.score.validate()
    }
}

/// Written and read in format version 1 only.
impl wire::Encode for DesiredState<'_> {}
impl<'de: 'a, 'a> wire::Decode<'de> for DesiredState<'a> {}

/// Written and read in format version 1 only.
impl wire::Encode for ScorePayload<'_> {}
impl<'de: 'a, 'a> wire::Decode<'de> for ScorePayload<'a> {}

impl DesiredState<'_> {
    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> DesiredState<'static> {
        DesiredState {
            deployment: self.deployment.into_owned(),
            revision: self.revision,
            score: self.score.into_owned(),
        }
    }
}
