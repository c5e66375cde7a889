//! Secrets sealed to this device (`DesiredState.secrets`, see
//! `protocol::sealed`): the device key that opens them, where their clear
//! text may exist, and how a container gets them.
//!
//! Values are opened in memory ([`Zeroizing`] buffers, wiped when dropped)
//! for the binding the agent expects (this device, the key's deployment,
//! the value's revision, the reference), and only then handed on:
//! - a registry login as libpod's `X-Registry-Auth` header of the pull;
//! - an env value as a Podman secret (`secret_env`) whose `file` driver
//!   keeps the data under `<runtime_dir>/podman`;
//! - a Secret volume as files under `<runtime_dir>/files`, bind-mounted
//!   read-only: Podman 4.3 copies a mounted secret into the container's
//!   directory under its graph root, which is on disk.
//!
//! `runtime_dir` must be a tmpfs (or ramfs), checked at start: clear text
//! never reaches a disk through the agent. What Podman itself keeps is in
//! the agent's README ("Secrets and private registries").
//!
//! The cache and every store under `state_dir` keep the desired state as
//! received, sealed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use protocol::{Binding, ContainerV1, DesiredState, Purpose, RegistryLogin, SecretSet, Text};
use sealing::{DeviceKey, OpenError, Zeroizing};

use crate::log::Chain;
use crate::podman::{MountSpec, RegistryAuth, Runtime, RuntimeError, labels};

/// `statfs` magic numbers of the file systems that keep data in memory.
const TMPFS_MAGIC: u32 = 0x0102_1994;
const RAMFS_MAGIC: u32 = 0x8584_58f6;

/// Why a deployment's secrets cannot be handed to its containers. The
/// message names what (container, env var or volume, registry) and never
/// a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The agent has no sealing key.
    #[error(
        "{what}: this device has no sealing key to open it (set [secrets] key_file in the agent's configuration)"
    )]
    NoKey {
        /// What needed it.
        what: String,
    },
    /// `runtime_dir` is not in memory.
    #[error("{what}: {reason}")]
    NotInMemory {
        /// What needed it.
        what: String,
        /// Why the directory is refused.
        reason: String,
    },
    /// The desired state carries no sealed value for a reference.
    #[error("{what}: no sealed value for {reference} in the desired state")]
    Missing {
        /// What needed it.
        what: String,
        /// The reference, in words.
        reference: String,
    },
    /// A sealed value does not open.
    #[error("{what}: {reference} does not open")]
    Open {
        /// What needed it.
        what: String,
        /// The reference, in words.
        reference: String,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// A registry login opened but is not one.
    #[error("{what}: the login to {registry} is malformed")]
    Login {
        /// What needed it.
        what: String,
        /// The registry.
        registry: String,
    },
    /// The clear text could not be put where the container gets it.
    #[error("{what}: cannot hand the value over")]
    HandOver {
        /// What needed it.
        what: String,
        /// Why.
        #[source]
        source: HandOverError,
    },
}

/// Why opened values could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// Writing the files of a Secret volume failed.
    #[error("writing {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Podman refused the secret.
    #[error("creating Podman secret {name}")]
    Podman {
        /// The secret's name.
        name: String,
        /// Podman's error.
        #[source]
        source: RuntimeError,
    },
}

/// The device's sealing key and where opened values may exist in clear.
pub struct Secrets {
    device_id: String,
    key: Option<DeviceKey>,
    /// Keys the spec-hash digest of opened values: the label changes with
    /// a value without telling anything about it.
    mac: Option<ring::hmac::Key>,
    runtime_dir: PathBuf,
    /// Why `runtime_dir` may not hold clear text, when it may not.
    refused: Option<String>,
    /// Podman secrets (re)created by this process: each is made again once
    /// per process, because after a reboot Podman still lists a secret
    /// whose data (on the tmpfs) is gone.
    made: std::cell::RefCell<BTreeSet<String>>,
    /// The secrets whose data a reboot took were removed (see
    /// [`Secrets::recover`]).
    recovered: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("key", &self.key)
            .field("runtime_dir", &self.runtime_dir)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// No sealing key: deployments with sealed values fail on it.
    pub fn none(device_id: &str) -> Secrets {
        Secrets {
            device_id: device_id.to_string(),
            key: None,
            mac: None,
            runtime_dir: PathBuf::from(agent_config::DEFAULT_SECRETS_RUNTIME_DIR),
            refused: Some("no sealing key".into()),
            made: Default::default(),
            recovered: Default::default(),
        }
    }

    /// With `key`, clear text under `runtime_dir` (created 0700 when
    /// missing; refused, with the reason kept for the deployments that
    /// need it, when it is not a tmpfs).
    pub fn new(device_id: &str, key: Option<DeviceKey>, runtime_dir: &Path) -> Secrets {
        let mac = key
            .as_ref()
            .map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.seed().as_bytes()));
        // Without a key nothing opens: the directory is left alone.
        let refused = match &key {
            None => Some("no sealing key".to_string()),
            Some(_) => check_in_memory(runtime_dir).err(),
        };
        if let Some(r) = refused.as_ref().filter(|_| key.is_some()) {
            crate::warn!("{r}; deployments that need secrets will fail");
        }
        Secrets {
            device_id: device_id.to_string(),
            key,
            mac,
            runtime_dir: runtime_dir.to_path_buf(),
            refused,
            made: Default::default(),
            recovered: Default::default(),
        }
    }

    /// The public key the operator seals to (`X...`), empty without one.
    pub fn public_key(&self) -> &str {
        self.key.as_ref().map_or("", DeviceKey::public_key)
    }

    fn open(
        &self,
        what: &str,
        deployment: &str,
        revision: u64,
        sealed: Option<&protocol::Sealed<'_>>,
        purpose: Purpose<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let binding = Binding {
            device: Text::borrowed(&self.device_id),
            deployment: Text::borrowed(deployment),
            revision,
            purpose,
        };
        let reference = match &binding.purpose {
            Purpose::Pull { registry } => format!("the login to {}", registry.as_str()),
            Purpose::Value { secret, key } => {
                format!("key {:?} of Secret {:?}", key.as_str(), secret.as_str())
            }
        };
        let Some(sealed) = sealed else {
            return Err(SecretError::Missing {
                what: what.to_string(),
                reference,
            });
        };
        let Some(key) = &self.key else {
            return Err(SecretError::NoKey {
                what: what.to_string(),
            });
        };
        key.open(sealed, &binding)
            .map_err(|source| SecretError::Open {
                what: what.to_string(),
                reference,
                source,
            })
    }

    /// The login for pulling `image`, when the desired state carries one
    /// for its registry.
    pub fn pull_auth(
        &self,
        deployment: &str,
        revision: u64,
        secrets: &SecretSet<'_>,
        image: &str,
    ) -> Result<Option<RegistryAuth>, SecretError> {
        let registry = protocol::sealed::registry_of(image);
        let Some(credential) = secrets.pull_for(registry) else {
            return Ok(None);
        };
        let what = format!("pulling {image}");
        let value = self.open(
            &what,
            deployment,
            revision,
            Some(&credential.sealed),
            // As sealed: hosts compare without case, the binding exactly.
            Purpose::Pull {
                registry: Text::borrowed(credential.registry.as_str()),
            },
        )?;
        let login: RegistryLogin<'_> =
            postcard::from_bytes(&value).map_err(|_| SecretError::Login {
                what,
                registry: registry.to_string(),
            })?;
        Ok(Some(RegistryAuth::new(
            registry,
            login.username.as_str(),
            login.password.as_str(),
            login.identity_token.as_str(),
        )))
    }
}

/// A name (env var, file path) and its opened value.
type Named = (String, Zeroizing<Vec<u8>>);

/// A container's opened values, until they are handed over.
#[derive(Default)]
pub struct Opened {
    /// (env var, value).
    env: Vec<Named>,
    /// (volume index, files: (path in the volume, value), mode).
    volumes: Vec<(usize, Vec<Named>, u32)>,
}

/// Names only, never values.
impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(n, _)| n.as_str()).collect();
        let volumes: Vec<usize> = self.volumes.iter().map(|(i, _, _)| *i).collect();
        f.debug_struct("Opened")
            .field("env", &env)
            .field("volumes", &volumes)
            .finish()
    }
}

/// Whether the container references Secrets.
pub fn references(c: &ContainerV1<'_>) -> bool {
    c.env.iter().any(|e| e.value_from.is_some()) || c.volumes.iter().any(|v| v.secret.is_some())
}

/// What the container gets in place of its references: env vars from
/// Podman secrets and read-only bind mounts of the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// Env var -> Podman secret name.
    pub env: BTreeMap<String, String>,
    /// The Secret volumes' mounts.
    pub mounts: Vec<MountSpec>,
}

impl Secrets {
    /// Opens the values container `c` (of `desired`, stored under
    /// `deployment`) references; `hash` (its spec hash) becomes a keyed
    /// digest of it and of the values, so a new value replaces the
    /// container.
    pub fn open_container(
        &self,
        deployment: &str,
        desired: &DesiredState<'_>,
        c: &ContainerV1<'_>,
        hash: &mut String,
    ) -> Result<Opened, SecretError> {
        let name = c.name.as_str();
        let mut opened = Opened::default();
        let value = |what: &str, secret: &str, key: &str| {
            self.open(
                what,
                deployment,
                desired.revision,
                desired.secrets.value_for(secret, key).map(|v| &v.sealed),
                Purpose::Value {
                    secret: Text::borrowed(secret),
                    key: Text::borrowed(key),
                },
            )
        };
        for e in c.env.iter() {
            let Some(from) = &e.value_from else { continue };
            let what = format!("container {name}: env {}", e.name.as_str());
            let r = &from.secret_key_ref;
            let v = value(&what, r.name.as_str(), r.key.as_str())?;
            opened.env.push((e.name.as_str().to_string(), v));
        }
        for (i, vol) in c.volumes.iter().enumerate() {
            let Some(s) = &vol.secret else { continue };
            let secret = s.secret_name.as_str();
            let what = format!("container {name}: volume {}", vol.mount_path.as_str());
            let mut files = Vec::new();
            if s.items.is_empty() {
                // Every key sealed for that Secret, each at its name.
                for v in desired.secrets.values.iter() {
                    if v.secret.as_str() == secret {
                        let key = v.key.as_str();
                        files.push((key.to_string(), value(&what, secret, key)?));
                    }
                }
                if files.is_empty() {
                    return Err(SecretError::Missing {
                        what,
                        reference: format!("any key of Secret {secret:?}"),
                    });
                }
            } else {
                for item in s.items.iter() {
                    let v = value(&what, secret, item.key.as_str())?;
                    files.push((item.path.as_str().to_string(), v));
                }
            }
            opened
                .volumes
                .push((i, files, u32::from(s.default_mode.unwrap_or(0o444))));
        }
        if let Some(why) = &self.refused
            && self.key.is_some()
        {
            return Err(SecretError::NotInMemory {
                what: format!("container {name}"),
                reason: why.clone(),
            });
        }
        if let Some(mac) = &self.mac {
            let mut ctx = ring::hmac::Context::with_key(mac);
            ctx.update(b"iot-agent spec hash v1\0");
            ctx.update(hash.as_bytes());
            for (var, v) in &opened.env {
                digest_part(&mut ctx, var.as_bytes());
                digest_part(&mut ctx, v);
            }
            for (i, files, mode) in &opened.volumes {
                digest_part(&mut ctx, &(*i as u64).to_be_bytes());
                digest_part(&mut ctx, &mode.to_be_bytes());
                for (path, v) in files {
                    digest_part(&mut ctx, path.as_bytes());
                    digest_part(&mut ctx, v);
                }
            }
            let tag = ctx.sign();
            *hash = tag.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        }
        Ok(opened)
    }

    /// The names and paths a container with spec hash `hash` gets, before
    /// the values are there ([`Secrets::hand_over`]).
    pub fn handed_over(
        &self,
        deployment: &str,
        c: &ContainerV1<'_>,
        hash: &str,
        opened: &Opened,
    ) -> HandedOver {
        let env = opened
            .env
            .iter()
            .enumerate()
            .map(|(n, (var, _))| (var.clone(), self.secret_name(deployment, hash, n)))
            .collect();
        let mounts = opened
            .volumes
            .iter()
            .map(|(i, _, _)| MountSpec::Bind {
                source: self.volume_dir(deployment, hash, *i).display().to_string(),
                dest: c.volumes[*i].mount_path.as_str().to_string(),
                read_only: true,
            })
            .collect();
        HandedOver { env, mounts }
    }

    /// Podman secret names are `iot.<device>.<deployment>.<spec hash>.<n>`
    /// (labelled too, for people: Podman 4.3 lists secrets without labels).
    fn secret_name(&self, deployment: &str, hash: &str, n: usize) -> String {
        format!("{}{hash}.{n}", self.secret_prefix(deployment))
    }

    fn secret_prefix(&self, deployment: &str) -> String {
        format!("iot.{}.{deployment}.", self.device_id)
    }

    fn deployment_dir(&self, deployment: &str) -> PathBuf {
        self.runtime_dir
            .join("files")
            .join(format!("{}.{deployment}", self.device_id))
    }

    fn volume_dir(&self, deployment: &str, hash: &str, i: usize) -> PathBuf {
        self.deployment_dir(deployment)
            .join(hash)
            .join(format!("v{i}"))
    }

    /// Puts the opened values where the container gets them: the Podman
    /// secrets of its env (made once per agent process), the files of its
    /// Secret volumes (written when missing, e.g. after a reboot).
    pub async fn hand_over<R: Runtime>(
        &self,
        runtime: &R,
        deployment: &str,
        c: &ContainerV1<'_>,
        hash: &str,
        opened: &Opened,
    ) -> Result<(), SecretError> {
        let name = c.name.as_str();
        let labels: BTreeMap<String, String> = [
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::DEVICE, self.device_id.as_str()),
            (labels::DEPLOYMENT, deployment),
            (labels::CONTAINER, name),
            (labels::SPEC_HASH, hash),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let podman_dir = self.runtime_dir.join("podman");
        if !opened.env.is_empty() && !self.recovered.get() {
            self.recover(runtime, &podman_dir)
                .await
                .map_err(|source| SecretError::HandOver {
                    what: format!("container {name}"),
                    source,
                })?;
        }
        for (n, (var, value)) in opened.env.iter().enumerate() {
            let secret = self.secret_name(deployment, hash, n);
            if self.made.borrow().contains(&secret) {
                continue;
            }
            let fail = |source| SecretError::HandOver {
                what: format!("container {name}: env {var}"),
                source,
            };
            private_dir(&podman_dir).map_err(|source| {
                fail(HandOverError::Io {
                    path: podman_dir.clone(),
                    source,
                })
            })?;
            runtime
                .create_secret(&secret, value, &podman_dir, &labels)
                .await
                .map_err(|source| {
                    fail(HandOverError::Podman {
                        name: secret.clone(),
                        source,
                    })
                })?;
            self.made.borrow_mut().insert(secret);
        }
        for (i, files, mode) in &opened.volumes {
            let dir = self.volume_dir(deployment, hash, *i);
            write_files(&dir, files, *mode).map_err(|source| SecretError::HandOver {
                what: format!(
                    "container {name}: volume {}",
                    c.volumes[*i].mount_path.as_str()
                ),
                source,
            })?;
        }
        Ok(())
    }

    /// After a reboot the tmpfs lost the data of this device's Podman
    /// secrets, and Podman 4.3 refuses to remove a `file` secret whose data
    /// is gone ("no secret data with ID"), so it could never be made
    /// again under its name. When the driver's store (`secretsdata.json`,
    /// a JSON map of secret id to base64 data) is missing, it is written
    /// with an empty value for each of this device's secrets, which are
    /// then removed: each pass makes those it needs again, with their
    /// values. Once per process.
    async fn recover<R: Runtime>(&self, runtime: &R, dir: &Path) -> Result<(), HandOverError> {
        let store = dir.join("secretsdata.json");
        if !store.exists() {
            let prefix = format!("iot.{}.", self.device_id);
            let podman = |source| HandOverError::Podman {
                name: format!("{prefix}*"),
                source,
            };
            let ours = runtime.list_secrets(&prefix).await.map_err(podman)?;
            if !ours.is_empty() {
                crate::info!(
                    "{} secret(s) of this device lost their data (a reboot?): making them again",
                    ours.len()
                );
                let empty: BTreeMap<&str, &str> =
                    ours.iter().map(|(_, id)| (id.as_str(), "")).collect();
                let io = |source| HandOverError::Io {
                    path: store.clone(),
                    source,
                };
                private_dir(dir).map_err(io)?;
                write_private(&store, serde_json::json!(empty).to_string().as_bytes())
                    .map_err(io)?;
                for (name, _) in &ours {
                    runtime.remove_secret(name).await.map_err(podman)?;
                    self.made.borrow_mut().remove(name);
                }
            }
        }
        self.recovered.set(true);
        Ok(())
    }

    /// Removes the Podman secrets and files of `deployment` that no
    /// container with a spec hash in `keep` uses.
    pub async fn collect<R: Runtime>(
        &self,
        runtime: &R,
        deployment: &str,
        keep: &BTreeSet<String>,
    ) {
        let prefix = self.secret_prefix(deployment);
        match runtime.list_secrets(&prefix).await {
            Ok(names) => {
                for (name, _) in names {
                    // `<prefix><spec hash>.<n>`: tokens have no dots.
                    let hash = name[prefix.len()..].split('.').next().unwrap_or("");
                    if keep.contains(hash) {
                        continue;
                    }
                    match runtime.remove_secret(&name).await {
                        Ok(()) => {
                            crate::debug!("{deployment}: removed secret {name}");
                            self.made.borrow_mut().remove(&name);
                        }
                        Err(e) => {
                            crate::warn!(
                                "{deployment}: cannot remove secret {name}: {}",
                                Chain(&e)
                            );
                        }
                    }
                }
            }
            Err(e) => crate::debug!("{deployment}: cannot list secrets: {}", Chain(&e)),
        }
        let dir = self.deployment_dir(deployment);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if keep.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                crate::warn!(
                    "{deployment}: cannot remove {}: {}",
                    entry.path().display(),
                    Chain(&e)
                );
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn digest_part(ctx: &mut ring::hmac::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_be_bytes());
    ctx.update(bytes);
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// Creates `dir` (and its parents) readable by root only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a Secret volume's files under `dir`, unless they are there: a
/// directory per content, so one that exists is complete (written beside
/// it, then renamed).
fn write_files(dir: &Path, files: &[Named], mode: u32) -> Result<(), HandOverError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HandOverError::Io { path, source }
    };
    let parent = dir.parent().unwrap_or(dir);
    // The container reads the files through the bind mount as any user:
    // the directories are traversable, the files have the Secret's mode.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(parent)
        .map_err(io(parent))?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    for (path, value) in files {
        // The contract checks items' paths; a key used as a file name is
        // checked here too: nothing may land outside the directory.
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(HandOverError::Io {
                path: PathBuf::from(path),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a relative path inside the volume",
                ),
            });
        }
        let file = tmp.join(path);
        if let Some(p) = file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(p)
                .map_err(io(p))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&file)
            .map_err(io(&file))?;
        f.write_all(value).map_err(io(&file))?;
        // The umask narrowed the mode at creation.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777))
            .map_err(io(&file))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

/// Whether an existing `dir` keeps its data in memory (tmpfs or ramfs),
/// creating nothing; the reason in words when not.
pub fn is_in_memory(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "secrets.runtime_dir {} does not exist yet: the agent creates it at start, and refuses it unless a tmpfs is mounted there",
            dir.display()
        ));
    }
    statfs_in_memory(dir)
}

/// Whether `dir` keeps its data in memory (tmpfs or ramfs): created
/// (0700) when missing; the reason in words when not.
pub fn check_in_memory(dir: &Path) -> Result<(), String> {
    private_dir(dir).map_err(|e| {
        format!(
            "cannot create secrets.runtime_dir {}: {}",
            dir.display(),
            Chain(&e)
        )
    })?;
    statfs_in_memory(dir)
}

fn statfs_in_memory(dir: &Path) -> Result<(), String> {
    let fs = rustix::fs::statfs(dir).map_err(|e| {
        format!(
            "cannot check secrets.runtime_dir {}: {}",
            dir.display(),
            Chain(&std::io::Error::from(e))
        )
    })?;
    // The field's type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as u32;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        Ok(())
    } else {
        Err(format!(
            "secrets.runtime_dir {} is not a tmpfs (file system magic {magic:#x}): opened secrets would reach a disk; mount a tmpfs there (e.g. a systemd RuntimeDirectory, or `mount -t tmpfs -o mode=700 tmpfs {}`) or point runtime_dir at one under /run",
            dir.display(),
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_directory_on_disk_is_refused_and_one_in_memory_is_not() {
        // The source tree is on a disk (a temporary directory may be a tmpfs).
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let e = check_in_memory(disk.path()).unwrap_err();
        assert!(
            e.contains("is not a tmpfs") && e.contains("runtime_dir"),
            "{e}"
        );
        if Path::new("/dev/shm").is_dir() {
            let shm = tempfile::tempdir_in("/dev/shm").unwrap();
            check_in_memory(&shm.path().join("a/b")).unwrap();
        }
    }

    fn container() -> ContainerV1<'static> {
        use protocol::{
            BoundedVec, EnvVarSource, EnvVarV1, SecretKeyRef, SecretVolumeSource, VolumeV1,
        };
        let mut c = ContainerV1::new(Text::borrowed("app"), Text::borrowed("localhost/x:1"));
        c.env = BoundedVec::try_from_iter([EnvVarV1 {
            name: Text::borrowed("PASS"),
            value: Text::borrowed(""),
            value_from: Some(EnvVarSource {
                secret_key_ref: SecretKeyRef {
                    name: Text::borrowed("db"),
                    key: Text::borrowed("password"),
                },
            }),
        }])
        .unwrap();
        c.volumes = BoundedVec::try_from_iter([VolumeV1 {
            name: None,
            host_path: None,
            mount_path: Text::borrowed("/etc/db"),
            read_only: true,
            secret: Some(SecretVolumeSource {
                secret_name: Text::borrowed("db"),
                items: BoundedVec::new(),
                default_mode: Some(0o440),
            }),
        }])
        .unwrap();
        c
    }

    fn desired(key: &DeviceKey, revision: u64, values: &[(&str, &str)]) -> DesiredState<'static> {
        let sealed = values.iter().map(|(k, v)| protocol::SecretValue {
            secret: Text::borrowed("db"),
            key: Text::owned(k.to_string()),
            sealed: sealing::seal(
                key.public_key(),
                &Binding {
                    device: Text::borrowed("dev"),
                    deployment: Text::borrowed("web"),
                    revision,
                    purpose: Purpose::Value {
                        secret: Text::borrowed("db"),
                        key: Text::owned(k.to_string()),
                    },
                },
                v.as_bytes(),
            )
            .unwrap(),
        });
        DesiredState {
            deployment: Text::borrowed("web"),
            revision,
            score: protocol::ScorePayload {
                type_name: Text::borrowed("PodmanV1"),
                encoding: protocol::PayloadEncoding::Json,
                data: protocol::Bytes::owned(b"{}".to_vec()),
            },
            rollout: Default::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: SecretSet {
                pull: Default::default(),
                values: protocol::BoundedVec::try_from_iter(sealed).unwrap(),
            },
        }
    }

    fn shm() -> Option<tempfile::TempDir> {
        Path::new("/dev/shm")
            .is_dir()
            .then(|| tempfile::tempdir_in("/dev/shm").unwrap())
    }

    /// The spec hash follows the values, not their ciphertext, and says
    /// nothing about them; the values reach a Podman secret and files.
    #[tokio::test]
    async fn values_change_the_hash_and_are_handed_over() {
        let Some(dir) = shm() else { return };
        let key = DeviceKey::generate();
        let seed = key.seed();
        let s = Secrets::new(
            "dev",
            Some(DeviceKey::from_seed(&seed).unwrap()),
            dir.path(),
        );
        let c = container();
        let hash_of = |values: &[(&str, &str)]| {
            let mut h = "0123456789abcdef".to_string();
            s.open_container("web", &desired(&key, 1, values), &c, &mut h)
                .map(|_| h)
        };
        let a = hash_of(&[("password", "one"), ("user", "u")]).unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, "0123456789abcdef");
        assert_eq!(hash_of(&[("password", "one"), ("user", "u")]).unwrap(), a);
        assert_ne!(hash_of(&[("password", "two"), ("user", "u")]).unwrap(), a);
        // Another device key gives another hash for the same values.
        let other = Secrets::new("dev", Some(DeviceKey::generate()), dir.path());
        let mut h = "0123456789abcdef".to_string();
        assert!(
            other
                .open_container("web", &desired(&key, 1, &[("password", "one")]), &c, &mut h)
                .is_err()
        );

        let rt = crate::testing::MemoryRuntime::default();
        let d = desired(&key, 1, &[("password", "one"), ("user", "u")]);
        let mut hash = "0123456789abcdef".to_string();
        let opened = s.open_container("web", &d, &c, &mut hash).unwrap();
        let handed = s.handed_over("web", &c, &hash, &opened);
        s.hand_over(&rt, "web", &c, &hash, &opened).await.unwrap();
        assert_eq!(handed.env.len(), 1);
        assert_eq!(rt.secret_names(), [handed.env["PASS"].clone()]);
        let MountSpec::Bind {
            source,
            dest,
            read_only,
        } = &handed.mounts[0]
        else {
            panic!("{handed:?}")
        };
        assert_eq!((dest.as_str(), *read_only), ("/etc/db", true));
        let file = Path::new(source).join("password");
        assert_eq!(std::fs::read(&file).unwrap(), b"one");
        assert_eq!(std::fs::read(Path::new(source).join("user")).unwrap(), b"u");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o440
        );
        // Nothing keeps them: collected.
        s.collect(&rt, "web", &BTreeSet::new()).await;
        assert!(rt.secret_names().is_empty());
        assert!(!Path::new(source).exists());
    }

    /// What does not open fails naming the container and the reference,
    /// never the value.
    #[test]
    fn what_does_not_open_is_named() {
        let key = DeviceKey::generate();
        let seed = key.seed();
        let c = container();
        let mut h = String::new();
        let none = Secrets::none("dev");
        let e = none
            .open_container("web", &desired(&key, 1, &[("password", "one")]), &c, &mut h)
            .unwrap_err();
        assert!(matches!(e, SecretError::NoKey { .. }), "{e}");
        assert!(e.to_string().contains("key_file"), "{e}");
        let Some(dir) = shm() else { return };
        let s = Secrets::new(
            "dev",
            Some(DeviceKey::from_seed(&seed).unwrap()),
            dir.path(),
        );
        let e = s
            .open_container("web", &desired(&key, 1, &[("user", "u")]), &c, &mut h)
            .unwrap_err();
        let m = Chain(&e).to_string();
        assert!(
            m.starts_with(
                "container app: env PASS: no sealed value for key \"password\" of Secret \"db\""
            ),
            "{m}"
        );
        // Sealed for revision 1, carried at 2.
        let mut moved = desired(&key, 1, &[("password", "one")]);
        moved.revision = 2;
        let e = s.open_container("web", &moved, &c, &mut h).unwrap_err();
        let m = Chain(&e).to_string();
        assert!(
            m.contains("container app: env PASS")
                && m.contains("does not open")
                && m.contains("revision"),
            "{m}"
        );
        assert!(!m.contains("one"), "{m}");
    }

    #[test]
    fn the_login_header_is_base64url_of_dockers_auth_json() {
        let a = RegistryAuth::new("r.example:5000", "u", "p?>", "");
        let json = data_encoding::BASE64URL
            .decode(a.header().as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["username"], "u");
        assert_eq!(v["password"], "p?>");
        assert_eq!(v["serveraddress"], "r.example:5000");
        assert!(!format!("{a:?}").contains('p'));
    }
}
