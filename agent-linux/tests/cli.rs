//! The binary's command line: `--version`, `check-config` with good and bad
//! files, `IOT_AGENT_CONFIG`. With `IOT_AGENT_AARCH64_BIN` set (a static
//! aarch64 build) the same checks run under `qemu-aarch64-static`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

const GOOD: &str = r#"version = 1
device_id = "pi-001"
state_dir = "/var/lib/iot-agent"
heartbeat_interval_secs = 15
[nats]
urls = ["nats://a.example.net:4222", "tls://b.example.net:4222"]
[nats.credentials]
type = "token"
token = "s3cret"
[nats.tls]
ca = "/etc/iot-agent/ca.pem"
[podman]
socket = "unix:///run/podman/podman.sock"
[security]
allowed_host_paths = ["/srv"]
[labels]
board = "rpi4"
"#;

fn agents() -> Vec<Vec<String>> {
    let mut v = vec![vec![env!("CARGO_BIN_EXE_iot-agent").to_string()]];
    if let Ok(arm) = std::env::var("IOT_AGENT_AARCH64_BIN") {
        v.push(vec!["qemu-aarch64-static".to_string(), arm]);
    }
    v
}

fn run(cmd: &[String], args: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).args(args).env_remove("IOT_AGENT_CONFIG");
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn version_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        GOOD.replace("type = \"token\"", "type = \"kerberos\""),
    )
    .unwrap();
    let bad_id = dir.path().join("bad-id.toml");
    std::fs::write(&bad_id, GOOD.replace("pi-001", "pi>1")).unwrap();
    let bad_label = dir.path().join("bad-label.toml");
    std::fs::write(&bad_label, GOOD.replace("board =", "\"-board\" =")).unwrap();

    for agent in agents() {
        let out = run(&agent, &["--version"], None);
        assert!(out.status.success(), "{agent:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("iot-agent {}", env!("CARGO_PKG_VERSION"))
        );

        let out = run(
            &agent,
            &["check-config", "--config", good.to_str().unwrap()],
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{agent:?}: {out:?}");
        assert!(stdout.contains("device_id = \"pi-001\""), "{stdout}");
        assert!(stdout.contains("[labels]\nboard = \"rpi4\""), "{stdout}");
        assert!(!stdout.contains("s3cret"), "secret printed: {stdout}");

        // IOT_AGENT_CONFIG is the default path.
        let out = run(
            &agent,
            &["check-config"],
            Some(("IOT_AGENT_CONFIG", good.to_str().unwrap())),
        );
        assert!(out.status.success(), "{agent:?}: {out:?}");

        let out = run(&agent, &["check-config", "-c", bad.to_str().unwrap()], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("kerberos") && stderr.contains("creds-file"),
            "{stderr}"
        );

        let out = run(
            &agent,
            &["check-config", "-c", bad_id.to_str().unwrap()],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("device_id") && stderr.contains("'>'"),
            "{stderr}"
        );

        let out = run(
            &agent,
            &["check-config", "-c", bad_label.to_str().unwrap()],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("labels.\"-board\": key must be a label key"),
            "{stderr}"
        );

        let out = run(&agent, &["--frobnicate"], None);
        assert_eq!(out.status.code(), Some(2));
    }
}

/// An error's cause is printed once: the message either carries it or
/// returns it from `source()`, never both (the CLI prints the chain).
#[test]
fn a_config_error_shows_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, GOOD.replace("[podman]", "[podman]\nbogus = 1")).unwrap();
    let missing = dir.path().join("absent.toml");
    for agent in agents() {
        let out = run(
            &agent,
            &["check-config", "-c", unknown.to_str().unwrap()],
            None,
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("unknown field `bogus`").count(),
            1,
            "{stderr}"
        );
        assert_eq!(stderr.matches("TOML parse error").count(), 1, "{stderr}");

        let out = run(
            &agent,
            &["check-config", "-c", missing.to_str().unwrap()],
            None,
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    }
}

/// A sealing key file readable by others, or one that holds no seed, is
/// refused by `check-config` and by `run`, naming the file and the fix; a
/// good one passes.
#[test]
fn check_config_checks_the_sealing_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.xk");
    let seed = sealing::DeviceKey::generate().seed();
    std::fs::write(&key, format!("{}\n", seed.as_str())).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}[secrets]\nkey_file = \"{}\"\n",
            GOOD.replace("[labels]\nboard = \"rpi4\"\n", ""),
            key.display()
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();
    for agent in agents() {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = run(&agent, &["--config", path, "check-config"], None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("key_file"), "{text}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        for command in ["check-config", "run"] {
            let out = run(&agent, &["--config", path, command], None);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command}");
            assert!(
                err.contains(&key.display().to_string()) && err.contains("chmod 600"),
                "{command}: {err}"
            );
            assert!(!err.contains(seed.as_str()), "{err}");
        }
    }
    std::fs::write(&key, "not a seed\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&agents()[0], &["--config", path, "check-config"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("curve seed"), "{err}");
}
