//! A real container registry per test: Debian's `docker-registry` (CNCF
//! distribution 2.8) on a free 127.0.0.1 port with a temporary store.
//!
//! [`Registry::start`] serves plain HTTP without authorization.
//! [`Registry::start_secure`] serves HTTPS with a certificate from a test CA
//! ([`crate::tls`]) and asks for a password (an htpasswd file of bcrypt
//! hashes). Podman verifies that certificate: the registry writes its CA to
//! `/etc/containers/certs.d/127.0.0.1:<port>/ca.crt` (see
//! containers-certs.d(5)), the one place every rootful Podman process (the
//! `podman` CLI and the API service the agent talks to) reads per-registry
//! CAs from without a flag (`--cert-dir` exists on the CLI only, not on the
//! libpod API's pull), and removes that directory on drop. Podman 4.3 has
//! no containers.conf, registries.conf or environment setting for it. The
//! directory is named for this registry's port, so it trusts the test CA for
//! nothing else; a test process killed before drop leaves it behind, and
//! the next secure registry on that port overwrites it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{PodmanService, find_binary, free_port, missing, unique, wait_until};

/// Where rootful Podman looks for a registry's CA: `<dir>/<host:port>/*.crt`.
const CERTS_D: &str = "/etc/containers/certs.d";

/// bcrypt cost of the htpasswd hashes. The registry checks the password on
/// every request (a push makes dozens); the default cost (12) would add
/// about a quarter second to each. The hashes guard nothing real.
const BCRYPT_COST: u32 = 5;

/// The configuration `docker-registry serve` reads. One place that writes
/// it, so authorization (htpasswd) and TLS are fields here.
struct Config<'a> {
    port: u16,
    storage: &'a Path,
    /// Fixed per server: the registry signs upload state with it, and a
    /// generated one is logged as a warning on every start.
    secret: &'a str,
    /// HTTPS and htpasswd authorization; `None` for plain HTTP, no auth.
    secure: Option<SecureFiles<'a>>,
}

/// The files a secure registry's configuration names.
struct SecureFiles<'a> {
    htpasswd: &'a Path,
    certificate: &'a Path,
    key: &'a Path,
}

impl Config<'_> {
    /// The YAML text. Paths are written as double-quoted scalars; Rust's
    /// `{:?}` escaping is YAML's for the characters temporary paths hold.
    fn yaml(&self) -> String {
        let mut text = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: {secret:?}\n",
            storage = self.storage.display().to_string(),
            port = self.port,
            secret = self.secret,
        );
        if let Some(s) = &self.secure {
            text.push_str(&format!(
                "  tls:\n    certificate: {cert:?}\n    key: {key:?}\n\
                 auth:\n  htpasswd:\n    realm: \"testkit-registry\"\n    path: {htpasswd:?}\n",
                cert = s.certificate.display().to_string(),
                key = s.key.display().to_string(),
                htpasswd = s.htpasswd.display().to_string(),
            ));
        }
        text
    }
}

/// What a registry started with [`Registry::start_secure`] adds.
struct Secure {
    /// User name to password, in clear text so [`Registry::push`] can log
    /// in; the registry itself only gets bcrypt hashes.
    users: BTreeMap<String, String>,
    /// The TLS client that checks the registry is up.
    curl: PathBuf,
    /// `/etc/containers/certs.d/127.0.0.1:<port>` once written; removed on
    /// drop.
    trust_dir: Option<PathBuf>,
}

/// A running `docker-registry`, its store, configuration, certificates and
/// logs in a temporary directory. Killed on drop; the directory (and the
/// CA it made Podman trust) is removed with it.
pub struct Registry {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    secret: String,
    secure: Option<Secure>,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry serving plain HTTP without authorization, from
    /// `DOCKER_REGISTRY_BIN` or `docker-registry` on PATH. `None` when the
    /// binary is missing outside CI (the test should return).
    pub fn start() -> Option<Registry> {
        Self::launch(None)
    }

    /// Starts a registry serving HTTPS (a server certificate for 127.0.0.1
    /// from a fresh test CA, trusted by Podman as the module doc says) that
    /// answers 401 without one of `users`' (name, password) pairs. `None`
    /// when `docker-registry`, `openssl` or `curl` is missing outside CI.
    pub fn start_secure(users: &[(&str, &str)]) -> Option<Registry> {
        let curl = find_binary("CURL_BIN", "curl")
            .or_else(|| missing("curl is not installed (apt-get install curl, or set CURL_BIN)"))?;
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        Self::launch(Some(Secure {
            users,
            curl,
            trust_dir: None,
        }))
    }

    fn launch(secure: Option<Secure>) -> Option<Registry> {
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
            secure,
            child: None,
        };
        if registry.secure.is_some() {
            let tls = registry.tls_dir();
            std::fs::create_dir(&tls).expect("create the registry's certificate directory");
            crate::tls::certificates(&tls)?;
            registry.write_htpasswd();
        }
        // A port taken between `free_port` and the bind makes the registry
        // exit at once; a fresh port then is as good as the first.
        for _ in 0..5 {
            if registry.spawn() {
                registry.trust_ca();
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
        let (htpasswd, certificate, key) = (
            self.htpasswd_path(),
            self.tls_dir().join("server.pem"),
            self.tls_dir().join("server-key.pem"),
        );
        let text = Config {
            port: self.port,
            storage: &storage,
            secret: &self.secret,
            secure: self.secure.as_ref().map(|_| SecureFiles {
                htpasswd: &htpasswd,
                certificate: &certificate,
                key: &key,
            }),
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
        let tls_check = self
            .secure
            .as_ref()
            .map(|s| (s.curl.clone(), self.tls_dir().join("ca.pem")));
        let mut exited = false;
        let up = wait_until(Duration::from_secs(15), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                exited = true;
                return true;
            }
            match &tls_check {
                None => api_answers(port),
                Some((curl, ca)) => api_answers_tls(curl, port, ca),
            }
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

    /// Makes Podman trust this registry's CA for its host:port (see the
    /// module doc). Nothing for a plain registry.
    fn trust_ca(&mut self) {
        let host = self.host();
        let ca = self.tls_dir().join("ca.pem");
        let Some(secure) = self.secure.as_mut() else {
            return;
        };
        let dir = Path::new(CERTS_D).join(host);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create {} for Podman to trust the test registry's CA ({e}); \
                 the tests run rootful Podman as root",
                dir.display()
            )
        });
        secure.trust_dir = Some(dir.clone());
        std::fs::copy(&ca, dir.join("ca.crt"))
            .unwrap_or_else(|e| panic!("copy the test CA to {}: {e}", dir.display()));
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA's certificate (PEM) that signed a secure registry's
    /// server certificate. Panics on a plain registry.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).expect("read the test CA")
    }

    /// Where [`Registry::ca_pem`] is stored (e.g. for `podman --cert-dir`
    /// or `curl --cacert`). Panics on a plain registry.
    pub fn ca_path(&self) -> PathBuf {
        assert!(
            self.secure.is_some(),
            "a plain registry (Registry::start) has no CA"
        );
        self.tls_dir().join("ca.pem")
    }

    /// Sets `user`'s password (adds the user if new) by rewriting the
    /// htpasswd file. The registry keeps running: distribution 2.8 reads the
    /// file again when its modification time changes (checked on every
    /// request), so the old password is refused from the next request on.
    /// Panics on a plain registry.
    pub fn set_password(&mut self, user: &str, password: &str) {
        self.secure
            .as_mut()
            .expect("a plain registry (Registry::start) has no passwords")
            .users
            .insert(user.to_string(), password.to_string());
        self.write_htpasswd();
    }

    /// Pushes `local_image` from `podman`'s storage as `repo_tag` (e.g.
    /// `app/web:2`) and returns the pullable reference
    /// `127.0.0.1:<port>/<repo_tag>`. A plain registry is pushed to over
    /// HTTP; a secure one over verified TLS as its first user (by name).
    pub fn push(&self, podman: &PodmanService, local_image: &str, repo_tag: &str) -> String {
        match self.secure.as_ref().and_then(|s| s.users.iter().next()) {
            Some((user, password)) => self.push_as(podman, local_image, repo_tag, user, password),
            None if self.secure.is_some() => panic!("the secure registry has no users to push as"),
            None => {
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
        }
    }

    /// [`Registry::push`] to a secure registry as `user` with `password`
    /// (`--creds`, not stored by Podman), verifying TLS. Panics with
    /// Podman's error when the push fails.
    pub fn push_as(
        &self,
        podman: &PodmanService,
        local_image: &str,
        repo_tag: &str,
        user: &str,
        password: &str,
    ) -> String {
        let reference = format!("{}/{repo_tag}", self.host());
        podman.run(&[
            "push",
            "--quiet",
            "--tls-verify=true",
            "--creds",
            &format!("{user}:{password}"),
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

    /// Writes the users' bcrypt hashes, replacing the file in one rename so
    /// the registry never reads half of it.
    fn write_htpasswd(&self) {
        let Some(secure) = &self.secure else {
            return;
        };
        let mut text = String::new();
        for (user, password) in &secure.users {
            let hash = bcrypt::hash(password, BCRYPT_COST).expect("bcrypt a test password");
            text.push_str(&format!("{user}:{hash}\n"));
        }
        let path = self.htpasswd_path();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).expect("write the htpasswd file");
        std::fs::rename(&tmp, &path).expect("replace the htpasswd file");
    }

    fn htpasswd_path(&self) -> PathBuf {
        self.dir.path().join("htpasswd")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
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
        // The trust first, while the port is still ours: once the process
        // is gone another test may get the port and write its own CA there.
        if let Some(dir) = self.secure.as_mut().and_then(|s| s.trust_dir.take()) {
            let _ = std::fs::remove_dir_all(dir);
        }
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
    is_registry_answer(&out, "200")
}

/// Whether `GET /v2/` over HTTPS on 127.0.0.1:`port`, verified against
/// `ca`, answers 401 (a password is asked for) as a distribution registry.
/// curl, so the check is a real TLS client's.
fn api_answers_tls(curl: &Path, port: u16, ca: &Path) -> bool {
    let out = Command::new(curl)
        .args(["--silent", "--include", "--max-time", "2", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/v2/"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.is_ok_and(|o| is_registry_answer(&String::from_utf8_lossy(&o.stdout), "401"))
}

/// Whether `answer` (status line and headers) has HTTP status `status`
/// and distribution's API-version header.
fn is_registry_answer(answer: &str, status: &str) -> bool {
    let head = answer.to_ascii_lowercase();
    let status_ok = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .is_some_and(|s| s == status);
    status_ok && head.contains("docker-distribution-api-version: registry/2.0")
}
