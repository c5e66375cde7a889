//! Reading Deployment manifests from YAML files, for the cluster-less CLI.
//!
//! A file may also hold Device objects (a board's labels and maintenance
//! windows, as `kubectl apply` takes them): [`read`] skips them, and
//! [`read_all`] returns them too, so that the CLI can give a board its own
//! windows as the controller does.

use std::collections::BTreeMap;
use std::path::Path;

use crate::crd::{Deployment, Device, GROUP, MaintenanceWindowSpec};

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
        "{path}, document {index}: is {kind:?} of {api_version:?}; expected kind Deployment (or Device) of {GROUP}/v1alpha1"
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
    /// A Deployment or Device that does not fit the schema (a typo'd
    /// field, a wrong type).
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

/// The objects of a manifest file.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// Its Deployments, in order.
    pub deployments: Vec<Deployment>,
    /// Its Devices, in order.
    pub devices: Vec<Device>,
}

impl Manifest {
    /// The Devices' own maintenance windows, by device id (those that have
    /// any), for [`crate::apply::Plan::set_device_windows`].
    pub fn device_windows(&self) -> BTreeMap<String, Vec<MaintenanceWindowSpec>> {
        self.devices
            .iter()
            .filter(|d| !d.spec.windows().is_empty())
            .filter_map(|d| Some((d.metadata.name.clone()?, d.spec.windows().to_vec())))
            .collect()
    }
}

/// The Deployments in a (multi-document) YAML file; every document must be
/// one, or a Device (skipped). Fields the schema does not know are
/// rejected, as typos.
pub fn read(path: &Path) -> Result<Vec<Deployment>, ManifestError> {
    Ok(read_all(path)?.deployments)
}

/// The Deployments and Devices in a (multi-document) YAML file; at least
/// one Deployment.
pub fn read_all(path: &Path) -> Result<Manifest, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_all(&text, &shown)
}

/// Like [`read`], from a string; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Deployment>, ManifestError> {
    Ok(parse_all(text, origin)?.deployments)
}

/// Like [`read_all`], from a string; `origin` names it in errors.
pub fn parse_all(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
    use serde::Deserialize;
    let mut out = Manifest::default();
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
        let ours = api_version == format!("{GROUP}/v1alpha1");
        if ours && kind == "Device" {
            let d: Device =
                serde_json::from_value(value).map_err(|source| ManifestError::Schema {
                    path,
                    index,
                    source,
                })?;
            out.devices.push(d);
            continue;
        }
        if !ours || kind != "Deployment" {
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
        out.deployments.push(d);
    }
    if out.deployments.is_empty() {
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

    #[test]
    fn reads_devices_beside_deployments() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/maintenance.yaml"
        ));
        let m = read_all(path).unwrap();
        assert_eq!(m.deployments.len(), 1);
        assert_eq!(m.devices.len(), 1);
        let windows = m.device_windows();
        assert_eq!(windows.keys().collect::<Vec<_>>(), ["kiosk-lisbon"]);
        assert_eq!(windows["kiosk-lisbon"][0].time_zone, "Europe/Lisbon");
        // `read` gives the Deployments alone, as the CLI used to.
        assert_eq!(read(path).unwrap().len(), 1);
        let mut plan = crate::apply::plan(&m.deployments[0]).unwrap();
        assert_eq!(plan.value[0], 4, "the example has a gate");
        plan.add_targets(["kiosk-lisbon".to_string(), "kiosk-paris".into()]);
        assert!(
            plan.set_device_windows(|d| windows.get(d).cloned())
                .is_empty()
        );
        assert_eq!(
            plan.device_values.keys().collect::<Vec<_>>(),
            ["kiosk-lisbon"]
        );
        // A Device alone is not a manifest the CLI can apply.
        let device_only =
            "apiVersion: iot.nationtech.io/v1alpha1\nkind: Device\nmetadata: {name: a}\nspec: {}\n";
        assert!(matches!(
            parse(device_only, "x"),
            Err(ManifestError::Empty(_))
        ));
        let typo = "apiVersion: iot.nationtech.io/v1alpha1\nkind: Device\nmetadata: {name: a}\nspec: {maintenance: {window: []}}\n";
        assert!(matches!(
            parse(typo, "x"),
            Err(ManifestError::Schema { .. })
        ));
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
