//! Shared helpers for the xtask integration tests: run the real `xtask`
//! binary, build synthetic disk images with the same tools a user has
//! (sfdisk, mkfs.fat, mke2fs -d), and read them back with mtools / debugfs.
//! A missing tool skips outside CI and fails under `CI=true`, through
//! testkit's [`testkit::missing`].

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Whether all `tools` are on PATH; otherwise skip (or fail under CI).
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        })
        .collect();
    missing.is_empty()
        || testkit::missing::<()>(&format!(
            "missing tools {missing:?} (dosfstools, mtools, fdisk, e2fsprogs, qemu-user-static)"
        ))
        .is_some()
}

/// Whether the tests run as root (effective uid 0, as xtask's own check).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

pub fn xtask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.stdin(Stdio::null());
    c
}

/// Runs and returns output, printing it for failing-test diagnosis.
pub fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    eprintln!(
        "$ {:?}\n--- stdout\n{}--- stderr\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn ok(c: &mut Command) -> Output {
    let out = run(c);
    assert!(out.status.success(), "command failed: {c:?}");
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub const MIB: u64 = 1024 * 1024;

/// Layout of a synthetic base image: boot FAT32 at 1 MiB, ext4 root after it.
pub struct BaseImage {
    pub path: PathBuf,
    pub boot_offset: u64,
    pub root_offset: u64,
}

/// Builds a base image like a vendor's: partition table `label` ("dos" or
/// "gpt"), FAT32 boot partition 1 with `cmdline.txt`, ext4 root partition
/// 2 filled from a small tree (`/etc/hostname`, `/etc/hosts`, ...).
pub fn base_image(dir: &Path, label: &str) -> BaseImage {
    let path = dir.join(format!("base-{label}.img"));
    let boot_mib = 40; // FAT32 needs >= 65525 clusters; -s 1 keeps mtools happy
    let root_mib = 24;
    let total = 1 + boot_mib + root_mib + 1; // + GPT backup header room
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(total * MIB).unwrap();
    drop(f);
    let boot_type = if label == "gpt" {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    } else {
        "c"
    };
    let root_type = if label == "gpt" {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    } else {
        "83"
    };
    let script = format!(
        "label: {label}\nstart=2048, size={}, type={boot_type}\nstart={}, size={}, type={root_type}\n",
        boot_mib * 2048,
        2048 + boot_mib * 2048,
        root_mib * 2048
    );
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = sf.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    // Boot partition: a FAT32 filesystem image, then copied in place.
    let boot = dir.join(format!("boot-{label}.fs"));
    ok(Command::new("mkfs.fat")
        .args(["-F", "32", "-s", "1", "-n", "BOOT", "-C"])
        .arg(&boot)
        .arg((boot_mib * 1024).to_string()));
    let cmdline = dir.join("cmdline.txt");
    std::fs::write(
        &cmdline,
        "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait\n",
    )
    .unwrap();
    let config = dir.join("config.txt");
    std::fs::write(&config, "arm_64bit=1\n").unwrap();
    for f in [&cmdline, &config] {
        ok(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&boot)
            .arg(f)
            .arg("::"));
    }
    let boot_offset = MIB;
    write_at(&path, boot_offset, &std::fs::read(&boot).unwrap());

    // Root partition: mke2fs -d writes a populated ext4 at the offset.
    let tree = dir.join(format!("root-{label}"));
    for d in ["etc/systemd/system", "usr/bin", "var/lib"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "raspberrypi\n").unwrap();
    std::fs::write(
        tree.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n\n127.0.1.1\t\traspberrypi\n",
    )
    .unwrap();
    let root_offset = (1 + boot_mib) * MIB;
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&tree)
        .arg("-E")
        .arg(format!("offset={root_offset}"))
        .arg(&path)
        .arg((root_mib * 256).to_string()));
    BaseImage {
        path,
        boot_offset,
        root_offset,
    }
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// `debugfs -R REQUEST image?offset=N` stdout, as bytes.
pub fn debugfs_bytes(image: &Path, offset: u64, request: &str) -> Vec<u8> {
    Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap()
        .stdout
}

/// `debugfs -R REQUEST image?offset=N` stdout, as text.
pub fn debugfs(image: &Path, offset: u64, request: &str) -> String {
    String::from_utf8_lossy(&debugfs_bytes(image, offset, request)).into_owned()
}

/// The content of `path` in the ext4 at `offset`.
pub fn ext4_cat(image: &Path, offset: u64, path: &str) -> String {
    debugfs(image, offset, &format!("cat {path}"))
}

/// (type, octal mode, uid, gid) of `path` from debugfs stat.
pub fn ext4_stat(image: &Path, offset: u64, path: &str) -> (String, String, String, String) {
    let s = debugfs(image, offset, &format!("stat {path}"));
    let field = |name: &str| {
        s.split(name)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    };
    (
        field("Type:"),
        field("Mode:"),
        field("User:"),
        field("Group:"),
    )
}

/// `e2fsck -fn`: the filesystem is consistent after our writes.
pub fn fsck_clean(image: &Path, offset: u64) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FAT file read with mtools.
pub fn fat_cat(image: &Path, offset: u64, path: &str) -> String {
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::{path}"))
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy {path}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A minimal static aarch64 ELF header, standing in for the agent where
/// only its bytes matter (the dist test runs the real one).
pub fn fake_aarch64_binary(dir: &Path) -> PathBuf {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1;
    b[16] = 2; // ET_EXEC
    b[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    b.extend(b"iot-agent test payload");
    let p = dir.join("iot-agent");
    std::fs::write(&p, &b).unwrap();
    p
}

/// `cargo xtask creds --out DIR ARGS...` (add `--jwt` to ARGS for JWT mode).
pub fn creds(dir: &Path, args: &[&str]) -> Output {
    let mut c = xtask();
    c.arg("creds").arg("--out").arg(dir).args(args);
    run(&mut c)
}

/// A file's permission bits.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The regular files directly in `dir` whose names end with `suffix`
/// (`""` for all), by name, with their contents.
pub fn files_ending(dir: &Path, suffix: &str) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|n| n.ends_with(suffix))
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

/// Runs `cargo xtask creds --out DIR ARGS...` and starts a reloadable
/// nats-server on the configuration it wrote. `None` when nats-server is
/// missing outside CI (the test should return).
pub fn fleet_server(dir: &Path, args: &[&str]) -> Option<testkit::NatsServer> {
    assert!(creds(dir, args).status.success(), "xtask creds {args:?}");
    let server = testkit::NatsServer::start_reloadable(testkit::NatsOptions {
        config_file: Some(dir.join("nats-server.conf")),
        ..Default::default()
    })?;
    eprintln!("{}", server.version());
    Some(server)
}
