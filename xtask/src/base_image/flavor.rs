//! How a board boots: the one choice that decides a base disk image's
//! packages, archive components and boot partition.

use anyhow::{Result, bail};

use crate::boards::{Board, TableKind};

/// How a board boots, which decides the packages and the boot partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// qemu `-M virt` with direct kernel boot: the boot partition holds
    /// `vmlinuz`, `initrd.img` and `cmdline.txt`, read by `board-sim`.
    DirectKernel,
    /// Raspberry Pi firmware (Debian `raspi-firmware`) on an MBR FAT partition.
    RaspiFirmware,
    /// UEFI: systemd-boot on the EFI system partition (GPT).
    Uefi,
}

impl Flavor {
    /// The flavor of `board`.
    pub fn of(board: &Board) -> Result<Flavor> {
        Ok(match board.name.as_str() {
            "qemu-virt" => Flavor::DirectKernel,
            n if n.starts_with("rpi") => Flavor::RaspiFirmware,
            _ if board.layout.table == TableKind::Gpt => Flavor::Uefi,
            other => bail!(
                "board {other:?} has no known boot method for `base-image` \
                 (known: qemu-virt, rpi*, and GPT boards booting with UEFI); \
                 use your board vendor's image as --base for `cargo xtask disk-image`"
            ),
        })
    }

    /// Short name, in cache file names.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::DirectKernel => "virt",
            Flavor::RaspiFirmware => "raspi",
            Flavor::Uefi => "uefi",
        }
    }

    /// Debian archive components: the Pi firmware is in non-free-firmware.
    pub fn components(self) -> &'static str {
        match self {
            Flavor::RaspiFirmware => "main,non-free-firmware",
            Flavor::DirectKernel | Flavor::Uefi => "main",
        }
    }

    /// Packages installed after everything else, in the customize hook, so
    /// the initramfs is generated once, with the small module list in place.
    pub fn late_packages(self) -> &'static str {
        match self {
            Flavor::DirectKernel => "linux-image-arm64",
            Flavor::RaspiFirmware => "linux-image-arm64 raspi-firmware",
            Flavor::Uefi => "linux-image-arm64 systemd-boot-efi",
        }
    }
}
