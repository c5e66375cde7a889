//! A container registry on loopback, so that a test can watch the agent
//! pull: a minimal OCI distribution API over plain HTTP serving one image
//! (an OCI layout saved by `podman save --format oci-dir`) under any name
//! and tag, and a Podman service whose `registries.conf` allows plain HTTP
//! to it (the machine's own configuration is left alone).
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::PodmanService;

/// Serves one image; stopped on drop.
pub struct Registry {
    port: u16,
    layout: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    manifests: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Registry {
    /// Serves `image` (already in `podman`'s storage) under every name.
    pub fn serve(podman: &PodmanService, image: &str) -> Registry {
        let layout = tempfile::tempdir().unwrap();
        let dir = layout.path().join("oci");
        podman.run(&[
            "save",
            "--format",
            "oci-dir",
            "-o",
            dir.to_str().unwrap(),
            image,
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let manifests = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, manifests) = (stop.clone(), manifests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (dir, manifests) = (dir.clone(), manifests.clone());
                            std::thread::spawn(move || serve(conn, &dir, &manifests));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Registry {
            port,
            layout,
            stop,
            manifests,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many manifest requests were answered.
    pub fn manifest_requests(&self) -> u64 {
        self.manifests.load(Ordering::Relaxed)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request, answered, then the connection closed.
fn serve(mut conn: TcpStream, dir: &Path, manifests: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            // Not HTTP (Podman tries TLS first): close, it falls back.
            Ok(n) if n > 0 && buf[0].is_ascii_uppercase() && head.len() < 65536 => {
                head.extend_from_slice(&buf[..n]);
            }
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let found = route(dir, path, manifests);
    let (status, kind, digest, body) = match found {
        Some((kind, digest, body)) => ("200 OK", kind, digest, body),
        None => (
            "404 Not Found",
            "application/json".to_string(),
            String::new(),
            br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#.to_vec(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
        body.len()
    );
    if !digest.is_empty() {
        out.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    if method != "HEAD" {
        let _ = conn.write_all(&body);
    }
}

/// (content type, digest, body) of `path`.
fn route(dir: &Path, path: &str, manifests: &AtomicU64) -> Option<(String, String, Vec<u8>)> {
    if path == "/v2/" || path == "/v2" {
        return Some(("application/json".into(), String::new(), b"{}".to_vec()));
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some((_, _reference)) = rest.rsplit_once("/manifests/") {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
        let m = &index["manifests"][0];
        let digest = m["digest"].as_str()?.to_string();
        let kind = m["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        manifests.fetch_add(1, Ordering::Relaxed);
        return Some((kind, digest.clone(), blob(dir, &digest)?));
    }
    let (_, digest) = rest.rsplit_once("/blobs/")?;
    Some((
        "application/octet-stream".into(),
        digest.to_string(),
        blob(dir, digest)?,
    ))
}

fn blob(dir: &Path, digest: &str) -> Option<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:")?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    std::fs::read(dir.join("blobs/sha256").join(hex)).ok()
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
