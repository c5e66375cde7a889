//! Agent footprint and apply latency, against a real nats-server and Podman.
//! Prints a table; asserts nothing about timings.
//!
//! `cargo bench -p agent-linux --bench footprint` (release build of the
//! agent). Env: `BENCH_UPDATES` (default 100), `BENCH_DEPLOYMENTS` (20),
//! `BENCH_RSS_SECS` (30: RSS/PSS read after this long idle),
//! `BENCH_IDLE_SECS` (60: idle CPU window, agent plus the Podman service
//! and conmon work it causes), `BENCH_BASELINE_RUNS` (20 `podman run -d`),
//! `BENCH_PORT_UPDATES` (20 updates of a container with a host port),
//! `NATS_SERVER_BIN`, `BENCH_AGENT_BIN` (another build of the agent to
//! measure, e.g. the static musl one).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use protocol::Phase;

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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
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
    let idle = env_num("BENCH_IDLE_SECS", 60).max(rss_after);
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
    let agent = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env("IOT_AGENT_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = agent.id();
    let mut agent = KillOnDrop(agent);

    // --- idle footprint with N deployments
    let mut names = Vec::new();
    for i in 0..deployments {
        let d = format!("d{i:02}");
        env.put(&d, 1, vec![sleeper("c", "1")]).await;
        names.push(env.container_name(&d, "c"));
    }
    for i in 0..deployments {
        env.wait_status(&format!("d{i:02}"), "Running", |s| {
            s.phase == Phase::Running
        })
        .await;
    }
    env.wait_running(&names).await;
    // Idle CPU counts what the agent causes in Podman too: the API service
    // (it serves the agent's event stream) and the containers' conmon.
    let service = pids_matching(&env.podman.socket_path().display().to_string());
    let conmons: Vec<u32> = pids_matching("conmon")
        .into_iter()
        .filter(|p| cmdline(*p).contains(&env.device))
        .collect();
    let ticks_of = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let (a0, s0, c0) = (cpu_ticks(pid), ticks_of(&service), ticks_of(&conmons));
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(rss_after)).await;
    let rss = proc_kib(pid, "status", "VmRSS:").unwrap_or(0);
    let hwm = proc_kib(pid, "status", "VmHWM:").unwrap_or(0);
    let pss = proc_kib(pid, "smaps_rollup", "Pss:").unwrap_or(0);
    let anon = proc_kib(pid, "status", "RssAnon:").unwrap_or(0);
    let file = proc_kib(pid, "status", "RssFile:").unwrap_or(0);
    let threads = proc_kib(pid, "status", "Threads:").unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(idle).saturating_sub(idle_start.elapsed())).await;
    let idle_wall = idle_start.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - a0;
    let service_ticks = ticks_of(&service).saturating_sub(s0);
    let conmon_ticks = ticks_of(&conmons).saturating_sub(c0);
    let hz = clock_ticks();
    let pct = |t: u64| t as f64 / hz / idle_wall * 100.0;
    let cpu_pct = pct(ticks);

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
    // Updates: each replaces the running container.
    let mut samples = Vec::new();
    for rev in 1..=updates as u64 {
        let value = encode_desired("lat", rev, vec![sleeper("c", &rev.to_string())]);
        let put_at = now_ns();
        env.put_raw("lat", value).await;
        samples.push(wait_start(&mut events, "lat", rev, put_at).await);
    }
    samples.sort();
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
    // New deployments: create and start, nothing to replace.
    let mut fresh = Vec::new();
    for i in 0..20u64 {
        let d = format!("new{i:02}");
        let value = encode_desired(&d, 1, vec![sleeper("c", "1")]);
        let put_at = now_ns();
        env.put_raw(&d, value).await;
        fresh.push(wait_start(&mut events, &d, 1, put_at).await);
    }
    fresh.sort();

    // --- baseline: plain `podman run -d` of the same image
    let mut baseline = Vec::new();
    for i in 0..baseline_runs {
        let name = format!("{}_baseline_{i}", env.device);
        let start = Instant::now();
        env.podman.run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("io.nationtech.iot.device={}", env.device),
            IMAGE,
            "/bin/sleep",
            "3600",
        ]);
        baseline.push(start.elapsed());
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
    println!(
        "| VmRSS after {rss_after} s idle | {rss} KiB ({:.2} MiB) |",
        rss as f64 / 1024.0
    );
    println!("| of which anonymous / file-backed | {anon} KiB / {file} KiB |");
    println!("| VmHWM (peak RSS) | {hwm} KiB |");
    println!("| Pss | {pss} KiB |");
    println!("| threads | {threads} |");
    println!("| Pss / VmRSS read after | {rss_after} s idle with {deployments} deployments |");
    println!(
        "| agent CPU while idle | {cpu_pct:.2} % of a core ({ticks} ticks in {idle_wall:.0} s) |"
    );
    println!(
        "| Podman API service CPU meanwhile ({} process(es)) | {:.2} % of a core ({service_ticks} ticks) |",
        service.len(),
        pct(service_ticks)
    );
    println!(
        "| conmon CPU meanwhile ({} process(es), one per container) | {:.2} % of a core ({conmon_ticks} ticks) |",
        conmons.len(),
        pct(conmon_ticks)
    );
    println!(
        "| idle total: agent + Podman service + conmon | {:.2} % of a core |",
        pct(ticks + service_ticks + conmon_ticks)
    );
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
