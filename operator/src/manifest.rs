//! Reading Deployment manifests from YAML files, for the cluster-less CLI.

use std::path::Path;

use crate::crd::{Deployment, GROUP};

/// Why a manifest file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not YAML, or not a Deployment of this API.
    #[error("{path}, document {index}: {reason}")]
    Document {
        /// The file.
        path: String,
        /// The document's position, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
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
        let index = i + 1;
        let err = |reason: String| ManifestError::Document {
            path: origin.to_string(),
            index,
            reason,
        };
        let value = serde_json::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        let expected = format!("{GROUP}/v1alpha1");
        if api_version != expected || kind != "Deployment" {
            return Err(err(format!(
                "is {kind:?} of {api_version:?}; expected kind Deployment of {expected}"
            )));
        }
        let d: Deployment = serde_path_to_json(value).map_err(err)?;
        out.push(d);
    }
    if out.is_empty() {
        return Err(ManifestError::Empty(origin.to_string()));
    }
    Ok(out)
}

fn serde_path_to_json(value: serde_json::Value) -> Result<Deployment, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
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

    #[test]
    fn rejects_other_kinds_and_unknown_fields() {
        let e = parse("apiVersion: apps/v1\nkind: Deployment\n", "x").unwrap_err();
        assert!(e.to_string().contains("expected kind Deployment"), "{e}");
        let typo = "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  targetDevice: [a]\n  score: {type: PodmanV0, data: {}}\n";
        let e = parse(typo, "x").unwrap_err();
        assert!(e.to_string().contains("targetDevice"), "{e}");
        assert!(matches!(parse("", "x"), Err(ManifestError::Empty(_))));
    }
}
