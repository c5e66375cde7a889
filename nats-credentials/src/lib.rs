//! How a NATS client of the fleet authenticates: the one [`Credentials`]
//! type the agent's configuration file, the operator's `--nats-*` flags and
//! `cargo xtask image` share, and the one reader of nkey seed files
//! ([`read_seed_file`]).
//!
//! No NATS client here (no tokio, no async-nats): xtask and the agent's
//! configuration use it without the network stack. Each binary hands the
//! result to its own `async_nats::ConnectOptions`.
//!
//! # Seed files
//!
//! [`parse_seed`] reads a seed file as the NATS reference client does
//! (nats.go's `NkeyOptionFromSeed`, through `nkeys.ParseDecoratedNKey`):
//! the seed is the first line that, without surrounding whitespace, starts
//! with `SU`, `SA` or `SO`. That one rule reads every shape the tools write:
//!
//! - `cargo xtask creds`: the seed and a newline;
//! - `nk -gen user > f`: the same; with `-pubout` the public key follows on
//!   a second line;
//! - `nsc`'s key store (`.nk`): the seed alone, no newline;
//! - a `.creds` file (JWT, then the seed between `-----BEGIN USER NKEY
//!   SEED-----` lines): the JWT line starts with `eyJ`, the seed line is
//!   the only one starting with `S`. Such a file belongs to credentials
//!   type `creds-file`, which also sends the JWT; read as a seed file it
//!   gives only the seed, as nats.go does.
//!
//! CRLF line ends and blank lines are fine. The seed is then decoded, so a
//! truncated or mistyped seed is reported when the file is read rather
//! than as an authorization failure from the server, and it must be a
//! user seed (`SU`): NATS clients authenticate as users.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[nats.credentials]` in the agent's file (tagged by `type`), and what the
/// operator's `--nats-user`/`--nats-token`/`--nats-nkey`/`--nats-creds`
/// choose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Credentials {
    /// No authentication.
    #[default]
    None,
    /// User name and password (tests and labs only).
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A bearer token.
    Token {
        /// The token.
        token: String,
    },
    /// An nkey seed in a file (challenge-response; the server holds no
    /// secret). Read with [`read_seed_file`].
    Nkey {
        /// File holding the seed (`SU...`), mode 0600.
        seed_file: PathBuf,
    },
    /// A `.creds` file (user JWT plus seed) for decentralized JWT mode.
    CredsFile {
        /// The file.
        path: PathBuf,
    },
}

/// What replaces a secret in [`Credentials::masked`].
pub const MASK: &str = "***";

impl Credentials {
    /// Whether the value itself is a secret (password, token), so whatever
    /// file holds it must be private. Seeds and creds files stay in their
    /// own files.
    pub fn holds_secret(&self) -> bool {
        matches!(
            self,
            Credentials::UserPassword { .. } | Credentials::Token { .. }
        )
    }

    /// A copy with the password or token replaced by [`MASK`], for display.
    pub fn masked(&self) -> Credentials {
        match self {
            Credentials::UserPassword { user, .. } => Credentials::UserPassword {
                user: user.clone(),
                password: MASK.into(),
            },
            Credentials::Token { .. } => Credentials::Token { token: MASK.into() },
            other => other.clone(),
        }
    }
}

/// Why a text holds no usable nkey seed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// No line starts with `SU`, `SA` or `SO`.
    #[error(
        "no nkey seed in it: expected a line starting with SU, as `cargo xtask creds`, `nk -gen user` and nsc write"
    )]
    Missing,
    /// The seed line does not decode (truncated, mistyped, bad checksum).
    #[error("its seed line is not a valid nkey seed")]
    Invalid {
        /// What the nkeys decoder found.
        #[source]
        source: nkeys::error::Error,
    },
    /// A valid seed of another kind than user.
    #[error(
        "it holds an {kind} seed; a NATS client authenticates with a user seed (SU...), e.g. from `nk -gen user`"
    )]
    NotUser {
        /// The kind found (`Account`, `Operator`).
        kind: String,
    },
}

/// Why a seed file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeedFileError {
    /// The file cannot be read.
    #[error("cannot read nkey seed file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is read but holds no usable seed.
    #[error("nkey seed file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: SeedError,
    },
}

/// Prefixes nats.go accepts as a seed line (operator, account, user).
const SEED_PREFIXES: [&str; 3] = ["SO", "SA", "SU"];

/// The user seed in a seed file's text (see the crate documentation for
/// the shapes read).
pub fn parse_seed(text: &str) -> Result<String, SeedError> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| SEED_PREFIXES.iter().any(|p| l.starts_with(p)))
        .ok_or(SeedError::Missing)?;
    // Decoding (base32, checksum, prefix) is the whole check: any 32 bytes
    // are an Ed25519 seed, and skipping the key derivation keeps the
    // agent's binary smaller.
    let (kind, _) = nkeys::decode_seed(seed).map_err(|source| SeedError::Invalid { source })?;
    match nkeys::KeyPairType::from(kind) {
        nkeys::KeyPairType::User => Ok(seed.to_string()),
        other => Err(SeedError::NotUser {
            kind: format!("{other:?}"),
        }),
    }
}

/// Reads the user seed from the file at `path`.
pub fn read_seed_file(path: &Path) -> Result<String, SeedFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_seed(&text).map_err(|source| SeedFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user() -> (String, String) {
        let kp = nkeys::KeyPair::new_user();
        (kp.seed().unwrap(), kp.public_key())
    }

    #[test]
    fn every_file_shape_the_tools_write() {
        let (seed, public) = user();
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        );
        for (shape, text) in [
            ("cargo xtask creds / nk -gen user", format!("{seed}\n")),
            ("nsc key store (no newline)", seed.clone()),
            ("nk -gen user -pubout", format!("{seed}\n{public}\n")),
            ("CRLF and blank lines", format!("\r\n  {seed}  \r\n\r\n")),
            ("nsc .creds", creds),
        ] {
            assert_eq!(parse_seed(&text).unwrap(), seed, "{shape}");
        }
    }

    #[test]
    fn unusable_contents_are_told_apart() {
        let (_, public) = user();
        for text in ["", "\n\n", &public, "not a seed\n"] {
            assert!(
                matches!(parse_seed(text), Err(SeedError::Missing)),
                "{text:?}"
            );
        }
        let e = parse_seed("SUAEXAMPLESEEDONLYFORTESTS\n").unwrap_err();
        assert!(matches!(e, SeedError::Invalid { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let e = parse_seed(&account).unwrap_err();
        assert!(
            matches!(&e, SeedError::NotUser { kind } if kind == "Account"),
            "{e}"
        );
        assert!(e.to_string().contains("SU"), "{e}");
    }

    #[test]
    fn file_errors_name_the_file_and_keep_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, _) = user();
        let good = dir.path().join("device.nk");
        std::fs::write(&good, format!("{seed}\n")).unwrap();
        assert_eq!(read_seed_file(&good).unwrap(), seed);

        let missing = dir.path().join("absent.nk");
        let e = read_seed_file(&missing).unwrap_err();
        assert!(matches!(e, SeedFileError::Read { .. }));
        assert!(e.to_string().contains("absent.nk"), "{e}");

        let bad = dir.path().join("bad.nk");
        std::fs::write(&bad, "hello\n").unwrap();
        let e = read_seed_file(&bad).unwrap_err();
        assert!(e.to_string().contains("bad.nk"), "{e}");
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<SeedError>().is_some());
    }

    /// The shapes existing agent configuration files use.
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Section {
        credentials: Credentials,
    }

    #[test]
    fn toml_shape_is_the_agent_configuration_format() {
        for (body, expect) in [
            ("type = \"none\"", Credentials::None),
            (
                "type = \"user-password\"\nuser = \"u\"\npassword = \"p\"",
                Credentials::UserPassword {
                    user: "u".into(),
                    password: "p".into(),
                },
            ),
            (
                "type = \"token\"\ntoken = \"t\"",
                Credentials::Token { token: "t".into() },
            ),
            (
                "type = \"nkey\"\nseed_file = \"/etc/iot-agent/device.nk\"",
                Credentials::Nkey {
                    seed_file: "/etc/iot-agent/device.nk".into(),
                },
            ),
            (
                "type = \"creds-file\"\npath = \"/etc/iot-agent/device.creds\"",
                Credentials::CredsFile {
                    path: "/etc/iot-agent/device.creds".into(),
                },
            ),
        ] {
            let text = format!("[credentials]\n{body}\n");
            let parsed: Section = toml::from_str(&text).unwrap();
            assert_eq!(parsed.credentials, expect, "{body}");
            // Written back, it reads the same.
            let again: Section = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
            assert_eq!(again, parsed);
        }
        for bad in [
            "type = \"kerberos\"",
            "type = \"token\"",
            "type = \"token\"\ntoken = \"t\"\nuser = \"u\"",
        ] {
            let text = format!("[credentials]\n{bad}\n");
            assert!(toml::from_str::<Section>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_masked_and_known() {
        let up = Credentials::UserPassword {
            user: "u".into(),
            password: "s3cret".into(),
        };
        assert!(up.holds_secret());
        assert_eq!(
            up.masked(),
            Credentials::UserPassword {
                user: "u".into(),
                password: MASK.into()
            }
        );
        let t = Credentials::Token { token: "t".into() };
        assert!(t.holds_secret());
        assert_eq!(t.masked(), Credentials::Token { token: MASK.into() });
        let n = Credentials::Nkey {
            seed_file: "/k".into(),
        };
        assert!(!n.holds_secret() && !Credentials::None.holds_secret());
        assert_eq!(n.masked(), n);
    }
}
