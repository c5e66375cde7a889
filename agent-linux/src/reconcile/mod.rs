//! One deployment's reconciler: makes the runtime's containers match the
//! deployment's desired state, reports status, and retries failures with
//! back-off until a newer desired state (or a delete) arrives.
//!
//! Level-triggered: every pass lists what exists and recomputes what to do,
//! so a crash at any point is repaired by the next pass, and a container
//! whose spec hash is unchanged is never touched.
//!
//! Here: the pass loop, `apply` and `remove`. [`spec`]: the desired state
//! decoded and checked, and each container's runtime spec. [`replace`]:
//! one container brought to its spec, replacing an older one. `observe`:
//! each container after that, restarted by the agent with back-off
//! ([`restart`], `PodmanV1`) and health-checked (`checks`). `status`:
//! what a pass reports.
//!
//! Besides the desired state and runtime events, a pass runs when a
//! health check changes its verdict and when something it scheduled is
//! due (a restart after its back-off, the end of `minHealthySeconds`, the
//! end of the moment after a restart that is never `Healthy`).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::{DeploymentStatus, Phase, Reason};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::ReplaceOrder;
use crate::log::Chain;
use crate::podman::{ManagedContainer, Runtime, labels};
use crate::policy::Allowances;

mod checks;
mod observe;
pub mod prefetch;
pub mod replace;
pub mod restart;
pub mod spec;
mod status;

pub use prefetch::{PrefetchError, prefetch};
pub use replace::{NotRestarted, ReplaceError};
pub use restart::RestartBackoff;
pub use spec::SpecError;
use spec::{Wanted, stop_timeout_of};
use status::{report, simple_status};

/// What a deployment's reconciler is asked to reach.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The raw desired-state value; `None` once the deployment is deleted.
    pub value: Option<Bytes>,
    /// Bumped to ask for a fresh pass (a runtime event, a resync).
    pub nudge: u64,
}

/// What a reconciler knows, when it starts, of its deployment's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Nothing: its first pass lists them, as every pass does.
    Nothing,
    /// There are none: the agent listed the device's containers after its
    /// desired state was in sync, none of this deployment was left, and
    /// only its reconciler creates them. The first pass skips the list
    /// (Podman's list is ~7 ms of a ~110 ms apply of a new deployment,
    /// docs/performance.md). A wrong hint costs a pass, not a container:
    /// a create under a taken name fails and the retry lists, and the
    /// events of the containers the pass creates bring a pass that lists
    /// and removes any other.
    NoContainers,
}

/// A status report for the status writer.
pub type StatusReport = (String, DeploymentStatus<'static>);

/// What every reconciler shares.
pub struct Context<R> {
    /// The container runtime.
    pub runtime: Rc<R>,
    /// This device's id.
    pub device_id: String,
    /// Seconds between SIGTERM and SIGKILL when stopping containers.
    pub stop_timeout_secs: u64,
    /// Whether replacements start before or after the old container stops.
    pub replace_order: ReplaceOrder,
    /// This device's security policy: what scores may ask of the host
    /// beyond the Pod Security Baseline (see [`crate::policy`]).
    pub policy: Allowances,
    /// Where status reports go.
    pub status: mpsc::UnboundedSender<StatusReport>,
    /// First and largest retry delay.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_cap: Duration,
    /// The back-off of restarts by the agent (`PodmanV1` containers).
    pub restart_backoff: RestartBackoff,
    /// The update lock's directory on the host (`update.lock_dir`),
    /// mounted into containers with `updateLock`.
    pub lock_dir: std::path::PathBuf,
    /// The device's sealing key and where opened secrets go.
    pub secrets: Rc<crate::secrets::Secrets>,
}

/// Milliseconds since the Unix epoch (device clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a pass ended.
enum Outcome {
    /// Nothing more to do until something changes.
    Settled,
    /// A transient failure: try again after a back-off.
    Retry,
}

/// What a reconciler remembers from one pass to the next.
#[derive(Debug)]
struct Memory {
    /// The revision of the last desired state decoded. A removal reports
    /// it: a container's label keeps the revision that created it, which
    /// may be older, and nothing is left to read once the containers are
    /// gone.
    revision: u64,
    /// Whether `Removed` was reported since the deployment was deleted.
    /// The removal's own runtime events nudge the reconciler again, and
    /// those passes find nothing left and have nothing new to say.
    removed: bool,
    /// Its containers' restarts and health checks.
    containers: observe::Containers,
    /// Since when every container runs and passes its check, without a
    /// restart.
    healthy_since: Option<Instant>,
    /// Each container's id and restart count at the last pass (the
    /// agent's count, or Podman's for `PodmanV0`): a change is a restart,
    /// which starts the Healthy hold over.
    restart_counts: BTreeMap<String, (String, u32)>,
    /// Not `Healthy` before then: a moment after the last restart.
    not_healthy_before: Option<Instant>,
    /// When the last pass wants another (a restart, `minHealthySeconds`).
    wake_at: Option<Instant>,
    /// The containers that run are under the update lock (the last value
    /// applied asked for it, see [`crate::gate`]).
    under_lock: bool,
    /// A value applied by this reconciler referenced Secrets: their Podman
    /// secrets and files are collected after each pass.
    had_secrets: bool,
    /// What is known of the containers before the next apply lists them:
    /// [`Known::NoContainers`] holds for the first apply only.
    known: Known,
}

impl Memory {
    fn new(checks: mpsc::UnboundedSender<(checks::Key, crate::health::Change)>) -> Memory {
        Memory {
            revision: 0,
            removed: false,
            containers: observe::Containers {
                restarts: BTreeMap::new(),
                checks: checks::Checks::new(checks),
                oom: crate::oom::OomKills::new(crate::oom::KernelLog::device()),
                born: Instant::now(),
            },
            healthy_since: None,
            restart_counts: BTreeMap::new(),
            not_healthy_before: None,
            wake_at: None,
            under_lock: false,
            had_secrets: false,
            known: Known::Nothing,
        }
    }

    /// Notes this pass's restart counts; whether any container restarted
    /// since the last pass (one seen for the first time, or replaced, did
    /// if it has a count: restarted in this very pass, or by Podman).
    fn restarted(&mut self, ids: &BTreeMap<String, String>, observed: &[status::Observed]) -> bool {
        let mut restarted = false;
        let mut counts = BTreeMap::new();
        for o in observed {
            let name = o.status.name.as_str();
            let Some(id) = ids.get(name) else { continue };
            let count = o.status.restart_count;
            restarted |= match self.restart_counts.get(name) {
                Some((was, n)) if was == id => *n != count,
                _ => count > 0,
            };
            counts.insert(name.to_string(), (id.clone(), count));
        }
        self.restart_counts = counts;
        restarted
    }
}

/// Runs one deployment's reconciler until the target channel closes.
pub async fn run<R: Runtime>(
    ctx: Rc<Context<R>>,
    deployment: String,
    mut rx: watch::Receiver<Target>,
    known: Known,
) {
    let mut backoff = Backoff::new(ctx.retry_base, ctx.retry_cap);
    let mut last_value: Option<Bytes> = None;
    let (checks_tx, mut checks_rx) = mpsc::unbounded_channel();
    let mut memory = Memory::new(checks_tx);
    memory.known = known;
    loop {
        let target = rx.borrow_and_update().clone();
        if target.value != last_value {
            backoff.reset();
            last_value = target.value.clone();
        }
        let outcome = match &target.value {
            Some(value) => apply(&ctx, &deployment, value, &mut memory).await,
            None => remove(&ctx, &deployment, &mut memory).await,
        };
        let mut wake = memory.wake_at.map(tokio::time::Instant::from_std);
        if let Outcome::Retry = outcome {
            let delay = backoff.next_delay();
            crate::debug!("{deployment}: retrying in {delay:?}");
            let retry = tokio::time::Instant::now() + delay;
            wake = Some(wake.map_or(retry, |w| w.min(retry)));
        }
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            Some((key, change)) = checks_rx.recv() => {
                crate::debug!("{deployment}: {} is {:?}", key.0, change.health);
                if memory.containers.checks.changed(&key, change) == Some(true) {
                    memory.containers.restart_for_health(&key.0);
                }
            }
            () = due => {}
        }
    }
}

/// Removes every container of a deleted deployment and reports `Removed`
/// at its last known revision, once.
async fn remove<R: Runtime>(ctx: &Context<R>, deployment: &str, memory: &mut Memory) -> Outcome {
    // A removal that fails leaves containers behind.
    memory.known = Known::Nothing;
    let existing = match list_deployment(ctx, deployment).await {
        Ok(c) => c,
        Err(e) => {
            crate::warn!(
                "{deployment}: cannot list containers to remove: {}",
                Chain(&e)
            );
            return Outcome::Retry;
        }
    };
    memory.containers.retain(&BTreeMap::new());
    memory.healthy_since = None;
    memory.restart_counts.clear();
    memory.wake_at = None;
    if existing.is_empty() && memory.removed {
        return Outcome::Settled;
    }
    // A reconciler started after the delete (an agent restart) knows only
    // the labels. Revisions are content hashes, not counters: which of
    // two is later cannot be told, so any container's will do (they
    // differ only for a deployment whose update was cut short).
    let revision = if memory.revision != 0 {
        memory.revision
    } else {
        existing
            .iter()
            .find_map(|c| c.label(labels::REVISION).parse::<u64>().ok())
            .unwrap_or(0)
    };
    memory.revision = revision;
    for c in &existing {
        if let Err(e) = ctx.runtime.remove(&c.id, stop_timeout_of(ctx, c)).await {
            crate::warn!("{deployment}: cannot remove {}: {}", c.name, Chain(&e));
            report(
                ctx,
                deployment,
                simple_status(
                    revision,
                    Phase::Failed,
                    &format!("removing {}: {}", c.name, Chain(&e)),
                ),
            );
            return Outcome::Retry;
        }
        crate::info!("{deployment}: removed {}", c.name);
    }
    ctx.secrets
        .collect(&*ctx.runtime, deployment, &BTreeSet::new())
        .await;
    report(ctx, deployment, simple_status(revision, Phase::Removed, ""));
    memory.removed = true;
    Outcome::Settled
}

async fn list_deployment<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
) -> Result<Vec<ManagedContainer>, crate::podman::RuntimeError> {
    ctx.runtime
        .list_deployment(&ctx.device_id, deployment)
        .await
}

/// Applies a desired-state value: checks it, brings every container of its
/// score up, removes the containers no longer in it, reports, and only
/// then retires the containers that were replaced.
async fn apply<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    value: &[u8],
    memory: &mut Memory,
) -> Outcome {
    memory.removed = false;
    memory.wake_at = None;
    let desired = match spec::decode(value) {
        Ok(d) => d,
        Err(e) => return reject(ctx, deployment, 0, &e),
    };
    let revision = desired.revision;
    if revision != memory.revision {
        // A revision is Healthy once it held for its own minHealthySeconds.
        memory.healthy_since = None;
    }
    memory.revision = revision;
    let mut score = match spec::score(deployment, &desired, &ctx.policy, Some(&ctx.lock_dir)) {
        Ok(s) => s,
        Err(e) => return reject(ctx, deployment, revision, &e),
    };
    // The sealed values open in memory, for this pass only; a value that
    // does not open fails the deployment and leaves what runs alone.
    let uses_secrets = match open_secrets(ctx, deployment, &desired, &mut score).await {
        Ok(uses) => uses,
        Err((e, retry)) => {
            crate::warn!("{deployment}: {}", Chain(&e));
            report(
                ctx,
                deployment,
                simple_status(revision, Phase::Failed, &Chain(&e).to_string()),
            );
            return if retry {
                Outcome::Retry
            } else {
                Outcome::Settled
            };
        }
    };
    memory.had_secrets |= uses_secrets;
    if score.iter().any(|w| w.c.update_lock)
        && let Err(e) = spec::ensure_update_lock(&ctx.lock_dir)
    {
        let message = Chain(&e).to_string();
        report(
            ctx,
            deployment,
            simple_status(revision, Phase::Failed, &message),
        );
        return Outcome::Retry;
    }
    let t = Instant::now();
    let listing = match std::mem::replace(&mut memory.known, Known::Nothing) {
        Known::NoContainers => Ok(Vec::new()),
        Known::Nothing => list_deployment(ctx, deployment).await,
    };
    let existing = match listing {
        Ok(c) => c,
        Err(e) => {
            report(
                ctx,
                deployment,
                simple_status(
                    revision,
                    Phase::Pending,
                    &format!("container runtime: {}", Chain(&e)),
                ),
            );
            return Outcome::Retry;
        }
    };
    let listed = t.elapsed();
    let mut pass = bring_up(ctx, deployment, revision, &score, &existing).await;
    remove_dropped(ctx, deployment, &score, &existing, &mut pass.failure).await;
    let up = t.elapsed();
    memory.containers.retain(&pass.ids);
    let now = Instant::now();
    let mut observed = Vec::with_capacity(score.len());
    for w in &score {
        let id = pass.ids.get(w.c.name.as_str());
        observed
            .push(observe::container(ctx, deployment, w, id, &mut memory.containers, now).await);
    }
    let min_healthy = Duration::from_secs(u64::from(desired.rollout.min_healthy_seconds));
    let restarted = memory.restarted(&pass.ids, &observed);
    let pass_status = status::of_pass(
        revision,
        observed,
        pass.failure,
        status::Hold {
            since: &mut memory.healthy_since,
            min: min_healthy,
            restarted,
            not_before: &mut memory.not_healthy_before,
        },
        now,
    );
    memory.wake_at = pass_status.wake_at;
    let outcome = pass_status.outcome;
    // Under the update lock the gate releases the lock on this report: the
    // containers replaced go first, or a workload waiting for the lock in
    // one of them would get it and be stopped right after. Otherwise the
    // report goes first: the old containers' stop timeout delays nothing.
    let under_lock = desired.gate.update_lock.is_some() || score.iter().any(|w| w.c.update_lock);
    let retire_first = under_lock || memory.under_lock;
    if retire_first {
        if !retire(ctx, deployment, &pass.leftovers).await {
            // Not said to be done while a replaced container is left: the
            // next pass retires it first, or says why it cannot.
            return Outcome::Retry;
        }
        memory.under_lock = under_lock;
        report(ctx, deployment, pass_status.status);
        collect_secrets(ctx, deployment, memory).await;
        return outcome;
    }
    report(ctx, deployment, pass_status.status);
    // Where an apply's time goes (docs/performance.md, "apply latency").
    crate::debug!(
        "{deployment}: pass at revision {revision}: listed in {} ms, up in {} ms, reported in {} ms",
        listed.as_millis(),
        (up - listed).as_millis(),
        (t.elapsed() - up).as_millis()
    );
    // The new containers run under their names and say so; only now retire
    // their predecessors.
    if !retire(ctx, deployment, &pass.leftovers).await {
        return Outcome::Retry;
    }
    collect_secrets(ctx, deployment, memory).await;
    outcome
}

/// Opens the values the score's containers reference and the logins of
/// their registries, and hands the values over (Podman secrets, files on
/// the tmpfs); whether any container references Secrets. On failure,
/// whether to retry (the hand-over failed, which may pass; a value that
/// does not open waits for a new one).
async fn open_secrets<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    desired: &protocol::DesiredState<'_>,
    score: &mut [Wanted<'_>],
) -> Result<bool, (crate::secrets::SecretError, bool)> {
    let mut uses = false;
    for w in score.iter_mut() {
        w.pull_auth = ctx
            .secrets
            .pull_auth(
                deployment,
                desired.revision,
                &desired.secrets,
                w.c.image.as_str(),
            )
            .map_err(|e| (e, false))?
            .map(Rc::new);
        if !crate::secrets::references(&w.c) {
            continue;
        }
        uses = true;
        let opened = ctx
            .secrets
            .open_container(deployment, desired, &w.c, &mut w.hash)
            .map_err(|e| (e, false))?;
        w.handed = ctx.secrets.handed_over(deployment, &w.c, &w.hash, &opened);
        ctx.secrets
            .hand_over(&*ctx.runtime, deployment, &w.c, &w.hash, &opened)
            .await
            .map_err(|e| (e, true))?;
    }
    Ok(uses)
}

/// Removes the Podman secrets and files no container of the deployment
/// uses any more, once a value with Secrets was applied.
async fn collect_secrets<R: Runtime>(ctx: &Context<R>, deployment: &str, memory: &Memory) {
    if !memory.had_secrets {
        return;
    }
    let Ok(now) = list_deployment(ctx, deployment).await else {
        return;
    };
    let keep: BTreeSet<String> = now
        .iter()
        .map(|c| c.label(labels::SPEC_HASH).to_string())
        .collect();
    ctx.secrets.collect(&*ctx.runtime, deployment, &keep).await;
}

/// Removes the containers a pass replaced; false when one cannot go. A
/// failure is repaired by the next pass, which finds the leftovers (and
/// reports Failed if they cannot go).
async fn retire<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    leftovers: &[replace::Leftover],
) -> bool {
    for leftover in leftovers {
        if let Err(e) = replace::retire(ctx, deployment, leftover).await {
            crate::warn!("{deployment}: {}", Chain(&e));
            return false;
        }
    }
    true
}

/// Reports a desired state that is not applied; settled until a new value.
fn reject<R>(ctx: &Context<R>, deployment: &str, revision: u64, e: &SpecError<'_>) -> Outcome {
    match e {
        SpecError::Undecodable(_) => {
            crate::warn!("{deployment}: undecodable desired state: {}", Chain(e));
        }
        SpecError::Refused(_) => crate::warn!("{deployment}: refused: {}", Chain(e)),
        SpecError::Score(protocol::ScoreError::Unsupported { .. }) => {
            crate::warn!("{deployment}: {}", Chain(e));
        }
        SpecError::WrongKey { .. } | SpecError::Score(_) => {}
    }
    report(
        ctx,
        deployment,
        simple_status(revision, e.phase(), &Chain(e).to_string()),
    );
    Outcome::Settled
}

/// What bringing a score's containers up left.
struct BroughtUp {
    /// Container name in the score -> the id now running it.
    ids: BTreeMap<String, String>,
    /// The replaced containers to remove after the report.
    leftovers: Vec<replace::Leftover>,
    /// The first failure: the status message and reason.
    failure: Option<(String, Reason)>,
}

/// Brings every container of the score to its spec.
async fn bring_up<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    revision: u64,
    score: &[Wanted<'_>],
    existing: &[ManagedContainer],
) -> BroughtUp {
    // The containers of a score are independent (distinct names, and host
    // ports that could clash would clash anyway): bring them up at once
    // rather than one Podman round trip chain after the other.
    let results = futures::future::join_all(
        score
            .iter()
            .map(|w| replace::ensure_container(ctx, deployment, revision, w, existing)),
    )
    .await;
    let mut up = BroughtUp {
        ids: BTreeMap::new(),
        leftovers: Vec::new(),
        failure: None,
    };
    for (w, result) in score.iter().zip(results) {
        let name = w.c.name.as_str();
        match result {
            Ok((id, leftover)) => {
                up.ids.insert(name.to_string(), id);
                up.leftovers.extend(leftover);
            }
            Err(e) => {
                crate::warn!("{deployment}: container {name}: {}", Chain(&e));
                up.failure
                    .get_or_insert((format!("container {name}: {}", Chain(&e)), e.reason()));
            }
        }
    }
    up
}

/// Removes the containers of this deployment no longer in the score; the
/// first that cannot go becomes the pass's failure, if it has none.
async fn remove_dropped<R: Runtime>(
    ctx: &Context<R>,
    deployment: &str,
    score: &[Wanted<'_>],
    existing: &[ManagedContainer],
    failure: &mut Option<(String, Reason)>,
) {
    let wanted: BTreeSet<&str> = score.iter().map(|w| w.c.name.as_str()).collect();
    for old in existing {
        if !wanted.contains(old.label(labels::CONTAINER)) {
            match ctx.runtime.remove(&old.id, stop_timeout_of(ctx, old)).await {
                Ok(()) => crate::info!(
                    "{deployment}: removed {} (no longer in the score)",
                    old.name
                ),
                Err(e) => {
                    failure.get_or_insert((
                        format!("removing {}: {}", old.name, Chain(&e)),
                        Reason::Error,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::spec::{check_policy, create_spec};
    use super::status::map_state;
    use super::*;
    use crate::testing::MemoryRuntime;
    use protocol::{
        BoundedVec, Container, ContainerState, DesiredState, IotScore, PortProtocol, Text, Volume,
    };

    fn with_host_path(p: &'static str) -> Container<'static> {
        Container {
            volumes: BoundedVec::try_from_iter([Volume {
                name: None,
                host_path: Some(Text::borrowed(p)),
                mount_path: Text::borrowed("/data"),
                read_only: false,
            }])
            .unwrap(),
            ..Container::new(Text::borrowed("c"), Text::borrowed("localhost/x:1"))
        }
    }

    #[test]
    fn host_paths_must_be_under_an_allowed_directory() {
        let allowed = Allowances {
            host_paths: vec![std::path::PathBuf::from("/srv")],
            ..Allowances::default()
        };
        assert!(check_policy(&allowed, &[with_host_path("/srv")]).is_ok());
        assert!(check_policy(&allowed, &[with_host_path("/srv/web/data")]).is_ok());
        for bad in ["/srv2", "/etc", "/srv/../etc", "/"] {
            let e = check_policy(&allowed, &[with_host_path(bad)]).unwrap_err();
            assert!(
                matches!(&e, crate::policy::PolicyError::HostPath { path, .. } if path == bad),
                "{e:?}"
            );
            let e = e.to_string();
            assert!(e.contains("allowed_host_paths") && e.contains(bad), "{e}");
        }
        assert!(check_policy(&Allowances::default(), &[with_host_path("/srv")]).is_err());
    }

    type Statuses = mpsc::UnboundedReceiver<StatusReport>;

    fn context(order: ReplaceOrder) -> (Rc<Context<MemoryRuntime>>, Statuses) {
        context_with(order, Allowances::default())
    }

    fn context_with(
        order: ReplaceOrder,
        policy: Allowances,
    ) -> (Rc<Context<MemoryRuntime>>, Statuses) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Context {
            runtime: Rc::new(MemoryRuntime::recording()),
            device_id: "dev".into(),
            stop_timeout_secs: 10,
            replace_order: order,
            policy,
            status: tx,
            retry_base: Duration::from_millis(1),
            retry_cap: Duration::from_millis(1),
            restart_backoff: RestartBackoff::default(),
            lock_dir: std::env::temp_dir().join(format!("iot-agent-lock-{}", std::process::id())),
            secrets: Rc::new(crate::secrets::Secrets::none("dev")),
        };
        (Rc::new(ctx), rx)
    }

    fn sleeper(tag: &'static str) -> Container<'static> {
        let mut c = with_host_path("/unused");
        c.volumes = BoundedVec::new();
        c.env = BoundedVec::try_from_iter([protocol::EnvVar {
            name: Text::borrowed("TAG"),
            value: Text::borrowed(tag),
        }])
        .unwrap();
        c
    }

    fn with_host_port(tag: &'static str) -> Container<'static> {
        let mut c = sleeper(tag);
        c.ports = BoundedVec::try_from_iter([protocol::Port {
            container_port: 80,
            host_port: Some(8080),
            protocol: PortProtocol::Tcp,
            host_ip: None,
        }])
        .unwrap();
        c
    }

    fn value(revision: u64, c: Container<'static>) -> Vec<u8> {
        let score = IotScore::PodmanV0(protocol::PodmanV0Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision,
            score: score.to_payload().unwrap(),
            rollout: protocol::RolloutPolicy::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap()
    }

    /// Applies `revision` and returns the last status reported.
    async fn apply_rev(
        ctx: &Context<MemoryRuntime>,
        rx: &mut Statuses,
        revision: u64,
        c: Container<'static>,
    ) -> DeploymentStatus<'static> {
        let _ = apply(
            ctx,
            "web",
            &value(revision, c),
            &mut Memory::new(mpsc::unbounded_channel().0),
        )
        .await;
        let mut last = None;
        while let Ok((_, s)) = rx.try_recv() {
            last = Some(s);
        }
        last.unwrap()
    }

    const NAME: &str = "dev_web_c";

    fn hash(c: &Container<'_>) -> String {
        format!("{:016x}", protocol::wire::hash_of(c))
    }

    /// The name a replacement by `c` is created under while the old
    /// container holds [`NAME`].
    fn temp_name(c: &Container<'_>) -> String {
        format!("{NAME}-{}", hash(c))
    }

    /// The calls that end a replacement: the old container moves aside,
    /// the new one (under `temp`) takes the name, the old one goes.
    fn handover_calls(temp: &str) -> Vec<String> {
        vec![
            format!("rename {NAME} {NAME}-old-id1"),
            format!("rename {temp} {NAME}"),
            format!("remove {NAME}-old-id1"),
        ]
    }

    /// Where every replacement test starts: revision 1 runs, created and
    /// started under its name, and its calls are taken.
    struct Replacing {
        order: ReplaceOrder,
        ctx: Rc<Context<MemoryRuntime>>,
        rx: Statuses,
        /// The containers at revision 1.
        before: Vec<(String, String, String)>,
    }

    impl Replacing {
        async fn new(order: ReplaceOrder, first: Container<'static>) -> Self {
            let (ctx, mut rx) = context(order);
            let s = apply_rev(&ctx, &mut rx, 1, first).await;
            assert_eq!((s.phase, s.revision), (Phase::Healthy, 1), "{order:?}");
            assert_eq!(
                ctx.runtime.take_calls(),
                [format!("create {NAME}"), format!("start {NAME}")],
                "{order:?}"
            );
            let before = ctx.runtime.snapshot();
            Replacing {
                order,
                ctx,
                rx,
                before,
            }
        }

        /// Applies `c` as revision 2; the last status reported.
        async fn apply(&mut self, c: Container<'static>) -> DeploymentStatus<'static> {
            apply_rev(&self.ctx, &mut self.rx, 2, c).await
        }

        /// The calls since the last time.
        fn calls(&self) -> Vec<String> {
            self.ctx.runtime.take_calls()
        }

        /// Only revision 2 is left, running under the container's name.
        fn assert_replaced(&self) {
            assert_eq!(
                self.ctx.runtime.snapshot(),
                [(NAME.to_string(), "running".to_string(), "2".to_string())],
                "{:?}",
                self.order
            );
        }

        /// Revision 1 is as it was.
        fn assert_untouched(&self) {
            assert_eq!(self.ctx.runtime.snapshot(), self.before, "{:?}", self.order);
        }
    }

    #[tokio::test]
    async fn each_context_applies_its_own_policy() {
        let (strict, mut strict_rx) = context(ReplaceOrder::StartFirst);
        let (loose, mut loose_rx) = context_with(
            ReplaceOrder::StartFirst,
            Allowances {
                privileged: true,
                ..Allowances::default()
            },
        );
        let mut c = sleeper("1");
        c.privileged = true;
        let s = apply_rev(&strict, &mut strict_rx, 1, c.clone()).await;
        assert_eq!(s.phase, Phase::Failed);
        assert!(
            s.message.contains("allow_privileged"),
            "{}",
            s.message.as_str()
        );
        assert!(strict.runtime.snapshot().is_empty());
        let s = apply_rev(&loose, &mut loose_rx, 1, c).await;
        assert_eq!(s.phase, Phase::Healthy);
        assert_eq!(loose.runtime.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn replacement_starts_before_the_old_container_stops() {
        let mut r = Replacing::new(ReplaceOrder::StartFirst, sleeper("1")).await;
        let s = r.apply(sleeper("2")).await;
        assert_eq!((s.phase, s.revision), (Phase::Healthy, 2));
        let temp = temp_name(&sleeper("2"));
        let started = vec![format!("create {temp}"), format!("start {temp}")];
        assert_eq!(r.calls(), [started, handover_calls(&temp)].concat());
        r.assert_replaced();
    }

    /// A runtime that notes, at each removal, the reports sent so far.
    struct Seeing {
        inner: MemoryRuntime,
        statuses: std::cell::RefCell<Option<Statuses>>,
        log: std::cell::RefCell<Vec<String>>,
    }

    impl Seeing {
        fn note_reports(&self) {
            if let Some(rx) = self.statuses.borrow_mut().as_mut() {
                while let Ok((_, s)) = rx.try_recv() {
                    self.log
                        .borrow_mut()
                        .push(format!("report {} {}", s.phase, s.revision));
                }
            }
        }
    }

    impl Runtime for Seeing {
        async fn version(&self) -> Result<String, crate::podman::RuntimeError> {
            self.inner.version().await
        }
        async fn list_managed(
            &self,
            device_id: &str,
        ) -> Result<Vec<ManagedContainer>, crate::podman::RuntimeError> {
            self.inner.list_managed(device_id).await
        }
        async fn inspect(
            &self,
            id: &str,
        ) -> Result<crate::podman::ContainerInfo, crate::podman::RuntimeError> {
            self.inner.inspect(id).await
        }
        async fn image_exists(&self, image: &str) -> Result<bool, crate::podman::RuntimeError> {
            self.inner.image_exists(image).await
        }
        async fn pull(
            &self,
            image: &str,
            auth: Option<&crate::podman::RegistryAuth>,
        ) -> Result<(), crate::podman::RuntimeError> {
            self.inner.pull(image, auth).await
        }
        async fn create_secret(
            &self,
            name: &str,
            data: &[u8],
            dir: &std::path::Path,
            labels: &std::collections::BTreeMap<String, String>,
        ) -> Result<(), crate::podman::RuntimeError> {
            self.inner.create_secret(name, data, dir, labels).await
        }
        async fn list_secrets(
            &self,
            prefix: &str,
        ) -> Result<Vec<(String, String)>, crate::podman::RuntimeError> {
            self.inner.list_secrets(prefix).await
        }
        async fn remove_secret(&self, name: &str) -> Result<(), crate::podman::RuntimeError> {
            self.inner.remove_secret(name).await
        }
        async fn create(
            &self,
            spec: &crate::podman::CreateSpec,
        ) -> Result<String, crate::podman::RuntimeError> {
            self.inner.create(spec).await
        }
        async fn rename(
            &self,
            id: &str,
            new_name: &str,
        ) -> Result<(), crate::podman::RuntimeError> {
            self.inner.rename(id, new_name).await
        }
        async fn start(&self, id: &str) -> Result<(), crate::podman::RuntimeError> {
            self.inner.start(id).await
        }
        async fn stop(&self, id: &str, t: u64) -> Result<(), crate::podman::RuntimeError> {
            self.inner.stop(id, t).await
        }
        async fn remove(&self, id: &str, t: u64) -> Result<(), crate::podman::RuntimeError> {
            self.note_reports();
            self.log.borrow_mut().push(format!("remove {id}"));
            self.inner.remove(id, t).await
        }
        async fn exec(
            &self,
            id: &str,
            command: &[String],
            timeout: Duration,
        ) -> Result<crate::podman::ExecOutcome, crate::podman::RuntimeError> {
            self.inner.exec(id, command, timeout).await
        }
    }

    /// Under the update lock, the gate releases the lock on the report of
    /// the new revision: the replaced container is gone by then, or a
    /// workload that waited for the lock in it would get it and be stopped
    /// right after. Without the lock, the report goes first.
    #[tokio::test]
    async fn under_the_update_lock_the_replaced_container_goes_before_the_report() {
        for under_lock in [true, false] {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Context {
                runtime: Rc::new(Seeing {
                    inner: MemoryRuntime::default(),
                    statuses: std::cell::RefCell::new(Some(rx)),
                    log: std::cell::RefCell::new(Vec::new()),
                }),
                device_id: "dev".into(),
                stop_timeout_secs: 10,
                replace_order: ReplaceOrder::StartFirst,
                policy: Allowances::default(),
                status: tx,
                retry_base: Duration::from_millis(1),
                retry_cap: Duration::from_millis(1),
                restart_backoff: RestartBackoff::default(),
                lock_dir: std::env::temp_dir()
                    .join(format!("iot-agent-lock-{}", std::process::id())),
                secrets: Rc::new(crate::secrets::Secrets::none("dev")),
            };
            let gated = |revision: u64, tag: &'static str| {
                let score = IotScore::PodmanV0(protocol::PodmanV0Score {
                    containers: BoundedVec::try_from_iter([sleeper(tag)]).unwrap(),
                });
                protocol::wire::encode_to_vec(&DesiredState {
                    deployment: Text::borrowed("web"),
                    revision,
                    score: score.to_payload().unwrap(),
                    rollout: protocol::RolloutPolicy::default(),
                    attempt: 0,
                    gate: protocol::UpdateGate {
                        update_lock: under_lock.then(protocol::UpdateLockPolicy::default),
                        ..Default::default()
                    },
                    secrets: Default::default(),
                })
                .unwrap()
            };
            let mut memory = Memory::new(mpsc::unbounded_channel().0);
            let _ = apply(&ctx, "web", &gated(1, "1"), &mut memory).await;
            ctx.runtime.note_reports();
            ctx.runtime.log.borrow_mut().clear();
            let _ = apply(&ctx, "web", &gated(2, "2"), &mut memory).await;
            ctx.runtime.note_reports();
            let log = ctx.runtime.log.take();
            let removed = log.iter().position(|l| l.starts_with("remove ")).unwrap();
            let reported = log.iter().position(|l| l == "report Healthy 2").unwrap();
            assert_eq!(removed < reported, under_lock, "{log:?}");
        }
    }

    #[tokio::test]
    async fn a_host_port_or_stop_first_stops_the_old_container_first() {
        for (order, make) in [
            (
                ReplaceOrder::StartFirst,
                with_host_port as fn(&'static str) -> Container<'static>,
            ),
            (ReplaceOrder::StopFirst, sleeper),
        ] {
            let mut r = Replacing::new(order, make("1")).await;
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Healthy, 2), "{order:?}");
            let temp = temp_name(&make("2"));
            let started = vec![
                format!("create {temp}"),
                format!("stop {NAME}"),
                format!("start {temp}"),
            ];
            assert_eq!(
                r.calls(),
                [started, handover_calls(&temp)].concat(),
                "{order:?}"
            );
            r.assert_replaced();
        }
    }

    #[tokio::test]
    async fn a_replacement_that_cannot_be_created_leaves_the_old_one_running() {
        for order in [ReplaceOrder::StartFirst, ReplaceOrder::StopFirst] {
            let mut r = Replacing::new(order, sleeper("1")).await;
            r.ctx.runtime.fail_create.set(true);
            let s = r.apply(sleeper("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Failed, 2), "{order:?}");
            assert!(
                s.message.contains("cannot create"),
                "{}",
                s.message.as_str()
            );
            r.assert_untouched();
            assert!(
                r.calls().iter().all(|c| c.starts_with("create")),
                "{order:?}: the old container was touched"
            );
        }
    }

    #[tokio::test]
    async fn a_replacement_that_cannot_start_is_removed_and_the_old_one_runs_again() {
        for (order, make) in [
            (
                ReplaceOrder::StartFirst,
                sleeper as fn(&'static str) -> Container<'static>,
            ),
            (ReplaceOrder::StartFirst, with_host_port),
            (ReplaceOrder::StopFirst, sleeper),
        ] {
            let mut r = Replacing::new(order, make("1")).await;
            r.ctx.runtime.fail_start_revision.set(Some(2));
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Failed, 2), "{order:?}");
            assert!(
                s.message.contains("executable file not found"),
                "{}",
                s.message.as_str()
            );
            r.assert_untouched();
            // Once the cause is gone, the retry replaces it.
            r.ctx.runtime.fail_start_revision.set(None);
            let s = r.apply(make("2")).await;
            assert_eq!((s.phase, s.revision), (Phase::Healthy, 2), "{order:?}");
            r.assert_replaced();
        }
    }

    #[tokio::test]
    async fn an_interrupted_replacement_is_finished_without_a_new_container() {
        let mut r = Replacing::new(ReplaceOrder::StartFirst, sleeper("1")).await;
        // As if the agent died after starting the replacement: both run,
        // the new one under its temporary name.
        let temp = temp_name(&sleeper("2"));
        let wanted = Wanted {
            c: protocol::ContainerV1::from_v0(sleeper("2")),
            hash: hash(&sleeper("2")),
            agent_restarts: false,
            handed: Default::default(),
            pull_auth: None,
        };
        let spec = create_spec(&r.ctx, "web", 2, &wanted, temp.clone());
        let id = r.ctx.runtime.create(&spec).await.unwrap();
        r.ctx.runtime.start(&id).await.unwrap();
        r.calls();
        let s = r.apply(sleeper("2")).await;
        assert_eq!((s.phase, s.revision), (Phase::Healthy, 2));
        assert_eq!(r.calls(), handover_calls(&temp));
        r.assert_replaced();
    }

    /// Receives the next status report, failing after a generous bound.
    async fn next_status(rx: &mut Statuses) -> (Phase, u64) {
        let (_, s) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a status report")
            .expect("the reconciler is running");
        (s.phase, s.revision)
    }

    /// Runs a reconciler that starts knowing `known` on `value` until it
    /// reports `until`; the phases reported on the way.
    async fn run_until(
        ctx: &Rc<Context<MemoryRuntime>>,
        rx: &mut Statuses,
        value: Vec<u8>,
        known: Known,
        until: (Phase, u64),
    ) -> Vec<Phase> {
        let (tx, targets) = watch::channel(Target {
            value: Some(Bytes::from(value)),
            nudge: 0,
        });
        let mut phases = Vec::new();
        let driver = async {
            loop {
                let seen = next_status(rx).await;
                phases.push(seen.0);
                if seen == until {
                    break;
                }
            }
            drop(tx);
        };
        tokio::join!(run(ctx.clone(), "web".into(), targets, known), driver);
        phases
    }

    #[tokio::test]
    async fn a_deployment_known_to_have_no_containers_is_created_without_a_list() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        let phases = run_until(
            &ctx,
            &mut rx,
            value(1, sleeper("1")),
            Known::NoContainers,
            (Phase::Healthy, 1),
        )
        .await;
        assert_eq!(phases, [Phase::Healthy]);
        assert_eq!(ctx.runtime.lists.get(), 0, "the first pass listed");
        assert_eq!(
            ctx.runtime.take_calls(),
            [format!("create {NAME}"), format!("start {NAME}")]
        );
        // Without the hint, the same apply lists first.
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        run_until(
            &ctx,
            &mut rx,
            value(1, sleeper("1")),
            Known::Nothing,
            (Phase::Healthy, 1),
        )
        .await;
        assert_eq!(ctx.runtime.lists.get(), 1);
    }

    #[tokio::test]
    async fn a_wrong_no_containers_hint_costs_a_pass_not_a_container() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        // A container of this deployment that the hint does not know of.
        apply_rev(&ctx, &mut rx, 1, sleeper("1")).await;
        ctx.runtime.take_calls();
        let phases = run_until(
            &ctx,
            &mut rx,
            value(2, sleeper("2")),
            Known::NoContainers,
            (Phase::Healthy, 2),
        )
        .await;
        // The create under the taken name fails; the retry lists and
        // replaces the container.
        assert_eq!(phases, [Phase::Failed, Phase::Healthy], "{phases:?}");
        let after = ctx.runtime.snapshot();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!((after[0].0.as_str(), after[0].2.as_str()), (NAME, "2"));
    }

    #[tokio::test]
    async fn a_deleted_deployment_reports_removed_once_at_its_last_revision() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        // The same spec at both revisions: the container keeps the
        // revision label 1 that created it.
        let at = |revision: u64| Some(Bytes::from(value(revision, sleeper("1"))));
        let (tx, targets) = watch::channel(Target {
            value: at(1),
            nudge: 0,
        });
        let driver = async {
            assert_eq!(next_status(&mut rx).await, (Phase::Healthy, 1));
            tx.send_modify(|t| t.value = at(2));
            assert_eq!(next_status(&mut rx).await, (Phase::Healthy, 2));
            tx.send_modify(|t| t.value = None);
            assert_eq!(next_status(&mut rx).await, (Phase::Removed, 2));
            // Podman's events for the removal nudge the reconciler; closing
            // the channel after the nudge ends it once that pass is done.
            tx.send_modify(|t| t.nudge += 1);
            drop(tx);
        };
        tokio::join!(
            run(ctx.clone(), "web".into(), targets, Known::Nothing),
            driver
        );
        let mut after = Vec::new();
        while let Ok((_, s)) = rx.try_recv() {
            after.push((s.phase, s.revision));
        }
        assert_eq!(after, [], "reported again after Removed");
        assert!(ctx.runtime.snapshot().is_empty());
    }

    fn value_v1(revision: u64, c: protocol::ContainerV1<'static>) -> Vec<u8> {
        let score = IotScore::PodmanV1(protocol::PodmanV1Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision,
            score: score.to_payload().unwrap(),
            rollout: protocol::RolloutPolicy::default(),
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap()
    }

    /// The agent restarts a `PodmanV1` container: at once after its first
    /// exit, after the back-off after the next, reporting the wait.
    #[tokio::test]
    async fn podman_v1_exits_are_restarted_with_back_off() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        let value = value_v1(1, protocol::ContainerV1::from_v0(sleeper("1")));
        let mut memory = Memory::new(mpsc::unbounded_channel().0);
        let mut pass = async |memory: &mut Memory| {
            let outcome = apply(&ctx, "web", &value, memory).await;
            assert!(matches!(outcome, Outcome::Settled));
            let mut last = None;
            while let Ok((_, s)) = rx.try_recv() {
                last = Some(s);
            }
            last.unwrap()
        };
        let s = pass(&mut memory).await;
        assert_eq!(s.phase, Phase::Healthy);
        let id = ctx.runtime.list_managed("dev").await.unwrap()[0].id.clone();
        ctx.runtime.take_calls();
        // Podman restarts nothing: the agent does, at once the first time.
        ctx.runtime.oom_killed.set(true);
        ctx.runtime.exit(&id, 137);
        let before = Instant::now();
        let s = pass(&mut memory).await;
        assert_eq!(ctx.runtime.take_calls(), [format!("start {NAME}")]);
        let c = &s.containers[0];
        // Not Healthy in the pass that restarted it, even without
        // minHealthySeconds; the pass looks again a moment later.
        assert_eq!(s.phase, Phase::Running);
        // The hold starts over at the restart.
        assert!(memory.healthy_since.is_some_and(|t| t >= before));
        assert_eq!(
            (c.state, c.restart_count, c.exit_code),
            (ContainerState::Running, 1, Some(137))
        );
        let wake = memory.wake_at.unwrap();
        assert!(wake >= before + Duration::from_secs(1), "{wake:?}");
        // Not even a moment later (Podman may say a process that exits at
        // once runs for a while).
        let s = pass(&mut memory).await;
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(memory.wake_at, Some(wake));
        // Still running then, without another restart: Healthy.
        memory.not_healthy_before = Some(Instant::now());
        let s = pass(&mut memory).await;
        assert_eq!(
            (s.phase, s.containers[0].restart_count),
            (Phase::Healthy, 1)
        );
        assert_eq!(memory.wake_at, None);
        // Then after 10 s.
        ctx.runtime.exit(&id, 137);
        let before = Instant::now();
        let s = pass(&mut memory).await;
        assert_eq!(ctx.runtime.take_calls(), Vec::<String>::new());
        let c = &s.containers[0];
        assert_eq!(
            (s.phase, s.reason),
            (Phase::CrashLoopBackOff, Reason::OOMKilled)
        );
        assert_eq!(
            (c.state, c.restart_count, c.exit_code, c.reason),
            (ContainerState::Waiting, 1, Some(137), Reason::OOMKilled)
        );
        assert!(s.message.contains("back-off 10s"), "{}", s.message.as_str());
        let wake = memory.wake_at.unwrap();
        assert!(wake >= before + Duration::from_secs(10), "{wake:?}");
        // A pass before the deadline changes nothing.
        let s = pass(&mut memory).await;
        assert_eq!(s.phase, Phase::CrashLoopBackOff);
        assert_eq!(memory.wake_at, Some(wake));
        assert_eq!(ctx.runtime.snapshot()[0].1, "exited");
    }

    /// A `PodmanV0` status with nothing new to say (Completed, Removed, a
    /// refused value) is written in format version 1, byte for byte what
    /// an older agent wrote; a Healthy one, or one with a reason, is 2.
    #[tokio::test]
    async fn podman_v0_statuses_with_nothing_new_stay_version_1() {
        let version = |s: &DeploymentStatus<'_>| protocol::wire::encode_to_vec(s).unwrap()[0];
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        let s = apply_rev(&ctx, &mut rx, 1, sleeper("1")).await;
        assert_eq!((s.phase, version(&s)), (Phase::Healthy, 2));
        let mut done = sleeper("1");
        done.restart_policy = protocol::RestartPolicy::Never;
        let s = apply_rev(&ctx, &mut rx, 2, done.clone()).await;
        let id = ctx.runtime.list_managed("dev").await.unwrap()[0].id.clone();
        ctx.runtime.exit(&id, 0);
        let s2 = apply_rev(&ctx, &mut rx, 2, done.clone()).await;
        assert_eq!(
            (s.phase, s2.phase, version(&s2)),
            (Phase::Healthy, Phase::Completed, 1)
        );
        ctx.runtime.exit(&id, 3);
        let s = apply_rev(&ctx, &mut rx, 2, done).await;
        assert_eq!(
            (s.phase, s.reason, version(&s)),
            (Phase::Failed, Reason::Error, 2)
        );
        let _ = apply(
            &ctx,
            "web",
            b"\xff",
            &mut Memory::new(mpsc::unbounded_channel().0),
        )
        .await;
        let (_, s) = rx.try_recv().unwrap();
        assert_eq!((s.phase, version(&s)), (Phase::Failed, 1));
        let _ = remove(&ctx, "web", &mut Memory::new(mpsc::unbounded_channel().0)).await;
        let (_, s) = rx.try_recv().unwrap();
        assert_eq!((s.phase, version(&s)), (Phase::Removed, 1));
    }

    /// With `minHealthySeconds`, a deployment that runs is Running until
    /// that long has passed, and the pass asks to run again then.
    #[tokio::test]
    async fn healthy_once_it_held_min_healthy_seconds() {
        let (ctx, mut rx) = context(ReplaceOrder::StartFirst);
        let score = IotScore::PodmanV0(protocol::PodmanV0Score {
            containers: BoundedVec::try_from_iter([sleeper("1")]).unwrap(),
        });
        let value = protocol::wire::encode_to_vec(&DesiredState {
            deployment: Text::borrowed("web"),
            revision: 1,
            score: score.to_payload().unwrap(),
            rollout: protocol::RolloutPolicy {
                min_healthy_seconds: 30,
                ..protocol::RolloutPolicy::default()
            },
            attempt: 0,
            gate: Default::default(),
            secrets: Default::default(),
        })
        .unwrap();
        let mut memory = Memory::new(mpsc::unbounded_channel().0);
        let before = Instant::now();
        let _ = apply(&ctx, "web", &value, &mut memory).await;
        let (_, s) = rx.try_recv().unwrap();
        assert_eq!(s.phase, Phase::Running);
        let since = memory.healthy_since.unwrap();
        assert!(since >= before);
        assert_eq!(memory.wake_at, Some(since + Duration::from_secs(30)));
        // Another pass before then: still Running, the same deadline.
        let _ = apply(&ctx, "web", &value, &mut memory).await;
        let (_, s) = rx.try_recv().unwrap();
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(memory.healthy_since, Some(since));
        // Once it held 30 s (as if `since` were earlier): Healthy.
        memory.healthy_since = Instant::now().checked_sub(Duration::from_secs(31));
        let _ = apply(&ctx, "web", &value, &mut memory).await;
        let (_, s) = rx.try_recv().unwrap();
        assert_eq!(s.phase, Phase::Healthy);
        assert_eq!(memory.wake_at, None);
    }

    #[test]
    fn podman_states() {
        assert_eq!(map_state("running"), ContainerState::Running);
        assert_eq!(map_state("configured"), ContainerState::Created);
        assert_eq!(map_state("exited"), ContainerState::Exited);
        assert_eq!(map_state("something-new"), ContainerState::Unknown);
    }
}
