//! The agent's libpod operations through podman-api 0.11, for size/RSS and
//! compatibility. Usage: with-podman-api SOCKET IMAGE DEVICE ROUNDS
use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use podman_api::Podman;
use podman_api::models::{
    ContainerMount, LinuxResources, NamedVolume, PortMapping,
};
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts,
    ContainerRestartPolicy, ContainerStopOpts, EventsOpts, ExecCreateOpts, ExecStartOpts,
    PullOpts, PullPolicy,
};

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
    let podman = Podman::unix(socket);

    report("version", &podman.version().await.map(|v| v.api_version));

    // Events of this device's containers, read on a task as the agent does.
    let ev_podman = podman.clone();
    let label = format!("io.nationtech.iot.device={device}");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_task = seen.clone();
    let events = tokio::spawn(async move {
        let opts = EventsOpts::builder()
            .stream(true)
            .filters([
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), vec![label]),
            ])
            .build();
        let mut stream = ev_podman.events(&opts);
        while let Some(e) = stream.next().await {
            match e {
                Ok(e) => seen_task.lock().unwrap().push(e.action),
                Err(e) => {
                    println!("ERR  event: {e}");
                    break;
                }
            }
        }
    });

    for round in 0..rounds {
        // Pull: a local image with policy=missing (succeeds), then an
        // unpullable one (must fail).
        let pull = PullOpts::builder()
            .reference(image.as_str())
            .policy(PullPolicy::Missing)
            .quiet(true)
            .build();
        let r: Result<Vec<_>, _> = podman.images().pull(&pull).collect::<Vec<_>>().await.into_iter().collect();
        if round == 0 {
            report("pull existing", &r);
        }
        let bad = PullOpts::builder()
            .reference("localhost:1/none/such:1")
            .policy(PullPolicy::Always)
            .quiet(true)
            .build();
        let r: Result<Vec<_>, _> = podman.images().pull(&bad).collect::<Vec<_>>().await.into_iter().collect();
        if round == 0 {
            report("pull unpullable", &r);
        }
        report("image exists", &podman.images().get(image.as_str()).exists().await);

        let name = format!("papi-{device}-{round}");
        let mut labels = HashMap::new();
        labels.insert("io.nationtech.iot.managed-by", "iot-agent".to_string());
        labels.insert("io.nationtech.iot.device", device.clone());
        labels.insert("io.nationtech.iot.deployment", "probe".to_string());
        let mut env = HashMap::new();
        env.insert("GREETING", "hello".to_string());
        let opts = ContainerCreateOpts::builder()
            .name(&name)
            .image(image.as_str())
            .command(["sh", "-c", "sleep 600"])
            .env(env)
            .labels(labels)
            .portmappings([PortMapping {
                container_port: Some(8080),
                host_port: Some(18080 + round as u16),
                protocol: Some("tcp".into()),
                host_ip: Some("127.0.0.1".into()),
                range: None,
            }])
            .mounts([ContainerMount {
                destination: Some("/data".into()),
                source: Some("/tmp".into()),
                options: Some(vec!["rbind".into(), "ro".into()]),
                _type: Some("bind".into()),
                uid_mappings: None,
                gid_mappings: None,
            }])
            .volumes([NamedVolume {
                name: Some(format!("papi-vol-{device}")),
                dest: Some("/vol".into()),
                options: Some(vec![]),
                is_anonymous: None,
            }])
            .restart_policy(ContainerRestartPolicy::No)
            .stop_timeout(2)
            // The generated models have no Default: built from JSON.
            .resource_limits(
                serde_json::from_value::<LinuxResources>(serde_json::json!({
                    "memory": { "limit": 64 << 20, "swap": 64 << 20 },
                    "cpu": { "quota": 50_000, "period": 100_000 },
                    "pids": { "limit": 64 },
                }))
                .expect("resources"),
            )
            .work_dir("/")
            .init(true)
            .build();
        let created = podman.containers().create(&opts).await;
        report("create", &created);
        let Ok(created) = created else { continue };
        let c = podman.containers().get(&created.id);
        report("start", &c.start(None).await);
        report("start again (304)", &c.start(None).await);
        let inspect = c.inspect().await;
        report(
            "inspect",
            &inspect.as_ref().map(|i| {
                let s = i.state.as_ref();
                (
                    s.and_then(|s| s.status.clone()),
                    s.and_then(|s| s.exit_code),
                    i.restart_count,
                    s.and_then(|s| s.oom_killed),
                )
            }),
        );
        let list = podman
            .containers()
            .list(
                &ContainerListOpts::builder()
                    .all(true)
                    .filter([
                        ContainerListFilter::LabelKeyVal(
                            "io.nationtech.iot.managed-by".into(),
                            "iot-agent".into(),
                        ),
                        ContainerListFilter::LabelKeyVal(
                            "io.nationtech.iot.device".into(),
                            device.clone(),
                        ),
                    ])
                    .build(),
            )
            .await;
        report("list", &list.as_ref().map(|l| l.len()));

        // Exec with attached output, then its exit code.
        let exec = c
            .create_exec(
                &ExecCreateOpts::builder()
                    .command(["sh", "-c", "echo out; echo err >&2; exit 3"])
                    .attach_stdout(true)
                    .attach_stderr(true)
                    .build(),
            )
            .await;
        match exec {
            Ok(exec) => {
                let start = ExecStartOpts::builder().build();
                let mut out = Vec::new();
                match exec.start(&start).await {
                    Ok(Some(mut m)) => {
                        while let Some(chunk) = m.next().await {
                            match chunk {
                                Ok(c) => out.extend(Vec::<u8>::from(c)),
                                Err(e) => {
                                    println!("ERR  exec chunk: {e}");
                                    break;
                                }
                            }
                        }
                        report("exec output", &Ok::<_, String>(String::from_utf8_lossy(&out).to_string()));
                    }
                    other => report("exec start", &other.map(|_| ())),
                }
                report(
                    "exec inspect",
                    &exec.inspect().await.map(|v| (v["ExitCode"].clone(), v["Running"].clone())),
                );
            }
            Err(e) => println!("ERR  exec create: {e}"),
        }

        report("rename", &c.rename(format!("{name}-old")).await);
        report(
            "stop",
            &c.stop(&ContainerStopOpts::builder().timeout(2).build()).await,
        );
        report(
            "stop again (304)",
            &c.stop(&ContainerStopOpts::builder().timeout(2).build()).await,
        );
        report(
            "remove",
            &c.delete(&ContainerDeleteOpts::builder().force(true).timeout(2).build())
                .await,
        );
        report(
            "remove gone (404)",
            &c.delete(&ContainerDeleteOpts::builder().force(true).timeout(2).build())
                .await,
        );
    }
    // Let the file event logger catch up, then end the stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    events.abort();
    let _ = events.await;
    let seen = seen.lock().unwrap();
    println!("events: {} {:?}", seen.len(), &seen[..seen.len().min(12)]);
    println!("VmHWM {} kB VmRSS {} kB", status("VmHWM:"), status("VmRSS:"));
}
