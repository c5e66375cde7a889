//! Pulls a desired state's images ahead of its apply: while a change waits
//! (the update lock is held, the maintenance window is closed), the
//! download is what takes long on a board, and it touches no container.
//! The pull policy is the reconciler's: `IfNotPresent` pulls what is
//! missing, `Always` pulls (the apply pulls again, with the layers already
//! here), `Never` pulls nothing and says when the image is missing.

use protocol::{IotScore, PullPolicy, ScoreError, Text};

use crate::podman::{Runtime, RuntimeError};
use crate::policy::ImageReferenceError;

/// Why a desired state's images are not all on the device.
#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    /// The value does not decode.
    #[error("cannot decode the desired state")]
    Undecodable(#[source] protocol::wire::DecodeError),
    /// The score's type is unknown, or its data does not decode.
    #[error(transparent)]
    Score(ScoreError<'static>),
    /// An image reference does not follow the distribution grammar (the
    /// apply refuses the score too).
    #[error("image reference {image:?} does not parse")]
    Reference {
        /// The image reference as sent.
        image: String,
        /// What is wrong with it.
        #[source]
        source: ImageReferenceError,
    },
    /// Podman cannot say whether the image is there.
    #[error("cannot check for image {image}")]
    Check {
        /// The image.
        image: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The pull failed.
    #[error("cannot pull {image}")]
    Pull {
        /// The image.
        image: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The login for an image's registry does not open.
    #[error(transparent)]
    Login(crate::secrets::SecretError),
    /// The image is missing and `pullPolicy: Never` forbids the pull.
    #[error("image {image} is not on the device and pullPolicy is Never")]
    Missing {
        /// The image.
        image: String,
    },
}

/// Pulls the images of the desired-state `value` that its containers'
/// pull policies would pull at the apply; returns those pulled, in score
/// order, each once. Every image is tried; the first failure is returned
/// (the images pulled before and after it stay on the device). A
/// registry login the value carries is used as the apply uses it.
pub async fn prefetch<R: Runtime>(
    runtime: &R,
    secrets: &crate::secrets::Secrets,
    deployment: &str,
    value: &[u8],
) -> Result<Vec<String>, PrefetchError> {
    let desired = protocol::wire::decode::<protocol::DesiredState<'_>>(value)
        .map_err(PrefetchError::Undecodable)?;
    let score = desired
        .score
        .decode()
        .map_err(|e| PrefetchError::Score(owned(e)))?;
    let images = images(&score);
    let mut pulled = Vec::new();
    let mut first_error = None;
    for (image, policy) in images {
        let auth = secrets.pull_auth(deployment, desired.revision, &desired.secrets, &image);
        let result = match auth {
            Ok(auth) => fetch(runtime, &image, policy, auth.as_ref()).await,
            Err(e) => Err(PrefetchError::Login(e)),
        };
        match result {
            Ok(true) => pulled.push(image),
            Ok(false) => {}
            Err(e) => {
                crate::warn!("prefetch: {}", crate::log::Chain(&e));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pulled),
    }
}

/// Each image of `score` once, with the pull policy of its first container.
fn images(score: &IotScore<'_>) -> Vec<(String, PullPolicy)> {
    let all: Vec<(String, PullPolicy)> = match score {
        IotScore::PodmanV0(s) => s
            .containers
            .iter()
            .map(|c| (c.image.as_str().to_string(), c.pull_policy))
            .collect(),
        IotScore::PodmanV1(s) => s
            .containers
            .iter()
            .map(|c| (c.image.as_str().to_string(), c.pull_policy))
            .collect(),
    };
    let mut once: Vec<(String, PullPolicy)> = Vec::with_capacity(all.len());
    for (image, policy) in all {
        if !once.iter().any(|(i, _)| *i == image) {
            once.push((image, policy));
        }
    }
    once
}

/// Brings one image as `policy` says; whether it pulled.
async fn fetch<R: Runtime>(
    runtime: &R,
    image: &str,
    policy: PullPolicy,
    auth: Option<&crate::podman::RegistryAuth>,
) -> Result<bool, PrefetchError> {
    crate::policy::check_image_reference(image).map_err(|source| PrefetchError::Reference {
        image: image.to_string(),
        source,
    })?;
    let present = || async {
        runtime
            .image_exists(image)
            .await
            .map_err(|source| PrefetchError::Check {
                image: image.to_string(),
                source,
            })
    };
    let pull = || async {
        crate::info!("prefetch: pulling {image}");
        runtime
            .pull(image, auth)
            .await
            .map(|()| true)
            .map_err(|source| PrefetchError::Pull {
                image: image.to_string(),
                source,
            })
    };
    match policy {
        PullPolicy::Always => pull().await,
        PullPolicy::IfNotPresent if present().await? => Ok(false),
        PullPolicy::IfNotPresent => pull().await,
        PullPolicy::Never if present().await? => Ok(false),
        PullPolicy::Never => Err(PrefetchError::Missing {
            image: image.to_string(),
        }),
    }
}

/// A score error that outlives the value it was read from.
fn owned(e: ScoreError<'_>) -> ScoreError<'static> {
    let own = |t: Text<'_>| Text::owned(t.as_str().to_string());
    match e {
        ScoreError::Unsupported { type_name } => ScoreError::Unsupported {
            type_name: own(type_name),
        },
        ScoreError::UnexpectedEncoding { type_name } => ScoreError::UnexpectedEncoding {
            type_name: own(type_name),
        },
        ScoreError::Decode(d) => ScoreError::Decode(d),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::podman::{ContainerInfo, CreateSpec, ExecOutcome, ManagedContainer, RegistryAuth};
    use crate::testing::MemoryRuntime;
    use protocol::{BoundedVec, Container, ContainerV1, DesiredState, PodmanV1Score};

    /// The test runtime with images: those in `present` exist; a pull
    /// adds the image unless it is in `unpullable`; every image call is
    /// logged.
    #[derive(Default)]
    struct Images {
        containers: MemoryRuntime,
        present: RefCell<BTreeSet<String>>,
        unpullable: BTreeSet<String>,
        calls: RefCell<Vec<String>>,
    }

    impl Images {
        fn with(present: &[&str]) -> Images {
            Images {
                present: RefCell::new(present.iter().map(|s| s.to_string()).collect()),
                ..Images::default()
            }
        }
    }

    impl Runtime for Images {
        async fn version(&self) -> Result<String, RuntimeError> {
            self.containers.version().await
        }
        async fn list_managed(&self, d: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
            self.containers.list_managed(d).await
        }
        async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
            self.containers.inspect(id).await
        }
        async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
            self.calls.borrow_mut().push(format!("exists {image}"));
            Ok(self.present.borrow().contains(image))
        }
        async fn create_secret(
            &self,
            name: &str,
            data: &[u8],
            dir: &std::path::Path,
            labels: &std::collections::BTreeMap<String, String>,
        ) -> Result<(), RuntimeError> {
            self.containers.create_secret(name, data, dir, labels).await
        }
        async fn list_secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, RuntimeError> {
            self.containers.list_secrets(prefix).await
        }
        async fn remove_secret(&self, name: &str) -> Result<(), RuntimeError> {
            self.containers.remove_secret(name).await
        }
        async fn pull(&self, image: &str, auth: Option<&RegistryAuth>) -> Result<(), RuntimeError> {
            // The login's user name, when there is one.
            let user = auth.map(|a| {
                let json = data_encoding::BASE64URL
                    .decode(a.header().as_bytes())
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                format!(" as {}", v["username"].as_str().unwrap())
            });
            self.calls
                .borrow_mut()
                .push(format!("pull {image}{}", user.unwrap_or_default()));
            if self.unpullable.contains(image) {
                return Err(RuntimeError::Api {
                    status: 500,
                    message: "manifest unknown".into(),
                });
            }
            self.present.borrow_mut().insert(image.to_string());
            Ok(())
        }
        async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError> {
            self.containers.create(spec).await
        }
        async fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
            self.containers.rename(id, new_name).await
        }
        async fn start(&self, id: &str) -> Result<(), RuntimeError> {
            self.containers.start(id).await
        }
        async fn stop(&self, id: &str, t: u64) -> Result<(), RuntimeError> {
            self.containers.stop(id, t).await
        }
        async fn remove(&self, id: &str, t: u64) -> Result<(), RuntimeError> {
            self.containers.remove(id, t).await
        }
        async fn exec(
            &self,
            id: &str,
            command: &[String],
            timeout: std::time::Duration,
        ) -> Result<ExecOutcome, RuntimeError> {
            self.containers.exec(id, command, timeout).await
        }
    }

    fn c(name: &'static str, image: &'static str, pull: PullPolicy) -> ContainerV1<'static> {
        ContainerV1 {
            pull_policy: pull,
            ..ContainerV1::new(Text::borrowed(name), Text::borrowed(image))
        }
    }

    fn value(score: IotScore<'_>) -> Vec<u8> {
        protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision: 2,
            score: score.to_payload().unwrap(),
            rollout: Default::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap()
    }

    fn v1(containers: Vec<ContainerV1<'static>>) -> Vec<u8> {
        value(IotScore::PodmanV1(PodmanV1Score {
            containers: BoundedVec::try_from_iter(containers).unwrap(),
        }))
    }

    #[tokio::test]
    async fn pulls_what_the_pull_policy_would_pull_each_image_once() {
        let rt = Images::with(&["localhost/here:1", "localhost/never:1"]);
        let v = v1(vec![
            c("a", "localhost/new:2", PullPolicy::IfNotPresent),
            c("b", "localhost/here:1", PullPolicy::IfNotPresent),
            c("c", "localhost/new:2", PullPolicy::IfNotPresent),
            c("d", "localhost/always:1", PullPolicy::Always),
            c("e", "localhost/never:1", PullPolicy::Never),
        ]);
        let pulled = prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v)
            .await
            .unwrap();
        assert_eq!(pulled, ["localhost/new:2", "localhost/always:1"]);
        assert_eq!(
            rt.calls.take(),
            [
                "exists localhost/new:2",
                "pull localhost/new:2",
                "exists localhost/here:1",
                "pull localhost/always:1",
                "exists localhost/never:1",
            ]
        );
        // Again: only `Always` pulls.
        assert_eq!(
            prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v)
                .await
                .unwrap(),
            ["localhost/always:1"]
        );
        // No container was touched.
        assert!(rt.containers.snapshot().is_empty());
    }

    /// A held change's images are pulled with the login the apply uses;
    /// one sealed for another revision does not open and nothing is pulled
    /// from that registry.
    #[tokio::test]
    async fn registry_logins_are_used_as_the_apply_uses_them() {
        let key = sealing::DeviceKey::generate();
        let seed = key.seed();
        let secrets = crate::secrets::Secrets::new(
            "dev",
            Some(sealing::DeviceKey::from_seed(&seed).unwrap()),
            std::path::Path::new("/nonexistent/never-used"),
        );
        let with_login = |revision: u64| {
            let login = postcard::to_allocvec(&protocol::RegistryLogin {
                username: Text::borrowed("fleet"),
                password: Text::borrowed("pw"),
                identity_token: Text::borrowed(""),
            })
            .unwrap();
            let sealed = sealing::seal(
                key.public_key(),
                &protocol::Binding {
                    device: Text::borrowed("dev"),
                    deployment: Text::borrowed("web"),
                    revision,
                    purpose: protocol::Purpose::Pull {
                        registry: Text::borrowed("registry.example:5000"),
                    },
                },
                &login,
            )
            .unwrap();
            let score = IotScore::PodmanV1(PodmanV1Score {
                containers: BoundedVec::try_from_iter([
                    c("a", "registry.example:5000/app:1", PullPolicy::Always),
                    c("b", "localhost/open:1", PullPolicy::Always),
                ])
                .unwrap(),
            });
            protocol::wire::encode_to_vec(&DesiredState {
                deployment: Text::borrowed("web"),
                revision: 2,
                score: score.to_payload().unwrap(),
                rollout: Default::default(),
                attempt: 0,
                gate: Default::default(),
                secrets: protocol::SecretSet {
                    pull: BoundedVec::try_from_iter([protocol::PullCredential {
                        registry: Text::borrowed("registry.example:5000"),
                        sealed,
                    }])
                    .unwrap(),
                    values: BoundedVec::new(),
                },
            })
            .unwrap()
        };
        let rt = Images::default();
        prefetch(&rt, &secrets, "web", &with_login(2))
            .await
            .unwrap();
        assert_eq!(
            rt.calls.take(),
            [
                "pull registry.example:5000/app:1 as fleet",
                "pull localhost/open:1"
            ]
        );
        let e = prefetch(&rt, &secrets, "web", &with_login(1))
            .await
            .unwrap_err();
        let m = crate::log::Chain(&e).to_string();
        assert!(
            m.contains("registry.example:5000") && m.contains("does not open"),
            "{m}"
        );
        assert_eq!(rt.calls.take(), ["pull localhost/open:1"]);
    }

    #[tokio::test]
    async fn podman_v0_scores_are_prefetched_too() {
        let rt = Images::default();
        let v = value(IotScore::PodmanV0(protocol::PodmanV0Score {
            containers: BoundedVec::try_from_iter([Container::new(
                Text::borrowed("a"),
                Text::borrowed("localhost/v0:1"),
            )])
            .unwrap(),
        }));
        assert_eq!(
            prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v)
                .await
                .unwrap(),
            ["localhost/v0:1"]
        );
    }

    /// Every image is tried; the first failure is the answer.
    #[tokio::test]
    async fn failures_are_reported_after_every_image_was_tried() {
        let rt = Images {
            unpullable: ["localhost/gone:1".to_string()].into(),
            ..Images::default()
        };
        let v = v1(vec![
            c("a", "localhost/gone:1", PullPolicy::IfNotPresent),
            c("b", "localhost/missing:1", PullPolicy::Never),
            c("c", "localhost/ok:1", PullPolicy::IfNotPresent),
        ]);
        let e = prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PrefetchError::Pull { image, .. } if image == "localhost/gone:1"),
            "{e:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(rt.present.borrow().contains("localhost/ok:1"));
        let v = v1(vec![c("b", "localhost/missing:1", PullPolicy::Never)]);
        let e = prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "image localhost/missing:1 is not on the device and pullPolicy is Never"
        );
    }

    /// What cannot be read is not pulled: a bad value, an unknown score
    /// type, an image reference the apply would refuse.
    #[tokio::test]
    async fn nothing_is_pulled_for_what_the_apply_would_refuse() {
        let rt = Images::default();
        assert!(matches!(
            prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", b"\xff").await,
            Err(PrefetchError::Undecodable(_))
        ));
        let v = v1(vec![c("a", "$(reboot)/x", PullPolicy::Always)]);
        assert!(matches!(
            prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &v).await,
            Err(PrefetchError::Reference { .. })
        ));
        let unknown = protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision: 2,
            score: protocol::ScorePayload {
                type_name: Text::borrowed("PodmanV9"),
                encoding: protocol::PayloadEncoding::Json,
                data: protocol::Bytes::owned(b"{}".to_vec()),
            },
            rollout: Default::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap();
        let e = prefetch(&rt, &crate::secrets::Secrets::none("dev"), "web", &unknown)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("PodmanV9"), "{e}");
        assert_eq!(rt.calls.take(), Vec::<String>::new());
    }
}
