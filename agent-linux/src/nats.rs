//! Everything the agent says to NATS, in one module: the connection, the
//! desired-state watch, and status/heartbeat writes.
//!
//! Built for least-privilege device credentials (see NATS-NOTES.md): the
//! watch is a named ordered consumer whose filter is in the create subject
//! (`$JS.API.CONSUMER.CREATE.KV_desired-state.<name>.$KV.desired-state.<id>.>`),
//! the inbox prefix is `_INBOX.<id>`, point reads use direct-get by subject,
//! and writes are plain JetStream publishes to the device's own keys. No
//! stream info, no unfiltered consumer create, no KV helper calls.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use async_nats_device as async_nats;
use bytes::Bytes;
use futures::StreamExt;

use crate::backoff;
use crate::config::{Config, Credentials};
use protocol::keys::{
    DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET, DeploymentKey,
    DeviceFilter, KvSubject, StreamName,
};

/// How long a JetStream request (consumer create, publish ack) may take.
/// A permission denial has no reply, so it surfaces as this timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a NATS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Reading credential or TLS files, or configuring the client.
    #[error("NATS client setup: {0}")]
    Setup(String),
    /// Creating the watch consumer failed.
    #[error(
        "cannot create the desired-state watch: {0} (a timeout can also mean the credentials do not allow $JS.API.CONSUMER.CREATE.KV_desired-state.*.$KV.desired-state.<device>.>)"
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
}

/// Builds the client options from the configuration.
async fn connect_options(config: &Config) -> Result<async_nats::ConnectOptions, NatsError> {
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
            async move {
                match event {
                    async_nats::Event::Connected => crate::info!("nats: connected"),
                    async_nats::Event::Disconnected => crate::warn!("nats: disconnected"),
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
        let opts = connect_options(config).await?;
        let client = opts
            .connect(config.nats.urls.as_slice())
            .await
            .map_err(|e| NatsError::Setup(e.to_string()))?;
        let js = jetstream::new(client.clone());
        Ok(Session {
            client,
            js,
            device_id: config.device_id.clone(),
        })
    }

    /// A session for `device_id` over an existing client. The agent uses
    /// [`Session::connect`]; the fleet bench multiplexes many simulated
    /// devices over a few connections and drives the same watch and status
    /// code through this.
    pub fn from_client(client: async_nats::Client, device_id: &str) -> Session {
        let js = jetstream::new(client.clone());
        Session {
            client,
            js,
            device_id: device_id.to_string(),
        }
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts watching this device's desired-state keys: the last value of
    /// each key first (the snapshot), then every change.
    pub async fn watch(&self) -> Result<Watch, NatsError> {
        let stream = self
            .js
            .get_stream_no_info(StreamName(DESIRED_STATE_BUCKET).to_string())
            .await
            .map_err(|e| NatsError::Watch(e.to_string()))?;
        let filter = KvSubject {
            bucket: DESIRED_STATE_BUCKET,
            key: DeviceFilter::new(&self.device_id).map_err(|e| NatsError::Watch(e.to_string()))?,
        }
        .to_string();
        // A fresh name per watch: an old ephemeral consumer of a previous run
        // may linger until its inactivity threshold.
        let name = format!("iot-agent-{}-{:x}", self.device_id, nonce());
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                name: Some(name),
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Watch(e.to_string()))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| NatsError::Watch(e.to_string()))?;
        Ok(Watch {
            messages,
            prefix: format!("$KV.{DESIRED_STATE_BUCKET}.{}.", self.device_id),
            snapshot_pending: pending,
            snapshot_done: false,
            announce_done: pending == 0,
        })
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

/// A live watch. Survives reconnects and server restarts (the ordered
/// consumer recreates itself from the last delivered sequence).
pub struct Watch {
    messages: push::Ordered,
    prefix: String,
    snapshot_pending: u64,
    snapshot_done: bool,
    announce_done: bool,
}

impl Watch {
    /// The next event. `None` means the watch is gone and must be created
    /// again (which delivers a fresh snapshot).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if self.announce_done && !self.snapshot_done {
                self.snapshot_done = true;
                return Some(WatchEvent::SnapshotComplete);
            }
            let msg = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => {
                    // Errors (missed heartbeats, recreation attempts) do not
                    // end an ordered consumer; it keeps going.
                    crate::warn!("nats: desired-state watch: {e}");
                    continue;
                }
            };
            if !self.snapshot_done {
                match msg.info() {
                    Ok(info) if info.pending == 0 => self.announce_done = true,
                    Ok(_) => {}
                    Err(_) => {
                        self.snapshot_pending = self.snapshot_pending.saturating_sub(1);
                        if self.snapshot_pending == 0 {
                            self.announce_done = true;
                        }
                    }
                }
            }
            let m = msg.message;
            let Some(rest) = m.subject.as_str().strip_prefix(&self.prefix) else {
                crate::warn!("nats: ignoring foreign subject {}", m.subject);
                continue;
            };
            if protocol::keys::validate_deployment_name(rest).is_err() {
                crate::warn!("nats: ignoring key with an invalid deployment name {rest:?}");
                continue;
            }
            let deployment = rest.to_string();
            let op = m
                .headers
                .as_ref()
                .and_then(|h| h.get(KV_OPERATION))
                .map(|v| v.as_str().to_string());
            return Some(match op.as_deref() {
                Some("DEL") => WatchEvent::Delete { deployment },
                Some("PURGE") => WatchEvent::Purge { deployment },
                _ => WatchEvent::Put {
                    deployment,
                    value: m.payload,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
