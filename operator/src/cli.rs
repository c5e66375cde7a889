//! The command line's shared parts: the NATS options of every subcommand
//! that talks to NATS (here), the `status` table ([`status_table`]), the
//! `devices` table ([`devices_table`]) and its `-l` selector ([`selector`]).

use std::path::PathBuf;

use clap::Args;

use crate::nats::{Credentials, NatsConfig, TlsConfig};

mod devices_table;
pub mod selector;
mod status_table;
mod table;
pub use devices_table::{DEFAULT_SILENCE_SECS, devices_table};
pub use status_table::status_table;

/// How to reach NATS: `--nats-url` and one credential option.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (nats:// or tls://).
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub urls: Vec<String>,
    /// User name (with --nats-password); for tests and small setups.
    #[arg(long = "nats-user", env = "NATS_USER", requires = "password", conflicts_with_all = ["token", "nkey", "creds"])]
    pub user: Option<String>,
    /// Password for --nats-user.
    #[arg(
        long = "nats-password",
        env = "NATS_PASSWORD",
        requires = "user",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", conflicts_with_all = ["nkey", "creds"], hide_env_values = true)]
    pub token: Option<String>,
    /// File holding this identity's nkey seed (e.g. operator.nk from
    /// `cargo xtask creds`).
    #[arg(
        long = "nats-nkey",
        env = "NATS_NKEY",
        value_name = "FILE",
        conflicts_with = "creds"
    )]
    pub nkey: Option<PathBuf>,
    /// A .creds file (user JWT and seed), for decentralized JWT mode.
    #[arg(long = "nats-creds", env = "NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long = "nats-tls-cert",
        env = "NATS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        long = "nats-tls-key",
        env = "NATS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even with a nats:// URL.
    #[arg(long = "nats-tls-required", env = "NATS_TLS_REQUIRED")]
    pub tls_required: bool,
    /// Inbox prefix for replies; NATS permissions let this identity
    /// subscribe only below it.
    #[arg(
        long = "nats-inbox-prefix",
        env = "NATS_INBOX_PREFIX",
        default_value = "_INBOX.operator"
    )]
    pub inbox_prefix: String,
}

impl NatsArgs {
    /// The connection settings; `retry` keeps trying at start when no
    /// server answers (the controller) instead of failing (the CLI).
    pub fn to_config(&self, retry: bool) -> NatsConfig {
        let credentials = if let (Some(user), Some(password)) = (&self.user, &self.password) {
            Credentials::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }
        } else if let Some(t) = &self.token {
            Credentials::Token { token: t.clone() }
        } else if let Some(p) = &self.nkey {
            Credentials::Nkey {
                seed_file: p.clone(),
            }
        } else if let Some(p) = &self.creds {
            Credentials::CredsFile { path: p.clone() }
        } else {
            Credentials::None
        };
        NatsConfig {
            urls: self.urls.clone(),
            credentials,
            tls: TlsConfig {
                required: self.tls_required,
                ca_file: self.tls_ca.clone(),
                cert_file: self.tls_cert.clone(),
                key_file: self.tls_key.clone(),
            },
            inbox_prefix: self.inbox_prefix.clone(),
            retry_on_initial_connect: retry,
            client_name: "iot-operator".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn credentials_are_exclusive_and_mapped() {
        let t = T::try_parse_from([
            "x",
            "--nats-url",
            "nats://a:1,nats://b:2",
            "--nats-nkey",
            "/k.nk",
        ])
        .unwrap();
        let c = t.nats.to_config(false);
        assert_eq!(c.urls, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(
            c.credentials,
            Credentials::Nkey {
                seed_file: "/k.nk".into()
            }
        );
        assert_eq!(c.inbox_prefix, "_INBOX.operator");
        assert!(T::try_parse_from(["x", "--nats-nkey", "a", "--nats-creds", "b"]).is_err());
        assert!(T::try_parse_from(["x", "--nats-user", "u"]).is_err());
        assert!(T::try_parse_from(["x", "--nats-tls-cert", "c"]).is_err());
        let t = T::try_parse_from(["x", "--nats-user", "u", "--nats-password", "p"]).unwrap();
        assert!(matches!(
            t.nats.to_config(true).credentials,
            Credentials::UserPassword { .. }
        ));
    }
}
