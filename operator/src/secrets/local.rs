//! Secrets from local files, for `iot-operator apply -f FILE --secrets
//! PATH` without a cluster: PATH is a YAML or JSON file of Kubernetes
//! Secret manifests (several YAML documents, or a `kind: List`), or a
//! directory of such files (`*.yaml`, `*.yml`, `*.json`). `data` is base64
//! and `stringData` clear text, as `kubectl apply` takes them. A Secret
//! without a namespace serves any Deployment; one with a namespace only
//! the Deployments of that namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use super::{DigestKey, Fingerprint, References, Resolved, SecretError, resolve_from};

/// Why the Secret files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not YAML/JSON, or not a valid Secret manifest. The
    /// parser's message is left out: it may quote a value.
    #[error("{path}, document {index}: not a valid Secret manifest{at}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The document's position (from 0).
        index: usize,
        /// ` (line L, column C)`, when known.
        at: String,
    },
    /// A document is another kind of object.
    #[error("{path}, document {index}: is kind {kind:?}; expected kind Secret (apiVersion v1)")]
    NotASecret {
        /// The file.
        path: PathBuf,
        /// The document's position (from 0).
        index: usize,
        /// Its kind.
        kind: String,
    },
    /// A Secret has no `metadata.name`.
    #[error("{path}, document {index}: the Secret has no metadata.name")]
    Unnamed {
        /// The file.
        path: PathBuf,
        /// The document's position (from 0).
        index: usize,
    },
}

/// Secret manifests read from files, by (namespace, name).
#[derive(Default)]
pub struct LocalSecrets {
    by_name: BTreeMap<(Option<String>, String), Secret>,
}

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSecrets")
            .field("secrets", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalSecrets {
    /// Reads `path`: a file, or every `*.yaml`/`*.yml`/`*.json` file of a
    /// directory (not recursively), in name order; a later Secret of the
    /// same namespace and name replaces an earlier one.
    pub fn load(path: &Path) -> Result<LocalSecrets, LocalError> {
        let io = |source| LocalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io)? {
                let p = entry.map_err(io)?.path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut out = LocalSecrets::default();
        for file in files {
            let text =
                sealing::Zeroizing::new(std::fs::read_to_string(&file).map_err(|source| {
                    LocalError::Io {
                        path: file.clone(),
                        source,
                    }
                })?);
            out.add(&file, &text)?;
        }
        Ok(out)
    }

    fn add(&mut self, file: &Path, text: &str) -> Result<(), LocalError> {
        let invalid = |index, e: Option<serde_yaml::Error>| LocalError::Invalid {
            path: file.to_path_buf(),
            index,
            at: e
                .and_then(|e| e.location())
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default(),
        };
        let mut index = 0;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(index, Some(e)))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            let items: Vec<serde_yaml::Value> = if kind == "List" {
                value
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .cloned()
                    .unwrap_or_default()
            } else {
                vec![value]
            };
            for item in items {
                let kind = item
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default();
                if kind != "Secret" {
                    return Err(LocalError::NotASecret {
                        path: file.to_path_buf(),
                        index,
                        kind: kind.to_string(),
                    });
                }
                let secret: Secret =
                    serde_yaml::from_value(item).map_err(|_| invalid(index, None))?;
                let name = secret.metadata.name.clone().ok_or(LocalError::Unnamed {
                    path: file.to_path_buf(),
                    index,
                })?;
                self.by_name
                    .insert((secret.metadata.namespace.clone(), name), secret);
            }
            index += 1;
        }
        Ok(())
    }

    /// How many Secrets were read.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none was read.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The Secret `name` for a Deployment in `namespace`: one of that
    /// namespace, else one without a namespace.
    fn get(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.by_name
            .get(&(Some(namespace.to_string()), name.to_string()))
            .or_else(|| self.by_name.get(&(None, name.to_string())))
    }

    /// Resolves `refs` for a Deployment in `namespace`; the revision's
    /// digest is the HMAC of the values under `key` (files have no
    /// resourceVersion, and a plain hash would let anyone who sees the
    /// revision test guesses of a value: [`super::digest_key`]).
    pub fn resolve(
        &self,
        namespace: &str,
        refs: &References,
        key: &DigestKey,
    ) -> Result<Resolved, SecretError> {
        resolve_from(
            refs,
            namespace,
            |name| self.get(namespace, name),
            Fingerprint::Values(key),
        )
    }
}
