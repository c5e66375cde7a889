//! What the heartbeat tells the inventory: the board's `[labels]` from its
//! configuration, its kernel release and boot id, and the score types and
//! format versions the agent reads, in heartbeat format version 3. Real
//! nats-server, real Podman, the real agent binary.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::score::{PODMAN_V0, PODMAN_V1};
use protocol::wire::{FORMAT_VERSION, FORMAT_VERSION_4};

fn proc_line(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_heartbeat_reports_labels_kernel_boot_id_and_capabilities() {
    let Some(env) = Env::start("inventory-hb").await else {
        return;
    };
    let config = env.write_config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[labels]\nboard = \"rpi4\"\nsite = \"lyon\"\n\"example.com/rack\" = \"r-12\"\n");
    std::fs::write(&config, text).unwrap();
    let mut agent = env.spawn_agent_with_config();

    let hb = env
        .wait_heartbeat("a version-4 heartbeat", |v, _| v == FORMAT_VERSION_4)
        .await;
    let labels: Vec<(&str, &str)> = hb
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("board", "rpi4"),
            ("example.com/rack", "r-12"),
            ("site", "lyon")
        ]
    );
    assert_eq!(hb.kernel.as_str(), proc_line("/proc/sys/kernel/osrelease"));
    assert_eq!(
        hb.boot_id.as_str(),
        proc_line("/proc/sys/kernel/random/boot_id")
    );
    assert_eq!(hb.agent_version.as_str(), env!("CARGO_PKG_VERSION"));
    let size = env.heartbeat.get(&env.device).await.unwrap().unwrap().len();
    eprintln!("heartbeat: {size} bytes");
    // It claims PodmanV0 and PodmanV1 (the types it runs) in their first
    // format version, and desired states in versions 1 to 5 (5: sealed
    // secrets, which it opens): what it decodes and runs. Five versions
    // make the heartbeat version 4, even without a sealing key.
    assert_eq!(hb.sealing_key.as_str(), "");
    let types: Vec<&str> = hb
        .capabilities
        .score_types
        .iter()
        .map(|s| s.type_name.as_str())
        .collect();
    assert_eq!(types, [PODMAN_V0, PODMAN_V1]);
    assert_eq!(
        hb.capabilities.desired_state_versions[..],
        [
            FORMAT_VERSION,
            protocol::wire::FORMAT_VERSION_2,
            protocol::wire::FORMAT_VERSION_3,
            protocol::wire::FORMAT_VERSION_4,
            protocol::wire::FORMAT_VERSION_5
        ]
    );
    for t in hb.capabilities.score_types.iter() {
        assert_eq!(t.versions[..], [FORMAT_VERSION], "{t:?}");
    }

    // What it claims to read, it runs.
    env.put("web", 1, vec![sleeper("main", "1")]).await;
    env.wait_status("web", "Running at 1", |s| {
        s.phase == protocol::Phase::Healthy && s.revision == 1
    })
    .await;

    // Restarted with other labels (and the same boot): the next heartbeat
    // says so.
    assert!(agent.terminate().is_some_and(|s| s.success()));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("site = \"lyon\"", "site = \"paris\"");
    std::fs::write(&config, text).unwrap();
    let _agent = env.spawn_agent_with_config();
    let again = env
        .wait_heartbeat("labelled site=paris", |v, h| {
            v == FORMAT_VERSION_4 && h.labels.get("site").is_some_and(|s| s.as_str() == "paris")
        })
        .await;
    assert_eq!(again.boot_id, hb.boot_id, "same boot");
    assert_eq!(again.labels.len(), 3);
}

/// The inventory's deployment count does not wait for the next beat: a
/// change in the number of deployments is reported a moment later. The
/// beat is an hour here, so only that change can bring the new count.
#[tokio::test]
async fn a_new_deployment_is_in_the_next_heartbeat_without_waiting_for_the_beat() {
    let Some(env) = Env::start("hb-count").await else {
        return;
    };
    let config = env.write_config();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "heartbeat_interval_secs = 1",
        "heartbeat_interval_secs = 3600",
    );
    std::fs::write(&config, text).unwrap();
    let _agent = env.spawn_agent_with_config();
    env.wait_heartbeat("the first, with no deployment", |_, h| h.deployments == 0)
        .await;
    env.put("web", 1, vec![sleeper("main", "1")]).await;
    env.wait_heartbeat("one deployment", |_, h| h.deployments == 1)
        .await;
    env.delete("web").await;
    env.wait_heartbeat("no deployment again", |_, h| h.deployments == 0)
        .await;
}

/// `check-config` shows the labels, and refuses a bad one naming it, the
/// rule and an example; the agent does not start with it either.
#[test]
fn a_bad_label_stops_check_config_and_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "version = 1\ndevice_id = \"pi-001\"\nstate_dir = \"{}\"\n[nats]\nurls = [\"nats://127.0.0.1:1\"]\n[labels]\nboard = \"rpi4\"\n",
        dir.path().join("state").display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &good).unwrap();
    let agent = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_iot-agent"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("IOT_AGENT_CONFIG")
            .output()
            .unwrap()
    };
    let out = agent(&["check-config"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[labels]\nboard = \"rpi4\"\n"), "{stdout}");

    std::fs::write(&path, good.replace("board = ", "\"-board\" = ")).unwrap();
    for args in [&["check-config"][..], &["run"][..]] {
        let out = agent(args);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("labels.\"-board\": key must be a label key")
                && stderr.contains("starts and ends with a letter or digit")
                && stderr.contains("e.g. site or example.com/board"),
            "{args:?}: {stderr}"
        );
    }
}
