//! `cargo xtask dist --board rpi4`: a real release build of the agent for
//! aarch64-unknown-linux-musl, checked from its ELF header and run under
//! qemu-aarch64-static. Slow the first time (a release build).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn dist_rpi4_is_a_static_stripped_aarch64_binary_that_runs_under_qemu() {
    if !have_tools(&["qemu-aarch64-static"]) {
        return;
    }
    let o = ok(xtask().args(["dist", "--board", "rpi4"]));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = root.join("target/dist/rpi4");
    let bin = dir.join("iot-agent");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&bin.display().to_string()),
        "dist must say where the binary is"
    );
    let bytes = std::fs::read(&bin).unwrap();

    // ELF64, little endian, EM_AARCH64, no PT_INTERP (static), no .symtab.
    assert_eq!(&bytes[0..4], b"\x7fELF");
    assert_eq!(bytes[4], 2, "64-bit");
    assert_eq!(bytes[5], 1, "little endian");
    assert_eq!(
        u16::from_le_bytes([bytes[18], bytes[19]]),
        183,
        "EM_AARCH64"
    );
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_ne!(ty, 3, "PT_INTERP: the binary is dynamically linked");
    }
    assert!(
        !bytes.windows(7).any(|w| w == b".symtab"),
        "the binary is not stripped"
    );

    // The published checksum matches.
    let sum = std::fs::read_to_string(dir.join("iot-agent.sha256")).unwrap();
    let sha = Command::new("sha256sum").arg(&bin).output().unwrap();
    let want = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        want.split_whitespace().next()
    );
    assert!(sum.ends_with("  iot-agent\n"), "sha256sum -c format: {sum}");

    // It runs on (emulated) aarch64 and reports its version.
    let out = run(Command::new("qemu-aarch64-static")
        .arg(&bin)
        .arg("--version"));
    assert!(
        out.status.success(),
        "`iot-agent --version` under qemu-aarch64-static exited with {}: {}",
        out.status,
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version should print the version: {text}"
    );

    // The config `xtask disk-image` writes is accepted by this very agent, for
    // every credentials kind (the agent's own parser is the contract).
    if !have_tools(&["sfdisk", "mkfs.fat", "mke2fs", "debugfs", "mcopy"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = base_image(tmp.path(), "dos");
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "SUAEXAMPLE\n").unwrap();
    let kinds: [&[&str]; 5] = [
        &[],
        &["--nats-user", "u", "--nats-password", "p"],
        &["--nats-token", "t"],
        &["--nats-nkey", secret.to_str().unwrap()],
        &["--nats-creds", secret.to_str().unwrap()],
    ];
    for (i, creds) in kinds.iter().enumerate() {
        let out = tmp.path().join(format!("img{i}.img"));
        ok(xtask()
            .args(["disk-image", "--board", "rpi4", "--base"])
            .arg(&base.path)
            .arg("--agent")
            .arg(&bin)
            .args([
                "--device-id",
                "pi-042",
                "--nats-url",
                "nats://127.0.0.1:4222",
            ])
            .args(*creds)
            .arg("-o")
            .arg(&out));
        let cfg = tmp.path().join(format!("config{i}.toml"));
        std::fs::write(
            &cfg,
            ext4_cat(&out, base.root_offset, "/etc/iot-agent/config.toml"),
        )
        .unwrap();
        let o = run(Command::new("qemu-aarch64-static")
            .arg(&bin)
            .arg("--config")
            .arg(&cfg)
            .arg("check-config"));
        assert!(o.status.success(), "agent rejects the config for {creds:?}");
        std::fs::remove_file(&out).unwrap();
    }
}
