//! Restarts by the agent, with back-off, for the containers it restarts
//! itself (`PodmanV1`; Podman's restart policy is `no` for them).
//!
//! Why the agent and not Podman: Podman restarts an exited container at
//! once, in a tight loop, and the count it keeps is reset by the agent's
//! own `start`; only the agent can make a back-off real on Podman 4.3 and
//! 5. The rule is Kubernetes' CrashLoopBackOff: the first restart is at
//! once, the next waits `initial`, each further one twice the last, up to
//! `max`; a container that ran for `2 × max` before it exited starts over
//! at once. A restart `start`s the same exited container (its logs stay).
//! The count and the back-off live in memory, per container: an agent
//! restart starts the count over, but not the wait: a container a new
//! reconciler first sees exited waits `initial` from when it exited
//! (Podman's `FinishedAt`) before its restart, so an agent that restarts
//! again and again cannot restart its containers in a tight loop.
//!
//! [`Restarts`] is the rule, pure: it is given the instants, and the pass
//! (`observe`) does what it says.

use std::time::{Duration, Instant};

use protocol::Reason;

/// The back-off's bounds (`[podman] restart_backoff_*_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    /// The wait before the second restart.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_secs(crate::config::DEFAULT_RESTART_BACKOFF_INITIAL_SECS),
            max: Duration::from_secs(crate::config::DEFAULT_RESTART_BACKOFF_MAX_SECS),
        }
    }
}

impl RestartBackoff {
    fn next(&self, current: Option<Duration>) -> Duration {
        match current {
            None => self.initial,
            Some(d) => (d * 2).min(self.max),
        }
    }
}

/// How a container's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LastExit {
    /// Its exit code.
    pub code: i32,
    /// Why: `CrashLoopBackOff` (it exited), `OOMKilled`, `HealthCheckFailed`.
    pub reason: Reason,
}

/// What to do with an exited container now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Start it again now.
    Start,
    /// Start it again at this instant.
    WaitUntil(Instant),
}

/// One container's restarts, as the agent knows them.
#[derive(Debug, Clone)]
pub(super) struct Restarts {
    /// The container these are of; another id starts over.
    pub id: String,
    /// Restarts the agent made.
    pub count: u32,
    /// The wait before the next restart after an exit; `None`: at once.
    backoff: Option<Duration>,
    /// When it last started, as far as the agent knows.
    pub since: Instant,
    /// When a scheduled restart is due.
    pub waiting: Option<Instant>,
    /// How its last run ended.
    pub last_exit: Option<LastExit>,
    /// A failed health check asked for a restart.
    pub health_restart: bool,
    /// The status said `Unhealthy` before that restart.
    pub health_reported: bool,
}

impl Restarts {
    /// A container first seen at `now`.
    pub fn new(id: &str, now: Instant) -> Restarts {
        Restarts {
            id: id.to_string(),
            count: 0,
            backoff: None,
            since: now,
            waiting: None,
            last_exit: None,
            health_restart: false,
            health_reported: false,
        }
    }

    /// A container first seen exited at `now`, by a reconciler that did
    /// not see it run: it exited `ago` before (from Podman's `FinishedAt`;
    /// `None`: unknown, counted as just now). Its restart waits what is
    /// left of `initial`, then the back-off goes on from there.
    pub fn seen_exited(
        id: &str,
        now: Instant,
        ago: Option<Duration>,
        b: &RestartBackoff,
    ) -> Restarts {
        let mut r = Restarts::new(id, now);
        r.backoff = Some(b.initial);
        r.waiting = Some(now + b.initial.saturating_sub(ago.unwrap_or_default()));
        r
    }

    /// The container is seen exited at `now` (with `exit`) and is to run
    /// again: when.
    pub fn exited(&mut self, now: Instant, exit: LastExit, b: &RestartBackoff) -> Step {
        if let Some(until) = self.waiting {
            self.last_exit.get_or_insert(exit);
            return if now >= until {
                Step::Start
            } else {
                Step::WaitUntil(until)
            };
        }
        self.last_exit = Some(exit);
        if self.backoff.is_some() && now.saturating_duration_since(self.since) >= b.max * 2 {
            self.backoff = None;
        }
        match self.backoff {
            None => Step::Start,
            Some(d) => {
                let until = now + d;
                self.waiting = Some(until);
                Step::WaitUntil(until)
            }
        }
    }

    /// The wait that applies to its next exit (or the current one).
    pub fn backoff(&self) -> Option<Duration> {
        self.backoff
    }

    /// The agent started it again at `now`.
    pub fn started(&mut self, now: Instant, b: &RestartBackoff) {
        self.count = self.count.saturating_add(1);
        self.since = now;
        self.waiting = None;
        self.health_restart = false;
        self.health_reported = false;
        self.backoff = Some(b.next(self.backoff));
    }

    /// Starting it failed at `now`: try again after the next back-off.
    pub fn start_failed(&mut self, now: Instant, b: &RestartBackoff) -> Instant {
        let d = b.next(self.backoff);
        self.backoff = Some(d);
        let until = now + d;
        self.waiting = Some(until);
        until
    }

    /// Seen running at `now`: a wait that something else ended is over.
    pub fn running(&mut self, now: Instant) {
        if self.waiting.take().is_some() {
            self.since = now;
        }
    }
}

/// How long ago Podman's `finished_at` (RFC 3339, as inspect gives it)
/// was, by the device clock; `None` when it is not a time (never exited)
/// or in the future.
pub(super) fn since_finished(finished_at: &str) -> Option<Duration> {
    let at =
        time::OffsetDateTime::parse(finished_at, &time::format_description::well_known::Rfc3339)
            .ok()?;
    // Podman's zero time: the container never exited.
    if at.year() < 1970 {
        return None;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::from(at))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn crash() -> LastExit {
        LastExit {
            code: 1,
            reason: Reason::CrashLoopBackOff,
        }
    }

    /// A container that exits as soon as it starts: restarted at once,
    /// then after 10, 20, 40... up to 300 s.
    #[test]
    fn waits_double_up_to_the_max() {
        let b = RestartBackoff::default();
        let mut now = Instant::now();
        let mut r = Restarts::new("id", now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            match r.exited(now, crash(), &b) {
                Step::Start => waits.push(0),
                Step::WaitUntil(t) => {
                    waits.push((t - now).as_secs());
                    // Passes before the deadline keep the same one.
                    assert_eq!(r.exited(now + S, crash(), &b), Step::WaitUntil(t));
                    now = t;
                    assert_eq!(r.exited(now, crash(), &b), Step::Start);
                }
            }
            r.started(now, &b);
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(r.count, 8);
        assert_eq!(r.last_exit, Some(crash()));
    }

    #[test]
    fn a_long_run_starts_the_back_off_over() {
        let b = RestartBackoff {
            initial: S,
            max: 4 * S,
        };
        let t0 = Instant::now();
        let mut r = Restarts::new("id", t0);
        assert_eq!(r.exited(t0, crash(), &b), Step::Start);
        r.started(t0, &b);
        // Ran 7 s (< 2 × max): waits.
        let t = t0 + 7 * S;
        assert_eq!(r.exited(t, crash(), &b), Step::WaitUntil(t + S));
        r.started(t + S, &b);
        // Ran 8 s (2 × max): at once again.
        let t = t + 9 * S;
        assert_eq!(r.exited(t, crash(), &b), Step::Start);
    }

    /// An agent restart does not skip the back-off: a container first
    /// seen exited waits what is left of `initial` since it exited, then
    /// the waits go on doubling.
    #[test]
    fn a_container_first_seen_exited_waits_from_its_exit() {
        let b = RestartBackoff::default();
        let t0 = Instant::now();
        let mut r = Restarts::seen_exited("id", t0, Some(3 * S), &b);
        assert_eq!(r.exited(t0, crash(), &b), Step::WaitUntil(t0 + 7 * S));
        assert_eq!(r.last_exit, Some(crash()));
        assert_eq!(r.exited(t0 + 7 * S, crash(), &b), Step::Start);
        r.started(t0 + 7 * S, &b);
        assert_eq!(
            r.exited(t0 + 8 * S, crash(), &b),
            Step::WaitUntil(t0 + 28 * S)
        );
        // Long gone: at once; unknown: the whole wait.
        let mut r = Restarts::seen_exited("id", t0, Some(60 * S), &b);
        assert_eq!(r.exited(t0, crash(), &b), Step::Start);
        let mut r = Restarts::seen_exited("id", t0, None, &b);
        assert_eq!(r.exited(t0, crash(), &b), Step::WaitUntil(t0 + 10 * S));
    }

    #[test]
    fn podmans_finished_at_is_read_in_any_offset() {
        let local = since_finished("2024-05-01T10:00:00.123456789+02:00").unwrap();
        let utc = since_finished("2024-05-01T08:00:00.123456789Z").unwrap();
        assert!(local.abs_diff(utc) < S, "{local:?} {utc:?}");
        assert!(utc > 86400 * S);
        assert_eq!(since_finished("0001-01-01T00:00:00Z"), None);
        assert_eq!(since_finished(""), None);
        assert_eq!(
            since_finished("9999-01-01T00:00:00Z"),
            None,
            "in the future"
        );
    }

    #[test]
    fn a_failed_start_waits_the_next_back_off() {
        let b = RestartBackoff::default();
        let t0 = Instant::now();
        let mut r = Restarts::new("id", t0);
        assert_eq!(r.start_failed(t0, &b), t0 + 10 * S);
        assert_eq!(r.exited(t0 + S, crash(), &b), Step::WaitUntil(t0 + 10 * S));
        assert_eq!(r.start_failed(t0 + 10 * S, &b), t0 + 30 * S);
        assert_eq!(r.count, 0);
        // Started by someone else meanwhile: the wait is over.
        r.running(t0 + 11 * S);
        assert_eq!((r.waiting, r.since), (None, t0 + 11 * S));
    }
}
