//! A real container registry per test: Debian's `docker-registry` (CNCF
//! distribution 2.8) on a free 127.0.0.1 port with a temporary store.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{PodmanService, find_binary, free_port, missing, unique, wait_until};

/// The configuration `docker-registry serve` reads. One place that writes
/// it, so authorization (htpasswd) and TLS become fields here.
struct Config<'a> {
    port: u16,
    storage: &'a Path,
    /// Fixed per server: the registry signs upload state with it, and a
    /// generated one is logged as a warning on every start.
    secret: &'a str,
}

impl Config<'_> {
    /// The YAML text. Paths are written as double-quoted scalars; Rust's
    /// `{:?}` escaping is YAML's for the characters temporary paths hold.
    fn yaml(&self) -> String {
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: {secret:?}\n",
            storage = self.storage.display().to_string(),
            port = self.port,
            secret = self.secret,
        )
    }
}

/// A running `docker-registry` serving plain HTTP on 127.0.0.1 without
/// authorization, its store, configuration and logs in a temporary
/// directory. Killed on drop; the directory is removed with it.
pub struct Registry {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    secret: String,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry from `DOCKER_REGISTRY_BIN` or `docker-registry` on
    /// PATH. `None` when the binary is missing outside CI (the test should
    /// return).
    pub fn start() -> Option<Registry> {
        let Some(binary) = find_binary("DOCKER_REGISTRY_BIN", "docker-registry") else {
            return missing(
                "docker-registry is not installed (apt-get install docker-registry, or set DOCKER_REGISTRY_BIN)",
            );
        };
        let mut registry = Registry {
            binary,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            secret: unique("testkit-registry"),
            child: None,
        };
        // A port taken between `free_port` and the bind makes the registry
        // exit at once; a fresh port then is as good as the first.
        for _ in 0..5 {
            if registry.spawn() {
                return Some(registry);
            }
            registry.port = free_port();
        }
        panic!(
            "docker-registry exited at start five times (ports taken?); its log: {}",
            registry.log()
        );
    }

    /// Writes the configuration, starts the process and waits until it
    /// answers `GET /v2/`; `false` when it exited instead.
    fn spawn(&mut self) -> bool {
        let storage = self.dir.path().join("storage");
        let config = self.dir.path().join("config.yml");
        let text = Config {
            port: self.port,
            storage: &storage,
            secret: &self.secret,
        }
        .yaml();
        std::fs::write(&config, text).expect("write the docker-registry configuration");
        let access = std::fs::File::create(self.access_log_path()).expect("create the access log");
        let log = std::fs::File::create(self.log_path()).expect("create the registry log");
        let mut cmd = Command::new(&self.binary);
        // `REGISTRY_*` variables override the configuration file.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg(&config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            // The access log (one combined-format line per request) goes to
            // stdout, the application log to stderr.
            .stdout(access)
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let port = self.port;
        let mut exited = false;
        let up = wait_until(Duration::from_secs(15), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                exited = true;
                return true;
            }
            api_answers(port)
        });
        if exited {
            return false;
        }
        self.child = Some(child);
        assert!(
            up,
            "docker-registry did not answer GET /v2/ on 127.0.0.1:{port} within 15 s; its log: {}",
            self.log()
        );
        true
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Pushes `local_image` from `podman`'s storage as `repo_tag` (e.g.
    /// `app/web:2`) over plain HTTP and returns the pullable reference
    /// `127.0.0.1:<port>/<repo_tag>`.
    pub fn push(&self, podman: &PodmanService, local_image: &str, repo_tag: &str) -> String {
        let reference = format!("{}/{repo_tag}", self.host());
        podman.run(&[
            "push",
            "--quiet",
            "--tls-verify=false",
            local_image,
            &reference,
        ]);
        reference
    }

    /// How many manifests were fetched (`GET /v2/<name>/manifests/<ref>`,
    /// whatever the answer), read from the access log. Pushing fetches
    /// none, so this counts pulls.
    pub fn manifest_requests(&self) -> usize {
        self.access_log()
            .lines()
            .filter(|l| {
                l.split_once("\"GET /v2/")
                    .and_then(|(_, rest)| rest.split(' ').next())
                    .is_some_and(|path| path.contains("/manifests/"))
            })
            .count()
    }

    /// The access log so far: one line per request, in the combined format.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// The application log so far (start-up, errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `GET /v2/` on 127.0.0.1:`port` answers 200 as a distribution
/// registry (its API-version header), not just anything on the port.
fn api_answers(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err()
        || s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err()
    {
        return false;
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return false;
    }
    let head = out.to_ascii_lowercase();
    (head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"))
        && head.contains("docker-distribution-api-version: registry/2.0")
}
