//! What the flash target is, read from sysfs and the mount table, and the
//! checks that keep `flash` away from system disks. The sysfs and proc paths
//! are parameters so the checks are tested against fake trees.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::util::human;

/// Where the kernel's view of disks and mounts is read from.
#[derive(Debug, Clone)]
pub struct Sys {
    /// `/sys/class/block`.
    pub class_block: PathBuf,
    /// `/proc/self/mounts`.
    pub mounts: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
}

impl Sys {
    /// The running system.
    pub fn real() -> Sys {
        Sys {
            class_block: "/sys/class/block".into(),
            mounts: "/proc/self/mounts".into(),
            swaps: "/proc/swaps".into(),
        }
    }
}

/// A flash target as inspected.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path given.
    pub path: PathBuf,
    /// Block device details; `None` for a regular file (or a path to be
    /// created), which is written like a disk but needs no disk checks.
    pub disk: Option<Disk>,
}

/// A block device's properties.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// Size in bytes.
    pub size: u64,
    /// Removable media, a USB disk or an SD/MMC card.
    pub removable: bool,
    /// A partition rather than a whole disk.
    pub partition_of: Option<String>,
    /// Read-only (e.g. the SD card's lock switch).
    pub read_only: bool,
    /// `(device, mount point)` of every mounted member (disk, partition or holder).
    pub mounted: Vec<(String, String)>,
    /// A member is active swap.
    pub swap: Vec<String>,
    /// A member is mounted at `/`.
    pub holds_root: bool,
    /// Vendor and model, for the confirmation prompt.
    pub model: String,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Linux `dev_t` to `major:minor`, as sysfs writes it.
fn dev_string(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

/// Inspects `path` on the running system.
pub fn inspect(path: &Path) -> Result<Target> {
    let sys = Sys::real();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.starts_with("/dev") {
                bail!(
                    "{} does not exist; insert the card and find it with `lsblk -d -o NAME,SIZE,RM,MODEL`",
                    path.display()
                );
            }
            return Ok(Target {
                path: path.to_path_buf(),
                disk: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if md.file_type().is_file() {
        return Ok(Target {
            path: path.to_path_buf(),
            disk: None,
        });
    }
    if !md.file_type().is_block_device() {
        bail!(
            "{} is neither a block device nor a regular file; give a disk such as /dev/sdX or an image file",
            path.display()
        );
    }
    let dev = dev_string(md.rdev());
    let name = find_by_dev(&sys, &dev)?.with_context(|| {
        format!(
            "no entry in /sys/class/block for {} ({dev})",
            path.display()
        )
    })?;
    let root_dev = std::fs::metadata("/").map(|m| dev_string(m.dev())).ok();
    Ok(Target {
        path: path.to_path_buf(),
        disk: Some(inspect_block(&sys, &name, root_dev.as_deref())?),
    })
}

fn find_by_dev(sys: &Sys, dev: &str) -> Result<Option<String>> {
    for e in std::fs::read_dir(&sys.class_block)
        .with_context(|| format!("list {}", sys.class_block.display()))?
    {
        let e = e?;
        if read_trim(&e.path().join("dev")).as_deref() == Some(dev) {
            return Ok(Some(e.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}

/// The disk, its partitions and everything stacked on them (LVM, dm-crypt).
fn members(sys: &Sys, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        if !out.insert(n.clone()) {
            continue;
        }
        let dir = sys.class_block.join(&n);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().join("partition").exists() {
                    todo.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(dir.join("holders")) {
            for e in rd.flatten() {
                todo.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The kernel name behind a mount source such as `/dev/mapper/vg-root`.
fn source_name(src: &str) -> Option<String> {
    if !src.starts_with("/dev/") {
        return None;
    }
    let p = std::fs::canonicalize(src).unwrap_or_else(|_| PathBuf::from(src));
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Inspects block device `name` through `sys`; `root_dev` is the
/// `major:minor` of the filesystem at `/` (catches `/dev/root`).
pub fn inspect_block(sys: &Sys, name: &str, root_dev: Option<&str>) -> Result<Disk> {
    let dir = sys.class_block.join(name);
    let partition_of = if dir.join("partition").exists() {
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        Some(
            real.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "the whole disk".into()),
        )
    } else {
        None
    };
    let size = read_trim(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .with_context(|| format!("read the size of {name} from {}", dir.display()))?;
    let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    let removable = read_trim(&dir.join("removable")).as_deref() == Some("1")
        || real.to_string_lossy().contains("/usb")
        || name.starts_with("mmcblk");
    let read_only = read_trim(&dir.join("ro")).as_deref() == Some("1");
    let model = [
        read_trim(&dir.join("device/vendor")),
        read_trim(&dir.join("device/model")),
        read_trim(&dir.join("loop/backing_file")).map(|b| format!("loop device for {b}")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");

    let members = members(sys, name);
    let member_devs: BTreeSet<String> = members
        .iter()
        .filter_map(|m| read_trim(&sys.class_block.join(m).join("dev")))
        .collect();
    let mounts = std::fs::read_to_string(&sys.mounts)
        .with_context(|| format!("read {}", sys.mounts.display()))?;
    let mut mounted = Vec::new();
    let mut holds_root = root_dev.is_some_and(|d| member_devs.contains(d));
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else {
            continue;
        };
        if let Some(n) = source_name(src)
            && members.contains(&n)
        {
            let at = at.replace("\\040", " ");
            holds_root |= at == "/";
            mounted.push((format!("/dev/{n}"), at));
        }
    }
    let swaps = std::fs::read_to_string(&sys.swaps).unwrap_or_default();
    let swap = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(source_name)
        .filter(|n| members.contains(n))
        .map(|n| format!("/dev/{n}"))
        .collect();
    Ok(Disk {
        size,
        removable,
        partition_of,
        read_only,
        mounted,
        swap,
        holds_root,
        model,
    })
}

/// Refuses a target that must not be written; `image_size` is `None` when
/// not known yet (the one-shot flash checks early, before building).
pub fn check(t: &Target, image: Option<&Path>, image_size: Option<u64>, force: bool) -> Result<()> {
    if let Some(img) = image
        && let (Ok(a), Ok(b)) = (img.canonicalize(), t.path.canonicalize())
        && a == b
    {
        bail!("--to is the image itself; give a disk such as /dev/sdX");
    }
    let Some(d) = &t.disk else {
        return Ok(());
    };
    let p = t.path.display();
    if let Some(parent) = &d.partition_of {
        bail!("{p} is a partition; flash the whole disk instead: --to /dev/{parent}");
    }
    if d.holds_root {
        bail!(
            "refusing to write {p}: it holds the running system's root filesystem (/). \
             Pick the SD card's device; list disks with `lsblk -d -o NAME,SIZE,RM,MODEL`"
        );
    }
    if !d.mounted.is_empty() {
        let list: Vec<String> = d
            .mounted
            .iter()
            .map(|(dev, at)| format!("{dev} on {at}"))
            .collect();
        let devs: Vec<&str> = d.mounted.iter().map(|(dev, _)| dev.as_str()).collect();
        bail!(
            "refusing to write {p}: it is mounted ({}). Unmount it first: `sudo umount {}`",
            list.join(", "),
            devs.join(" ")
        );
    }
    if !d.swap.is_empty() {
        bail!(
            "refusing to write {p}: {} is in use as swap; run `sudo swapoff {}` first",
            d.swap.join(", "),
            d.swap.join(" ")
        );
    }
    if d.read_only {
        bail!("{p} is read-only; check the SD card's lock switch, then re-insert it");
    }
    if !d.removable && !force {
        bail!(
            "refusing to write {p} ({}, {}): it is not a removable disk, so it may be one of \
             this machine's disks. If you are sure it is the card, pass --force",
            if d.model.is_empty() {
                "unknown model"
            } else {
                &d.model
            },
            human(d.size)
        );
    }
    if let Some(n) = image_size
        && d.size < n
    {
        bail!(
            "{p} holds {} but the image needs {}; use a card of at least {}",
            human(d.size),
            human(n),
            human(n)
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Fake {
        dir: tempfile::TempDir,
        sys: Sys,
    }

    fn fake(mounts: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let cb = dir.path().join("class/block");
        let w = |p: &str, s: &str| {
            let p = cb.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        // sdb: 8 GiB USB card with two partitions; sda: fixed disk.
        w("sdb/dev", "8:16\n");
        w("sdb/size", "16777216\n");
        w("sdb/removable", "1\n");
        w("sdb/ro", "0\n");
        w("sdb/device/model", "Ultra\n");
        w("sdb/sdb1/partition", "1\n");
        w("sdb/sdb1/dev", "8:17\n");
        w("sdb/sdb2/partition", "2\n");
        w("sdb/sdb2/dev", "8:18\n");
        w("sda/dev", "8:0\n");
        w("sda/size", "500000000\n");
        w("sda/removable", "0\n");
        w("sda/sda1/partition", "1\n");
        w("sda/sda1/dev", "8:1\n");
        w("sda/sda1/holders/dm-0", "");
        w("dm-0/dev", "254:0\n");
        // As in sysfs, partitions are also listed flat, as symlinks.
        for (part, disk) in [("sdb1", "sdb"), ("sdb2", "sdb"), ("sda1", "sda")] {
            std::os::unix::fs::symlink(cb.join(disk).join(part), cb.join(part)).unwrap();
        }
        w("sdb/sdb1/size", "1024\n");
        std::fs::write(dir.path().join("mounts"), mounts).unwrap();
        std::fs::write(
            dir.path().join("swaps"),
            "Filename Type Size Used Priority\n",
        )
        .unwrap();
        let sys = Sys {
            class_block: cb,
            mounts: dir.path().join("mounts"),
            swaps: dir.path().join("swaps"),
        };
        Fake { dir, sys }
    }

    fn target(f: &Fake, name: &str, root_dev: Option<&str>) -> Target {
        Target {
            path: format!("/dev/{name}").into(),
            disk: Some(inspect_block(&f.sys, name, root_dev).unwrap()),
        }
    }

    #[test]
    fn a_free_removable_card_is_accepted() {
        let f = fake("/dev/dm-0 / ext4 rw 0 0\n");
        let t = target(&f, "sdb", None);
        assert!(t.disk.as_ref().unwrap().removable);
        check(&t, None, Some(1 << 30), false).unwrap();
    }

    #[test]
    fn mounted_partition_is_refused_with_umount_hint() {
        let f = fake("/dev/sdb1 /media/me/boot vfat rw 0 0\n");
        let e = check(&target(&f, "sdb", None), None, None, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mounted") && e.contains("sudo umount /dev/sdb1"),
            "{e}"
        );
    }

    #[test]
    fn root_disk_is_refused_even_with_force() {
        // Through a device-mapper holder, as with LVM or LUKS.
        let f = fake("/dev/dm-0 / ext4 rw 0 0\n");
        let e = check(&target(&f, "sda", None), None, None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("root filesystem"), "{e}");
        // Through the device number of `/` (`/dev/root` in the mount table).
        let f = fake("/dev/root / ext4 rw 0 0\n");
        let t = target(&f, "sdb", Some("8:18"));
        let e = check(&t, None, None, true).unwrap_err().to_string();
        assert!(e.contains("root filesystem"), "{e}");
    }

    #[test]
    fn fixed_disk_needs_force() {
        let f = fake("");
        let t = target(&f, "sda", None);
        let e = check(&t, None, None, false).unwrap_err().to_string();
        assert!(
            e.contains("--force") && e.contains("not a removable"),
            "{e}"
        );
        check(&t, None, None, true).unwrap();
    }

    #[test]
    fn small_card_partition_and_read_only_are_refused() {
        let f = fake("");
        let e = check(&target(&f, "sdb", None), None, Some(9 << 30), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 9.0 GiB"), "{e}");
        let e = check(&target(&f, "sdb1", None), None, None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition") && e.contains("/dev/sdb"), "{e}");
        std::fs::write(f.sys.class_block.join("sdb/ro"), "1").unwrap();
        let e = check(&target(&f, "sdb", None), None, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lock switch"), "{e}");
        drop(f.dir);
    }

    #[test]
    fn the_real_root_disk_is_recognised() {
        // Read-only inspection of this machine: whatever holds `/` must be
        // refused. Nothing is opened for writing.
        let sys = Sys::real();
        let root = std::fs::metadata("/").map(|m| dev_string(m.dev())).unwrap();
        let Ok(Some(name)) = find_by_dev(&sys, &root) else {
            eprintln!("SKIPPED: / is not on a block device listed in sysfs ({root})");
            return;
        };
        let mut disk = name.clone();
        if let Ok(real) = std::fs::canonicalize(sys.class_block.join(&name))
            && real.join("partition").exists()
            && let Some(p) = real.parent().and_then(|p| p.file_name())
        {
            disk = p.to_string_lossy().into_owned();
        }
        let t = Target {
            path: format!("/dev/{disk}").into(),
            disk: Some(inspect_block(&sys, &disk, Some(&root)).unwrap()),
        };
        let e = check(&t, None, None, true).unwrap_err().to_string();
        assert!(e.contains("root filesystem"), "{e}");
    }
}
