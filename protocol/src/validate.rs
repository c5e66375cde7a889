//! Checks of wire values against the bounds in [`crate::limits`] and the
//! rules serde cannot express (non-empty names, one volume source).

use core::fmt;

use crate::keys::TokenError;

/// Where in a value a rule was broken, printed like `containers[1].env[0].name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FieldPath {
    /// Index of the container, for fields inside one. Indexes are `u32`
    /// (lists are bounded far below) to keep every error that carries a
    /// path small.
    pub container: Option<u32>,
    /// The field, in its JSON (camelCase) spelling; a nested field is
    /// dotted (`healthCheck.httpGet.port`).
    pub field: &'static str,
    /// Index within the field when it is a list.
    pub index: Option<u32>,
    /// The sub-field of that list entry.
    pub sub: Option<&'static str>,
    /// When that sub-field is itself a list: the entry's index and its
    /// sub-field (`volumes[0].secret.items[1].path`).
    pub item: Option<(u32, &'static str)>,
}

impl FieldPath {
    /// A top-level field.
    pub const fn top(field: &'static str) -> Self {
        FieldPath {
            container: None,
            field,
            index: None,
            sub: None,
            item: None,
        }
    }

    /// A field of container `c`.
    pub const fn container(c: usize, field: &'static str) -> Self {
        FieldPath {
            container: Some(index(c)),
            field,
            index: None,
            sub: None,
            item: None,
        }
    }

    /// The same path pointing at entry `i` of the field, sub-field `sub`.
    pub const fn at(self, i: usize, sub: Option<&'static str>) -> Self {
        FieldPath {
            index: Some(index(i)),
            sub,
            ..self
        }
    }

    /// The same path pointing into entry `j` of its sub-field (a list),
    /// at that entry's field `field`.
    pub const fn item(self, j: usize, field: &'static str) -> Self {
        FieldPath {
            item: Some((index(j), field)),
            ..self
        }
    }
}

/// `i` as a path index: saturated, as no bounded list comes near.
const fn index(i: usize) -> u32 {
    if i > u32::MAX as usize {
        u32::MAX
    } else {
        i as u32
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.container {
            write!(f, "containers[{c}].")?;
        }
        f.write_str(self.field)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(s) = self.sub {
            write!(f, ".{s}")?;
        }
        if let Some((j, field)) = self.item {
            write!(f, "[{j}].{field}")?;
        }
        Ok(())
    }
}

/// What rule a value broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Violation {
    /// A string is longer than its bound.
    #[error("is {actual} bytes long; the limit is {limit}")]
    TooLong {
        /// The bound.
        limit: usize,
        /// The length found.
        actual: usize,
    },
    /// A list has more entries than its bound.
    #[error("has {actual} entries; the limit is {limit}")]
    TooMany {
        /// The bound.
        limit: usize,
        /// The count found.
        actual: usize,
    },
    /// A required string or list is empty.
    #[error("must not be empty")]
    Empty,
    /// A name that becomes part of a container name or key is not a token.
    #[error("{0}")]
    Token(TokenError),
    /// Two entries share a name that must be unique.
    #[error("is used twice; names must be unique")]
    Duplicate,
    /// A volume names both or neither of `name` and `hostPath`.
    #[error("must set exactly one of `name` (named volume) or `hostPath` (bind mount)")]
    VolumeSource,
    /// A Secret volume that also names a volume or a host path.
    #[error("must set exactly one of `name` (named volume), `hostPath` (bind mount) or `secret`")]
    VolumeSourceV1,
    /// An environment variable with both a value and `valueFrom`.
    #[error("must set `value` or `valueFrom`, not both")]
    EnvSource,
    /// Not a Kubernetes Secret key.
    #[error(
        "must be a Secret key: letters, digits, '-', '_' or '.', and not `.` or `..` (e.g. `tls.crt`)"
    )]
    NotSecretKey,
    /// A path that must be relative and stay inside its directory.
    #[error("must be a relative path without empty, `.` or `..` segments (e.g. `tls/ca.crt`)")]
    RelativePath,
    /// A port number of 0.
    #[error("must be between 1 and 65535")]
    PortZero,
    /// A score type name that is not an identifier like `PodmanV0`.
    #[error("must be an identifier: a letter or '_' then letters, digits or '_' (e.g. PodmanV0)")]
    NotIdentifier,
    /// A path that must be absolute is not.
    #[error("must be an absolute path (start with '/')")]
    NotAbsolute,
    /// A mount over the directory where the agent puts the update lock.
    #[error(
        "is the agent's update-lock directory (/run/iot-agent): the lock's path is the agent's, not the score's; set `updateLock: true` on the container to get the lock there, and mount the volume elsewhere"
    )]
    UpdateLockPath,
    /// Not a Kubernetes label key.
    #[error(
        "must be a label key: an optional DNS-subdomain prefix and '/', then a name of letters, digits, '-', '_' or '.' that starts and ends with a letter or digit (e.g. site or example.com/board)"
    )]
    NotLabelKey,
    /// Not a Kubernetes label value.
    #[error(
        "must be a label value: empty, or letters, digits, '-', '_' or '.' starting and ending with a letter or digit"
    )]
    NotLabelValue,
    /// A number outside its range; `unit` is appended to each number
    /// (`s` for seconds, `m` for millicores, empty for counts).
    #[error("is {actual}{unit}; it must be between {min}{unit} and {max}{unit}")]
    OutOfRange {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
        /// The value found.
        actual: u64,
        /// The unit the numbers are in.
        unit: &'static str,
    },
    /// A memory limit below what Podman accepts.
    #[error(
        "is {actual} bytes; Podman refuses a memory limit under 6 MiB (6291456 bytes): raise it (e.g. 64Mi) or leave it unset"
    )]
    MemoryTooSmall {
        /// The limit found, in bytes.
        actual: u64,
    },
    /// None or several of alternatives of which exactly one must be set.
    #[error("must set exactly one of {of}")]
    OneOf {
        /// The alternatives, as the user spells them.
        of: &'static str,
    },
    /// A check's port that the container does not declare.
    #[error(
        "{port} is not a TCP `containerPort` of this container: add {{\"containerPort\": {port}}} to its `ports` (a `hostPort` is not needed), or set `hostNetwork`"
    )]
    NotAContainerPort {
        /// The port the check names.
        port: u16,
    },
    /// Whitespace or a control character where neither may appear.
    #[error("must not contain whitespace or control characters")]
    Whitespace,
    /// A control character (CR, LF...) in a value sent as an HTTP header.
    #[error("must not contain control characters (CR, LF, ...)")]
    ControlCharacter,
    /// Not visible ASCII where a value goes into an HTTP request line.
    #[error("must be visible ASCII (percent-encode anything else, e.g. /caf%C3%A9)")]
    NotVisibleAscii,
    /// A header the health check's HTTP client sets itself.
    #[error(
        "is set by the agent's HTTP client itself (Host, Content-Length, Transfer-Encoding, Connection); remove it"
    )]
    ReservedHeader,
    /// Not an HTTP header name.
    #[error("must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~ (e.g. X-Probe)")]
    NotHeaderName,
    /// Not a container user.
    #[error(
        "must be `uid`, `uid:gid`, `name` or `name:group` (e.g. 1000:1000 or nobody), without whitespace"
    )]
    NotUser,
}

/// A value that breaks a wire rule, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[error("{path} {violation}")]
pub struct ValidationError {
    /// Where.
    pub path: FieldPath,
    /// What.
    pub violation: Violation,
}

/// Values that can be checked against the wire rules before encoding and
/// after decoding.
pub trait Validate {
    /// Ok when every bound and rule holds.
    fn validate(&self) -> Result<(), ValidationError>;
}

pub(crate) fn check_len(path: FieldPath, s: &str, limit: usize) -> Result<(), ValidationError> {
    if s.len() > limit {
        return Err(ValidationError {
            path,
            violation: Violation::TooLong {
                limit,
                actual: s.len(),
            },
        });
    }
    Ok(())
}

pub(crate) fn check_nonempty(path: FieldPath, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError {
            path,
            violation: Violation::Empty,
        });
    }
    Ok(())
}

pub(crate) fn check_range(
    path: FieldPath,
    actual: u64,
    min: u64,
    max: u64,
    unit: &'static str,
) -> Result<(), ValidationError> {
    if actual < min || actual > max {
        return fail(
            path,
            Violation::OutOfRange {
                min,
                max,
                actual,
                unit,
            },
        );
    }
    Ok(())
}

pub(crate) fn fail(path: FieldPath, violation: Violation) -> Result<(), ValidationError> {
    Err(ValidationError { path, violation })
}
