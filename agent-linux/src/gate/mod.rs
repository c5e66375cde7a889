//! The update gate: what decides when the device may change a deployment
//! (the update lock, maintenance windows, force).
//!
//! It sits between the desired state (the NATS watch, the cache restored
//! at boot) and the rollback supervisor ([`crate::rollback`]), and between
//! the rollback's relay of the reconcilers' reports and the status writer.
//! A new value (or a delete) that may not apply yet is **held**; the
//! reconciler keeps the **admitted** value, the last one let through.
//!
//! # Rules
//!
//! - A deployment honours the update lock ([`lock`]) when its admitted
//!   value has `gate.updateLock` or a `PodmanV1` container with
//!   `updateLock: true`. The lock protects the containers that run: a first
//!   install never waits for it. While someone holds it, the change waits
//!   (`Waiting`, `UpdateLocked`, who holds it and since when). When it is
//!   free the agent takes it and applies, and keeps it until the reconciler
//!   reports the new revision past `Pending`/`Pulling`/`Starting` (for a
//!   deployment under the lock it reports so only once the replaced
//!   containers are gone: a workload that waited for the lock in an old
//!   container is not stopped right after it got it), or for a delete
//!   until it reports `Removed`; at most [`decide::APPLY_HOLD`] after the
//!   admission or the last report that the change is still pulled or
//!   started, and [`decide::APPLY_HOLD_MAX`] in all. The images of an
//!   update under the lock are pulled first ([`crate::reconcile::prefetch`];
//!   the device reports `Pulling` at the new revision meanwhile), and the
//!   lock is checked only then, so the agent does not hold it through a
//!   download. A lock that cannot be checked holds nothing (said in the
//!   log).
//! - `updateLock.timeoutSeconds` (0: none) counts from when the lock first
//!   held the change back, on the monotonic clock: `Force` then applies,
//!   `Fail` reports `Failed`/`UpdateLockTimeout` and keeps waiting (the
//!   change applies when the lock is released).
//! - Maintenance windows of the NEW value (for a delete, of the admitted
//!   one) gate every change, first installs too: outside them the change
//!   waits (`OutsideMaintenanceWindow`, until the next opening). They are
//!   evaluated on the device's clock, which must be trusted first
//!   ([`clock`]); until then `ClockNotSynchronized`.
//! - A value that differs from the admitted one only in its gate or
//!   rollout policy (a Device's windows edited, `force` toggled) replaces
//!   no container: it is admitted at once. A new `attempt` is gated.
//! - `gate.force` in the new value, or `Iot-Force: true` on the delete,
//!   passes at once. The rollback's own going back is part of a change
//!   already admitted: it does not wait.
//! - A window the agent cannot read (cron, time zone) is refused:
//!   `Failed` naming the field (`gate.windows[0].at: ...`), not applied.
//! - While a change waits, the images of the new value are pulled
//!   ([`crate::reconcile::prefetch`]) once, again after a failure with a
//!   back-off; a failed pull never holds the change back. Each report of
//!   the running containers is published as `Waiting` at the held revision
//!   (`runningRevision` the admitted one), and a new `Waiting` report when
//!   the reason, the holder, the next opening or the pull's state changes.
//!   A prefetch whose value is replaced, withdrawn or admitted is stopped.
//!   `waiting.since` is kept when a newer value replaces the held one (so
//!   is the lock timeout's start), and is counted on the monotonic clock:
//!   a change that waits from before NTP shows the right time once the
//!   clock is set.
//!
//! # The gate's stores, reboots and power cuts
//!
//! Two [`crate::cache`] stores under `state_dir`, each written durably
//! before what it records is carried out: `admitted/<deployment>`, the
//! admitted value (before the reconciler gets it), and
//! `held/<deployment>`, the change that waits (the value, or an empty
//! file for a delete; before the `Waiting` report), dropped when it is
//! admitted or withdrawn. At boot the reconcilers run the admitted values
//! and the held changes go through the gate again (so a board offline
//! applies at its window).
//!
//! These two stores are the truth, not the desired-state cache: the cache
//! is written behind the gate (asynchronously, after the change), so a
//! power cut can leave it older than the admitted value, or without a
//! deployment just installed. Read as desired state, that would be a
//! downgrade or a delete nobody asked for. The rule: a change reaches
//! the gate's stores before the cache (for a delete too: the watch hands
//! it to the gate before it drops the cached value), so at boot the
//! cache never knows a change the gate's stores do not; it is read only
//! at the first start of an agent with a gate (no `admitted` directory
//! yet), whose deployments were running already: admitted at once. A
//! power cut between `admitted` and `held` being updated leaves a held
//! value equal to the admitted one, which boot drops.
//!
//! # Wake-ups
//!
//! The gate's relay sleeps until something needs checking: every
//! `[update] tick_ms` while a change waits for the lock or for a clock
//! still within `clock_sync_wait_secs`, every minute while it waits for a
//! clock that is not trusted, at the next opening (at most a minute: the
//! wall clock may be stepped) while it waits for a window, at the end of
//! the prefetch while an update under the lock waits for its images,
//! never while nothing waits.

pub mod clock;
pub mod decide;
pub mod lock;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{Notify, mpsc};

use crate::cache::Cache;
use crate::config::UpdateConfig;
use crate::log::Chain;
use crate::podman::Runtime;
use crate::reconcile::StatusReport;
use clock::{Clock, ClockTrust, Trust};
use decide::{Effect, Gate, LockState, Senses};
use lock::{Acquired, Guard, UpdateLock};

/// A prefetch's result: the deployment, the held revision, the images
/// pulled or why not.
type Prefetched = (String, u64, Result<Vec<String>, String>);

/// The gate with its store, the lock, the clock and the runtime, as the
/// agent uses it.
pub struct Gatekeeper<R> {
    gate: RefCell<Gate>,
    admitted: Cache,
    held: Cache,
    /// There was an admitted store before this start (see the module doc).
    gated_before: bool,
    lock: UpdateLock,
    /// The agent's hold on the update lock, while a change admitted under
    /// it is not under way.
    guard: RefCell<Option<Guard>>,
    clock: Box<dyn Clock>,
    trust: ClockTrust,
    tick: Duration,
    runtime: Rc<R>,
    /// The status writer.
    out: mpsc::UnboundedSender<StatusReport>,
    prefetched_tx: mpsc::UnboundedSender<Prefetched>,
    prefetched_rx: RefCell<Option<mpsc::UnboundedReceiver<Prefetched>>>,
    /// The prefetch running for each deployment, stopped when its value
    /// is replaced, withdrawn or admitted.
    prefetches: RefCell<BTreeMap<String, tokio::task::AbortHandle>>,
    /// Wakes the relay when the next check may have moved.
    wake: Notify,
    /// Opens the registry logins a prefetch pulls with.
    secrets: Rc<crate::secrets::Secrets>,
}

/// What the agent observes, for [`Gate`].
struct Observed<'a> {
    clock: &'a dyn Clock,
    trust: &'a ClockTrust,
    lock: &'a UpdateLock,
    guard: &'a RefCell<Option<Guard>>,
}

impl Senses for Observed<'_> {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }

    fn clock(&self) -> Trust {
        self.trust.check(self.clock, Instant::now())
    }

    fn lock(&mut self) -> LockState {
        // Held by the agent already (another change being applied): the
        // agent's hold protects this change as well.
        if self.guard.borrow().is_some() {
            return LockState::Free;
        }
        match self.lock.try_acquire() {
            Ok(Acquired::Free(guard)) => {
                *self.guard.borrow_mut() = Some(guard);
                LockState::Free
            }
            Ok(Acquired::Held(holder)) => LockState::Held(holder.to_string()),
            Err(e) => LockState::Unknown(Chain(&e).to_string()),
        }
    }
}

impl<R: Runtime> Gatekeeper<R> {
    /// Opens the admitted store under `state_dir` and creates the update
    /// lock in `update.lock_dir`; statuses go to `out`; windows are
    /// evaluated on `clock`, trusted as [`ClockTrust`] says from now.
    pub fn open(
        state_dir: &Path,
        update: &UpdateConfig,
        runtime: Rc<R>,
        out: mpsc::UnboundedSender<StatusReport>,
        clock: Box<dyn Clock>,
    ) -> std::io::Result<Gatekeeper<R>> {
        let gated_before = state_dir.join(Cache::ADMITTED).is_dir();
        let admitted = Cache::open_admitted(state_dir)?;
        let held = Cache::open_held(state_dir)?;
        let lock = UpdateLock::new(update.lock_dir.clone());
        if let Err(e) = lock.ensure() {
            // Checked again at each use; a workload cannot take a lock
            // that does not exist either.
            crate::warn!(
                "cannot create the update lock {} (check [update] lock_dir): {}",
                lock.path().display(),
                Chain(&e)
            );
        }
        let (prefetched_tx, prefetched_rx) = mpsc::unbounded_channel();
        Ok(Gatekeeper {
            gate: RefCell::new(Gate::default()),
            admitted,
            held,
            gated_before,
            lock,
            guard: RefCell::new(None),
            clock,
            trust: ClockTrust::new(Instant::now(), update.clock_sync_wait()),
            tick: update.tick(),
            runtime,
            out,
            prefetched_tx,
            prefetched_rx: RefCell::new(Some(prefetched_rx)),
            prefetches: RefCell::new(BTreeMap::new()),
            wake: Notify::new(),
            secrets: Rc::new(crate::secrets::Secrets::none("")),
        })
    }

    /// Prefetches pull with the registry logins `secrets` opens.
    pub fn with_secrets(mut self, secrets: Rc<crate::secrets::Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    fn observed(&self) -> Observed<'_> {
        Observed {
            clock: &*self.clock,
            trust: &self.trust,
            lock: &self.lock,
            guard: &self.guard,
        }
    }

    /// At boot, before any network: the reconcilers get the admitted
    /// values through `admit`, and the held changes go through the gate
    /// again; the desired-state cache (`cached`, `None` if it could not be
    /// read) only at the first start with a gate (see the module doc).
    pub fn restore(
        &self,
        cached: Option<BTreeMap<String, Bytes>>,
        admit: &dyn Fn(&str, Option<Bytes>),
    ) {
        let admitted = match self.admitted.load_all() {
            Ok(a) => a.into_iter().map(|(d, v)| (d, Bytes::from(v))).collect(),
            Err(e) => {
                crate::error!(
                    "cannot read the admitted values in state_dir: {}; the cached values go through the gate as new",
                    Chain(&e)
                );
                BTreeMap::new()
            }
        };
        let held = match self.held.load_all() {
            Ok(h) => h
                .into_iter()
                .map(|(d, v)| (d, (!v.is_empty()).then(|| Bytes::from(v))))
                .collect(),
            Err(e) => {
                crate::error!(
                    "cannot read the held changes in state_dir: {}; NATS will tell them again",
                    Chain(&e)
                );
                BTreeMap::new()
            }
        };
        let effects = {
            let mut senses = self.observed();
            self.gate
                .borrow_mut()
                .restore(admitted, held, cached, self.gated_before, &mut senses)
        };
        self.carry_out(effects, admit);
    }

    /// `deployment`'s desired value arrived (`None`: deleted, `force`: with
    /// the override); what may apply goes to the reconciler through
    /// `admit`.
    pub fn arrived(
        &self,
        deployment: &str,
        value: Option<Bytes>,
        force: bool,
        admit: &dyn Fn(&str, Option<Bytes>),
    ) {
        let effects = {
            let mut senses = self.observed();
            self.gate
                .borrow_mut()
                .arrived(deployment, value, force, &mut senses)
        };
        self.carry_out(effects, admit);
    }

    /// The deployments desired (admitted and not deleted, or held first
    /// installs).
    pub fn desired(&self) -> BTreeSet<String> {
        self.gate.borrow().desired()
    }

    /// Whether the gate knows `deployment` (admitted or held).
    pub fn knows(&self, deployment: &str) -> bool {
        let gate = self.gate.borrow();
        gate.desired().contains(deployment) || gate.is_held(deployment)
    }

    /// Relays the reports from `rx` (the rollback's relay) to the status
    /// writer, rewritten while a change is held; checks held changes again
    /// when due, and admits them through `admit`. Runs until `rx` closes.
    pub async fn relay(
        self: Rc<Self>,
        mut rx: mpsc::UnboundedReceiver<StatusReport>,
        admit: impl Fn(&str, Option<Bytes>),
    ) {
        let Some(mut prefetched) = self.prefetched_rx.borrow_mut().take() else {
            crate::error!("the update gate's relay runs once");
            return;
        };
        loop {
            let next = self
                .gate
                .borrow()
                .next_check(self.clock.now(), Instant::now(), self.tick);
            let sleep = async {
                match next {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let effects = tokio::select! {
                r = rx.recv() => match r {
                    Some((d, s)) => {
                        let senses = self.observed();
                        self.gate.borrow_mut().report(&d, s, &senses)
                    }
                    None => return,
                },
                Some((d, revision, result)) = prefetched.recv() => {
                    let mut senses = self.observed();
                    self.gate.borrow_mut().prefetched(&d, revision, result, &mut senses)
                }
                () = sleep => {
                    let mut senses = self.observed();
                    self.gate.borrow_mut().tick(&mut senses)
                }
                () = self.wake.notified() => continue,
            };
            self.carry_out(effects, &admit);
        }
    }

    fn carry_out(&self, effects: Vec<Effect>, admit: &dyn Fn(&str, Option<Bytes>)) {
        for effect in effects {
            match effect {
                Effect::Publish(report) => {
                    let _ = self.out.send(report);
                }
                Effect::StoreAdmitted(d, value) => {
                    if let Err(e) = self.admitted.store(&d, &value) {
                        // Applied all the same: after a reboot the value
                        // before would run until this one is admitted again.
                        crate::error!(
                            "{d}: cannot store the admitted value in state_dir: {}",
                            Chain(&e)
                        );
                    }
                }
                Effect::ForgetAdmitted(d) => {
                    if let Err(e) = self.admitted.remove(&d) {
                        crate::warn!("{d}: cannot remove the admitted value: {}", Chain(&e));
                    }
                }
                Effect::StoreHeld(d, change) => {
                    let bytes = change.unwrap_or_default();
                    if let Err(e) = self.held.store(&d, &bytes) {
                        // Held all the same: after a reboot NATS tells it
                        // again.
                        crate::error!(
                            "{d}: cannot store the held change in state_dir: {}",
                            Chain(&e)
                        );
                    }
                }
                Effect::ForgetHeld(d) => {
                    if let Err(e) = self.held.remove(&d) {
                        crate::warn!("{d}: cannot remove the held change: {}", Chain(&e));
                    }
                }
                Effect::CancelPrefetch(d) => {
                    if let Some(task) = self.prefetches.borrow_mut().remove(&d) {
                        crate::debug!("{d}: prefetch stopped");
                        task.abort();
                    }
                }
                Effect::Admit(d, value) => admit(&d, value),
                Effect::Prefetch {
                    deployment,
                    revision,
                    value,
                } => self.prefetch(deployment, revision, value),
            }
        }
        if !self.gate.borrow().holds_lock() && self.guard.borrow_mut().take().is_some() {
            crate::debug!("update lock released");
        }
        self.wake.notify_one();
    }

    /// Pulls the images of a held value in the background (stopping the
    /// deployment's prefetch still running).
    fn prefetch(&self, deployment: String, revision: u64, value: Bytes) {
        let runtime = self.runtime.clone();
        let secrets = self.secrets.clone();
        let tx = self.prefetched_tx.clone();
        let d = deployment.clone();
        let task = tokio::task::spawn_local(async move {
            crate::debug!("{deployment}: pulling the images of revision {revision} ahead");
            let result = crate::reconcile::prefetch(&*runtime, &secrets, &deployment, &value)
                .await
                .map_err(|e| Chain(&e).to_string());
            let _ = tx.send((deployment, revision, result));
        });
        let mut prefetches = self.prefetches.borrow_mut();
        prefetches.retain(|_, t| !t.is_finished());
        if let Some(old) = prefetches.insert(d, task.abort_handle()) {
            old.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::MemoryRuntime;
    use protocol::{
        BoundedVec, ContainerState, ContainerStatus, ContainerV1, DeploymentStatus, DesiredState,
        IotScore, Phase, PodmanV1Score, Reason, RolloutPolicy, Text, UpdateGate,
    };
    use std::fs::File;
    use std::sync::Arc;

    struct Shared(Arc<clock::ManualClock>);

    impl Clock for Shared {
        fn now(&self) -> Timestamp {
            self.0.now()
        }
        fn synchronized(&self) -> bool {
            self.0.synchronized()
        }
    }

    /// `web` at `revision`, its container under the update lock.
    fn value(revision: u64) -> Bytes {
        let mut c = ContainerV1::new(
            Text::borrowed("c"),
            Text::owned(format!("localhost/x:{revision}")),
        );
        c.update_lock = true;
        let score = IotScore::PodmanV1(PodmanV1Score {
            containers: BoundedVec::try_from_iter([c]).unwrap(),
        });
        Bytes::from(
            protocol::wire::encode_to_vec(&DesiredState {
                deployment: Text::borrowed("web"),
                revision,
                score: score.to_payload().unwrap(),
                rollout: RolloutPolicy::default(),
                attempt: 0,
                gate: UpdateGate::default(),
                secrets: Default::default(),
            })
            .unwrap(),
        )
    }

    fn running(revision: u64) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision,
            phase: Phase::Running,
            containers: BoundedVec::try_from_iter([ContainerStatus::new(
                Text::borrowed("c"),
                ContainerState::Running,
            )])
            .unwrap(),
            message: Text::borrowed(""),
            timestamp_ms: 7,
            reason: Reason::None,
            running_revision: None,
            waiting: None,
        }
    }

    /// Takes the update lock as a workload would (another open file).
    fn hold_lock(dir: &Path) -> Option<File> {
        let f = File::open(dir.join(lock::LOCK_FILE)).unwrap();
        f.try_lock().ok().map(|()| f)
    }

    fn open(dir: &Path, out: mpsc::UnboundedSender<StatusReport>) -> Rc<Gatekeeper<MemoryRuntime>> {
        let update = UpdateConfig {
            lock_dir: dir.join("lock"),
            clock_sync_wait_secs: 0,
            tick_ms: 100,
        };
        let clock = Arc::new(clock::ManualClock::new(
            "2026-06-01T08:00:00Z".parse().unwrap(),
            true,
        ));
        let g = Gatekeeper::open(
            dir,
            &update,
            Rc::new(MemoryRuntime::default()),
            out,
            Box::new(Shared(clock)),
        )
        .unwrap();
        Rc::new(g)
    }

    /// With a real store and a real lock: the admitted value is on disk
    /// when the reconciler gets it; a change waits while a workload holds
    /// the lock, applies within a tick of its release, and the agent holds
    /// the lock until the change is under way; a restart runs the admitted
    /// value and gates the cached one.
    #[tokio::test]
    async fn the_lock_holds_a_change_and_the_admitted_value_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let lock_dir = dir.path().join("lock");
        let admitted_path = dir.path().join("admitted/web");
        let admits = Rc::new(RefCell::new(Vec::new()));
        let admit = {
            let admits = admits.clone();
            let path = admitted_path.clone();
            move |d: &str, v: Option<Bytes>| {
                let on_disk = std::fs::read(&path).ok().map(Bytes::from);
                admits.borrow_mut().push((d.to_string(), v, on_disk));
            }
        };
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (out_tx, mut out) = mpsc::unbounded_channel();
                let g = open(dir.path(), out_tx);
                // A first install: at once, though the lock is held.
                let workload = hold_lock(&lock_dir).unwrap();
                g.arrived("web", Some(value(1)), false, &admit);
                assert_eq!(
                    admits.borrow_mut().drain(..).collect::<Vec<_>>(),
                    [("web".into(), Some(value(1)), Some(value(1)))],
                    "stored before it is admitted"
                );
                // An update: its images first, then it waits for the lock.
                g.arrived("web", Some(value(2)), false, &admit);
                assert!(admits.borrow().is_empty());
                let (_, s) = out.recv().await.unwrap();
                assert_eq!(
                    (s.revision, s.phase, s.running_revision),
                    (2, Phase::Pulling, Some(1))
                );
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::task::spawn_local(g.clone().relay(rx, admit.clone()));
                let (_, s) = out.recv().await.unwrap();
                assert_eq!(
                    (s.revision, s.phase, s.reason, s.running_revision),
                    (2, Phase::Waiting, Reason::UpdateLocked, Some(1))
                );
                // The holder is this process, which /proc/locks does not
                // name to itself.
                assert!(
                    s.message
                        .starts_with("update lock held by another process since "),
                    "{}",
                    s.message.as_str()
                );
                assert!(
                    s.message.ends_with("; new images pulled"),
                    "{}",
                    s.message.as_str()
                );
                // Released: admitted within a tick; the agent holds the lock.
                drop(workload);
                let t = Instant::now();
                while admits.borrow().is_empty() {
                    assert!(t.elapsed() < Duration::from_secs(2), "not admitted");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(
                    admits.borrow_mut().drain(..).collect::<Vec<_>>(),
                    [("web".into(), Some(value(2)), Some(value(2)))]
                );
                assert!(hold_lock(&lock_dir).is_none(), "the agent holds it");
                tx.send(("web".into(), running(2))).unwrap();
                assert_eq!(out.recv().await.unwrap().1, running(2));
                assert!(hold_lock(&lock_dir).is_some(), "released once running");
                // A held change is stored.
                let _workload = hold_lock(&lock_dir).unwrap();
                g.arrived("web", Some(value(3)), false, &admit);
                assert_eq!(out.recv().await.unwrap().1.phase, Phase::Pulling);
                assert_eq!(out.recv().await.unwrap().1.phase, Phase::Waiting);
                drop(tx);
            })
            .await;
        // A restart: the admitted value runs and the held one waits again;
        // the desired-state cache (here stale: behind the admitted value,
        // as after a power cut) is not read.
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (out_tx, mut out) = mpsc::unbounded_channel();
                let g = open(dir.path(), out_tx);
                let _workload = hold_lock(&lock_dir).unwrap();
                g.restore(
                    Some(BTreeMap::from([("web".to_string(), value(1))])),
                    &admit,
                );
                assert_eq!(
                    admits.borrow_mut().drain(..).collect::<Vec<_>>(),
                    [("web".into(), Some(value(2)), Some(value(2)))]
                );
                let (_, s) = out.recv().await.unwrap();
                assert_eq!((s.revision, s.phase), (3, Phase::Pulling));
                assert_eq!(g.desired(), BTreeSet::from(["web".to_string()]));
                // A held delete is stored, and waits again after a restart,
                // whatever the cache says.
                g.arrived("web", None, false, &admit);
                let (_, s) = out.recv().await.unwrap();
                assert!(s.message.contains("the delete waits"));

                let (out_tx, mut out) = mpsc::unbounded_channel();
                let g = open(dir.path(), out_tx);
                g.restore(
                    Some(BTreeMap::from([("web".to_string(), value(2))])),
                    &admit,
                );
                assert_eq!(admits.borrow_mut().drain(..).count(), 1);
                let (_, s) = out.recv().await.unwrap();
                assert_eq!((s.revision, s.phase), (2, Phase::Waiting));
                assert!(s.message.contains("the delete waits"));
                assert!(g.desired().is_empty());
                assert!(g.knows("web"));
            })
            .await;
    }

    /// An agent upgraded from one without a gate runs what its cache holds
    /// at once.
    #[tokio::test]
    async fn an_upgraded_agent_admits_the_cached_values_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let admits = RefCell::new(Vec::new());
        let admit = |d: &str, v: Option<Bytes>| admits.borrow_mut().push((d.to_string(), v));
        let (out_tx, _out) = mpsc::unbounded_channel();
        let g = open(dir.path(), out_tx);
        let _workload = hold_lock(&dir.path().join("lock")).unwrap();
        g.restore(
            Some(BTreeMap::from([("web".to_string(), value(1))])),
            &admit,
        );
        assert_eq!(admits.take(), [("web".to_string(), Some(value(1)))]);
        assert_eq!(
            std::fs::read(dir.path().join("admitted/web")).unwrap(),
            value(1)
        );
    }
}
