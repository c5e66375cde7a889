//! The cluster-less CLI (`init`, `apply -f`, `status`, `devices`, `delete -f`) against
//! a real nats-server, and its agreement with the controller.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use operator::crd::revision_string;
use operator::status::StatusCache;
use operator::testing::MockApiServer;
use operator::{Context, ControllerConfig, reconcile};
use protocol::Phase;

fn hello() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/hello.yaml"
    ))
}

#[tokio::test]
async fn init_creates_the_buckets_with_their_settings() {
    let Some(server) = testkit::NatsServer::start() else {
        return;
    };
    let out = ok(&cli(&server.url(), None, &["init"]));
    assert_eq!(
        out.trim(),
        "created buckets: desired-state, device-status, device-heartbeat"
    );
    assert_eq!(
        ok(&cli(&server.url(), None, &["init"])).trim(),
        "all buckets exist"
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for spec in protocol::buckets::ALL {
        let mut s = js.get_stream(format!("KV_{}", spec.name)).await.unwrap();
        let c = s.info().await.unwrap().config.clone();
        assert_eq!(c.allow_rollup, spec.allow_rollup, "{}", spec.name);
        assert_eq!(c.deny_purge, spec.deny_purge, "{}", spec.name);
        assert_eq!(c.max_messages_per_subject, spec.history, "{}", spec.name);
        assert_eq!(c.max_message_size, spec.max_value_size, "{}", spec.name);
        assert!(c.allow_direct && c.deny_delete);
    }
}

#[tokio::test]
async fn apply_status_delete_round_trip() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let file = hello().to_str().unwrap();
    let d = operator::manifest::read(hello()).unwrap().remove(0);
    let plan = operator::plan(&d).unwrap();
    let hex = revision_string(plan.revision);

    let out = ok(&cli(&url, None, &["apply", "-f", file]));
    assert_eq!(
        out.trim(),
        format!("default/hello-web: revision {hex}: 1 written, 0 unchanged, 0 removed")
    );
    let rec = desired(&env.nats, "demo-device", "hello-web")
        .await
        .unwrap();
    assert_eq!(
        rec.value, plan.value,
        "the CLI writes the controller's bytes"
    );
    assert_eq!(rec.owner.as_deref(), Some("default/hello-web"));

    let seq = desired_seq(&env.client).await;
    let out = ok(&cli(&url, None, &["apply", "-f", file]));
    assert!(out.contains("0 written, 1 unchanged"), "{out}");
    assert_eq!(
        desired_seq(&env.client).await,
        seq,
        "no-op apply writes nothing"
    );

    // The controller, given the same manifest, finds nothing to write.
    let (client, api) = MockApiServer::start();
    let ctx = Arc::new(Context::new(
        client,
        env.nats.clone(),
        StatusCache::detached(Duration::from_secs(90)),
        ControllerConfig::default(),
    ));
    let mut same = with_finalizer(d.clone());
    same.metadata.uid = Some("u".into());
    api.insert(&same);
    reconcile(Arc::new(same), ctx).await.unwrap();
    assert_eq!(desired_seq(&env.client).await, seq);

    let out = ok(&cli(&url, None, &["status"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("DEPLOYMENT"), "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..9],
        [
            "hello-web",
            "demo-device",
            hex.as_str(),
            "-",
            "Unknown",
            "-",
            "-",
            "Unknown",
            "never"
        ],
        "no heartbeat: phase Unknown, no health or restarts, not online"
    );

    put_heartbeat(&env.client, "demo-device").await;
    put_status(
        &env.client,
        "demo-device",
        "hello-web",
        plan.revision,
        Phase::Running,
        "all good",
    )
    .await;
    let out = ok(&cli(&url, None, &["status", "hello-web"]));
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..8],
        [
            "hello-web",
            "demo-device",
            hex.as_str(),
            hex.as_str(),
            "Running",
            "-",
            "-",
            "True"
        ],
        "a fresh heartbeat: online"
    );
    assert_eq!(row[row.len() - 2..], ["all", "good"]);
    let out = ok(&cli(&url, None, &["status", "other"]));
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    let out = ok(&cli(&url, None, &["delete", "-f", file]));
    assert_eq!(out.trim(), "default/hello-web: removed from 1 device(s)");
    assert!(
        desired(&env.nats, "demo-device", "hello-web")
            .await
            .unwrap()
            .deleted
    );
    let out = ok(&cli(&url, None, &["delete", "-f", file]));
    assert_eq!(out.trim(), "default/hello-web: removed from 0 device(s)");
}

#[tokio::test]
async fn bad_manifests_write_nothing_and_say_why() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let head = "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\n";
    let bad_port = write(
        "port.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  score:\n    type: PodmanV0\n    data: {{containers: [{{name: web, image: x, ports: [{{containerPort: 0}}]}}]}}\n"
        ),
    );
    let dotted = write(
        "dot.yaml",
        &format!(
            "{head}metadata: {{name: web.v1}}\nspec:\n  targetDevices: [a]\n  score: {{type: PodmanV0, data: {{}}}}\n"
        ),
    );
    let star = write(
        "star.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: ['pi*']\n  score: {{type: PodmanV0, data: {{}}}}\n"
        ),
    );
    let bad_check = write(
        "check.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  score:\n    type: PodmanV1\n    data: {{containers: [{{name: web, image: x, healthCheck: {{tcpSocket: {{port: 8080}}}}}}]}}\n"
        ),
    );
    let bad_deadline = write(
        "deadline.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  rollout: {{progressDeadlineSeconds: 0}}\n  score: {{type: PodmanV0, data: {{containers: [{{name: web, image: x}}]}}}}\n"
        ),
    );
    let batches = write(
        "batches.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  rollout: {{strategy: BatchSequence}}\n  score: {{type: PodmanV0, data: {{containers: [{{name: web, image: x}}]}}}}\n"
        ),
    );
    let zero = write(
        "zero.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  rollout: {{maxUnavailable: 0}}\n  score: {{type: PodmanV0, data: {{containers: [{{name: web, image: x}}]}}}}\n"
        ),
    );
    let seq = desired_seq(&env.client).await;
    for (file, expect) in [
        (
            &batches,
            "spec.rollout.strategy BatchSequence is carried out by the controller",
        ),
        (&zero, "spec.rollout.maxUnavailable: 0 is not allowed"),
        (
            &bad_port,
            "spec.score.data.containers[0].ports[0].containerPort",
        ),
        (
            &bad_check,
            "spec.score.data.containers[0].healthCheck.tcpSocket.port: 8080 is not a TCP `containerPort`",
        ),
        (
            &bad_deadline,
            "spec.rollout.progressDeadlineSeconds: 0 is out of range; allowed 1 to 86400",
        ),
        (&dotted, "metadata.name `web.v1`"),
        (&star, "spec.targetDevices[0] `pi*`"),
    ] {
        let out = cli(&url, None, &["apply", "-f", file]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{file}: {err}");
        assert!(err.contains("nothing was written"), "{err}");
    }
    assert_eq!(desired_seq(&env.client).await, seq);

    // An unknown type goes through, with the warning.
    let unknown = write(
        "unknown.yaml",
        &format!(
            "{head}metadata: {{name: web}}\nspec:\n  targetDevices: [a]\n  score: {{type: PdomanV0, data: {{x: 1}}}}\n"
        ),
    );
    let out = cli(&url, None, &["apply", "-f", &unknown]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `PodmanV0`?"));
}

/// An error's cause is printed once: the message either carries it or
/// returns it from `source()`, never both (the CLI prints the chain).
#[test]
fn a_seed_file_error_shows_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nk");
    std::fs::write(&bad, "hello\n").unwrap();
    let url = "nats://127.0.0.1:1";
    let out = cli(url, Some(&bad), &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("no nkey seed in it").count(), 1, "{err}");
    assert_eq!(err.matches("bad.nk").count(), 1, "{err}");

    let out = cli(url, Some(&dir.path().join("absent.nk")), &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert_eq!(err.matches("absent.nk").count(), 1, "{err}");
}

#[tokio::test]
async fn unreachable_nats_is_a_clear_error() {
    let port = testkit::free_port();
    let out = cli(&format!("nats://127.0.0.1:{port}"), None, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to NATS at nats://127.0.0.1:"),
        "{err}"
    );
}

/// A fleet-sized apply: one scan and pipelined publishes, every key
/// written once, and a re-apply that writes nothing.
#[tokio::test]
async fn large_fleet_apply_then_noop() {
    let Some(env) = nats_env().await else { return };
    let devices: Vec<String> = (0..3000).map(|i| format!("dev-{i:05}")).collect();
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let d = deployment("default", "fleet", &refs, "PodmanV0", podman("nginx:1"));
    let plan = operator::plan(&d).unwrap();
    let before = desired_seq(&env.client).await;
    let started = std::time::Instant::now();
    let out = operator::apply(&env.nats, &plan).await.unwrap();
    eprintln!(
        "applied to {} devices in {:?}",
        devices.len(),
        started.elapsed()
    );
    assert_eq!(out.written.len(), devices.len());
    assert_eq!(
        desired_seq(&env.client).await - before,
        devices.len() as u64
    );
    let started = std::time::Instant::now();
    let again = operator::apply(&env.nats, &plan).await.unwrap();
    eprintln!("no-op re-apply in {:?}", started.elapsed());
    assert_eq!(again.writes(), 0);
    assert_eq!(again.unchanged.len(), devices.len());
    assert_eq!(
        desired_seq(&env.client).await - before,
        devices.len() as u64
    );
    let removed = operator::remove(&env.nats, &plan.owner, "fleet")
        .await
        .unwrap();
    assert_eq!(removed.len(), devices.len());
}

#[tokio::test]
async fn commands_are_quiet_unless_asked() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let out = cli(&url, None, &["status"]);
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "status logs nothing"
    );
    let out = cli(&url, None, &["devices"]);
    assert_eq!(ok(&out).lines().count(), 1, "no device: only the header");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "devices logs nothing"
    );
    let out = cli(&url, None, &["status", "-v"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connected"),
        "-v shows the client's info lines: {err}"
    );
}

#[tokio::test]
async fn commands_on_a_server_without_buckets_say_to_run_init() {
    let Some(server) = testkit::NatsServer::start() else {
        return;
    };
    let file = hello().to_str().unwrap();
    for args in [
        &["apply", "-f", file][..],
        &["delete", "-f", file][..],
        &["status"][..],
        &["devices"][..],
    ] {
        let out = cli(&server.url(), None, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not exist on this NATS server")
                && err.contains("run `iot-operator init`"),
            "{args:?}: {err}"
        );
    }
}

/// The rows of a `devices` table after its header, as whitespace-split columns.
fn device_rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "DEVICE",
            "READY",
            "AGENT",
            "ARCH",
            "LAST-SEEN",
            "DEPLOYMENTS",
            "NOT-READY",
            "LABELS"
        ]
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// kubectl's ages: `5s`, `3m20s`, `2h`, `4d`.
fn is_age(s: &str) -> bool {
    let unit = |c: char| "smhdy".contains(c);
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.ends_with(unit)
        && s.chars().all(|c| c.is_ascii_digit() || unit(c))
}

#[tokio::test]
async fn devices_lists_the_inventory_and_selects_by_board_label() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    put_heartbeat_with_labels(
        &env.client,
        "pi-lyon",
        &[("site", "lyon"), ("board", "rpi4"), ("-bad", "x")],
    )
    .await;
    put_heartbeat_with_labels(&env.client, "pi-paris", &[("site", "paris")]).await;
    put_status(&env.client, "pi-lyon", "web", 1, Phase::Failed, "boom").await;
    put_status(&env.client, "pi-lyon", "db", 1, Phase::Running, "").await;

    let out = cli(&url, None, &["devices"]);
    let rows = device_rows(&ok(&out));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (lyon, paris) = (&rows[0], &rows[1]);
    assert_eq!(
        [&lyon[..4], &lyon[5..]].concat(),
        [
            "pi-lyon",
            "True",
            "0.2.0",
            "aarch64",
            "1",
            "1",
            "board=rpi4,site=lyon"
        ],
        "sorted by id; the invalid board label is left out"
    );
    assert!(is_age(&lyon[4]), "LAST-SEEN {:?}", lyon[4]);
    assert_eq!(
        [&paris[..2], &paris[5..]].concat(),
        ["pi-paris", "True", "1", "0", "site=paris"]
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("board label ignored") && err.contains("-bad"),
        "the invalid label is reported: {err}"
    );

    let selected = |selector: &str| -> Vec<String> {
        let out = cli(&url, None, &["devices", "-l", selector]);
        device_rows(&ok(&out))
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    };
    assert_eq!(selected("site=lyon"), ["pi-lyon"]);
    assert_eq!(selected("site==paris"), ["pi-paris"]);
    assert_eq!(
        selected("site in (lyon, paris),!gpu"),
        ["pi-lyon", "pi-paris"]
    );
    assert_eq!(selected("board"), ["pi-lyon"]);
    assert_eq!(selected("site notin (lyon)"), ["pi-paris"]);
    assert!(selected("site=nice").is_empty());

    // A device silent for longer than the timeout (here any time at all)
    // is Unknown, and still listed.
    let out = cli(&url, None, &["devices", "--heartbeat-timeout-secs", "0"]);
    let rows = device_rows(&ok(&out));
    let ready: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(ready, ["Unknown", "Unknown"]);
}

#[test]
fn a_bad_selector_is_refused_with_where_and_what() {
    // Refused before connecting: nothing listens on this port.
    let url = format!("nats://127.0.0.1:{}", testkit::free_port());
    for (selector, expect) in [
        (
            "site in lyon",
            "expected '(' after 'in' at column 9, found `lyon`",
        ),
        (
            "site=-x",
            "label value `-x` at column 6 must be a label value",
        ),
        ("site ~ lyon", "after key `site` at column 6, found `~`"),
    ] {
        let out = cli(&url, None, &["devices", "-l", selector]);
        assert!(!out.status.success(), "{selector}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{selector}: {err}");
        assert!(!err.contains("cannot connect"), "{err}");
    }
}

/// Without a cluster, `apply` selects by the labels the boards declare (the
/// only labels there are), and follows them on the next apply.
#[tokio::test]
async fn apply_selects_devices_by_their_board_labels() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    put_heartbeat_with_labels(&env.client, "pi-lyon", &[("site", "lyon")]).await;
    put_heartbeat_with_labels(&env.client, "pi-nice", &[("site", "nice")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sel.yaml");
    std::fs::write(
        &file,
        "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\n\
         metadata: {name: sel, namespace: default}\n\
         spec:\n  targetDevices: [pi-named]\n  targetSelector: {matchLabels: {site: lyon}}\n\
         \x20 score: {type: PodmanV0, data: {containers: [{name: c, image: busybox}]}}\n",
    )
    .unwrap();
    let out = cli(&url, None, &["apply", "-f", file.to_str().unwrap()]);
    let stdout = ok(&out);
    assert!(stdout.contains("2 written"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("selects 1 device(s)"), "{stderr}");
    for (device, live) in [("pi-lyon", true), ("pi-named", true), ("pi-nice", false)] {
        let rec = desired(&env.nats, device, "sel").await;
        assert_eq!(rec.is_some_and(|r| !r.deleted), live, "{device}");
    }
    // The board moves: the next apply follows.
    put_heartbeat_with_labels(&env.client, "pi-lyon", &[("site", "nice")]).await;
    let stdout = ok(&cli(&url, None, &["apply", "-f", file.to_str().unwrap()]));
    assert!(stdout.contains("1 removed"), "{stdout}");
    assert!(desired(&env.nats, "pi-lyon", "sel").await.unwrap().deleted);
}

/// The rows of an aligned table by its header's column starts, so that
/// cells with spaces (`CrashLoopBackOff (OOMKilled)`) stay whole.
fn table_rows(out: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for name in header.split_whitespace() {
        let i = at + header[at..].find(name).unwrap();
        starts.push((i, name));
        at = i + name.len();
    }
    lines
        .take_while(|l| !l.is_empty())
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(k, (i, name))| {
                    let end = starts.get(k + 1).map_or(line.len(), |(j, _)| *j);
                    let cell = line.get(*i..end.min(line.len())).unwrap_or("").trim();
                    (name.to_string(), cell.to_string())
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn status_shows_phase_reason_health_and_restarts() {
    use protocol::{ContainerState, Health, Reason};
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    for dev in ["pi-1", "pi-2", "pi-3", "pi-4"] {
        put_heartbeat(&env.client, dev).await;
    }
    let reports = [
        (
            "pi-1",
            health_status(
                7,
                Phase::CrashLoopBackOff,
                Reason::OOMKilled,
                None,
                ContainerState::Waiting,
                None,
                4,
            ),
        ),
        (
            "pi-2",
            health_status(
                7,
                Phase::Healthy,
                Reason::None,
                None,
                ContainerState::Running,
                Some(Health::Healthy),
                1,
            ),
        ),
        (
            "pi-3",
            health_status(
                7,
                Phase::RolledBack,
                Reason::HealthCheckFailed,
                Some(6),
                ContainerState::Running,
                Some(Health::Healthy),
                0,
            ),
        ),
        (
            "pi-4",
            health_status(
                7,
                Phase::Unhealthy,
                Reason::HealthCheckFailed,
                None,
                ContainerState::Running,
                Some(Health::Unhealthy),
                2,
            ),
        ),
    ];
    for (dev, s) in &reports {
        publish_status(&env.client, dev, "web", s).await;
    }
    let out = ok(&cli(&url, None, &["status", "web"]));
    let rows = table_rows(&out);
    let cells = |k: &str| rows.iter().map(|r| r[k].as_str()).collect::<Vec<_>>();
    assert_eq!(cells("DEVICE"), ["pi-1", "pi-2", "pi-3", "pi-4"], "{out}");
    assert_eq!(
        cells("PHASE"),
        [
            "CrashLoopBackOff (OOMKilled)",
            "Healthy",
            "RolledBack to 0000000000000006 (HealthCheckFailed)",
            "Unhealthy (HealthCheckFailed)"
        ],
        "{out}"
    );
    assert_eq!(
        cells("HEALTH"),
        ["-", "Healthy", "Healthy", "Unhealthy 0/1"],
        "{out}"
    );
    assert_eq!(cells("RESTARTS"), ["4", "1", "0", "2"], "{out}");
    assert_eq!(cells("REPORTED"), ["0000000000000007"; 4], "{out}");
    assert_eq!(cells("ONLINE"), ["True"; 4], "{out}");
}

/// The PodmanV1 example with its rollout policy, applied without a
/// cluster: written to the board that reads it, held back from the one
/// whose agent reads only DesiredState 1, saying why.
#[tokio::test]
async fn apply_holds_a_rollout_policy_back_from_agents_that_cannot_read_it() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/health-checked.yaml"
    );
    let mut before = protocol::Capabilities::this_build();
    before.desired_state_versions = protocol::BoundedVec::try_from_iter([1]).unwrap();
    for (dev, caps) in [
        ("pi-new", protocol::Capabilities::this_build()),
        ("pi-old", before),
    ] {
        let mut labels = protocol::BoundedMap::new();
        labels
            .insert(
                protocol::Text::borrowed("site"),
                protocol::Text::borrowed("lyon"),
            )
            .unwrap();
        let hb = protocol::Heartbeat {
            agent_version: protocol::Text::borrowed("0.3.0"),
            arch: protocol::Text::borrowed("aarch64"),
            os: protocol::Text::borrowed("linux"),
            labels,
            capabilities: caps,
            ..protocol::Heartbeat::default()
        };
        publish_heartbeat(&env.client, dev, &hb).await;
    }
    let out = cli(&url, None, &["apply", "-f", example]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("1 written") && stdout.contains("1 held back"),
        "{stdout}"
    );
    assert!(
        stderr.contains("device pi-old: held back: agent 0.3.0 reads DesiredState format 1 and cannot receive the rollout policy"),
        "{stderr}"
    );
    let written = desired(&env.nats, "pi-new", "health-web").await.unwrap();
    let d: protocol::DesiredState<'_> = protocol::wire::decode(&written.value).unwrap();
    assert_eq!(d.score.type_name.as_str(), "PodmanV1");
    assert_eq!(
        (
            d.rollout.auto_rollback,
            d.rollout.progress_deadline_seconds,
            d.rollout.min_healthy_seconds
        ),
        (true, 300, 30)
    );
    assert!(desired(&env.nats, "pi-old", "health-web").await.is_none());
}

#[tokio::test]
async fn apply_gives_a_device_in_the_file_its_own_windows_and_delete_honours_force() {
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let deployment = |rollout: &str| {
        format!(
            "apiVersion: iot.nationtech.io/v1alpha1\nkind: Deployment\nmetadata: {{name: kiosk}}\nspec:\n  targetDevices: [pi-a, pi-b]\n  rollout: {rollout}\n  score: {{type: PodmanV0, data: {{containers: [{{name: web, image: x}}]}}}}\n"
        )
    };
    let device = |at: &str| {
        format!(
            "---\napiVersion: iot.nationtech.io/v1alpha1\nkind: Device\nmetadata: {{name: pi-b}}\nspec:\n  maintenance:\n    windows: [{{at: \"{at}\", timeZone: Europe/Lisbon, duration: 90m}}]\n"
        )
    };
    let nightly =
        "{maintenanceWindows: [{at: \"0 2 * * *\", timeZone: Europe/Paris, duration: 2h}]}";

    // A bad window on the Device in the file: nothing is written.
    let seq = desired_seq(&env.client).await;
    let bad = write("bad.yaml", &(deployment(nightly) + &device("0 25 * * *")));
    let out = cli(&url, None, &["apply", "-f", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Device pi-b") && err.contains("spec.maintenance.windows[0].at"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(desired_seq(&env.client).await, seq);

    // A good one: pi-b gets its own windows, pi-a the Deployment's.
    let good = write(
        "good.yaml",
        &(deployment(nightly) + &device("30 3 * * SAT,SUN")),
    );
    ok(&cli(&url, None, &["apply", "-f", &good]));
    let zone = |device: &str| {
        let env = &env;
        let device = device.to_string();
        async move {
            let rec = desired(&env.nats, &device, "kiosk").await.unwrap();
            let d: protocol::DesiredState = protocol::wire::decode(&rec.value).unwrap();
            assert_eq!(d.format_version(), 4);
            let w = &d.gate.windows[0];
            (
                w.at.to_string(),
                w.time_zone.to_string(),
                w.duration_seconds,
            )
        }
    };
    assert_eq!(
        zone("pi-a").await,
        ("0 2 * * *".into(), "Europe/Paris".into(), 7200)
    );
    assert_eq!(
        zone("pi-b").await,
        ("30 3 * * SAT,SUN".into(), "Europe/Lisbon".into(), 5400)
    );

    // `delete` of a forced Deployment marks its deletes forced.
    let forced = write("forced.yaml", &deployment("{force: true}"));
    ok(&cli(&url, None, &["delete", "-f", &forced]));
    let js = async_nats::jetstream::new(env.client.clone());
    let stream = js.get_stream("KV_desired-state").await.unwrap();
    let m = stream
        .get_last_raw_message_by_subject("$KV.desired-state.pi-a.kiosk")
        .await
        .unwrap();
    assert_eq!(
        m.headers
            .get(protocol::kv::FORCE_HEADER)
            .map(|v| v.as_str().to_string()),
        Some(protocol::kv::FORCE_VALUE.to_string())
    );
}

/// `apply --secrets`: the Secrets of a directory of manifests, sealed to
/// each device's key from its heartbeat; a device without a key is held;
/// a re-apply writes nothing; a changed value is a new revision; a missing
/// key stops the apply naming it, before anything is written.
#[tokio::test]
async fn apply_seals_secrets_from_local_manifests() {
    use base64::Engine as _;
    let Some(env) = nats_env().await else { return };
    let url = env.server.url();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/private-registry.yaml"
    );
    let key = sealing::DeviceKey::generate();
    put_heartbeat_with_key(&env.client, "pi-001", key.public_key()).await;
    put_heartbeat_with_key(&env.client, "pi-002", "").await;

    // Without --secrets: refused, naming the Secrets.
    let out = cli(&url, None, &["apply", "-f", example]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("references Secrets (db, regcred, web-tls); pass --secrets PATH"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"auths": {"registry.example.com": {
        "auth": base64::engine::general_purpose::STANDARD.encode("robot:pull-s3cret")}}});
    let write_secrets = |password: &str| {
        std::fs::write(
            dir.path().join("regcred.json"),
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": config.to_string()}})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("app.yaml"),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {password}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: web-tls}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: Q0VSVA==, tls.key: S0VZ}}\n"
            ),
        )
        .unwrap();
    };
    write_secrets("hunter2-local");
    let secrets = dir.path().to_str().unwrap();
    // The revision's digest key: created at the first apply (0600), in a
    // place of the test's own (never the user's ~/.config).
    let key_dir = tempfile::tempdir().unwrap();
    let digest_key = key_dir
        .path()
        .join("iot-operator")
        .join("secrets-digest.key");
    let digest_key = digest_key.to_str().unwrap();
    let apply_sealed = || {
        cli(
            &url,
            None,
            &[
                "apply",
                "-f",
                example,
                "--secrets",
                secrets,
                "--secrets-digest-key",
                digest_key,
            ],
        )
    };
    let out = apply_sealed();
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("1 written, 0 unchanged") && stdout.contains("1 held back"),
        "{stdout}"
    );
    assert!(
        stderr.contains("device pi-002: held back:") && stderr.contains("reports no sealing key"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2") && !stdout.contains("hunter2"));
    assert!(desired(&env.nats, "pi-002", "private-web").await.is_none());
    let open = |value: &[u8]| {
        let d: protocol::DesiredState<'_> = protocol::wire::decode(value).unwrap();
        let v = d.secrets.value_for("db", "password").unwrap();
        let b = protocol::Binding {
            device: protocol::Text::borrowed("pi-001"),
            deployment: protocol::Text::borrowed("private-web"),
            revision: d.revision,
            purpose: protocol::Purpose::Value {
                secret: protocol::Text::borrowed("db"),
                key: protocol::Text::borrowed("password"),
            },
        };
        assert_eq!(
            d.secrets.values.len(),
            3,
            "db/password and both keys of web-tls"
        );
        assert!(d.secrets.pull_for("registry.example.com").is_some());
        (d.revision, key.open(&v.sealed, &b).unwrap().to_vec())
    };
    let first = desired(&env.nats, "pi-001", "private-web").await.unwrap();
    let (rev1, value) = open(&first.value);
    assert_eq!(value, b"hunter2-local");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(digest_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Again: the sealed value is current, nothing written.
    let seq = desired_seq(&env.client).await;
    let stdout = ok(&apply_sealed());
    assert!(stdout.contains("0 written, 1 unchanged"), "{stdout}");
    assert_eq!(desired_seq(&env.client).await, seq);

    // A rotated value: a new revision, written.
    write_secrets("hunter3-local");
    let stdout = ok(&apply_sealed());
    assert!(stdout.contains("1 written"), "{stdout}");
    let (rev2, value) = open(
        &desired(&env.nats, "pi-001", "private-web")
            .await
            .unwrap()
            .value,
    );
    assert_eq!(value, b"hunter3-local");
    assert_ne!(rev1, rev2);

    // The key gone from the Secret: named, nothing written.
    std::fs::write(
        dir.path().join("app.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {user: app}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: web-tls}\ndata: {tls.crt: Q0VSVA==}\n",
    )
    .unwrap();
    let seq = desired_seq(&env.client).await;
    let out = apply_sealed();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Secret \"db\" has no key \"password\" (referenced by spec.score.data.containers[0].env[1].valueFrom.secretKeyRef)"),
        "{stderr}"
    );
    assert_eq!(desired_seq(&env.client).await, seq);
}
