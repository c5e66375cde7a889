//! The agent works under least-privilege device credentials (the permission
//! set of `protocol::permissions`), and the snapshot of a device with no
//! keys counts as complete.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::Phase;

/// The device's permission set, as the contract (`protocol::permissions`)
/// defines it for generated server configurations.
fn device_permissions(dev: &str) -> String {
    let list = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }}",
        list(protocol::permissions::device_publish(dev)),
        list(protocol::permissions::device_subscribe(dev)),
    )
}

/// Starts a server where `device_user` (a users entry without its
/// permissions) is confined to the device's subjects, runs the agent with
/// `credentials` (the `[nats.credentials]` body) and checks the full cycle.
async fn run_confined(
    name: &str,
    device_user: impl Fn(&str) -> String,
    credentials: impl Fn(&str) -> String,
) {
    let dev = unique(name);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    let user = device_user(&dev);
    let perms = device_permissions(&dev);
    std::fs::write(
        &conf,
        format!(
            "authorization {{\n  users = [\n    {{ user: admin, password: admin }}\n    {{ {user}, {perms} }}\n  ]\n}}\n"
        ),
    )
    .unwrap();
    // A server with authorization; the harness's own client is the admin.
    let Some(env) = Env::start_with(dev.clone(), Some(&conf), Some(("admin", "admin"))).await
    else {
        return;
    };
    let config = env.write_config();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("type = \"none\"", &credentials(&dev));
    std::fs::write(&config, text).unwrap();
    let _agent = env.spawn_agent_with_config();

    env.put("web", 1, vec![sleeper("c", "1")]).await;
    env.wait_status("web", "Healthy", |s| s.phase == Phase::Healthy)
        .await;
    assert!(
        testkit::wait_until_async(WAIT, || async {
            env.heartbeat
                .get(&env.device)
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await
    );
    env.delete("web").await;
    env.wait_status("web", "Removed", |s| s.phase == Phase::Removed)
        .await;
}

#[tokio::test]
async fn runs_under_device_permissions_with_password() {
    run_confined(
        "permpw",
        |dev| format!("user: \"{dev}\", password: devpass"),
        |dev| format!("type = \"user-password\"\nuser = \"{dev}\"\npassword = \"devpass\""),
    )
    .await;
}

#[tokio::test]
async fn runs_under_device_permissions_with_nkey() {
    let key = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("device.nk");
    std::fs::write(&seed_file, format!("{}\n", key.seed().unwrap())).unwrap();
    let public = key.public_key();
    run_confined(
        "permnk",
        move |_| format!("nkey: {public}"),
        |_| format!("type = \"nkey\"\nseed_file = \"{}\"", seed_file.display()),
    )
    .await;
}

#[tokio::test]
async fn empty_snapshot_removes_cached_and_orphaned_deployments() {
    let Some(env) = Env::start("empty").await else {
        return;
    };
    // The cache says "old" should run, but NATS has no key for this device.
    let cache = env.state_dir().join("desired");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join("old"),
        encode_desired("old", 3, vec![sleeper("c", "1")]),
    )
    .unwrap();
    let _agent = env.spawn_agent();
    env.wait_status("old", "Removed", |s| s.phase == Phase::Removed)
        .await;
    assert!(testkit::wait_until(WAIT, || env.containers().is_empty()));
    assert!(std::fs::read_dir(&cache).unwrap().next().is_none());
}
