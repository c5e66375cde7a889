//! Capped exponential back-off with jitter: every retry delay in the fleet
//! (the agent's reconnects, watch and reconcile retries; the operator's
//! NATS reconnects and reconcile requeues) comes from [`Backoff`].
//!
//! Hand-written rather than a crate: `backon`, which kube already pulls
//! in, adds a fixed jitter of 0 to 100 % of the delay (worst case twice
//! the cap), and async-nats asks its reconnect callback for the delay of
//! attempt *n*, which an iterator gives only by replaying it. The jitter
//! here is a fraction the caller picks, the random number comes from std's
//! per-process random hasher keys, and the crate has no dependency, which
//! matters for the agent's binary size.

use std::time::Duration;

/// How a delay is spread, so that a fleet that lost its server does not
/// come back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// Between `1 - f` and `1 + f` times the delay, never above the cap:
    /// spreads both ways around the schedule.
    Around(f64),
    /// Between 1 and `1 + f` times the delay, which may pass the cap by
    /// that fraction: the schedule is the least wait.
    Above(f64),
}

/// `base * 2^n` up to `cap`, jittered. [`Backoff::delay`] answers for any
/// attempt; [`Backoff::next_delay`] counts attempts itself.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    attempt: u32,
}

/// Doublings beyond this change nothing for any cap we use and would
/// overflow the multiplier.
const MAX_DOUBLINGS: u32 = 16;

impl Backoff {
    /// Starts at `base`, doubles up to `cap`, with ±25 % jitter
    /// ([`Jitter::Around`]); [`Backoff::with_jitter`] changes that.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            jitter: Jitter::Around(0.25),
            attempt: 0,
        }
    }

    /// The same schedule with another jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before retry number `attempt` (0 is the first), without
    /// jitter.
    pub fn schedule(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.min(MAX_DOUBLINGS))
            .min(self.cap)
    }

    /// The delay before retry number `attempt` (0 is the first), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.schedule(attempt);
        match self.jitter {
            Jitter::None => d,
            Jitter::Around(f) => d
                .mul_f64(1.0 - f + 2.0 * f * random_fraction())
                .min(self.cap),
            Jitter::Above(f) => d + d.mul_f64(f * random_fraction()),
        }
    }

    /// The next delay; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// How many delays [`Backoff::next_delay`] handed out since the last
    /// reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) that differs between processes and calls, without a
/// random-number dependency: std seeds each `RandomState` from the OS once
/// per thread and steps it on every `new`.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= 75 * MS && first <= 125 * MS, "{first:?}");
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        assert_eq!(b.attempts(), 21);
        assert!(b.next_delay() >= 1500 * MS);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= 125 * MS);
    }

    #[test]
    fn schedule_doubles_to_the_cap_and_never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let s: Vec<u64> = (0..10).map(|n| b.schedule(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(b.schedule(u32::MAX), Duration::from_secs(300));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.schedule(40), Duration::MAX);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let none =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).with_jitter(Jitter::None);
        let around = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let above = Backoff::new(Duration::from_secs(1), Duration::from_secs(8))
            .with_jitter(Jitter::Above(0.5));
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..500 {
            assert_eq!(none.delay(1), Duration::from_secs(2));
            let d = around.delay(1);
            assert!(d >= 1500 * MS && d <= 2500 * MS, "{d:?}");
            (lo, hi) = (lo.min(d), hi.max(d));
            // Around never passes the cap; Above may, by its fraction.
            assert!(around.delay(10) <= Duration::from_secs(8));
            let d = above.delay(10);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        // It is spread, not constant.
        assert!(hi - lo > 200 * MS, "{lo:?}..{hi:?}");
    }
}
