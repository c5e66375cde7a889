//! When the device may change a deployment, with real nats-server, Podman
//! and the agent binary: a workload holding the update lock (in its
//! container, across the bind mount, or as a host process) keeps its
//! containers through an update that waits, prefetched, and applies once
//! the lock is released (a holder killed with SIGKILL releases it); lock
//! timeouts with `Fail` and `Force`; a closed maintenance window and
//! `force`; a delete that waits for the lock unless forced; a board that
//! applies at its window with NATS cut; a score pointing a volume at the
//! lock's directory.
//!
//! The agent runs with its lock directory in the test's temp dir and
//! `clock_sync_wait_secs = 0` (a test machine's clock may not say it is
//! synchronized; a clock later than the agent's build is trusted then).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_nats_device as async_nats;
use common::*;
use protocol::{
    BoundedVec, ContainerV1, DeploymentStatus, DesiredState, IotScore, LockTimeout,
    MaintenanceWindow, Phase, PodmanV1Score, Reason, Text, UpdateGate, UpdateLockPolicy, Volume,
};
use registry::{PullingPodman, Registry};

const APP: &str = "app";

/// busybox with util-linux `flock` (busybox-static has no `flock` applet).
const FLOCK_IMAGE: &str = "localhost/iot-agent-test:flock";

/// Long enough for the next whole minute to come, and a tick after it.
const WINDOW_WAIT: Duration = Duration::from_secs(130);

/// A container process that just runs.
const SLEEP: &str = "exec sleep 3600";

/// A container that takes the update lock in a process of its own (killing
/// that process releases it), says so in `/tmp/locked`, and runs on.
const HOLD: &str = "(exec 9</run/iot-agent/update.lock; flock 9; touch /tmp/locked; exec sleep 600) & echo $! > /tmp/holder.pid; exec sleep 3600";

/// Builds [`FLOCK_IMAGE`] unless it exists: the test busybox image plus the
/// host's `flock` and the libraries it loads.
fn ensure_flock_image(env: &Env) {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if image_exists(env, FLOCK_IMAGE) {
        return;
    }
    let flock = testkit::find_binary("FLOCK_BIN", "flock").expect("flock (util-linux)");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ldd = Command::new("ldd").arg(&flock).output().unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let files = libs
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .chain([flock.clone()]);
    for file in files {
        let to = if file == flock {
            root.join("bin/flock")
        } else {
            root.join(file.strip_prefix("/").unwrap())
        };
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    std::fs::write(
        dir.path().join("Containerfile"),
        format!("FROM {IMAGE}\nCOPY root/ /\n"),
    )
    .unwrap();
    env.podman.run(&[
        "build",
        "-q",
        "-t",
        FLOCK_IMAGE,
        dir.path().to_str().unwrap(),
    ]);
}

fn texts(v: &[&str]) -> Option<BoundedVec<Text<'static>, { protocol::limits::MAX_ARGS }>> {
    Some(BoundedVec::try_from_iter(v.iter().map(|s| Text::owned(s.to_string()))).unwrap())
}

/// [`APP`] in [`FLOCK_IMAGE`] running `sh -c script`, its spec told apart
/// by `tag`.
fn app(tag: &str, script: &str, update_lock: bool) -> ContainerV1<'static> {
    let mut c = ContainerV1::from_v0(sleeper(APP, tag));
    c.image = Text::borrowed(FLOCK_IMAGE);
    c.command = texts(&["/bin/sh"]);
    c.args = texts(&["-c", script]);
    c.update_lock = update_lock;
    c
}

fn desired(
    revision: u64,
    containers: Vec<ContainerV1<'static>>,
    gate: UpdateGate<'static>,
) -> Vec<u8> {
    let score = IotScore::PodmanV1(PodmanV1Score {
        containers: BoundedVec::try_from_iter(containers).unwrap(),
    });
    protocol::wire::encode_to_vec(&DesiredState {
        deployment: Text::borrowed(APP),
        revision,
        score: score.to_payload().unwrap(),
        rollout: protocol::RolloutPolicy::default(),
        attempt: 0,
        gate,
        secrets: Default::default(),
    })
    .unwrap()
}

/// A gate that honours the lock, giving up after `timeout_seconds` (0:
/// never) as `on_timeout` says.
fn locked(timeout_seconds: u32, on_timeout: LockTimeout) -> UpdateGate<'static> {
    UpdateGate {
        update_lock: Some(UpdateLockPolicy {
            timeout_seconds,
            on_timeout,
        }),
        ..UpdateGate::default()
    }
}

/// A gate with one UTC window opening at `at` for `duration_seconds`.
fn window(at: &str, duration_seconds: u32) -> UpdateGate<'static> {
    UpdateGate {
        windows: BoundedVec::try_from_iter([MaintenanceWindow {
            at: Text::owned(at.to_string()),
            time_zone: Text::borrowed("UTC"),
            duration_seconds,
        }])
        .unwrap(),
        ..UpdateGate::default()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes the agent's configuration: NATS at `url`, Podman at `podman`
/// (else the environment's), the update lock in `lock_dir`, no wait for
/// the clock's synchronized flag.
fn write_config(env: &Env, url: &str, podman: Option<&str>, lock_dir: &Path) {
    let path = env.write_config_for(url);
    let mut text = std::fs::read_to_string(&path).unwrap();
    if let Some(uri) = podman {
        text = text.replace(&env.podman.uri(), uri);
    }
    text.push_str(&format!(
        "[update]\nlock_dir = \"{}\"\nclock_sync_wait_secs = 0\n",
        lock_dir.display()
    ));
    std::fs::write(&path, text).unwrap();
}

/// The agent's lock directory for `env`: not created by the test (the
/// agent creates it).
fn lock_dir(env: &Env) -> PathBuf {
    env.dir.path().join("run/iot-agent")
}

/// Whether anyone holds the lock file in `dir` (a non-blocking attempt
/// fails; a free lock is let go at once).
fn lock_held(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("update.lock")) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// A host process holding the lock in `dir`: one process (the shell
/// execs `sleep` with the locked descriptor), so a SIGKILL releases it.
/// Returned once it holds the lock (not the agent, which holds it a moment
/// while it applies).
async fn hold_on_host(dir: &Path) -> Holder {
    std::fs::create_dir_all(dir).unwrap();
    let marker = dir.with_file_name(testkit::unique("held"));
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>>"$0" && flock 9 && : > "$1" && exec sleep 600"#)
        .arg(dir.join("update.lock"))
        .arg(&marker)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let held = testkit::wait_until_async(WAIT, || async { marker.exists() }).await;
    let holder = Holder(child);
    assert!(held, "the host process never took the lock");
    assert!(lock_held(dir));
    holder
}

/// A host process holding the lock; SIGKILLed on drop too.
struct Holder(Child);

impl Holder {
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs the holder and reaps it.
fn sigkill(mut holder: Holder) {
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
}

fn is(phase: Phase, reason: Reason, revision: u64) -> impl Fn(&DeploymentStatus<'static>) -> bool {
    move |s| s.phase == phase && s.reason == reason && s.revision == revision
}

fn up_at(revision: u64) -> impl Fn(&DeploymentStatus<'static>) -> bool {
    move |s| s.revision == revision && matches!(s.phase, Phase::Running | Phase::Healthy)
}

/// [`APP`]'s one container, running at `revision`; its id.
async fn running_at(env: &Env, revision: u64) -> String {
    let name = env.container_name(APP, APP);
    let mut last = Vec::new();
    let ok = testkit::wait_until_async(WAIT, || {
        last = env.containers();
        let ok = last.len() == 1
            && last[0].0 == name
            && last[0].2 == "running"
            && last[0].3 == revision.to_string();
        async move { ok }
    })
    .await;
    assert!(
        ok,
        "expected {name} running at revision {revision}; have {last:?}"
    );
    last[0].1.clone()
}

/// A held change is reported `Waiting` with `reason` at `revision`, the
/// admitted `running` revision, and since when; the status is returned.
async fn waiting(
    env: &Env,
    reason: Reason,
    revision: u64,
    running: Option<u64>,
) -> DeploymentStatus<'static> {
    let before = now_ms();
    let s = env
        .wait_status(
            APP,
            &format!("Waiting/{reason:?} at {revision}"),
            is(Phase::Waiting, reason, revision),
        )
        .await;
    assert_eq!(s.running_revision, running, "{s:?}");
    let w = s.waiting.unwrap_or_else(|| panic!("no waiting in {s:?}"));
    assert!(
        w.since_ms > 0 && w.since_ms <= now_ms(),
        "{s:?} (test started waiting at {before})"
    );
    s
}

/// Removes an image on drop (a pulled one is in the machine's storage).
struct RemoveImage<'a>(&'a testkit::PodmanService, String);

impl Drop for RemoveImage<'_> {
    fn drop(&mut self) {
        let _ = self.0.command().args(["rmi", "-f", &self.1]).output();
    }
}

fn image_exists(env: &Env, image: &str) -> bool {
    let mut cmd = env.podman.command();
    cmd.args(["image", "exists", image]);
    cmd.status().is_ok_and(|s| s.success())
}

/// The container holds the lock through the bind mount: revision 2 waits
/// (`UpdateLocked`, since when, revision 1 still running, the same
/// container), its image is pulled meanwhile from a registry, and once the
/// holder dies revision 2 applies.
#[tokio::test]
async fn a_container_holding_the_lock_keeps_running_and_the_prefetched_revision_applies_on_release()
{
    let Some(env) = Env::start("lock-ctr").await else {
        return;
    };
    ensure_flock_image(&env);
    let registry = Registry::serve(&env.podman, FLOCK_IMAGE);
    let pulling = PullingPodman::start(&registry);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), Some(&pulling.uri()), &dir);
    let _agent = env.spawn_agent_with_config();

    env.put_raw(
        APP,
        desired(1, vec![app("1", HOLD, true)], UpdateGate::default()),
    )
    .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;
    let id = running_at(&env, 1).await;
    // The agent made the lock file, and the container locks it (the agent
    // itself holds it a moment while it applies).
    let name = env.container_name(APP, APP);
    let locked = testkit::wait_until_async(WAIT, || async {
        let mut cmd = env.podman.command();
        cmd.args(["exec", &name, "sh", "-c", "test -e /tmp/locked"]);
        cmd.status().is_ok_and(|s| s.success())
    })
    .await;
    assert!(locked, "the container never took the lock");
    assert!(lock_held(&dir));

    let image = registry.publish(&env.podman, &format!("gate/{}:2", env.device));
    let _cleanup = RemoveImage(&env.podman, image.clone());
    assert!(!image_exists(&env, &image), "{image} is already here");
    let mut next = app("2", SLEEP, true);
    next.image = Text::owned(image.clone());
    env.put_raw(APP, desired(2, vec![next], UpdateGate::default()))
        .await;
    waiting(&env, Reason::UpdateLocked, 2, Some(1)).await;
    assert!(
        testkit::wait_until_async(WAIT, || async { image_exists(&env, &image) }).await,
        "{image} was not prefetched while the lock was held"
    );
    assert!(registry.manifest_requests() > 0);
    // Untouched: the same container, still at revision 1, still waiting.
    assert_eq!(running_at(&env, 1).await, id);
    assert!(lock_held(&dir));
    let s = env.status(APP).await.unwrap();
    assert_eq!((s.phase, s.revision), (Phase::Waiting, 2), "{s:?}");

    env.podman
        .run(&["exec", &name, "sh", "-c", "kill -9 $(cat /tmp/holder.pid)"]);
    env.wait_status(APP, "up at 2", up_at(2)).await;
    assert_ne!(running_at(&env, 2).await, id);
}

/// A host process holds the lock for a deployment whose gate honours it;
/// SIGKILLed, it releases the lock and the held revision applies.
#[tokio::test]
async fn a_host_holder_killed_with_sigkill_releases_the_lock() {
    let Some(env) = Env::start("lock-host").await else {
        return;
    };
    ensure_flock_image(&env);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    let gate = locked(0, LockTimeout::Fail);
    env.put_raw(APP, desired(1, vec![app("1", SLEEP, false)], gate.clone()))
        .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;
    let id = running_at(&env, 1).await;

    let holder = hold_on_host(&dir).await;
    env.put_raw(APP, desired(2, vec![app("2", SLEEP, false)], gate))
        .await;
    waiting(&env, Reason::UpdateLocked, 2, Some(1)).await;
    assert_eq!(running_at(&env, 1).await, id);

    sigkill(holder);
    env.wait_status(APP, "up at 2", up_at(2)).await;
    assert_ne!(running_at(&env, 2).await, id);
}

/// With a 2 s timeout: `Fail` reports `Failed`/`UpdateLockTimeout` and
/// keeps the revision held (it applies once the lock frees); `Force`
/// applies while the lock is still held.
#[tokio::test]
async fn lock_timeouts_fail_or_force() {
    let Some(env) = Env::start("lock-timeout").await else {
        return;
    };
    ensure_flock_image(&env);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    let fail = locked(2, LockTimeout::Fail);
    env.put_raw(APP, desired(1, vec![app("1", SLEEP, false)], fail.clone()))
        .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;
    let id = running_at(&env, 1).await;

    let holder = hold_on_host(&dir).await;
    env.put_raw(APP, desired(2, vec![app("2", SLEEP, false)], fail.clone()))
        .await;
    let s = env
        .wait_status(
            APP,
            "Failed/UpdateLockTimeout at 2",
            is(Phase::Failed, Reason::UpdateLockTimeout, 2),
        )
        .await;
    assert_eq!(s.running_revision, Some(1), "{s:?}");
    assert_eq!(running_at(&env, 1).await, id);
    sigkill(holder);
    env.wait_status(APP, "up at 2", up_at(2)).await;
    let id = running_at(&env, 2).await;

    let mut holder = hold_on_host(&dir).await;
    env.put_raw(
        APP,
        desired(
            3,
            vec![app("3", SLEEP, false)],
            locked(2, LockTimeout::Force),
        ),
    )
    .await;
    env.wait_status(APP, "up at 3", up_at(3)).await;
    assert_ne!(running_at(&env, 3).await, id);
    assert!(holder.alive(), "the holder died");
    assert!(lock_held(&dir), "forced while the lock was free");
    sigkill(holder);
}

/// Milliseconds since the epoch of 1 January `year`, 03:00 UTC.
fn jan_1_3am_utc_ms(year: i64) -> u64 {
    // Days from 1970-01-01 to 1 January `year` (proleptic Gregorian).
    let y = year - 1;
    let days =
        365 * (year - 1970) + (y / 4 - y / 100 + y / 400) - (1969 / 4 - 1969 / 100 + 1969 / 400);
    ((days * 86_400 + 3 * 3600) * 1000) as u64
}

/// The next start of the window `0 3 1 1 *` (UTC) after `now`.
fn next_jan_1_3am_utc_ms(now: u64) -> u64 {
    (1970..).map(jan_1_3am_utc_ms).find(|&t| t > now).unwrap()
}

/// Outside its window (1 January, 03:00 UTC, one hour) a revision waits
/// with `OutsideMaintenanceWindow` and the window's next start, the old
/// container running on; with `force` it applies at once.
#[tokio::test]
async fn outside_the_window_a_revision_waits_and_force_applies_it() {
    let Some(env) = Env::start("window").await else {
        return;
    };
    ensure_flock_image(&env);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    env.put_raw(
        APP,
        desired(1, vec![app("1", SLEEP, false)], UpdateGate::default()),
    )
    .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;
    let id = running_at(&env, 1).await;

    let closed = window("0 3 1 1 *", 3600);
    let now = now_ms();
    env.put_raw(
        APP,
        desired(2, vec![app("2", SLEEP, false)], closed.clone()),
    )
    .await;
    let s = waiting(&env, Reason::OutsideMaintenanceWindow, 2, Some(1)).await;
    assert_eq!(
        s.waiting.unwrap().until_ms,
        Some(next_jan_1_3am_utc_ms(now)),
        "{s:?}"
    );
    assert_eq!(running_at(&env, 1).await, id);

    let forced = UpdateGate {
        force: true,
        ..closed
    };
    env.put_raw(APP, desired(3, vec![app("3", SLEEP, false)], forced))
        .await;
    env.wait_status(APP, "up at 3", up_at(3)).await;
    assert_ne!(running_at(&env, 3).await, id);
}

/// A delete while the lock is held leaves the containers and reports
/// `Waiting`; the operator's forced delete (`Iot-Force: true`) removes them.
#[tokio::test]
async fn a_delete_waits_for_the_lock_unless_forced() {
    let Some(env) = Env::start("lock-delete").await else {
        return;
    };
    ensure_flock_image(&env);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    env.put_raw(
        APP,
        desired(1, vec![app("1", SLEEP, true)], UpdateGate::default()),
    )
    .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;
    let id = running_at(&env, 1).await;
    let holder = hold_on_host(&dir).await;

    env.delete(APP).await;
    let s = env
        .wait_status(APP, "Waiting/UpdateLocked", |s| {
            s.phase == Phase::Waiting && s.reason == Reason::UpdateLocked
        })
        .await;
    assert!(s.waiting.is_some(), "{s:?}");
    assert_eq!(running_at(&env, 1).await, id);

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        protocol::kv::OPERATION_HEADER,
        protocol::kv::Operation::Delete.as_str(),
    );
    headers.insert(protocol::kv::FORCE_HEADER, protocol::kv::FORCE_VALUE);
    let subject = protocol::keys::KvSubject {
        bucket: protocol::buckets::DESIRED_STATE.name,
        key: env.key(APP).as_str(),
    }
    .to_string();
    async_nats::jetstream::new(env.client.clone())
        .publish_with_headers(subject, headers, Default::default())
        .await
        .unwrap()
        .await
        .unwrap();
    env.wait_status(APP, "Removed", |s| s.phase == Phase::Removed)
        .await;
    assert_eq!(env.containers(), []);
    assert!(lock_held(&dir), "the holder let go");
    sigkill(holder);
}

/// The window opens at the next whole minute (UTC) for one minute; the
/// revision arrives before, NATS is cut, and the board applies it on its
/// own clock.
#[tokio::test]
async fn an_offline_board_applies_at_its_window() {
    let Some(env) = Env::start("window-offline").await else {
        return;
    };
    ensure_flock_image(&env);
    let proxy = testkit::proxy::TcpProxy::to_port(env.nats.port());
    let dir = lock_dir(&env);
    write_config(&env, &proxy.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    env.put_raw(
        APP,
        desired(1, vec![app("1", SLEEP, false)], UpdateGate::default()),
    )
    .await;
    env.wait_status(APP, "up at 1", up_at(1)).await;

    // At least 20 s ahead: time to see it wait and to cut NATS first.
    let now_s = now_ms() / 1000;
    let mut start = (now_s / 60 + 1) * 60;
    if start - now_s < 20 {
        start += 60;
    }
    let at = format!("{} {} * * *", start / 60 % 60, start / 3600 % 24);
    env.put_raw(
        APP,
        desired(2, vec![app("2", SLEEP, false)], window(&at, 60)),
    )
    .await;
    let s = waiting(&env, Reason::OutsideMaintenanceWindow, 2, Some(1)).await;
    assert_eq!(s.waiting.unwrap().until_ms, Some(start * 1000), "{s:?}");
    proxy.cut();
    running_at(&env, 1).await;

    let name = env.container_name(APP, APP);
    let mut last = Vec::new();
    let applied = testkit::wait_until_async(WINDOW_WAIT, || {
        last = env.containers();
        let ok = last
            .iter()
            .any(|c| c.0 == name && c.2 == "running" && c.3 == "2");
        async move { ok }
    })
    .await;
    assert!(applied, "revision 2 never applied offline; have {last:?}");
    proxy.restore();
    env.wait_status(APP, "up at 2", up_at(2)).await;
}

/// A volume from the lock's directory is refused, the field named.
#[tokio::test]
async fn a_host_path_at_the_lock_directory_is_refused() {
    let Some(env) = Env::start("lock-path").await else {
        return;
    };
    ensure_flock_image(&env);
    let dir = lock_dir(&env);
    write_config(&env, &env.nats.url(), None, &dir);
    let _agent = env.spawn_agent_with_config();
    let mut c = app("1", SLEEP, false);
    c.volumes = BoundedVec::try_from_iter([protocol::VolumeV1::from_v0(Volume {
        name: None,
        host_path: Some(Text::owned(dir.display().to_string())),
        mount_path: Text::borrowed("/data"),
        read_only: false,
    })])
    .unwrap();
    env.put_raw(APP, desired(1, vec![c], UpdateGate::default()))
        .await;
    let s = env
        .wait_status(APP, "Failed", |s| s.phase == Phase::Failed)
        .await;
    let m = s.message.as_str();
    assert!(
        m.starts_with("containers[0].volumes[0].hostPath: ")
            && m.contains("the update lock's path is the agent's"),
        "{m}"
    );
    assert_eq!(env.containers(), []);
}
