//! Secrets sealed to one device ([`protocol::sealed`] spells the layout).
//!
//! The operator calls [`seal`]: a fresh ephemeral curve key (X25519) boxes
//! the postcard of [`SealedPlaintext`] (the value and the [`Binding`] it is
//! for) to the device's public key, with nkeys' `XKey` (XSalsa20-Poly1305,
//! the box NATS uses for xkeys). The agent calls [`DeviceKey::open`], which
//! refuses a box whose binding is not the one the agent expects, so that a
//! sealed value moved to another key, device, deployment, revision or
//! reference does not open: the box's tag authenticates the binding with
//! the value, which makes it associated data.
//!
//! Clear text is returned in [`Zeroizing`] buffers, wiped when dropped.
//! Nothing here writes clear text anywhere.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nkeys::XKey;
use protocol::{Binding, Bytes, Sealed, SealedPlaintext, Text};
pub use zeroize::Zeroizing;

/// Why a value could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The recipient is not an nkeys curve public key (`X...`).
    #[error("{key:?} is not a device sealing key (an nkeys curve public key, `X...`)")]
    NotAKey {
        /// The key as given.
        key: String,
        /// nkeys' reason.
        #[source]
        source: nkeys::error::Error,
    },
    /// The value is larger than a device accepts.
    #[error("the value is {actual} bytes; at most {limit} are sealed")]
    TooLarge {
        /// [`protocol::sealed::MAX_SECRET_SIZE`].
        limit: usize,
        /// Its size.
        actual: usize,
    },
    /// The box could not be made.
    #[error("sealing failed")]
    Box(#[source] nkeys::error::Error),
    /// The plaintext could not be encoded.
    #[error("encoding the plaintext")]
    Encode(#[source] postcard::Error),
}

/// Why a sealed value did not open. None of these carries clear text.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Sealed to another key than this device's (the operator has not
    /// seen the device's current key yet, or the value is someone else's).
    #[error("sealed to key {sealed_to}, not to this device's key {ours}")]
    OtherRecipient {
        /// The key it was sealed to.
        sealed_to: String,
        /// This device's key.
        ours: String,
    },
    /// The sender key is not a curve public key.
    #[error("the sealed value's sender key is malformed")]
    Sender(#[source] nkeys::error::Error),
    /// The box does not open with this key (tampered with, or not sealed
    /// to it).
    #[error("the sealed value does not open with this device's key")]
    Box(#[source] nkeys::error::Error),
    /// The box opened but holds no valid plaintext.
    #[error("the sealed value's plaintext is malformed")]
    Plaintext(#[source] postcard::Error),
    /// It was sealed for something else: moved from another device,
    /// deployment, revision or reference.
    #[error("sealed for {found}, not for {expected}")]
    WrongBinding {
        /// What it was sealed for.
        found: String,
        /// What it was expected to be for.
        expected: String,
    },
}

/// Why the device key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {what}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no curve seed.
    #[error(
        "{path} does not hold a device sealing key (an nkeys curve seed, `SX...`, on its first line); `cargo xtask creds` writes one"
    )]
    NotASeed {
        /// The key file.
        path: PathBuf,
        /// nkeys' reason.
        #[source]
        source: nkeys::error::Error,
    },
    /// Others may read the file.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); the device key must be private: chmod 600 {path}"
    )]
    NotPrivate {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// A device's sealing key pair, loaded from its seed file.
pub struct DeviceKey {
    key: XKey,
    public: String,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new random key pair (for tests and for key files written here).
    pub fn generate() -> Self {
        Self::from_xkey(XKey::new())
    }

    fn from_xkey(key: XKey) -> Self {
        let public = key.public_key();
        DeviceKey { key, public }
    }

    /// The key pair whose seed (`SX...`) is `seed`.
    pub fn from_seed(seed: &str) -> Result<Self, nkeys::error::Error> {
        XKey::from_seed(seed.trim()).map(Self::from_xkey)
    }

    /// The seed, for writing the key file.
    pub fn seed(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.seed().unwrap_or_default())
    }

    /// Loads the key from `path`: the first line that is a curve seed. The
    /// file must not be readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, what, source }
        };
        // One open file for the mode check and the read: a file swapped in
        // between cannot pass the check.
        let mut file = fs::File::open(path).map_err(io("reading the device key"))?;
        let meta = file.metadata().map_err(io("reading the device key"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::NotPrivate {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut file, &mut text)
            .map_err(io("reading the device key"))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SX"))
            .unwrap_or_else(|| text.trim());
        Self::from_seed(line).map_err(|source| KeyError::NotASeed {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads the key from `path`, or creates a new one there with
    /// [`create_private`] when it does not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path).map(|k| (k, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_path_buf(),
                    what: "reading the device key",
                    source,
                });
            }
        }
        let key = Self::generate();
        let mut line = key.seed();
        line.push('\n');
        match create_private(path, line.as_bytes()) {
            Ok(()) => Ok((key, true)),
            // Another process created it meanwhile: that key is the one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path).map(|k| (k, false))
            }
            Err(source) => Err(KeyError::Io {
                path: path.to_path_buf(),
                what: "creating the device key",
                source,
            }),
        }
    }

    /// The public key (`X...`) the operator seals to.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Opens `sealed`, which must be sealed to this key for `expected`.
    pub fn open(
        &self,
        sealed: &Sealed<'_>,
        expected: &Binding<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.recipient.as_str() != self.public {
            return Err(OpenError::OtherRecipient {
                sealed_to: sealed.recipient.as_str().to_string(),
                ours: self.public.clone(),
            });
        }
        let sender = XKey::from_public_key(sealed.sender.as_str()).map_err(OpenError::Sender)?;
        let plain = Zeroizing::new(
            self.key
                .open(sealed.boxed.as_slice(), &sender)
                .map_err(OpenError::Box)?,
        );
        let decoded: SealedPlaintext<'_> =
            postcard::from_bytes(&plain).map_err(OpenError::Plaintext)?;
        if decoded.binding != *expected {
            return Err(OpenError::WrongBinding {
                found: describe(&decoded.binding),
                expected: describe(expected),
            });
        }
        Ok(Zeroizing::new(decoded.value.as_slice().to_vec()))
    }
}

/// Seals `value` for `binding` to the device whose public key is
/// `recipient`, with a fresh ephemeral key: sealing the same value twice
/// gives different bytes.
pub fn seal(
    recipient: &str,
    binding: &Binding<'_>,
    value: &[u8],
) -> Result<Sealed<'static>, SealError> {
    if value.len() > protocol::sealed::MAX_SECRET_SIZE {
        return Err(SealError::TooLarge {
            limit: protocol::sealed::MAX_SECRET_SIZE,
            actual: value.len(),
        });
    }
    let to = XKey::from_public_key(recipient).map_err(|source| SealError::NotAKey {
        key: recipient.to_string(),
        source,
    })?;
    let plain = Zeroizing::new(
        postcard::to_allocvec(&SealedPlaintext {
            binding: binding.clone(),
            value: Bytes::borrowed(value),
        })
        .map_err(SealError::Encode)?,
    );
    let sender = XKey::new();
    let boxed = sender.seal(&plain, &to).map_err(SealError::Box)?;
    Ok(Sealed {
        recipient: Text::owned(recipient.to_string()),
        sender: Text::owned(sender.public_key()),
        boxed: Bytes::owned(boxed),
    })
}

/// A binding in words, for errors (names only, never values).
pub fn describe(b: &Binding<'_>) -> String {
    let what = match &b.purpose {
        protocol::Purpose::Pull { registry } => format!("the login to {}", registry.as_str()),
        protocol::Purpose::Value { secret, key } => {
            format!("key {:?} of Secret {:?}", key.as_str(), secret.as_str())
        }
    };
    format!(
        "{what} of deployment {} at revision {:016x} on device {}",
        b.deployment.as_str(),
        b.revision,
        b.device.as_str()
    )
}

/// Creates `path` holding `bytes`, readable by its owner only, and never
/// replaces a file already there (the error is then `AlreadyExists`: two
/// processes creating the same key at once both end up with the first
/// one's). Written to a uniquely named temporary file beside it (created
/// 0600, removed if anything fails, so a power cut leaves at worst a stray
/// temporary file that blocks nothing), linked into place without
/// clobbering, then the directory synced, so a crash leaves no partial
/// file. A missing directory is created 0700.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".private-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::Purpose;

    fn binding(revision: u64) -> Binding<'static> {
        Binding {
            device: Text::borrowed("pi-01"),
            deployment: Text::borrowed("web"),
            revision,
            purpose: Purpose::Value {
                secret: Text::borrowed("db"),
                key: Text::borrowed("password"),
            },
        }
    }

    #[test]
    fn opens_what_was_sealed_to_it_for_the_expected_binding() {
        let device = DeviceKey::generate();
        let sealed = seal(device.public_key(), &binding(7), b"s3cret").unwrap();
        assert_eq!(&device.open(&sealed, &binding(7)).unwrap()[..], b"s3cret");
        // Fresh ephemeral key and nonce each time.
        let again = seal(device.public_key(), &binding(7), b"s3cret").unwrap();
        assert_ne!(again.boxed, sealed.boxed);
        assert_ne!(again.sender, sealed.sender);
        // The clear text is nowhere in the sealed form.
        let wire = postcard::to_allocvec(&sealed).unwrap();
        assert!(!wire.windows(6).any(|w| w == b"s3cret"));
    }

    #[test]
    fn another_device_cannot_open_it() {
        let a = DeviceKey::generate();
        let b = DeviceKey::generate();
        let sealed = seal(a.public_key(), &binding(7), b"s3cret").unwrap();
        assert!(matches!(
            b.open(&sealed, &binding(7)),
            Err(OpenError::OtherRecipient { .. })
        ));
        // Even relabelled as sealed to B, the box does not open with B's key.
        let mut relabelled = sealed.clone();
        relabelled.recipient = Text::owned(b.public_key().to_string());
        assert!(matches!(
            b.open(&relabelled, &binding(7)),
            Err(OpenError::Box(_))
        ));
    }

    #[test]
    fn a_value_moved_to_another_binding_does_not_open() {
        let device = DeviceKey::generate();
        let sealed = seal(device.public_key(), &binding(7), b"s3cret").unwrap();
        for other in [
            binding(8),
            Binding {
                deployment: Text::borrowed("other"),
                ..binding(7)
            },
            Binding {
                device: Text::borrowed("pi-02"),
                ..binding(7)
            },
            Binding {
                purpose: Purpose::Value {
                    secret: Text::borrowed("db"),
                    key: Text::borrowed("user"),
                },
                ..binding(7)
            },
        ] {
            let e = device.open(&sealed, &other).unwrap_err();
            assert!(matches!(e, OpenError::WrongBinding { .. }), "{e}");
            assert!(!e.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn a_tampered_box_does_not_open() {
        let device = DeviceKey::generate();
        let mut sealed = seal(device.public_key(), &binding(7), b"s3cret").unwrap();
        let mut bytes = sealed.boxed.as_slice().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        sealed.boxed = Bytes::owned(bytes);
        assert!(matches!(
            device.open(&sealed, &binding(7)),
            Err(OpenError::Box(_))
        ));
    }

    #[test]
    fn bad_recipients_and_large_values_are_refused() {
        assert!(matches!(
            seal("UABC", &binding(1), b"x"),
            Err(SealError::NotAKey { .. })
        ));
        let big = vec![0; protocol::sealed::MAX_SECRET_SIZE + 1];
        let key = DeviceKey::generate();
        assert!(matches!(
            seal(key.public_key(), &binding(1), &big),
            Err(SealError::TooLarge { .. })
        ));
    }

    #[test]
    fn key_files_are_created_private_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/device.xk");
        let (created, new) = DeviceKey::load_or_create(&path).unwrap();
        assert!(new);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from("device.xk")],
            "no temporary file left"
        );
        let (again, new) = DeviceKey::load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(again.public_key(), created.public_key());
        assert!(created.public_key().starts_with('X'));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            DeviceKey::load(&path),
            Err(KeyError::NotPrivate { .. })
        ));
        fs::write(&path, "not a seed\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = DeviceKey::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::NotASeed { .. }), "{e}");
        assert!(!format!("{:?}", created).contains(created.seed().as_str()));
    }

    #[test]
    fn create_private_never_replaces_and_makes_its_directory_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/one");
        create_private(&path, b"first").unwrap();
        let e = create_private(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
