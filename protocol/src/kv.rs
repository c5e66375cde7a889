//! What travels in NATS besides keys and values: the headers a KV record
//! carries, the KV operation values, and the owner value the operator marks
//! each desired-state key with.
//!
//! | header | on | written by | value |
//! |---|---|---|---|
//! | [`OWNER_HEADER`] (`Iot-Owner`) | `desired-state` puts | operator | [`Owner`]: `<namespace>/<name>` |
//! | [`MESSAGE_ID_HEADER`] (`Nats-Msg-Id`) | `desired-state` writes | operator | unique per write, so a retried write is stored once |
//! | [`OPERATION_HEADER`] (`KV-Operation`) | deletes and purges | operator (deletes), KV clients | [`Operation`]: `DEL` or `PURGE`; absent on puts |
//! | [`SEQUENCE_HEADER`] (`Nats-Sequence`) | republished messages (`$KVR`) | the server | the stream sequence, decimal |
//! | [`FORCE_HEADER`] (`Iot-Force`) | `desired-state` deletes | operator | [`FORCE_VALUE`] (`true`): the device removes at once, whatever its update lock and maintenance windows say |

use core::fmt;

use crate::keys::{TokenError, validate_token};

/// Header naming the Deployment that wrote a desired-state key
/// ([`Owner`]), so that two Deployments of one name in different
/// namespaces cannot overwrite each other's devices.
pub const OWNER_HEADER: &str = "Iot-Owner";
/// Header with a message's id: the stream stores a message whose id it saw
/// within its duplicate window only once, so a write whose ack timed out
/// can be sent again safely.
pub const MESSAGE_ID_HEADER: &str = "Nats-Msg-Id";
/// Header marking a KV record as a delete or purge ([`Operation`]), as the
/// NATS KV clients write and read it.
pub const OPERATION_HEADER: &str = "KV-Operation";
/// Header with the stream sequence a republished message (`$KVR`) was
/// stored at, in decimal.
pub const SEQUENCE_HEADER: &str = "Nats-Sequence";

/// Header on a `desired-state` delete that must not wait for the device's
/// update lock or maintenance windows (the Deployment was deleted with
/// `spec.rollout.force`): its value is [`FORCE_VALUE`].
pub const FORCE_HEADER: &str = "Iot-Force";

/// The value of [`FORCE_HEADER`] that forces a delete; any other value
/// (or none) does not.
pub const FORCE_VALUE: &str = "true";

/// What a KV record stands for, by its [`OPERATION_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Operation {
    /// A value (the header is normally absent; `PUT` when present).
    Put,
    /// The key was deleted: `DEL`.
    Delete,
    /// The key was purged, its history removed: `PURGE`.
    Purge,
}

impl Operation {
    /// The header value: `PUT`, `DEL` or `PURGE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Put => "PUT",
            Operation::Delete => "DEL",
            Operation::Purge => "PURGE",
        }
    }

    /// The operation a header value names; `None` for any other value.
    pub fn parse(value: &str) -> Option<Operation> {
        [Operation::Put, Operation::Delete, Operation::Purge]
            .into_iter()
            .find(|op| op.as_str() == value)
    }

    /// The operation of a record whose [`OPERATION_HEADER`] is `header`:
    /// a put when the header is absent; `None` for a value this contract
    /// does not know.
    pub fn of_header(header: Option<&str>) -> Option<Operation> {
        header.map_or(Some(Operation::Put), Operation::parse)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest namespace in an owner, in bytes (a Kubernetes namespace is an
/// RFC 1123 label, at most 63).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Why a string is not an owner value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OwnerError {
    /// The value is not of the form `<namespace>/<name>`.
    #[error("is not of the form <namespace>/<name>")]
    Shape,
    /// The namespace is empty.
    #[error("namespace must not be empty")]
    EmptyNamespace,
    /// The namespace is longer than [`MAX_NAMESPACE_LEN`] bytes.
    #[error("namespace is {len} bytes long; at most 63 are allowed")]
    NamespaceTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The namespace holds a character that cannot travel in the header.
    #[error(
        "namespace has {ch:?} at position {index}; only visible ASCII other than '/' is allowed"
    )]
    NamespaceChar {
        /// The offending character.
        ch: char,
        /// Its position, counted in characters from 0.
        index: usize,
    },
    /// The name is not a deployment name (a key token).
    #[error("name {0}")]
    Name(TokenError),
}

/// The Deployment that wrote a desired-state key, as the [`OWNER_HEADER`]
/// carries it: `<namespace>/<name>`. The name is the key's deployment
/// token; the namespace is the Kubernetes namespace (visible ASCII without
/// `/`, 1 to 63 bytes), so the value splits at its only `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Owner<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl<'a> Owner<'a> {
    /// The owner `namespace/name`, both checked.
    pub fn new(namespace: &'a str, name: &'a str) -> Result<Self, OwnerError> {
        validate_namespace(namespace)?;
        validate_token(name).map_err(OwnerError::Name)?;
        Ok(Owner { namespace, name })
    }

    /// Parses a header value `<namespace>/<name>`.
    pub fn parse(value: &'a str) -> Result<Self, OwnerError> {
        let (namespace, name) = value.split_once('/').ok_or(OwnerError::Shape)?;
        if name.contains('/') {
            return Err(OwnerError::Shape);
        }
        Self::new(namespace, name)
    }

    /// The namespace.
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }

    /// The Deployment's name: the deployment token of its keys.
    pub fn name(&self) -> &'a str {
        self.name
    }
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn validate_namespace(s: &str) -> Result<(), OwnerError> {
    if s.is_empty() {
        return Err(OwnerError::EmptyNamespace);
    }
    if let Some((index, ch)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic() || *c == '/')
    {
        return Err(OwnerError::NamespaceChar { ch, index });
    }
    if s.len() > MAX_NAMESPACE_LEN {
        return Err(OwnerError::NamespaceTooLong { len: s.len() });
    }
    Ok(())
}

#[cfg(feature = "alloc")]
pub use owned::OwnerBuf;

#[cfg(feature = "alloc")]
mod owned {
    use alloc::string::{String, ToString};
    use core::{fmt, ops::Deref, str::FromStr};

    use super::{Owner, OwnerError};

    /// An [`Owner`] that owns its text; reads as its header value.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct OwnerBuf {
        value: String,
        slash: usize,
    }

    impl OwnerBuf {
        /// The borrowed form.
        pub fn as_owner(&self) -> Owner<'_> {
            Owner {
                namespace: &self.value[..self.slash],
                name: &self.value[self.slash + 1..],
            }
        }

        /// The header value, `<namespace>/<name>`.
        pub fn as_str(&self) -> &str {
            &self.value
        }
    }

    impl From<Owner<'_>> for OwnerBuf {
        fn from(o: Owner<'_>) -> Self {
            OwnerBuf {
                value: o.to_string(),
                slash: o.namespace.len(),
            }
        }
    }

    impl FromStr for OwnerBuf {
        type Err = OwnerError;
        fn from_str(s: &str) -> Result<Self, OwnerError> {
            Owner::parse(s).map(OwnerBuf::from)
        }
    }

    impl Deref for OwnerBuf {
        type Target = str;
        fn deref(&self) -> &str {
            &self.value
        }
    }

    impl AsRef<str> for OwnerBuf {
        fn as_ref(&self) -> &str {
            &self.value
        }
    }

    impl PartialEq<str> for OwnerBuf {
        fn eq(&self, other: &str) -> bool {
            self.value == other
        }
    }

    impl PartialEq<&str> for OwnerBuf {
        fn eq(&self, other: &&str) -> bool {
            self.value == *other
        }
    }

    impl fmt::Display for OwnerBuf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.value)
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn header_names_are_the_wire_spelling() {
        assert_eq!(OWNER_HEADER, "Iot-Owner");
        assert_eq!(MESSAGE_ID_HEADER, "Nats-Msg-Id");
        assert_eq!(OPERATION_HEADER, "KV-Operation");
        assert_eq!(SEQUENCE_HEADER, "Nats-Sequence");
    }

    #[test]
    fn operations_round_trip() {
        for (op, s) in [
            (Operation::Put, "PUT"),
            (Operation::Delete, "DEL"),
            (Operation::Purge, "PURGE"),
        ] {
            assert_eq!(op.as_str(), s);
            assert_eq!(op.to_string(), s);
            assert_eq!(Operation::parse(s), Some(op));
        }
        assert_eq!(Operation::parse("del"), None);
        assert_eq!(Operation::of_header(None), Some(Operation::Put));
        assert_eq!(Operation::of_header(Some("DEL")), Some(Operation::Delete));
        assert_eq!(Operation::of_header(Some("ROLLUP")), None);
    }

    #[test]
    fn owners_round_trip() {
        let o = Owner::new("fleet", "hello-web").unwrap();
        assert_eq!(o.to_string(), "fleet/hello-web");
        assert_eq!(Owner::parse("fleet/hello-web"), Ok(o));
        assert_eq!(o.namespace(), "fleet");
        assert_eq!(o.name(), "hello-web");
    }

    #[test]
    fn malformed_owners_are_refused_with_the_reason() {
        assert_eq!(Owner::parse("fleet"), Err(OwnerError::Shape));
        assert_eq!(Owner::parse("a/b/c"), Err(OwnerError::Shape));
        assert_eq!(Owner::parse("/web"), Err(OwnerError::EmptyNamespace));
        assert_eq!(
            Owner::parse("fl eet/web"),
            Err(OwnerError::NamespaceChar { ch: ' ', index: 2 })
        );
        assert_eq!(
            Owner::new("a/b", "web"),
            Err(OwnerError::NamespaceChar { ch: '/', index: 1 })
        );
        let long = "n".repeat(64);
        assert_eq!(
            Owner::new(&long, "web"),
            Err(OwnerError::NamespaceTooLong { len: 64 })
        );
        assert_eq!(
            Owner::parse("fleet/"),
            Err(OwnerError::Name(TokenError::Empty))
        );
        assert!(matches!(
            Owner::parse("fleet/a.b"),
            Err(OwnerError::Name(TokenError::InvalidChar { ch: '.', .. }))
        ));
        let e = Owner::parse("fleet/a*").unwrap_err().to_string();
        assert!(e.starts_with("name has '*'"), "{e}");
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn owned_owners_read_as_their_header_value() {
        let o: OwnerBuf = "fleet/web".parse().unwrap();
        assert_eq!(o, "fleet/web");
        assert_eq!(o.as_str(), "fleet/web");
        assert_eq!(o.to_string(), "fleet/web");
        assert_eq!(o.as_owner(), Owner::new("fleet", "web").unwrap());
        assert_eq!(OwnerBuf::from(o.as_owner()), o);
        assert_eq!("web".parse::<OwnerBuf>(), Err(OwnerError::Shape));
    }
}
