//! Shared harness: a real nats-server, a real Podman service, and the real
//! `iot-agent` binary as a child process with a generated configuration.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use async_nats_device as async_nats;
use protocol::{
    BoundedVec, Container, DeploymentStatus, DesiredState, EnvVar, Heartbeat, IotScore,
    PayloadEncoding, PodmanV0Score, Port, PortProtocol, ScorePayload, Text,
};
use testkit::{NatsServer, PodmanService};

pub const IMAGE: &str = "localhost/iot-agent-test:busybox";
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Env {
    pub nats: NatsServer,
    pub podman: PodmanService,
    pub client: async_nats::Client,
    pub device: String,
    pub dir: tempfile::TempDir,
    pub desired: jetstream::kv::Store,
    pub status: jetstream::kv::Store,
    pub heartbeat: jetstream::kv::Store,
}

/// A loopback port nothing listens on (held by no one; a race with another
/// process binding it is harmless: it just would not speak NATS).
fn dead_port() -> u16 {
    testkit::free_port()
}

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use testkit::{http_get, unique};

impl Env {
    /// `None` when nats-server or Podman is missing outside CI.
    pub async fn start(name: &str) -> Option<Env> {
        Self::start_with(unique(name), None, None).await
    }

    /// A server started with `-c conf`, the harness connecting as `admin`.
    pub async fn start_with(
        device: String,
        conf: Option<&std::path::Path>,
        admin: Option<(&str, &str)>,
    ) -> Option<Env> {
        let mut opts = async_nats::ConnectOptions::new();
        if let Some((u, p)) = admin {
            opts = opts.user_and_password(u.into(), p.into());
        }
        let nats = NatsServer::start_with(testkit::NatsOptions {
            config_file: conf.map(|c| c.to_path_buf()),
            ..Default::default()
        })?;
        Self::start_on(device, nats, opts).await
    }

    /// An environment on a server the caller started, the harness's own
    /// client connecting with `admin` (it creates the buckets).
    pub async fn start_on(
        device: String,
        nats: NatsServer,
        admin: async_nats::ConnectOptions,
    ) -> Option<Env> {
        let podman = PodmanService::start()?;
        podman.ensure_busybox_image(IMAGE);
        let client = admin.connect(nats.url()).await.unwrap();
        testkit::create_buckets(&client).await.unwrap();
        let js = jetstream::new(client.clone());
        let desired = js.get_key_value("desired-state").await.unwrap();
        let status = js.get_key_value("device-status").await.unwrap();
        let heartbeat = js.get_key_value("device-heartbeat").await.unwrap();
        eprintln!("{} with device {device}", nats.version());
        Some(Env {
            nats,
            podman,
            client,
            device,
            dir: tempfile::tempdir().unwrap(),
            desired,
            status,
            heartbeat,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Writes the agent's configuration for this environment.
    pub fn write_config(&self) -> PathBuf {
        self.write_config_for(&self.nats.url())
    }

    /// Writes the agent's configuration with `url` as its working server
    /// (a proxy in front of this environment's server, say).
    pub fn write_config_for(&self, url: &str) -> PathBuf {
        let text = format!(
            r#"version = 1
device_id = "{}"
state_dir = "{}"
heartbeat_interval_secs = 1
[nats]
urls = ["nats://127.0.0.1:{}", "{}"]
[nats.credentials]
type = "none"
[podman]
socket = "{}"
stop_timeout_secs = 1
"#,
            self.device,
            self.state_dir().display(),
            // A server that never answers beside the real one: the agent
            // must use whichever of the configured servers is up.
            dead_port(),
            url,
            self.podman.uri()
        );
        std::fs::write(self.config_path(), text).unwrap();
        self.config_path()
    }

    pub fn spawn_agent(&self) -> Agent {
        self.write_config();
        self.spawn_agent_with_config()
    }

    /// Spawns the agent connecting to `url` instead of the server itself.
    pub fn spawn_agent_via(&self, url: &str) -> Agent {
        self.write_config_for(url);
        self.spawn_agent_with_config()
    }

    /// Spawns the agent with the configuration `config` as it is, its log
    /// (stderr) written to `log`.
    pub fn spawn_agent_logged(&self, config: &std::path::Path, log: &std::path::Path) -> Agent {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_iot-agent"))
            .arg("--config")
            .arg(config)
            .env("CONTAINERS_CONF", PodmanService::containers_conf())
            .env("IOT_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Agent { child: Some(child) }
    }

    /// Spawns the agent with the configuration file as it is.
    pub fn spawn_agent_with_config(&self) -> Agent {
        let config = self.config_path();
        let child = Command::new(env!("CARGO_BIN_EXE_iot-agent"))
            .arg("--config")
            .arg(config)
            .env("CONTAINERS_CONF", PodmanService::containers_conf())
            .env("IOT_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Agent { child: Some(child) }
    }

    pub fn key(&self, deployment: &str) -> String {
        protocol::DeploymentKey::new(&self.device, deployment)
            .unwrap()
            .to_string()
    }

    /// Puts a value, retrying while the test's own client reconnects (after
    /// a server restart).
    pub async fn put_raw(&self, deployment: &str, value: Vec<u8>) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self
                .desired
                .put(self.key(deployment), value.clone().into())
                .await
            {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("put {deployment}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("put {deployment}: {e}"),
            }
        }
    }

    pub async fn put(&self, deployment: &str, revision: u64, containers: Vec<Container<'static>>) {
        self.put_raw(deployment, encode_desired(deployment, revision, containers))
            .await;
    }

    pub async fn put_v1(
        &self,
        deployment: &str,
        revision: u64,
        containers: Vec<protocol::ContainerV1<'static>>,
    ) {
        self.put_raw(
            deployment,
            encode_desired_v1(deployment, revision, containers),
        )
        .await;
    }

    /// Appends `toml` to the `[podman]` table of the agent's configuration
    /// (the last table written).
    pub fn write_config_with_podman(&self, toml: &str) -> PathBuf {
        let path = self.write_config();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(toml);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `podman inspect` of a container, as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.podman.run(&["inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    pub async fn delete(&self, deployment: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self.desired.delete(self.key(deployment)).await {
                Ok(()) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("delete {deployment}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("delete {deployment}: {e}"),
            }
        }
    }

    /// The device's heartbeat and its format byte, once one was written.
    pub async fn latest_heartbeat(&self) -> Option<(u8, Heartbeat<'static>)> {
        let v = self.heartbeat.get(&self.device).await.ok()??;
        let h = protocol::wire::decode::<Heartbeat<'_>>(&v)
            .unwrap()
            .into_owned();
        Some((v[0], h))
    }

    /// Waits until the heartbeat (format byte, value) satisfies `pred`;
    /// returns it.
    pub async fn wait_heartbeat(
        &self,
        what: &str,
        pred: impl Fn(u8, &Heartbeat<'static>) -> bool,
    ) -> Heartbeat<'static> {
        let deadline = std::time::Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some((version, h)) = self.latest_heartbeat().await {
                if pred(version, &h) {
                    return h;
                }
                last = Some((version, h));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the heartbeat never became {what}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn status(&self, deployment: &str) -> Option<DeploymentStatus<'static>> {
        let v = self.status.get(self.key(deployment)).await.ok()??;
        Some(
            protocol::wire::decode::<DeploymentStatus<'_>>(&v)
                .unwrap()
                .into_owned(),
        )
    }

    /// Waits until the deployment's status satisfies `pred`; returns it.
    pub async fn wait_status(
        &self,
        deployment: &str,
        what: &str,
        pred: impl Fn(&DeploymentStatus<'static>) -> bool,
    ) -> DeploymentStatus<'static> {
        let deadline = std::time::Instant::now() + WAIT;
        let mut last = None;
        loop {
            let s = self.status(deployment).await;
            if s.as_ref().is_some_and(&pred) {
                return s.unwrap();
            }
            last = s.or(last);
            assert!(
                std::time::Instant::now() < deadline,
                "{deployment}: status never became {what}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// This device's containers: (name, id, state, revision label).
    pub fn containers(&self) -> Vec<(String, String, String, String)> {
        let out = self.podman.run(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=io.nationtech.iot.device={}", self.device),
            "--format",
            "{{.Names}}|{{.ID}}|{{.State}}|{{index .Labels \"io.nationtech.iot.revision\"}}",
        ]);
        let mut v: Vec<_> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split('|');
                let name = it.next()?.to_string();
                let id = it.next()?.to_string();
                // Podman 4 prints "Up 3 seconds"; newer ones "running".
                let state = it.next()?;
                let state = if state.starts_with("Up") || state == "running" {
                    "running".to_string()
                } else {
                    state.to_string()
                };
                Some((name, id, state, it.next().unwrap_or("").to_string()))
            })
            .collect();
        v.sort();
        v
    }

    pub fn container_name(&self, deployment: &str, container: &str) -> String {
        format!("{}_{deployment}_{container}", self.device)
    }

    /// Waits until `podman ps` shows exactly `names` running for this device.
    pub async fn wait_running(&self, names: &[String]) -> Vec<(String, String, String, String)> {
        let mut want: Vec<String> = names.to_vec();
        want.sort();
        let mut last = Vec::new();
        let ok = testkit::wait_until_async(WAIT, || {
            last = self.containers();
            let ok = last.iter().map(|c| c.0.clone()).collect::<Vec<_>>() == want
                && last.iter().all(|c| c.2 == "running");
            async move { ok }
        })
        .await;
        assert!(ok, "expected {want:?} running; have {last:?}");
        last
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.podman
            .remove_labelled("io.nationtech.iot.device", &self.device);
    }
}

/// The agent child process; SIGKILLed on drop.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    /// Sends SIGTERM and waits (up to [`WAIT`]) for the agent to exit;
    /// `None` if it did not.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let mut exit = None;
        testkit::wait_until(WAIT, || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        });
        exit
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn encode_desired(
    deployment: &str,
    revision: u64,
    containers: Vec<Container<'static>>,
) -> Vec<u8> {
    let score = IotScore::PodmanV0(PodmanV0Score {
        containers: BoundedVec::try_from_iter(containers).unwrap(),
    });
    let desired = DesiredState {
        deployment: Text::owned(deployment.to_string()),
        revision,
        score: score.to_payload().unwrap(),
        rollout: protocol::RolloutPolicy::default(),
        attempt: 0,
        gate: Default::default(),
        secrets: Default::default(),
    };
    protocol::wire::encode_to_vec(&desired).unwrap()
}

/// A `PodmanV1` desired state with the default rollout policy.
pub fn encode_desired_v1(
    deployment: &str,
    revision: u64,
    containers: Vec<protocol::ContainerV1<'static>>,
) -> Vec<u8> {
    let score = IotScore::PodmanV1(protocol::PodmanV1Score {
        containers: BoundedVec::try_from_iter(containers).unwrap(),
    });
    let desired = DesiredState {
        deployment: Text::owned(deployment.to_string()),
        revision,
        score: score.to_payload().unwrap(),
        rollout: protocol::RolloutPolicy::default(),
        attempt: 0,
        gate: Default::default(),
        secrets: Default::default(),
    };
    protocol::wire::encode_to_vec(&desired).unwrap()
}

pub fn encode_unknown_variant(deployment: &str, revision: u64) -> Vec<u8> {
    let desired = DesiredState {
        deployment: Text::owned(deployment.to_string()),
        revision,
        score: ScorePayload {
            type_name: Text::borrowed("PodmanV9"),
            encoding: PayloadEncoding::Json,
            data: protocol::Bytes::owned(b"{\"containers\":[]}".to_vec()),
        },
        rollout: protocol::RolloutPolicy::default(),
        attempt: 0,
        gate: Default::default(),
        secrets: Default::default(),
    };
    protocol::wire::encode_to_vec(&desired).unwrap()
}

fn texts(v: &[&str]) -> BoundedVec<Text<'static>, { protocol::limits::MAX_ARGS }> {
    BoundedVec::try_from_iter(v.iter().map(|s| Text::owned(s.to_string()))).unwrap()
}

/// A long-running container: `sleep` with an env var that makes specs differ.
pub fn sleeper(name: &str, tag: &str) -> Container<'static> {
    Container {
        command: Some(texts(&["/bin/sleep"])),
        args: Some(texts(&["3600"])),
        env: BoundedVec::try_from_iter([EnvVar {
            name: Text::borrowed("TAG"),
            value: Text::owned(tag.to_string()),
        }])
        .unwrap(),
        ..Container::new(Text::owned(name.to_string()), Text::borrowed(IMAGE))
    }
}

/// busybox httpd serving /www on `host_port` (127.0.0.1).
pub fn web(name: &str, host_port: u16) -> Container<'static> {
    let mut c = sleeper(name, "web");
    c.command = Some(texts(&["/bin/httpd"]));
    c.args = Some(texts(&["-f", "-p", "80", "-h", "/www"]));
    c.ports = BoundedVec::try_from_iter([Port {
        container_port: 80,
        host_port: Some(host_port),
        protocol: PortProtocol::Tcp,
        host_ip: Some(Text::borrowed("127.0.0.1")),
    }])
    .unwrap();
    c
}
