//! What the board is, for the heartbeat: its kernel release and boot id.
//!
//! Read once at start: neither changes while the agent runs (a new kernel
//! or a new boot id means a reboot, hence a new agent process).

use std::path::Path;

use protocol::limits::MAX_NAME_LEN;

/// The kernel release (`uname -r`).
const KERNEL_RELEASE: &str = "/proc/sys/kernel/osrelease";
/// A random id the kernel draws at each boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The board's facts the heartbeat reports; each empty when unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Kernel release, e.g. `6.1.0-rpi7-rpi-v8`.
    pub kernel: String,
    /// Boot id, a UUID.
    pub boot_id: String,
}

impl HostInfo {
    /// Reads this machine's facts.
    pub fn read() -> HostInfo {
        HostInfo {
            kernel: read_line(Path::new(KERNEL_RELEASE)),
            boot_id: read_line(Path::new(BOOT_ID)),
        }
    }
}

/// The file's text trimmed and clipped to the heartbeat's bound on the
/// field (a longer kernel release must not cost the whole heartbeat); empty
/// when it cannot be read, which the heartbeat reports as unknown.
fn read_line(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => clip(text.trim(), MAX_NAME_LEN).to_string(),
        Err(e) => {
            crate::warn!(
                "cannot read {}: {e}; the heartbeat reports it as unknown",
                path.display()
            );
            String::new()
        }
    }
}

/// The longest prefix of `s` within `limit` bytes that ends on a character
/// boundary.
fn clip(s: &str, limit: usize) -> &str {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_machine_has_a_kernel_and_a_boot_id() {
        let host = HostInfo::read();
        assert!(!host.kernel.is_empty() && !host.kernel.contains('\n'));
        assert_eq!(host.boot_id.len(), 36, "{host:?}");
        assert_eq!(HostInfo::read(), host, "the same on a second read");
    }

    #[test]
    fn unreadable_is_empty_and_long_is_clipped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_line(&dir.path().join("absent")), "");
        let long = dir.path().join("long");
        std::fs::write(&long, format!("{}é-custom\n", "6".repeat(62))).unwrap();
        let clipped = read_line(&long);
        assert_eq!(clipped, "6".repeat(62), "cut before the 2-byte character");
        std::fs::write(&long, " 6.1.0-rpi7-rpi-v8\n").unwrap();
        assert_eq!(read_line(&long), "6.1.0-rpi7-rpi-v8");
    }
}
