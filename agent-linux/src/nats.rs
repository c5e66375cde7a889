//! Everything the agent says to NATS, in one module: the connection, the
//! desired-state watch, and status/heartbeat writes.
//!
//! Built for least-privilege device credentials (docs/nats-security.md). The
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
use protocol::KeyError;
use protocol::keys::{
    ConsumerCreateSubject, DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET,
    DeploymentKey, DeviceFilter, KvSubject, RepublishSubject, StreamName,
};
use protocol::kv::{FORCE_HEADER, FORCE_VALUE, OPERATION_HEADER, Operation, SEQUENCE_HEADER};

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

/// Any error, boxed: what the NATS client returns for some failures, and
/// what the credential readers return.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a NATS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A credential file named by a setting cannot be used.
    #[error("NATS client setup: {setting}")]
    Setup {
        /// The setting naming the file (and the file, when the cause does
        /// not name it).
        setting: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The client could not be started (e.g. a server URL it cannot use).
    #[error("NATS client setup")]
    Connect(#[source] async_nats::ConnectError),
    /// Creating the watch failed.
    #[error("cannot create the desired-state watch ({hint})", hint = watch_hint())]
    Watch(#[from] WatchError),
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// A status cannot be published under this deployment name.
    #[error("cannot publish the status of {deployment:?}")]
    StatusKey {
        /// The deployment name.
        deployment: String,
        /// Why it is not a key.
        #[source]
        source: KeyError,
    },
}

/// Why the desired-state watch could not be created, by step.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The device id cannot be part of a subject.
    #[error(transparent)]
    DeviceId(KeyError),
    /// Subscribing to the republished keys failed.
    #[error("subscribing to {subject}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// Flushing the subscription to the server failed.
    #[error("sending the subscription")]
    Flush(#[source] async_nats::client::FlushError),
    /// The desired-state stream could not be addressed.
    #[error("addressing the desired-state stream")]
    Stream(#[source] jetstream::context::GetStreamError),
    /// Creating the snapshot's consumer failed.
    #[error("creating the snapshot consumer")]
    Consumer(#[source] jetstream::stream::ConsumerError),
    /// Reading the snapshot's messages failed.
    #[error("reading the snapshot")]
    Read(#[source] BoxError),
    /// No snapshot message came for [`SNAPSHOT_IDLE_TIMEOUT`].
    #[error("the snapshot stalled")]
    Stalled,
    /// The snapshot's consumer ended before its last message.
    #[error("the snapshot consumer ended")]
    Ended,
    /// A snapshot message was lost (the consumer's sequence jumped).
    #[error("the snapshot lost a message on the way")]
    LostMessage,
    /// The connection dropped while the snapshot was read.
    #[error("the connection dropped during the snapshot")]
    Interrupted,
}

/// What the watch needs permission for, as the watch error's hint.
fn watch_hint() -> String {
    const DEVICE_KEYS: &str = "<device>.>";
    let consumer = ConsumerCreateSubject {
        bucket: DESIRED_STATE_BUCKET,
        consumer: "*",
        filter: KvSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: DEVICE_KEYS,
        },
    };
    let live = RepublishSubject {
        bucket: DESIRED_STATE_BUCKET,
        key: DEVICE_KEYS,
    };
    format!(
        "a timeout can also mean the credentials do not allow {consumer} or subscribing to {live}"
    )
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
            let seed =
                nats_credentials::read_seed_file(seed_file).map_err(|e| NatsError::Setup {
                    setting: "nats.credentials.seed_file".into(),
                    source: e.into(),
                })?;
            opts.nkey(seed)
        }
        Credentials::CredsFile { path } => {
            opts.credentials_file(path)
                .await
                .map_err(|e| NatsError::Setup {
                    setting: format!("nats.credentials.path {}", path.display()),
                    source: e.into(),
                })?
        }
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
            .map_err(NatsError::Connect)?;
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
        let mut gaps = self.gaps.subscribe();
        gaps.mark_unchanged();
        let filter = DeviceFilter::new(&self.device_id).map_err(WatchError::DeviceId)?;
        let subject = RepublishSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: filter,
        }
        .to_string();
        let live = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|source| WatchError::Subscribe { subject, source })?;
        self.client.flush().await.map_err(WatchError::Flush)?;
        let records = self.snapshot(filter).await?;
        // A snapshot read across a disconnect may lack messages the server
        // counted as delivered: take it again rather than remove what it
        // lacks.
        if gaps.has_changed().unwrap_or(false) {
            return Err(WatchError::Interrupted.into());
        }
        let (merge, queued) = Merge::from_snapshot(records);
        Ok(Watch {
            live,
            gaps: Some(gaps),
            device_id: self.device_id.clone(),
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
    async fn snapshot(&self, filter: DeviceFilter<'_>) -> Result<Vec<Record>, WatchError> {
        let stream = self
            .js
            .get_stream_no_info(StreamName(DESIRED_STATE_BUCKET).to_string())
            .await
            .map_err(WatchError::Stream)?;
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
            .map_err(WatchError::Consumer)?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let read = |e: BoxError| WatchError::Read(e);
        let mut messages = consumer.messages().await.map_err(|e| read(e.into()))?;
        let mut delivered = 0;
        loop {
            let m = match tokio::time::timeout(SNAPSHOT_IDLE_TIMEOUT, messages.next()).await {
                Err(_) => return Err(WatchError::Stalled),
                Ok(None) => return Err(WatchError::Ended),
                Ok(Some(m)) => m.map_err(|e| read(e.into()))?,
            };
            let info = m.info().map_err(read)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            // Without acks nothing is redelivered: a message lost on the
            // way (a reconnect within the consumer's expiry) shows only as a
            // jump in the consumer's own sequence.
            delivered += 1;
            if info.consumer_sequence != delivered {
                return Err(WatchError::LostMessage);
            }
            let key = KvSubject::parse(&m.subject)
                .filter(|s| s.bucket == DESIRED_STATE_BUCKET)
                .map(|s| s.key);
            if let Some(deployment) = deployment_of(&self.device_id, key, &m.subject) {
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
        let key = DeploymentKey::new(&self.device_id, deployment).map_err(|source| {
            NatsError::StatusKey {
                deployment: deployment.to_string(),
                source,
            }
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
        let err = |source| NatsError::Publish {
            subject: subject.clone(),
            source,
        };
        let ack = self
            .js
            .publish(subject.clone(), Bytes::from(value))
            .await
            .map_err(err)?;
        ack.await.map_err(err)?;
        Ok(())
    }
}

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
    let kv_bucket = KvSubject::parse(subject).map(|s| s.bucket);
    let hint = if ConsumerCreateSubject::parse(subject)
        .is_some_and(|c| c.bucket == DESIRED_STATE_BUCKET)
    {
        "the desired-state watch needs the filtered consumer create for this device's keys"
            .to_string()
    } else if kv_bucket.is_some_and(|b| b == DEVICE_STATUS_BUCKET || b == DEVICE_HEARTBEAT_BUCKET) {
        "status and heartbeat writes need this device's own keys".to_string()
    } else if RepublishSubject::parse(subject).is_some_and(|s| s.bucket == DESIRED_STATE_BUCKET) {
        let live = RepublishSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: DeviceFilter::new(device_id).map_or("<device>.>".into(), |f| f.to_string()),
        };
        format!(
            "the live watch needs to subscribe to this device's republished keys ({live}; \
             until it may, changes arrive only with the periodic snapshot)"
        )
    } else if subject.starts_with(&protocol::permissions::device_inbox_prefix(device_id)) {
        "replies need this device's inbox prefix".to_string()
    } else {
        "the agent only uses this device's own subjects".to_string()
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
        /// The delete carried the override (`Iot-Force: true`): the
        /// device removes at once, whatever its update lock and windows.
        force: bool,
    },
    /// The key was purged (its history removed).
    Purge {
        /// The deployment.
        deployment: String,
        /// As for [`WatchEvent::Delete`].
        force: bool,
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
    /// The device whose keys are watched.
    device_id: String,
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
                .and_then(|h| h.get(SEQUENCE_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok())
            else {
                crate::warn!(
                    "nats: ignoring {}: not republished by the stream",
                    m.subject
                );
                continue;
            };
            let key = RepublishSubject::parse(&m.subject)
                .filter(|s| s.bucket == DESIRED_STATE_BUCKET)
                .map(|s| s.key);
            let Some(deployment) = deployment_of(&self.device_id, key, &m.subject) else {
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
    /// the snapshot lacks is removed at `SnapshotComplete`; but for forced
    /// deletes, whose override would be lost that way (the caller ignores
    /// those of deployments it does not know).
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
            if matches!(
                event,
                WatchEvent::Put { .. }
                    | WatchEvent::Delete { force: true, .. }
                    | WatchEvent::Purge { force: true, .. }
            ) {
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

/// The deployment named by `key` (the desired-state key of `subject`,
/// `None` when the subject is not one), if the key is a valid one of
/// `device_id`.
fn deployment_of(device_id: &str, key: Option<&str>, subject: &str) -> Option<String> {
    let key = match key.map(DeploymentKey::parse) {
        Some(Ok(key)) if key.device_id() == device_id => key,
        Some(Ok(_)) | None => {
            crate::warn!("nats: ignoring foreign subject {subject}");
            return None;
        }
        Some(Err(e)) => {
            crate::warn!(
                "nats: ignoring subject {subject}: {}",
                crate::log::Chain(&e)
            );
            return None;
        }
    };
    Some(key.deployment().to_string())
}

/// The event a KV record stands for, by its operation header; a value this
/// contract does not know counts as a put.
fn kv_event(
    deployment: String,
    headers: Option<&async_nats::HeaderMap>,
    value: Bytes,
) -> WatchEvent {
    let op = headers
        .and_then(|h| h.get(OPERATION_HEADER))
        .map(|v| v.as_str());
    let force = headers
        .and_then(|h| h.get(FORCE_HEADER))
        .is_some_and(|v| v.as_str() == FORCE_VALUE);
    match Operation::of_header(op) {
        Some(Operation::Delete) => WatchEvent::Delete { deployment, force },
        Some(Operation::Purge) => WatchEvent::Purge { deployment, force },
        Some(Operation::Put) | None => WatchEvent::Put { deployment, value },
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
                force: false,
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

    /// A forced delete read by the snapshot keeps its override: it is an
    /// event (an unforced one is implied by `SnapshotComplete`).
    #[test]
    fn the_snapshot_delivers_forced_deletes() {
        let forced = Record {
            deployment: "a".into(),
            seq: 12,
            event: WatchEvent::Delete {
                deployment: "a".into(),
                force: true,
            },
        };
        let (_, queued) =
            Merge::from_snapshot(vec![put("a", 10, "a1"), forced.clone(), del("c", 5)]);
        assert_eq!(
            Vec::from(queued),
            [forced.event, WatchEvent::SnapshotComplete]
        );
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

    #[test]
    fn permission_denials_are_told_apart_by_subject() {
        let hint = |subject: &str| {
            permission_denial(
                "pi-1",
                &format!("nats: Permissions Violation for Subscription to \"{subject}\""),
            )
            .unwrap_or_default()
        };
        let m = hint(
            "$JS.API.CONSUMER.CREATE.KV_desired-state.iot-agent-pi-1-7.$KV.desired-state.pi-1.>",
        );
        assert!(m.contains("filtered consumer create"), "{m}");
        let m = hint("$KV.device-heartbeat.pi-1");
        assert!(m.contains("status and heartbeat writes"), "{m}");
        let m = hint("$KVR.desired-state.pi-1.>");
        assert!(
            m.contains("republished keys ($KVR.desired-state.pi-1.>;"),
            "{m}"
        );
        let m = hint("_INBOX.pi-1.x");
        assert!(m.contains("inbox prefix"), "{m}");
        let m = hint("$KV.desired-state.pi-1.web");
        assert!(m.contains("only uses this device's own subjects"), "{m}");
    }

    #[test]
    fn only_this_devices_valid_keys_name_a_deployment() {
        let d = |key| deployment_of("pi-1", key, "subject");
        assert_eq!(d(Some("pi-1.web")), Some("web".to_string()));
        assert_eq!(d(Some("pi-2.web")), None);
        assert_eq!(d(Some("pi-1.web.x")), None);
        assert_eq!(d(Some("pi-1.w*")), None);
        assert_eq!(d(None), None);
    }

    #[test]
    fn records_are_put_unless_deleted_or_purged() {
        let event = |op: Option<&str>| {
            let mut h = async_nats::HeaderMap::new();
            if let Some(op) = op {
                h.insert(OPERATION_HEADER, op);
            }
            kv_event("web".into(), Some(&h), Bytes::from_static(b"v"))
        };
        let put = WatchEvent::Put {
            deployment: "web".into(),
            value: Bytes::from_static(b"v"),
        };
        assert_eq!(event(None), put);
        assert_eq!(event(Some("PUT")), put);
        assert_eq!(event(Some("SOMETHING")), put);
        assert_eq!(
            event(Some("DEL")),
            WatchEvent::Delete {
                deployment: "web".into(),
                force: false,
            }
        );
        assert_eq!(
            event(Some("PURGE")),
            WatchEvent::Purge {
                deployment: "web".into(),
                force: false,
            }
        );
        // The override, as the operator writes it on a forced delete.
        let forced = |op: &str, value: &str| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(OPERATION_HEADER, op);
            h.insert(FORCE_HEADER, value);
            kv_event("web".into(), Some(&h), Bytes::new())
        };
        assert_eq!(
            forced("DEL", FORCE_VALUE),
            WatchEvent::Delete {
                deployment: "web".into(),
                force: true,
            }
        );
        assert_eq!(
            forced("PURGE", FORCE_VALUE),
            WatchEvent::Purge {
                deployment: "web".into(),
                force: true,
            }
        );
        assert_eq!(
            forced("DEL", "false"),
            WatchEvent::Delete {
                deployment: "web".into(),
                force: false,
            }
        );
    }
}
