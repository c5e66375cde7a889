//! Lays a cached root filesystem out as a board's disk image, in named
//! steps: unpack the tarball, stage the boot files the flavor needs, write
//! the partition table on a sparse file, make FAT32 and ext4 in place (no
//! loop device, no mount), then read everything back.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BOOT_LABEL, BOOT_MIB, FIRST_MIB, Flavor, ROOT_LABEL, Request, SUITE, cache_dir};
use crate::boards::TableKind;
use crate::image::fs::{Ext4, Fat};
use crate::image::partition;
use crate::util::{self, human};

/// Bytes per sector in the partition table.
const SECTOR: u64 = 512;

/// Where the boot and root partitions go, in bytes from the image start.
#[derive(Debug, Clone, Copy)]
struct Layout {
    boot_start: u64,
    boot_size: u64,
    root_start: u64,
    root_size: u64,
}

impl Layout {
    /// Boot at 1 MiB, 256 MiB long; root gets the rest, in whole MiB.
    fn of(req: &Request) -> Layout {
        let boot_start = FIRST_MIB << 20;
        let boot_size = BOOT_MIB << 20;
        let root_start = boot_start + boot_size;
        // GPT keeps a backup table in the last 33 sectors.
        let tail = match req.board.layout.table {
            TableKind::Gpt => 1 << 20,
            TableKind::Mbr => 0,
        };
        let root_size = (req.size - root_start - tail) & !((1 << 20) - 1);
        Layout {
            boot_start,
            boot_size,
            root_start,
            root_size,
        }
    }
}

/// Builds `req.out` from the root filesystem `tarball`, using `work` as
/// scratch space (the caller removes it).
pub fn assemble(req: &Request, flavor: Flavor, tarball: &Path, work: &Path) -> Result<()> {
    let rootfs = work.join("rootfs");
    let bootfs = work.join("boot");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::create_dir_all(&bootfs)?;
    unpack(tarball, &rootfs)?;
    stage_boot_files(flavor, &rootfs, &bootfs)?;
    let layout = Layout::of(req);
    create_sparse(&req.out, req.size)?;
    write_partition_table(&req.out, req.board.layout.table, &layout)?;
    eprintln!(
        "making the boot (FAT32, {}) and root (ext4, {}) filesystems...",
        human(layout.boot_size),
        human(layout.root_size)
    );
    make_boot_fs(&req.out, &layout, &bootfs)?;
    make_root_fs(&req.out, &layout, &rootfs)?;
    verify(req, flavor, &layout)
}

/// Unpacks the cached root filesystem, keeping owners, modes and xattrs.
fn unpack(tarball: &Path, rootfs: &Path) -> Result<()> {
    eprintln!("unpacking the root filesystem...");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(rootfs)
        .args([
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "-xf",
        ])
        .arg(tarball);
    util::output(&mut tar).context("unpack the cached root filesystem (rebuild with --force)")?;
    Ok(())
}

/// Fills `bootfs` with what goes on the boot partition.
fn stage_boot_files(flavor: Flavor, rootfs: &Path, bootfs: &Path) -> Result<()> {
    match flavor {
        Flavor::DirectKernel => {
            copy_kernel(rootfs, bootfs)?;
            std::fs::write(bootfs.join("cmdline.txt"), kernel_cmdline())?;
        }
        Flavor::Uefi => {
            copy_kernel(rootfs, bootfs)?;
            install_systemd_boot(rootfs, bootfs)?;
        }
        Flavor::RaspiFirmware => move_raspi_firmware(rootfs, bootfs)?,
    }
    Ok(())
}

/// The kernel command line of direct-kernel and UEFI boards.
fn kernel_cmdline() -> String {
    format!(
        "root=LABEL={ROOT_LABEL} rootfstype=ext4 rootwait ro console=ttyAMA0 \
         systemd.show_status=1\n"
    )
}

/// The newest kernel and initrd of the root filesystem, as `vmlinuz` and
/// `initrd.img`.
fn copy_kernel(rootfs: &Path, bootfs: &Path) -> Result<()> {
    let boot_dir = rootfs.join("boot");
    let kernel = newest(&boot_dir, "vmlinuz-")?;
    let initrd = newest(&boot_dir, "initrd.img-")?;
    std::fs::copy(&kernel, bootfs.join("vmlinuz"))?;
    std::fs::copy(&initrd, bootfs.join("initrd.img"))?;
    Ok(())
}

/// systemd-boot as the removable-media loader, with one entry.
fn install_systemd_boot(rootfs: &Path, bootfs: &Path) -> Result<()> {
    let efi = rootfs.join("usr/lib/systemd/boot/efi/systemd-bootaa64.efi");
    if !efi.is_file() {
        bail!("systemd-boot is missing from the root filesystem; rebuild with --force");
    }
    std::fs::create_dir_all(bootfs.join("EFI/BOOT"))?;
    std::fs::create_dir_all(bootfs.join("loader/entries"))?;
    std::fs::copy(&efi, bootfs.join("EFI/BOOT/BOOTAA64.EFI"))?;
    std::fs::write(
        bootfs.join("loader/loader.conf"),
        "default iot.conf\ntimeout 0\n",
    )?;
    std::fs::write(
        bootfs.join("loader/entries/iot.conf"),
        format!(
            "title Debian {SUITE} (iot-fleet)\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}",
            kernel_cmdline().replace("console=ttyAMA0", "console=ttyAMA0 console=tty0")
        ),
    )?;
    Ok(())
}

/// raspi-firmware's hooks populated /boot/firmware; it moves to the FAT
/// partition and stays a mount point in the root.
fn move_raspi_firmware(rootfs: &Path, bootfs: &Path) -> Result<()> {
    let fw = rootfs.join("boot/firmware");
    for e in std::fs::read_dir(&fw).with_context(|| format!("list {}", fw.display()))? {
        let e = e?;
        std::fs::rename(e.path(), bootfs.join(e.file_name()))?;
    }
    let cmdline = bootfs.join("cmdline.txt");
    if !cmdline.is_file() {
        std::fs::write(
            &cmdline,
            format!(
                "console=serial0,115200 console=tty1 root=LABEL={ROOT_LABEL} rootfstype=ext4 rootwait fsck.repair=yes\n"
            ),
        )?;
    }
    if !bootfs.join("config.txt").is_file() {
        bail!(
            "raspi-firmware left no config.txt in /boot/firmware; see the mmdebstrap log in {}",
            cache_dir().display()
        );
    }
    Ok(())
}

/// A fresh sparse file of `size` bytes at `out`.
fn create_sparse(out: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    f.set_len(size)?;
    Ok(())
}

/// The sfdisk script of `layout` (boot partition bootable on MBR).
fn sfdisk_script(table: TableKind, layout: &Layout) -> String {
    let (label, boot_type, root_type) = match table {
        TableKind::Mbr => ("dos", "c", "83"),
        TableKind::Gpt => ("gpt", "U", "L"),
    };
    format!(
        "label: {label}\nstart={}, size={}, type={boot_type}{}\nstart={}, size={}, type={root_type}\n",
        layout.boot_start / SECTOR,
        layout.boot_size / SECTOR,
        if label == "dos" { ", bootable" } else { "" },
        layout.root_start / SECTOR,
        layout.root_size / SECTOR,
    )
}

/// Writes the partition table with sfdisk, on the file, telling no kernel.
fn write_partition_table(out: &Path, table: TableKind, layout: &Layout) -> Result<()> {
    let mut sf = Command::new("sfdisk");
    sf.arg("--quiet")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = sf.spawn().context("could not start sfdisk")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("sfdisk stdin")?;
        stdin.write_all(sfdisk_script(table, layout).as_bytes())?;
    }
    let res = child.wait_with_output()?;
    if !res.status.success() {
        bail!(
            "sfdisk could not write the partition table: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    Ok(())
}

/// FAT32 in place at the boot partition, filled from `bootfs` with mtools.
fn make_boot_fs(out: &Path, layout: &Layout, bootfs: &Path) -> Result<()> {
    // FAT32 of 256 MiB needs one sector per cluster, or mtools refuses it.
    let mut mkfat = Command::new("mkfs.fat");
    mkfat
        .args(["-F", "32", "-s", "1", "-n", BOOT_LABEL])
        .arg(format!("--offset={}", layout.boot_start / SECTOR))
        .arg(out)
        .arg((layout.boot_size / 1024).to_string());
    util::output(&mut mkfat).context("make the boot filesystem")?;
    let spec = format!("{}@@{}", out.display(), layout.boot_start);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(bootfs)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    if !entries.is_empty() {
        let mut mc = Command::new("mcopy");
        mc.env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-o", "-i", &spec])
            .args(&entries)
            .arg("::/");
        util::output(&mut mc).context("copy the boot files into the FAT partition")?;
    }
    Ok(())
}

/// ext4 in place at the root partition, populated from `rootfs` (`mke2fs -d`).
fn make_root_fs(out: &Path, layout: &Layout, rootfs: &Path) -> Result<()> {
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-F", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d"])
        .arg(rootfs)
        .arg("-E")
        .arg(format!("offset={},nodiscard", layout.root_start))
        .arg(out)
        .arg(format!("{}k", layout.root_size / 1024));
    util::output(&mut mke2fs).context("make the root filesystem (is --size big enough?)")?;
    Ok(())
}

/// The newest file in `dir` whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "the root filesystem has no {}/{prefix}*; rebuild it with --force",
            dir.display()
        )
    })
}

/// Reads the result back: the table, the boot files, key root files.
fn verify(req: &Request, flavor: Flavor, layout: &Layout) -> Result<()> {
    let table = partition::read(&req.out)?;
    if table.kind != req.board.layout.table {
        bail!(
            "verify: wrote a {} table but read {}",
            req.board.layout.table,
            table.kind
        );
    }
    let boot = table.get(1, "boot")?;
    let root = table.get(2, "root")?;
    if boot.offset != layout.boot_start || root.offset != layout.root_start {
        bail!("verify: partition offsets differ from what was written");
    }
    let fat = Fat::new(&req.out, boot.offset)?;
    let want_boot: &[&str] = match flavor {
        Flavor::DirectKernel => &["/vmlinuz", "/initrd.img", "/cmdline.txt"],
        Flavor::RaspiFirmware => &["/config.txt", "/cmdline.txt"],
        Flavor::Uefi => &["/EFI/BOOT/BOOTAA64.EFI", "/vmlinuz", "/initrd.img"],
    };
    for p in want_boot {
        if fat.read(p)?.is_none() {
            bail!("verify: {p} is missing from the boot partition");
        }
    }
    let ext = Ext4::new(&req.out, root.offset)?;
    for p in [
        "/usr/bin/podman",
        "/usr/lib/systemd/systemd",
        "/etc/fstab",
        "/etc/systemd/system/sockets.target.wants/podman.socket",
    ] {
        if ext.stat(p)?.is_none() {
            bail!("verify: {p} is missing from the root filesystem");
        }
    }
    eprintln!("verified the partition table, the boot files and the root filesystem");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boards;

    /// The image tools, or a skip (a failure under CI=true).
    fn have_image_tools() -> bool {
        let missing: Vec<&str> = ["mke2fs", "debugfs", "mkfs.fat", "mcopy", "sfdisk", "tar"]
            .into_iter()
            .filter(|t| !util::have(t))
            .collect();
        missing.is_empty()
            || testkit::missing::<()>(&format!(
                "{missing:?} (e2fsprogs, dosfstools, mtools, fdisk)"
            ))
            .is_some()
    }

    /// A root filesystem tarball with what each flavor's assembly reads,
    /// instead of a Debian one (mmdebstrap takes minutes and needs root).
    fn fake_rootfs(dir: &Path, flavor: Flavor) -> PathBuf {
        let r = dir.join("fake-root");
        let file = |p: &str, text: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        file("usr/bin/podman", "podman");
        file("usr/lib/systemd/systemd", "systemd");
        file(
            "etc/fstab",
            &format!("LABEL={ROOT_LABEL} / ext4 defaults 0 1\n"),
        );
        file("boot/vmlinuz-6.1.0-9-arm64", "kernel");
        file("boot/initrd.img-6.1.0-9-arm64", "initrd");
        match flavor {
            Flavor::RaspiFirmware => {
                file("boot/firmware/config.txt", "arm_64bit=1\n");
                file("boot/firmware/start4.elf", "firmware");
                file("boot/firmware/bcm2711-rpi-4-b.dtb", "dtb");
            }
            Flavor::Uefi => file("usr/lib/systemd/boot/efi/systemd-bootaa64.efi", "efi"),
            Flavor::DirectKernel => {}
        }
        let wants = r.join("etc/systemd/system/sockets.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/podman.socket",
            wants.join("podman.socket"),
        )
        .unwrap();
        let tar = dir.join("rootfs.tar");
        util::output(
            Command::new("tar")
                .arg("-C")
                .arg(&r)
                .args(["-cf"])
                .arg(&tar)
                .arg("."),
        )
        .unwrap();
        std::fs::remove_dir_all(&r).unwrap();
        tar
    }

    /// `sfdisk --json` of `img`: (table label, [(type, bootable)]).
    fn table_of(img: &Path) -> (String, Vec<(String, bool)>) {
        let out = util::output(Command::new("sfdisk").arg("--json").arg(img)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["partitiontable"];
        let parts = t["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["type"].as_str().unwrap().to_ascii_lowercase(),
                    p["bootable"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        (t["label"].as_str().unwrap().to_string(), parts)
    }

    /// Lays out each board's image from a small fake root filesystem and
    /// reads it back: table, partition types, boot files, root files.
    #[test]
    fn boards_get_their_partition_layout_and_boot_files() {
        if !have_image_tools() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for (board, label, boot_type) in [
            ("qemu-virt", "dos", "c"),
            ("rpi4", "dos", "c"),
            (
                "generic-aarch64",
                "gpt",
                "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            ),
        ] {
            let dir = tmp.path().join(board);
            std::fs::create_dir_all(&dir).unwrap();
            let board = boards::load(board).unwrap();
            let flavor = Flavor::of(&board).unwrap();
            let tar = fake_rootfs(&dir, flavor);
            let req = Request {
                board: board.clone(),
                out: dir.join("base.img"),
                size: 320 << 20,
                mirror: String::new(),
                force: false,
            };
            // assemble() ends with verify(), which reads everything back.
            assemble(&req, flavor, &tar, &dir.join("work")).unwrap();
            let (l, parts) = table_of(&req.out);
            assert_eq!(l, label, "{}", board.name);
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].0, boot_type, "{}", board.name);
            assert_eq!(parts[0].1, label == "dos", "{}: boot flag", board.name);
            let table = partition::read(&req.out).unwrap();
            let fat = Fat::new(&req.out, table.get(1, "boot").unwrap().offset).unwrap();
            let text = |p: &str| String::from_utf8(fat.read(p).unwrap().unwrap()).unwrap();
            let root = Ext4::new(&req.out, table.get(2, "root").unwrap().offset).unwrap();
            match flavor {
                Flavor::DirectKernel => {
                    assert_eq!(text("/vmlinuz"), "kernel");
                    assert!(text("/cmdline.txt").contains("root=LABEL=iot-root"));
                }
                Flavor::RaspiFirmware => {
                    assert_eq!(text("/config.txt"), "arm_64bit=1\n");
                    assert_eq!(text("/start4.elf"), "firmware");
                    assert!(fat.read("/bcm2711-rpi-4-b.dtb").unwrap().is_some());
                    let cmdline = text("/cmdline.txt");
                    assert!(cmdline.contains("root=LABEL=iot-root"), "{cmdline}");
                    // The firmware moved to the FAT partition; its mount point stays.
                    assert!(root.stat("/boot/firmware").unwrap().is_some());
                    assert!(root.stat("/boot/firmware/config.txt").unwrap().is_none());
                }
                Flavor::Uefi => {
                    assert_eq!(text("/EFI/BOOT/BOOTAA64.EFI"), "efi");
                    assert_eq!(text("/initrd.img"), "initrd");
                    assert!(text("/loader/loader.conf").contains("default iot.conf"));
                    let entry = text("/loader/entries/iot.conf");
                    assert!(entry.contains("linux /vmlinuz"), "{entry}");
                    assert!(entry.contains("root=LABEL=iot-root"), "{entry}");
                }
            }
            assert!(root.stat("/usr/bin/podman").unwrap().is_some());
        }
    }
}
