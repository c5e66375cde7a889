//! The agent's health checks against real Podman: HTTP checks reaching a
//! busybox `httpd` over its bridge address, over host networking and over
//! a published port; an HTTP check that starts failing, through the
//! monitor; TCP checks on an open and a closed port; exec checks that pass,
//! fail with their exit code, write to both streams, write a lot, and hang
//! past their timeout; and an HTTPS check against a server whose
//! certificate the agent cannot verify (`openssl s_server`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use agent_linux::health::{
    Checker, Health, Outcome, Probe, Scheme, Target, Timing, probe, resolve_address,
};
use agent_linux::podman::{EXEC_OUTPUT_TAIL, Podman, PortSpec, Runtime, RuntimeError};
use testkit::PodmanService;

/// The image the agent's other Podman tests use (`tests/common`).
const IMAGE: &str = "localhost/iot-agent-test:busybox";

/// Marks each test's containers, for [`Harness`]'s cleanup.
const TEST_LABEL: &str = "io.nationtech.iot.test.health";

/// Longest wait for a container to come up or a check to change.
const WAIT: Duration = Duration::from_secs(60);

/// Generous per-check timeout: the checks here are not about speed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A Podman service, a client on it, and this test's containers, removed
/// on drop (also when an assertion fails).
struct Harness {
    podman: PodmanService,
    client: Podman,
    run: String,
}

impl Harness {
    /// `None` when Podman is missing outside CI.
    fn start(test: &str) -> Option<Harness> {
        let podman = PodmanService::start()?;
        podman.ensure_busybox_image(IMAGE);
        let client = Podman::new(podman.socket_path());
        Some(Harness {
            podman,
            client,
            run: testkit::unique(test),
        })
    }

    /// `podman run -d` with `options`, then `command` in the busybox image;
    /// returns the container id.
    fn run(&self, options: &[&str], command: &[&str]) -> String {
        let label = format!("{TEST_LABEL}={}", self.run);
        let mut args = vec!["run", "-d", "--label", &label];
        args.extend(options);
        args.push(IMAGE);
        args.extend(command);
        self.podman.run(&args).trim().to_string()
    }

    /// The container's addresses, as the agent reads them.
    async fn ips(&self, id: &str) -> Vec<IpAddr> {
        self.client.inspect(id).await.unwrap().ip_addresses
    }

    async fn check(&self, probe: &Probe, target: &Target) -> Outcome {
        probe::run(probe, target, &self.client, TIMEOUT).await
    }

    async fn until_pass(&self, probe: &Probe, target: &Target) {
        until_pass(probe, target, &self.client).await;
    }
}

/// Runs `probe` until it passes; panics with the last failure after
/// [`WAIT`] (the server may take a moment to listen).
async fn until_pass(probe: &Probe, target: &Target, runtime: &Podman) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = probe::run(probe, target, runtime, TIMEOUT).await;
        if outcome == Outcome::Pass {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{probe:?} on {target:?} never passed: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.podman.remove_labelled(TEST_LABEL, &self.run);
    }
}

fn http(port: u16, path: &str) -> Probe {
    Probe::Http {
        scheme: Scheme::Http,
        path: path.into(),
        port,
        headers: vec![("X-Check".into(), "1".into())],
    }
}

fn exec(command: &[&str]) -> Probe {
    Probe::Exec {
        command: command.iter().map(|s| s.to_string()).collect(),
    }
}

fn failure(outcome: Outcome) -> String {
    match outcome {
        Outcome::Fail(reason) => reason,
        Outcome::Pass => panic!("expected a failure, got a pass"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A container on the default bridge, its port only declared: HTTP and TCP
/// checks dial its bridge address. Then the served file is deleted and a
/// monitor, checking every 100 ms, goes Healthy -> Unhealthy.
#[tokio::test]
async fn http_and_tcp_checks_over_the_bridge_address() {
    let Some(h) = Harness::start("health-bridge") else {
        return;
    };
    let id = h.run(&[], &["httpd", "-f", "-p", "80", "-h", "/www"]);
    let ips = h.ips(&id).await;
    assert!(
        ips.first().is_some_and(IpAddr::is_ipv4),
        "no bridge address: {ips:?}"
    );
    let probe = http(80, "/index.html");
    let target = Target::for_probe(&probe, &id, &[], false, &ips).unwrap();
    assert_eq!(target, Target::Socket(SocketAddr::new(ips[0], 80)));
    h.until_pass(&probe, &target).await;

    let reason = failure(h.check(&http(80, "/missing"), &target).await);
    assert!(reason.contains("HTTP 404"), "{reason}");
    let tls = Probe::Http {
        scheme: Scheme::Https,
        path: "/".into(),
        port: 80,
        headers: Vec::new(),
    };
    let reason = failure(h.check(&tls, &target).await);
    assert!(reason.starts_with("GET https://"), "{reason}");

    assert_eq!(
        h.check(&Probe::Tcp { port: 80 }, &target).await,
        Outcome::Pass
    );
    let closed = Probe::Tcp { port: 81 };
    let closed_target = Target::for_probe(&closed, &id, &[], false, &ips).unwrap();
    let reason = failure(h.check(&closed, &closed_target).await);
    assert!(reason.contains("refused"), "{reason}");

    let timing = Timing {
        interval: Duration::from_millis(100),
        timeout: TIMEOUT,
        start_period: Duration::ZERO,
        success_threshold: 1,
        failure_threshold: 2,
    };
    let mut checker = Checker::new(
        Rc::new(h.client.clone()),
        probe,
        target,
        timing,
        tokio::time::Instant::now(),
    );
    let change = tokio::time::timeout(WAIT, checker.next_change())
        .await
        .unwrap();
    assert_eq!((change.health, change.reason), (Health::Healthy, None));
    // The served file goes away: the check starts failing.
    h.podman
        .run(&["exec", &id, "busybox", "rm", "/www/index.html"]);
    let change = tokio::time::timeout(WAIT, checker.next_change())
        .await
        .unwrap();
    assert_eq!(change.health, Health::Unhealthy);
    let reason = change.reason.unwrap();
    assert!(reason.contains("HTTP 404"), "{reason}");
    assert_eq!(checker.monitor().streaks(), (0, 2));
}

/// A container in the host's network namespace: the check dials
/// 127.0.0.1 and the port the server listens on; inspect reports no
/// address of its own.
#[tokio::test]
async fn http_check_over_host_networking() {
    let Some(h) = Harness::start("health-host") else {
        return;
    };
    let port = testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let id = h.run(
        &["--network", "host"],
        &["httpd", "-f", "-p", &listen, "-h", "/www"],
    );
    let ips = h.ips(&id).await;
    assert_eq!(ips, Vec::<IpAddr>::new());
    let probe = http(port, "/");
    let target = Target::for_probe(&probe, &id, &[], true, &ips).unwrap();
    assert_eq!(target, Target::Socket(listen.parse().unwrap()));
    h.until_pass(&probe, &target).await;
    assert_eq!(h.check(&Probe::Tcp { port }, &target).await, Outcome::Pass);
}

/// A port published on the host: the check dials the host port, the way a
/// client on the board does, not the bridge address.
#[tokio::test]
async fn http_check_over_a_published_port() {
    let Some(h) = Harness::start("health-published") else {
        return;
    };
    let host_port = testkit::free_port();
    let publish = format!("127.0.0.1:{host_port}:80");
    let id = h.run(
        &["-p", &publish],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let ips = h.ips(&id).await;
    let ports = [PortSpec {
        container_port: 80,
        host_port: Some(host_port),
        protocol: "tcp",
        host_ip: Some("127.0.0.1".into()),
    }];
    let probe = http(80, "/");
    let target = Target::for_probe(&probe, &id, &ports, false, &ips).unwrap();
    let expected: SocketAddr = format!("127.0.0.1:{host_port}").parse().unwrap();
    assert_eq!(target, Target::Socket(expected));
    h.until_pass(&probe, &target).await;
    // No hostIP: loopback too.
    let unset = [PortSpec {
        host_ip: None,
        ..ports[0].clone()
    }];
    assert_eq!(resolve_address(80, &unset, false, &ips), Ok(expected));
}

/// Exec checks through libpod's exec API and its multiplexed stream.
#[tokio::test]
async fn exec_checks() {
    let Some(h) = Harness::start("health-exec") else {
        return;
    };
    let id = h.run(&[], &["sleep", "3600"]);
    let target = Target::Container(id.clone());

    assert_eq!(h.check(&exec(&["true"]), &target).await, Outcome::Pass);
    assert_eq!(
        failure(h.check(&exec(&["false"]), &target).await),
        "exit code 1"
    );
    // Command not found: Podman runs nothing and reports 127 with runc's
    // message on stderr.
    let reason = failure(h.check(&exec(&["no-such-command"]), &target).await);
    assert!(reason.starts_with("exit code 127: "), "{reason}");

    // Both streams, and an exit before the output is read.
    let both = strings(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    let out = h.client.exec(&id, &both, TIMEOUT).await.unwrap();
    assert_eq!(out.exit_code, 3);
    let text = String::from_utf8(out.output_tail).unwrap();
    assert!(
        text.contains("to-out\n") && text.contains("to-err\n"),
        "{text:?}"
    );
    let reason = failure(
        h.check(
            &exec(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]),
            &target,
        )
        .await,
    );
    assert!(reason.starts_with("exit code 3: "), "{reason}");

    // A chatty command: many frames, only the tail kept.
    let chatty = strings(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done",
    ]);
    let out = h.client.exec(&id, &chatty, TIMEOUT * 4).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.output_tail.len(), EXEC_OUTPUT_TAIL);
    assert!(out.output_tail.ends_with(b"line 4999\n"));

    // A hang is bounded by the timeout.
    let hang = strings(&["sleep", "60"]);
    let second = Duration::from_secs(1);
    let err = h.client.exec(&id, &hang, second).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Timeout(t) if t == second),
        "{err:?}"
    );
    assert_eq!(
        probe::run(&exec(&["sleep", "60"]), &target, &h.client, second).await,
        Outcome::Fail("timed out after 1s".into())
    );

    // A container that is not running cannot run a check.
    let label = format!("{TEST_LABEL}={}", h.run);
    let stopped = h.podman.run(&["create", "--label", &label, IMAGE, "true"]);
    let err = h
        .client
        .exec(stopped.trim(), &strings(&["true"]), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Api { .. }), "{err:?}");
}

/// Kills the child on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HTTPS against `openssl s_server -www` with a certificate from a CA the
/// agent does not know: the check passes (no verification, as Kubernetes'
/// probes); plain HTTP against it fails.
#[tokio::test]
async fn https_check_does_not_verify_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    if testkit::tls::certificates(dir.path()).is_none() {
        return;
    }
    let port = testkit::free_port();
    let _server = Server(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-tls1_3", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", "server.pem", "-key", "server-key.pem"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Not used by HTTP checks; any runtime does.
    let runtime = Podman::new(dir.path().join("no.sock"));
    let target = Target::Socket(format!("127.0.0.1:{port}").parse().unwrap());
    let https = Probe::Http {
        scheme: Scheme::Https,
        path: "/".into(),
        port,
        headers: Vec::new(),
    };
    until_pass(&https, &target, &runtime).await;
    let plain = http(port, "/");
    let outcome = probe::run(&plain, &target, &runtime, TIMEOUT).await;
    assert!(matches!(outcome, Outcome::Fail(_)), "{outcome:?}");
}
