//! What goes into a board's root filesystem: the agent's config (the
//! agent's own [`Config`] type, validated as the agent validates it, written
//! as TOML), credential files, the systemd unit, the hostname. Pure
//! functions, so they are unit-tested without an image.

use agent_config::Config;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::flags::Args;

/// Where the agent binary goes on the board.
pub const AGENT_BIN: &str = "/usr/local/bin/iot-agent";
/// The agent's configuration directory.
pub const CONFIG_DIR: &str = "/etc/iot-agent";
/// The agent's configuration file.
pub const CONFIG_FILE: &str = "/etc/iot-agent/config.toml";
/// The nkey seed file, for `nkey` credentials.
pub const NKEY_FILE: &str = "/etc/iot-agent/nats.nk";
/// The creds file, for `creds-file` credentials.
pub const CREDS_FILE: &str = "/etc/iot-agent/nats.creds";
/// The device's sealing key (`[secrets] key_file`): the `.xk` beside its
/// NATS credential file, or, without one, created by the agent at its
/// first start.
pub const SEALING_KEY_FILE: &str = "/etc/iot-agent/device.xk";
/// The systemd unit.
pub const UNIT_FILE: &str = "/etc/systemd/system/iot-agent.service";
/// The symlink that enables the unit at boot.
pub const UNIT_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/iot-agent.service";
/// The unit that stops the workloads at shutdown ([`workloads_stop_unit`]).
pub const STOP_UNIT_FILE: &str = "/etc/systemd/system/iot-workloads-stop.service";
/// The symlink that enables it.
pub const STOP_UNIT_WANTS: &str =
    "/etc/systemd/system/multi-user.target.wants/iot-workloads-stop.service";
/// The agent's state directory on the board.
pub const STATE_DIR: &str = "/var/lib/iot-agent";

/// How the device authenticates to NATS: the agent's own type. In an
/// [`Identity`] the file paths are on the host; [`config_toml`] names the
/// places on the board they are copied to ([`credential_file`]).
pub use agent_config::Credentials;

/// Help text for the credentials options, shared by `image` and `flash`.
pub const CREDENTIALS_HELP: &str = "    NATS credentials (at most one kind; default: none):
      --nats-user USER --nats-password PASS   (or --nats-password-file FILE)
      --nats-token TOKEN                      (or --nats-token-file FILE)
      --nats-nkey SEED_FILE                   nkey seed, copied to /etc/iot-agent/nats.nk (0600)
      --nats-creds CREDS_FILE                 JWT creds, copied to /etc/iot-agent/nats.creds (0600)
    With --nats-nkey DIR/ID.nk or --nats-creds DIR/ID.creds, the device's sealing
    key DIR/ID.xk (written by `cargo xtask creds`; created there if missing) is
    copied to /etc/iot-agent/device.xk (0600). Otherwise the agent creates that
    key at its first start. Either way [secrets] key_file names it.";

fn secret(args: &mut Args, opt: &str, file_opt: &str) -> Result<Option<String>> {
    let direct = args.value(opt)?;
    let file = args.path(file_opt)?;
    match (direct, file) {
        (Some(_), Some(_)) => bail!("give either {opt} or {file_opt}, not both"),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(f)) => {
            let v = std::fs::read_to_string(&f)
                .with_context(|| format!("read {file_opt} {}", f.display()))?;
            Ok(Some(v.trim_end_matches(['\r', '\n']).to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// Takes the credentials options from `args`.
pub fn credentials_from_args(args: &mut Args) -> Result<Credentials> {
    let user = args.value("--nats-user")?;
    let password = secret(args, "--nats-password", "--nats-password-file")?;
    let token = secret(args, "--nats-token", "--nats-token-file")?;
    let nkey = args.path("--nats-nkey")?;
    let creds = args.path("--nats-creds")?;
    let kinds = [
        user.is_some() || password.is_some(),
        token.is_some(),
        nkey.is_some(),
        creds.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        bail!(
            "give one kind of NATS credentials: user+password, token, nkey or creds file, not several"
        );
    }
    let readable = |p: &PathBuf, what: &str| -> Result<()> {
        std::fs::metadata(p)
            .with_context(|| format!("{what} {} cannot be read; check the path", p.display()))
            .map(drop)
    };
    Ok(match (user, password, token, nkey, creds) {
        (Some(user), Some(password), ..) => Credentials::UserPassword { user, password },
        (Some(_), None, ..) => {
            bail!("--nats-user needs --nats-password or --nats-password-file")
        }
        (None, Some(_), ..) => bail!("--nats-password needs --nats-user"),
        (_, _, Some(token), ..) => Credentials::Token { token },
        (_, _, _, Some(p), _) => {
            readable(&p, "--nats-nkey")?;
            Credentials::Nkey { seed_file: p }
        }
        (_, _, _, _, Some(p)) => {
            readable(&p, "--nats-creds")?;
            Credentials::CredsFile { path: p }
        }
        _ => Credentials::None,
    })
}

/// The credential file `credentials` names on the host, and where on the
/// board it goes (mode 0600), when it names one.
pub fn credential_file(credentials: &Credentials) -> Option<(&Path, &'static str)> {
    match credentials {
        Credentials::Nkey { seed_file } => Some((seed_file, NKEY_FILE)),
        Credentials::CredsFile { path } => Some((path, CREDS_FILE)),
        _ => None,
    }
}

/// Where the device's sealing key is on the host: `ID.xk` beside the NATS
/// credential file `ID.nk` or `ID.creds` (the layout `cargo xtask creds`
/// writes), when the credentials name a file.
pub fn sealing_key_source(credentials: &Credentials) -> Option<PathBuf> {
    let (host, _) = credential_file(credentials)?;
    Some(host.with_extension(crate::creds::SEALING_KEY_EXT))
}

/// Everything that identifies one device.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The device id (a NATS key token).
    pub device_id: String,
    /// The hostname written to `/etc/hostname`.
    pub hostname: String,
    /// NATS server URLs.
    pub nats_urls: Vec<String>,
    /// NATS credentials.
    pub credentials: Credentials,
    /// The board's `[labels]` (`--label KEY=VALUE`; `board` defaults to the
    /// board's name).
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    /// Takes `--device-id`, `--hostname`, `--nats-url`, `--label` and
    /// credentials.
    pub fn from_args(args: &mut Args) -> Result<Identity> {
        let device_id = args.required("--device-id", "ID (e.g. pi-001)")?;
        protocol::keys::validate_device_id(&device_id)
            .map_err(|e| anyhow::anyhow!("--device-id {device_id:?}: {e}"))?;
        let hostname = match args.value("--hostname")? {
            Some(h) => h,
            None => device_id.to_ascii_lowercase().replace('_', "-"),
        };
        validate_hostname(&hostname)?;
        let nats_urls = args.values("--nats-url")?;
        if nats_urls.is_empty() {
            bail!(
                "give the NATS server with --nats-url nats://HOST:4222 (repeat it for a cluster)"
            );
        }
        for u in &nats_urls {
            validate_url(u)?;
        }
        let credentials = credentials_from_args(args)?;
        let mut labels = BTreeMap::new();
        for l in args.values("--label")? {
            let (k, v) = l.split_once('=').with_context(|| {
                format!("--label {l:?} must be KEY=VALUE, e.g. --label site=lyon")
            })?;
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(Identity {
            device_id,
            hostname,
            nats_urls,
            credentials,
            labels,
        })
    }

    /// Labels the board by its name (`board=rpi4`) unless `--label board=...`
    /// said otherwise: what Deployments most often select on.
    pub fn label_board(&mut self, board: &str) {
        self.labels
            .entry("board".to_string())
            .or_insert_with(|| board.to_string());
    }
}

fn validate_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !ok {
        bail!(
            "hostname {h:?} is not valid (1-63 letters, digits and inner '-'); pass --hostname NAME"
        );
    }
    Ok(())
}

fn validate_url(u: &str) -> Result<()> {
    let rest = ["nats://", "tls://"]
        .iter()
        .find_map(|s| u.strip_prefix(s))
        .with_context(|| {
            format!("--nats-url {u:?} must start with nats:// or tls://, e.g. nats://nats.example.net:4222")
        })?;
    let host = rest.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        bail!("--nats-url {u:?} has no HOST[:PORT]; e.g. nats://nats.example.net:4222");
    }
    Ok(())
}

/// The agent's configuration for `id`: the agent's defaults, the board's
/// paths, checked with the agent's own validation.
pub fn device_config(id: &Identity) -> Result<Config> {
    let mut config = Config::new(&id.device_id, STATE_DIR, id.nats_urls.clone());
    config.labels = id.labels.clone();
    config.secrets.key_file = Some(SEALING_KEY_FILE.into());
    config.nats.credentials = match &id.credentials {
        Credentials::Nkey { .. } => Credentials::Nkey {
            seed_file: NKEY_FILE.into(),
        },
        Credentials::CredsFile { .. } => Credentials::CredsFile {
            path: CREDS_FILE.into(),
        },
        other => other.clone(),
    };
    config
        .validate()
        .context("the agent would refuse this configuration")?;
    Ok(config)
}

/// The agent's `config.toml` for `id`.
pub fn config_toml(id: &Identity) -> Result<String> {
    let body = device_config(id)?
        .to_toml()
        .context("render the agent config")?;
    Ok(format!(
        "# iot-agent configuration for device {}, written by `cargo xtask image`.\n{body}",
        id.device_id
    ))
}

/// The systemd unit that runs the agent at boot.
pub fn unit() -> String {
    format!(
        "\
[Unit]
Description=IoT fleet agent: runs this device's NATS desired state with Podman
Documentation=https://example.invalid/iot-fleet
Wants=network-online.target podman.socket
After=network-online.target podman.socket

[Service]
ExecStart={AGENT_BIN} --config {CONFIG_FILE}
Restart=always
RestartSec=5
StateDirectory=iot-agent
StateDirectoryMode=0700

[Install]
WantedBy=multi-user.target
"
    )
}

/// A unit whose only job is at shutdown: `podman stop --all` with a 10 s
/// grace. Without it systemd stops each container's scope with SIGTERM and
/// waits its default 90 s, and a container whose PID 1 has no SIGTERM
/// handler (busybox httpd, many shells) ignores it, so every power-off took
/// 90 s. Apart from the agent's unit because the agent restarting (crash,
/// upgrade) must leave the workloads running.
pub fn workloads_stop_unit() -> String {
    "\
[Unit]
Description=Stop the fleet's containers with a short grace period at shutdown
Wants=podman.socket
After=podman.socket

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/usr/bin/podman stop --all --time 10
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"
    .to_string()
}

/// `/etc/hosts` with the Debian-style `127.0.1.1` line naming `hostname`.
pub fn hosts(old: &str, hostname: &str) -> String {
    let line = format!("127.0.1.1\t{hostname}");
    let mut found = false;
    let mut out: Vec<String> = old
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// The kernel command line with `add` appended, each parameter once.
pub fn cmdline(old: &str, add: &[String]) -> String {
    let mut words: Vec<&str> = old.split_whitespace().collect();
    for a in add {
        if !words.contains(&a.as_str()) {
            words.push(a);
        }
    }
    words.join(" ") + "\n"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(c: Credentials) -> Identity {
        Identity {
            device_id: "pi-001".into(),
            hostname: "pi-001".into(),
            nats_urls: vec!["nats://a:4222".into(), "nats://b:4222".into()],
            credentials: c,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn labels_come_from_the_flags_and_the_board_and_are_checked() {
        let mut a = Args::new(
            "disk-image",
            [
                "--device-id",
                "pi-001",
                "--nats-url",
                "nats://n:4222",
                "--label",
                "site=lyon",
            ]
            .map(String::from)
            .to_vec(),
        );
        let mut id = Identity::from_args(&mut a).unwrap();
        id.label_board("rpi4");
        let t = config_toml(&id).unwrap();
        assert!(
            t.ends_with("[labels]\nboard = \"rpi4\"\nsite = \"lyon\"\n"),
            "{t}"
        );
        // The user's own board label stays.
        id.labels.insert("board".into(), "kiosk-v2".into());
        id.label_board("rpi4");
        assert_eq!(id.labels["board"], "kiosk-v2");
        // The agent's own check refuses a bad one, naming it.
        id.labels.insert("-bad".into(), "x".into());
        let e = format!("{:#}", config_toml(&id).unwrap_err());
        assert!(e.contains("labels.\"-bad\""), "{e}");
        let mut a = Args::new(
            "disk-image",
            [
                "--device-id",
                "pi-001",
                "--nats-url",
                "nats://n:4222",
                "--label",
                "site",
            ]
            .map(String::from)
            .to_vec(),
        );
        let e = Identity::from_args(&mut a).err().unwrap().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
    }

    /// The exact file: settings the agent defaults are not written, so a
    /// board follows the agent's defaults and a table the user appends is
    /// not a duplicate.
    #[test]
    fn config_has_the_agent_format() {
        let t = config_toml(&id(Credentials::None)).unwrap();
        assert_eq!(
            t,
            r#"# iot-agent configuration for device pi-001, written by `cargo xtask image`.
version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
heartbeat_interval_secs = 30

[nats]
urls = ["nats://a:4222", "nats://b:4222"]

[nats.credentials]
type = "none"

[podman]
socket = "unix:///run/podman/podman.sock"

[secrets]
key_file = "/etc/iot-agent/device.xk"
"#
        );
    }

    /// The agent's README has users append a `[security]` table to the
    /// board's file; the agent's loader must still accept it.
    #[test]
    fn a_security_table_can_be_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut text = config_toml(&id(Credentials::None)).unwrap();
        text.push_str("\n[security]\nallowed_host_paths = [\"/srv\"]\nallowed_capabilities = [\"NET_ADMIN\"]\n");
        std::fs::write(&path, text).unwrap();
        let loaded = agent_config::Config::load(&path).unwrap();
        assert_eq!(loaded.security.allowed_host_paths, [PathBuf::from("/srv")]);
        assert_eq!(loaded.security.allowed_capabilities, ["NET_ADMIN"]);
    }

    #[test]
    fn each_credentials_kind_renders() {
        let cases = [
            (
                Credentials::UserPassword {
                    user: "u".into(),
                    password: "p\"w".into(),
                },
                "user-password",
                ("password", "p\"w"),
            ),
            (
                Credentials::Token { token: "t".into() },
                "token",
                ("token", "t"),
            ),
            (
                Credentials::Nkey {
                    seed_file: "x".into(),
                },
                "nkey",
                ("seed_file", NKEY_FILE),
            ),
            (
                Credentials::CredsFile { path: "x".into() },
                "creds-file",
                ("path", CREDS_FILE),
            ),
        ];
        for (c, ty, (k, val)) in cases {
            let v: toml::Value = toml::from_str(&config_toml(&id(c)).unwrap()).unwrap();
            let cr = &v["nats"]["credentials"];
            assert_eq!(cr["type"].as_str(), Some(ty));
            assert_eq!(cr[k].as_str(), Some(val));
        }
    }

    /// The file xtask writes is the one the agent reads: its own loader
    /// parses and validates it back to the same configuration, for every
    /// kind of credentials.
    #[test]
    fn the_agent_loads_the_generated_config() {
        for c in [
            Credentials::None,
            Credentials::UserPassword {
                user: "u".into(),
                password: "p\"w".into(),
            },
            Credentials::Token { token: "t".into() },
            Credentials::Nkey {
                seed_file: "host/seed.nk".into(),
            },
            Credentials::CredsFile {
                path: "host/x.creds".into(),
            },
        ] {
            let id = id(c);
            let loaded = agent_config::Config::parse(&config_toml(&id).unwrap()).unwrap();
            assert_eq!(loaded, device_config(&id).unwrap());
            assert_eq!(loaded.heartbeat_interval_secs, 30);
            assert_eq!(
                loaded.podman.socket,
                agent_config::DEFAULT_PODMAN_SOCKET,
                "the agent's default"
            );
        }
        // What the agent would refuse is refused here, with its reason.
        let mut bad = id(Credentials::None);
        bad.nats_urls.clear();
        let e = format!("{:#}", config_toml(&bad).unwrap_err());
        assert!(e.contains("nats.urls"), "{e}");
    }

    #[test]
    fn credential_files_go_to_fixed_places_on_the_board() {
        let nkey = Credentials::Nkey {
            seed_file: "/host/a.nk".into(),
        };
        assert_eq!(
            credential_file(&nkey),
            Some((Path::new("/host/a.nk"), NKEY_FILE))
        );
        let creds = Credentials::CredsFile {
            path: "/host/a.creds".into(),
        };
        assert_eq!(
            credential_file(&creds),
            Some((Path::new("/host/a.creds"), CREDS_FILE))
        );
        assert_eq!(credential_file(&Credentials::None), None);
    }

    #[test]
    fn the_sealing_key_is_the_xk_beside_the_nats_identity() {
        let nkey = Credentials::Nkey {
            seed_file: "/fleet/pi-001.nk".into(),
        };
        assert_eq!(
            sealing_key_source(&nkey),
            Some(PathBuf::from("/fleet/pi-001.xk"))
        );
        let creds = Credentials::CredsFile {
            path: "/fleet/pi-001.creds".into(),
        };
        assert_eq!(
            sealing_key_source(&creds),
            Some(PathBuf::from("/fleet/pi-001.xk"))
        );
        let token = Credentials::Token { token: "t".into() };
        assert_eq!(sealing_key_source(&token), None);
        // Every board's config names the key, baked or to be created.
        for c in [nkey, token, Credentials::None] {
            let config = device_config(&id(c)).unwrap();
            assert_eq!(
                config.secrets.key_file.as_deref(),
                Some(Path::new(SEALING_KEY_FILE))
            );
            assert_eq!(
                config.secrets.runtime_dir,
                Path::new(agent_config::DEFAULT_SECRETS_RUNTIME_DIR)
            );
        }
    }

    #[test]
    fn cmdline_and_hosts_are_idempotent() {
        let add = vec!["cgroup_enable=memory".to_string(), "quiet".to_string()];
        let once = cmdline("console=tty1 quiet\n", &add);
        assert_eq!(once, "console=tty1 quiet cgroup_enable=memory\n");
        assert_eq!(cmdline(&once, &add), once);
        let h = hosts("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n", "pi-001");
        assert_eq!(h, "127.0.0.1\tlocalhost\n127.0.1.1\tpi-001\n");
        assert_eq!(
            hosts("127.0.0.1 localhost", "x"),
            "127.0.0.1 localhost\n127.0.1.1\tx\n"
        );
    }

    #[test]
    fn bad_identity_options_say_what_to_do() {
        let parse = |s: &str| {
            let mut a = Args::new("image", s.split_whitespace().map(String::from).collect());
            Identity::from_args(&mut a)
                .map(drop)
                .unwrap_err()
                .to_string()
        };
        assert!(parse("--device-id a.b --nats-url nats://h").contains("'.'"));
        assert!(parse("--device-id a").contains("--nats-url"));
        assert!(parse("--device-id a --nats-url http://h").contains("nats://"));
        assert!(parse("--device-id a_b --nats-url nats://h --hostname -x").contains("--hostname"));
        assert!(
            parse("--device-id a --nats-url nats://h --nats-user u --nats-token t")
                .contains("one kind")
        );
        assert!(
            parse("--device-id a --nats-url nats://h --nats-user u").contains("--nats-password")
        );
    }
}
