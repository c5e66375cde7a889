//! Just enough ELF reading to check a binary's architecture and that it is
//! statically linked, before it goes into an image for another machine.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// What the ELF header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine` (183 = aarch64, 62 = x86-64, 40 = arm).
    pub machine: u16,
    /// 64-bit class.
    pub is_64: bool,
    /// Has a `PT_INTERP` program header, i.e. needs a dynamic loader.
    pub dynamic: bool,
}

/// The `e_machine` value for a target triple's architecture.
pub fn machine_for_target(target: &str) -> Option<u16> {
    let arch = target.split('-').next()?;
    Some(match arch {
        "aarch64" => 183,
        "x86_64" => 62,
        a if a.starts_with("arm") || a.starts_with("thumb") => 40,
        "riscv64gc" | "riscv64" => 243,
        _ => return None,
    })
}

fn name(machine: u16) -> &'static str {
    match machine {
        183 => "aarch64",
        62 => "x86-64",
        40 => "arm",
        243 => "riscv",
        _ => "another architecture",
    }
}

/// Reads the ELF header and program headers of `path`.
pub fn read(path: &Path) -> Result<ElfInfo> {
    let b = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    parse(&b).with_context(|| format!("{} is not a valid ELF executable", path.display()))
}

fn parse(b: &[u8]) -> Result<ElfInfo> {
    if b.len() < 64 || &b[0..4] != b"\x7fELF" {
        bail!("no ELF magic");
    }
    let is_64 = b[4] == 2;
    if b[5] != 1 {
        bail!("big-endian ELF is not supported");
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let machine = u16_at(18);
    let (phoff, phentsize, phnum) = if is_64 {
        (
            u64_at(32) as usize,
            u16_at(54) as usize,
            u16_at(56) as usize,
        )
    } else {
        (
            u32_at(28) as usize,
            u16_at(42) as usize,
            u16_at(44) as usize,
        )
    };
    let mut dynamic = false;
    for i in 0..phnum {
        let o = phoff.saturating_add(i.saturating_mul(phentsize));
        if o.saturating_add(4) > b.len() {
            bail!("program headers run past the end");
        }
        if u32_at(o) == 3 {
            dynamic = true;
        }
    }
    Ok(ElfInfo {
        machine,
        is_64,
        dynamic,
    })
}

/// Fails unless `path` is a static executable for `target`'s architecture.
pub fn check_matches_target(path: &Path, target: &str) -> Result<()> {
    let info = read(path)?;
    let want = machine_for_target(target)
        .with_context(|| format!("unknown architecture in target {target}"))?;
    if info.machine != want {
        bail!(
            "{} is built for {}, but the board needs {} ({target}); build it with \
             `cargo xtask dist --target {target}` or pass the right --agent",
            path.display(),
            name(info.machine),
            name(want)
        );
    }
    if target.ends_with("-musl") && info.dynamic {
        bail!(
            "{} is dynamically linked; a musl board binary must be static \
             (check `-C target-feature=+crt-static` in .cargo/config.toml)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_host_binary() {
        let me = std::env::current_exe().unwrap();
        let info = read(&me).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(info.machine, 62);
            assert!(check_matches_target(&me, "aarch64-unknown-linux-musl").is_err());
        }
        assert!(parse(b"not an elf").is_err());
    }
}
