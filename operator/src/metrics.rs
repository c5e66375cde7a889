//! Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` endpoints.
//!
//! A few counters do not justify an HTTP framework: the server answers
//! plain HTTP/1.1 GETs and closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The operator's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Reconciles that failed.
    pub reconcile_errors: AtomicU64,
    /// Desired-state puts and deletes issued.
    pub kv_writes: AtomicU64,
    /// Reads of a Deployment's desired-state keys (one filtered consumer each).
    pub kv_scans: AtomicU64,
    /// Devices with a fresh heartbeat, as of the last scrape.
    pub devices_reporting: AtomicU64,
    /// Device objects the inventory created (first heartbeats).
    pub device_creates: AtomicU64,
    /// Device status patches the inventory sent.
    pub device_status_patches: AtomicU64,
    /// Device metadata patches (labels, board-labels annotation) sent.
    pub device_metadata_patches: AtomicU64,
    /// Set once the controller runs and NATS is connected.
    pub ready: AtomicBool,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "iot_operator_reconciles_total",
            "counter",
            "Reconciles run.",
            self.reconciles.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_reconcile_errors_total",
            "counter",
            "Reconciles that failed.",
            self.reconcile_errors.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_kv_writes_total",
            "counter",
            "Desired-state puts and deletes issued.",
            self.kv_writes.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_kv_scans_total",
            "counter",
            "Reads of a Deployment's desired-state keys.",
            self.kv_scans.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_device_creates_total",
            "counter",
            "Device objects created at a board's first heartbeat.",
            self.device_creates.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_device_status_patches_total",
            "counter",
            "Device status patches sent to the API server.",
            self.device_status_patches.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_device_metadata_patches_total",
            "counter",
            "Device label and annotation patches sent to the API server.",
            self.device_metadata_patches.load(Ordering::Relaxed),
        );
        metric(
            "iot_operator_devices_reporting",
            "gauge",
            "Devices whose heartbeat is fresh.",
            self.devices_reporting.load(Ordering::Relaxed),
        );
        out
    }
}

/// Serves health and metrics on `addr` until the task is dropped. `refresh`
/// runs before each `/metrics` answer (to update gauges); `ready` decides
/// `/readyz`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let ready = ready.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/");
            let (code, body, ctype) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/readyz" if ready() => ("200 OK", "ready\n".to_string(), "text/plain"),
                "/readyz" => (
                    "503 Service Unavailable",
                    "not ready\n".to_string(),
                    "text/plain",
                ),
                "/metrics" => {
                    refresh();
                    ("200 OK", metrics.render(), "text/plain; version=0.0.4")
                }
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_health_ready_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        Metrics::add(&metrics.kv_writes, 3);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ready_flag = Arc::new(AtomicBool::new(false));
        let r = ready_flag.clone();
        let server = tokio::spawn(serve(
            addr,
            metrics.clone(),
            Arc::new(move || r.load(Ordering::Relaxed)),
            Arc::new(|| {}),
        ));
        async fn get(addr: SocketAddr, path: &str) -> String {
            for _ in 0..200 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("server did not listen");
        }
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready_flag.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("iot_operator_kv_writes_total 3"), "{m}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
