//! A progress line with throughput, redrawn in place on a terminal and
//! printed every few seconds otherwise (CI logs stay short).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::util::human;

/// Progress of a byte stream of (possibly unknown) total size.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    /// Starts a progress display for `label`.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Records `n` more bytes, redrawing when it is time.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.draw(false);
        }
    }

    /// Draws the final line and returns the elapsed time.
    pub fn finish(mut self) -> Duration {
        self.draw(true);
        self.start.elapsed()
    }

    fn draw(&mut self, last: bool) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let line = match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done as f64 * 100.0 / t as f64).min(100.0);
                let width = 30usize;
                let filled = ((pct / 100.0) * width as f64) as usize;
                format!(
                    "{} [{}{}] {:5.1}% {} / {}  {}/s",
                    self.label,
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    pct,
                    human(self.done),
                    human(t),
                    human(rate as u64)
                )
            }
            _ => format!(
                "{} {}  {}/s",
                self.label,
                human(self.done),
                human(rate as u64)
            ),
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if last {
                let _ = writeln!(err, "  ({secs:.1} s)");
            }
        } else {
            let _ = writeln!(
                err,
                "{line}{}",
                if last {
                    format!("  ({secs:.1} s)")
                } else {
                    String::new()
                }
            );
        }
        let _ = err.flush();
    }
}
