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

/// An error with its causes, for log lines and status messages.
pub use error_report::Chain;
