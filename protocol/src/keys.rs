//! Bucket names and the key layout.
//!
//! | bucket | key | written by | value |
//! |---|---|---|---|
//! | [`DESIRED_STATE_BUCKET`] | `<device_id>.<deployment>` | operator | [`crate::DesiredState`] |
//! | [`DEVICE_STATUS_BUCKET`] | `<device_id>.<deployment>` | agent | [`crate::DeploymentStatus`] |
//! | [`DEVICE_HEARTBEAT_BUCKET`] | `<device_id>` | agent | [`crate::Heartbeat`] |
//!
//! Device ids and deployment names are single NATS tokens restricted to
//! `[A-Za-z0-9_-]{1,63}`, so that a key never contains a wildcard or an extra
//! level and `<device_id>.>` matches exactly one device's keys.
//!
//! The subjects keys travel on are formatted and parsed here too:
//! [`KvSubject`] (`$KV.<bucket>.<key>`), [`RepublishSubject`]
//! (`$KVR.<bucket>.<key>`), [`StreamName`] (`KV_<bucket>`) and
//! [`ConsumerCreateSubject`].

use core::fmt;

/// Bucket holding each device's desired state, written by the operator.
pub const DESIRED_STATE_BUCKET: &str = "desired-state";
/// Bucket holding per-deployment status reports, written by the agents.
pub const DEVICE_STATUS_BUCKET: &str = "device-status";
/// Bucket holding one heartbeat per device, written by the agents.
pub const DEVICE_HEARTBEAT_BUCKET: &str = "device-heartbeat";
/// All buckets of the contract.
pub const BUCKETS: [&str; 3] = [
    DESIRED_STATE_BUCKET,
    DEVICE_STATUS_BUCKET,
    DEVICE_HEARTBEAT_BUCKET,
];

/// Where a bucket's stream republishes each message once it is stored:
/// `$KVR.<bucket>.<key>`, with `Nats-Sequence`, `Nats-Subject` and the
/// original headers (`KV-Operation` included). Devices watch their
/// desired state on this prefix with a plain subscription instead of one
/// JetStream consumer each (docs/performance.md, "Layouts compared").
pub const REPUBLISH_PREFIX: &str = "$KVR";

/// The first token of every subject a KV key is stored under:
/// `$KV.<bucket>.<key>` ([`KvSubject`]).
pub const KV_PREFIX: &str = "$KV";

/// The key filter that matches every key of a bucket.
pub const ALL_KEYS: &str = ">";

/// The JetStream API subject that creates a consumer. With a filter,
/// clients use `<this>.<stream>.<consumer>.<filter>`
/// ([`ConsumerCreateSubject`]), which is what lets device permissions
/// allow a device consumers on its own keys only.
pub const CONSUMER_CREATE_PREFIX: &str = "$JS.API.CONSUMER.CREATE";

/// Longest device id or deployment name, in bytes.
pub const MAX_TOKEN_LEN: usize = 63;

/// Why a string is not a valid key token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenError {
    /// The string is empty.
    #[error("must not be empty (use 1 to 63 of A-Z, a-z, 0-9, '_' or '-')")]
    Empty,
    /// The string is longer than [`MAX_TOKEN_LEN`] bytes.
    #[error("is {len} bytes long; at most 63 are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The string holds a character outside `[A-Za-z0-9_-]`.
    #[error(
        "has {ch:?} at position {index}; only A-Z, a-z, 0-9, '_' and '-' are allowed (no '.', '*', '>' or spaces)"
    )]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its position, counted in characters from 0.
        index: usize,
    },
}

/// Checks that `s` is a single key token: 1 to 63 of `[A-Za-z0-9_-]`.
pub fn validate_token(s: &str) -> Result<(), TokenError> {
    if s.is_empty() {
        return Err(TokenError::Empty);
    }
    if let Some((index, ch)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TokenError::InvalidChar { ch, index });
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong { len: s.len() });
    }
    Ok(())
}

/// Why a key cannot be built or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeyError {
    /// The device id is not a valid token.
    #[error("device id {0}")]
    DeviceId(TokenError),
    /// The deployment name is not a valid token.
    #[error("deployment name {0}")]
    Deployment(TokenError),
    /// The key is not of the form `<device_id>.<deployment>`.
    #[error("key is not of the form <device_id>.<deployment>")]
    Shape,
}

/// Checks a device id, for use at every entry point that accepts one.
pub fn validate_device_id(id: &str) -> Result<(), KeyError> {
    validate_token(id).map_err(KeyError::DeviceId)
}

/// Checks a deployment name.
pub fn validate_deployment_name(name: &str) -> Result<(), KeyError> {
    validate_token(name).map_err(KeyError::Deployment)
}

/// The key `<device_id>.<deployment>` of the desired-state and status buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeploymentKey<'a> {
    device_id: &'a str,
    deployment: &'a str,
}

impl<'a> DeploymentKey<'a> {
    /// A key for `deployment` on `device_id`, both validated.
    pub fn new(device_id: &'a str, deployment: &'a str) -> Result<Self, KeyError> {
        validate_device_id(device_id)?;
        validate_deployment_name(deployment)?;
        Ok(DeploymentKey {
            device_id,
            deployment,
        })
    }

    /// Parses `<device_id>.<deployment>` (no bucket prefix).
    pub fn parse(key: &'a str) -> Result<Self, KeyError> {
        let (device_id, deployment) = key.split_once('.').ok_or(KeyError::Shape)?;
        if deployment.contains('.') {
            return Err(KeyError::Shape);
        }
        Self::new(device_id, deployment)
    }

    /// The device id.
    pub fn device_id(&self) -> &'a str {
        self.device_id
    }

    /// The deployment name.
    pub fn deployment(&self) -> &'a str {
        self.deployment
    }
}

impl fmt::Display for DeploymentKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.device_id, self.deployment)
    }
}

/// The key filter `<device_id>.>` that selects one device's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceFilter<'a>(&'a str);

impl<'a> DeviceFilter<'a> {
    /// The filter for `device_id`, validated.
    pub fn new(device_id: &'a str) -> Result<Self, KeyError> {
        validate_device_id(device_id)?;
        Ok(DeviceFilter(device_id))
    }

    /// The device id.
    pub fn device_id(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for DeviceFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.>", self.0)
    }
}

/// The stream backing a KV bucket: `KV_<bucket>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamName<'a>(pub &'a str);

impl<'a> StreamName<'a> {
    /// The bucket a stream name `KV_<bucket>` backs; `None` for other
    /// streams.
    pub fn parse(stream: &'a str) -> Option<Self> {
        stream
            .strip_prefix("KV_")
            .filter(|b| !b.is_empty())
            .map(StreamName)
    }
}

impl fmt::Display for StreamName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KV_{}", self.0)
    }
}

/// Splits `<prefix>.<bucket>.<key>` into bucket and key.
fn split_subject<'a>(subject: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (bucket, key) = rest.split_once('.')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// The subject a KV key (or key filter) is stored under: `$KV.<bucket>.<key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSubject<'a, K> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key, or a filter such as [`DeviceFilter`].
    pub key: K,
}

impl<'a> KvSubject<'a, &'static str> {
    /// `$KV.<bucket>.>`: every key of `bucket` (the bucket stream's subject).
    pub const fn all(bucket: &'a str) -> Self {
        KvSubject {
            bucket,
            key: ALL_KEYS,
        }
    }
}

impl<'a> KvSubject<'a, &'a str> {
    /// Splits a subject `$KV.<bucket>.<key>` into its bucket and key (the
    /// key unparsed: see [`DeploymentKey::parse`]); `None` for any other
    /// subject.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let (bucket, key) = split_subject(subject, KV_PREFIX)?;
        Some(KvSubject { bucket, key })
    }
}

impl<K: fmt::Display> fmt::Display for KvSubject<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KV_PREFIX}.{}.{}", self.bucket, self.key)
    }
}

/// The subject a stored KV message is republished on:
/// `$KVR.<bucket>.<key>` (see [`REPUBLISH_PREFIX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepublishSubject<'a, K> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key, or a filter such as [`DeviceFilter`].
    pub key: K,
}

impl<'a> RepublishSubject<'a, &'static str> {
    /// `$KVR.<bucket>.>`: every republished key of `bucket`.
    pub const fn all(bucket: &'a str) -> Self {
        RepublishSubject {
            bucket,
            key: ALL_KEYS,
        }
    }
}

impl<'a> RepublishSubject<'a, &'a str> {
    /// Splits a subject `$KVR.<bucket>.<key>` into its bucket and key;
    /// `None` for any other subject.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let (bucket, key) = split_subject(subject, REPUBLISH_PREFIX)?;
        Some(RepublishSubject { bucket, key })
    }
}

impl<K: fmt::Display> fmt::Display for RepublishSubject<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REPUBLISH_PREFIX}.{}.{}", self.bucket, self.key)
    }
}

/// The subject that creates a consumer named `consumer` on a bucket's
/// stream with the filter `filter`:
/// `$JS.API.CONSUMER.CREATE.KV_<bucket>.<consumer>.<filter>` (see
/// [`CONSUMER_CREATE_PREFIX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerCreateSubject<'a, C, F> {
    /// The bucket whose stream gets the consumer.
    pub bucket: &'a str,
    /// The consumer's name, or `*` in a permission.
    pub consumer: C,
    /// The filter subject, such as a [`KvSubject`].
    pub filter: F,
}

impl<'a> ConsumerCreateSubject<'a, &'a str, &'a str> {
    /// Splits a consumer-create subject on a bucket's stream into bucket,
    /// consumer name and filter; `None` for any other subject, including
    /// a create without a filter.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let rest = subject
            .strip_prefix(CONSUMER_CREATE_PREFIX)?
            .strip_prefix('.')?;
        let (stream, rest) = rest.split_once('.')?;
        let (consumer, filter) = rest.split_once('.')?;
        (!consumer.is_empty() && !filter.is_empty()).then_some(ConsumerCreateSubject {
            bucket: StreamName::parse(stream)?.0,
            consumer,
            filter,
        })
    }
}

impl<C: fmt::Display, F: fmt::Display> fmt::Display for ConsumerCreateSubject<'_, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CONSUMER_CREATE_PREFIX}.{}.{}.{}",
            StreamName(self.bucket),
            self.consumer,
            self.filter
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn tokens() {
        assert_eq!(validate_token("pi-001_A"), Ok(()));
        assert_eq!(validate_token(""), Err(TokenError::Empty));
        assert_eq!(
            validate_token("pi.001"),
            Err(TokenError::InvalidChar { ch: '.', index: 2 })
        );
        for bad in ["a*", "a>", "a b", "é", "a\t"] {
            assert!(validate_token(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(64);
        assert_eq!(validate_token(&long), Err(TokenError::TooLong { len: 64 }));
        assert_eq!(validate_token(&long[..63]), Ok(()));
    }

    #[test]
    fn error_names_the_character_and_position() {
        let e = validate_token("web*1").unwrap_err().to_string();
        assert!(e.contains("'*'") && e.contains("position 3"), "{e}");
    }

    #[test]
    fn keys_round_trip() {
        let k = DeploymentKey::new("pi-001", "hello-web").unwrap();
        assert_eq!(k.to_string(), "pi-001.hello-web");
        assert_eq!(DeploymentKey::parse("pi-001.hello-web"), Ok(k));
        assert_eq!(DeploymentKey::parse("pi-001"), Err(KeyError::Shape));
        assert_eq!(DeploymentKey::parse("a.b.c"), Err(KeyError::Shape));
        assert!(matches!(
            DeploymentKey::parse(".b"),
            Err(KeyError::DeviceId(TokenError::Empty))
        ));
        assert!(matches!(
            DeploymentKey::new("pi", "x>"),
            Err(KeyError::Deployment(_))
        ));
    }

    #[test]
    fn filters_and_subjects() {
        let f = DeviceFilter::new("pi-001").unwrap();
        assert_eq!(f.to_string(), "pi-001.>");
        assert!(DeviceFilter::new("*").is_err());
        let s = KvSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: f,
        };
        assert_eq!(s.to_string(), "$KV.desired-state.pi-001.>");
        let r = RepublishSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: f,
        };
        assert_eq!(r.to_string(), "$KVR.desired-state.pi-001.>");
        assert_eq!(
            StreamName(DESIRED_STATE_BUCKET).to_string(),
            "KV_desired-state"
        );
        assert_eq!(
            KvSubject::all(DEVICE_STATUS_BUCKET).to_string(),
            "$KV.device-status.>"
        );
        assert_eq!(
            RepublishSubject::all(DESIRED_STATE_BUCKET).to_string(),
            "$KVR.desired-state.>"
        );
        assert_eq!(
            ConsumerCreateSubject {
                bucket: DESIRED_STATE_BUCKET,
                consumer: "*",
                filter: s,
            }
            .to_string(),
            "$JS.API.CONSUMER.CREATE.KV_desired-state.*.$KV.desired-state.pi-001.>"
        );
    }

    #[test]
    fn subjects_parse_into_bucket_and_key() {
        let s = KvSubject::parse("$KV.device-status.pi-1.web").unwrap();
        assert_eq!((s.bucket, s.key), (DEVICE_STATUS_BUCKET, "pi-1.web"));
        let k = DeploymentKey::parse(s.key).unwrap();
        assert_eq!((k.device_id(), k.deployment()), ("pi-1", "web"));
        let s = KvSubject::parse("$KV.device-heartbeat.pi-1").unwrap();
        assert_eq!((s.bucket, s.key), (DEVICE_HEARTBEAT_BUCKET, "pi-1"));
        let r = RepublishSubject::parse("$KVR.desired-state.pi-1.web").unwrap();
        assert_eq!((r.bucket, r.key), (DESIRED_STATE_BUCKET, "pi-1.web"));
        for other in [
            "$KVR.desired-state.pi-1.web",
            "$KV.desired-state",
            "$KV.desired-state.",
            "$KV..x",
            "$KVX.desired-state.a",
            "_INBOX.pi-1.x",
        ] {
            assert_eq!(KvSubject::parse(other), None, "{other}");
        }
        assert_eq!(RepublishSubject::parse("$KV.desired-state.a.b"), None);
        for s in [
            KvSubject {
                bucket: DESIRED_STATE_BUCKET,
                key: "a.b",
            },
            KvSubject::all(DESIRED_STATE_BUCKET),
        ] {
            assert_eq!(KvSubject::parse(&s.to_string()), Some(s));
        }
    }

    #[test]
    fn consumer_creates_parse() {
        let c = ConsumerCreateSubject::parse(
            "$JS.API.CONSUMER.CREATE.KV_desired-state.iot-agent-pi-1-ab.$KV.desired-state.pi-1.>",
        )
        .unwrap();
        assert_eq!(c.bucket, DESIRED_STATE_BUCKET);
        assert_eq!(c.consumer, "iot-agent-pi-1-ab");
        assert_eq!(c.filter, "$KV.desired-state.pi-1.>");
        assert_eq!(
            ConsumerCreateSubject::parse("$JS.API.CONSUMER.CREATE.KV_desired-state"),
            None
        );
        assert_eq!(
            ConsumerCreateSubject::parse("$JS.API.CONSUMER.CREATE.ORDERS.c.orders.>"),
            None
        );
        assert_eq!(StreamName::parse("KV_"), None);
        assert_eq!(
            StreamName::parse("KV_device-status"),
            Some(StreamName(DEVICE_STATUS_BUCKET))
        );
    }
}
