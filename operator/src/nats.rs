//! Every NATS access of the operator: connecting (URLs, credentials, TLS),
//! creating or checking the buckets, reading the last value of keys, and
//! writing or deleting desired-state keys.
//!
//! Subjects and stream names come from `protocol`; values are encoded there
//! too. Reads use one ordered consumer per scan with a filter, so that the
//! operator's NATS identity needs no STREAM.INFO on the desired-state bucket
//! and a scan of 10,000 keys is one consumer, not 10,000 requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use protocol::buckets::BucketSpec;
use protocol::keys::{KvSubject, RepublishSubject, StreamName};
use protocol::kv::{
    FORCE_HEADER, FORCE_VALUE, MESSAGE_ID_HEADER, OPERATION_HEADER, OWNER_HEADER, Operation,
};

/// How long one scan may take before it is reported as a timeout.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes in flight at once when writing many keys.
const PUBLISH_WINDOW: usize = 512;
/// The smallest window a write shrinks to after acks time out.
const MIN_PUBLISH_WINDOW: usize = 32;
/// How many times a write is sent when its ack times out. A timed-out ack
/// does not mean the put failed (a busy server acks late), so the write is
/// sent again under the same `Nats-Msg-Id`: the stream stores it at most
/// once (duplicate window 120 s, see [`stream_config`]).
const WRITE_ATTEMPTS: u32 = 4;

/// How to reach NATS and who to be there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs, tried in turn (`nats://host:4222`, `tls://...`).
    pub urls: Vec<String>,
    /// Credentials.
    pub credentials: Credentials,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Inbox prefix for replies; an identity's permissions allow
    /// subscribing only below its own prefix (`_INBOX.operator`).
    pub inbox_prefix: String,
    /// Keep retrying when no server answers at start (the controller), or
    /// fail at once (the CLI).
    pub retry_on_initial_connect: bool,
    /// Connection name shown in the server's monitoring.
    pub client_name: String,
}

/// The NATS identity: the fleet's one credentials type, shared with the
/// agent's configuration file.
pub use nats_credentials::Credentials;

/// TLS to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Require TLS even when the URL scheme is `nats://`.
    pub required: bool,
    /// CA certificate(s) (PEM) to verify the server with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<PathBuf>,
}

/// Why a NATS operation failed. Every kind here is worth retrying except
/// the configuration ones ([`NatsError::is_permanent`]).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No server URL was given.
    #[error("NATS configuration: no server URL: pass --nats-url (or set NATS_URL)")]
    NoServer,
    /// A server URL does not parse.
    #[error("NATS configuration: bad NATS URL `{url}`")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// The parser's error.
        #[source]
        source: std::io::Error,
    },
    /// The nkey seed file cannot be used.
    #[error("NATS configuration")]
    Seed {
        /// Why (names the file).
        #[source]
        source: nats_credentials::SeedFileError,
    },
    /// The `.creds` file cannot be read or parsed.
    #[error("NATS configuration: cannot read creds file {path}")]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// What async-nats reported.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file named on the command line does not exist.
    #[error("NATS configuration: TLS file {path} does not exist")]
    TlsFileMissing {
        /// The file.
        path: PathBuf,
    },
    /// A client certificate without its key, or the reverse.
    #[error(
        "NATS configuration: a client certificate needs both --nats-tls-cert and --nats-tls-key"
    )]
    TlsCertWithoutKey,
    /// A deployment name or device id cannot make a key.
    #[error("invalid key")]
    InvalidKey {
        /// Which token is wrong and why.
        #[source]
        source: protocol::keys::KeyError,
    },
    /// No server could be reached or the server refused the identity.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What went wrong.
        reason: String,
    },
    /// A bucket does not exist and this identity may not create it.
    #[error(
        "bucket `{bucket}` does not exist and could not be created ({reason}); run `iot-operator init` with an identity allowed to create streams"
    )]
    BucketMissing {
        /// The bucket.
        bucket: String,
        /// Why creation failed.
        reason: String,
    },
    /// A bucket a command reads or writes is not on the server: `init`
    /// never ran against it.
    #[error(
        "bucket `{bucket}` does not exist on this NATS server: run `iot-operator init` once, as an identity allowed to create streams (e.g. `--nats-nkey admin.nk` from `cargo xtask creds`)"
    )]
    NoBucket {
        /// The bucket.
        bucket: String,
    },
    /// A bucket exists but does not republish where agents watch.
    #[error(
        "bucket `{bucket}` does not republish its values to `{republish}`, where agents watch ({reason}); run `iot-operator init` with an identity allowed to edit streams: nats-server 2.10+ adds it in place; 2.9 cannot (error 10052): upgrade the server, or delete the stream `{stream}`, run `iot-operator init`, then start the operator, which writes every key again from the Deployments",
        republish = RepublishSubject::all(.bucket),
        stream = StreamName(.bucket)
    )]
    BucketOutdated {
        /// The bucket.
        bucket: String,
        /// Why it could not be updated.
        reason: String,
    },
    /// A request failed.
    #[error("{op} on bucket `{bucket}` failed: {reason}")]
    Request {
        /// What was attempted.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// What went wrong.
        reason: String,
    },
    /// A request got no answer in time: NATS is unreachable, or (as NATS
    /// answers denied requests with silence) the identity lacks permission.
    #[error(
        "{op} on bucket `{bucket}` timed out: NATS is unreachable or this identity lacks permission for it"
    )]
    Timeout {
        /// What was attempted.
        op: &'static str,
        /// The bucket.
        bucket: String,
    },
}

impl NatsError {
    /// Whether retrying cannot help: the configuration or the input is
    /// wrong, not the network or the server.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NatsError::NoServer
                | NatsError::BadUrl { .. }
                | NatsError::Seed { .. }
                | NatsError::CredsFile { .. }
                | NatsError::TlsFileMissing { .. }
                | NatsError::TlsCertWithoutKey
                | NatsError::InvalidKey { .. }
        )
    }
}

/// A record from a message of a KV stream.
fn kv_record(
    key: String,
    value: Bytes,
    headers: Option<&HeaderMap>,
    stored_at_ns: i128,
) -> KvRecord {
    KvRecord {
        key,
        value,
        // Any operation other than a put (including one this contract does
        // not know) means the value is gone.
        deleted: header(headers, OPERATION_HEADER)
            .is_some_and(|op| Operation::parse(op) != Some(Operation::Put)),
        owner: header(headers, OWNER_HEADER).map(str::to_string),
        stored_at_ns,
    }
}

fn request_error(op: &'static str, bucket: &str, e: impl std::fmt::Display) -> NatsError {
    let reason = e.to_string();
    if reason.contains("timed out") || reason.contains("TimedOut") {
        NatsError::Timeout {
            op,
            bucket: bucket.to_string(),
        }
    } else {
        NatsError::Request {
            op,
            bucket: bucket.to_string(),
            reason,
        }
    }
}

/// The last record of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    /// The key, without the bucket prefix.
    pub key: String,
    /// The value; empty for deletes.
    pub value: Bytes,
    /// Whether the key is deleted or purged.
    pub deleted: bool,
    /// The [`OWNER_HEADER`] as written (a [`protocol::kv::Owner`] when
    /// the operator wrote it), when present.
    pub owner: Option<String>,
    /// When the server stored it, nanoseconds since the Unix epoch.
    pub stored_at_ns: i128,
}

/// One key to write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    /// Put `value` under `key`, marked as written by `owner`.
    Put {
        /// The key.
        key: String,
        /// The encoded value.
        value: Bytes,
        /// The writer: a [`protocol::kv::Owner`], `<namespace>/<name>`.
        owner: String,
    },
    /// Delete `key` (a KV delete marker; agents remove the workload when
    /// their update lock and maintenance windows let them).
    Delete {
        /// The key.
        key: String,
    },
    /// Delete `key` with the force header ([`FORCE_HEADER`]): agents
    /// remove the workload at once, whatever their update lock and
    /// maintenance windows say (`spec.rollout.force`).
    ForcedDelete {
        /// The key.
        key: String,
    },
}

/// A connection to NATS with JetStream.
#[derive(Clone, Debug)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Nats {
    /// Connects as configured.
    pub async fn connect(config: &NatsConfig) -> Result<Nats, NatsError> {
        if config.urls.is_empty() {
            return Err(NatsError::NoServer);
        }
        let mut opts = async_nats::ConnectOptions::new()
            .name(if config.client_name.is_empty() {
                "iot-operator"
            } else {
                &config.client_name
            })
            .request_timeout(Some(Duration::from_secs(10)))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(reconnect_delay);
        if !config.inbox_prefix.is_empty() {
            opts = opts.custom_inbox_prefix(&config.inbox_prefix);
        }
        if config.retry_on_initial_connect {
            opts = opts.retry_on_initial_connect();
        }
        opts = match &config.credentials {
            Credentials::None => opts,
            Credentials::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token { token } => opts.token(token.clone()),
            Credentials::Nkey { seed_file } => opts.nkey(
                nats_credentials::read_seed_file(seed_file)
                    .map_err(|source| NatsError::Seed { source })?,
            ),
            Credentials::CredsFile { path } => {
                opts.credentials_file(path)
                    .await
                    .map_err(|source| NatsError::CredsFile {
                        path: path.clone(),
                        source,
                    })?
            }
        };
        let tls = &config.tls;
        for f in [&tls.ca_file, &tls.cert_file, &tls.key_file]
            .into_iter()
            .flatten()
        {
            if !f.is_file() {
                return Err(NatsError::TlsFileMissing { path: f.clone() });
            }
        }
        if tls.required {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => opts = opts.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => return Err(NatsError::TlsCertWithoutKey),
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| {
                u.parse().map_err(|source| NatsError::BadUrl {
                    url: u.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let client = opts
            .connect(addrs.as_slice())
            .await
            .map_err(|e| NatsError::Connect {
                urls: config.urls.join(","),
                reason: e.to_string(),
            })?;
        Ok(Nats::from_client(client))
    }

    /// Wraps an existing client (tests, benches).
    pub fn from_client(client: async_nats::Client) -> Nats {
        let js = jetstream::new(client.clone());
        Nats { client, js }
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Makes sure every bucket of the contract exists: checks each stream
    /// and, when `create_missing`, creates the absent ones with the settings
    /// from `protocol::buckets`. Existing buckets are left as they are.
    pub async fn ensure_buckets(&self, create_missing: bool) -> Result<Vec<String>, NatsError> {
        let mut created = Vec::new();
        for spec in protocol::buckets::ALL {
            let name = StreamName(spec.name).to_string();
            match self.js.get_stream(&name).await {
                Ok(stream) => {
                    let want = stream_config(&spec);
                    let have = &stream.cached_info().config;
                    if spec.republish && have.republish != want.republish {
                        // The stream as it is, RePublish added: an admin's
                        // other settings (replicas, limits) stay.
                        let mut config = have.clone();
                        config.republish = want.republish;
                        self.add_republish(&spec, config, create_missing).await?;
                        created.push(format!("{} (RePublish added)", spec.name));
                    } else if have.max_message_size >= 0
                        && have.max_message_size < want.max_message_size
                    {
                        // A bucket made before its values grew (heartbeat
                        // version 3): the server refuses larger values. Not
                        // fatal: every value within the old limit still
                        // flows, so a controller that may not edit streams
                        // runs on and says what to do.
                        let mut config = have.clone();
                        config.max_message_size = want.max_message_size;
                        let raised = match create_missing {
                            true => self
                                .js
                                .update_stream(config)
                                .await
                                .map_err(|e| e.to_string()),
                            false => Err("creation not requested".to_string()),
                        };
                        match raised {
                            Ok(_) => created.push(format!(
                                "{} (max value raised to {} bytes)",
                                spec.name, want.max_message_size
                            )),
                            Err(reason) => tracing::warn!(
                                bucket = spec.name,
                                have = have.max_message_size,
                                want = want.max_message_size,
                                reason,
                                "the bucket's max value size is below this release's; larger heartbeats are refused until `iot-operator init` (with an identity that may edit streams) raises it"
                            ),
                        }
                    }
                    continue;
                }
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {}
                    _ => return Err(request_error("stream info", spec.name, e)),
                },
            }
            if !create_missing {
                return Err(NatsError::BucketMissing {
                    bucket: spec.name.into(),
                    reason: "creation not requested".into(),
                });
            }
            self.js
                .create_stream(stream_config(&spec))
                .await
                .map_err(|e| NatsError::BucketMissing {
                    bucket: spec.name.into(),
                    reason: e.to_string(),
                })?;
            created.push(spec.name.to_string());
        }
        Ok(created)
    }

    /// Adds RePublish to an existing bucket made before agents watched
    /// `$KVR` (nats-server 2.10+ can; 2.9 refuses with error 10052). The
    /// operator alone may not edit streams, so without `allowed` (init) it
    /// stops here: running against such a bucket would leave every agent
    /// deaf to updates.
    async fn add_republish(
        &self,
        spec: &BucketSpec,
        config: stream::Config,
        allowed: bool,
    ) -> Result<(), NatsError> {
        let outdated = |reason: String| NatsError::BucketOutdated {
            bucket: spec.name.into(),
            reason,
        };
        if !allowed {
            return Err(outdated("the operator may not edit streams".into()));
        }
        self.js
            .update_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| outdated(e.to_string()))
    }

    /// The last record of every key of `bucket` matching `key_filter` (a
    /// key, or a filter with `*` / `>` tokens), deletes included.
    ///
    /// The server's pending count does not say when the snapshot is whole
    /// while keys are rewritten (heartbeats, statuses: history-1 buckets).
    /// A key's snapshot record replaced before its delivery is skipped, yet
    /// the server may report 0 pending at the snapshot's end (the scan then
    /// missed the key); and nats-server 2.9 can keep it at 1 while a key is
    /// rewritten (the scan then waited for its timeout: 5 of 300 scans of a
    /// key rewritten every 20 ms). So the consumer is read until 0 pending
    /// or the stream's last sequence at the start, and when anything was
    /// written since, the keys missing are read one by one (direct gets).
    /// Records come back in stream order, each key once, its newest seen.
    pub async fn scan(&self, bucket: &str, key_filter: &str) -> Result<Vec<KvRecord>, NatsError> {
        let op = "scan";
        let mut stream = self
            .js
            .get_stream(StreamName(bucket).to_string())
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    NatsError::NoBucket {
                        bucket: bucket.to_string(),
                    }
                }
                _ => request_error(op, bucket, e),
            })?;
        let start = stream.cached_info().state.last_sequence;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                name: Some(unique_consumer_name()),
                deliver_subject: self.client.new_inbox(),
                filter_subject: KvSubject {
                    bucket,
                    key: key_filter,
                }
                .to_string(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| match e.kind() {
                stream::ConsumerErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    NatsError::NoBucket {
                        bucket: bucket.to_string(),
                    }
                }
                _ => request_error(op, bucket, e),
            })?;
        // Each key's newest record seen, with its stream sequence.
        let mut found: HashMap<String, (u64, KvRecord)> = HashMap::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| request_error(op, bucket, e))?;
        let deadline = tokio::time::Instant::now() + SCAN_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, messages.next())
                .await
                .map_err(|_| NatsError::Timeout {
                    op,
                    bucket: bucket.to_string(),
                })?;
            let Some(msg) = next else {
                return Err(request_error(op, bucket, "the consumer ended early"));
            };
            let msg = msg.map_err(|e| request_error(op, bucket, e))?;
            let info = msg.info().map_err(|e| request_error(op, bucket, e))?;
            let pending = info.pending;
            let sequence = info.stream_sequence;
            let stored_at_ns = info.published.unix_timestamp_nanos();
            let key = KvSubject::parse(&msg.subject)
                .filter(|s| s.bucket == bucket)
                .map_or(msg.subject.as_str(), |s| s.key)
                .to_string();
            let record = kv_record(
                key.clone(),
                msg.payload.clone(),
                msg.headers.as_ref(),
                stored_at_ns,
            );
            if found.get(&key).is_none_or(|(seen, _)| *seen <= sequence) {
                found.insert(key, (sequence, record));
            }
            if pending == 0 || sequence >= start {
                break;
            }
        }
        // Records up to `start` came in order: those still there were
        // delivered. One replaced meanwhile was skipped, and only a write
        // since `start` can have replaced it: fetch the keys missing.
        let last = stream
            .info()
            .await
            .map_err(|e| request_error(op, bucket, e))?
            .state
            .last_sequence;
        if last > start {
            for key in self.keys_of(&stream, bucket, key_filter).await? {
                if found.contains_key(&key) {
                    continue;
                }
                let subject = KvSubject { bucket, key: &key }.to_string();
                let m = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| request_error(op, bucket, e))?;
                let stored_at_ns = m.time.unix_timestamp_nanos();
                let record = kv_record(key.clone(), m.payload, Some(&m.headers), stored_at_ns);
                found.insert(key, (m.sequence, record));
            }
        }
        let mut out: Vec<(u64, KvRecord)> = found.into_values().collect();
        out.sort_by_key(|(sequence, _)| *sequence);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// The keys of `bucket` matching `key_filter` that have a record now.
    async fn keys_of(
        &self,
        stream: &jetstream::stream::Stream,
        bucket: &str,
        key_filter: &str,
    ) -> Result<Vec<String>, NatsError> {
        let filter = KvSubject {
            bucket,
            key: key_filter,
        }
        .to_string();
        let mut subjects = stream
            .info_with_subjects(&filter)
            .await
            .map_err(|e| request_error("scan", bucket, e))?;
        let mut keys = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _) = entry.map_err(|e| request_error("scan", bucket, e))?;
            if let Some(s) = KvSubject::parse(&subject).filter(|s| s.bucket == bucket) {
                keys.push(s.key.to_string());
            }
        }
        Ok(keys)
    }

    /// Applies `writes` to `bucket`, many in flight at once; returns how
    /// many the server acknowledged. Stops at the first failure. A write
    /// whose ack times out is sent again with the same `Nats-Msg-Id` (the
    /// stream keeps one copy), in a smaller window, up to
    /// [`WRITE_ATTEMPTS`] times in all.
    pub async fn write(&self, bucket: &str, writes: Vec<KvWrite>) -> Result<usize, NatsError> {
        let op = "write";
        let batch = unique_batch_id();
        let messages: Vec<(String, HeaderMap, Bytes)> = writes
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let mut h = HeaderMap::new();
                h.insert(MESSAGE_ID_HEADER, format!("{batch}-{i}"));
                let (key, payload) = match w {
                    KvWrite::Put { key, value, owner } => {
                        h.insert(OWNER_HEADER, owner.as_str());
                        (key, value)
                    }
                    KvWrite::Delete { key } => {
                        h.insert(OPERATION_HEADER, Operation::Delete.as_str());
                        (key, Bytes::new())
                    }
                    KvWrite::ForcedDelete { key } => {
                        h.insert(OPERATION_HEADER, Operation::Delete.as_str());
                        h.insert(FORCE_HEADER, FORCE_VALUE);
                        (key, Bytes::new())
                    }
                };
                (KvSubject { bucket, key }.to_string(), h, payload)
            })
            .collect();
        let mut todo: Vec<usize> = (0..messages.len()).collect();
        let mut window = PUBLISH_WINDOW;
        let mut done = 0;
        for attempt in 1..=WRITE_ATTEMPTS {
            let mut timed_out = Vec::new();
            let mut in_flight = FuturesUnordered::new();
            for &i in &todo {
                let (subject, headers, payload) = &messages[i];
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                    .map_err(|e| request_error(op, bucket, e))?;
                in_flight.push(async move { (i, ack.await) });
                if in_flight.len() >= window
                    && let Some((i, r)) = in_flight.next().await
                {
                    done += ack_outcome(op, bucket, i, r, &mut timed_out)?;
                }
            }
            while let Some((i, r)) = in_flight.next().await {
                done += ack_outcome(op, bucket, i, r, &mut timed_out)?;
            }
            if timed_out.is_empty() {
                return Ok(done);
            }
            tracing::warn!(
                bucket,
                attempt,
                timed_out = timed_out.len(),
                "NATS write: acks timed out; sending those again (same message ids)"
            );
            window = (window / 4).max(MIN_PUBLISH_WINDOW);
            todo = timed_out;
        }
        Err(NatsError::Timeout {
            op,
            bucket: bucket.to_string(),
        })
    }

    /// The JetStream context, for watches.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// The stream backing a bucket, with the contract's settings. Created as a
/// plain stream because async-nats's KV creation fails on nats-server 2.9.
pub fn stream_config(spec: &BucketSpec) -> stream::Config {
    stream::Config {
        name: StreamName(spec.name).to_string(),
        subjects: vec![KvSubject::all(spec.name).to_string()],
        max_messages_per_subject: spec.history,
        max_message_size: spec.max_value_size,
        allow_rollup: spec.allow_rollup,
        deny_purge: spec.deny_purge,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 1,
        max_consumers: MAX_CONSUMERS,
        republish: spec.republish.then(|| stream::Republish {
            source: KvSubject::all(spec.name).to_string(),
            destination: RepublishSubject::all(spec.name).to_string(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Consumers a bucket's stream may hold. Every device watches
/// `desired-state` through its own filtered consumer (plus one lingering
/// after a reconnect), so this bounds the fleet size. nats-server 2.15 gives
/// streams that set no limit a default of 1000 consumers (and treats 0 or -1
/// as "use the default"), which capped a fleet at about 1000 devices; the
/// fleet bench found it (docs/performance.md).
pub const MAX_CONSUMERS: i32 = 1_000_000;

/// Counts an ack: 1 when stored, 0 when it timed out (noted in
/// `timed_out` to be sent again), an error otherwise.
fn ack_outcome(
    op: &'static str,
    bucket: &str,
    i: usize,
    r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    timed_out: &mut Vec<usize>,
) -> Result<usize, NatsError> {
    match r {
        Ok(_) => Ok(1),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::TimedOut => {
            timed_out.push(i);
            Ok(0)
        }
        Err(e) => Err(request_error(op, bucket, e)),
    }
}

/// A prefix for the `Nats-Msg-Id` of one write call's messages, unique
/// across calls and operator restarts within the duplicate window.
fn unique_batch_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("iot-operator-{:x}-{t:x}-{n}", std::process::id())
}

fn unique_consumer_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("iot-operator-{:x}-{n}", std::process::id())
}

/// Reconnect delay: exponential from 250 ms to 8 s plus up to 50 % jitter,
/// so that a restarted server is not hit by every client at the same
/// instant.
fn reconnect_delay(attempt: usize) -> Duration {
    retry_backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(8))
        .with_jitter(retry_backoff::Jitter::Above(0.5))
        .delay(u32::try_from(attempt).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_is_capped() {
        assert!(reconnect_delay(0) < Duration::from_millis(400));
        for n in 0..100 {
            assert!(reconnect_delay(n) <= Duration::from_secs(12));
        }
        assert!(reconnect_delay(10) >= Duration::from_secs(8));
    }

    /// Configuration errors are typed, permanent and keep their cause; they
    /// are found before any server is contacted.
    #[tokio::test]
    async fn configuration_errors_are_typed_and_keep_their_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let seed_file = dir.join("operator.nk");
        std::fs::write(&seed_file, "not a seed\n").unwrap();
        let base = NatsConfig {
            urls: vec!["nats://127.0.0.1:1".into()],
            ..NatsConfig::default()
        };
        let connect = |c: NatsConfig| async move { Nats::connect(&c).await.unwrap_err() };

        let e = connect(NatsConfig {
            credentials: Credentials::Nkey { seed_file },
            ..base.clone()
        })
        .await;
        assert!(
            matches!(e, NatsError::Seed { .. }) && e.is_permanent(),
            "{e}"
        );
        let shown = error_report::Chain(&e).to_string();
        assert!(shown.contains("operator.nk"), "{shown}");
        assert!(std::error::Error::source(&e).is_some());

        let e = connect(NatsConfig {
            credentials: Credentials::CredsFile {
                path: dir.join("absent.creds"),
            },
            ..base.clone()
        })
        .await;
        assert!(
            matches!(e, NatsError::CredsFile { .. }) && e.is_permanent(),
            "{e}"
        );

        let mut tls = base.clone();
        tls.tls.ca_file = Some(dir.join("absent.pem"));
        let e = connect(tls).await;
        assert!(matches!(e, NatsError::TlsFileMissing { .. }), "{e}");

        let e = connect(NatsConfig {
            urls: vec![],
            ..base.clone()
        })
        .await;
        assert!(matches!(e, NatsError::NoServer) && e.is_permanent(), "{e}");
        let e = connect(NatsConfig {
            urls: vec!["nats://[::1".into()],
            ..base
        })
        .await;
        assert!(
            matches!(e, NatsError::BadUrl { .. }) && e.is_permanent(),
            "{e}"
        );
        assert!(
            !NatsError::Timeout {
                op: "scan",
                bucket: "b".into()
            }
            .is_permanent()
        );
    }

    #[test]
    fn stream_config_follows_the_bucket_spec() {
        let c = stream_config(&protocol::buckets::DEVICE_STATUS);
        assert_eq!(c.name, "KV_device-status");
        assert_eq!(c.subjects, vec!["$KV.device-status.>".to_string()]);
        assert!(!c.allow_rollup);
        assert!(c.deny_purge);
        assert!(c.allow_direct);
    }
}
