//! The qemu command line of a board: direct kernel boot with the kernel,
//! initrd and command line read from the disk's boot partition, virtio
//! disk, net and rng, user networking that reaches only the host's NATS.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::GUEST_NATS;
use super::options::{Board, Options};
use crate::boards::{self, Which};
use crate::image::fs::Fat;
use crate::image::partition;
use crate::util;

/// Kernel, initrd and command line, read from the disk's boot partition.
pub struct Boot {
    /// The kernel, copied beside the disk.
    pub kernel: PathBuf,
    /// The initrd, copied beside the disk.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

/// Copies the kernel and initrd out of `b`'s boot partition and reads its
/// command line.
pub fn boot_files(b: &Board, board: &boards::Board) -> Result<Boot> {
    let table = partition::read(&b.disk)?;
    let fat = Fat::new(&b.disk, table.get(board.layout.boot.number, "boot")?.offset)?;
    let get = |name: &str| -> Result<Vec<u8>> {
        fat.read(name)?.with_context(|| {
            format!(
                "{} has no {name} on its boot partition; is it made by `cargo xtask base-disk-image --board qemu-virt`?",
                b.disk.display()
            )
        })
    };
    let kernel = b.dir.join("vmlinuz");
    let initrd = b.dir.join("initrd.img");
    std::fs::write(&kernel, get("/vmlinuz")?)?;
    std::fs::write(&initrd, get("/initrd.img")?)?;
    let cmdline_path = match &board.cmdline.file {
        Some((Which::Boot, p)) => p.clone(),
        _ => "/cmdline.txt".into(),
    };
    let cmdline = String::from_utf8_lossy(&get(&cmdline_path)?)
        .trim()
        .to_string();
    Ok(Boot {
        kernel,
        initrd,
        cmdline,
    })
}

/// A stable, locally administered MAC per device id.
fn mac_for(id: &str) -> String {
    let h = util::sha256_reader(id.as_bytes()).unwrap_or_default();
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// The qemu command line of one board.
pub fn command(opts: &Options, b: &Board, boot: &Boot, exe: &Path) -> Command {
    // qemu option values escape a comma by doubling it.
    let esc = |p: &Path| p.display().to_string().replace(',', ",,");
    let (gip, gport) = GUEST_NATS.split_once(':').unwrap_or(("10.0.2.100", "4222"));
    let mut netdev = format!(
        "user,id=n0,restrict=on,guestfwd=tcp:{gip}:{gport}-cmd:{} board-sim-relay {}",
        esc(exe),
        opts.nats
    );
    for (h, g) in &opts.forward {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-M", "virt", "-cpu", "cortex-a72"])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-m", &opts.memory.to_string()])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .arg("-append")
        .arg(&boot.cmdline)
        .arg("-drive")
        .arg(format!("if=none,id=hd0,format=raw,file={}", esc(&b.disk)))
        .args(["-device", "virtio-blk-pci,drive=hd0"])
        .args(["-netdev", &netdev])
        // `romfile=`: no network boot ROM. The board boots its kernel
        // directly, and QEMU otherwise refuses to start without
        // efi-virtio.rom (package ipxe-qemu, which a fresh Debian lacks).
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,romfile=,netdev=n0,mac={}",
            mac_for(&b.id)
        ))
        .args(["-device", "virtio-rng-pci"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", esc(&b.console)))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", esc(&b.qmp)))
        .stdin(Stdio::null());
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::board_sim::options::tests::opts;

    #[test]
    fn qemu_gets_restricted_net_direct_boot_and_a_console_log() {
        let o = opts("--device-id v1 --nats 127.0.0.1:4999 --forward 18080:8080").unwrap();
        let boot = Boot {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "root=LABEL=iot-root console=ttyAMA0".into(),
        };
        let c = command(&o, &o.boards[0], &boot, Path::new("/x/xtask"));
        let line = util::show(&c);
        for want in [
            "-M virt -cpu cortex-a72",
            "-kernel /k -initrd /i -append root=LABEL=iot-root console=ttyAMA0",
            "restrict=on,guestfwd=tcp:10.0.2.100:4222-cmd:/x/xtask board-sim-relay 127.0.0.1:4999",
            "hostfwd=tcp:127.0.0.1:18080-:8080",
            "console.log",
            // Boots without a network boot ROM (no ipxe-qemu needed).
            "virtio-net-pci,romfile=,netdev=n0,mac=52:54:00:",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert_ne!(mac_for("a"), mac_for("b"));
    }

    /// Every NIC boots without a network boot ROM: QEMU otherwise needs
    /// efi-virtio.rom (ipxe-qemu), which a fresh Debian does not have.
    #[test]
    fn no_nic_needs_an_option_rom() {
        let o = opts("--device-id v1").unwrap();
        let boot = Boot {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
        };
        let c = command(&o, &o.boards[0], &boot, Path::new("/x/xtask"));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let nics: Vec<&String> = args
            .windows(2)
            .filter(|w| w[0] == "-device" && w[1].starts_with("virtio-net"))
            .map(|w| &w[1])
            .collect();
        assert_eq!(nics.len(), 1, "{args:?}");
        for nic in nics {
            assert!(nic.split(',').any(|p| p == "romfile="), "{nic}");
        }
    }
}
