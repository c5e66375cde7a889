//! The agent: ties the cache, the NATS watch, the per-deployment
//! reconcilers, Podman events, the status writer and the heartbeat together.
//!
//! Everything runs on one thread (a tokio `LocalSet`): the work is I/O bound
//! and a single thread keeps memory small.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::cache::{Cache, CacheHealth, CacheWriter};
use crate::config::Config;
use crate::gate::Gatekeeper;
use crate::gate::clock::SystemClock;
use crate::host::HostInfo;
use crate::log::Chain;
use crate::nats::{Session, WatchEvent};
use crate::podman::{Podman, Runtime, labels};
use crate::reconcile::{self, Context, StatusReport, Target, now_ms};
use crate::rollback::Rollback;
use protocol::{BoundedVec, Capabilities, DeploymentStatus, Heartbeat, Text};

/// The agent's version, reported in the heartbeat.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The score types `reconcile` runs.
const RUNS: [&str; 2] = [protocol::score::PODMAN_V0, protocol::score::PODMAN_V1];

/// What this agent reads, reported in the heartbeat: the protocol's
/// versions (`DesiredState` 5's sealed secrets included: [`crate::secrets`]
/// opens them), but only the score types it runs (`PodmanV0`, `PodmanV1`),
/// so the operator never writes it a type its protocol crate decodes and it
/// cannot run.
pub fn capabilities() -> Capabilities<'static> {
    let build = Capabilities::this_build();
    let score_types = build
        .score_types
        .iter()
        .filter(|s| RUNS.contains(&s.type_name.as_str()))
        .cloned();
    Capabilities {
        score_types: BoundedVec::try_from_iter(score_types).unwrap_or_default(),
        desired_state_versions: build.desired_state_versions,
    }
}

/// The heartbeat's fields that stay as they are while the agent runs (who
/// it is, what it reads, its board's labels, the public key its secrets
/// are sealed to, empty when it has none); the heartbeat task fills in the
/// rest each time.
pub fn heartbeat_base(config: &Config, host: HostInfo, sealing_key: &str) -> Heartbeat<'static> {
    let mut labels = protocol::DeviceLabels::new();
    for (k, v) in &config.labels {
        // `Config::validate` bounds the table to what fits.
        if labels
            .insert(Text::owned(k.clone()), Text::owned(v.clone()))
            .is_err()
        {
            crate::warn!("label {k} left out of the heartbeat: too many labels");
        }
    }
    Heartbeat {
        agent_version: Text::borrowed(VERSION),
        arch: Text::borrowed(std::env::consts::ARCH),
        os: Text::borrowed(std::env::consts::OS),
        kernel: Text::owned(host.kernel),
        boot_id: Text::owned(host.boot_id),
        labels,
        capabilities: capabilities(),
        sealing_key: Text::owned(sealing_key.to_string()),
        ..Heartbeat::default()
    }
}

/// Deployments and their reconcilers.
struct Deployments<R> {
    ctx: Rc<Context<R>>,
    workers: RefCell<BTreeMap<String, watch::Sender<Target>>>,
    /// How many deployments are desired, for the heartbeat: the inventory
    /// shows it, and a count that waits for the next beat (30 s by
    /// default) would show a board idle that already runs its workload.
    count: watch::Sender<u32>,
    /// Chooses what each reconciler runs: the desired value, or the last
    /// healthy one after a rollback.
    rollback: Rc<Rollback>,
    /// Decides when a new desired value (or a delete) may apply: before
    /// the rollback, which gets only what the gate admits.
    gate: Rc<Gatekeeper<R>>,
    /// The deployments the last sweep left containers of; `None` before a
    /// sweep listed the device's containers. Only a deployment's
    /// reconciler creates its containers, so one not in here, first seen
    /// after a sweep, has none: its reconciler need not list them first.
    swept: RefCell<Option<BTreeSet<String>>>,
}

impl<R: Runtime> Deployments<R> {
    /// A deployment's desired value arrived (`None`: deleted; `force`: the
    /// delete carried the override): through the gate, which admits it now
    /// or later.
    fn set(&self, deployment: &str, value: Option<Bytes>, force: bool) {
        self.gate
            .arrived(deployment, value, force, &|d, v| self.admit(d, v));
        self.count_changed();
    }

    /// At boot: the admitted values run, the cached ones (`None`: the
    /// cache could not be read) go through the gate.
    fn restore(&self, cached: Option<BTreeMap<String, Bytes>>) {
        self.gate.restore(cached, &|d, v| self.admit(d, v));
        self.count_changed();
    }

    /// What the gate admitted: the rollback chooses what runs, and the
    /// reconciler (started when new) runs it.
    fn admit(&self, deployment: &str, value: Option<Bytes>) {
        let value = self.rollback.arrived(deployment, value);
        self.set_target(deployment, value);
    }

    fn count_changed(&self) {
        let count = self.desired().len() as u32;
        self.count
            .send_if_modified(|c| std::mem::replace(c, count) != count);
    }

    fn set_target(&self, deployment: &str, value: Option<Bytes>) {
        let mut workers = self.workers.borrow_mut();
        if let Some(tx) = workers.get(deployment) {
            tx.send_if_modified(|t| {
                if t.value == value {
                    return false;
                }
                t.value = value;
                true
            });
            return;
        }
        let known = match &*self.swept.borrow() {
            Some(left) if !left.contains(deployment) => reconcile::Known::NoContainers,
            _ => reconcile::Known::Nothing,
        };
        let (tx, rx) = watch::channel(Target { value, nudge: 0 });
        tokio::task::spawn_local(reconcile::run(
            self.ctx.clone(),
            deployment.to_string(),
            rx,
            known,
        ));
        workers.insert(deployment.to_string(), tx);
    }

    /// Asks a deployment's reconciler for a fresh pass.
    fn nudge(&self, deployment: &str) {
        if let Some(tx) = self.workers.borrow().get(deployment) {
            tx.send_modify(|t| t.nudge = t.nudge.wrapping_add(1));
        }
    }

    fn nudge_all(&self) {
        for tx in self.workers.borrow().values() {
            tx.send_modify(|t| t.nudge = t.nudge.wrapping_add(1));
        }
    }

    /// Deployments currently desired (not deleted), whether they run or
    /// wait for the gate.
    fn desired(&self) -> BTreeSet<String> {
        self.gate.desired()
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let socket = config.podman_socket_path()?;
    let runtime = Rc::new(Podman::new(socket));
    let secrets = Rc::new(load_secrets(&config)?);
    let cache = Cache::open(&config.state_dir).with_context(|| {
        format!(
            "cannot create the cache under state_dir {} (check the directory exists and is writable)",
            config.state_dir.display()
        )
    })?;
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let ctx = Rc::new(Context {
        runtime: runtime.clone(),
        device_id: config.device_id.clone(),
        stop_timeout_secs: config.podman.stop_timeout_secs,
        replace_order: config.podman.replace_order,
        policy: (&config.security).into(),
        status: status_tx,
        retry_base: Duration::from_millis(500),
        retry_cap: Duration::from_secs(60),
        restart_backoff: reconcile::RestartBackoff {
            initial: Duration::from_secs(config.podman.restart_backoff_initial_secs),
            max: Duration::from_secs(config.podman.restart_backoff_max_secs),
        },
        lock_dir: config.update.lock_dir.clone(),
        secrets: secrets.clone(),
    });
    let policy = ctx.policy.clone();
    let rollback = Rc::new(Rollback::open(&config.state_dir, policy).with_context(|| {
        format!(
            "cannot open the rollback stores under state_dir {} (check the directory is writable)",
            config.state_dir.display()
        )
    })?);
    // The reconcilers' reports reach the status writer through the
    // rollback's relay, which also rolls back, then the gate's, which
    // shows the changes that wait.
    let (checked_tx, checked_rx) = mpsc::unbounded_channel();
    let (gated_tx, gated_rx) = mpsc::unbounded_channel();
    let gate = Rc::new(
        Gatekeeper::open(
            &config.state_dir,
            &config.update,
            runtime.clone(),
            gated_tx,
            Box::new(SystemClock),
        )
        .with_context(|| {
            format!(
                "cannot open the admitted store under state_dir {} (check the directory is writable)",
                config.state_dir.display()
            )
        })?
        .with_secrets(secrets.clone()),
    );
    let deployments = Rc::new(Deployments {
        ctx,
        workers: RefCell::new(BTreeMap::new()),
        count: watch::Sender::new(0),
        rollback: rollback.clone(),
        gate: gate.clone(),
        swept: RefCell::new(None),
    });
    let retarget = {
        let deployments = deployments.clone();
        move |d: &str, value: Bytes| deployments.set_target(d, Some(value))
    };
    tokio::task::spawn_local(rollback.clone().relay(status_rx, checked_tx, retarget));
    let admit = {
        let deployments = deployments.clone();
        move |d: &str, value: Option<Bytes>| deployments.admit(d, value)
    };
    tokio::task::spawn_local(gate.relay(checked_rx, admit));

    // Offline first: bring back what ran (the gate's stores; the cache at
    // the first start with a gate) before any network.
    let cached = match cache.load_all() {
        Ok(cached) => {
            crate::info!("restoring {} deployment(s) from the cache", cached.len());
            Some(
                cached
                    .into_iter()
                    .map(|(name, value)| (name, Bytes::from(value)))
                    .collect(),
            )
        }
        Err(e) => {
            crate::error!("cannot read the cache: {}; waiting for NATS", Chain(&e));
            None
        }
    };
    let restored = cached.is_some();
    deployments.restore(cached);
    if restored {
        rollback.prune();
    }
    let cache = CacheWriter::start(cache);

    let session = Session::connect(&config).await?;
    let base = heartbeat_base(&config, HostInfo::read(), secrets.public_key());
    let podman_version = Rc::new(VersionCache::default());
    tokio::task::spawn_local(status_writer_noting(
        session.clone(),
        gated_rx,
        Some(cache.health()),
    ));
    tokio::task::spawn_local(heartbeat(
        session.clone(),
        runtime.clone(),
        podman_version.clone(),
        deployments.clone(),
        cache.health(),
        config.heartbeat_interval(),
        base,
    ));
    tokio::task::spawn_local(events(
        runtime.clone(),
        podman_version,
        deployments.clone(),
        config.device_id.clone(),
    ));
    let watcher = tokio::task::spawn_local(watch_loop(
        session.clone(),
        cache.clone(),
        deployments.clone(),
    ));

    shutdown_signal().await;
    crate::info!("shutting down; containers keep running");
    watcher.abort();
    // Whatever the watch queued must be on disk before the process ends, or
    // a reboot without network would restore an older desired state.
    cache.close();
    rollback.close();
    Ok(())
}

/// The device's sealing key (`[secrets] key_file`: loaded, or created when
/// missing) and its secrets directory; no key when the file is not set.
pub fn load_secrets(config: &Config) -> anyhow::Result<crate::secrets::Secrets> {
    let key = load_sealing_key(config)?;
    if let Some((key, created)) = &key {
        crate::info!(
            "sealing key {} ({})",
            key.public_key(),
            if *created { "created" } else { "loaded" }
        );
    } else {
        crate::info!(
            "no sealing key ([secrets] key_file unset): deployments with secrets will fail"
        );
    }
    Ok(crate::secrets::Secrets::new(
        &config.device_id,
        key.map(|(k, _)| k),
        &config.secrets.runtime_dir,
    ))
}

/// Loads (or creates) the key `[secrets] key_file` names; `None` when unset.
pub fn load_sealing_key(config: &Config) -> anyhow::Result<Option<(sealing::DeviceKey, bool)>> {
    let Some(path) = &config.secrets.key_file else {
        return Ok(None);
    };
    sealing::DeviceKey::load_or_create(path)
        .map(Some)
        .with_context(|| {
            format!(
                "[secrets] key_file {} is not usable (it must hold an nkeys curve seed, `SX...`, mode 0600, as `cargo xtask creds` writes; or be absent, and the agent creates one)",
                path.display()
            )
        })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Watches the desired state forever, re-creating the watch when it ends.
///
/// The gate gets each change first (it stores what it admits or holds, see
/// [`crate::gate`], "power cuts"); the cache write is queued behind it, so
/// the cache is never newer than the gate's stores.
async fn watch_loop<R: Runtime>(
    session: Session,
    cache: CacheWriter,
    deployments: Rc<Deployments<R>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    loop {
        let mut watch = match session.watch().await {
            Ok(w) => {
                backoff.reset();
                w
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if session.is_connected() {
                    crate::error!("{}; retrying in {delay:?}", Chain(&e));
                } else {
                    crate::debug!("not connected yet ({}); retrying in {delay:?}", Chain(&e));
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        crate::info!("watching desired state");
        let mut seen: Option<BTreeSet<String>> = Some(BTreeSet::new());
        while let Some(event) = watch.next().await {
            match event {
                WatchEvent::Put { deployment, value } => {
                    crate::debug!("{deployment}: put ({} bytes)", value.len());
                    if let Some(seen) = &mut seen {
                        seen.insert(deployment.clone());
                    }
                    deployments.set(&deployment, Some(value.clone()), false);
                    cache.store(&deployment, value);
                }
                WatchEvent::Delete { deployment, force }
                | WatchEvent::Purge { deployment, force } => {
                    // The snapshot delivers forced deletes (their override
                    // would be lost otherwise), also of deployments gone
                    // long ago.
                    if seen.is_some() && !deployments.gate.knows(&deployment) {
                        continue;
                    }
                    // Both end the deployment; a purge also dropped its
                    // history on the server, which changes nothing here.
                    if force {
                        crate::info!("{deployment}: deleted (forced)");
                    } else {
                        crate::info!("{deployment}: deleted");
                    }
                    // The gate first: it forgets the admitted value (or
                    // stores the held delete) before the cache drops the
                    // value, which at boot only an agent's first gated
                    // start reads. The containers go later, in the
                    // reconciler's task.
                    deployments.set(&deployment, None, force);
                    cache.remove(&deployment);
                    cache.flush();
                }
                WatchEvent::SnapshotComplete => {
                    let Some(seen) = seen.take() else { continue };
                    crate::info!("desired state in sync: {} deployment(s)", seen.len());
                    // What the snapshot lacks was deleted while we were away.
                    let gone: Vec<String> =
                        deployments.desired().difference(&seen).cloned().collect();
                    for d in &gone {
                        crate::info!("{d}: no longer desired");
                        deployments.set(d, None, false);
                        cache.remove(d);
                    }
                    if !gone.is_empty() {
                        cache.flush();
                    }
                    sweep(&deployments, &seen).await;
                }
            }
        }
        crate::warn!("desired-state watch ended; re-creating it");
    }
}

/// Removes managed containers of this device whose deployment is not
/// desired, and notes the deployments whose containers are left.
async fn sweep<R: Runtime>(deployments: &Deployments<R>, desired: &BTreeSet<String>) {
    let ctx = &deployments.ctx;
    let Ok(all) = ctx.runtime.list_managed(&ctx.device_id).await else {
        // What an earlier sweep noted still holds: containers of a
        // deployment without a reconciler do not appear by themselves.
        return;
    };
    let mut left = BTreeSet::new();
    for c in all {
        let dep = c.label(labels::DEPLOYMENT);
        if desired.contains(dep) || deployments.workers.borrow().contains_key(dep) {
            left.insert(dep.to_string());
            continue;
        }
        crate::info!("removing {} (deployment {dep} is not desired)", c.name);
        let stop_timeout = reconcile::spec::stop_timeout_of(ctx, &c);
        if let Err(e) = ctx.runtime.remove(&c.id, stop_timeout).await {
            crate::warn!("cannot remove {}: {}", c.name, Chain(&e));
            left.insert(dep.to_string());
            continue;
        }
        ctx.secrets
            .collect(&*ctx.runtime, dep, &BTreeSet::new())
            .await;
    }
    *deployments.swept.borrow_mut() = Some(left);
}

/// Publishes status reports, each only when it differs from the last one
/// published for that deployment; failed publishes are retried. Public so
/// the fleet bench reports status exactly like the agent.
pub async fn status_writer(session: Session, rx: mpsc::UnboundedReceiver<StatusReport>) {
    status_writer_noting(session, rx, None).await;
}

/// [`status_writer`], with each deployment's cache failure (from `cache`)
/// at the end of its status message: a change of the cache's health
/// re-publishes the last report of each deployment it concerns, so the
/// note appears and clears without waiting for the reconciler.
pub async fn status_writer_noting(
    session: Session,
    mut rx: mpsc::UnboundedReceiver<StatusReport>,
    mut cache: Option<watch::Receiver<CacheHealth>>,
) {
    let mut health = cache
        .as_mut()
        .map(|c| c.borrow_and_update().clone())
        .unwrap_or_default();
    // The reconcilers' last reports, before the note.
    let mut reported: BTreeMap<String, DeploymentStatus<'static>> = BTreeMap::new();
    let mut published: BTreeMap<String, DeploymentStatus<'static>> = BTreeMap::new();
    let mut complaints = Complaints::default();
    let mut pending: BTreeMap<String, DeploymentStatus<'static>> = BTreeMap::new();
    let same = |a: &DeploymentStatus<'_>, b: &DeploymentStatus<'_>| {
        a.revision == b.revision
            && a.phase == b.phase
            && a.containers == b.containers
            && a.message == b.message
            && a.reason == b.reason
            && a.running_revision == b.running_revision
            && a.waiting == b.waiting
    };
    loop {
        if pending.is_empty() {
            tokio::select! {
                r = rx.recv() => match r {
                    Some((d, s)) => { pending.insert(d, s); }
                    None => return,
                },
                () = health_changed(&mut cache) => {}
            }
        }
        while let Ok((d, s)) = rx.try_recv() {
            pending.insert(d, s);
        }
        for (d, s) in &pending {
            reported.insert(d.clone(), s.clone());
        }
        if let Some(c) = cache.as_mut()
            && *c.borrow() != health
        {
            let now = c.borrow_and_update().clone();
            for d in now.changed_since(&health) {
                if let Some(s) = reported.get(d) {
                    pending.entry(d.to_string()).or_insert_with(|| s.clone());
                }
            }
            health = now;
        }
        let mut failed = false;
        let mut batch = std::mem::take(&mut pending).into_iter();
        while let Some((deployment, raw)) = batch.next() {
            let status = health.note_on(&deployment, raw.clone());
            if published.get(&deployment).is_some_and(|p| same(p, &status)) {
                continue;
            }
            let encoded = match protocol::wire::encode_to_vec(&status) {
                Ok(v) => v,
                Err(e) => {
                    crate::error!("{deployment}: cannot encode status: {}", Chain(&e));
                    continue;
                }
            };
            match session.publish_status(&deployment, encoded).await {
                Ok(()) => {
                    crate::debug!(
                        "{deployment}: status {} rev {}",
                        status.phase,
                        status.revision
                    );
                    published.insert(deployment, status);
                }
                Err(e) => {
                    complaints.note(&e);
                    failed = true;
                    // Keep this and the rest for later, without waiting out
                    // one timeout per deployment while offline. Newer
                    // reports that arrived meanwhile win.
                    for (d, s) in std::iter::once((deployment, raw)).chain(batch) {
                        pending.entry(d).or_insert(s);
                    }
                    break;
                }
            }
        }
        if failed {
            // Offline: wait a little, or for news.
            tokio::select! {
                r = rx.recv() => match r {
                    Some((d, s)) => { pending.insert(d, s); }
                    None => return,
                },
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// Resolves when the cache's health changes; never without a cache, or
/// once its writer is gone.
async fn health_changed(cache: &mut Option<watch::Receiver<CacheHealth>>) {
    if let Some(c) = cache.as_mut()
        && c.changed().await.is_ok()
    {
        return;
    }
    *cache = None;
    std::future::pending::<()>().await;
}

/// Rate-limited warnings for failing publishes: offline is normal for a
/// board, but a publish that keeps failing while connected (for example a
/// permission denial, which looks like a timeout) must be visible.
#[derive(Default)]
struct Complaints {
    last: Option<Instant>,
}

impl Complaints {
    fn note(&mut self, e: &dyn std::error::Error) {
        let e = Chain(e);
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last = Some(Instant::now());
            crate::warn!(
                "{e} (offline, or the credentials do not allow publishing to this device's status/heartbeat keys); retrying"
            );
        } else {
            crate::debug!("{e}");
        }
    }
}

/// Podman's version for the heartbeat, asked once and again only after
/// Podman may have restarted.
///
/// Each `GET /version` costs the Podman service 22-32 clock ticks, nearly
/// all in the child processes it spawns to answer: asked every heartbeat it
/// was almost all of an idle agent's cost to the board. The event stream
/// ending (or the call failing) is what says Podman went away.
#[derive(Default)]
pub struct VersionCache(RefCell<Option<String>>);

impl VersionCache {
    /// The known version, else what `fetch` finds (kept when it succeeds;
    /// empty, and asked again next time, when it fails).
    pub async fn get<E>(&self, fetch: impl Future<Output = Result<String, E>>) -> String {
        if let Some(v) = self.0.borrow().as_ref() {
            return v.clone();
        }
        match fetch.await {
            Ok(v) => {
                *self.0.borrow_mut() = Some(v.clone());
                v
            }
            Err(_) => String::new(),
        }
    }

    /// Podman may have restarted (perhaps upgraded): ask again next time.
    pub fn forget(&self) {
        self.0.borrow_mut().take();
    }
}

/// How long a change in the number of deployments waits for more changes
/// before the heartbeat that reports it.
const COUNT_SETTLE: Duration = Duration::from_secs(1);

/// Publishes the heartbeat (`hb`, from [`heartbeat_base`], with what
/// changes filled in) every `interval`, at once when the cache's health
/// changes (its warning appears or clears), and a moment after the number
/// of deployments changes. Uptime counts from the task's
/// start, right after the NATS client is created.
async fn heartbeat<R: Runtime>(
    session: Session,
    runtime: Rc<R>,
    podman_version: Rc<VersionCache>,
    deployments: Rc<Deployments<R>>,
    cache: watch::Receiver<CacheHealth>,
    interval: Duration,
    mut hb: Heartbeat<'static>,
) {
    let started = Instant::now();
    let mut complaints = Complaints::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = Some(cache);
    let mut count = deployments.count.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = health_changed(&mut cache) => {}
            Ok(()) = count.changed() => {
                // A burst of changes (a resync, a fleet-wide apply) makes
                // one beat, and at most one extra beat per settle period.
                tokio::time::sleep(COUNT_SETTLE).await;
                count.borrow_and_update();
            }
        }
        let warnings = cache
            .as_mut()
            .and_then(|c| c.borrow_and_update().warning())
            .map(|w| Text::owned(protocol::status::clip_warning(&w).to_string()));
        hb.podman_version = Text::owned(podman_version.get(runtime.version()).await);
        hb.uptime_secs = started.elapsed().as_secs();
        hb.deployments = deployments.desired().len() as u32;
        hb.timestamp_ms = now_ms();
        // One warning, within the bound.
        hb.warnings = BoundedVec::try_from_iter(warnings).unwrap_or_default();
        match protocol::wire::encode_to_vec(&hb) {
            Ok(v) => {
                if let Err(e) = session.publish_heartbeat(v).await {
                    complaints.note(&e);
                }
            }
            Err(e) => crate::error!("cannot encode the heartbeat: {}", Chain(&e)),
        }
    }
}

/// Follows Podman's events for this device's containers and asks the
/// affected deployment for a fresh pass (status refresh, repair).
async fn events(
    runtime: Rc<Podman>,
    podman_version: Rc<VersionCache>,
    deployments: Rc<Deployments<Podman>>,
    device_id: String,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match runtime.events(&device_id).await {
            Ok(mut stream) => {
                backoff.reset();
                // Events may have been missed while the stream was down.
                deployments.nudge_all();
                loop {
                    match stream.next().await {
                        Ok(Some(ev)) => {
                            if matches!(
                                ev.action.as_str(),
                                "died"
                                    | "oom"
                                    | "restart"
                                    | "start"
                                    | "remove"
                                    | "stop"
                                    | "pause"
                                    | "unpause"
                            ) {
                                crate::debug!("{}: podman event {}", ev.deployment, ev.action);
                                deployments.nudge(&ev.deployment);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            crate::debug!("podman events: {}", Chain(&e));
                            break;
                        }
                    }
                }
            }
            Err(e) => crate::warn!("podman events unavailable: {}", Chain(&e)),
        }
        // The stream ends when the service does: the next heartbeat asks
        // the (maybe upgraded) Podman its version again.
        podman_version.forget();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::limits::{MAX_DEVICE_LABELS, MAX_HEARTBEAT_SIZE, MAX_LABEL_LEN, MAX_NAME_LEN};
    use protocol::wire::FORMAT_VERSION_4;
    use std::cell::Cell;

    fn config_with_labels(labels: &[(String, String)]) -> Config {
        let mut c = Config::new("pi-001", "/var/lib/iot-agent", vec!["nats://a:4222".into()]);
        c.labels = labels.iter().cloned().collect();
        c.validate().unwrap();
        c
    }

    #[test]
    fn the_heartbeat_carries_the_board_and_what_it_reads() {
        let config = config_with_labels(&[
            ("site".into(), "lyon".into()),
            ("board".into(), "rpi4".into()),
        ]);
        let host = HostInfo {
            kernel: "6.1.0-rpi7-rpi-v8".into(),
            boot_id: "31ab2887-278f-4524-b987-466b89d1510f".into(),
        };
        let mut hb = heartbeat_base(&config, host, "XKEY");
        hb.podman_version = Text::borrowed("4.3.1");
        hb.deployments = 2;
        let bytes = protocol::wire::encode_to_vec(&hb).unwrap();
        // A sealing key, and DesiredState 5 listed.
        assert_eq!(bytes[0], FORMAT_VERSION_4);
        let back = protocol::wire::decode::<Heartbeat<'_>>(&bytes).unwrap();
        assert_eq!(back, hb);
        assert_eq!(back.kernel.as_str(), "6.1.0-rpi7-rpi-v8");
        assert_eq!(
            back.boot_id.as_str(),
            "31ab2887-278f-4524-b987-466b89d1510f"
        );
        let labels: Vec<_> = back
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("board", "rpi4"), ("site", "lyon")]);
        assert!(back.capabilities.reads(1, protocol::score::PODMAN_V0, 1));
        assert_eq!(back.agent_version.as_str(), VERSION);
        assert_eq!(back.sealing_key.as_str(), "XKEY");
    }

    /// The agent claims only what it runs: every score type it lists is
    /// one `reconcile` handles, at the versions the protocol decodes.
    #[test]
    fn it_claims_to_run_podman_v0_and_v1() {
        let caps = capabilities();
        let types: Vec<_> = caps
            .score_types
            .iter()
            .map(|s| s.type_name.as_str())
            .collect();
        assert_eq!(
            types,
            [protocol::score::PODMAN_V0, protocol::score::PODMAN_V1]
        );
        let build = Capabilities::this_build();
        assert_eq!(caps.desired_state_versions, build.desired_state_versions);
        assert_eq!(caps.desired_state_versions[..], [1, 2, 3, 4, 5]);
        for s in caps.score_types.iter() {
            assert!(build.score_types.contains(s));
            assert!(caps.reads(2, s.type_name.as_str(), 1), "{s:?}");
        }
    }

    /// The largest heartbeat this agent can send (every label at its
    /// longest, the kernel and versions at theirs, a warning at its bound)
    /// fits the heartbeat bucket's value size.
    #[test]
    fn the_largest_heartbeat_fits_the_bucket() {
        let labels: Vec<(String, String)> = (0..MAX_DEVICE_LABELS)
            .map(|i| {
                let key = format!("example.com/{}", "k".repeat(MAX_LABEL_LEN - 14));
                (format!("{key}{i:02}"), "v".repeat(MAX_LABEL_LEN))
            })
            .collect();
        assert!(labels.iter().all(|(k, _)| k.len() == MAX_LABEL_LEN));
        let host = HostInfo {
            kernel: "k".repeat(MAX_NAME_LEN),
            boot_id: "b".repeat(MAX_NAME_LEN),
        };
        let mut hb = heartbeat_base(&config_with_labels(&labels), host, &"X".repeat(56));
        assert_eq!(hb.labels.len(), MAX_DEVICE_LABELS);
        hb.podman_version = Text::owned("p".repeat(MAX_NAME_LEN));
        hb.uptime_secs = u64::MAX;
        hb.deployments = u32::MAX;
        hb.timestamp_ms = u64::MAX;
        let warning = "w".repeat(protocol::limits::MAX_WARNING_LEN);
        hb.warnings = BoundedVec::try_from_iter([Text::owned(warning)]).unwrap();
        let size = protocol::wire::encode_to_vec(&hb).unwrap().len();
        assert!(size <= MAX_HEARTBEAT_SIZE, "{size} bytes");
    }

    #[tokio::test]
    async fn the_podman_version_is_asked_once_until_forgotten() {
        let asked = Cell::new(0);
        // Counts only the fetches that are awaited, i.e. really sent.
        let fetch = |answer: Result<&'static str, ()>| {
            let asked = &asked;
            async move {
                asked.set(asked.get() + 1);
                answer.map(str::to_string)
            }
        };
        let cache = VersionCache::default();
        assert_eq!(cache.get(fetch(Err(()))).await, "", "a failure is not kept");
        assert_eq!(cache.get(fetch(Ok("4.3.1"))).await, "4.3.1");
        assert_eq!(cache.get(fetch(Ok("not asked"))).await, "4.3.1");
        assert_eq!(cache.get(fetch(Ok("not asked"))).await, "4.3.1");
        assert_eq!(asked.get(), 2);
        cache.forget();
        assert_eq!(cache.get(fetch(Ok("5.0.0"))).await, "5.0.0");
        assert_eq!(asked.get(), 3);
    }
}
