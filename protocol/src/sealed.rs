//! Secrets sealed to one device: what a `DesiredState` (format version 5)
//! carries instead of clear text, and what the sealed box holds.
//!
//! The operator seals each value to the target device's own public key
//! (an X25519 "curve" key in nkeys' encoding, `X...`, the key NATS itself
//! uses for xkeys) with a fresh ephemeral sender key, and writes only the
//! [`Sealed`] form. The box's plaintext is [`SealedPlaintext`]: the value
//! with the [`Binding`] it was sealed for. The box's tag authenticates the
//! binding with the value, so it works as associated data: the device opens
//! a value only when the binding is the one it expects (its own id, the
//! key's deployment, the value's revision and the reference that names
//! it), and a sealed value moved to another key, device, deployment,
//! revision or reference does not open.
//!
//! This crate only spells the layout; sealing and opening (nkeys' `XKey`,
//! `crypto_box`'s XSalsa20-Poly1305) live in the `sealing` crate.

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::text::{Bytes, Text};

/// At most this many registry logins per desired state.
pub const MAX_PULL_CREDENTIALS: usize = 8;
/// At most this many sealed secret values per desired state.
pub const MAX_SECRET_VALUES: usize = 64;
/// The largest clear-text secret value the agent accepts, in bytes (the
/// whole desired state is bounded by [`crate::limits::MAX_VALUE_SIZE`]).
pub const MAX_SECRET_SIZE: usize = 16 * 1024;
/// The longest Secret name or key (Kubernetes' DNS-subdomain bound).
pub const MAX_SECRET_NAME_LEN: usize = 253;
/// The largest [`Sealed::boxed`]: a value of [`MAX_SECRET_SIZE`] with its
/// binding, the nonce, the tag and nkeys' prefix.
pub const MAX_SEALED_SIZE: usize = MAX_SECRET_SIZE + 1024;

/// A value sealed to one device's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct Sealed<'a> {
    /// The device public key it is sealed to (`X...`): the operator
    /// re-seals when the device reports another.
    #[serde(borrow)]
    pub recipient: Text<'a>,
    /// The ephemeral public key it was sealed with (`X...`), used once.
    #[serde(borrow)]
    pub sender: Text<'a>,
    /// nkeys' sealed form: `xkv1`, the 24-byte nonce, then the box
    /// (ciphertext of the postcard-encoded [`SealedPlaintext`] and its tag).
    #[serde(borrow)]
    pub boxed: Bytes<'a>,
}

/// What a sealed value is for: checked on opening, inside the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct Binding<'a> {
    /// The device it is for (the key's first token).
    #[serde(borrow)]
    pub device: Text<'a>,
    /// The deployment it is for (the key's second token).
    #[serde(borrow)]
    pub deployment: Text<'a>,
    /// The revision of the desired state that carries it.
    pub revision: u64,
    /// Which reference it answers.
    #[serde(borrow)]
    pub purpose: Purpose<'a>,
}

/// Which reference a sealed value answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Purpose<'a> {
    /// The login for pulling from `registry` (a [`RegistryLogin`]).
    Pull {
        /// The registry host (`host[:port]`).
        #[serde(borrow)]
        registry: Text<'a>,
    },
    /// Key `key` of the Secret named `secret`.
    Value {
        /// The Secret's name.
        #[serde(borrow)]
        secret: Text<'a>,
        /// The key in the Secret.
        #[serde(borrow)]
        key: Text<'a>,
    },
}

/// The plaintext inside a [`Sealed`] box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedPlaintext<'a> {
    /// What it was sealed for.
    #[serde(borrow)]
    pub binding: Binding<'a>,
    /// The clear-text value: the Secret key's bytes, or a postcard
    /// [`RegistryLogin`].
    #[serde(borrow)]
    pub value: Bytes<'a>,
}

/// A registry login, the value of a [`Purpose::Pull`]: user name and
/// password, or an identity token (either may be empty).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryLogin<'a> {
    /// The user name.
    #[serde(borrow)]
    pub username: Text<'a>,
    /// The password.
    #[serde(borrow)]
    pub password: Text<'a>,
    /// An OAuth identity token, when the registry issued one.
    #[serde(borrow)]
    pub identity_token: Text<'a>,
}

/// Never prints the password or the token.
impl core::fmt::Debug for RegistryLogin<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A registry login sealed to the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct PullCredential<'a> {
    /// The registry host it logs in to (`host[:port]`; Docker Hub is
    /// `docker.io`).
    #[serde(borrow)]
    pub registry: Text<'a>,
    /// The sealed [`RegistryLogin`].
    #[serde(borrow)]
    pub sealed: Sealed<'a>,
}

/// A Secret's key sealed to the device, for the score's references to it
/// (`env[].valueFrom.secretKeyRef`, `volumes[].secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct SecretValue<'a> {
    /// The Secret's name.
    #[serde(borrow)]
    pub secret: Text<'a>,
    /// The key in it.
    #[serde(borrow)]
    pub key: Text<'a>,
    /// The sealed bytes of that key.
    #[serde(borrow)]
    pub sealed: Sealed<'a>,
}

/// Everything sealed that a desired state carries. Empty by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "camelCase")]
pub struct SecretSet<'a> {
    /// Registry logins, one per registry the score pulls from privately.
    #[serde(borrow)]
    pub pull: BoundedVec<PullCredential<'a>, MAX_PULL_CREDENTIALS>,
    /// Secret values the score references.
    #[serde(borrow)]
    pub values: BoundedVec<SecretValue<'a>, MAX_SECRET_VALUES>,
}

impl<'a> SecretSet<'a> {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.pull.is_empty() && self.values.is_empty()
    }

    /// The login sealed for `registry`, if any; host names compare
    /// without case, as DNS does.
    pub fn pull_for(&self, registry: &str) -> Option<&PullCredential<'a>> {
        self.pull
            .iter()
            .find(|p| p.registry.as_str().eq_ignore_ascii_case(registry))
    }

    /// The value sealed for key `key` of Secret `secret`, if any.
    pub fn value_for(&self, secret: &str, key: &str) -> Option<&SecretValue<'a>> {
        self.values
            .iter()
            .find(|v| v.secret.as_str() == secret && v.key.as_str() == key)
    }

    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> SecretSet<'static> {
        SecretSet {
            pull: self.pull.map(|p| PullCredential {
                registry: p.registry.into_owned(),
                sealed: p.sealed.into_owned(),
            }),
            values: self.values.map(|v| SecretValue {
                secret: v.secret.into_owned(),
                key: v.key.into_owned(),
                sealed: v.sealed.into_owned(),
            }),
        }
    }
}

impl Sealed<'_> {
    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> Sealed<'static> {
        Sealed {
            recipient: self.recipient.into_owned(),
            sender: self.sender.into_owned(),
            boxed: self.boxed.into_owned(),
        }
    }
}

/// Whether `key` is a valid key of a Kubernetes Secret
/// (`[-._a-zA-Z0-9]+`, not `.` or `..`): what keeps a key that becomes a
/// file name on the device inside its directory.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The registry host an image reference pulls from, as Docker and Podman
/// name it: the first path component when it looks like a host (has a
/// `.` or `:`, or is `localhost`), else `docker.io`.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if first.eq_ignore_ascii_case("index.docker.io")
                || first.eq_ignore_ascii_case("registry-1.docker.io")
                || first.eq_ignore_ascii_case("docker.io")
            {
                "docker.io"
            } else {
                first
            }
        }
        _ => "docker.io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_of_follows_docker_reference_rules() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1.27"), "docker.io");
        assert_eq!(registry_of("docker.io/library/nginx"), "docker.io");
        assert_eq!(registry_of("index.docker.io/library/nginx"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(
            registry_of("registry.example.com/team/app@sha256:ab"),
            "registry.example.com"
        );
        assert_eq!(registry_of("user/app"), "docker.io");
        assert_eq!(registry_of("Index.Docker.io/library/nginx"), "docker.io");
        assert_eq!(
            registry_of("Registry.Example.com/app"),
            "Registry.Example.com"
        );
    }

    #[test]
    fn secret_keys_follow_kubernetes_rules() {
        for ok in ["password", ".dockerconfigjson", "tls.crt", "a-b_c.9"] {
            assert!(is_secret_key(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "/abs", "ké"] {
            assert!(!is_secret_key(bad), "{bad}");
        }
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn login_debug_hides_the_password() {
        let l = RegistryLogin {
            username: Text::borrowed("u"),
            password: Text::borrowed("hunter2"),
            identity_token: Text::borrowed("tok"),
        };
        let s = alloc::format!("{l:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok"), "{s}");
    }
}
