//! One health check, run once: an HTTP(S) `GET`, a TCP connect, or a
//! command in the container, against a [`Target`], bounded by a timeout,
//! ending in [`Outcome::Pass`] or [`Outcome::Fail`] with a short reason.
//!
//! HTTPS checks do not verify the container's certificate, as Kubernetes'
//! probes do not (Go's `InsecureSkipVerify`): a check asks whether the
//! service answers, not who it is; the container's certificate is made for
//! its clients' names, not for the address the agent dials (an IP on a
//! Podman bridge or 127.0.0.1), and a board has no CA to check it against.
//! The handshake's signatures are still checked against the certificate's
//! key, as Go does. TLS 1.3 only: the agent's rustls is built without TLS
//! 1.2, like its NATS connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::http;
use crate::log::Chain;
use crate::podman::{PortSpec, Runtime, RuntimeError};

/// Longest failure reason, in bytes (a status message carries it).
pub const MAX_REASON: usize = 200;

/// Bytes of a failing HTTP answer's body read for its reason.
const BODY_IN_REASON: usize = 128;

/// Read buffer of a check's connection: the status line and headers are
/// read line by line through it (a longer line still fits, in several
/// reads) and the body only for its first [`BODY_IN_REASON`] bytes, so the
/// libpod client's 8 KiB would be mostly unused, for each check in flight.
const CHECK_READ_BUFFER: usize = 1024;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS, certificate not verified.
    Https,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` on `port`; passes on a status in 200..400.
    Http {
        /// `http` or `https`.
        scheme: Scheme,
        /// Path and query, starting with `/`.
        path: String,
        /// The container port.
        port: u16,
        /// Extra request headers (name, value); a `Host` here replaces the
        /// address.
        headers: Vec<(String, String)>,
    },
    /// Passes when a TCP connection to `port` opens.
    Tcp {
        /// The container port.
        port: u16,
    },
    /// Passes when `command`, run in the container, exits 0.
    Exec {
        /// Program and arguments (no shell).
        command: Vec<String>,
    },
}

impl Probe {
    /// The container port an HTTP or TCP check dials.
    pub fn port(&self) -> Option<u16> {
        match self {
            Probe::Http { port, .. } | Probe::Tcp { port } => Some(*port),
            Probe::Exec { .. } => None,
        }
    }
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed, with why (at most [`MAX_REASON`] bytes).
    Fail(String),
}

/// Where a check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// HTTP and TCP checks: the address to dial ([`resolve_address`]).
    Socket(SocketAddr),
    /// Exec checks: the container id.
    Container(String),
}

/// Why a check has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not published, no host network, and no address on a Podman network.
    #[error(
        "port {port} is not published on the host and the container has no address on a Podman network (not running, or network mode none)"
    )]
    NoAddress {
        /// The container port.
        port: u16,
    },
    /// The published port's `hostIP` is not an IP address.
    #[error("hostIP {host_ip:?} of port {port} is not an IP address")]
    BadHostIp {
        /// The container port.
        port: u16,
        /// The `hostIP` given.
        host_ip: String,
    },
}

impl Target {
    /// The target of `probe` in container `container_id`, with the
    /// container's published `ports`, network mode and current addresses
    /// (see [`resolve_address`]).
    pub fn for_probe(
        probe: &Probe,
        container_id: &str,
        ports: &[PortSpec],
        host_network: bool,
        container_ips: &[IpAddr],
    ) -> Result<Target, TargetError> {
        match probe.port() {
            Some(port) => {
                resolve_address(port, ports, host_network, container_ips).map(Target::Socket)
            }
            None => Ok(Target::Container(container_id.to_string())),
        }
    }
}

/// The address an HTTP or TCP check of container port `port` dials:
/// - host network: `127.0.0.1:port` (the container shares the host's
///   network namespace; Podman publishes nothing there, so `ports` do not
///   apply);
/// - `port` published with a `hostPort` (TCP): its `hostIP`, or loopback
///   when it is unset or a wildcard, and the `hostPort`;
/// - otherwise the container's first address on its Podman network
///   (IPv4 first) and `port`.
pub fn resolve_address(
    port: u16,
    ports: &[PortSpec],
    host_network: bool,
    container_ips: &[IpAddr],
) -> Result<SocketAddr, TargetError> {
    if host_network {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    let published = ports
        .iter()
        .find(|p| p.container_port == port && p.protocol == "tcp" && p.host_port.is_some());
    if let Some(PortSpec {
        host_port: Some(host_port),
        host_ip,
        ..
    }) = published
    {
        let ip = match host_ip.as_deref().map(str::parse::<IpAddr>) {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(Ok(IpAddr::V4(ip))) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            Some(Ok(IpAddr::V6(ip))) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            Some(Ok(ip)) => ip,
            Some(Err(_)) => {
                return Err(TargetError::BadHostIp {
                    port,
                    host_ip: host_ip.clone().unwrap_or_default(),
                });
            }
        };
        return Ok(SocketAddr::new(ip, *host_port));
    }
    container_ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| container_ips.first())
        .map(|ip| SocketAddr::new(*ip, port))
        .ok_or(TargetError::NoAddress { port })
}

/// Runs `probe` once against `target`, all of it (connect, TLS, request,
/// answer; or the exec) bounded by `timeout`.
pub async fn run<R: Runtime>(
    probe: &Probe,
    target: &Target,
    runtime: &R,
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    match (probe, target) {
        (
            Probe::Http {
                scheme,
                path,
                headers,
                ..
            },
            Target::Socket(addr),
        ) => match scheme {
            // Each kind's state is boxed for the check's length only: a
            // checker's task then holds none of it between checks, and a
            // plain HTTP check does not carry the size of a TLS session.
            Scheme::Http => Box::pin(http_check(path, headers, *addr, deadline, timeout)).await,
            Scheme::Https => Box::pin(https_check(path, headers, *addr, deadline, timeout)).await,
        },
        (Probe::Tcp { .. }, Target::Socket(addr)) => {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Outcome::Pass,
                Ok(Err(e)) => fail(format!("connect to {addr}: {e}")),
                Err(_) => timed_out(timeout),
            }
        }
        (Probe::Exec { command }, Target::Container(id)) => {
            let exec = Box::pin(exec_check(runtime, id, command, timeout));
            tokio::time::timeout_at(deadline, exec)
                .await
                .unwrap_or_else(|_| timed_out(timeout))
        }
        _ => fail("the check's target is of another kind".into()),
    }
}

fn timed_out(timeout: Duration) -> Outcome {
    fail(format!("timed out after {timeout:?}"))
}

async fn http_check(
    path: &str,
    headers: &[(String, String)],
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Outcome {
    let answer = async {
        let tcp = within(deadline, TcpStream::connect(addr)).await?;
        http_exchange(tcp, addr, path, headers, deadline).await
    };
    verdict(answer.await, "http", addr, path, timeout)
}

async fn https_check(
    path: &str,
    headers: &[(String, String)],
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Outcome {
    let answer = async {
        let tcp = within(deadline, TcpStream::connect(addr)).await?;
        let connector = tls_connector().map_err(io::Error::other)?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = within(deadline, connector.connect(name, tcp)).await?;
        http_exchange(tls, addr, path, headers, deadline).await
    };
    verdict(answer.await, "https", addr, path, timeout)
}

/// The outcome of a `GET {scheme}://{addr}{path}` that ended in `answer`.
fn verdict(
    answer: io::Result<(u16, Vec<u8>)>,
    scheme: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Outcome {
    match answer {
        Ok((status, _)) if (200..400).contains(&status) => Outcome::Pass,
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body);
            fail(format!(
                "GET {scheme}://{addr}{path}: HTTP {status} {}",
                body.trim()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => timed_out(timeout),
        Err(e) => fail(format!("GET {scheme}://{addr}{path}: {}", Chain(&e))),
    }
}

/// `step`, or a `TimedOut` error at `deadline`.
async fn within<T>(deadline: Instant, step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Sends the `GET` and reads the status, and the start of the body when
/// the status fails the check (Kubernetes' rule: 200..400 passes;
/// redirects are not followed). A failing status stands even when its
/// body does not arrive by the deadline.
async fn http_exchange<S>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    deadline: Instant,
) -> io::Result<(u16, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = addr.to_string();
    let mut all: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in [("User-Agent", "iot-agent-probe"), ("Accept", "*/*")] {
        if !all.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
            all.push((k, v));
        }
    }
    let request = http::Request {
        method: "GET",
        path,
        host: &host,
        headers: &all,
        body: None,
    };
    let mut response = within(
        deadline,
        http::send_buffered(stream, &request, CHECK_READ_BUFFER),
    )
    .await?;
    let status = response.status;
    if (200..400).contains(&status) {
        return Ok((status, Vec::new()));
    }
    // One read: a small error body comes with the head, and the body only
    // explains, so a broken or late one does not change the verdict (and
    // after a head of nearly CHECK_READ_BUFFER bytes, it may be cut short).
    let body = within(deadline, response.next_chunk_max(BODY_IN_REASON))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok((status, body))
}

async fn exec_check<R: Runtime>(
    runtime: &R,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Outcome {
    match runtime.exec(id, command, timeout).await {
        Ok(o) if o.exit_code == 0 => Outcome::Pass,
        Ok(o) => {
            let output = String::from_utf8_lossy(&o.output_tail);
            let output = output.trim();
            // The end of the output says most; the reason keeps it.
            let keep = MAX_REASON.saturating_sub(24);
            let mut start = output.len().saturating_sub(keep);
            while !output.is_char_boundary(start) {
                start += 1;
            }
            match &output[start..] {
                "" => fail(format!("exit code {}", o.exit_code)),
                tail => fail(format!("exit code {}: {tail}", o.exit_code)),
            }
        }
        Err(RuntimeError::Timeout(_)) => timed_out(timeout),
        Err(e) => fail(format!("exec: {}", Chain(&e))),
    }
}

/// A failure with `reason` clipped to [`MAX_REASON`] bytes.
fn fail(mut reason: String) -> Outcome {
    let reason_len = reason.trim_end().len();
    reason.truncate(reason_len);
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    Outcome::Fail(reason)
}

/// One TLS client configuration for every HTTPS check, made on first use.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone().into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone().into())
}

/// Accepts any server certificate (see the module doc), but checks the
/// handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn port(container_port: u16, host_port: Option<u16>, host_ip: Option<&str>) -> PortSpec {
        PortSpec {
            container_port,
            host_port,
            protocol: "tcp",
            host_ip: host_ip.map(str::to_string),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_resolution() {
        let ip: IpAddr = "10.88.0.7".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        let ports = [
            port(80, Some(8080), None),
            port(443, Some(8443), Some("0.0.0.0")),
            port(444, Some(9443), Some("::")),
            port(53, Some(5353), Some("192.168.1.9")),
            port(9000, None, None),
        ];
        let resolve = |p, host, ips: &[IpAddr]| resolve_address(p, &ports, host, ips);
        assert_eq!(resolve(80, false, &[ip]), Ok(addr("127.0.0.1:8080")));
        assert_eq!(resolve(443, false, &[ip]), Ok(addr("127.0.0.1:8443")));
        assert_eq!(resolve(444, false, &[ip]), Ok(addr("[::1]:9443")));
        assert_eq!(resolve(53, false, &[]), Ok(addr("192.168.1.9:5353")));
        // Declared but not published: the bridge address.
        assert_eq!(resolve(9000, false, &[v6, ip]), Ok(addr("10.88.0.7:9000")));
        assert_eq!(resolve(9000, false, &[v6]), Ok(addr("[fd00::7]:9000")));
        // Host network: the port itself, mappings or not.
        assert_eq!(resolve(80, true, &[]), Ok(addr("127.0.0.1:80")));
        assert_eq!(
            resolve(9000, false, &[]),
            Err(TargetError::NoAddress { port: 9000 })
        );
        // A UDP mapping does not carry a TCP check.
        let udp = [PortSpec {
            protocol: "udp",
            ..port(80, Some(8080), None)
        }];
        assert_eq!(
            resolve_address(80, &udp, false, &[ip]),
            Ok(addr("10.88.0.7:80"))
        );
        let bad = [port(80, Some(8080), Some("localhost"))];
        assert!(matches!(
            resolve_address(80, &bad, false, &[ip]),
            Err(TargetError::BadHostIp { port: 80, .. })
        ));
        let exec = Probe::Exec {
            command: vec!["true".into()],
        };
        assert_eq!(
            Target::for_probe(&exec, "abc", &[], false, &[]),
            Ok(Target::Container("abc".into()))
        );
    }

    /// A loopback server answering every connection with `reply`, then
    /// holding it open; its address.
    async fn server(reply: &'static [u8]) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    s.write_all(reply).await.unwrap();
                    std::future::pending::<()>().await;
                });
            }
        });
        addr
    }

    async fn get(addr: SocketAddr, timeout: Duration) -> Outcome {
        let probe = Probe::Http {
            scheme: Scheme::Http,
            path: "/healthz".into(),
            port: addr.port(),
            headers: Vec::new(),
        };
        let runtime = crate::testing::MemoryRuntime::default();
        run(&probe, &Target::Socket(addr), &runtime, timeout).await
    }

    /// Kubernetes' rule: 200..400 passes (a redirect is not followed); a
    /// failing status is reported with the start of its body, even when
    /// the server keeps the connection open past the deadline; a server
    /// that never answers times out.
    #[tokio::test]
    async fn http_status_rule_and_deadline() {
        let t = Duration::from_millis(300);
        let redirect = server(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n").await;
        assert_eq!(get(redirect, t).await, Outcome::Pass);
        let ok = server(b"HTTP/1.0 200 OK\r\n\r\n").await;
        assert_eq!(get(ok, t).await, Outcome::Pass);
        let held = server(b"HTTP/1.1 500 Oops\r\n\r\ndatabase down").await;
        assert_eq!(
            get(held, t).await,
            Outcome::Fail(format!("GET http://{held}/healthz: HTTP 500 database down"))
        );
        let not_found = server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(
            get(not_found, t).await,
            Outcome::Fail(format!("GET http://{not_found}/healthz: HTTP 404"))
        );
        let silent = server(b"").await;
        assert_eq!(
            get(silent, t).await,
            Outcome::Fail("timed out after 300ms".into())
        );
    }

    #[test]
    fn reasons_are_clipped_on_a_char_boundary() {
        let Outcome::Fail(r) = fail("é".repeat(MAX_REASON)) else {
            panic!("not a failure")
        };
        assert!(r.len() <= MAX_REASON && r.len() >= MAX_REASON - 1);
    }
}
