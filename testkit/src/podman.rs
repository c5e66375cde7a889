//! A real Podman API service per test, on a temporary unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{find_binary, missing, repo_root, wait_until};

/// `podman system service` listening on a socket in a temp dir, using the
/// project's `deploy/podman/containers.conf`. Killed on drop. Storage is the
/// machine's default, so images imported once are shared between tests;
/// tests keep apart by device id (the agent labels what it owns).
pub struct PodmanService {
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PodmanService {
    /// Starts the service. `None` when Podman is missing outside CI.
    pub fn start() -> Option<PodmanService> {
        let Some(binary) = find_binary("PODMAN_BIN", "podman") else {
            return missing("podman is not installed");
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut svc = PodmanService {
            binary,
            dir,
            child: None,
        };
        let child = svc
            .command()
            .args(["system", "service", "--time=0"])
            .arg(svc.uri())
            // Podman 4's conmon leaves an `oom` file in the service's working
            // directory after an out-of-memory kill (podman #13102): keep it
            // out of the source tree.
            .current_dir(svc.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn podman system service");
        svc.child = Some(child);
        let sock = svc.socket_path();
        let up = wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        assert!(up, "podman service did not listen on {}", sock.display());
        Some(svc)
    }

    /// The containers.conf every Podman process in tests uses.
    pub fn containers_conf() -> PathBuf {
        repo_root().join("deploy/podman/containers.conf")
    }

    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `unix://<socket>`, as the agent's `[podman] socket` takes it.
    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// A `podman` command with the project's containers.conf, for test setup
    /// and assertions (`podman ps`, `podman inspect`, ...).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("CONTAINERS_CONF", Self::containers_conf());
        cmd
    }

    /// Runs `podman ARGS` and returns stdout; panics with stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports a busybox-static image as `name` (e.g. `localhost/busybox:test`)
    /// unless it exists. No registry needed: the rootfs is the host's
    /// `/bin/busybox` plus applet links, piped into `podman import`.
    pub fn ensure_busybox_image(&self, name: &str) {
        if self
            .command()
            .args(["image", "exists", name])
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        let busybox = find_binary("BUSYBOX_BIN", "busybox")
            .filter(|p| is_static(p))
            .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()))
            .expect(
                "busybox-static is needed to build test images (apt-get install busybox-static)",
            );
        let root = tempfile::tempdir().expect("temp dir");
        build_busybox_rootfs(&busybox, root.path());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tar");
        let status = self
            .command()
            .args(["import", "--change", "CMD [\"/bin/sh\"]", "-", name])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .stdout(Stdio::null())
            .status()
            .expect("podman import");
        let tar_ok = tar.wait().is_ok_and(|s| s.success());
        assert!(tar_ok && status.success(), "podman import of {name} failed");
    }

    /// The running containers carrying label `key=value`, as (name, id),
    /// sorted by name.
    pub fn running_labelled(&self, key: &str, value: &str) -> Vec<(String, String)> {
        let out = self.run(&[
            "ps",
            "--filter",
            &format!("label={key}={value}"),
            "--format",
            "{{.Names}} {{.ID}}",
        ]);
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect();
        v.sort();
        v
    }

    /// Removes every container carrying label `key=value` (test cleanup).
    pub fn remove_labelled(&self, key: &str, value: &str) {
        let ids = self.run(&["ps", "-aq", "--filter", &format!("label={key}={value}")]);
        for id in ids.split_whitespace() {
            let _ = self.command().args(["rm", "-f", "-t", "0", id]).output();
        }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_static(p: &Path) -> bool {
    Command::new("ldd")
        .arg(p)
        .output()
        .map(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
        })
        .unwrap_or(true)
}

/// A minimal rootfs: busybox and links for the applets tests use.
pub(crate) fn build_busybox_rootfs(busybox: &Path, root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in [
        "sh", "httpd", "echo", "sleep", "cat", "ls", "env", "true", "false", "nc", "wget", "mkdir",
        "touch", "id", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    for d in ["tmp", "www", "data", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("www/index.html"), "hello from busybox\n").expect("index");
}
