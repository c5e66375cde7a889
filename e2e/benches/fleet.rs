//! Fleet simulator: N simulated devices in one process against a real
//! `nats-server`, one Deployment targeting all of them applied through the
//! operator's real reconcile, and a table of what it cost.
//!
//! Every simulated device runs the agent's own code: its desired-state
//! watch ([`agent_linux::nats::Session::watch`]: the subscription on the
//! republished keys, the one-shot snapshot, the merge by sequence), its reconciler ([`agent_linux::reconcile`]:
//! the postcard decode, the container plan) over an in-memory runtime in
//! place of Podman, and its status writer ([`agent_linux::agent::status_writer`]).
//! Devices are multiplexed over a few NATS connections (each still with its
//! own subscription and snapshot consumer), so no fd limit is raised.
//!
//! With `--strategy all-at-once|batch-sequence|both` it then rolls a new
//! revision out to every device through the controller's loop (a
//! reconcile per burst of device reports, as `operator::run`): time from
//! the spec change to Ready, reconciles, key scans, desired-state writes,
//! status patches and the operator thread's CPU (issue 17: the cost of
//! health-gated batches beside AllAtOnce).
//!
//! Run: `cargo xtask bench fleet --devices 1000 [--nats-server BIN]`
//! (or `cargo bench -p e2e --bench fleet -- --devices 1000`), e.g.
//! `NATS_SERVER_BIN=/usr/sbin/nats-server cargo bench -p e2e --bench fleet --
//! --devices 10000 --idle-secs 3 --strategy both`.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::{Semaphore, mpsc, watch};

use agent_linux::nats::{Session, WatchEvent};
use agent_linux::reconcile::{self, Target};
use agent_linux::testing::MemoryRuntime;
use operator::crd::{Batch, Deployment, DeploymentSpec, Rollout, RolloutStrategy, Score};
use operator::nats::Nats;
use operator::status::StatusCache;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig};
use protocol::keys::{DESIRED_STATE_BUCKET, StreamName};
use protocol::{Heartbeat, Phase, Text};

#[derive(Parser, Debug)]
#[command(about = "Fleet simulator: N devices, one Deployment, measured")]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// The nats-server binary (default: NATS_SERVER_BIN, else `nats-server` on PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// NATS connections the devices share (default: one per 100 devices).
    #[arg(long)]
    connections: Option<usize>,
    /// Watches being created at once (devices booting together).
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Seconds the idle phase lasts (server CPU with N consumers and no change).
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Upper bound for each waiting phase, in seconds.
    #[arg(long, default_value_t = 300)]
    phase_timeout_secs: u64,
    /// Puts to keys no device watches, issued before the apply, to measure
    /// the server's per-put cost with N watches in place (0: skip).
    #[arg(long, default_value_t = 1000)]
    probe_puts: usize,
    /// Measure the inventory instead (issue 15): N boards heartbeating at
    /// `--heartbeat-secs`, the operator's inventory loop against a real
    /// kube-apiserver (KUBEBUILDER_ASSETS), API writes per minute.
    #[arg(long)]
    inventory: bool,
    /// Inventory: seconds between a board's heartbeats (the agent's default).
    #[arg(long, default_value_t = agent_config::DEFAULT_HEARTBEAT_SECS)]
    heartbeat_secs: u64,
    /// Inventory: the operator's --device-status-refresh-secs.
    #[arg(long, default_value_t = 300)]
    device_status_refresh_secs: u64,
    /// Inventory: the operator's --device-silence-secs.
    #[arg(long, default_value_t = 300)]
    device_silence_secs: u64,
    /// Inventory: seconds of steady state measured (at least one refresh
    /// interval, so that every Device's lastSeen is refreshed in it).
    #[arg(long, default_value_t = 300)]
    measure_secs: u64,
    /// Then roll a new revision out to every device through the controller's
    /// loop (a reconcile on every device report, as `operator::run` does),
    /// with this strategy: `all-at-once`, `batch-sequence` (`--batches`,
    /// minHealthySeconds 0), or `both`, one after the other; measured from
    /// the spec change to Ready True at the new generation. The devices
    /// then heartbeat every `--heartbeat-secs`.
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Rollouts: reconcile on device reports only, not also after each of
    /// the controller's own status patches (which `operator::run`, watching
    /// its Deployments without a generation filter, does).
    #[arg(long)]
    no_status_echo: bool,
    /// BatchSequence: batches, the implicit last one included; each explicit
    /// batch takes 100/B % of the targets.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20))]
    batches: u32,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The rollouts `--strategy` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StrategyArg {
    AllAtOnce,
    BatchSequence,
    Both,
}

impl StrategyArg {
    fn strategies(self) -> Vec<RolloutStrategy> {
        match self {
            StrategyArg::AllAtOnce => vec![RolloutStrategy::AllAtOnce],
            StrategyArg::BatchSequence => vec![RolloutStrategy::BatchSequence],
            StrategyArg::Both => vec![RolloutStrategy::AllAtOnce, RolloutStrategy::BatchSequence],
        }
    }
}

/// What the device thread tells the measuring side.
enum DevEvent {
    /// The device's watch exists (consumer created); how long it took.
    Ready(Duration),
    /// The device could not create its watch.
    Failed(usize, String),
    /// The device's watch delivered a put.
    Received(usize, Instant),
}

// ---------------------------------------------------------------- devices

fn device_id(i: usize) -> String {
    format!("sim-{i:05}")
}

/// A simulated device's heartbeat, encoded.
fn device_heartbeat(uptime_secs: u64) -> Option<Vec<u8>> {
    let hb = Heartbeat {
        agent_version: Text::borrowed(agent_linux::agent::VERSION),
        arch: Text::borrowed(std::env::consts::ARCH),
        os: Text::borrowed(std::env::consts::OS),
        podman_version: Text::borrowed("in-memory"),
        uptime_secs,
        deployments: 0,
        timestamp_ms: reconcile::now_ms(),
        ..Heartbeat::default()
    };
    protocol::wire::encode_to_vec(&hb).ok()
}

/// One simulated device: the agent's watch, reconciler and status writer.
/// `heartbeats`: (interval, first one after) for periodic heartbeats.
async fn device(
    idx: usize,
    client: async_nats::Client,
    gate: Rc<Semaphore>,
    events: mpsc::UnboundedSender<DevEvent>,
    heartbeats: Option<(Duration, Duration)>,
) {
    let id = device_id(idx);
    let session = Session::from_client(client.clone(), &id);
    let watch = {
        let Ok(_permit) = gate.acquire().await else {
            return;
        };
        let t = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match session.watch().await {
                Ok(w) => {
                    let _ = events.send(DevEvent::Ready(t.elapsed()));
                    break w;
                }
                Err(e) if attempt >= 3 => {
                    let _ = events.send(DevEvent::Failed(idx, format!("{e:#}")));
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    };
    let mut watch = watch;
    // One heartbeat, as the agent sends at start.
    if let Some(v) = device_heartbeat(0) {
        let _ = session.publish_heartbeat(v).await;
    }
    // Then one per interval, as the agent does, when the run outlasts the
    // operator's heartbeat timeout (the rollouts of `--strategy`).
    if let Some((every, offset)) = heartbeats {
        let session = session.clone();
        tokio::task::spawn_local(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, every);
            loop {
                let at = tick.tick().await;
                let uptime = at.duration_since(start).as_secs();
                if let Some(v) = device_heartbeat(uptime) {
                    let _ = session.publish_heartbeat(v).await;
                }
            }
        });
    }
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(agent_linux::agent::status_writer(
        session.clone(),
        status_rx,
    ));
    let ctx = Rc::new(reconcile::Context {
        runtime: Rc::new(MemoryRuntime::default()),
        device_id: id,
        stop_timeout_secs: 1,
        replace_order: Default::default(),
        policy: Default::default(),
        status: status_tx,
        retry_base: Duration::from_millis(500),
        retry_cap: Duration::from_secs(60),
        restart_backoff: Default::default(),
        lock_dir: std::path::PathBuf::from(protocol::score_v1::UPDATE_LOCK_DIR),
        secrets: Rc::new(agent_linux::secrets::Secrets::none("")),
    });
    let mut workers: BTreeMap<String, watch::Sender<Target>> = BTreeMap::new();
    while let Some(event) = watch.next().await {
        let (deployment, value) = match event {
            WatchEvent::Put { deployment, value } => {
                let _ = events.send(DevEvent::Received(idx, Instant::now()));
                (deployment, Some(value))
            }
            WatchEvent::Delete { deployment, .. } | WatchEvent::Purge { deployment, .. } => {
                (deployment, None)
            }
            WatchEvent::SnapshotComplete => continue,
        };
        // As the agent's `Deployments::set`: one reconciler per deployment.
        if let Some(tx) = workers.get(&deployment) {
            tx.send_modify(|t| t.value = value);
        } else {
            let (tx, rx) = watch::channel(Target { value, nudge: 0 });
            // Like an agent's reconciler started before its sweep: it lists.
            tokio::task::spawn_local(reconcile::run(
                ctx.clone(),
                deployment.clone(),
                rx,
                reconcile::Known::Nothing,
            ));
            workers.insert(deployment, tx);
        }
    }
}

/// The devices' thread: one current-thread runtime and a `LocalSet`, like
/// the agent, with `n` devices over `conns` connections.
fn spawn_devices(
    url: String,
    n: usize,
    conns: usize,
    concurrency: usize,
    heartbeat_every: Option<Duration>,
    events: mpsc::UnboundedSender<DevEvent>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let mut clients = Vec::with_capacity(conns);
            for c in 0..conns {
                let client = async_nats::ConnectOptions::new()
                    .name(format!("fleet-sim-{c}"))
                    .request_timeout(Some(Duration::from_secs(30)))
                    .connect(url.as_str())
                    .await
                    .with_context(|| format!("device connection {c} to {url}"))?;
                clients.push(client);
            }
            let gate = Rc::new(Semaphore::new(concurrency.max(1)));
            for i in 0..n {
                let client = clients[i % conns].clone();
                // Spread evenly over the interval, as boards booted at
                // different times are.
                let heartbeats =
                    heartbeat_every.map(|every| (every, every.mul_f64(i as f64 / n as f64)));
                tokio::task::spawn_local(device(
                    i,
                    client,
                    gate.clone(),
                    events.clone(),
                    heartbeats,
                ));
            }
            let _ = stop.await;
            anyhow::Ok(())
        })
    })
}

// ---------------------------------------------------------------- server

/// A `nats-server -js` on a free loopback port, with its pid for sampling.
struct Server {
    child: Child,
    url: String,
    version: String,
    _store: tempfile::TempDir,
}

impl Server {
    fn start(binary: &PathBuf) -> anyhow::Result<Server> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let store = tempfile::tempdir()?;
        let port = testkit::free_port();
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let up = testkit::wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut server = Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            version,
            _store: store,
        };
        if !up {
            server.stop();
            bail!("nats-server did not listen on 127.0.0.1:{port} within 15 s");
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- sampling

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    cpu_ticks: u64,
}

fn sample(pid: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu_ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample {
        at: Instant::now(),
        rss_kib,
        cpu_ticks,
    })
}

/// Samples a process every 100 ms until stopped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: String) -> Sampler {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(x) = sample(&pid) {
                    s.lock().unwrap_or_else(|e| e.into_inner()).push(x);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Peak RSS (MiB; `None` when no sample fell inside the window) and CPU
    /// (% of one core) between two instants.
    fn window(&self, from: Instant, to: Instant, tck: f64) -> (Option<f64>, f64) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let inside: Vec<&Sample> = s.iter().filter(|x| x.at >= from && x.at <= to).collect();
        let peak = inside
            .iter()
            .map(|x| x.rss_kib)
            .max()
            .map(|kib| kib as f64 / 1024.0);
        // CPU from the samples around the window, so that a window shorter
        // than the sampling period still gets a figure.
        let before = s.iter().rev().find(|x| x.at <= from);
        let after = s.iter().find(|x| x.at >= to);
        let cpu = match (
            before.or(inside.first().copied()),
            after.or(inside.last().copied()),
        ) {
            (Some(a), Some(b)) if b.at > a.at => {
                (b.cpu_ticks - a.cpu_ticks) as f64 / tck / (b.at - a.at).as_secs_f64() * 100.0
            }
            _ => f64::NAN,
        };
        (peak, cpu)
    }

    fn last_rss_mib(&self) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.last()
            .map(|x| x.rss_kib as f64 / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A peak RSS for the table: a window shorter than the 100 ms sampling
/// period may hold no sample, and 0.0 MiB would read as a measurement.
fn peak_mib(peak: Option<f64>) -> String {
    match peak {
        Some(mib) => format!("{mib:.1} MiB"),
        None => "not sampled (window under the 100 ms sampling period)".into(),
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------- stats

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------- main

fn the_deployment(n: usize) -> Deployment {
    let mut d = Deployment::new(
        "fleet-web",
        DeploymentSpec {
            target_devices: (0..n).map(device_id).collect(),
            target_selector: None,
            image_pull_secrets: Vec::new(),
            rollout: Rollout::default(),
            score: Score {
                type_name: "PodmanV0".into(),
                data: serde_json::json!({"containers": [{
                    "name": "web",
                    "image": "docker.io/library/nginx:1.27",
                    "env": [{"name": "GREETING", "value": "hello"}],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "restartPolicy": "Always"
                }]}),
            },
        },
    );
    d.metadata.namespace = Some("fleet".into());
    d.metadata.uid = Some("uid-fleet-web".into());
    d.metadata.generation = Some(1);
    d.metadata.resource_version = Some("1".into());
    d
}

async fn consumer_count(nats: &Nats) -> anyhow::Result<usize> {
    let mut stream = nats
        .jetstream()
        .get_stream(StreamName(DESIRED_STATE_BUCKET).to_string())
        .await?;
    Ok(stream.info().await?.state.consumer_count)
}

async fn last_seq(nats: &Nats) -> anyhow::Result<u64> {
    let mut stream = nats
        .jetstream()
        .get_stream(StreamName(DESIRED_STATE_BUCKET).to_string())
        .await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// Waits (bounded) for events until `done` says so.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<DevEvent>,
    deadline: Instant,
    mut on: impl FnMut(DevEvent) -> bool,
) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => {
                if on(ev) {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The agent's reconcilers log each container start at info.
    agent_linux::log::init_from_env();
    if args.inventory {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(inventory::run(args));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.devices.max(1);
    let conns = args.connections.unwrap_or(n.div_ceil(100)).clamp(1, n);
    let binary = args
        .nats_server
        .clone()
        .or_else(|| std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("nats-server"));
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let tck = clock_ticks();
    let server = Server::start(&binary)?;
    let srv = Sampler::start(server.pid().to_string());
    let me = Sampler::start("self".into());
    eprintln!(
        "fleet: {} with {n} devices over {conns} connection(s)",
        server.version
    );

    // The operator's side: its connection, buckets and status watch.
    let client = async_nats::ConnectOptions::new()
        .name("fleet-operator")
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(server.url.as_str())
        .await?;
    let nats = Nats::from_client(client);
    nats.ensure_buckets(true).await?;
    let (cache, changes) = StatusCache::new(Duration::from_secs(90));
    tokio::spawn(cache.clone().watch(nats.clone()));
    // The rollouts drive the controller's loop on these; otherwise nobody
    // reads them.
    let mut changes = Some(changes);
    if args.strategy.is_none()
        && let Some(mut changes) = changes.take()
    {
        tokio::spawn(async move { while changes.recv().await.is_some() {} });
    }

    // Devices boot: every one creates its filtered watch.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let t_boot = Instant::now();
    let devices = spawn_devices(
        server.url.clone(),
        n,
        conns,
        args.create_concurrency,
        args.strategy
            .map(|_| Duration::from_secs(args.heartbeat_secs.max(1))),
        ev_tx,
        stop_rx,
    );
    let mut create: Vec<Duration> = Vec::with_capacity(n);
    let mut failed: Vec<String> = Vec::new();
    let booted = collect(&mut ev_rx, Instant::now() + phase, |ev| {
        match ev {
            DevEvent::Ready(d) => create.push(d),
            DevEvent::Failed(i, e) => failed.push(format!("{}: {e}", device_id(i))),
            DevEvent::Received(..) => {}
        }
        create.len() + failed.len() == n
    })
    .await;
    let t_booted = Instant::now();
    if !booted || !failed.is_empty() {
        bail!(
            "only {} of {n} devices created their watch within {phase:?}; failures: {:?}",
            create.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }
    create.sort();
    eprintln!(
        "fleet: {n} watches created in {} (server RSS {:.1} MiB)",
        ms(t_booted - t_boot),
        srv.last_rss_mib()
    );
    // Let the heartbeats land before the apply.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The snapshot consumers expire once read; the apply starts when the
    // stream holds none (what a steady fleet is).
    let consumers_gone = {
        let t = Instant::now();
        while consumer_count(&nats).await? > 0 && t.elapsed() < phase {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (t.elapsed() + (t - t_booted), consumer_count(&nats).await?)
    };
    let consumers_at_apply = consumer_count(&nats).await?;

    // The server's cost per put with the fleet's watches in place, apart
    // from any delivery: puts to keys no device watches, through the
    // operator's write path.
    let probe = if args.probe_puts > 0 {
        let writes: Vec<operator::nats::KvWrite> = (0..args.probe_puts)
            .map(|i| operator::nats::KvWrite::Put {
                key: format!("probe-{i:05}.probe"),
                value: bytes::Bytes::from_static(b"probe"),
                owner: "bench/probe".into(),
            })
            .collect();
        let t = Instant::now();
        let r = nats.write(DESIRED_STATE_BUCKET, writes).await;
        Some((t.elapsed(), r.map_err(|e| e.to_string())))
    } else {
        None
    };
    if let Some((d, r)) = &probe {
        eprintln!(
            "fleet: put probe ({} puts, {consumers_at_apply} consumers on the stream): {} {r:?}",
            args.probe_puts,
            ms(*d)
        );
    }

    // The apply, through the controller's reconcile over a mock API server.
    let (kube, api) = MockApiServer::start();
    let ctx = Arc::new(Context::new(
        kube.clone(),
        nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let d = the_deployment(n);
    let revision = operator::plan(&d)?.revision;
    api.insert(&d);
    operator::reconcile(Arc::new(d), ctx.clone()).await?; // adds the finalizer
    let d = api
        .get("fleet", "fleet-web")
        .context("the mock API server lost the Deployment")?;
    let seq0 = last_seq(&nats).await?;
    let t_apply = Instant::now();
    if let Err(e) = operator::reconcile(Arc::new(d), ctx.clone()).await {
        bail!(
            "the apply failed after {}: {e} (server RSS {:.1} MiB)",
            ms(t_apply.elapsed()),
            srv.last_rss_mib()
        );
    }
    let t_reconciled = Instant::now();
    eprintln!("fleet: apply reconciled in {}", ms(t_reconciled - t_apply));
    let seq1 = last_seq(&nats).await?;
    let writes_apply = ctx.metrics.kv_writes.load(Ordering::Relaxed);

    // Fan-out: every device's watch delivers its key.
    let mut got: Vec<Duration> = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let all_received = collect(&mut ev_rx, Instant::now() + phase, |ev| {
        if let DevEvent::Received(i, at) = ev
            && !std::mem::replace(&mut seen[i], true)
        {
            got.push(at.saturating_duration_since(t_apply));
        }
        got.len() == n
    })
    .await;
    got.sort();
    eprintln!(
        "fleet: {} of {n} keys received, last at {}",
        got.len(),
        ms(pct(&got, 1.0))
    );

    // Status back: every report with the new revision in the operator's cache.
    let deadline = Instant::now() + phase;
    let running = || {
        cache
            .reports_for("fleet-web")
            .values()
            .filter(|r| {
                r.status.revision == revision
                    && matches!(r.status.phase, Phase::Running | Phase::Healthy)
            })
            .count()
    };
    let mut folded = running();
    while folded < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        folded = running();
    }
    let t_cached = Instant::now();
    // ...and into the CR's status by one reconcile (what a report triggers).
    let d = api
        .get("fleet", "fleet-web")
        .context("the mock API server lost the Deployment")?;
    operator::reconcile(Arc::new(d), ctx.clone()).await?;
    let t_folded = Instant::now();
    let status = api.get("fleet", "fleet-web").and_then(|d| d.status);
    let ready = status.as_ref().map(|s| s.ready).unwrap_or(0);
    let status_bytes = status
        .as_ref()
        .and_then(|s| serde_json::to_vec(s).ok())
        .map(|v| v.len())
        .unwrap_or(0);

    // No-op re-apply: the same controller (its applied-plan memory), then a
    // restarted controller (a fresh context: reads every key again).
    let seq2 = last_seq(&nats).await?;
    let d = api
        .get("fleet", "fleet-web")
        .context("the mock API server lost the Deployment")?;
    let w0 = ctx.metrics.kv_writes.load(Ordering::Relaxed);
    let t = Instant::now();
    operator::reconcile(Arc::new(d.clone()), ctx.clone()).await?;
    let noop_same = (
        ctx.metrics.kv_writes.load(Ordering::Relaxed) - w0,
        t.elapsed(),
    );
    let fresh = Arc::new(Context::new(
        kube,
        nats.clone(),
        cache.clone(),
        ControllerConfig::default(),
    ));
    let t = Instant::now();
    operator::reconcile(Arc::new(d), fresh.clone()).await?;
    let noop_fresh = (fresh.metrics.kv_writes.load(Ordering::Relaxed), t.elapsed());
    let seq3 = last_seq(&nats).await?;
    let t_noop = Instant::now();

    // Idle: N consumers, nothing changes.
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let t_idle = Instant::now();

    // Rollouts of a new revision through the controller's loop.
    let mut rollouts = Vec::new();
    if let Some(strategy) = args.strategy
        && let Some(changes) = changes.as_mut()
    {
        let mut env = Loop {
            api: &api,
            ctx: ctx.clone(),
            nats: &nats,
            changes,
            events: &mut ev_rx,
            deadline: phase,
            tck,
            status_echo: !args.no_status_echo,
        };
        for (i, s) in strategy.strategies().into_iter().enumerate() {
            let r = env.rollout(s, args.batches, &format!("rollout-{i}")).await;
            match r {
                Ok(r) => {
                    eprintln!("fleet: {:?} rollout Ready in {}", r.strategy, ms(r.ready));
                    rollouts.push(r);
                }
                Err(e) => {
                    let _ = stop_tx.send(());
                    return Err(e.context(format!("the {s:?} rollout")));
                }
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || devices.join()).await;

    let (rss_boot, cpu_boot) = srv.window(t_boot, t_booted, tck);
    let (rss_apply, cpu_apply) = srv.window(t_apply, t_folded, tck);
    let (rss_idle, cpu_idle) = srv.window(t_noop, t_idle, tck);
    let (_, me_apply) = me.window(t_apply, t_folded, tck);
    let (me_rss, me_idle) = me.window(t_noop, t_idle, tck);

    println!();
    println!(
        "## fleet: {n} devices, {} ({conns} device connection(s), {} watch creations at once)",
        server.version, args.create_concurrency
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| devices boot: all {n} watches created | {} (per watch p50 {} / p99 {} / max {}) |",
        ms(t_booted - t_boot),
        ms(pct(&create, 0.50)),
        ms(pct(&create, 0.99)),
        ms(pct(&create, 1.0))
    );
    println!(
        "| nats-server during boot | peak RSS {}, CPU {cpu_boot:.0} % of a core |",
        peak_mib(rss_boot)
    );
    let (d, left) = consumers_gone;
    println!(
        "| snapshot consumers expired (from all devices ready) | {}, {left} left |",
        ms(d)
    );
    if let Some((d, r)) = &probe {
        println!(
            "| put probe: {} puts to unwatched keys, {consumers_at_apply} consumers on the stream | {}{} ({:.3} ms per put) |",
            args.probe_puts,
            ms(*d),
            match r {
                Ok(_) => String::new(),
                Err(e) => format!(" FAILED: {e}"),
            },
            d.as_secs_f64() * 1000.0 / args.probe_puts as f64
        );
    }
    println!(
        "| apply: reconcile (scan + {} puts, acked) | {} |",
        seq1 - seq0,
        ms(t_reconciled - t_apply)
    );
    println!(
        "| KV writes issued by the apply | {writes_apply} (stream sequence +{}) |",
        seq1 - seq0
    );
    println!(
        "| key received, from apply start: p50 / p99 / max | {} / {} / {}{} |",
        ms(pct(&got, 0.50)),
        ms(pct(&got, 0.99)),
        ms(pct(&got, 1.0)),
        if all_received {
            String::new()
        } else {
            format!(" (only {} of {n} within {phase:?})", got.len())
        }
    );
    println!(
        "| every status Running in the operator's cache | {}{} |",
        ms(t_cached - t_apply),
        if folded == n {
            String::new()
        } else {
            format!(" (only {folded} of {n})")
        }
    );
    println!(
        "| ...and folded into the CR status (one reconcile) | {} (ready {ready}/{n}, status {:.0} KiB of JSON) |",
        ms(t_folded - t_apply),
        status_bytes as f64 / 1024.0
    );
    println!(
        "| nats-server during apply -> folded | peak RSS {}, CPU {cpu_apply:.0} % of a core |",
        peak_mib(rss_apply)
    );
    println!(
        "| no-op re-apply, same controller | {} writes, {} |",
        noop_same.0,
        ms(noop_same.1)
    );
    println!(
        "| no-op re-apply, restarted controller (reads every key) | {} writes, {} (stream sequence +{}) |",
        noop_fresh.0,
        ms(noop_fresh.1),
        seq3 - seq2
    );
    println!(
        "| nats-server idle ({} s, {n} watching devices, {consumers_at_apply} consumers) | peak RSS {}, CPU {cpu_idle:.1} % of a core |",
        args.idle_secs,
        peak_mib(rss_idle)
    );
    println!(
        "| simulator process (operator + {n} devices) | CPU {me_apply:.0} % during apply, {me_idle:.1} % idle, peak RSS {} |",
        peak_mib(me_rss)
    );
    println!();
    if !rollouts.is_empty() {
        print_rollouts(
            n,
            &server.version,
            args.batches,
            !args.no_status_echo,
            &rollouts,
        );
    }
    if !all_received || folded < n || ready as usize != n {
        bail!("the fleet did not converge within {phase:?}");
    }
    if noop_same.0 != 0 || noop_fresh.0 != 0 || seq3 != seq2 {
        bail!("the no-op re-apply wrote to NATS");
    }
    Ok(())
}

// ---------------------------------------------------------------- rollouts

/// CPU ticks the operator's thread used so far: the bench's main thread,
/// where its runtime runs the reconciles, the status cache's watch, the
/// operator's NATS client and the mock API server (the devices have their
/// own thread).
fn operator_thread_ticks() -> Option<u64> {
    let pid = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/self/task/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The controller's loop over the bench's Deployment, as `operator::run`
/// drives it: a reconcile when the spec changes, then one whenever device
/// reports arrived (those that arrive during a reconcile make one more
/// after it, as kube-runtime's scheduler does) or the last reconcile
/// patched the status (its watch event comes back).
struct Loop<'a> {
    api: &'a MockApiServer,
    ctx: Arc<Context>,
    nats: &'a Nats,
    changes: &'a mut mpsc::UnboundedReceiver<operator::status::Change>,
    events: &'a mut mpsc::UnboundedReceiver<DevEvent>,
    deadline: Duration,
    tck: f64,
    /// Whether a status patch triggers a reconcile (see `--no-status-echo`).
    status_echo: bool,
}

/// One measured rollout.
struct RolloutRun {
    strategy: RolloutStrategy,
    /// Spec change to Ready True at the new generation (the status patch
    /// returned).
    ready: Duration,
    /// Spec change to the last key received by a device.
    last_key: Duration,
    reconciles: u64,
    scans: u64,
    kv_writes: u64,
    stream_puts: u64,
    status_patches: usize,
    events: usize,
    operator_cpu_secs: f64,
    /// When each batch started (its first reconcile at that currentBatch).
    batch_starts: Vec<Duration>,
    status_bytes: usize,
}

/// Ready True for `generation` in the status.
fn is_ready(d: &Deployment, generation: i64) -> bool {
    d.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == operator::status::conditions::READY
                && c.status == "True"
                && c.observed_generation == Some(generation)
        })
    })
}

impl Loop<'_> {
    fn get(&self) -> anyhow::Result<Deployment> {
        self.api
            .get("fleet", "fleet-web")
            .context("the mock API server lost the Deployment")
    }

    /// Changes the score (a new revision for every device) and the rollout
    /// strategy, then runs the controller's loop until Ready.
    async fn rollout(
        &mut self,
        strategy: RolloutStrategy,
        batches: u32,
        greeting: &str,
    ) -> anyhow::Result<RolloutRun> {
        let mut d = self.get()?;
        let generation = d.metadata.generation.unwrap_or(1) + 1;
        d.metadata.generation = Some(generation);
        d.spec.score.data["containers"][0]["env"][0]["value"] = serde_json::json!(greeting);
        d.spec.rollout.strategy = strategy;
        d.spec.rollout.min_healthy_seconds = 0;
        d.spec.rollout.batches = match strategy {
            RolloutStrategy::AllAtOnce => Vec::new(),
            RolloutStrategy::BatchSequence => (1..batches)
                .map(|_| Batch {
                    selector: None,
                    limit: Some(IntOrString::String(format!("{}%", 100 / batches))),
                    success_threshold: None,
                })
                .collect(),
        };
        let n = d.spec.target_devices.len();
        self.api.insert(&d);
        // What came before is not this rollout's.
        while self.changes.try_recv().is_ok() {}
        while self.events.try_recv().is_ok() {}
        let _ = self.api.take();
        let m = &self.ctx.metrics;
        let counters = || {
            [
                m.reconciles.load(Ordering::Relaxed),
                m.kv_scans.load(Ordering::Relaxed),
                m.kv_writes.load(Ordering::Relaxed),
            ]
        };
        let c0 = counters();
        let seq0 = last_seq(self.nats).await?;
        let cpu0 = operator_thread_ticks();
        let t0 = Instant::now();
        let deadline = t0 + self.deadline;
        let mut batch_starts = Vec::new();
        let mut last_batch = None;
        let mut requests = Vec::new();
        let ready = loop {
            if let Err(e) = operator::reconcile(Arc::new(d), self.ctx.clone()).await {
                // The controller's error policy retries transient errors
                // after 1 s.
                eprintln!("fleet: reconcile failed (retried in 1 s): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let sent = self.api.take();
            // The controller watches its Deployments without a generation
            // filter: its own status patch comes back as a watch event and
            // triggers one more reconcile.
            let echo = self.status_echo
                && sent
                    .iter()
                    .any(|r| r.method == "PATCH" && r.path.ends_with("/status"));
            requests.extend(sent);
            d = self.get()?;
            if is_ready(&d, generation) {
                break t0.elapsed();
            }
            let batch = d
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .map(|r| r.current_batch);
            if batch.is_some() && batch != last_batch {
                batch_starts.push(t0.elapsed());
                last_batch = batch;
            }
            // Wait for a report, then take every one queued since: one
            // reconcile for all of them.
            if !echo && self.changes.try_recv().is_err() {
                match tokio::time::timeout_at(deadline.into(), self.changes.recv()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("the status cache stopped"),
                    Err(_) => bail!(
                        "not Ready within {:?}: {:?}",
                        self.deadline,
                        d.status.as_ref().map(|s| (&s.conditions, &s.rollout))
                    ),
                }
            }
            while self.changes.try_recv().is_ok() {}
        };
        let cpu1 = operator_thread_ticks();
        let c1 = counters();
        let seq1 = last_seq(self.nats).await?;
        let mut last_key = Duration::ZERO;
        let mut keys = vec![false; n];
        while let Ok(ev) = self.events.try_recv() {
            if let DevEvent::Received(i, at) = ev {
                keys[i] = true;
                last_key = last_key.max(at.saturating_duration_since(t0));
            }
        }
        let received = keys.iter().filter(|k| **k).count();
        if received < n {
            bail!("only {received} of {n} devices received the new revision");
        }
        let status_patches = requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
            .count();
        let events = requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .count();
        let status_bytes = d
            .status
            .as_ref()
            .and_then(|s| serde_json::to_vec(s).ok())
            .map_or(0, |v| v.len());
        Ok(RolloutRun {
            strategy,
            ready,
            last_key,
            reconciles: c1[0] - c0[0],
            scans: c1[1] - c0[1],
            kv_writes: c1[2] - c0[2],
            stream_puts: seq1 - seq0,
            status_patches,
            events,
            operator_cpu_secs: match (cpu0, cpu1) {
                (Some(a), Some(b)) => (b - a) as f64 / self.tck,
                _ => f64::NAN,
            },
            batch_starts,
            status_bytes,
        })
    }
}

fn print_rollouts(n: usize, version: &str, batches: u32, echo: bool, runs: &[RolloutRun]) {
    println!(
        "## rollouts: {n} devices, {version}; a new revision for every device, the controller's loop (a reconcile per burst of reports{}); BatchSequence: {batches} batches ({} x limit \"{}%\" + the rest), minHealthySeconds 0",
        if echo {
            " and after each status patch"
        } else {
            ""
        },
        batches - 1,
        100 / batches
    );
    println!();
    println!(
        "| strategy | apply -> Ready True | last key received | reconciles | key scans | desired-state writes (stream +) | status patches (per s / per min) | events | operator thread CPU | status JSON |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let secs = r.ready.as_secs_f64().max(1e-3);
        println!(
            "| {:?} | {} | {} | {} | {} | {} (+{}) | {} ({:.1} / {:.0}) | {} | {:.2} s ({:.0} % of a core) | {:.1} KiB |",
            r.strategy,
            ms(r.ready),
            ms(r.last_key),
            r.reconciles,
            r.scans,
            r.kv_writes,
            r.stream_puts,
            r.status_patches,
            r.status_patches as f64 / secs,
            r.status_patches as f64 * 60.0 / secs,
            r.events,
            r.operator_cpu_secs,
            r.operator_cpu_secs / secs * 100.0,
            r.status_bytes as f64 / 1024.0
        );
    }
    for r in runs.iter().filter(|r| !r.batch_starts.is_empty()) {
        println!();
        println!(
            "{:?} batch starts (from apply): {}",
            r.strategy,
            r.batch_starts
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let [a, b] = runs {
        println!();
        println!(
            "{:?} - {:?}: {} to Ready",
            b.strategy,
            a.strategy,
            ms(b.ready.saturating_sub(a.ready))
        );
    }
    println!();
}

// ---------------------------------------------------------------- inventory

/// The inventory's API write rate (issue 15): N boards heartbeating at the
/// agent's interval, the operator's inventory loop
/// (`operator::inventory::run`, the real controller) against a real
/// kube-apiserver and etcd (`testkit::kube`), writes counted by the
/// operator's own metrics (`iot_operator_device_*_total`).
mod inventory {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context as _, bail};
    use operator::capability_gate::CapabilityGate;
    use operator::inventory::{Inventory, InventoryConfig};
    use operator::metrics::Metrics;
    use operator::nats::Nats;
    use operator::status::StatusCache;
    use protocol::keys::DEVICE_HEARTBEAT_BUCKET;
    use protocol::{Capabilities, Heartbeat, Text};

    use super::{Args, Server, device_id};

    /// The inventory's API writes so far: creates, status patches,
    /// metadata patches.
    fn writes(m: &Metrics) -> [u64; 3] {
        [
            m.device_creates.load(Ordering::Relaxed),
            m.device_status_patches.load(Ordering::Relaxed),
            m.device_metadata_patches.load(Ordering::Relaxed),
        ]
    }

    fn heartbeat_value(i: usize, uptime: u64) -> Vec<u8> {
        let mut hb = Heartbeat {
            agent_version: Text::borrowed("0.3.0"),
            arch: Text::borrowed("aarch64"),
            os: Text::borrowed("linux"),
            podman_version: Text::borrowed("4.3.1"),
            kernel: Text::borrowed("6.1.0"),
            boot_id: Text::borrowed("boot"),
            uptime_secs: uptime,
            capabilities: Capabilities::this_build(),
            ..Heartbeat::default()
        };
        let site = if i.is_multiple_of(2) { "lyon" } else { "paris" };
        let _ = hb
            .labels
            .insert(Text::borrowed("site"), Text::borrowed(site));
        let _ = hb
            .labels
            .insert(Text::borrowed("board"), Text::borrowed("rpi4"));
        protocol::wire::encode_to_vec(&hb).unwrap_or_default()
    }

    /// Every board beats once per `interval`, spread evenly over it, until
    /// the task is dropped; counts the heartbeats sent.
    async fn beat(client: async_nats::Client, n: usize, interval: Duration, sent: Arc<AtomicU64>) {
        let start = tokio::time::Instant::now();
        for round in 0u64.. {
            let round_start = start + interval * u32::try_from(round).unwrap_or(u32::MAX);
            for i in 0..n {
                if i.is_multiple_of(50) {
                    let at = round_start + interval.mul_f64(i as f64 / n as f64);
                    tokio::time::sleep_until(at).await;
                }
                let value = heartbeat_value(i, round * interval.as_secs());
                let subject = format!("$KV.{DEVICE_HEARTBEAT_BUCKET}.{}", device_id(i));
                // A core publish: the stream stores it; the board's ack
                // wait is not what is measured here.
                if client.publish(subject, value.into()).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub async fn run(args: Args) -> anyhow::Result<()> {
        let n = args.devices.max(1);
        let binary = args
            .nats_server
            .clone()
            .or_else(|| std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let server = Server::start(&binary)?;
        let Some(kube) = testkit::kube::KubeApiServer::start().await else {
            bail!(
                "kube-apiserver and etcd not found: set KUBEBUILDER_ASSETS (scripts/kube-assets.sh)"
            );
        };
        let client = kube.client().await;
        kube.install_crds(&testkit::repo_root().join("deploy/crd.yaml"))
            .await;
        let nc = async_nats::ConnectOptions::new()
            .name("fleet-operator")
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(server.url.as_str())
            .await?;
        let nats = Nats::from_client(nc);
        nats.ensure_buckets(true).await?;
        let (cache, mut changes) = StatusCache::new(Duration::from_secs(90));
        tokio::spawn(cache.clone().watch(nats.clone()));
        tokio::spawn(async move { while changes.recv().await.is_some() {} });
        let metrics = Arc::new(Metrics::default());
        let (gate, gate_changes) = CapabilityGate::new();
        let interval = Duration::from_secs(args.heartbeat_secs.max(1));
        let refresh = Duration::from_secs(args.device_status_refresh_secs.max(1));
        let silence = Duration::from_secs(args.device_silence_secs.max(1));
        let inventory = Arc::new(Inventory::new(
            client,
            nats,
            cache,
            gate,
            metrics.clone(),
            InventoryConfig {
                silence,
                refresh,
                ..InventoryConfig::default()
            },
        ));
        tokio::spawn(async move {
            if let Err(e) = operator::inventory::run(inventory, gate_changes).await {
                eprintln!("inventory: {e:#}");
            }
        });
        eprintln!(
            "inventory: {} and kube-apiserver, {n} boards, a heartbeat every {}s each",
            server.version,
            interval.as_secs()
        );

        // First start: every board's first heartbeat creates its Device.
        let sent = Arc::new(AtomicU64::new(0));
        let boards = async_nats::ConnectOptions::new()
            .name("fleet-boards")
            .connect(server.url.as_str())
            .await
            .context("boards' connection")?;
        let beating = tokio::spawn(beat(boards, n, interval, sent.clone()));
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(args.phase_timeout_secs);
        loop {
            let [creates, status, _] = writes(&metrics);
            if creates as usize >= n && status as usize >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {creates} Devices created and {status} status writes after {:?}",
                    t0.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let first = t0.elapsed();
        let w_first = writes(&metrics);
        let hb_first = sent.load(Ordering::Relaxed);
        // Let the first start's stragglers settle (one heartbeat round).
        tokio::time::sleep(interval).await;

        // Steady state.
        let w0 = writes(&metrics);
        let hb0 = sent.load(Ordering::Relaxed);
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.measure_secs.max(1))).await;
        let steady = t1.elapsed();
        let w1 = writes(&metrics);
        let hb1 = sent.load(Ordering::Relaxed);
        beating.abort();

        let per_min = |count: u64, d: Duration| count as f64 * 60.0 / d.as_secs_f64();
        println!();
        println!(
            "inventory write rate: {n} boards, heartbeat every {}s, --device-status-refresh-secs {}, --device-silence-secs {}",
            interval.as_secs(),
            refresh.as_secs(),
            silence.as_secs()
        );
        println!(
            "API server: real kube-apiserver + etcd on loopback; writes counted by the operator's metrics"
        );
        println!();
        println!(
            "| phase | duration | heartbeats | creates | status patches | metadata patches | API writes/min | heartbeats/min |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let row = |name: &str, d: Duration, hb: u64, w: [u64; 3]| {
            let total: u64 = w.iter().sum();
            println!(
                "| {name} | {:.0} s | {hb} | {} | {} | {} | {:.0} | {:.0} |",
                d.as_secs_f64(),
                w[0],
                w[1],
                w[2],
                per_min(total, d),
                per_min(hb, d)
            );
        };
        row(
            "first start (all Devices created)",
            first,
            hb_first,
            w_first,
        );
        let dw = [w1[0] - w0[0], w1[1] - w0[1], w1[2] - w0[2]];
        row("steady state", steady, hb1 - hb0, dw);
        println!();
        println!(
            "steady state: {:.2} API writes per heartbeat; expected at most one status patch per board per refresh: {:.0}/min",
            (dw.iter().sum::<u64>()) as f64 / (hb1 - hb0).max(1) as f64,
            n as f64 * 60.0 / refresh.as_secs_f64()
        );
        drop(kube);
        Ok(())
    }
}
