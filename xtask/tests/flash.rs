//! `cargo xtask flash` to a regular file (raw, .gz and .xz images) and,
//! where the machine allows, to a loop device; each refusal. The checks
//! that need a mounted or system disk run against fake sysfs trees in
//! `src/flash/target.rs` (unit tests) so no test mounts anything.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An image of `len` bytes of varied content (not a multiple of 4 KiB, so
/// the partial last block is exercised).
fn test_image(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join("card.img");
    let mut x: u32 = 12345;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn flash(image: &Path, to: &Path) -> Command {
    let mut c = xtask();
    c.args(["flash", "--image"]).arg(image).arg("--to").arg(to);
    c
}

#[test]
fn flash_to_a_file_is_byte_identical_for_raw_gz_and_xz() {
    if !have_tools(&["xz", "gzip"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 5 * 1024 * 1024 + 123);
    let want = std::fs::read(&img).unwrap();
    ok(Command::new("sh").arg("-c").arg(format!(
        "gzip -1 -k -c {0} > {0}.gz && xz -T1 -1 -k -c {0} > {0}.xz",
        img.display()
    )));
    for suffix in ["", ".gz", ".xz"] {
        let src = PathBuf::from(format!("{}{suffix}", img.display()));
        let to = dir.path().join(format!("out{suffix}.bin"));
        // A longer, stale target: the result must still be byte-identical.
        std::fs::write(&to, vec![0xAAu8; 7 * 1024 * 1024]).unwrap();
        let o = ok(flash(&src, &to).arg("--yes"));
        assert_eq!(std::fs::read(&to).unwrap(), want, "{suffix}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("verified (sha256 "), "{out}");
    }
}

#[test]
fn no_confirmation_without_yes_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 4096);
    let to = dir.path().join("target.bin");
    let o = run(&mut flash(&img, &to)); // stdin is /dev/null: no terminal
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("pass --yes") && e.contains("not a terminal"),
        "{e}"
    );
    assert!(!to.exists(), "nothing may be written without confirmation");
}

#[test]
fn other_refusals_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 4096);
    // The image onto itself.
    let o = run(flash(&img, &img).arg("--yes"));
    assert!(stderr(&o).contains("the image itself"), "{}", stderr(&o));
    // A missing image.
    let o = run(flash(&dir.path().join("none.img"), &dir.path().join("t")).arg("--yes"));
    assert!(
        stderr(&o).contains("cargo xtask disk-image"),
        "{}",
        stderr(&o)
    );
    // A device path that does not exist.
    let o = run(flash(&img, Path::new("/dev/sdzz9")).arg("--yes"));
    assert!(stderr(&o).contains("lsblk"), "{}", stderr(&o));
    // A character device is not a disk.
    let o = run(flash(&img, Path::new("/dev/null")).arg("--yes"));
    assert!(
        stderr(&o).contains("neither a block device"),
        "{}",
        stderr(&o)
    );
    // A corrupt compressed image fails while measuring, before writing.
    let bad = dir.path().join("bad.img.gz");
    std::fs::write(&bad, b"\x1f\x8b\x08\x00garbage").unwrap();
    let to = dir.path().join("t2");
    let o = run(flash(&bad, &to).arg("--yes"));
    assert!(
        !o.status.success() && stderr(&o).contains("corrupt"),
        "{}",
        stderr(&o)
    );
    assert!(!to.exists());
    // The one-shot form without enough to build an image.
    let o = run(xtask().args(["flash", "--board", "rpi4", "--to"]).arg(&to));
    assert!(stderr(&o).contains("--image"), "{}", stderr(&o));
}

/// A loop device over a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path, partscan: bool) -> Option<Loop> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if partscan {
            c.arg("-P");
        }
        let out = c.arg(file).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no loop device here ({}); the loop-device flash test needs root and /dev/loop-control",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Loop { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn loop_device_needs_force_then_is_written_and_verified() {
    // Loop devices need root; that is the machine's permission, not ours.
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 3 * 1024 * 1024 + 512);
    let backing = dir.path().join("disk.bin");
    std::fs::write(&backing, vec![0u8; 8 * 1024 * 1024]).unwrap();
    let Some(lo) = Loop::attach(&backing, false) else {
        return;
    };
    // Loop devices are not removable: refused without --force.
    let o = run(flash(&img, &lo.dev).arg("--yes"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(std::fs::read(&backing).unwrap().iter().all(|b| *b == 0));

    let o = ok(flash(&img, &lo.dev).args(["--yes", "--force"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));
    let want = std::fs::read(&img).unwrap();
    let got = std::fs::read(&backing).unwrap();
    assert_eq!(&got[..want.len()], &want[..], "loop device content");

    // Too small: a 2 MiB device for a 3 MiB image.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, vec![0u8; 2 * 1024 * 1024]).unwrap();
    let lo2 = Loop::attach(&small, false).unwrap();
    let o = run(flash(&img, &lo2.dev).args(["--yes", "--force"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("use a card of at least"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::read(&small).unwrap().iter().all(|b| *b == 0));
}

#[test]
fn loop_partition_is_refused() {
    if !have_tools(&["sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 4096);
    let backing = dir.path().join("parted.bin");
    std::fs::write(&backing, vec![0u8; 8 * 1024 * 1024]).unwrap();
    let mut sf = Command::new("sh");
    sf.arg("-c").arg(format!(
        "echo 'label: dos\nstart=2048, type=83' | sfdisk -q {}",
        backing.display()
    ));
    ok(&mut sf);
    let Some(lo) = Loop::attach(&backing, true) else {
        return;
    };
    let mut part = PathBuf::from(format!("{}p1", lo.dev.display()));
    let name = format!("{}p1", lo.dev.file_name().unwrap().to_string_lossy());
    let sys_dev = Path::new("/sys/class/block").join(&name).join("dev");
    if !sys_dev.exists() {
        // Some sandboxes skip the partition scan; ask for it explicitly.
        let _ = Command::new("partx").arg("-a").arg(&lo.dev).status();
    }
    if !part.exists() {
        // Without udev the kernel lists the partition in sysfs but makes no
        // /dev node; make one (root only, like the loop device itself).
        let Ok(mm) = std::fs::read_to_string(&sys_dev) else {
            eprintln!(
                "SKIPPED: the kernel did not scan partitions of {}",
                lo.dev.display()
            );
            return;
        };
        let (maj, min) = mm.trim().split_once(':').unwrap();
        part = dir.path().join(&name);
        ok(Command::new("mknod").arg(&part).args(["b", maj, min]));
    }
    let o = run(flash(&img, &part).args(["--yes", "--force"]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("is a partition") && e.contains(&lo.dev.display().to_string()),
        "{e}"
    );
}

#[test]
fn one_shot_flash_builds_the_image_then_writes_it() {
    if !have_tools(&["sfdisk", "mkfs.fat", "mke2fs", "debugfs", "mcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), "dos");
    let agent = fake_aarch64_binary(dir.path());
    let card = dir.path().join("card.bin");
    let device = format!("oneshot-{}", std::process::id());
    let mut c = xtask();
    c.args(["flash", "--board", "rpi4", "--base"])
        .arg(&base.path)
        .arg("--agent")
        .arg(&agent)
        .args(["--device-id", &device, "--nats-url", "nats://10.0.0.1:4222"])
        .args(["--nats-token", "t0k", "--yes", "--to"])
        .arg(&card);
    let o = ok(&mut c);
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));
    // The card holds exactly the image that was built, with the identity.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = root.join("target/images").join(format!("{device}.img"));
    assert_eq!(
        std::fs::read(&card).unwrap(),
        std::fs::read(&built).unwrap()
    );
    assert_eq!(
        ext4_cat(&card, base.root_offset, "/etc/hostname"),
        format!("{device}\n")
    );
    assert_eq!(
        ext4_stat(&card, base.root_offset, "/etc/iot-agent/config.toml").1,
        "0600"
    );
    let _ = std::fs::remove_file(built);
}

#[test]
fn confirmation_on_a_terminal_needs_the_word_yes() {
    // `script` gives the command a pseudo-terminal, as a user would have.
    if !have_tools(&["script"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = test_image(dir.path(), 70_000);
    let to = dir.path().join("t.bin");
    let answer = |word: &str| {
        let cmd = format!(
            "{} flash --image {} --to {}",
            env!("CARGO_BIN_EXE_xtask"),
            img.display(),
            to.display()
        );
        run(Command::new("sh").arg("-c").arg(format!(
            "printf '{word}\\n' | script -qec '{cmd}' /dev/null"
        )))
    };
    let o = answer("y");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!o.status.success());
    assert!(
        text.contains("Type 'yes'") && text.contains("nothing was written"),
        "{text}"
    );
    assert!(!to.exists());

    let o = answer("yes");
    assert!(o.status.success());
    assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&img).unwrap());
}
