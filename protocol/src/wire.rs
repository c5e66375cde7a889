//! The value encoding: one format-version byte, then postcard.
//!
//! Every value is validated before it is encoded and after it is decoded, so
//! a value one side accepts the other side can decode.

use postcard::ser_flavors::Flavor;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_VALUE_SIZE;
use crate::validate::{Validate, ValidationError};

/// The first byte of every encoded value but those with more than the
/// first release's fields ([`FORMAT_VERSION_2`], [`FORMAT_VERSION_3`]). A
/// decoder refuses versions its type never had.
pub const FORMAT_VERSION: u8 = 1;

/// Format version 2: a [`Heartbeat`](crate::Heartbeat) with `warnings`; a
/// [`DesiredState`](crate::DesiredState) with a rollout policy; a
/// [`DeploymentStatus`](crate::DeploymentStatus) with health.
pub const FORMAT_VERSION_2: u8 = 2;

/// Format version 3: a [`Heartbeat`](crate::Heartbeat) with the board's
/// kernel, boot id, labels and capabilities after the warnings.
pub const FORMAT_VERSION_3: u8 = 3;

/// Format version 4: a [`DesiredState`](crate::DesiredState) with an
/// update gate (update lock, maintenance windows, force); a
/// [`Heartbeat`](crate::Heartbeat) with the device's sealing key.
pub const FORMAT_VERSION_4: u8 = 4;

/// Format version 5: a [`DesiredState`](crate::DesiredState) with sealed
/// secrets.
pub const FORMAT_VERSION_5: u8 = 5;

/// A value as it is written: its wire rules and the format version it is
/// written in.
pub trait Encode: Serialize + Validate {
    /// The format version `self` is written in: the oldest one that carries
    /// everything it holds.
    fn format_version(&self) -> u8 {
        FORMAT_VERSION
    }
}

/// A value as it is read: its wire rules and every format version it was
/// ever written in.
pub trait Decode<'de>: Deserialize<'de> + Validate {
    /// Decodes the postcard body of a value written in `version`; returns
    /// the value and the bytes after it.
    fn take_body(version: u8, body: &'de [u8]) -> Result<(Self, &'de [u8]), DecodeError> {
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        take(body)
    }
}

/// One postcard value from the front of `body`, and the bytes after it.
pub fn take<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<(T, &'de [u8]), DecodeError> {
    postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed(e.into()))
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The value breaks a wire rule.
    #[error("invalid value: {0}")]
    Invalid(ValidationError),
    /// The caller's buffer is too small.
    #[error("the output buffer is too small")]
    BufferTooSmall,
    /// The encoding exceeds [`MAX_VALUE_SIZE`].
    #[error("the encoded value is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why bytes could not be decoded into a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty value")]
    Empty,
    /// The format byte names a version this build does not read.
    #[error("format version {0} is not supported for this value by this build")]
    UnsupportedVersion(u8),
    /// The bytes are not a valid postcard encoding of the expected type
    /// (truncated, a list over its bound, a bad enum tag, bad UTF-8...).
    #[error("malformed value: {0}")]
    Malformed(PostcardError),
    /// A valid value followed by extra bytes.
    #[error("{0} unexpected bytes after the value")]
    TrailingBytes(usize),
    /// The value decodes but breaks a wire rule.
    #[error("invalid value: {0}")]
    Invalid(ValidationError),
    /// More than [`MAX_VALUE_SIZE`] bytes.
    #[error("the value is {0} bytes; the limit is 65536")]
    TooLarge(usize),
}

/// The kind of postcard failure, kept small and `Copy` for `no_std` callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PostcardError {
    /// The input ended early.
    #[error("truncated")]
    Truncated,
    /// A string was not UTF-8.
    #[error("string is not UTF-8")]
    BadUtf8,
    /// An enum tag, bool or option marker out of range.
    #[error("bad tag")]
    BadTag,
    /// A length or integer varint was malformed.
    #[error("bad varint")]
    BadVarint,
    /// A serde-level failure, such as a list over its bound.
    #[error("content does not fit the type (e.g. a list over its bound)")]
    Content,
}

impl From<postcard::Error> for PostcardError {
    fn from(e: postcard::Error) -> Self {
        use postcard::Error as E;
        match e {
            E::DeserializeUnexpectedEnd => PostcardError::Truncated,
            E::DeserializeBadUtf8 | E::DeserializeBadChar => PostcardError::BadUtf8,
            E::DeserializeBadBool | E::DeserializeBadOption | E::DeserializeBadEnum => {
                PostcardError::BadTag
            }
            E::DeserializeBadVarint => PostcardError::BadVarint,
            _ => PostcardError::Content,
        }
    }
}

/// Encodes `value` into `buf`, returning the used prefix.
pub fn encode_into<'b, T: Encode>(
    value: &T,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], EncodeError> {
    value.validate().map_err(EncodeError::Invalid)?;
    let (first, rest) = buf.split_first_mut().ok_or(EncodeError::BufferTooSmall)?;
    *first = value.format_version();
    let used = postcard::to_slice(value, rest)
        .map_err(|_| EncodeError::BufferTooSmall)?
        .len();
    let size = used + 1;
    if size > MAX_VALUE_SIZE {
        return Err(EncodeError::TooLarge {
            size,
            limit: MAX_VALUE_SIZE,
        });
    }
    Ok(&mut buf[..size])
}

/// Encodes `value` into a new `Vec`.
#[cfg(feature = "alloc")]
pub fn encode_to_vec<T: Encode>(value: &T) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    value.validate().map_err(EncodeError::Invalid)?;
    let mut out = alloc::vec![value.format_version()];
    out = postcard::to_extend(value, out).map_err(|_| EncodeError::BufferTooSmall)?;
    if out.len() > MAX_VALUE_SIZE {
        return Err(EncodeError::TooLarge {
            size: out.len(),
            limit: MAX_VALUE_SIZE,
        });
    }
    Ok(out)
}

/// Decodes a value from `bytes`, borrowing its strings from them.
pub fn decode<'a, T: Decode<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let (value, rest) = T::take_body(version, body)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    value.validate().map_err(DecodeError::Invalid)?;
    Ok(value)
}

/// 64-bit FNV-1a: tiny, `no_std`, and fixed forever, so hashes of wire
/// bytes (revisions, container spec hashes) agree across builds.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    /// A fresh hasher.
    pub const fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub const fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Flavor for Fnv1a64 {
    type Output = u64;
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.write(&[data]);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<u64> {
        Ok(self.0)
    }
}

/// Hash of a value's postcard encoding, computed without a buffer. Used for
/// container spec hashes: equal specs hash equal on every build.
pub fn hash_of<T: Serialize>(value: &T) -> u64 {
    postcard::serialize_with_flavor(value, Fnv1a64::new()).unwrap_or(0)
}
