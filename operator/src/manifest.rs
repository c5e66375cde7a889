//! Reading Deployment manifests from YAML files, for the cluster-less CLI.

use std::path::Path;

use crate::crd::{Deployment, GROUP};

/// Why a manifest file cannot be used. The messages leave the cause to the
/// error chain (`{:#}` shows both), so the CLI says it once.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{path}, document {index}")]
    Yaml {
        /// The file.
        path: String,
        /// The document's position, from 1.
        index: usize,
        /// The YAML error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is another kind of object, or of another API.
    #[error(
        "{path}, document {index}: is {kind:?} of {api_version:?}; expected kind Deployment of {GROUP}/v1alpha1"
    )]
    NotADeployment {
        /// The file.
        path: String,
        /// The document's position, from 1.
        index: usize,
        /// The document's `kind`, empty when absent.
        kind: String,
        /// The document's `apiVersion`, empty when absent.
        api_version: String,
    },
    /// A Deployment that does not fit the schema (a typo'd field, a wrong type).
    #[error("{path}, document {index}")]
    Schema {
        /// The file.
        path: String,
        /// The document's position, from 1.
        index: usize,
        /// What does not fit.
        #[source]
        source: serde_json::Error,
    },
    /// The file holds no Deployment.
    #[error("{0} holds no iot.nationtech.io/v1alpha1 Deployment")]
    Empty(String),
}

/// The Deployments in a (multi-document) YAML file; every document must be
/// one. Fields the schema does not know are rejected, as typos.
pub fn read(path: &Path) -> Result<Vec<Deployment>, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Like [`read`], from a string; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Deployment>, ManifestError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let (path, index) = (origin.to_string(), i + 1);
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(source) => {
                return Err(ManifestError::Yaml {
                    path,
                    index,
                    source,
                });
            }
        };
        if value.is_null() {
            continue;
        }
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (kind, api_version) = (field("kind"), field("apiVersion"));
        if api_version != format!("{GROUP}/v1alpha1") || kind != "Deployment" {
            return Err(ManifestError::NotADeployment {
                path,
                index,
                kind,
                api_version,
            });
        }
        let d: Deployment =
            serde_json::from_value(value).map_err(|source| ManifestError::Schema {
                path,
                index,
                source,
            })?;
        out.push(d);
    }
    if out.is_empty() {
        return Err(ManifestError::Empty(origin.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_example() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/hello.yaml"
        ));
        let ds = read(path).unwrap();
        assert_eq!(ds.len(), 1);
        let d = &ds[0];
        assert_eq!(d.name_str(), "hello-web");
        assert_eq!(d.namespace_or_default(), "default");
        assert_eq!(d.spec.target_devices, vec!["demo-device"]);
        let plan = crate::apply::plan(d).unwrap();
        assert!(plan.unknown_type.is_none());
    }

    /// The error and its causes, as the CLI prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s.push_str(&format!(": {c}"));
            cause = c.source();
        }
        s
    }

    #[test]
    fn rejects_other_kinds_and_unknown_fields() {
        let e = parse("apiVersion: apps/v1\nkind: Deployment\n", "x").unwrap_err();
        assert!(matches!(e, ManifestError::NotADeployment { index: 1, .. }));
        assert!(e.to_string().contains("expected kind Deployment"), "{e}");
        let typo = "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  targetDevice: [a]\n  score: {type: PodmanV0, data: {}}\n";
        let e = parse(typo, "x").unwrap_err();
        assert!(matches!(e, ManifestError::Schema { .. }), "{e:?}");
        assert!(chain(&e).starts_with("x, document 1: "), "{}", chain(&e));
        assert!(chain(&e).contains("targetDevice"), "{}", chain(&e));
        let e = parse("a: [", "x").unwrap_err();
        assert!(matches!(e, ManifestError::Yaml { .. }), "{e:?}");
        assert!(matches!(parse("", "x"), Err(ManifestError::Empty(_))));
        let e = read(Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(matches!(e, ManifestError::Read { .. }), "{e:?}");
    }
}
