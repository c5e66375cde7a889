//! The same operations through the agent's own libpod client (a snapshot of
//! agent-linux/src/http.rs and podman.rs). Usage: SOCKET IMAGE DEVICE ROUNDS
#![allow(dead_code)]
#[path = "../../../../src/http.rs"]
mod http;
#[path = "../../../../src/podman.rs"]
mod podman;

use std::collections::BTreeMap;
use std::time::Duration;

use podman::{CreateSpec, MountSpec, PortSpec, RunOptions, Runtime};

fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .unwrap_or_default()
}

fn report<T: std::fmt::Debug, E: std::fmt::Display>(op: &str, r: &Result<T, E>) {
    match r {
        Ok(v) => {
            let s = format!("{v:?}");
            println!("OK   {op}: {}", &s[..s.len().min(160)]);
        }
        Err(e) => println!("ERR  {op}: {e}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (socket, image, device) = (&args[1], &args[2], &args[3]);
    let rounds: u32 = args[4].parse().unwrap_or(1);
    let p = podman::Podman::new(socket.into());
    report("version", &p.version().await);

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_task = seen.clone();
    let ev = p.clone();
    let dev = device.clone();
    let events = tokio::spawn(async move {
        match ev.events(&dev).await {
            Ok(mut s) => loop {
                match s.next().await {
                    Ok(Some(e)) => seen_task.lock().unwrap().push(e.action),
                    Ok(None) => break,
                    Err(e) => {
                        println!("ERR  event: {e}");
                        break;
                    }
                }
            },
            Err(e) => println!("ERR  events: {e}"),
        }
    });

    for round in 0..rounds {
        let r = p.pull("localhost:1/none/such:1").await;
        if round == 0 {
            report("pull unpullable", &r);
        }
        report("image exists", &p.image_exists(image).await);
        let name = format!("own-{device}-{round}");
        let mut labels = BTreeMap::new();
        labels.insert("io.nationtech.iot.managed-by".to_string(), "iot-agent".to_string());
        labels.insert("io.nationtech.iot.device".to_string(), device.clone());
        labels.insert("io.nationtech.iot.deployment".to_string(), "probe".to_string());
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hello".to_string());
        let spec = CreateSpec {
            name: name.clone(),
            image: image.clone(),
            entrypoint: None,
            command: Some(vec!["sh".into(), "-c".into(), "sleep 600".into()]),
            env,
            ports: vec![PortSpec {
                container_port: 8080,
                host_port: Some(18180 + round as u16),
                protocol: "tcp",
                host_ip: Some("127.0.0.1".into()),
            }],
            mounts: vec![
                MountSpec::Bind { source: "/tmp".into(), dest: "/data".into(), read_only: true },
                MountSpec::Named { name: format!("own-vol-{device}"), dest: "/vol".into(), read_only: false },
            ],
            restart_policy: "no",
            labels,
            stop_timeout_secs: 2,
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            cap_add: vec![],
            devices: vec![],
            run: RunOptions {
                memory_limit: Some(64 << 20),
                cpu_millis: Some(500),
                cpu_weight: None,
                pids_limit: Some(64),
                user: None,
                work_dir: Some("/".into()),
                read_only_root: false,
                init: true,
            },
        };
        let id = p.create(&spec).await;
        report("create", &id);
        let Ok(id) = id else { continue };
        report("start", &p.start(&id).await);
        report("start again (304)", &p.start(&id).await);
        report("inspect", &p.inspect(&id).await);
        report("list", &p.list_managed(device).await.map(|l| l.len()));
        let cmd: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"].iter().map(|s| s.to_string()).collect();
        report(
            "exec",
            &p.exec(&id, &cmd, Duration::from_secs(10)).await.map(|o| (o.exit_code, String::from_utf8_lossy(&o.output_tail).to_string())),
        );
        report("rename", &p.rename(&id, &format!("{name}-old")).await);
        report("stop", &p.stop(&id, 2).await);
        report("stop again (304)", &p.stop(&id, 2).await);
        report("remove", &p.remove(&id, 2).await);
        report("remove gone (404)", &p.remove(&id, 2).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    events.abort();
    let _ = events.await;
    let seen = seen.lock().unwrap();
    println!("events: {} {:?}", seen.len(), &seen[..seen.len().min(12)]);
    println!("VmHWM {} kB VmRSS {} kB", status("VmHWM:"), status("VmRSS:"));
}
