//! Who may touch which NATS subject: the least-privilege rules of the
//! contract, and the nats-server authorization that enforces them.
//!
//! A device may create a consumer only through the filtered create subject
//! for its own keys, direct-get only its own keys, publish only its own
//! status and heartbeat, and receive only on its own inbox prefix and on the
//! republished subjects of its own desired-state keys. Never
//! `$JS.>`, never the unfiltered consumer create (it lets a device read every
//! key), never STREAM.INFO (it lists every key), never a direct get by
//! sequence. The operator gets what its reconcile and watches need; only an
//! admin identity may create buckets.

use std::format;
use std::string::String;
use std::vec::Vec;

use crate::keys::{
    DESIRED_STATE_BUCKET, DEVICE_HEARTBEAT_BUCKET, DEVICE_STATUS_BUCKET, REPUBLISH_PREFIX,
};

/// Inbox prefix the operator uses, so its replies stay on its own subjects.
pub const OPERATOR_INBOX_PREFIX: &str = "_INBOX.operator";

/// Inbox prefix a device uses: `_INBOX.<device_id>`.
pub fn device_inbox_prefix(device_id: &str) -> String {
    format!("_INBOX.{device_id}")
}

/// Subjects a device may publish to.
pub fn device_publish(device_id: &str) -> Vec<String> {
    let ds = DESIRED_STATE_BUCKET;
    let id = device_id;
    std::vec![
        format!("$JS.API.CONSUMER.CREATE.KV_{ds}.*.$KV.{ds}.{id}.>"),
        format!("$JS.API.DIRECT.GET.KV_{ds}.$KV.{ds}.{id}.>"),
        format!("$JS.FC.KV_{ds}.>"),
        format!("$KV.{DEVICE_STATUS_BUCKET}.{id}.*"),
        format!("$KV.{DEVICE_HEARTBEAT_BUCKET}.{id}"),
    ]
}

/// Subjects a device may subscribe to: its inbox, and the republished
/// desired state of its own keys (its live watch).
pub fn device_subscribe(device_id: &str) -> Vec<String> {
    std::vec![
        format!("{}.>", device_inbox_prefix(device_id)),
        format!("{REPUBLISH_PREFIX}.{DESIRED_STATE_BUCKET}.{device_id}.>"),
    ]
}

/// Subjects the operator may publish to: KV reads, watches and writes of
/// desired state; reads and watches of status and heartbeats, and the
/// delete markers that decommission a board (deleting its Device removes
/// its status and heartbeat keys); no stream creation, purge or message
/// delete. A subject allow-list cannot tell a delete marker from a put on
/// the same key: the operator could write status and heartbeat values too;
/// it only ever deletes them.
pub fn operator_publish() -> Vec<String> {
    let mut out = std::vec![
        format!("$KV.{DESIRED_STATE_BUCKET}.>"),
        format!("$KV.{DEVICE_STATUS_BUCKET}.>"),
        format!("$KV.{DEVICE_HEARTBEAT_BUCKET}.>"),
    ];
    for b in [
        DESIRED_STATE_BUCKET,
        DEVICE_STATUS_BUCKET,
        DEVICE_HEARTBEAT_BUCKET,
    ] {
        out.extend([
            format!("$JS.API.STREAM.INFO.KV_{b}"),
            format!("$JS.API.DIRECT.GET.KV_{b}.$KV.{b}.>"),
            format!("$JS.API.CONSUMER.CREATE.KV_{b}"),
            format!("$JS.API.CONSUMER.CREATE.KV_{b}.*.$KV.{b}.>"),
            format!("$JS.API.CONSUMER.INFO.KV_{b}.*"),
            format!("$JS.API.CONSUMER.DELETE.KV_{b}.*"),
            format!("$JS.FC.KV_{b}.>"),
        ]);
    }
    out
}

/// Subjects the operator may subscribe to.
pub fn operator_subscribe() -> Vec<String> {
    std::vec![format!("{OPERATOR_INBOX_PREFIX}.>")]
}

/// An identity in the generated server configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// May do anything in the account, including creating buckets.
    Admin,
    /// The operator.
    Operator,
    /// One device.
    Device(&'a str),
}

/// The nats-server configuration for `users` (role, nkey public key): one
/// explicit JetStream account and no `authorization` block, so the shape in
/// which nats-server 2.9.x adds an implicit no-auth user (CVE-2023-47090)
/// never appears, and allow-lists only.
pub fn nats_server_config(users: &[(Role<'_>, &str)]) -> String {
    let list = |subjects: Vec<String>| {
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut body = String::new();
    for (role, nkey) in users {
        let (comment, perms) = match role {
            Role::Admin => ("admin: creates buckets (iot-operator init)".into(), None),
            Role::Operator => (
                "operator: reconcile, apply, delete, status".into(),
                Some((operator_publish(), operator_subscribe())),
            ),
            Role::Device(id) => (
                format!("device {id}"),
                Some((device_publish(id), device_subscribe(id))),
            ),
        };
        body.push_str(&format!("      # {comment}\n"));
        match perms {
            None => body.push_str(&format!("      {{ nkey: {nkey} }}\n")),
            Some((publish, subscribe)) => body.push_str(&format!(
                "      {{ nkey: {nkey}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n",
                list(publish),
                list(subscribe)
            )),
        }
    }
    format!(
        "# Generated by `cargo xtask creds`; regenerate instead of editing.\n\
         # Users authenticate with nkeys; the server holds public keys only.\n\
         accounts {{\n  IOT {{\n    jetstream: enabled\n    users: [\n{body}    ]\n  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rules_name_only_its_own_keys() {
        let p = device_publish("pi-1");
        assert!(p.iter().all(|s| !s.starts_with("$JS.>")));
        assert!(p.contains(
            &"$JS.API.CONSUMER.CREATE.KV_desired-state.*.$KV.desired-state.pi-1.>".into()
        ));
        assert!(
            !p.iter()
                .any(|s| s == "$JS.API.CONSUMER.CREATE.KV_desired-state")
        );
        assert!(!p.iter().any(|s| s.contains("STREAM.INFO")));
        assert_eq!(
            device_subscribe("pi-1"),
            ["_INBOX.pi-1.>", "$KVR.desired-state.pi-1.>"]
        );
    }

    #[test]
    fn config_has_one_account_and_no_authorization_block() {
        let c = nats_server_config(&[(Role::Admin, "UA"), (Role::Device("d1"), "UD")]);
        assert!(c.contains("accounts {") && !c.contains("authorization"));
        assert!(c.contains("{ nkey: UA }"));
        assert!(c.contains("\"_INBOX.d1.>\""));
    }
}
