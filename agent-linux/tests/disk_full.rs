//! A full `state_dir`: the agent keeps applying, but says in each affected
//! deployment's status message and in its heartbeat that the desired state
//! is not cached (so it would not come back after an offline reboot), and
//! says so no longer once a write succeeds. The state_dir is a real 64 KiB
//! tmpfs, filled up: real nats-server, real Podman, the real agent binary.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use protocol::wire::FORMAT_VERSION_4;
use protocol::{DeploymentStatus, Phase};

/// A tiny tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a 64 KiB tmpfs on `dir`; `None` (a skip, or a failure under
    /// CI) when this process may not mount.
    fn mount(dir: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => testkit::missing(&format!(
                "permission to mount a tmpfs (mount says: {}; run as root)",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => testkit::missing(&format!("the mount command ({e})")),
        }
    }

    /// Fills the file system with `file` until a write fails for lack of
    /// space.
    fn fill(&self, file: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join(file)).unwrap();
        let block = [0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it now, gone once free.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn not_cached(s: &DeploymentStatus<'_>) -> bool {
    s.message.contains("not cached on the device")
        && s.message.contains("No space left on device")
        && s.message
            .contains("would not come back after an offline reboot")
}

#[tokio::test]
async fn a_full_state_dir_is_reported_until_a_write_succeeds() {
    let Some(env) = Env::start("disk-full").await else {
        return;
    };
    let Some(tmpfs) = Tmpfs::mount(&env.state_dir()) else {
        return;
    };
    // The cache directory exists (as after an earlier run); no room in it.
    std::fs::create_dir_all(env.state_dir().join("desired")).unwrap();
    tmpfs.fill("filler");
    let mut agent = env.spawn_agent();

    // Applied and running all the same, but the status says it is not cached.
    env.put("web", 1, vec![sleeper("main", "1")]).await;
    let s = env
        .wait_status("web", "Running at 1, not cached", |s| {
            s.phase == Phase::Healthy && s.revision == 1 && not_cached(s)
        })
        .await;
    eprintln!("status message: {}", s.message.as_str());
    env.wait_running(&[env.container_name("web", "main")]).await;
    // And the heartbeat says so for the device. Version 4, as every
    // heartbeat of an agent that lists DesiredState 1 to 5 (version 2
    // would do for the warnings alone).
    let h = env
        .wait_heartbeat("a warning about the cache", |v, h| {
            v == FORMAT_VERSION_4
                && h.warnings.iter().any(|w| {
                    w.contains("desired-state cache")
                        && w.contains("No space left on device")
                        && w.contains("web")
                })
        })
        .await;
    eprintln!("heartbeat warning: {}", h.warnings[0].as_str());
    assert!(!env.state_dir().join("desired/web").exists());
    assert_eq!(
        std::fs::read_dir(env.state_dir().join("desired"))
            .unwrap()
            .count(),
        0,
        "a failed write leaves no temp file taking space"
    );

    // Room again; the next write (a new revision) succeeds and both clear.
    std::fs::remove_file(env.state_dir().join("filler")).unwrap();
    env.put("web", 2, vec![sleeper("main", "2")]).await;
    let s = env
        .wait_status("web", "Running at 2, cached", |s| {
            s.phase == Phase::Healthy && s.revision == 2 && !not_cached(s)
        })
        .await;
    assert_eq!(s.message.as_str(), "", "no note left");
    // Without warnings, the rest of the heartbeat as it was.
    let cleared = env
        .wait_heartbeat("without warnings", |v, h| {
            v == FORMAT_VERSION_4 && h.warnings.is_empty()
        })
        .await;
    assert_eq!((&cleared.kernel, &cleared.boot_id), (&h.kernel, &h.boot_id));
    assert!(!cleared.boot_id.is_empty());
    let cached = std::fs::read(env.state_dir().join("desired/web")).unwrap();
    let desired = protocol::wire::decode::<protocol::DesiredState<'_>>(&cached).unwrap();
    assert_eq!(desired.revision, 2, "the cache holds the revision applied");

    // The agent lets go of the state_dir before it is unmounted.
    assert!(agent.terminate().is_some_and(|s| s.success()));
    drop(tmpfs);
}
