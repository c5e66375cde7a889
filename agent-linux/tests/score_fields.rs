//! What Podman really does with each score field, read back from the
//! container the agent made: the documented meaning of a field (protocol's
//! score types) against `podman inspect`. Real nats-server, real Podman,
//! the real agent binary.
//!
//! The gap that started it: a port without `hostPort` is documented as
//! "publishes nothing on the host", but a libpod port mapping without a
//! host port gets a random one on every address.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use protocol::{BoundedMap, BoundedVec, Phase, Port, PortProtocol, RestartPolicy, Text, Volume};
use serde_json::Value;

fn inspect(env: &Env, name: &str) -> Value {
    let out = env.podman.run(&["container", "inspect", name]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// `NetworkSettings.Ports` as (container port, [(host ip, host port)]).
fn published(c: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<_> = c["NetworkSettings"]["Ports"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(port, bindings)| {
                    let b = bindings
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|b| {
                                    let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
                                    (s("HostIp"), s("HostPort"))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (port.clone(), b)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_score_field_means_on_podman_what_the_contract_says() {
    let Some(env) = Env::start("fields").await else {
        return;
    };
    let _agent = env.spawn_agent();
    let host_port = testkit::free_port();
    let mut c = web("web", host_port);
    c.ports = BoundedVec::try_from_iter([
        // Published on loopback only.
        Port {
            container_port: 80,
            host_port: Some(host_port),
            protocol: PortProtocol::Tcp,
            host_ip: Some(Text::borrowed("127.0.0.1")),
        },
        // Declared, published nowhere, even with a hostIP.
        Port {
            container_port: 8080,
            host_port: None,
            protocol: PortProtocol::Tcp,
            host_ip: Some(Text::borrowed("127.0.0.1")),
        },
        Port {
            container_port: 5353,
            host_port: None,
            protocol: PortProtocol::Udp,
            host_ip: None,
        },
        // The same port over TCP too (as DNS does): both are declared.
        Port {
            container_port: 5353,
            host_port: None,
            protocol: PortProtocol::Tcp,
            host_ip: None,
        },
    ])
    .unwrap();
    c.restart_policy = RestartPolicy::OnFailure;
    let short = unique("vol");
    c.volumes = BoundedVec::try_from_iter([Volume {
        name: Some(Text::owned(short.clone())),
        host_path: None,
        mount_path: Text::borrowed("/data"),
        read_only: true,
    }])
    .unwrap();
    let mut labels = BoundedMap::new();
    labels
        .insert(Text::borrowed("team"), Text::borrowed("edge"))
        .unwrap();
    c.labels = labels;
    env.put("fields", 1, vec![c]).await;
    env.wait_status("fields", "Running at 1", |s| {
        s.phase == Phase::Healthy && s.revision == 1
    })
    .await;

    let name = env.container_name("fields", "web");
    let c = inspect(&env, &name);
    let s = |v: &str| v.to_string();
    assert_eq!(
        published(&c),
        vec![
            (s("5353/tcp"), vec![]),
            (s("5353/udp"), vec![]),
            (s("80/tcp"), vec![(s("127.0.0.1"), host_port.to_string())]),
            (s("8080/tcp"), vec![]),
        ],
        "only the port with a hostPort is published, on its hostIP; the others are declared: {}",
        c["NetworkSettings"]["Ports"]
    );
    assert!(
        http_get(host_port).is_some_and(|b| b.contains("200")),
        "the published port answers"
    );
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(c["Config"]["Labels"]["team"], "edge");
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "TAG=web"),
        "env: {}",
        c["Config"]["Env"]
    );
    let mounts = c["Mounts"].as_array().unwrap();
    let data = mounts
        .iter()
        .find(|m| m["Destination"] == "/data")
        .unwrap_or_else(|| panic!("no /data mount: {mounts:?}"));
    // The agent scopes volume names to the device.
    let volume = data["Name"].as_str().unwrap().to_string();
    assert_eq!(volume, format!("{}_{}", env.device, short));
    assert_eq!(data["RW"], false, "readOnly: {data}");
    assert_eq!(c["HostConfig"]["Privileged"], false);
    assert_eq!(c["HostConfig"]["NetworkMode"], "bridge");

    env.delete("fields").await;
    env.wait_running(&[]).await;
    let _ = env
        .podman
        .command()
        .args(["volume", "rm", "-f", &volume])
        .output();
}
