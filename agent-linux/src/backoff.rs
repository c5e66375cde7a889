//! The agent's retry timings, on the fleet's one back-off ([`Backoff`],
//! from the `retry-backoff` crate: capped exponential, ±25 % jitter by
//! default).

use std::time::Duration;

pub use retry_backoff::Backoff;

/// Jittered reconnect delay for the NATS client: 0 on the first attempt,
/// then exponential from 250 ms up to 10 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let n = u32::try_from(attempts - 1).unwrap_or(u32::MAX);
    Backoff::new(Duration::from_millis(250), Duration::from_secs(10)).delay(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let second = reconnect_delay(2);
        assert!(
            second >= Duration::from_millis(375) && second <= Duration::from_millis(625),
            "{second:?}"
        );
        assert!(reconnect_delay(3) <= Duration::from_secs(10));
        assert!(reconnect_delay(100) >= Duration::from_millis(7500));
        assert!(reconnect_delay(usize::MAX) <= Duration::from_secs(10));
    }
}
