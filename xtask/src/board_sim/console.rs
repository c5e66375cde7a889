//! The serial console log: milestones of the boot, printed as they appear.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

/// Milestones worth a line on the terminal, found in the console log.
const MILESTONES: &[(&str, &str)] = &[
    ("Linux version", "kernel started"),
    ("Welcome to", "systemd started"),
    ("iot-preload: ", "preloaded images imported"),
    ("starting as device", "agent started"),
    (
        "deployment(s) from the cache",
        "agent restoring deployments from its cache",
    ),
    ("nats: connected", "agent connected to NATS"),
    (
        "desired state in sync",
        "agent in sync with the desired state",
    ),
    ("reboot: Power down", "powered off"),
];

/// Where one board's console stands: which milestones were printed.
pub struct Milestones {
    /// The board's id, prefixed to each line.
    id: String,
    /// The console log.
    console: PathBuf,
    /// How many of [`MILESTONES`] were printed or skipped.
    seen: usize,
    /// Power-on.
    started: Instant,
}

impl Milestones {
    /// Watches `console` of board `id`, powered on now.
    pub fn new(id: &str, console: PathBuf) -> Milestones {
        Milestones {
            id: id.to_string(),
            console,
            seen: 0,
            started: Instant::now(),
        }
    }

    /// Prints the milestones that appeared in the console since last time.
    pub fn report(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.console) else {
            return;
        };
        let mut text = Vec::new();
        if f.read_to_end(&mut text).is_err() {
            return;
        }
        let text = strip_ansi(&String::from_utf8_lossy(&text));
        while let Some((needle, what)) = MILESTONES.get(self.seen) {
            if !text.contains(needle) {
                // Milestones are ordered; later ones may still show first
                // (e.g. no preload), so skip those that never come.
                if MILESTONES[self.seen + 1..]
                    .iter()
                    .any(|(n, _)| text.contains(n))
                {
                    self.seen += 1;
                    continue;
                }
                return;
            }
            println!(
                "{}: {what} ({:.0} s)",
                self.id,
                self.started.elapsed().as_secs_f64()
            );
            self.seen += 1;
        }
    }
}

/// The console text without terminal colour sequences (`ESC [ ... m`),
/// which systemd puts inside unit names.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_sequences_are_stripped() {
        assert_eq!(
            strip_ansi(
                "[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39miot-agent.service\u{1b}[0m"
            ),
            "[  OK  ] Started iot-agent.service"
        );
    }
}
