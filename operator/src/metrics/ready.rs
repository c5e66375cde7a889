//! What `/readyz` waits for: NATS connected, the Kubernetes API server
//! answering, the controller running with its first list of Deployments,
//! and the status watch caught up with the devices' reports. Each is a [`Check`] (a trait object, so that tests can
//! flip one); [`Readiness`] runs them all and says which fail.
//!
//! `/healthz` (liveness) waits for none of these on purpose: it only shows
//! that the process's runtime still answers. Were it to fail while NATS or
//! the API server is down, Kubernetes would restart the operator again and
//! again for an outage a restart cannot fix (and each restart would replay
//! every key and heartbeat); readiness only takes it out of its Service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::controller::Deployments;
use crate::nats::Nats;
use crate::status::StatusCache;
use error_report::Chain;

/// One condition of readiness.
pub trait Check: Send + Sync + 'static {
    /// `Ok` when it holds; otherwise what does not hold, for the 503 body
    /// (e.g. `API server unreachable: <error>`).
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Every condition `/readyz` waits for.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Arc<dyn Check>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Readiness {
    /// Ready when every one of `checks` holds.
    pub fn new(checks: Vec<Arc<dyn Check>>) -> Readiness {
        Readiness { checks }
    }

    /// `Ok` when every check holds, else what fails, in the order the
    /// checks were given. They run concurrently: a slow API server does
    /// not delay the answer beyond its own timeout.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let results = futures::future::join_all(self.checks.iter().map(|c| c.check())).await;
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// NATS is connected right now (async-nats reconnects by itself; while it
/// does, nothing written reaches the devices).
#[derive(Debug, Clone)]
pub struct NatsConnected(pub Nats);

impl Check for NatsConnected {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let state = self.0.client().connection_state();
        let result = if state == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(format!("NATS not connected ({state})"))
        };
        futures::future::ready(result).boxed()
    }
}

/// The Kubernetes API server answers an authenticated request (`GET
/// /version`, which every authenticated identity may make) within
/// `timeout`. The answer is kept for `ttl`, and concurrent checks wait for
/// the one request in flight: a storm of probes and scrapes costs the API
/// server one request per `ttl`.
pub struct ApiServerReachable {
    client: kube::Client,
    timeout: Duration,
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::fmt::Debug for ApiServerReachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerReachable")
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ApiServerReachable {
    /// How long the operator waits for the API server's answer.
    pub const TIMEOUT: Duration = Duration::from_secs(2);
    /// How long an answer stands for.
    pub const TTL: Duration = Duration::from_secs(5);

    /// A check through `client`.
    pub fn new(client: kube::Client, timeout: Duration, ttl: Duration) -> ApiServerReachable {
        ApiServerReachable {
            client,
            timeout,
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn ask(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("API server unreachable: {}", Chain(&e))),
            Err(_) => Err(format!(
                "API server unreachable: no answer within {:?}",
                self.timeout
            )),
        }
    }
}

impl Check for ApiServerReachable {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            // Held across the request: whoever comes meanwhile waits for
            // this answer instead of sending another.
            let mut last = self.last.lock().await;
            if let Some((at, result)) = &*last
                && at.elapsed() < self.ttl
            {
                return result.clone();
            }
            let result = self.ask().await;
            *last = Some((Instant::now(), result.clone()));
            result
        }
        .boxed()
    }
}

/// The Deployment controller runs ([`crate::controller::run`] started) and
/// its watch has the first list of Deployments: before that its fleet
/// gauges and its reconciles have nothing to go on.
#[derive(Debug, Clone)]
pub struct ControllerRunning(pub Deployments);

impl Check for ControllerRunning {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let result = match self.0.synced() {
            None => Err("controller not running (not started yet, or stopped)".to_string()),
            Some(false) => Err("controller has not listed the Deployments yet".to_string()),
            Some(true) => Ok(()),
        };
        futures::future::ready(result).boxed()
    }
}

/// The status watch has replayed the history of both buckets
/// ([`StatusCache::caught_up`]): before that the cache holds part of the
/// fleet, and the device gauges are left out of `/metrics`.
#[derive(Debug, Clone)]
pub struct StatusCaughtUp(pub Arc<StatusCache>);

impl Check for StatusCaughtUp {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let result = if self.0.caught_up() {
            Ok(())
        } else {
            Err("status watch replaying device reports".to_string())
        };
        futures::future::ready(result).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Flag(AtomicBool, &'static str);

    impl Check for Flag {
        fn check(&self) -> BoxFuture<'_, Result<(), String>> {
            let r = if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(self.1.to_string())
            };
            futures::future::ready(r).boxed()
        }
    }

    #[tokio::test]
    async fn every_failing_check_is_named_in_order() {
        let a = Arc::new(Flag(AtomicBool::new(false), "a is down"));
        let b = Arc::new(Flag(AtomicBool::new(false), "b is down"));
        let r = Readiness::new(vec![a.clone(), b.clone()]);
        assert_eq!(
            r.check().await,
            Err(vec!["a is down".to_string(), "b is down".to_string()])
        );
        a.0.store(true, Ordering::Relaxed);
        assert_eq!(r.check().await, Err(vec!["b is down".to_string()]));
        b.0.store(true, Ordering::Relaxed);
        assert_eq!(r.check().await, Ok(()));
        assert_eq!(Readiness::default().check().await, Ok(()));
    }

    #[tokio::test]
    async fn the_controller_is_ready_once_started() {
        let deployments = Deployments::default();
        let check = ControllerRunning(deployments.clone());
        let not_running = Err("controller not running (not started yet, or stopped)".to_string());
        assert_eq!(check.check().await, not_running);
        let (reader, mut writer) = kube::runtime::reflector::store::<crate::crd::Deployment>();
        deployments.set(reader);
        assert_eq!(
            check.check().await,
            Err("controller has not listed the Deployments yet".to_string())
        );
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        assert_eq!(check.check().await, Ok(()));
        // A controller that stopped withdraws its store.
        deployments.clear();
        assert_eq!(check.check().await, not_running);
    }

    #[tokio::test]
    async fn ready_once_the_status_watch_caught_up() {
        let cache = StatusCache::detached(Duration::from_secs(90));
        let check = StatusCaughtUp(cache.clone());
        let replaying = Err("status watch replaying device reports".to_string());
        assert_eq!(check.check().await, replaying);
        cache.mark_caught_up(protocol::keys::DEVICE_HEARTBEAT_BUCKET);
        assert_eq!(check.check().await, replaying);
        cache.mark_caught_up(protocol::keys::DEVICE_STATUS_BUCKET);
        assert_eq!(check.check().await, Ok(()));
    }

    /// The API server check against a real TCP port that answers nothing
    /// useful (a listener that accepts and closes): an error naming the
    /// API server, then the same answer from the cache until the ttl ends.
    #[tokio::test]
    async fn an_unreachable_api_server_is_named_and_asked_once_per_ttl() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(sock);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let check =
            ApiServerReachable::new(client, Duration::from_secs(5), Duration::from_secs(600));
        let first = check.check().await;
        let message = first.clone().unwrap_err();
        assert!(message.starts_with("API server unreachable: "), "{message}");
        let asked = accepted.load(Ordering::Relaxed);
        assert!(asked >= 1);
        assert_eq!(check.check().await, first, "cached");
        assert_eq!(accepted.load(Ordering::Relaxed), asked, "not asked again");
        server.abort();
    }
}
