//! Status follows Podman events: a container that exits after it started
//! is reported without any change to the desired state.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::{BoundedVec, ContainerState, Phase, RestartPolicy, Text};

fn script(name: &str, sh: &str) -> protocol::Container<'static> {
    let mut c = sleeper(name, "1");
    c.command = Some(BoundedVec::try_from_iter([Text::borrowed("/bin/sh")]).unwrap());
    c.args = Some(
        BoundedVec::try_from_iter([Text::borrowed("-c"), Text::owned(sh.to_string())]).unwrap(),
    );
    c.restart_policy = RestartPolicy::Never;
    c
}

#[tokio::test]
async fn exits_are_reported_from_events() {
    let Some(env) = Env::start("events").await else {
        return;
    };
    let _agent = env.spawn_agent();
    env.put("crash", 1, vec![script("c", "sleep 2; exit 3")])
        .await;
    env.put("job", 1, vec![script("j", "sleep 2; exit 0")])
        .await;

    // Both start, then exit on their own; the died events update status.
    let s = env
        .wait_status("crash", "Failed with exit 3", |s| {
            s.phase == Phase::Failed && s.containers.first().is_some_and(|c| c.exit_code == Some(3))
        })
        .await;
    assert_eq!(s.containers[0].state, ContainerState::Exited);
    assert!(
        s.message.contains("exited with code 3"),
        "{}",
        s.message.as_str()
    );
    let s = env
        .wait_status("job", "Completed", |s| s.phase == Phase::Completed)
        .await;
    assert_eq!(s.containers[0].exit_code, Some(0));
}
