//! The Secrets a Deployment references, resolved and sealed to each target
//! device.
//!
//! [`References::of`] lists what the score (`env[].valueFrom.secretKeyRef`,
//! `volumes[].secret`) and `spec.imagePullSecrets` name. A resolver reads
//! them into [`Resolved`]: the values, in memory only, and a digest that
//! [`crate::apply::Plan::set_secrets`] mixes into the revision
//! ([`protocol::ScorePayload::content_hash_with`]), so that a changed Secret
//! is a new revision and rolls out like any change:
//! - [`resolve`]: Kubernetes Secrets in the Deployment's namespace (the
//!   controller). The digest is each referenced Secret's `metadata.uid`
//!   and `resourceVersion`, never a hash of its values: the revision is
//!   shown in the CR status, names ControllerRevisions and reaches every
//!   board, and a hash of clear text there would let anyone test guesses
//!   of a password offline. A resourceVersion changes at every write of
//!   the Secret, which is what a rotation is.
//! - [`local`]: Secret manifests in local files, for `iot-operator apply
//!   --secrets` without a cluster. Files have no resourceVersion, so there
//!   the digest follows the referenced values. A plain hash of them would
//!   be the same oracle (folding it into 64 bits does not stop anyone from
//!   testing guesses against the revision), so it is an HMAC-SHA256 keyed
//!   with a random key the CLI creates once and keeps on the machine
//!   ([`digest_key`]): nothing derived from clear text alone leaves it.
//!   Applies from two machines with different keys give different
//!   revisions (a harmless extra rollout); administrators who share the
//!   key file avoid that.
//!
//! [`seal`] makes each device's [`protocol::SecretSet`] from [`Resolved`];
//! [`dockerconfig`] reads a `.dockerconfigjson`.

pub mod digest_key;
pub mod dockerconfig;
pub mod local;
pub mod resolve;
pub mod seal;

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::ImagePullSecret;
pub use digest_key::DigestKey;
pub use dockerconfig::Login;
use k8s_openapi::api::core::v1::Secret;
use protocol::sealed::{MAX_PULL_CREDENTIALS, MAX_SECRET_SIZE, MAX_SECRET_VALUES};
use protocol::{IotScore, ScorePayload};
use sealing::Zeroizing;

/// The Secret type `spec.imagePullSecrets` must name.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The key of a [`DOCKER_CONFIG_JSON_TYPE`] Secret that holds the logins.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

/// What a Deployment references: Secret keys, whole Secrets, and the
/// registries its images come from with the Secrets that may log in to
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// `(secret, key)` named by a `secretKeyRef` or a secret volume's
    /// `items`, with where (for messages).
    pub keys: BTreeMap<(String, String), String>,
    /// Secrets a volume mounts whole (no `items`): every key, with where.
    pub whole: BTreeMap<String, String>,
    /// The registries the score's images pull from (`registry_of`).
    pub registries: BTreeSet<String>,
    /// `spec.imagePullSecrets`, in order (the first with a login for a
    /// registry wins).
    pub pull_secrets: Vec<String>,
}

impl References {
    /// What `payload` (the score as it travels) and `pull_secrets`
    /// reference. A score routed as JSON references nothing.
    pub fn of(payload: &ScorePayload<'_>, pull_secrets: &[ImagePullSecret]) -> References {
        let mut refs = References {
            pull_secrets: pull_secrets.iter().map(|p| p.name.clone()).collect(),
            ..References::default()
        };
        match payload.decode() {
            Ok(IotScore::PodmanV0(s)) => {
                for c in s.containers.iter() {
                    refs.registries.insert(
                        protocol::sealed::registry_of(c.image.as_str()).to_ascii_lowercase(),
                    );
                }
            }
            Ok(IotScore::PodmanV1(s)) => {
                for (i, c) in s.containers.iter().enumerate() {
                    refs.registries.insert(
                        protocol::sealed::registry_of(c.image.as_str()).to_ascii_lowercase(),
                    );
                    for (j, e) in c.env.iter().enumerate() {
                        if let Some(from) = &e.value_from {
                            let r = &from.secret_key_ref;
                            refs.keys
                                .entry((r.name.as_str().into(), r.key.as_str().into()))
                                .or_insert_with(|| {
                                    format!(
                                        "spec.score.data.containers[{i}].env[{j}].valueFrom.secretKeyRef"
                                    )
                                });
                        }
                    }
                    for (j, v) in c.volumes.iter().enumerate() {
                        let Some(secret) = &v.secret else { continue };
                        let at = format!("spec.score.data.containers[{i}].volumes[{j}].secret");
                        let name = secret.secret_name.as_str().to_string();
                        if secret.items.is_empty() {
                            refs.whole.entry(name).or_insert(at);
                        } else {
                            for item in secret.items.iter() {
                                refs.keys
                                    .entry((name.clone(), item.key.as_str().into()))
                                    .or_insert_with(|| at.clone());
                            }
                        }
                    }
                }
            }
            Err(_) => {}
        }
        refs
    }

    /// Whether nothing is referenced: the Deployment is written as before.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.whole.is_empty() && self.pull_secrets.is_empty()
    }

    /// Every Secret to read, each once.
    pub fn secret_names(&self) -> BTreeSet<String> {
        self.keys
            .keys()
            .map(|(s, _)| s.clone())
            .chain(self.whole.keys().cloned())
            .chain(self.pull_secrets.iter().cloned())
            .collect()
    }
}

/// Why the referenced Secrets cannot be used. Each names the Secret (and
/// key), never a value; nothing is written for the new revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The Secret does not exist.
    #[error("Secret {secret:?} (referenced by {at}) does not exist in namespace {namespace:?}")]
    NotFound {
        /// The Secret's name.
        secret: String,
        /// The Deployment's namespace.
        namespace: String,
        /// Where the Deployment names it.
        at: String,
    },
    /// The operator may not read it.
    #[error(
        "the operator may not read Secret {secret:?} in namespace {namespace:?} (referenced by {at}): give its service account `get` on secrets (deploy/operator.yaml)"
    )]
    Forbidden {
        /// The Secret's name.
        secret: String,
        /// The Deployment's namespace.
        namespace: String,
        /// Where the Deployment names it.
        at: String,
    },
    /// The key is not in the Secret.
    #[error("Secret {secret:?} has no key {key:?} (referenced by {at})")]
    KeyMissing {
        /// The Secret's name.
        secret: String,
        /// The key.
        key: String,
        /// Where the Deployment names it.
        at: String,
    },
    /// An imagePullSecret is not a dockerconfigjson Secret.
    #[error(
        "Secret {secret:?} in spec.imagePullSecrets is of type {found:?}, not kubernetes.io/dockerconfigjson (make it with `kubectl create secret docker-registry`)"
    )]
    WrongType {
        /// The Secret's name.
        secret: String,
        /// Its type.
        found: String,
    },
    /// An imagePullSecret's `.dockerconfigjson` cannot be read.
    #[error("Secret {secret:?} in spec.imagePullSecrets: .dockerconfigjson {reason}")]
    MalformedDockerConfig {
        /// The Secret's name.
        secret: String,
        /// What is wrong, naming fields only.
        reason: String,
    },
    /// A value is larger than a device accepts.
    #[error(
        "key {key:?} of Secret {secret:?} is {size} bytes; at most {max} are sealed to a device",
        max = MAX_SECRET_SIZE
    )]
    TooLarge {
        /// The Secret's name.
        secret: String,
        /// The key.
        key: String,
        /// Its size.
        size: usize,
    },
    /// More values or logins than a desired state carries.
    #[error("the Deployment references {count} {what}; at most {max} are sealed to a device")]
    TooMany {
        /// `Secret keys` or `registry logins`.
        what: &'static str,
        /// How many.
        count: usize,
        /// The bound.
        max: usize,
    },
}

/// What the references resolved to. Lives in memory only; `Debug` shows
/// names, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The referenced keys' values, by `(secret, key)`.
    pub values: BTreeMap<(String, String), Zeroizing<Vec<u8>>>,
    /// A login per registry the images come from, when an imagePullSecret
    /// has one.
    pub logins: BTreeMap<String, Login>,
    /// What [`crate::apply::Plan::set_secrets`] mixes into the revision;
    /// empty when nothing is referenced.
    pub digest: Vec<u8>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("values", &self.values.keys().collect::<Vec<_>>())
            .field("logins", &self.logins.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// Whether nothing is sealed (the values stay byte-identical to a
    /// Deployment without references).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.logins.is_empty()
    }
}

/// What the revision's digest covers.
#[derive(Debug, Clone, Copy)]
pub enum Fingerprint<'k> {
    /// Each Secret's uid and resourceVersion (Kubernetes).
    Versions,
    /// The HMAC-SHA256 of the referenced values under the CLI's own key
    /// (local files), never a plain hash of them.
    Values(&'k DigestKey),
}

/// Resolves `refs` from the Secrets `get` finds by name (`None`: absent).
/// Shared by [`resolve`] and [`local`], which differ in where Secrets come
/// from and in `fingerprint`.
pub fn resolve_from<'s>(
    refs: &References,
    namespace: &str,
    get: impl Fn(&str) -> Option<&'s Secret>,
    fingerprint: Fingerprint<'_>,
) -> Result<Resolved, SecretError> {
    let mut resolved = Resolved::default();
    // The Secrets whose contents the result depends on.
    let mut used: BTreeSet<String> = BTreeSet::new();
    let found = |name: &str, at: &str| {
        get(name).ok_or_else(|| SecretError::NotFound {
            secret: name.to_string(),
            namespace: namespace.to_string(),
            at: at.to_string(),
        })
    };
    for ((name, key), at) in &refs.keys {
        let secret = found(name, at)?;
        let value = value_of(secret, key).ok_or_else(|| SecretError::KeyMissing {
            secret: name.clone(),
            key: key.clone(),
            at: at.clone(),
        })?;
        resolved.values.insert((name.clone(), key.clone()), value);
        used.insert(name.clone());
    }
    for (name, at) in &refs.whole {
        let secret = found(name, at)?;
        for key in keys_of(secret) {
            if let Some(value) = value_of(secret, &key) {
                resolved.values.insert((name.clone(), key), value);
            }
        }
        used.insert(name.clone());
    }
    for ((secret, key), value) in &resolved.values {
        if value.len() > MAX_SECRET_SIZE {
            return Err(SecretError::TooLarge {
                secret: secret.clone(),
                key: key.clone(),
                size: value.len(),
            });
        }
    }
    for name in &refs.pull_secrets {
        let secret = found(name, "spec.imagePullSecrets")?;
        let found_type = secret.type_.clone().unwrap_or_default();
        if found_type != DOCKER_CONFIG_JSON_TYPE {
            return Err(SecretError::WrongType {
                secret: name.clone(),
                found: if found_type.is_empty() {
                    "Opaque".into()
                } else {
                    found_type
                },
            });
        }
        let malformed = |reason: String| SecretError::MalformedDockerConfig {
            secret: name.clone(),
            reason,
        };
        let config = value_of(secret, DOCKER_CONFIG_JSON_KEY)
            .ok_or_else(|| malformed("is missing (the Secret has no such key)".into()))?;
        let logins = dockerconfig::parse(&config).map_err(malformed)?;
        for registry in &refs.registries {
            if resolved.logins.contains_key(registry) {
                continue;
            }
            // An entry that cannot be read fails only when the images
            // pull from its registry (the kubelet skips it otherwise).
            if let Some(login) = logins.login_for(registry).map_err(malformed)? {
                resolved.logins.insert(registry.clone(), login.clone());
                used.insert(name.clone());
            }
        }
    }
    if resolved.values.len() > MAX_SECRET_VALUES {
        return Err(SecretError::TooMany {
            what: "Secret keys",
            count: resolved.values.len(),
            max: MAX_SECRET_VALUES,
        });
    }
    if resolved.logins.len() > MAX_PULL_CREDENTIALS {
        return Err(SecretError::TooMany {
            what: "registry logins",
            count: resolved.logins.len(),
            max: MAX_PULL_CREDENTIALS,
        });
    }
    if !resolved.is_empty() {
        resolved.digest = match fingerprint {
            Fingerprint::Versions => versions_digest(&used, &get),
            Fingerprint::Values(key) => values_digest(&resolved, key),
        };
    }
    Ok(resolved)
}

/// The keys a Secret holds (`data` and `stringData`).
fn keys_of(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|d| d.keys().cloned());
    let strings = secret.string_data.iter().flat_map(|d| d.keys().cloned());
    data.chain(strings).collect()
}

/// The value of `key`: `stringData` wins over `data`, as when the API
/// server merges a manifest's `stringData` in.
fn value_of(secret: &Secret, key: &str) -> Option<Zeroizing<Vec<u8>>> {
    if let Some(s) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(Zeroizing::new(s.as_bytes().to_vec()));
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| Zeroizing::new(b.0.clone()))
}

/// Each used Secret's name, uid and resourceVersion: no clear text.
fn versions_digest<'s>(
    used: &BTreeSet<String>,
    get: &impl Fn(&str) -> Option<&'s Secret>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for name in used {
        let meta = get(name).map(|s| &s.metadata);
        for part in [
            Some(name.as_str()),
            meta.and_then(|m| m.uid.as_deref()),
            meta.and_then(|m| m.resource_version.as_deref()),
        ] {
            out.extend_from_slice(part.unwrap_or_default().as_bytes());
            out.push(0);
        }
    }
    out
}

/// The HMAC-SHA256 under `key` of every resolved value and login, each
/// length-prefixed.
fn values_digest(r: &Resolved, key: &DigestKey) -> Vec<u8> {
    let mut data = Zeroizing::new(Vec::new());
    let mut put = |b: &[u8]| {
        data.extend_from_slice(&(b.len() as u64).to_le_bytes());
        data.extend_from_slice(b);
    };
    for ((secret, key), value) in &r.values {
        put(b"value");
        put(secret.as_bytes());
        put(key.as_bytes());
        put(value);
    }
    for (registry, login) in &r.logins {
        put(b"login");
        put(registry.as_bytes());
        put(login.username.as_bytes());
        put(login.password.as_bytes());
        put(login.identity_token.as_bytes());
    }
    key.sign(&data)
}

#[cfg(test)]
mod tests;
