//! The HTTP server of `/healthz`, `/readyz` and `/metrics` (axum on
//! hyper): HTTP parsing, keep-alive and slow clients are a maintained
//! server's job, not ours.
//!
//! - `/healthz`: 200 while the runtime answers (liveness; see
//!   [`super::ready`] for why it checks nothing else);
//! - `/readyz`: 200 `ready` when every [`Readiness`] check holds, else 503
//!   with what does not (`not ready: API server unreachable: ...`);
//! - `/metrics`: the registry in the OpenMetrics text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::fleet::{Fleet, FleetConfig};
use super::ready::{
    ApiServerReachable, ControllerRunning, NatsConnected, Readiness, StatusCaughtUp,
};
use crate::controller::Context;

/// The content type of the OpenMetrics text format, which is what
/// `prometheus_client::encoding::text` writes (and Prometheus asks for).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints serve.
#[derive(Clone)]
pub struct Endpoints {
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// `/metrics` encodes `registry`; `/readyz` runs `readiness`.
    pub fn new(registry: Registry, readiness: Readiness) -> Endpoints {
        Endpoints {
            registry: Arc::new(registry),
            readiness,
        }
    }

    /// What `iot-operator run` serves for the controller of `ctx`: its
    /// series and the fleet's, ready when NATS, the API server (its
    /// answer kept `api_ttl`), the controller and the status watch are.
    pub fn of_operator(
        ctx: &Context,
        fleet: FleetConfig,
        api_ttl: std::time::Duration,
    ) -> Endpoints {
        let fleet = Fleet::new(ctx.status.clone(), ctx.deployments.clone(), fleet);
        let registry = super::registry(&ctx.metrics, ctx.status.watch_metrics(), fleet);
        let readiness = Readiness::new(vec![
            Arc::new(NatsConnected(ctx.nats.clone())),
            Arc::new(ApiServerReachable::new(
                ctx.client.clone(),
                ApiServerReachable::TIMEOUT,
                api_ttl,
            )),
            Arc::new(ControllerRunning(ctx.deployments.clone())),
            Arc::new(StatusCaughtUp(ctx.status.clone())),
        ]);
        Endpoints::new(registry, readiness)
    }
}

/// The routes, for [`serve`] (or any other axum server).
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(endpoints)
}

/// Serves the endpoints on `listener` until the task is dropped, or
/// accepting fails for good.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    axum::serve(listener, router(endpoints)).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(failed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failed.join("; ")),
        )
            .into_response(),
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &endpoints.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        // Writing into a String fails only if a collector does; a partial
        // exposition would read as series that vanished.
        Err(_) => {
            tracing::warn!("cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fleet::{Fleet, FleetConfig};
    use crate::metrics::ready::Check;
    use crate::metrics::{Metrics, registry};
    use crate::status::StatusCache;
    use crate::status::testdata::{heartbeat_bytes, status_bytes};
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A check whose answer the test sets.
    struct Switch(Mutex<Result<(), String>>);

    impl Switch {
        fn set(&self, r: Result<(), String>) {
            *self.0.lock().unwrap() = r;
        }
    }

    impl Check for Switch {
        fn check(&self) -> BoxFuture<'_, Result<(), String>> {
            futures::future::ready(self.0.lock().unwrap().clone()).boxed()
        }
    }

    /// One HTTP/1.1 exchange over a real TCP connection: status code,
    /// headers (lower-case names) and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap();
        let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        assert_ne!(
            headers.get("transfer-encoding").map(String::as_str),
            Some("chunked"),
            "a body of known length"
        );
        (code, headers, body.to_string())
    }

    /// The samples of an exposition: `name{labels}` -> value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_over_tcp() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.kv_writes, 3);
        metrics.reconciles.add(1);
        metrics.reconcile_duration.observe(0.02);
        let cache = StatusCache::detached(Duration::from_secs(90));
        cache.mark_caught_up(protocol::keys::DEVICE_STATUS_BUCKET);
        cache.mark_caught_up(protocol::keys::DEVICE_HEARTBEAT_BUCKET);
        cache.ingest_heartbeat("pi-1", &heartbeat_bytes(), false, crate::status::now_ns());
        cache.ingest_status(
            "pi-1.web",
            &status_bytes(1, protocol::Phase::Running),
            false,
            crate::status::now_ns(),
        );
        let fleet = Fleet::new(
            cache.clone(),
            crate::controller::Deployments::default(),
            FleetConfig::default(),
        );
        let nats = Arc::new(Switch(Mutex::new(Err(
            "NATS not connected (disconnected)".into()
        ))));
        let api = Arc::new(Switch(Mutex::new(Err(
            "API server unreachable: connection refused".into(),
        ))));
        let readiness = Readiness::new(vec![nats.clone(), api.clone()]);
        let endpoints = Endpoints::new(registry(&metrics, cache.watch_metrics(), fleet), readiness);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, endpoints));

        let (code, _, body) = get(addr, "/healthz").await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));

        let (code, _, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "not ready: NATS not connected (disconnected); API server unreachable: connection refused\n"
        );
        nats.set(Ok(()));
        let (code, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (
                503,
                "not ready: API server unreachable: connection refused\n"
            )
        );
        api.set(Ok(()));
        let (code, _, body) = get(addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        // Liveness does not follow readiness.
        nats.set(Err("NATS not connected (disconnected)".into()));
        assert_eq!(get(addr, "/healthz").await.0, 200);

        let (code, headers, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(headers["content-type"], OPENMETRICS);
        assert!(body.ends_with("# EOF\n"), "{body}");
        let s = samples(&body);
        for (series, value) in [
            ("iot_operator_kv_writes_total", 3.0),
            ("iot_operator_reconciles_total", 1.0),
            ("iot_operator_reconcile_errors_total", 0.0),
            ("iot_operator_reconcile_duration_seconds_count", 1.0),
            ("iot_operator_reconcile_duration_seconds_sum", 0.02),
            (
                "iot_operator_reconcile_duration_seconds_bucket{le=\"0.016\"}",
                0.0,
            ),
            (
                "iot_operator_reconcile_duration_seconds_bucket{le=\"0.032\"}",
                1.0,
            ),
            (
                "iot_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"}",
                1.0,
            ),
            ("iot_operator_devices{state=\"online\"}", 1.0),
            ("iot_operator_devices{state=\"offline\"}", 0.0),
            ("iot_operator_devices_reporting", 1.0),
            ("iot_operator_device_online{device=\"pi-1\"}", 1.0),
            ("iot_operator_device_deployments{device=\"pi-1\"}", 1.0),
        ] {
            assert_eq!(s.get(series), Some(&value), "{series} in:\n{body}");
        }
        // Counted after the server started: the next scrape shows it.
        metrics.kv_writes.add(2);
        let (_, _, body) = get(addr, "/metrics").await;
        assert_eq!(
            samples(&body).get("iot_operator_kv_writes_total"),
            Some(&5.0)
        );

        assert_eq!(get(addr, "/nope").await.0, 404);
        server.abort();
    }
}
