//! The probes' common skeleton (tokio current_thread, a spawned task, a
//! timer, serde_json, /proc/self/status), doing nothing with Podman.
use std::time::Duration;

fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = args.get(1).cloned().unwrap_or_else(|| "{\"a\":[1,2,3]}".into());
    let task = tokio::spawn(async move {
        let v: serde_json::Value = serde_json::from_str(&input).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(100)).await;
        v.to_string()
    });
    println!("{}", task.await.unwrap_or_default());
    println!("VmHWM {} kB VmRSS {} kB", status("VmHWM:"), status("VmRSS:"));
}
