//! Each target's [`SecretSet`]: every resolved value and login sealed to
//! the device's own public key with [`sealing::seal`], bound to the device,
//! the deployment (the key's second token), the revision and the reference
//! (so a value moved elsewhere does not open).
//!
//! Sealing uses a fresh ephemeral key each time, so the same value sealed
//! twice differs: [`equivalent`] is how a key already written counts as
//! current without a rewrite at every reconcile.

use protocol::sealed::{Binding, PullCredential, Purpose, RegistryLogin, SecretValue};
use protocol::{DesiredState, SecretSet, Text};
use sealing::Zeroizing;

use super::Resolved;

/// Why a device's values could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// [`sealing::seal`] refused (the key is not a curve key, or a value
    /// is too large).
    #[error(transparent)]
    Seal(#[from] sealing::SealError),
    /// A login could not be encoded.
    #[error("encoding a registry login")]
    Encode(#[source] postcard::Error),
    /// More than a desired state carries (checked when resolving).
    #[error("more sealed values than a desired state carries")]
    TooMany,
}

/// `resolved` sealed to `recipient` (the device's public key, `X...`) for
/// `device`'s key of `deployment` at `revision`.
pub fn seal_for(
    device: &str,
    deployment: &str,
    revision: u64,
    recipient: &str,
    resolved: &Resolved,
) -> Result<SecretSet<'static>, SealError> {
    let binding = |purpose| Binding {
        device: Text::borrowed(device),
        deployment: Text::borrowed(deployment),
        revision,
        purpose,
    };
    let mut set = SecretSet::default();
    for (registry, login) in &resolved.logins {
        let plain = Zeroizing::new(
            postcard::to_allocvec(&RegistryLogin {
                username: Text::borrowed(login.username.as_str()),
                password: Text::borrowed(login.password.as_str()),
                identity_token: Text::borrowed(login.identity_token.as_str()),
            })
            .map_err(SealError::Encode)?,
        );
        let b = binding(Purpose::Pull {
            registry: Text::borrowed(registry),
        });
        let sealed = sealing::seal(recipient, &b, &plain)?;
        set.pull
            .push(PullCredential {
                registry: Text::owned(registry.clone()),
                sealed,
            })
            .map_err(|_| SealError::TooMany)?;
    }
    for ((secret, key), value) in &resolved.values {
        let b = binding(Purpose::Value {
            secret: Text::borrowed(secret),
            key: Text::borrowed(key),
        });
        let sealed = sealing::seal(recipient, &b, value)?;
        set.values
            .push(SecretValue {
                secret: Text::owned(secret.clone()),
                key: Text::owned(key.clone()),
                sealed,
            })
            .map_err(|_| SealError::TooMany)?;
    }
    Ok(set)
}

/// Runs `seal` (seconds of X25519 for a fleet of 10,000) off the runtime's
/// other tasks where the runtime allows it (`block_in_place` on a
/// multi-thread runtime, the operator's), else in place (a test's
/// current-thread runtime, or no runtime).
pub fn off_runtime<T>(seal: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(seal),
        _ => seal(),
    }
}

/// Each Deployment's sets as its last plan sealed them, so the next plan
/// reuses a device's set while its revision and key stay the same instead
/// of sealing it again: a reconcile comes every `--resync-secs` and every
/// 30 s re-read of the Secrets, and sealing a login and two values costs
/// 0.6 ms a device (6 s of CPU at 10,000 devices, docs/performance.md),
/// where the reuse costs a map lookup. The revision covers the score and
/// the Secrets' digest, so a reused set holds the values it would seal.
#[derive(Debug, Default)]
pub struct SealCache(std::sync::Mutex<std::collections::HashMap<String, Sealed>>);

/// One Deployment's sealed sets, by device.
pub type Sealed = std::collections::BTreeMap<String, SealedSet>;

/// A device's set and what it was sealed for.
#[derive(Debug, Clone)]
pub struct SealedSet {
    /// The revision it is bound to.
    pub revision: u64,
    /// The device key it is sealed to.
    pub recipient: String,
    /// The sealed values.
    pub set: SecretSet<'static>,
}

impl SealCache {
    /// `owner`'s sets, removed from the cache (the plan stores its own
    /// back with [`SealCache::store`]).
    pub fn take(&self, owner: &str) -> Sealed {
        self.lock().remove(owner).unwrap_or_default()
    }

    /// Keeps `sets` as `owner`'s, replacing what it had: devices no longer
    /// targeted drop out.
    pub fn store(&self, owner: &str, sets: Sealed) {
        self.lock().insert(owner.to_string(), sets);
    }

    /// Forgets `owner` (its Deployment was deleted).
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Sealed>> {
        // A panic elsewhere while holding it leaves a map that is still
        // whole (every change is one insert or remove).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `value` with every sealed box's random parts (the ephemeral sender key
/// and the box) replaced by fixed stand-ins: what stays the same between
/// two seals of the same values to the same key. The stand-ins are not
/// empty, so the result still encodes (the wire contract refuses empty
/// sealed fields). `None` when it does not decode.
pub fn comparable(value: &[u8]) -> Option<DesiredState<'static>> {
    let mut d: DesiredState<'static> = protocol::wire::decode::<DesiredState<'_>>(value)
        .ok()?
        .into_owned();
    let blank = |mut s: protocol::Sealed<'static>| {
        s.sender = Text::borrowed("-");
        s.boxed = protocol::Bytes::owned(vec![0]);
        s
    };
    let secrets = std::mem::take(&mut d.secrets);
    d.secrets = SecretSet {
        pull: secrets.pull.map(|mut p| {
            p.sealed = blank(p.sealed);
            p
        }),
        values: secrets.values.map(|mut v| {
            v.sealed = blank(v.sealed);
            v
        }),
    };
    Some(d)
}

/// Whether the key's `existing` value can stay in place of `fresh` (this
/// reconcile's value): the same bytes, or, when `fresh` carries sealed
/// values, the same value but for the sealed boxes' random parts. The
/// recipients count: a value sealed to a key the device no longer reports
/// is not current, and the device gets a new one (same revision).
pub fn equivalent(existing: &[u8], fresh: &[u8]) -> bool {
    if existing == fresh {
        return true;
    }
    // Only a value with sealed parts differs at each encoding.
    if fresh.first() != Some(&protocol::wire::FORMAT_VERSION_5) {
        return false;
    }
    match (comparable(existing), comparable(fresh)) {
        (Some(a), Some(b)) => !b.secrets.is_empty() && a == b,
        _ => false,
    }
}
