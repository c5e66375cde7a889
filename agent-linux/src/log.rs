//! A tiny stderr logger: one line per event, level from `IOT_AGENT_LOG`
//! (`error`, `warn`, `info` (default), `debug`). Kept in-house instead of a
//! tracing subscriber to keep the binary and its memory small. [`Chain`]
//! shows an error with its causes, for log lines and status messages.

use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(2);

/// Sets the level from `IOT_AGENT_LOG`.
pub fn init_from_env() {
    let level = match std::env::var("IOT_AGENT_LOG").as_deref() {
        Ok("error") => 0,
        Ok("warn") => 1,
        Ok("debug") | Ok("trace") => 3,
        _ => 2,
    };
    LEVEL.store(level, Ordering::Relaxed);
}

/// Whether messages of `level` (0 error .. 3 debug) are printed.
pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { if $crate::log::enabled(0) { eprintln!("ERROR {}", format_args!($($t)*)) } } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { if $crate::log::enabled(1) { eprintln!("WARN  {}", format_args!($($t)*)) } } }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { if $crate::log::enabled(2) { eprintln!("INFO  {}", format_args!($($t)*)) } } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { if $crate::log::enabled(3) { eprintln!("DEBUG {}", format_args!($($t)*)) } } }

/// Shows an error with its causes, `message: cause: cause`, as log lines
/// and status messages need: our errors keep their cause in `source()`
/// and out of their message (CONTRIBUTING.md). A cause whose text is
/// already shown is skipped, for crates (async-nats) whose messages repeat
/// their source.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle says {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn shows_each_cause_once_even_when_a_message_repeats_it() {
        let e = Outer(Middle(std::io::Error::other("disk full")));
        assert_eq!(Chain(&e).to_string(), "outer: middle says disk full");
        let io = std::io::Error::other("alone");
        assert_eq!(Chain(&io).to_string(), "alone");
    }
}
