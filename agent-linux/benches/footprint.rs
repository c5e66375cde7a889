//! Agent footprint and apply latency, against a real nats-server and Podman.
//! Prints a table; asserts nothing about timings.
//!
//! `cargo bench -p agent-linux --bench footprint` (release build of the
//! agent). Env: `BENCH_UPDATES` (default 100), `BENCH_DEPLOYMENTS` (20),
//! `BENCH_RSS_SECS` (30: RSS/PSS read after this long idle),
//! `BENCH_PODMAN_IDLE_SECS` (65: the Podman service alone, before the
//! agent starts; 0 skips it), `BENCH_EMPTY_IDLE_SECS` (65: idle CPU with no
//! deployments; 0 skips it), `BENCH_IDLE_SECS` (65: idle CPU with the deployments), each
//! window counting the agent plus the Podman service and conmon work it
//! causes (65 s: at least two 30 s heartbeats and one NATS ping),
//! `BENCH_BASELINE_RUNS` (20 `podman run -d`; 20 more run one after each
//! new deployment and `BENCH_UPDATES` more one after each replace made
//! one at a time, for ratios on the same machine state), `BENCH_PORT_UPDATES` (20
//! updates of a container with a host port), `NATS_SERVER_BIN`,
//! `BENCH_AGENT_BIN` (another build of the agent to measure, e.g. the
//! static musl one); for profiling an apply, `BENCH_AGENT_LOG` (the
//! agent's `IOT_AGENT_LOG`, default `warn`) and `BENCH_TRACE=1` (each
//! sample's put and start times, in ns since the epoch, on stderr).
//!
//! What the idle deployments run, `BENCH_CHECKS` (issue 16): unset or `0`,
//! a `sleep` container in a PodmanV0 score; `1` or `http`, busybox httpd in
//! a PodmanV1 score with an `httpGet` check (timeout 1 s) that the agent
//! runs over the container's bridge address (the port is declared, not
//! published); `exec`, the same httpd checked by an `exec` of `wget` in the
//! container (timeout 5 s: a libpod exec on a loaded machine can take more
//! than 1 s); a list (`http,exec,none`, `none` being the sleepers)
//! measures each in turn, the deployments replaced between windows, each
//! window starting once every deployment reports Healthy with every check
//! passing. `BENCH_CHECK_SECS` (10) is the
//! checks' interval. httpd logs each request (`-v`), so the table also says
//! how many checks the containers answered during the window.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use protocol::{BoundedVec, ContainerV1, HealthCheck, Phase, Text};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_kib(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time of `pid` and of its children that have ended (utime, stime,
/// cutime, cstime). The Podman service answers some calls (`/version`) by
/// spawning helpers whose time only shows in the parent's cutime/cstime.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    (11..=14)
        .map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}

/// Processes whose command line contains `needle`.
fn pids_matching(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != std::process::id() && cmdline(*p).contains(needle))
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `p` percentile of `sorted`; zero for no samples (a run with
/// `BENCH_UPDATES=0` measures the footprint only).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let idx = (last as f64 * p).round() as usize;
    sorted[idx.min(last)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let Some(env) = Env::start("bench").await else {
        return;
    };
    let deployments = env_num("BENCH_DEPLOYMENTS", 20);
    let updates = env_num("BENCH_UPDATES", 100) as usize;
    let rss_after = env_num("BENCH_RSS_SECS", 30);
    let podman_idle = env_num("BENCH_PODMAN_IDLE_SECS", 65);
    let empty_idle = env_num("BENCH_EMPTY_IDLE_SECS", 65);
    let idle = env_num("BENCH_IDLE_SECS", 65).max(rss_after);
    let baseline_runs = env_num("BENCH_BASELINE_RUNS", 20) as usize;
    // Replacements kill at once: the image's PID 1 ignores SIGTERM.
    let config = env.write_config();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("stop_timeout_secs = 1", "stop_timeout_secs = 0")
        .replace(
            "heartbeat_interval_secs = 1",
            "heartbeat_interval_secs = 30",
        );
    std::fs::write(&config, text).unwrap();
    // BENCH_AGENT_BIN measures another build, e.g. the static musl one.
    let bin = std::env::var("BENCH_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_iot-agent").to_string());
    // Idle CPU counts what the agent causes in Podman too: the API service
    // (it serves the agent's event stream and calls, and spawns helpers for
    // some of them, counted once reaped) and the containers' conmon.
    let service = pids_matching(&env.podman.socket_path().display().to_string());
    let hz = clock_ticks();
    let heartbeats = count_heartbeats(&env).await;

    // --- the Podman service alone, as a reference for the windows below
    let alone = if podman_idle > 0 {
        let w = Window::begin(None, &service, &[], &heartbeats);
        tokio::time::sleep(Duration::from_secs(podman_idle)).await;
        Some(w.end(None, &service, &[], &heartbeats))
    } else {
        None
    };

    let agent = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env(
            "IOT_AGENT_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .unwrap();
    let pid = agent.id();
    let mut agent = KillOnDrop(agent);

    // --- idle with no deployments: what the agent alone costs the board,
    // from its first heartbeat on (its start-up is not idle)
    let first = WAIT;
    let started = Instant::now();
    while heartbeats.load(Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < first, "no heartbeat within {first:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let empty = if empty_idle > 0 {
        let w = Window::begin(Some(pid), &service, &[], &heartbeats);
        tokio::time::sleep(Duration::from_secs(empty_idle)).await;
        Some(w.end(Some(pid), &service, &[], &heartbeats))
    } else {
        None
    };

    // --- idle footprint with N deployments, once per workload
    let names: Vec<String> = (0..deployments)
        .map(|i| env.container_name(&format!("d{i:02}"), "c"))
        .collect();
    let mut measured = Vec::new();
    for (revision, workload) in (1u64..).zip(workloads()) {
        for i in 0..deployments {
            workload.put(&env, &format!("d{i:02}"), revision).await;
        }
        for i in 0..deployments {
            env.wait_status(&format!("d{i:02}"), "Healthy, every check passing", |s| {
                s.revision == revision
                    && s.phase == Phase::Healthy
                    && s.containers.iter().all(|c| {
                        workload == Workload::Sleepers
                            || c.health == Some(protocol::Health::Healthy)
                    })
            })
            .await;
        }
        env.wait_running(&names).await;
        let conmons: Vec<u32> = pids_matching("conmon")
            .into_iter()
            .filter(|p| cmdline(*p).contains(&env.device))
            .collect();
        // Read from the log files, not through Podman: not to add its work.
        let logs: Vec<String> = if workload == Workload::Sleepers {
            Vec::new()
        } else {
            names
                .iter()
                .filter_map(|n| {
                    let v = env.inspect(n);
                    // Podman 4.3 names the k8s-file log under HostConfig only.
                    [&v["LogPath"], &v["HostConfig"]["LogConfig"]["Path"]]
                        .into_iter()
                        .find_map(|p| p.as_str().filter(|p| !p.is_empty()))
                        .map(String::from)
                })
                .collect()
        };
        let answered_before = answered(&logs);
        let window = Window::begin(Some(pid), &service, &conmons, &heartbeats);
        let idle_start = Instant::now();
        tokio::time::sleep(Duration::from_secs(rss_after)).await;
        let memory = Memory::of(pid);
        tokio::time::sleep(Duration::from_secs(idle).saturating_sub(idle_start.elapsed())).await;
        let busy = window.end(Some(pid), &service, &conmons, &heartbeats);
        let checks = (logs.len() == names.len() && !logs.is_empty())
            .then(|| answered(&logs).saturating_sub(answered_before));
        measured.push(Measured {
            workload,
            memory,
            idle: busy,
            conmons: conmons.len(),
            checks,
        });
    }

    // --- apply latency: KV put -> Podman "start" event of the new container
    let lat = env.container_name("lat", "c");
    env.put("lat", 0, vec![sleeper("c", "0")]).await;
    let mut all = names.clone();
    all.push(lat.clone());
    env.wait_running(&all).await;
    let filters = serde_json::json!({
        "type": ["container"], "event": ["start"],
        "label": [format!("io.nationtech.iot.device={}", env.device)],
    });
    let path = format!(
        "/v4.0.0/libpod/events?stream=true&filters={}",
        agent_linux::http::encode_query(&filters.to_string())
    );
    let mut events = agent_linux::http::open(&env.podman.socket_path(), "GET", &path, None)
        .await
        .unwrap();
    // --- baseline: plain `podman run -d` of the same image
    let podman_run = |name: &str| {
        let start = Instant::now();
        env.podman.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("io.nationtech.iot.device={}", env.device),
            IMAGE,
            "/bin/sleep",
            "3600",
        ]);
        start.elapsed()
    };
    // Updates: each replaces the running container.
    let mut samples = Vec::new();
    for rev in 1..=updates as u64 {
        let value = encode_desired("lat", rev, vec![sleeper("c", &rev.to_string())]);
        let put_at = now_ns();
        env.put_raw("lat", value).await;
        samples.push(wait_start(&mut events, "lat", rev, put_at).await);
    }
    samples.sort();
    // The same replaces one at a time, as one apply on a quiet device: each
    // put waits until the agent has removed the container the last one
    // replaced, and is followed by one `podman run -d` once it has again,
    // so that both see the same machine. The back-to-back updates above
    // also measure the removal of the previous container that the next
    // pass waits for.
    let settled = |what: &str| {
        let label = format!("{}=lat", agent_linux::podman::labels::DEPLOYMENT);
        let deadline = Instant::now() + WAIT;
        loop {
            let out = env
                .podman
                .run(&["ps", "-aq", "--filter", &format!("label={label}")]);
            if out.lines().count() == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: replaced container not removed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut one_by_one = Vec::new();
    let mut paired_replace = Vec::new();
    for i in 0..updates as u64 {
        let rev = updates as u64 + 1 + i;
        settled("before a replace");
        let value = encode_desired("lat", rev, vec![sleeper("c", &rev.to_string())]);
        let put_at = now_ns();
        env.put_raw("lat", value).await;
        one_by_one.push(wait_start(&mut events, "lat", rev, put_at).await);
        settled("after a replace");
        let name = format!("{}_paired_replace_{i}", env.device);
        paired_replace.push(podman_run(&name));
        // The blocks after this one see as many containers as before it.
        env.podman.run(&["rm", "-f", "-t", "0", &name]);
    }
    one_by_one.sort();
    paired_replace.sort();
    // Updates of a container publishing a host port: the agent stops the
    // old one before starting the new one (two cannot hold the port).
    let port = testkit::free_port();
    let with_port = |rev: u64| {
        let mut c = web("c", port);
        c.env = protocol::BoundedVec::try_from_iter([protocol::EnvVar {
            name: protocol::Text::borrowed("TAG"),
            value: protocol::Text::owned(rev.to_string()),
        }])
        .unwrap();
        c
    };
    let port_updates = env_num("BENCH_PORT_UPDATES", 20);
    let mut ported = Vec::new();
    for rev in 0..=port_updates {
        let value = encode_desired("port", rev, vec![with_port(rev)]);
        let put_at = now_ns();
        env.put_raw("port", value).await;
        let took = wait_start(&mut events, "port", rev, put_at).await;
        // Revision 0 is the first create, not a replacement.
        if rev > 0 {
            ported.push(took);
        }
    }
    ported.sort();
    // New deployments: create and start, nothing to replace; each followed
    // by one `podman run -d`, so that both see the same machine (the load
    // of a shared machine drifts between the blocks of a run).
    let mut fresh = Vec::new();
    let mut paired = Vec::new();
    for i in 0..20u64 {
        let d = format!("new{i:02}");
        let value = encode_desired(&d, 1, vec![sleeper("c", "1")]);
        let put_at = now_ns();
        env.put_raw(&d, value).await;
        fresh.push(wait_start(&mut events, &d, 1, put_at).await);
        paired.push(podman_run(&format!("{}_paired_{i}", env.device)));
    }
    fresh.sort();
    paired.sort();

    let mut baseline = Vec::new();
    for i in 0..baseline_runs {
        baseline.push(podman_run(&format!("{}_baseline_{i}", env.device)));
    }
    baseline.sort();
    agent.0.kill().ok();
    agent.0.wait().ok();

    println!(
        "\n## iot-agent footprint and latency ({})",
        env.nats.version()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| agent binary | {bin} |");
    println!("| deployments | {deployments} |");
    if let Some(alone) = &alone {
        println!(
            "| Podman API service alone, no client ({} process(es), incl. reaped children), {:.0} s | {} |",
            service.len(),
            alone.wall,
            alone.cpu(alone.service, hz)
        );
    }
    if let Some(empty) = &empty {
        print_idle("no deployments", empty, 0, hz);
    }
    for m in &measured {
        let label = format!("with the deployments{}", m.workload.describe(check_secs()));
        let Memory {
            rss,
            hwm,
            pss,
            anon,
            file,
            threads,
        } = m.memory;
        println!(
            "| {label}: VmRSS after {rss_after} s idle | {rss} KiB ({:.2} MiB) |",
            rss as f64 / 1024.0
        );
        println!("| {label}: of which anonymous / file-backed | {anon} KiB / {file} KiB |");
        println!(
            "| {label}: VmHWM (peak RSS since the agent started) | {hwm} KiB ({:.2} MiB) |",
            hwm as f64 / 1024.0
        );
        println!("| {label}: Pss after {rss_after} s idle | {pss} KiB |");
        println!("| {label}: threads | {threads} |");
        if let Some(n) = m.checks {
            println!(
                "| {label}: checks the containers answered during the window | {n} (one per container every {} s: ~{:.0}) |",
                check_secs(),
                deployments as f64 * m.idle.wall / check_secs() as f64
            );
        }
        print_idle(&label, &m.idle, m.conmons, hz);
    }
    println!(
        "| KV put -> container start (Podman event time), {} updates (replace) | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms |",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
    if !ported.is_empty() {
        println!(
            "| KV put -> container start, {} updates (replace) of a container with a host port (old stopped first) | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms |",
            ported.len(),
            percentile(&ported, 0.5).as_secs_f64() * 1e3,
            percentile(&ported, 0.99).as_secs_f64() * 1e3,
            ported.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!(
        "| KV put -> container start (Podman event time), {} new deployments | p50 {:.0} ms, p99 {:.0} ms |",
        fresh.len(),
        percentile(&fresh, 0.5).as_secs_f64() * 1e3,
        percentile(&fresh, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "| baseline `podman run -d` (same image, same run), {} runs | p50 {:.0} ms, p99 {:.0} ms |",
        baseline.len(),
        percentile(&baseline, 0.5).as_secs_f64() * 1e3,
        percentile(&baseline, 0.99).as_secs_f64() * 1e3
    );
    let p50 = |v: &[Duration]| percentile(v, 0.5).as_secs_f64();
    println!(
        "| baseline `podman run -d`, {} runs, each right after a new deployment | p50 {:.0} ms, p99 {:.0} ms |",
        paired.len(),
        p50(&paired) * 1e3,
        percentile(&paired, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| KV put -> container start, {} updates (replace) one at a time, each after the last replaced container is gone | p50 {:.0} ms, p99 {:.0} ms |",
        one_by_one.len(),
        p50(&one_by_one) * 1e3,
        percentile(&one_by_one, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| baseline `podman run -d`, {} runs, each right after one of those replaces | p50 {:.0} ms, p99 {:.0} ms |",
        paired_replace.len(),
        p50(&paired_replace) * 1e3,
        percentile(&paired_replace, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| p50 ratio to `podman run -d`: new deployment / the runs after each; replace one at a time / the runs after each; back-to-back replace / the {} runs | {:.2} / {:.2} / {:.2} |",
        baseline.len(),
        p50(&fresh) / p50(&paired),
        p50(&one_by_one) / p50(&paired_replace),
        p50(&samples) / p50(&baseline)
    );
}

/// What the idle deployments run (`BENCH_CHECKS`, see the header).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Sleepers,
    HttpChecked,
    ExecChecked,
}

fn workloads() -> Vec<Workload> {
    let spec = std::env::var("BENCH_CHECKS").unwrap_or_default();
    if spec.is_empty() || spec == "0" {
        return vec![Workload::Sleepers];
    }
    spec.split(',')
        .map(|w| match w.trim() {
            "none" => Workload::Sleepers,
            "1" | "http" => Workload::HttpChecked,
            "exec" => Workload::ExecChecked,
            other => panic!("BENCH_CHECKS: {other:?} is none of 0, 1, none, http, exec"),
        })
        .collect()
}

fn check_secs() -> u32 {
    env_num("BENCH_CHECK_SECS", 10) as u32
}

fn texts(v: &[&'static str]) -> BoundedVec<Text<'static>, { protocol::limits::MAX_ARGS }> {
    BoundedVec::try_from_iter(v.iter().map(|s| Text::borrowed(s))).unwrap()
}

impl Workload {
    async fn put(self, env: &Env, deployment: &str, revision: u64) {
        let check = match self {
            Workload::Sleepers => {
                env.put(deployment, revision, vec![sleeper("c", "1")]).await;
                return;
            }
            Workload::HttpChecked => HealthCheck::http_get(80),
            Workload::ExecChecked => {
                let mut check = HealthCheck::exec(texts(&[
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    "http://127.0.0.1/",
                ]));
                check.timeout_seconds = 5;
                check
            }
        };
        // busybox httpd on port 80, declared and not published: the agent
        // checks it at the container's bridge address. `-v` logs requests.
        let mut c = ContainerV1::from_v0(web("c", 0));
        c.args = Some(texts(&["-f", "-v", "-p", "80", "-h", "/www"]));
        c.ports = BoundedVec::try_from_iter([protocol::Port {
            container_port: 80,
            host_port: None,
            protocol: protocol::PortProtocol::Tcp,
            host_ip: None,
        }])
        .unwrap();
        let mut check = check;
        check.interval_seconds = check_secs();
        c.health_check = Some(check);
        env.put_v1(deployment, revision, vec![c]).await;
    }

    fn describe(self, every: u32) -> String {
        match self {
            Workload::Sleepers => String::new(),
            Workload::HttpChecked => format!(" (httpGet check every {every} s, bridge IP)"),
            Workload::ExecChecked => format!(" (exec check every {every} s)"),
        }
    }
}

/// Requests httpd logged (`-v`: one `response:` line each) in `logs`.
fn answered(logs: &[String]) -> u64 {
    logs.iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .matches("response:")
                .count() as u64
        })
        .sum()
}

/// The agent's memory, in KiB (threads: a count).
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    hwm: u64,
    pss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> Memory {
        Memory {
            rss: proc_kib(pid, "status", "VmRSS:").unwrap_or(0),
            hwm: proc_kib(pid, "status", "VmHWM:").unwrap_or(0),
            pss: proc_kib(pid, "smaps_rollup", "Pss:").unwrap_or(0),
            anon: proc_kib(pid, "status", "RssAnon:").unwrap_or(0),
            file: proc_kib(pid, "status", "RssFile:").unwrap_or(0),
            threads: proc_kib(pid, "status", "Threads:").unwrap_or(0),
        }
    }
}

/// One idle window with the deployments of one workload.
struct Measured {
    workload: Workload,
    memory: Memory,
    idle: Idle,
    conmons: usize,
    /// `None` when the workload has no check (or its logs were not found).
    checks: Option<u64>,
}

fn print_idle(label: &str, w: &Idle, conmons: usize, hz: f64) {
    println!(
        "| idle {label}, {:.0} s ({} heartbeat(s)): agent CPU | {} |",
        w.wall,
        w.heartbeats,
        w.cpu(w.agent, hz)
    );
    println!(
        "| idle {label}: Podman API service CPU meanwhile, incl. reaped children | {} |",
        w.cpu(w.service, hz)
    );
    if conmons > 0 {
        println!(
            "| idle {label}: conmon CPU meanwhile ({conmons} process(es), one per container) | {} |",
            w.cpu(w.conmon, hz)
        );
    }
    println!(
        "| idle {label}: total, agent + Podman service + conmon | {} |",
        w.cpu(w.agent + w.service + w.conmon, hz)
    );
}

/// CPU ticks of the agent, the Podman API service and conmon at the
/// start of an idle window.
struct Window {
    at: Instant,
    ticks: [u64; 3],
    heartbeats: u64,
}

/// What one idle window cost.
struct Idle {
    wall: f64,
    agent: u64,
    service: u64,
    conmon: u64,
    heartbeats: u64,
}

fn ticks_of(agent: Option<u32>, service: &[u32], conmons: &[u32]) -> [u64; 3] {
    let sum = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    [
        agent.map(cpu_ticks).unwrap_or(0),
        sum(service),
        sum(conmons),
    ]
}

impl Window {
    fn begin(agent: Option<u32>, service: &[u32], conmons: &[u32], hb: &AtomicU64) -> Window {
        Window {
            at: Instant::now(),
            ticks: ticks_of(agent, service, conmons),
            heartbeats: hb.load(Ordering::Relaxed),
        }
    }

    fn end(self, agent: Option<u32>, service: &[u32], conmons: &[u32], hb: &AtomicU64) -> Idle {
        let now = ticks_of(agent, service, conmons);
        let d = |i: usize| now[i].saturating_sub(self.ticks[i]);
        Idle {
            wall: self.at.elapsed().as_secs_f64(),
            agent: d(0),
            service: d(1),
            conmon: d(2),
            heartbeats: hb.load(Ordering::Relaxed) - self.heartbeats,
        }
    }
}

impl Idle {
    /// `ticks` as a share of one core over the window.
    fn cpu(&self, ticks: u64, hz: f64) -> String {
        format!(
            "{:.2} % of a core ({ticks} ticks)",
            ticks as f64 / hz / self.wall * 100.0
        )
    }
}

/// Counts the heartbeats the device publishes from now on.
async fn count_heartbeats(env: &Env) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let mut watch = env.heartbeat.watch(&env.device).await.unwrap();
    let seen = count.clone();
    tokio::spawn(async move {
        while let Some(Ok(_)) = watch.next().await {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    count
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Waits for the start event of `deployment` at `revision`; the time from
/// `put_at` to the event's own timestamp (Podman's file event logger is
/// polled, so events reach readers up to ~250 ms after they happen).
async fn wait_start(
    events: &mut agent_linux::http::StreamingResponse,
    deployment: &str,
    revision: u64,
    put_at: i128,
) -> Duration {
    loop {
        let line = tokio::time::timeout(WAIT, events.next_line())
            .await
            .expect("no start event within 60 s")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let attrs = &v["Actor"]["Attributes"];
        let rev = attrs["io.nationtech.iot.revision"].as_str();
        if attrs["io.nationtech.iot.deployment"] == deployment
            && rev.and_then(|s| s.parse::<u64>().ok()) == Some(revision)
        {
            let at = v["timeNano"]
                .as_i64()
                .map(i128::from)
                .unwrap_or_else(now_ns);
            if std::env::var_os("BENCH_TRACE").is_some() {
                eprintln!(
                    "sample {deployment} rev {revision}: put at {put_at} ns, started at {at} ns"
                );
            }
            return Duration::from_nanos((at - put_at).max(0) as u64);
        }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
