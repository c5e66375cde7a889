//! One container's health over time: when its check runs, and what the
//! results add up to.
//!
//! [`Monitor`] is the rule, pure (it is given results and instants, and
//! reads no clock): a check every `interval`, the first one interval after
//! the container started; `success_threshold` passes in a row make it
//! [`Health::Healthy`], `failure_threshold` failures in a row make it
//! [`Health::Unhealthy`], and it is [`Health::Starting`] until either
//! happens. A failure of a check begun within `start_period`, while still
//! `Starting`, does not count (Docker's `--health-start-period`; Kubernetes
//! gives a slow starter the same room with a startup probe); a pass in it
//! does, so a quick starter is Healthy at once. A check that runs longer
//! than an interval makes the checks it overlapped be skipped, not run
//! back to back (Kubernetes' ticker).
//!
//! [`Checker`] drives a monitor on tokio time, running the real check, and
//! [`Watch`] runs a checker as a task that reports each [`Change`] on a
//! channel. A container that restarts gets a new monitor (and target: its
//! address may change), so its start period applies again.

use std::rc::Rc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::probe::{self, Outcome, Probe, Target};
use crate::podman::Runtime;

/// What the checks say of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Neither threshold reached yet since the container started.
    Starting,
    /// The last `success_threshold` checks passed.
    Healthy,
    /// The last `failure_threshold` counted checks failed.
    Unhealthy,
}

/// When checks run and how their results count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between one check's start and the next's.
    pub interval: Duration,
    /// Longest one check may take; then it fails.
    pub timeout: Duration,
    /// After the container starts, failures do not count while `Starting`.
    pub start_period: Duration,
    /// Passes in a row that make it Healthy (at least 1).
    pub success_threshold: u32,
    /// Counted failures in a row that make it Unhealthy (at least 1).
    pub failure_threshold: u32,
}

/// The health rule for one container run (see the module doc).
#[derive(Debug, Clone)]
pub struct Monitor {
    timing: Timing,
    started: Instant,
    next_due: Instant,
    health: Health,
    successes: u32,
    failures: u32,
    last_failure: Option<String>,
}

impl Monitor {
    /// A monitor for a container that started at `started`.
    pub fn new(timing: Timing, started: Instant) -> Monitor {
        let timing = Timing {
            // A zero interval would check in a tight loop.
            interval: timing.interval.max(Duration::from_millis(1)),
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
            ..timing
        };
        Monitor {
            timing,
            started,
            next_due: started + timing.interval,
            health: Health::Starting,
            successes: 0,
            failures: 0,
            last_failure: None,
        }
    }

    /// The timing it applies.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the next check is due.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// The reason of the last failed check, until a check passes.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Passes and counted failures in a row, as (passes, failures).
    pub fn streaks(&self) -> (u32, u32) {
        (self.successes, self.failures)
    }

    /// Takes the outcome of the check begun at `began` and ended at
    /// `ended`; returns the new health when it changed.
    pub fn record(&mut self, outcome: Outcome, began: Instant, ended: Instant) -> Option<Health> {
        // The next check: one interval after this one was due, skipping
        // the ticks this one overran.
        let mut next = self.next_due + self.timing.interval;
        if ended >= next {
            let behind = ended.duration_since(next).as_nanos();
            let ticks = behind / self.timing.interval.as_nanos() + 1;
            next += self.timing.interval * u32::try_from(ticks).unwrap_or(u32::MAX);
        }
        self.next_due = next;

        let before = self.health;
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.last_failure = None;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.timing.success_threshold {
                    self.health = Health::Healthy;
                }
            }
            Outcome::Fail(reason) => {
                self.successes = 0;
                self.last_failure = Some(reason);
                let grace = self.health == Health::Starting
                    && began.saturating_duration_since(self.started) < self.timing.start_period;
                if !grace {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures >= self.timing.failure_threshold {
                        self.health = Health::Unhealthy;
                    }
                }
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// A change of a container's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new health.
    pub health: Health,
    /// Why the last check failed (set when `Unhealthy`).
    pub reason: Option<String>,
}

/// A [`Monitor`] driven on tokio time, running `probe` against `target`.
pub struct Checker<R> {
    runtime: Rc<R>,
    probe: Probe,
    target: Target,
    monitor: Monitor,
}

impl<R: Runtime> Checker<R> {
    /// A checker for a container that started at `started` (usually now).
    pub fn new(
        runtime: Rc<R>,
        probe: Probe,
        target: Target,
        timing: Timing,
        started: Instant,
    ) -> Checker<R> {
        Checker {
            runtime,
            probe,
            target,
            monitor: Monitor::new(timing, started),
        }
    }

    /// The monitor, for its health and streaks.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Runs checks as they fall due until the health changes. Each check
    /// is bounded by the timing's timeout, so this never hangs on one.
    ///
    /// Cancel-safe: the monitor changes only when a check has ended, so a
    /// `select!` that drops this future loses at most the check in
    /// flight, which the next call runs again at once.
    pub async fn next_change(&mut self) -> Change {
        loop {
            tokio::time::sleep_until(self.monitor.next_due()).await;
            let began = Instant::now();
            let timeout = self.monitor.timing().timeout;
            let outcome = probe::run(&self.probe, &self.target, &*self.runtime, timeout).await;
            if let Outcome::Fail(reason) = &outcome {
                crate::debug!("health check of {:?} failed: {reason}", self.target);
            }
            if let Some(health) = self.monitor.record(outcome, began, Instant::now()) {
                return Change {
                    health,
                    reason: self.monitor.last_failure().map(str::to_string),
                };
            }
        }
    }
}

/// A [`Checker`] running as a local task (the agent's runtime is
/// single-threaded), sending `(key, change)` for each change; the task
/// ends when this is dropped or the receiver is.
///
/// A deployment's reconciler keeps one per container with a check, all
/// sending on one channel whose receiver it `select!`s on beside its
/// other inputs, and drops (or replaces) a container's watch when it
/// stops or restarts that container.
#[derive(Debug)]
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts `checker` on the current `LocalSet`.
    pub fn spawn<R: Runtime, K: Clone + 'static>(
        mut checker: Checker<R>,
        key: K,
        changes: mpsc::UnboundedSender<(K, Change)>,
    ) -> Watch {
        let task = tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    change = checker.next_change() => {
                        if changes.send((key.clone(), change)).is_err() {
                            return;
                        }
                    }
                    () = changes.closed() => return,
                }
            }
        });
        Watch { task }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::podman::CreateSpec;
    use crate::testing::MemoryRuntime;

    const S: Duration = Duration::from_secs(1);

    fn timing(start_period: u64, success: u32, failure: u32) -> Timing {
        Timing {
            interval: 10 * S,
            timeout: S,
            start_period: S * start_period as u32,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn fail() -> Outcome {
        Outcome::Fail("down".into())
    }

    /// Feeds `outcomes` to `m`, each check run when due and taking 1 ms;
    /// returns the health after each.
    fn feed(m: &mut Monitor, outcomes: impl IntoIterator<Item = Outcome>) -> Vec<Health> {
        outcomes
            .into_iter()
            .map(|o| {
                let due = m.next_due();
                m.record(o, due, due + Duration::from_millis(1));
                m.health()
            })
            .collect()
    }

    use Health::{Healthy, Starting, Unhealthy};

    #[test]
    fn thresholds_count_results_in_a_row() {
        let t0 = Instant::now();
        let mut m = Monitor::new(timing(0, 2, 3), t0);
        assert_eq!(m.next_due(), t0 + 10 * S);
        let got = feed(
            &mut m,
            [
                Outcome::Pass,
                fail(),
                Outcome::Pass,
                Outcome::Pass,
                fail(),
                fail(),
                Outcome::Pass,
                fail(),
                fail(),
                fail(),
                fail(),
                Outcome::Pass,
                Outcome::Pass,
            ],
        );
        assert_eq!(
            got,
            [
                Starting, Starting, Starting, Healthy, Healthy, Healthy, Healthy, Healthy, Healthy,
                Unhealthy, Unhealthy, Unhealthy, Healthy
            ]
        );
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        // Checks at 10, 20, 30 s fall in a 35 s start period.
        let mut m = Monitor::new(timing(35, 1, 2), t0);
        assert_eq!(feed(&mut m, [fail(), fail(), fail()]), [Starting; 3]);
        assert_eq!(m.streaks(), (0, 0));
        assert_eq!(m.last_failure(), Some("down"));
        assert_eq!(feed(&mut m, [fail(), fail()]), [Starting, Unhealthy]);

        // A pass ends the grace: failures count from then on, even within
        // the start period.
        let mut m = Monitor::new(timing(35, 1, 2), t0);
        assert_eq!(
            feed(&mut m, [Outcome::Pass, fail(), fail()]),
            [Healthy, Healthy, Unhealthy]
        );
        // Made Unhealthy by the check at 30 s, within the start period.
        assert_eq!(m.next_due(), t0 + 40 * S);
    }

    #[test]
    fn a_transition_is_reported_once() {
        let t0 = Instant::now();
        let mut m = Monitor::new(timing(0, 1, 1), t0);
        let at = m.next_due();
        assert_eq!(m.record(Outcome::Pass, at, at), Some(Healthy));
        let at = m.next_due();
        assert_eq!(m.record(Outcome::Pass, at, at), None);
        let at = m.next_due();
        assert_eq!(m.record(fail(), at, at), Some(Unhealthy));
        assert_eq!(m.last_failure(), Some("down"));
        let at = m.next_due();
        assert_eq!(m.record(fail(), at, at), None);
    }

    #[test]
    fn a_long_check_skips_the_ticks_it_overran() {
        let t0 = Instant::now();
        let mut m = Monitor::new(timing(0, 1, 3), t0);
        let due = m.next_due();
        // Due at 10 s, ran 25 s: the ticks at 20 and 30 s are gone.
        m.record(fail(), due, due + 25 * S);
        assert_eq!(m.next_due(), t0 + 40 * S);
        // Ended exactly on a tick: that tick is gone too.
        let due = m.next_due();
        m.record(fail(), due, due + 10 * S);
        assert_eq!(m.next_due(), t0 + 60 * S);
        // Run late (the task was busy): the schedule does not drift.
        let due = m.next_due();
        m.record(Outcome::Pass, due + 3 * S, due + 4 * S);
        assert_eq!(m.next_due(), t0 + 70 * S);
    }

    #[test]
    fn zero_thresholds_and_interval_are_raised() {
        let t0 = Instant::now();
        let m = Monitor::new(
            Timing {
                interval: Duration::ZERO,
                ..timing(0, 0, 0)
            },
            t0,
        );
        assert_eq!(m.timing().success_threshold, 1);
        assert_eq!(m.timing().failure_threshold, 1);
        assert!(m.next_due() > t0);
    }

    /// The driver over the in-memory runtime: an exec check that passes,
    /// then fails, reported as two changes on the watch's channel; the
    /// watch ends with its owner.
    #[tokio::test]
    async fn watch_reports_changes() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let runtime = Rc::new(MemoryRuntime::default());
                let id = runtime.create(&spec()).await.unwrap();
                runtime.start(&id).await.unwrap();
                let timing = Timing {
                    interval: Duration::from_millis(5),
                    timeout: S,
                    start_period: Duration::ZERO,
                    success_threshold: 2,
                    failure_threshold: 2,
                };
                let checker = Checker::new(
                    runtime.clone(),
                    Probe::Exec {
                        command: vec!["true".into()],
                    },
                    Target::Container(id.clone()),
                    timing,
                    Instant::now(),
                );
                let (tx, mut rx) = mpsc::unbounded_channel();
                let watch = Watch::spawn(checker, "web", tx);
                let (key, change) = rx.recv().await.unwrap();
                assert_eq!((key, change.health, change.reason), ("web", Healthy, None));
                runtime.exec_exit_code.set(1);
                let (_, change) = rx.recv().await.unwrap();
                assert_eq!(change.health, Unhealthy);
                assert_eq!(change.reason.as_deref(), Some("exit code 1"));
                drop(watch);
                assert!(rx.recv().await.is_none(), "the task ends with its watch");
            })
            .await;
    }

    fn spec() -> CreateSpec {
        CreateSpec {
            name: "web".into(),
            image: "img".into(),
            entrypoint: None,
            command: None,
            env: Default::default(),
            secret_env: Default::default(),
            ports: Vec::new(),
            mounts: Vec::new(),
            restart_policy: "no",
            labels: Default::default(),
            stop_timeout_secs: 0,
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            cap_add: Vec::new(),
            devices: Vec::new(),
            run: Default::default(),
        }
    }
}
