//! The gate's clock, and whether to trust it for maintenance windows.
//!
//! A board without a real-time clock boots in 1970, at its image's date,
//! or at the time `fake-hwclock` or systemd-timesyncd's clock file saved
//! at the last shutdown (Raspberry Pi OS does both): a stale time that
//! looks plausible. It gets the right time from NTP later; a window
//! evaluated before would open at the wrong time. The kernel's
//! synchronized flag (what `timedatectl` shows as "System clock
//! synchronized", set by systemd-timesyncd, chrony or ntpd) says when the
//! clock is right. [`ClockTrust`] decides, from `[update]
//! clock_sync_wait_secs`:
//!
//! - `0`: do not wait, trust the clock as it is (a board known to keep
//!   good time without NTP; tests).
//! - otherwise the clock is trusted once the flag is set; until that many
//!   seconds after the agent started, changes governed by windows wait
//!   ([`Trust::NotYet`]); after that, an unsynchronized clock is trusted
//!   only if a real-time clock set it at boot
//!   (`/sys/class/rtc/rtc0/hctosys` reads `1`) and it reads later than
//!   [`CLOCK_FLOOR`]; otherwise not until the flag comes
//!   ([`Trust::Never`]: reason `ClockNotSynchronized`; `force` still
//!   applies).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;

/// No correct clock reads earlier than this (2026-01-01T00:00:00Z, before
/// this agent was built): a fixed date rather than the build's, so that
/// builds are reproducible. A clock before it is a board that booted
/// without the time.
pub const CLOCK_FLOOR: Timestamp = Timestamp::constant(1_767_225_600, 0);

/// Wall-clock time and whether it is synchronized.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Whether the kernel says the clock is synchronized (NTP or similar).
    fn synchronized(&self) -> bool;
}

/// The system's clock and the kernel's synchronized flag.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn synchronized(&self) -> bool {
        kernel_synchronized()
    }
}

/// `adjtimex(2)` with modes 0 (read only): synchronized unless the clock
/// state is `TIME_ERROR` or the status has `STA_UNSYNC`, the test systemd's
/// `ntp_synced()` makes for `timedatectl`. A failed call counts as not
/// synchronized.
#[allow(unsafe_code)]
fn kernel_synchronized() -> bool {
    // SAFETY: `timex` is plain integers (and a timeval), for which all
    // zeroes is valid; modes 0 asks the kernel only to fill it in, which
    // needs no privilege, and the pointer is to a live local.
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// A clock set by hand, for tests and benches: no sleeping until 02:00.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    synchronized: AtomicBool,
}

impl ManualClock {
    /// A clock at `now`, synchronized or not.
    pub fn new(now: Timestamp, synchronized: bool) -> Self {
        ManualClock {
            now: Mutex::new(now),
            synchronized: AtomicBool::new(synchronized),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: Timestamp) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Sets the synchronized flag.
    pub fn set_synchronized(&self, synchronized: bool) {
        self.synchronized.store(synchronized, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn synchronized(&self) -> bool {
        self.synchronized.load(Ordering::Relaxed)
    }
}

/// Whether the clock may decide about maintenance windows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Synchronized, set by a real-time clock, or not to be doubted.
    Trusted,
    /// Not synchronized yet; ask again by `until`, when the wait ends.
    NotYet {
        /// When the wait for the synchronized flag ends.
        until: Instant,
    },
    /// The wait is over and nothing vouches for the clock (no real-time
    /// clock set it, or it reads before [`CLOCK_FLOOR`]): not trusted
    /// until the kernel says it is synchronized.
    Never,
}

/// Whether a real-time clock set the system clock at boot: the kernel's
/// `hctosys` attribute of `rtc0` (a board without an RTC has no `rtc0`).
pub fn rtc_set_the_clock() -> bool {
    std::fs::read_to_string("/sys/class/rtc/rtc0/hctosys").is_ok_and(|s| s.trim() == "1")
}

/// Decides whether to trust the clock: see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct ClockTrust {
    started: Instant,
    wait: Duration,
    floor: Timestamp,
    /// Asks whether a real-time clock set the clock at boot.
    rtc: fn() -> bool,
}

impl ClockTrust {
    /// Trust for an agent started at `started` that waits at most `wait`
    /// (`[update] clock_sync_wait_secs`; zero: trust the clock as it is)
    /// for the synchronized flag.
    pub fn new(started: Instant, wait: Duration) -> Self {
        ClockTrust {
            started,
            wait,
            floor: CLOCK_FLOOR,
            rtc: rtc_set_the_clock,
        }
    }

    /// The same with another floor than [`CLOCK_FLOOR`].
    pub fn with_floor(self, floor: Timestamp) -> Self {
        ClockTrust { floor, ..self }
    }

    /// The same with another answer to "did a real-time clock set the
    /// clock at boot" than [`rtc_set_the_clock`].
    pub fn with_rtc(self, rtc: fn() -> bool) -> Self {
        ClockTrust { rtc, ..self }
    }

    /// Whether `clock` is trusted at monotonic time `now`. The flag is read
    /// every time: a clock that synchronizes later becomes trusted then.
    pub fn check(&self, clock: &dyn Clock, now: Instant) -> Trust {
        if self.wait.is_zero() || clock.synchronized() {
            return Trust::Trusted;
        }
        let until = self.started.checked_add(self.wait).unwrap_or(now);
        if now < until {
            Trust::NotYet { until }
        } else if clock.now() >= self.floor && (self.rtc)() {
            Trust::Trusted
        } else {
            Trust::Never
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const WAIT: Duration = Duration::from_secs(300);

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_floor_is_2026_01_01() {
        assert_eq!(CLOCK_FLOOR, ts("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn a_synchronized_clock_is_trusted_at_once_whatever_it_reads() {
        let start = Instant::now();
        let trust = ClockTrust::new(start, WAIT);
        let clock = ManualClock::new(ts("1970-01-01T00:00:10Z"), true);
        assert_eq!(trust.check(&clock, start), Trust::Trusted);
    }

    fn rtc() -> bool {
        true
    }

    fn no_rtc() -> bool {
        false
    }

    #[test]
    fn an_unsynchronized_clock_waits_then_is_trusted_if_an_rtc_set_it() {
        let start = Instant::now();
        let trust = ClockTrust::new(start, WAIT).with_rtc(rtc);
        let clock = ManualClock::new(ts("2026-12-06T10:00:00Z"), false);
        let until = start + WAIT;
        assert_eq!(trust.check(&clock, start), Trust::NotYet { until });
        assert_eq!(
            trust.check(&clock, until - Duration::from_millis(1)),
            Trust::NotYet { until }
        );
        assert_eq!(trust.check(&clock, until), Trust::Trusted);
    }

    /// fake-hwclock or timesyncd's clock file set a stale time past the
    /// floor on a board without an RTC: not trusted until NTP.
    #[test]
    fn a_plausible_clock_that_no_rtc_set_is_not_trusted_until_it_synchronizes() {
        let start = Instant::now();
        let trust = ClockTrust::new(start, WAIT).with_rtc(no_rtc);
        let clock = ManualClock::new(ts("2026-12-06T10:00:00Z"), false);
        let after = start + WAIT + Duration::from_secs(1);
        assert_eq!(trust.check(&clock, after), Trust::Never);
        clock.set_synchronized(true);
        assert_eq!(trust.check(&clock, after), Trust::Trusted);
    }

    #[test]
    fn a_clock_before_the_floor_is_never_trusted_until_it_synchronizes() {
        let start = Instant::now();
        let trust = ClockTrust::new(start, WAIT).with_rtc(rtc);
        let clock = ManualClock::new(ts("1970-01-01T00:05:00Z"), false);
        let after = start + WAIT + Duration::from_secs(1);
        assert_eq!(trust.check(&clock, after), Trust::Never);
        clock.set(ts("2025-12-31T23:59:59Z"));
        assert_eq!(trust.check(&clock, after), Trust::Never);
        clock.set(CLOCK_FLOOR);
        assert_eq!(trust.check(&clock, after), Trust::Trusted);
        clock.set(ts("1970-01-01T00:05:00Z"));
        clock.set_synchronized(true);
        assert_eq!(trust.check(&clock, after), Trust::Trusted);
    }

    /// `clock_sync_wait_secs = 0`: the clock is trusted as it is, even
    /// unsynchronized, before the floor, without an RTC.
    #[test]
    fn no_wait_trusts_the_clock_as_it_is() {
        let start = Instant::now();
        let clock = ManualClock::new(ts("1970-01-01T00:00:00Z"), false);
        assert_eq!(
            ClockTrust::new(start, Duration::ZERO)
                .with_rtc(no_rtc)
                .check(&clock, start),
            Trust::Trusted
        );
        let later = ClockTrust::new(start, WAIT)
            .with_rtc(rtc)
            .with_floor(ts("2027-01-01T00:00:00Z"));
        clock.set(ts("2026-06-01T00:00:00Z"));
        assert_eq!(later.check(&clock, start + WAIT), Trust::Never);
    }

    #[test]
    fn the_system_clock_reads_now_and_the_kernel_flag_as_timedatectl_does() {
        let before = Timestamp::now();
        assert!(SystemClock.now() >= before);
        // timedatectl asks systemd-timedated, which reads the same
        // adjtimex flag; without systemd (containers, CI) it cannot answer.
        let out = std::process::Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let theirs = String::from_utf8_lossy(&o.stdout).trim() == "yes";
                assert_eq!(SystemClock.synchronized(), theirs);
            }
            _ => eprintln!(
                "timedatectl cannot answer here; the kernel says synchronized={}",
                SystemClock.synchronized()
            ),
        }
    }
}
