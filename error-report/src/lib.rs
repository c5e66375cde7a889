//! An error shown with its causes, for log lines, status messages and the
//! binaries' last words.
//!
//! Our errors keep their cause in `source()` and out of their message
//! (CONTRIBUTING.md), so `{e}` alone drops the cause. anyhow's `{:#}` shows
//! the chain of an owned `anyhow::Error`; log lines and status messages
//! hold a borrowed error of any type, and std's `Report` is not stable yet,
//! hence these few lines, shared by the agent and the operator.
#![no_std]

extern crate alloc;

use alloc::string::ToString;
use core::error::Error;
use core::fmt;

/// Shows `message: cause: cause`. A cause whose text already ends what is
/// shown is skipped, for crates (kube, async-nats) whose messages end with
/// their source's.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            // Only a repeat at the end is skipped: a cause's words inside
            // a hint ("timed out") are not the cause itself.
            if !shown.ends_with(&text) {
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
    extern crate std;
    use super::Chain;
    use alloc::string::ToString;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle says {0}")]
    struct Middle(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("no answer (timed out means a firewall)")]
    struct Outer2(#[source] std::io::Error);

    #[test]
    fn shows_each_cause_once_even_when_a_message_repeats_it() {
        let e = Outer(Middle(std::io::Error::other("disk full")));
        assert_eq!(Chain(&e).to_string(), "outer: middle says disk full");
        // Words of the cause inside the message are not a repeat of it.
        let e = Middle(std::io::Error::other("disk"));
        assert_eq!(Chain(&e).to_string(), "middle says disk");
        let hint = Outer2(std::io::Error::other("timed out"));
        assert_eq!(
            Chain(&hint).to_string(),
            "no answer (timed out means a firewall): timed out"
        );
        let io = std::io::Error::other("alone");
        assert_eq!(Chain(&io).to_string(), "alone");
    }
}
