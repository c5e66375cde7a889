//! A real `nats-server -js` per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{find_binary, free_port, missing, wait_until};

/// Whether `dir` holds the ports file ending in `suffix` (the process's
/// pid) and it lists the client port `port`.
fn ports_file_names(dir: &Path, suffix: &str, port: u16) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().ends_with(suffix)
            && std::fs::read_to_string(e.path())
                .is_ok_and(|text| text.contains(&format!("127.0.0.1:{port}\"")))
    })
}

/// How to start a server.
#[derive(Debug, Default, Clone)]
pub struct NatsOptions {
    /// A configuration file (`-c`), e.g. generated authorization or TLS.
    pub config_file: Option<PathBuf>,
    /// Extra arguments appended to the command line.
    pub extra_args: Vec<String>,
    /// URL scheme to report (`nats` or `tls`).
    pub scheme: Option<&'static str>,
}

/// A running `nats-server` with JetStream on a free 127.0.0.1 port and a
/// temporary store. Killed on drop; the store is removed with it.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    opts: NatsOptions,
    child: Option<Child>,
    /// Where the server writes `<name>_<pid>.ports` once it listens: proof
    /// that *this* process is ready, which a bare TCP connect is not (the
    /// port may have been taken by another test's server between
    /// [`free_port`] and the bind, and a connect to a closed ephemeral port
    /// can even succeed against itself).
    ports_dir: tempfile::TempDir,
    /// JetStream set up in a wrapper configuration instead of by flags.
    reloadable: bool,
    /// Holds the configuration [`Self::start_with_config`] wrote.
    _config_dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a server from `NATS_SERVER_BIN` or `nats-server` on PATH.
    /// `None` when the binary is missing outside CI (the test should return).
    pub fn start() -> Option<NatsServer> {
        Self::start_with(NatsOptions::default())
    }

    /// Starts a server with options.
    pub fn start_with(opts: NatsOptions) -> Option<NatsServer> {
        Self::launch(opts, false, None)
    }

    /// Starts a server from configuration text (authorization, TLS...),
    /// written to a file in a temporary directory removed with the server.
    /// `opts.config_file` must be unset; the other options apply.
    pub fn start_with_config(config: &str, opts: NatsOptions) -> Option<NatsServer> {
        assert!(
            opts.config_file.is_none(),
            "start_with_config writes the config_file itself"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("nats-server.conf");
        std::fs::write(&file, config).expect("write the nats-server configuration");
        let opts = NatsOptions {
            config_file: Some(file),
            ..opts
        };
        Self::launch(opts, false, Some(dir))
    }

    /// Like [`Self::start_with`] (a `config_file` is required), with
    /// JetStream configured in a wrapper file that includes `config_file`
    /// rather than by `-js -sd`, so [`Self::reload`] works on 2.9.x too:
    /// 2.9.10 turns JetStream off on a reload when only the flags enabled it,
    /// and refuses the reload when a `jetstream {}` block and `-sd` differ.
    pub fn start_reloadable(opts: NatsOptions) -> Option<NatsServer> {
        assert!(
            opts.config_file.is_some(),
            "start_reloadable needs a config_file"
        );
        Self::launch(opts, true, None)
    }

    /// Finds the binary (or reports it missing), then starts the server on
    /// a free port with a fresh store.
    fn launch(
        opts: NatsOptions,
        reloadable: bool,
        config_dir: Option<tempfile::TempDir>,
    ) -> Option<NatsServer> {
        let Some(binary) = find_binary("NATS_SERVER_BIN", "nats-server") else {
            return missing("nats-server is not installed (or NATS_SERVER_BIN is wrong)");
        };
        let mut server = NatsServer {
            binary,
            port: free_port(),
            store: tempfile::tempdir().expect("temp dir"),
            opts,
            child: None,
            ports_dir: tempfile::tempdir().expect("temp dir"),
            reloadable,
            _config_dir: config_dir,
        };
        // A port taken between `free_port` and the bind makes the server
        // exit at once; a fresh port then is as good as the first.
        for _ in 0..5 {
            if server.spawn() {
                return Some(server);
            }
            server.port = free_port();
        }
        panic!(
            "nats-server exited at start five times (ports taken?); run with NATS_TEST_LOG=1 to see why"
        );
    }

    /// Starts the process and waits until it reports its ports; `false`
    /// when it exited instead (e.g. the port was in use).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(&self.binary);
        match (&self.opts.config_file, self.reloadable) {
            (Some(conf), true) => {
                // nats-server resolves includes relative to the including
                // file, so the wrapper sits beside the configuration.
                let dir = conf.parent().unwrap_or(Path::new("."));
                let name = conf.file_name().expect("config file name");
                let wrapper = dir.join(format!("testkit-{}.conf", self.port));
                std::fs::write(
                    &wrapper,
                    format!(
                        "jetstream {{ store_dir: \"{}\" }}\ninclude \"./{}\"\n",
                        self.store.path().display(),
                        name.to_string_lossy()
                    ),
                )
                .expect("write the wrapper configuration");
                cmd.arg("-c").arg(wrapper);
            }
            (conf, _) => {
                if let Some(conf) = conf {
                    cmd.arg("-c").arg(conf);
                }
                cmd.arg("-js").arg("-sd").arg(self.store.path());
            }
        }
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--ports_file_dir")
            .arg(self.ports_dir.path())
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("NATS_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("spawn nats-server");
        let suffix = format!("_{}.ports", child.id());
        let port = self.port;
        let dir = self.ports_dir.path().to_path_buf();
        let mut exited = false;
        let up = wait_until(Duration::from_secs(15), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                exited = true;
                return true;
            }
            ports_file_names(&dir, &suffix, port)
        });
        if exited {
            return false;
        }
        self.child = Some(child);
        assert!(
            up,
            "nats-server did not listen on 127.0.0.1:{port} within 15 s"
        );
        true
    }

    /// `nats://127.0.0.1:<port>` (or `tls://` when configured).
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.opts.scheme.unwrap_or("nats"),
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory, kept across [`Self::restart`].
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (SIGKILL) and waits for it; the store is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "nats-server exited at restart on port {} (taken meanwhile?); run with NATS_TEST_LOG=1 to see why",
            self.port
        );
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Makes the running server re-read its configuration file
    /// (`nats-server --signal reload=<pid>`), e.g. after a revocation.
    pub fn reload(&self) {
        let Some(pid) = self.pid() else { return };
        let out = Command::new(&self.binary)
            .arg("--signal")
            .arg(format!("reload={pid}"))
            .output()
            .expect("run nats-server --signal");
        assert!(
            out.status.success(),
            "nats-server --signal reload={pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The binary's `--version` output, e.g. `nats-server: v2.9.10`.
    pub fn version(&self) -> String {
        Command::new(&self.binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the contract's buckets ([`protocol::buckets::ALL`]) as plain
/// streams, the way `iot-operator init` does (async-nats's KV creation
/// fails on 2.9 servers).
pub async fn create_buckets(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    for spec in protocol::buckets::ALL {
        js.get_or_create_stream(stream_config(&spec)).await?;
    }
    Ok(())
}

/// The stream behind a bucket as tests create it. A deliberate second
/// spelling of `operator::nats::stream_config` (testkit cannot depend on the
/// operator, whose tests use testkit); `operator/tests/buckets.rs` checks the
/// two are equal, so agent tests run against the buckets the operator makes.
pub fn stream_config(
    spec: &protocol::buckets::BucketSpec,
) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    use protocol::keys::{KvSubject, RepublishSubject, StreamName};
    Config {
        name: StreamName(spec.name).to_string(),
        subjects: vec![KvSubject::all(spec.name).to_string()],
        max_messages_per_subject: spec.history,
        max_message_size: spec.max_value_size,
        allow_rollup: spec.allow_rollup,
        deny_purge: spec.deny_purge,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 1,
        // As `operator::nats::MAX_CONSUMERS`: nats-server 2.15 caps a stream
        // that sets no limit at 1000 consumers (one watch per device), so a
        // test with more devices than that would fail on 2.15 only.
        max_consumers: 1_000_000,
        republish: spec
            .republish
            .then(|| async_nats::jetstream::stream::Republish {
                source: KvSubject::all(spec.name).to_string(),
                destination: RepublishSubject::all(spec.name).to_string(),
                headers_only: false,
            }),
        ..Default::default()
    }
}
