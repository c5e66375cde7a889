//! Board labels: the syntax a device's labels must have to become
//! Kubernetes labels on its `Device` object, checked the same way by the
//! agent (`check-config`, before it sends them) and the operator (when they
//! arrive).
//!
//! Written here rather than taken from a crate: the rules are Kubernetes'
//! (`IsQualifiedName`, `IsValidLabelValue`), a few dozen lines with no
//! allocation, and must run on `no_std` devices; no maintained `no_std`
//! crate implements them.

use crate::limits::MAX_LABEL_LEN;
use crate::validate::Violation;

/// Longest DNS-subdomain prefix of a key (Kubernetes' own bound); the whole
/// key is also bounded by [`MAX_LABEL_LEN`].
const MAX_PREFIX_LEN: usize = 253;

/// Checks a label key: `[prefix/]name`, as Kubernetes accepts it, at most
/// [`MAX_LABEL_LEN`] bytes in all (a board's labels travel in its
/// heartbeat, where every byte counts).
pub fn validate_label_key(key: &str) -> Result<(), Violation> {
    if key.is_empty() {
        return Err(Violation::Empty);
    }
    if key.len() > MAX_LABEL_LEN {
        return Err(Violation::TooLong {
            limit: MAX_LABEL_LEN,
            actual: key.len(),
        });
    }
    validate_qualified_name(key)
}

/// Checks a Kubernetes label key without this protocol's bound on its
/// whole length (`IsQualifiedName`: a DNS-subdomain prefix of at most 253
/// bytes, `/`, a name of at most 63): the keys an administrator may put on
/// a Device and a selector may name.
pub fn validate_qualified_name(key: &str) -> Result<(), Violation> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err(Violation::NotLabelKey);
    }
    if name.is_empty() || name.len() > MAX_LABEL_LEN || !is_name(name) {
        return Err(Violation::NotLabelKey);
    }
    Ok(())
}

/// Checks a label value: empty, or a name of at most [`MAX_LABEL_LEN`] bytes.
pub fn validate_label_value(value: &str) -> Result<(), Violation> {
    if value.len() > MAX_LABEL_LEN {
        return Err(Violation::TooLong {
            limit: MAX_LABEL_LEN,
            actual: value.len(),
        });
    }
    if !value.is_empty() && !is_name(value) {
        return Err(Violation::NotLabelValue);
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_dns_subdomain(s: &str) -> bool {
    let lower = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_PREFIX_LEN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(lower)
                && b.last().is_some_and(lower)
                && b.iter().all(|c| lower(c) || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_kubernetes_accepts_them() {
        for ok in ["site", "board", "a", "example.com/board", "x_y.z-1", "A1"] {
            assert_eq!(validate_label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "-site",
            "site-",
            "si te",
            "Example.com/x",
            "a/b/c",
            "/x",
            "x/",
            "é",
            ".x",
            "a..b/x",
        ] {
            assert!(validate_label_key(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_label_key(""), Err(Violation::Empty));
        assert!(matches!(
            validate_label_key(&"k".repeat(64)),
            Err(Violation::TooLong { limit: 63, .. })
        ));
        // Kubernetes itself allows a long prefix.
        let long = "a-rather-long-subdomain-prefix.of-an-organisation.example.com/site";
        assert!(validate_label_key(long).is_err());
        assert_eq!(validate_qualified_name(long), Ok(()));
        let name = "x/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";
        assert!(validate_qualified_name(name).is_err(), "a 64-byte name");
    }

    #[test]
    fn values_as_kubernetes_accepts_them() {
        for ok in ["", "lyon", "rpi4", "v1.2_3-x"] {
            assert_eq!(validate_label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-x", "x-", "a b", "a/b", "é"] {
            assert_eq!(
                validate_label_value(bad),
                Err(Violation::NotLabelValue),
                "{bad}"
            );
        }
        assert!(validate_label_value(&"v".repeat(64)).is_err());
    }
}
