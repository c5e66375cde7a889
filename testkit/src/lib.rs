//! Test helpers that start real services: a JetStream `nats-server`, a
//! Podman API service, a container registry (`docker-registry`) and
//! (feature `kube`) etcd + `kube-apiserver`, each on
//! its own free loopback port or socket with a temporary store, stopped and
//! cleaned up on `Drop`; and (feature `kube`) the real `kubectl` against it.
//!
//! Outside CI a missing binary skips the test with a message; under
//! `CI=true` it fails the test, so CI never passes by skipping.

#![allow(clippy::unwrap_used, missing_docs)]

#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "kube")]
pub mod kubectl;
pub mod least_privilege;
mod nats;
mod podman;
pub mod proxy;
pub mod registry;
pub mod tls;

pub use nats::{NatsOptions, NatsServer, create_buckets, stream_config};
pub use podman::PodmanService;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether we run under CI (`CI=true`), where missing services are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing prerequisite: a panic under CI, a skip message
/// otherwise. Returns `None` so callers can `let Some(x) = ... else { return }`.
pub fn missing<T>(what: &str) -> Option<T> {
    if in_ci() {
        panic!("CI=true but {what}; .ci/run must install it");
    }
    eprintln!("SKIPPED: {what} (set CI=true to make this a failure)");
    None
}

/// Finds an executable: `$env_var` if set, else `name` on PATH.
pub fn find_binary(env_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `N` distinct free TCP ports on 127.0.0.1: all bound at once, then
/// released. Calling [`free_port`] `N` times may return the same port twice
/// (the OS reuses a released one), which a server listening on two of them
/// (etcd's client and peer ports) cannot use.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("no free loopback port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .map(|a| a.port())
            .expect("a bound listener has an address")
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// `prefix` made unique to this process and moment (`prefix-PID-NANOS`), for
/// device ids and names tests sharing one Podman or NATS must not reuse.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), n)
}

/// `GET /` over HTTP/1.0 on 127.0.0.1:`port`: the whole answer (status line,
/// headers, body), or `None` while nothing answers within 2 s.
pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `cond` every 25 ms until it is true or `timeout` passes; returns
/// whether it became true. For waiting on conditions instead of sleeping.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Async version of [`wait_until`], for tests on a tokio runtime.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The repository root (for fixtures such as `deploy/`).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn free_ports_are_distinct() {
        for _ in 0..50 {
            let ports = super::free_ports::<3>();
            assert!(
                ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
                "{ports:?}"
            );
        }
    }
}
