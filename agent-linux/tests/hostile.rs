//! Hostile scores are refused with a `Failed` status naming the rule, and
//! nothing else on the device changes.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::{BoundedVec, Phase, Text, Volume};

fn texts<const N: usize>(v: &[&'static str]) -> BoundedVec<Text<'static>, N> {
    BoundedVec::try_from_iter(v.iter().map(|s| Text::borrowed(s))).unwrap()
}

#[tokio::test]
async fn hostile_scores_are_refused_by_rule_and_change_nothing() {
    let Some(env) = Env::start("hostile").await else {
        return;
    };
    env.write_config();
    let mut config = std::fs::read_to_string(env.config_path()).unwrap();
    // Loosen exactly one thing, to show the settings are honoured.
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.to_str().unwrap().to_string();
    config.push_str(&format!(
        "[security]\nallowed_host_paths = [\"{data}\"]\nallowed_capabilities = [\"NET_ADMIN\"]\n"
    ));
    std::fs::write(env.config_path(), config).unwrap();
    let _agent = env.spawn_agent_with_config();

    env.put("good", 1, vec![sleeper("ok", "1")]).await;
    env.wait_status("good", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    let before = env.wait_running(&[env.container_name("good", "ok")]).await;
    let inspect_caps = || {
        env.podman.run(&[
            "inspect",
            "--format",
            "{{.EffectiveCaps}}",
            &env.container_name("good", "ok"),
        ])
    };
    let default_caps = inspect_caps();
    assert!(!default_caps.contains("NET_ADMIN"), "{default_caps}");

    let mut cases: Vec<(&str, protocol::Container<'static>, &[&str])> = Vec::new();
    let mut c = sleeper("c", "1");
    c.privileged = true;
    cases.push(("privileged", c, &["privileged mode", "allow_privileged"]));
    let mut c = sleeper("c", "1");
    c.host_network = true;
    cases.push(("hostnet", c, &["hostNetwork", "allow_host_namespaces"]));
    let mut c = sleeper("c", "1");
    c.host_pid = true;
    cases.push(("hostpid", c, &["hostPID", "allow_host_namespaces"]));
    let mut c = sleeper("c", "1");
    c.host_ipc = true;
    cases.push(("hostipc", c, &["hostIPC", "allow_host_namespaces"]));
    let mut c = sleeper("c", "1");
    c.cap_add = texts(&["CHOWN", "CAP_SYS_ADMIN"]);
    cases.push((
        "sysadmin",
        c,
        &["capability SYS_ADMIN", "allowed_capabilities"],
    ));
    let mut c = sleeper("c", "1");
    c.cap_add = texts(&["ALL"]);
    cases.push(("allcaps", c, &["capability ALL", "allowed_capabilities"]));
    let mut c = sleeper("c", "1");
    c.devices = texts(&["/dev/mem"]);
    cases.push(("device", c, &["device /dev/mem", "allowed_devices"]));
    let mut c = sleeper("c", "1");
    c.volumes = BoundedVec::try_from_iter([Volume {
        name: None,
        host_path: Some(Text::owned(format!("{data}/../../etc"))),
        mount_path: Text::borrowed("/host"),
        read_only: false,
    }])
    .unwrap();
    cases.push(("escape", c, &["/../../etc", "allowed_host_paths"]));
    let mut c = sleeper("c", "1");
    c.image = Text::borrowed("localhost/Iot-Agent-Test:busybox");
    cases.push(("badimage", c, &["does not parse", "Iot-Agent-Test"]));
    let mut c = sleeper("c", "1");
    c.image = Text::owned(format!("localhost/{}:1", "a".repeat(300)));
    cases.push(("longimage", c, &["does not parse", "255"]));
    let mut c = sleeper("c", "1");
    c.image = Text::owned(format!("localhost/iot-agent-test:{}", "t".repeat(129)));
    cases.push(("longtag", c, &["does not parse", "128"]));

    for (i, (dep, c, _)) in cases.iter().enumerate() {
        env.put(dep, 10 + i as u64, vec![c.clone()]).await;
    }
    // The good deployment itself, updated to ask for privileged mode: the
    // update is refused and the running container is left alone.
    let mut c = sleeper("ok", "2");
    c.privileged = true;
    env.put("good", 2, vec![c]).await;

    for (i, (dep, _, words)) in cases.iter().enumerate() {
        let s = env
            .wait_status(dep, "Failed", |s| s.phase == Phase::Failed)
            .await;
        assert_eq!(s.revision, 10 + i as u64, "{dep}");
        for w in *words {
            assert!(
                s.message.contains(w),
                "{dep}: {:?} lacks {w:?}",
                s.message.as_str()
            );
        }
    }
    let s = env
        .wait_status("good", "Failed at 2", |s| {
            s.phase == Phase::Failed && s.revision == 2
        })
        .await;
    assert!(s.message.contains("privileged"), "{}", s.message.as_str());

    // Nothing else changed: the same container, still running, and no
    // container for any refused deployment.
    assert_eq!(env.containers(), before);

    // What the device allows does run: a Baseline capability, the one
    // extra capability the configuration allows, an allowed host path.
    let mut c = sleeper("ok", "3");
    c.cap_add = texts(&["CHOWN", "cap_net_admin"]);
    c.volumes = BoundedVec::try_from_iter([Volume {
        name: None,
        host_path: Some(Text::owned(data.clone())),
        mount_path: Text::borrowed("/data"),
        read_only: true,
    }])
    .unwrap();
    env.put("good", 3, vec![c]).await;
    env.wait_status("good", "Running at 3", |s| {
        s.phase == Phase::Healthy && s.revision == 3
    })
    .await;
    let caps = inspect_caps();
    assert!(caps.contains("NET_ADMIN"), "{caps}");
}
