//! Capped exponential back-off with jitter, on monotonic time.

use std::time::Duration;

/// Exponential back-off: `base * 2^n`, capped, with ±25 % jitter so a fleet
/// that lost its server does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A back-off starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32)
            ^ (&base as *const _ as u64);
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: cheap, good enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 501) as f64 / 1000.0 + 0.75; // 0.75 ..= 1.25
        exp.mul_f64(frac).min(self.cap)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Jittered reconnect delay for the NATS client: 0 on the first attempt,
/// then exponential from 250 ms up to 10 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    b.attempt = (attempts - 1).min(16) as u32;
    b.next_delay()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        assert!(b.next_delay() >= Duration::from_millis(1500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn reconnect_delays() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert!(reconnect_delay(3) <= Duration::from_secs(10));
        assert!(reconnect_delay(100) >= Duration::from_millis(7500));
    }
}
