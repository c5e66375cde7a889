//! `cargo xtask disk-image` on synthetic base images (MBR and GPT; FAT32 boot,
//! ext4 root), checked file by file with debugfs and mtools. No root, no
//! mounting.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const TOOLS: &[&str] = &["sfdisk", "mkfs.fat", "mke2fs", "debugfs", "e2fsck", "mcopy"];

fn image_cmd(board: &str, base: &Path, agent: &Path, out: &Path, device: &str) -> Command {
    let mut c = xtask();
    c.args(["disk-image", "--board", board, "--base"])
        .arg(base)
        .arg("--agent")
        .arg(agent)
        .args(["--device-id", device])
        .args(["--nats-url", "nats://nats.example.net:4222"])
        .args(["--nats-url", "tls://nats2.example.net:4443"])
        .arg("-o")
        .arg(out);
    c
}

#[test]
fn mbr_image_for_rpi4_gets_agent_config_unit_cmdline_and_hostname() {
    if !have_tools(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), "dos");
    let base_bytes = std::fs::read(&base.path).unwrap();
    let agent = fake_aarch64_binary(dir.path());
    let out = dir.path().join("pi-001.img");
    let mut c = image_cmd("rpi4", &base.path, &agent, &out, "pi-001");
    c.args(["--nats-user", "pi-001", "--nats-password", "s3cr\"et"]);
    ok(&mut c);

    assert_eq!(
        std::fs::read(&base.path).unwrap(),
        base_bytes,
        "base image changed"
    );
    let (img, root) = (&out, base.root_offset);

    // The agent: same bytes, 0755 root:root.
    let bin = debugfs_bytes(img, root, "cat /usr/local/bin/iot-agent");
    assert_eq!(bin, std::fs::read(&agent).unwrap());
    assert_eq!(
        ext4_stat(img, root, "/usr/local/bin/iot-agent"),
        ("regular".into(), "0755".into(), "0".into(), "0".into())
    );

    // The config: the agent's format, and 0600 because it holds a password.
    let cfg = ext4_cat(img, root, "/etc/iot-agent/config.toml");
    let v: toml::Value = toml::from_str(&cfg).unwrap();
    assert_eq!(v["version"].as_integer(), Some(1));
    assert_eq!(v["device_id"].as_str(), Some("pi-001"));
    assert_eq!(v["state_dir"].as_str(), Some("/var/lib/iot-agent"));
    // Labelled with its board, for Deployments' label selectors.
    assert!(v["labels"]["board"].as_str().is_some(), "{cfg}");
    let urls: Vec<&str> = v["nats"]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "nats://nats.example.net:4222",
            "tls://nats2.example.net:4443"
        ]
    );
    let cr = &v["nats"]["credentials"];
    assert_eq!(cr["type"].as_str(), Some("user-password"));
    assert_eq!(cr["user"].as_str(), Some("pi-001"));
    assert_eq!(cr["password"].as_str(), Some("s3cr\"et"));
    assert_eq!(
        ext4_stat(img, root, "/etc/iot-agent/config.toml").1,
        "0600",
        "a config holding a password must be 0600"
    );
    assert_eq!(ext4_stat(img, root, "/etc/iot-agent").1, "0700");

    // The unit, enabled through the multi-user.target.wants symlink.
    let unit = ext4_cat(img, root, "/etc/systemd/system/iot-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/iot-agent --config /etc/iot-agent/config.toml")
    );
    assert!(unit.contains("After=network-online.target podman.socket"));
    assert!(unit.contains("WantedBy=multi-user.target"));
    // And the one that stops the workloads with a short grace at shutdown.
    let stop = ext4_cat(img, root, "/etc/systemd/system/iot-workloads-stop.service");
    assert!(stop.contains("ExecStop=/usr/bin/podman stop --all --time 10"));
    for name in ["iot-agent.service", "iot-workloads-stop.service"] {
        let link = debugfs(
            img,
            root,
            &format!("stat /etc/systemd/system/multi-user.target.wants/{name}"),
        );
        assert!(link.contains("Type: symlink"), "{link}");
        assert!(
            link.contains(&format!("Fast link dest: \"/etc/systemd/system/{name}\"")),
            "{link}"
        );
    }

    // Hostname and /etc/hosts.
    assert_eq!(ext4_cat(img, root, "/etc/hostname"), "pi-001\n");
    let hosts = ext4_cat(img, root, "/etc/hosts");
    assert!(
        hosts.contains("127.0.1.1\tpi-001") && !hosts.contains("raspberrypi"),
        "{hosts}"
    );
    assert!(hosts.contains("127.0.0.1\tlocalhost"));

    // The kernel command line gained the cgroup parameters, once, on one line.
    let cmdline = fat_cat(img, base.boot_offset, "cmdline.txt");
    assert!(cmdline.starts_with("console=serial0,115200 console=tty1 root=PARTUUID=1234-02"));
    for p in [
        "cgroup_enable=cpuset",
        "cgroup_enable=memory",
        "cgroup_memory=1",
    ] {
        assert_eq!(cmdline.matches(p).count(), 1, "{p} in {cmdline}");
    }
    assert_eq!(cmdline.lines().count(), 1);
    assert_eq!(
        fat_cat(img, base.boot_offset, "config.txt"),
        "arm_64bit=1\n"
    );

    fsck_clean(img, root);
}

#[test]
fn gpt_image_for_generic_aarch64_with_nkey_and_rebake_in_place() {
    if !have_tools(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), "gpt");
    let agent = fake_aarch64_binary(dir.path());
    let seed = dir.path().join("edge-7.nk");
    std::fs::write(&seed, "SUAEXAMPLESEEDONLYFORTESTS\n").unwrap();
    // A compressed base, as vendors ship them.
    let xz = dir.path().join("base.img.xz");
    ok(Command::new("sh").arg("-c").arg(format!(
        "xz -T1 -1 -c {} > {}",
        base.path.display(),
        xz.display()
    )));
    let out = dir.path().join("edge-7.img");
    let mut c = image_cmd("generic-aarch64", &xz, &agent, &out, "edge-7");
    c.arg("--nats-nkey").arg(&seed);
    let first = stderr(&ok(&mut c));
    let root = base.root_offset;
    let cfg = ext4_cat(&out, root, "/etc/iot-agent/config.toml");
    assert!(cfg.contains("type = \"nkey\""), "{cfg}");
    assert!(
        cfg.contains("seed_file = \"/etc/iot-agent/nats.nk\""),
        "{cfg}"
    );
    assert_eq!(
        ext4_stat(&out, root, "/etc/iot-agent/config.toml").1,
        "0644",
        "no secret in the config itself"
    );
    assert_eq!(
        ext4_cat(&out, root, "/etc/iot-agent/nats.nk"),
        "SUAEXAMPLESEEDONLYFORTESTS\n"
    );
    assert_eq!(
        ext4_stat(&out, root, "/etc/iot-agent/nats.nk"),
        ("regular".into(), "0600".into(), "0".into(), "0".into())
    );
    assert_eq!(ext4_cat(&out, root, "/etc/hostname"), "edge-7\n");
    // The sealing key beside the seed was missing: created there (0600)
    // and baked, with the config naming it.
    let xk = dir.path().join("edge-7.xk");
    let sealing = std::fs::read_to_string(&xk).unwrap();
    assert_eq!(mode(&xk), 0o600);
    let public = nkeys::XKey::from_seed(sealing.trim()).unwrap().public_key();
    assert!(
        first.contains(&format!("device edge-7: sealing key {public} (created in")),
        "{first}"
    );
    let second = stderr(&ok(&mut c));
    assert!(
        second.contains(&format!("device edge-7: sealing key {public} (from")),
        "{second}"
    );
    assert_eq!(
        std::fs::read_to_string(&xk).unwrap(),
        sealing,
        "a second bake keeps the key"
    );
    assert_eq!(ext4_cat(&out, root, "/etc/iot-agent/device.xk"), sealing);
    assert_eq!(
        ext4_stat(&out, root, "/etc/iot-agent/device.xk"),
        ("regular".into(), "0600".into(), "0".into(), "0".into())
    );
    assert!(
        cfg.contains("\n[secrets]\nkey_file = \"/etc/iot-agent/device.xk\"\n\n[labels]\n"),
        "{cfg}"
    );
    fsck_clean(&out, root);

    // Re-baking an already baked image replaces every file cleanly.
    let again = dir.path().join("edge-8.img");
    let mut c = image_cmd("generic-aarch64", &out, &agent, &again, "edge_8");
    c.args(["--nats-token", "tok"]);
    ok(&mut c);
    let cfg = ext4_cat(&again, root, "/etc/iot-agent/config.toml");
    assert!(cfg.contains("device_id = \"edge_8\"") && cfg.contains("token = \"tok\""));
    // No key file to bake: edge-7's key is not left for edge_8, whose
    // agent creates its own at the path its config names.
    assert!(
        cfg.contains("key_file = \"/etc/iot-agent/device.xk\""),
        "{cfg}"
    );
    assert_eq!(
        ext4_stat(&again, root, "/etc/iot-agent/device.xk").0,
        "",
        "edge-7's sealing key is still in edge_8's image"
    );
    assert_eq!(
        ext4_stat(&again, root, "/etc/iot-agent/config.toml").1,
        "0600"
    );
    assert_eq!(ext4_cat(&again, root, "/etc/hostname"), "edge-8\n");
    fsck_clean(&again, root);
}

#[test]
fn wrong_inputs_are_refused_with_a_fix() {
    if !have_tools(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mbr = base_image(dir.path(), "dos");
    let agent = fake_aarch64_binary(dir.path());
    let out = dir.path().join("x.img");

    // MBR base for a GPT board.
    let o = run(&mut image_cmd(
        "generic-aarch64",
        &mbr.path,
        &agent,
        &out,
        "x",
    ));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expects gpt"), "{}", stderr(&o));
    assert!(!out.exists(), "a failed image must not be left behind");

    // An x86-64 binary for an aarch64 board.
    let host = std::env::current_exe().unwrap();
    let o = run(&mut image_cmd("rpi4", &mbr.path, &host, &out, "x"));
    assert!(!o.status.success());
    if cfg!(target_arch = "x86_64") {
        assert!(stderr(&o).contains("x86-64"), "{}", stderr(&o));
    }

    // A device id that is not a single NATS token.
    let o = run(&mut image_cmd("rpi4", &mbr.path, &agent, &out, "pi.001"));
    assert!(stderr(&o).contains("--device-id") && stderr(&o).contains("'.'"));

    // Unknown board, missing base.
    let o = run(&mut image_cmd("rpi9", &mbr.path, &agent, &out, "x"));
    assert!(stderr(&o).contains("cargo xtask boards"));
    let o = run(&mut image_cmd(
        "rpi4",
        &dir.path().join("nope.img"),
        &agent,
        &out,
        "x",
    ));
    assert!(stderr(&o).contains("does not exist"));

    // Not a disk image at all.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let o = run(&mut image_cmd("rpi4", &junk, &agent, &out, "x"));
    assert!(stderr(&o).contains("no partition table"), "{}", stderr(&o));
}

#[test]
fn works_as_an_unprivileged_user() {
    if !have_tools(TOOLS) || !have_tools(&["setpriv"]) {
        return;
    }
    if !is_root() {
        // Already unprivileged: the other tests prove it.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), "dos");
    let agent = fake_aarch64_binary(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), &out_dir] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = out_dir.join("pi-002.img");
    let inner = image_cmd("rpi4", &base.path, &agent, &out, "pi-002");
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("PATH", std::env::var_os("PATH").unwrap());
    let o = run(&mut c);
    if !o.status.success() && stderr(&o).contains("Permission denied") && !testkit::in_ci() {
        eprintln!("SKIPPED: the test binary is not reachable by uid 65534 here");
        return;
    }
    assert!(o.status.success());
    // Files inside are root-owned even though nobody built the image.
    assert_eq!(
        ext4_stat(&out, base.root_offset, "/etc/iot-agent/config.toml"),
        ("regular".into(), "0644".into(), "0".into(), "0".into())
    );
}
