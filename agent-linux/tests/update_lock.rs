//! The update lock against real holders: a host process (util-linux
//! `flock`) and a Podman container with the lock directory bind-mounted
//! read-only at `/run/iot-agent` (a static program that `flock`s it, as a
//! workload would: Debian's busybox has no `flock` applet). Each holds it, the
//! agent sees it held and by whom, and a SIGKILL releases it: flock holds
//! across the bind mount, and a crashed holder does not block updates.
#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_linux::gate::lock::{Acquired, Holder, UpdateLock};
use testkit::{PodmanService, find_binary, missing, wait_until};

/// The image the agent's other Podman tests use (`tests/common`).
const IMAGE: &str = "localhost/iot-agent-test:busybox";

/// Marks this test's containers for cleanup.
const TEST_LABEL: &str = "io.nationtech.iot.test.update-lock";

const TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until the lock is held and returns the holder. Taking the lock to
/// look would make the holder wait for us, so a free answer releases it at
/// once (the guard is dropped) and the loop asks again.
fn wait_held(lock: &UpdateLock) -> Option<Holder> {
    let mut holder = None;
    wait_until(TIMEOUT, || match lock.try_acquire().unwrap() {
        Acquired::Held(h) => {
            holder = Some(h);
            true
        }
        Acquired::Free(_) => false,
    });
    holder
}

/// Waits until the lock is free (and releases it again).
fn wait_free(lock: &UpdateLock) -> bool {
    wait_until(TIMEOUT, || {
        matches!(lock.try_acquire().unwrap(), Acquired::Free(_))
    })
}

/// Kills a process group on drop: the holder's `sleep` child outlives it.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_host_process_holds_it_until_it_is_killed() {
    let Some(flock) = find_binary("FLOCK_BIN", "flock") else {
        missing::<()>("flock (util-linux) is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lock = UpdateLock::new(dir.path().join("iot-agent"));
    lock.ensure().unwrap();

    // `-o`: `sleep` does not inherit the descriptor, so the flock process
    // is the only holder and killing it must release the lock.
    let child = Command::new(flock)
        .arg("-o")
        .arg(lock.path())
        .args(["sleep", "600"])
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut holder = Group(child);
    let pid = holder.0.id();

    let held = wait_held(&lock).expect("flock never took the lock");
    assert_eq!(held.pid, Some(pid), "{held:?}");
    assert_eq!(held.command.as_deref(), Some("flock"), "{held:?}");
    assert_eq!(held.to_string(), format!("pid {pid} (flock)"));
    // Still held on a second look: the first look did not take it.
    assert!(matches!(lock.try_acquire().unwrap(), Acquired::Held(_)));

    holder.0.kill().unwrap(); // SIGKILL
    holder.0.wait().unwrap();
    assert!(wait_free(&lock), "the lock stayed held after SIGKILL");
    // The agent holds it now: another process cannot take it.
    let Acquired::Free(guard) = lock.try_acquire().unwrap() else {
        panic!("free after SIGKILL")
    };
    let status = Command::new("flock")
        .args(["-n"])
        .arg(lock.path())
        .arg("true")
        .status()
        .unwrap();
    assert!(!status.success(), "flock -n took a lock the agent holds");
    drop(guard);
}

/// Removes the test's containers, also when an assertion fails.
struct Cleanup<'a>(&'a PodmanService, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.remove_labelled(TEST_LABEL, &self.1);
    }
}

/// The container's holder: a static program that opens the file it is
/// given, takes an exclusive `flock` and sleeps, built with the toolchain
/// that runs this test for the host's musl target. `None` when that
/// target is missing (outside CI).
fn build_holder(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let src = dir.join("lock_holder.rs");
    std::fs::write(
        &src,
        r#"fn main() {
    let path = std::env::args().nth(1).expect("usage: lock-holder FILE");
    let file = std::fs::File::open(&path).expect("open the lock file");
    file.lock().expect("flock");
    std::thread::sleep(std::time::Duration::from_secs(600));
    drop(file);
}
"#,
    )
    .unwrap();
    let out = dir.join("lock-holder");
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .args(["--edition", "2024", "--target", &target])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    if !built.status.success() {
        return missing(&format!(
            "cannot build a static {target} program (rustup target add {target}): {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    Some(out)
}

#[test]
fn a_container_holds_it_through_a_read_only_bind_mount_until_killed() {
    let Some(podman) = PodmanService::start() else {
        return;
    };
    let tools = tempfile::tempdir().unwrap();
    let Some(holder) = build_holder(tools.path()) else {
        return;
    };
    podman.ensure_busybox_image(IMAGE);
    let run = format!("{}", std::process::id());
    let _cleanup = Cleanup(&podman, run.clone());
    let name = format!("update-lock-{run}");

    let dir = tempfile::tempdir().unwrap();
    let lock = UpdateLock::new(dir.path().join("iot-agent"));
    lock.ensure().unwrap();

    podman.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("{TEST_LABEL}={run}"),
        "-v",
        &format!("{}:/run/iot-agent:ro", lock.dir().display()),
        "-v",
        &format!("{}:/bin/lock-holder:ro", holder.display()),
        IMAGE,
        "/bin/lock-holder",
        "/run/iot-agent/update.lock",
    ]);

    let held = wait_held(&lock).expect("the container never took the lock");
    // The holder is the container's first process, seen from the host by
    // its host pid.
    let pid: u32 = podman
        .run(&["inspect", "--format", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(held.pid, Some(pid), "{held:?}");
    assert_eq!(held.command.as_deref(), Some("lock-holder"), "{held:?}");

    // The mount is read-only: the container cannot replace the file.
    let out = podman
        .command()
        .args(["exec", &name, "touch", "/run/iot-agent/other"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the lock directory is writable in the container"
    );

    podman.run(&["kill", "--signal", "KILL", &name]);
    assert!(wait_free(&lock), "the lock stayed held after podman kill");
}
