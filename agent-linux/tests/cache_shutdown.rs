//! The on-device cache is written off the agent's thread: after a burst of
//! puts and deletes and a SIGTERM straight after the last one is seen, the
//! cache holds exactly the last value of every deployment (the writes were
//! flushed at shutdown, in order), and what the snapshot lacked is gone.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Env, WAIT};

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

fn on_disk(state_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(state_dir.join("desired"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sigterm_after_a_burst_leaves_the_last_value_of_each_deployment_cached() {
    let Some(env) = Env::start("cacheflush").await else {
        return;
    };
    // Cached from an earlier life, deleted while the agent was away.
    let cache_dir = env.state_dir().join("desired");
    std::fs::create_dir_all(&cache_dir).unwrap();
    std::fs::write(cache_dir.join("stale"), b"old").unwrap();
    env.put_raw("kept", b"kept-1".to_vec()).await;

    let config = env.write_config();
    let log = env.dir.path().join("agent.log");
    let mut agent = env.spawn_agent_logged(&config, &log);
    assert!(
        testkit::wait_until(WAIT, || log_has(&log, "desired state in sync")),
        "the agent never finished its snapshot"
    );

    // Values are opaque to the cache: undecodable ones keep Podman out of it.
    let ops: &[(&str, Option<&[u8]>)] = &[
        ("a", Some(b"a-1")),
        ("b", Some(b"b-1")),
        ("a", Some(b"a-2")),
        ("c", Some(b"c-1")),
        ("b", None),
        ("a", None),
        ("c", None),
        ("b", Some(b"b-3")),
        ("kept", Some(b"kept-2")),
        ("c", Some(b"c-3")),
        ("d", Some(b"d-1")),
        ("c", Some(b"c-4")),
        ("d", None),
        ("d", Some(b"d-2")),
        ("d", Some(b"d-3")),
        ("zz-end", Some(b"end")),
    ];
    for (deployment, op) in ops {
        match op {
            Some(v) => env.put_raw(deployment, v.to_vec()).await,
            None => env.delete(deployment).await,
        }
    }
    // The watch handles events in stream order: once the last is seen, all
    // earlier ones were handed to the cache writer.
    assert!(
        testkit::wait_until(WAIT, || log_has(&log, "zz-end: put")),
        "the agent never saw the last put"
    );
    let exit = agent.terminate();
    assert!(exit.is_some(), "the agent did not exit on SIGTERM");
    assert!(exit.unwrap().success(), "agent exit: {exit:?}");
    assert!(log_has(&log, "shutting down"));

    let mut want = BTreeMap::new();
    for (deployment, op) in ops {
        match op {
            Some(v) => want.insert(deployment.to_string(), v.to_vec()),
            None => want.remove(*deployment),
        };
    }
    assert_eq!(
        on_disk(&env.state_dir()),
        want,
        "agent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
