//! A container registry on loopback, so that a test can watch the agent
//! pull: testkit's real `docker-registry` (plain HTTP) with one local image
//! to publish under the names the test deploys, and a Podman service whose
//! `registries.conf` allows plain HTTP to it (the machine's own
//! configuration is left alone).
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use testkit::PodmanService;

/// A running registry that publishes one local image; stopped on drop.
pub struct Registry {
    inner: testkit::registry::Registry,
    image: String,
}

impl Registry {
    /// Starts a registry for `image` (already in `podman`'s storage); the
    /// image is served under the names given to [`Self::publish`]. Panics
    /// when `docker-registry` is missing (apt-get install docker-registry).
    pub fn serve(podman: &PodmanService, image: &str) -> Registry {
        let inner = testkit::registry::Registry::start()
            .expect("docker-registry is needed here: apt-get install docker-registry");
        assert!(
            podman
                .command()
                .args(["image", "exists", image])
                .status()
                .is_ok_and(|s| s.success()),
            "{image} is not in Podman's storage"
        );
        Registry {
            inner,
            image: image.to_string(),
        }
    }

    /// Pushes the image as `repo_tag` (e.g. `gate/dev-1:2`) and returns the
    /// reference to pull it by, `<host>/<repo_tag>`.
    pub fn publish(&self, podman: &PodmanService, repo_tag: &str) -> String {
        self.inner.push(podman, &self.image, repo_tag)
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.inner.host()
    }

    /// How many manifests were fetched (pulls; pushes fetch none), from the
    /// registry's access log.
    pub fn manifest_requests(&self) -> u64 {
        self.inner.manifest_requests() as u64
    }

    /// The registry's access log, for assertion messages.
    pub fn access_log(&self) -> String {
        self.inner.access_log()
    }
}

/// A Podman API service like testkit's, whose `registries.conf` lets it
/// pull from `registry` over plain HTTP. Killed on drop.
pub struct PullingPodman {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PullingPodman {
    pub fn start(registry: &Registry) -> PullingPodman {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            format!(
                "unqualified-search-registries = []\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
        )
        .unwrap();
        let binary = testkit::find_binary("PODMAN_BIN", "podman").unwrap();
        let mut svc = PullingPodman { dir, child: None };
        let child = std::process::Command::new(binary)
            .env("CONTAINERS_CONF", PodmanService::containers_conf())
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["system", "service", "--time=0"])
            .arg(svc.uri())
            .current_dir(svc.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        svc.child = Some(child);
        let sock = svc.socket_path();
        assert!(
            testkit::wait_until(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "podman service did not listen on {}",
            sock.display()
        );
        svc
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `unix://<socket>`, for the agent's `[podman] socket`.
    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }
}

impl Drop for PullingPodman {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
