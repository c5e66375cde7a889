//! The CLI's secret key for the revision digest of local Secrets
//! (`iot-operator apply --secrets`).
//!
//! Local manifests have no resourceVersion, so the revision must follow
//! the values themselves. A plain hash of them would be mixed into the
//! 64-bit revision that every device and every reader of the buckets sees:
//! anyone could then test password guesses offline against it. The digest
//! is instead an HMAC-SHA256 of the values keyed with 32 random bytes that
//! the CLI creates once and keeps on this machine (mode 0600), so no value
//! derived from clear text alone leaves the machine.
//!
//! Two machines with different keys give the same Secrets different
//! revisions: an apply from the other machine is a harmless extra rollout.
//! Administrators who share the file avoid it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ring::hmac;

/// The environment variable that names the key file (as
/// `--secrets-digest-key` does).
pub const ENV: &str = "IOT_SECRETS_DIGEST_KEY";

/// The key's length in bytes.
pub const KEY_LEN: usize = 32;

/// The HMAC key the local digest is made with.
#[derive(Clone)]
pub struct DigestKey(hmac::Key);

/// Never prints the key.
impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DigestKeyError {
    /// It could not be read, created or written.
    #[error("{path}: cannot {what}")]
    Io {
        /// The file.
        path: PathBuf,
        /// `read`, `create`...
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Others may read it.
    #[error(
        "{path}: mode {mode:o} lets others read the key; run `chmod 600 {path}`",
        path = path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It does not hold 64 hex digits.
    #[error("{path}: not a key (one line of {len} hex digits expected)", len = KEY_LEN * 2, path = path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// No random bytes to make one.
    #[error("the system's random source failed")]
    Random,
}

impl DigestKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> DigestKey {
        DigestKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// A new random key.
    pub fn generate() -> Result<(DigestKey, [u8; KEY_LEN]), DigestKeyError> {
        let rng = ring::rand::SystemRandom::new();
        let bytes: [u8; KEY_LEN] = ring::rand::generate(&rng)
            .map_err(|_| DigestKeyError::Random)?
            .expose();
        Ok((DigestKey::from_bytes(&bytes), bytes))
    }

    /// Reads the key at `path`, creating it (mode 0600, its directory
    /// 0700) when it does not exist. A file others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<DigestKey, DigestKeyError> {
        let io = |what, source| DigestKeyError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(io("read", e)),
        }
        let mode = std::fs::metadata(path)
            .map_err(|e| io("read", e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(DigestKeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text =
            sealing::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io("read", e))?);
        let malformed = || DigestKeyError::Malformed {
            path: path.to_path_buf(),
        };
        let hex = text.trim();
        if hex.len() != KEY_LEN * 2 || !hex.is_ascii() {
            return Err(malformed());
        }
        let mut bytes = sealing::Zeroizing::new([0u8; KEY_LEN]);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
        }
        Ok(DigestKey::from_bytes(&bytes))
    }

    /// The HMAC-SHA256 of `data` under this key.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        hmac::sign(&self.0, data).as_ref().to_vec()
    }
}

/// Where the key is kept when neither `--secrets-digest-key` nor
/// [`ENV`] says: `$XDG_CONFIG_HOME/iot-operator/secrets-digest.key`, else
/// `~/.config/iot-operator/secrets-digest.key`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("iot-operator").join("secrets-digest.key"))
}

/// Writes a new key at `path` with [`sealing::create_private`], which
/// never replaces one: when another process created it first, that key is
/// used.
fn create(path: &Path) -> Result<(), DigestKeyError> {
    let (_, bytes) = DigestKey::generate()?;
    let bytes = sealing::Zeroizing::new(bytes);
    let mut hex = sealing::Zeroizing::new(String::with_capacity(KEY_LEN * 2 + 1));
    for b in bytes.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.push('\n');
    match sealing::create_private(path, hex.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DigestKeyError::Io {
            path: path.to_path_buf(),
            what: "create",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("k");
        let a = DigestKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = DigestKey::load_or_create(&path).unwrap();
        assert_eq!(a.sign(b"x"), b.sign(b"x"), "the same key read back");
        let other = DigestKey::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(a.sign(b"x"), other.sign(b"x"), "a new key is random");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = DigestKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::write(dir.path().join("other"), "nothex\n").unwrap();
        let e = DigestKey::load_or_create(&dir.path().join("other")).unwrap_err();
        assert!(matches!(e, DigestKeyError::Malformed { .. }), "{e}");
    }
}
