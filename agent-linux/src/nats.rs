//! Everything the agent says to NATS, in one module: the connection, the
//! desired-state watch, and status/heartbeat writes.
//!
//! Built for least-privilege device credentials (see NATS-NOTES.md). The
//! watch is a plain subscription on the device's republished keys
//! (`$KVR.desired-state.<id>.>`, where the stream republishes what it
//! stored) plus a one-shot snapshot through a filtered consumer whose filter
//! is in the create subject
//! (`$JS.API.CONSUMER.CREATE.KV_desired-state.<name>.$KV.desired-state.<id>.>`).
//! No consumer lives on the server while the device idles, so a fleet of
//! thousands costs the server no heartbeats and no consumer state
//! (docs/performance.md). The inbox prefix is `_INBOX.<id>`, point reads use
//! direct-get by subject, and writes are plain JetStream publishes to the
//! device's own keys. No stream info, no unfiltered consumer create, no KV
//! helper calls.

use std::time::Duration;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, push},
};
use async_nats_device as async_nats;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use crate::backoff;
use crate::config::{Config, Credentials};
use protocol::keys::{
    DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET, DeploymentKey,
    DeviceFilter, KvSubject, RepublishSubject, StreamName,
};

/// How long a JetStream request (consumer create, publish ack) may take.
/// A permission denial has no reply, so it surfaces as this timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the snapshot may wait for its next message before the watch is
/// retried. Generous: a server delivering many devices' snapshots at once
/// (a fleet reconnecting) is slow, not gone.
const SNAPSHOT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the server keeps a snapshot consumer after its last delivery.
/// A device may not delete consumers, so this is how they go away.
const SNAPSHOT_CONSUMER_EXPIRY: Duration = Duration::from_secs(2);

/// Why a NATS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Reading credential or TLS files, or configuring the client.
    #[error("NATS client setup: {0}")]
    Setup(String),
    /// Creating the watch consumer failed.
    #[error(
        "cannot create the desired-state watch: {0} (a timeout can also mean the credentials do not allow $JS.API.CONSUMER.CREATE.KV_desired-state.*.$KV.desired-state.<device>.> or subscribing to $KVR.desired-state.<device>.>)"
    )]
    Watch(String),
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed: {message}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
}

/// A connected (or connecting) NATS session for one device.
#[derive(Clone)]
pub struct Session {
    client: async_nats::Client,
    js: jetstream::Context,
    device_id: String,
    /// Counts events after which live messages may have been lost (a
    /// disconnect, a client-side slow-consumer drop): each one makes the
    /// watch take a new snapshot.
    gaps: Arc<watch::Sender<u64>>,
}

/// Builds the client options from the configuration.
async fn connect_options(
    config: &Config,
    gaps: Arc<watch::Sender<u64>>,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let device = config.device_id.clone();
    let device_for_events = device.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("iot-agent {device}"))
        .custom_inbox_prefix(protocol::permissions::device_inbox_prefix(&device))
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(backoff::reconnect_delay)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(move |event| {
            let device_for_events = device_for_events.clone();
            let gaps = gaps.clone();
            async move {
                match event {
                    async_nats::Event::Connected => crate::info!("nats: connected"),
                    async_nats::Event::Disconnected => {
                        crate::warn!("nats: disconnected");
                        gaps.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        crate::warn!("nats: slow consumer: messages were dropped");
                        gaps.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::ServerError(e) => {
                        let e = e.to_string();
                        match permission_denial(&device_for_events, &e) {
                            Some(msg) => crate::error!("{msg}"),
                            None => crate::error!("nats: server error: {e}"),
                        }
                    }
                    other => crate::debug!("nats: {other}"),
                }
            }
        });
    opts = match &config.nats.credentials {
        Credentials::None => opts,
        Credentials::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        Credentials::Token { token } => opts.token(token.clone()),
        Credentials::Nkey { seed_file } => {
            let seed = std::fs::read_to_string(seed_file).map_err(|e| {
                NatsError::Setup(format!(
                    "nats.credentials.seed_file {}: {e}",
                    seed_file.display()
                ))
            })?;
            opts.nkey(seed.trim().to_string())
        }
        Credentials::CredsFile { path } => opts.credentials_file(path).await.map_err(|e| {
            NatsError::Setup(format!("nats.credentials.path {}: {e}", path.display()))
        })?,
    };
    if let Some(tls) = &config.nats.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(opts)
}

impl Session {
    /// Starts connecting to every configured server. Returns at once: the
    /// connection is made in the background and retried forever, so the
    /// agent can run from its cache while no server answers.
    pub async fn connect(config: &Config) -> Result<Session, NatsError> {
        let gaps = Arc::new(watch::Sender::new(0));
        let opts = connect_options(config, gaps.clone()).await?;
        let client = opts
            .connect(config.nats.urls.as_slice())
            .await
            .map_err(|e| NatsError::Setup(e.to_string()))?;
        let js = jetstream::new(client.clone());
        Ok(Session {
            client,
            js,
            device_id: config.device_id.clone(),
            gaps,
        })
    }

    /// A session for `device_id` over an existing client. The agent uses
    /// [`Session::connect`]; the fleet bench multiplexes many simulated
    /// devices over a few connections and drives the same watch and status
    /// code through this. Such a session does not see the client's events,
    /// so its watch does not re-snapshot after a reconnect.
    pub fn from_client(client: async_nats::Client, device_id: &str) -> Session {
        let js = jetstream::new(client.clone());
        Session {
            client,
            js,
            device_id: device_id.to_string(),
            gaps: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts watching this device's desired-state keys: the last value of
    /// each key first (the snapshot), then every change.
    ///
    /// The live subscription is sent before the snapshot's consumer create
    /// (the server handles one connection's commands in order), so whatever
    /// is stored from then on reaches it; a message seen both ways is
    /// applied once, by its stream sequence.
    pub async fn watch(&self) -> Result<Watch, NatsError> {
        let err = |e: &dyn std::fmt::Display| NatsError::Watch(e.to_string());
        let mut gaps = self.gaps.subscribe();
        gaps.mark_unchanged();
        let filter = DeviceFilter::new(&self.device_id).map_err(|e| err(&e))?;
        let live = self
            .client
            .subscribe(
                RepublishSubject {
                    bucket: DESIRED_STATE_BUCKET,
                    key: filter,
                }
                .to_string(),
            )
            .await
            .map_err(|e| err(&e))?;
        self.client.flush().await.map_err(|e| err(&e))?;
        let records = self.snapshot(filter).await?;
        // A snapshot read across a disconnect may lack messages the server
        // counted as delivered: take it again rather than remove what it
        // lacks.
        if gaps.has_changed().unwrap_or(false) {
            return Err(err(&"the connection dropped during the snapshot"));
        }
        let (merge, queued) = Merge::from_snapshot(records);
        Ok(Watch {
            live,
            gaps: Some(gaps),
            prefix: format!(
                "{}.",
                RepublishSubject {
                    bucket: DESIRED_STATE_BUCKET,
                    key: &self.device_id,
                }
            ),
            merge,
            queued,
            renew_at: tokio::time::Instant::now() + resnapshot_period(),
        })
    }

    /// The records of this device's keys, each with its stream sequence:
    /// the last of each key, then whatever was stored while the snapshot
    /// was read (so a key may come twice), through a filtered consumer that
    /// lives only for the snapshot: no acks, flow control or heartbeats,
    /// and the server drops it [`SNAPSHOT_CONSUMER_EXPIRY`] after the read.
    async fn snapshot(&self, filter: DeviceFilter<'_>) -> Result<Vec<Record>, NatsError> {
        let err = |e: &dyn std::fmt::Display| NatsError::Watch(e.to_string());
        let stream = self
            .js
            .get_stream_no_info(StreamName(DESIRED_STATE_BUCKET).to_string())
            .await
            .map_err(|e| err(&e))?;
        let subject = KvSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: filter,
        };
        // A fresh name per snapshot: the previous one may linger until it
        // expires.
        let consumer = stream
            .create_consumer(push::Config {
                name: Some(format!("iot-agent-{}-{:x}", self.device_id, nonce())),
                deliver_subject: self.client.new_inbox(),
                filter_subject: subject.to_string(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                inactive_threshold: SNAPSHOT_CONSUMER_EXPIRY,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        let mut delivered = 0;
        let prefix = format!(
            "{}.",
            KvSubject {
                bucket: DESIRED_STATE_BUCKET,
                key: &self.device_id,
            }
        );
        loop {
            let m = match tokio::time::timeout(SNAPSHOT_IDLE_TIMEOUT, messages.next()).await {
                Err(_) => return Err(err(&"the snapshot stalled")),
                Ok(None) => return Err(err(&"the snapshot consumer ended")),
                Ok(Some(m)) => m.map_err(|e| err(&e))?,
            };
            let info = m.info().map_err(|e| err(&e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            // Without acks nothing is redelivered: a message lost on the
            // way (a reconnect within the consumer's expiry) shows only as a
            // jump in the consumer's own sequence.
            delivered += 1;
            if info.consumer_sequence != delivered {
                return Err(err(&"the snapshot lost a message on the way"));
            }
            if let Some(deployment) = deployment_of(&m.subject, &prefix) {
                let event = kv_event(deployment.clone(), m.headers.as_ref(), m.payload.clone());
                out.push(Record {
                    deployment,
                    seq,
                    event,
                });
            }
            if pending == 0 {
                return Ok(out);
            }
        }
    }

    /// Publishes a deployment's encoded status and waits for the ack.
    pub async fn publish_status(&self, deployment: &str, value: Vec<u8>) -> Result<(), NatsError> {
        let key =
            DeploymentKey::new(&self.device_id, deployment).map_err(|e| NatsError::Publish {
                subject: deployment.to_string(),
                message: e.to_string(),
            })?;
        let subject = KvSubject {
            bucket: DEVICE_STATUS_BUCKET,
            key,
        }
        .to_string();
        self.publish(subject, value).await
    }

    /// Publishes the encoded heartbeat and waits for the ack.
    pub async fn publish_heartbeat(&self, value: Vec<u8>) -> Result<(), NatsError> {
        let subject = KvSubject {
            bucket: DEVICE_HEARTBEAT_BUCKET,
            key: self.device_id.as_str(),
        }
        .to_string();
        self.publish(subject, value).await
    }

    async fn publish(&self, subject: String, value: Vec<u8>) -> Result<(), NatsError> {
        let err = |message: String| NatsError::Publish {
            subject: subject.clone(),
            message,
        };
        let ack = self
            .js
            .publish(subject.clone(), Bytes::from(value))
            .await
            .map_err(|e| err(e.to_string()))?;
        ack.await.map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// Reads one desired-state value by key (direct get of the last message
    /// on the key's subject). `None` when the key has no value.
    pub async fn get_desired(&self, deployment: &str) -> Result<Option<Bytes>, NatsError> {
        let key = DeploymentKey::new(&self.device_id, deployment)
            .map_err(|e| NatsError::Watch(e.to_string()))?;
        let stream = self
            .js
            .get_stream_no_info(StreamName(DESIRED_STATE_BUCKET).to_string())
            .await
            .map_err(|e| NatsError::Watch(e.to_string()))?;
        let subject = KvSubject {
            bucket: DESIRED_STATE_BUCKET,
            key,
        }
        .to_string();
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                let op = m.headers.get(KV_OPERATION).map(|v| v.as_str().to_string());
                Ok(match op.as_deref() {
                    Some("DEL") | Some("PURGE") => None,
                    _ => Some(m.payload),
                })
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(NatsError::Watch(e.to_string())),
        }
    }
}

const KV_OPERATION: &str = "KV-Operation";

/// The log line for a server error that is a permission denial, naming the
/// subject and the likely cause; `None` for other errors. The server sends
/// `Permissions Violation for Publish to "<subject>"` (or `Subscription
/// to`) and the request it denied then times out, so this line is where a
/// denial becomes visible.
pub fn permission_denial(device_id: &str, server_error: &str) -> Option<String> {
    let lower = server_error.to_ascii_lowercase();
    let at = lower.find("permissions violation")?;
    let detail = &server_error[at..];
    let subject = detail
        .split('"')
        .nth(1)
        .or_else(|| detail.rsplit(' ').next())
        .unwrap_or("");
    let hint = if subject.starts_with("$JS.API.CONSUMER.CREATE.KV_desired-state") {
        "the desired-state watch needs the filtered consumer create for this device's keys"
    } else if subject.starts_with("$KV.device-status")
        || subject.starts_with("$KV.device-heartbeat")
    {
        "status and heartbeat writes need this device's own keys"
    } else if subject.starts_with("$KVR.desired-state") {
        "the live watch needs to subscribe to this device's republished keys ($KVR.desired-state.<device>.>; \
         until it may, changes arrive only with the periodic snapshot)"
    } else if subject.starts_with("_INBOX") {
        "replies need this device's inbox prefix"
    } else {
        "the agent only uses this device's own subjects"
    };
    Some(format!(
        "nats: permission denied: the server refused {subject:?} for device {device_id} ({detail}); \
         {hint}: the credentials are not those of device {device_id}, or the server's permissions \
         for it are out of date (regenerate with `cargo xtask creds` and reload the server)"
    ))
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 40)
}

/// One change to this device's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A value was put (or is the current value, during the snapshot).
    Put {
        /// The deployment (key's second token).
        deployment: String,
        /// The raw value.
        value: Bytes,
    },
    /// The key was deleted.
    Delete {
        /// The deployment.
        deployment: String,
    },
    /// The key was purged (its history removed).
    Purge {
        /// The deployment.
        deployment: String,
    },
    /// Every key's current value has been delivered: what was not in the
    /// snapshot is not desired.
    SnapshotComplete,
}

/// A live watch: the snapshot's events, `SnapshotComplete`, then every
/// change as the stream stores it. Ends (`None`) after anything that may
/// have lost a live message (a disconnect, a slow-consumer drop); the
/// caller then creates a new watch, whose snapshot covers the gap.
pub struct Watch {
    live: async_nats::Subscriber,
    gaps: Option<watch::Receiver<u64>>,
    /// `$KVR.desired-state.<id>.`
    prefix: String,
    merge: Merge,
    queued: VecDeque<WatchEvent>,
    /// When the watch ends to take a fresh snapshot anyway
    /// ([`resnapshot_period`]).
    renew_at: tokio::time::Instant,
}

impl Watch {
    /// The next event. `None` means the watch is gone and must be created
    /// again (which delivers a fresh snapshot).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            let renew = tokio::time::sleep_until(self.renew_at);
            let m = match &mut self.gaps {
                Some(gaps) => tokio::select! {
                    biased;
                    changed = gaps.changed() => {
                        if changed.is_ok() {
                            crate::info!("nats: live desired-state messages may have been missed; taking a new snapshot");
                            return None;
                        }
                        self.gaps = None;
                        continue;
                    }
                    () = renew => {
                        crate::debug!("nats: periodic desired-state snapshot");
                        return None;
                    }
                    m = self.live.next() => m?,
                },
                None => tokio::select! {
                    () = renew => return None,
                    m = self.live.next() => m?,
                },
            };
            let headers = m.headers.as_ref();
            let Some(seq) = headers
                .and_then(|h| h.get(NATS_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok())
            else {
                crate::warn!(
                    "nats: ignoring {}: not republished by the stream",
                    m.subject
                );
                continue;
            };
            let Some(deployment) = deployment_of(&m.subject, &self.prefix) else {
                continue;
            };
            match self.merge.live(&deployment, seq) {
                Live::Apply => return Some(kv_event(deployment, headers, m.payload)),
                Live::Duplicate => continue,
                Live::Restart => {
                    crate::info!(
                        "nats: the desired-state stream's sequence went back (recreated?); taking a new snapshot"
                    );
                    return None;
                }
            }
        }
    }
}

/// How often a watch takes a new snapshot even when nothing seems wrong:
/// 10 to 12 minutes, spread so a fleet does not renew at once. It bounds how
/// long a change can be missed when no event says so (a client event
/// dropped from async-nats's full event queue, a subscription the server
/// refused, a stream deleted and created again with sequences restarting).
fn resnapshot_period() -> Duration {
    Duration::from_secs(600) + Duration::from_millis(nonce() % 120_000)
}

/// One record read by the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    deployment: String,
    seq: u64,
    event: WatchEvent,
}

/// What to do with a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Newer than anything applied for its key.
    Apply,
    /// Applied already (through the snapshot, or a duplicate).
    Duplicate,
    /// The stream's sequence went back: it was created again, and the
    /// sequences applied so far mean nothing; take a new snapshot.
    Restart,
}

/// The stream sequences applied so far, which merge the snapshot with the
/// live messages: each change applied once and in order.
#[derive(Debug, Default)]
struct Merge {
    /// The last stream sequence applied per deployment.
    applied: BTreeMap<String, u64>,
    /// The highest sequence seen on the live subscription.
    last_live: u64,
}

impl Merge {
    /// The state after a snapshot, and the events it stands for: each
    /// key's last record wins (a delete stored while the snapshot was read
    /// supersedes the put before it), and only puts are events, since what
    /// the snapshot lacks is removed at `SnapshotComplete`.
    fn from_snapshot(records: Vec<Record>) -> (Merge, VecDeque<WatchEvent>) {
        let mut last: BTreeMap<String, (u64, WatchEvent)> = BTreeMap::new();
        for r in records {
            if last.get(&r.deployment).is_none_or(|(s, _)| *s < r.seq) {
                last.insert(r.deployment, (r.seq, r.event));
            }
        }
        let mut merge = Merge::default();
        let mut queued = VecDeque::new();
        for (deployment, (seq, event)) in last {
            merge.applied.insert(deployment, seq);
            if matches!(event, WatchEvent::Put { .. }) {
                queued.push_back(event);
            }
        }
        queued.push_back(WatchEvent::SnapshotComplete);
        (merge, queued)
    }

    /// Whether a live message for `deployment` at stream sequence `seq`
    /// is new. The stream republishes in sequence order, so a live
    /// sequence below an earlier live one means a new stream.
    fn live(&mut self, deployment: &str, seq: u64) -> Live {
        if seq < self.last_live {
            return Live::Restart;
        }
        self.last_live = seq;
        if self.applied.get(deployment).is_some_and(|s| *s >= seq) {
            return Live::Duplicate;
        }
        self.applied.insert(deployment.to_string(), seq);
        Live::Apply
    }
}

/// The stream sequence the stream republishes each message with.
const NATS_SEQUENCE: &str = "Nats-Sequence";

/// The deployment named by `subject` under `prefix`, if it is a valid one.
fn deployment_of(subject: &async_nats::Subject, prefix: &str) -> Option<String> {
    let Some(rest) = subject.as_str().strip_prefix(prefix) else {
        crate::warn!("nats: ignoring foreign subject {subject}");
        return None;
    };
    if protocol::keys::validate_deployment_name(rest).is_err() {
        crate::warn!("nats: ignoring key with an invalid deployment name {rest:?}");
        return None;
    }
    Some(rest.to_string())
}

/// The event a KV record stands for, by its `KV-Operation` header.
fn kv_event(
    deployment: String,
    headers: Option<&async_nats::HeaderMap>,
    value: Bytes,
) -> WatchEvent {
    let op = headers
        .and_then(|h| h.get(KV_OPERATION))
        .map(|v| v.as_str());
    match op {
        Some("DEL") => WatchEvent::Delete { deployment },
        Some("PURGE") => WatchEvent::Purge { deployment },
        _ => WatchEvent::Put { deployment, value },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(d: &str, seq: u64, v: &'static str) -> Record {
        Record {
            deployment: d.into(),
            seq,
            event: WatchEvent::Put {
                deployment: d.into(),
                value: Bytes::from_static(v.as_bytes()),
            },
        }
    }

    fn del(d: &str, seq: u64) -> Record {
        Record {
            deployment: d.into(),
            seq,
            event: WatchEvent::Delete {
                deployment: d.into(),
            },
        }
    }

    #[test]
    fn a_key_changed_while_the_snapshot_is_read_counts_at_its_last_record() {
        // `a` was put, then deleted while the snapshot was read; `b` was
        // put twice meanwhile; `c` is a delete marker alone.
        let (mut merge, queued) = Merge::from_snapshot(vec![
            put("a", 10, "a1"),
            put("b", 11, "b1"),
            del("c", 5),
            del("a", 12),
            put("b", 13, "b2"),
        ]);
        assert_eq!(
            Vec::from(queued),
            [put("b", 13, "b2").event, WatchEvent::SnapshotComplete]
        );
        // The same records arriving live are not applied again, in either
        // order; what comes after them is.
        assert_eq!(merge.live("a", 12), Live::Duplicate);
        assert_eq!(merge.live("b", 13), Live::Duplicate);
        assert_eq!(merge.live("c", 14), Live::Apply);
        assert_eq!(merge.live("a", 15), Live::Apply);
        assert_eq!(merge.live("a", 15), Live::Duplicate);
    }

    #[test]
    fn a_live_sequence_going_back_means_a_new_stream() {
        let (mut merge, _) = Merge::from_snapshot(vec![put("a", 40, "a")]);
        assert_eq!(merge.live("b", 41), Live::Apply);
        assert_eq!(merge.live("a", 3), Live::Restart);
    }

    #[test]
    fn the_resnapshot_period_is_spread_over_two_minutes() {
        let p = resnapshot_period();
        assert!(
            p >= Duration::from_secs(600) && p < Duration::from_secs(720),
            "{p:?}"
        );
    }

    #[test]
    fn permission_denials_name_the_subject_and_cause() {
        let m = permission_denial(
            "pi-1",
            "nats: Permissions Violation for Publish to \"$KV.device-status.pi-2.web\"",
        );
        let m = m.unwrap_or_default();
        assert!(m.contains("permission denied"), "{m}");
        assert!(m.contains("$KV.device-status.pi-2.web"), "{m}");
        assert!(
            m.contains("device pi-1") && m.contains("xtask creds"),
            "{m}"
        );
        assert!(permission_denial("pi-1", "nats: slow consumer").is_none());
    }
}
