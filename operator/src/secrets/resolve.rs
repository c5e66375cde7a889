//! The referenced Secrets read from Kubernetes, in the Deployment's
//! namespace, with `get` only: the operator's RBAC has no `list` or
//! `watch` on Secrets (it cannot enumerate them), so a Deployment that
//! references Secrets is reconciled again every [`REREAD`] to notice a
//! rotation (a new resourceVersion is a new revision).
//!
//! Only the referenced values are kept (in buffers wiped on drop); the
//! Secret objects read are dropped when the resolution ends.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{Fingerprint, References, Resolved, SecretError, resolve_from};

/// How often a Deployment that references Secrets reads them again.
pub const REREAD: Duration = Duration::from_secs(30);

/// Why the Secrets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A Secret is missing or unusable: the user's to fix, shown in the
    /// Deployment's status.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The API server failed the read: retried.
    #[error("reading Secret {namespace}/{secret}")]
    Api {
        /// The Deployment's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Reads every Secret `refs` names in `namespace` and resolves `refs`.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    refs: &References,
) -> Result<Resolved, ResolveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    for name in refs.secret_names() {
        match api.get(&name).await {
            Ok(s) => {
                secrets.insert(name, s);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                return Err(SecretError::Forbidden {
                    at: where_named(refs, &name),
                    secret: name,
                    namespace: namespace.to_string(),
                }
                .into());
            }
            Err(source) => {
                return Err(ResolveError::Api {
                    namespace: namespace.to_string(),
                    secret: name,
                    source,
                });
            }
        }
    }
    Ok(resolve_from(
        refs,
        namespace,
        |name| secrets.get(name),
        Fingerprint::Versions,
    )?)
}

/// Where the Deployment first names `secret`.
fn where_named(refs: &References, secret: &str) -> String {
    refs.keys
        .iter()
        .find(|((s, _), _)| s == secret)
        .map(|(_, at)| at.clone())
        .or_else(|| refs.whole.get(secret).cloned())
        .unwrap_or_else(|| "spec.imagePullSecrets".into())
}
