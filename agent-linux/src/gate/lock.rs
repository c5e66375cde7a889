//! The device's update lock: an advisory `flock(2)` on
//! `<lock_dir>/update.lock` (by default `/run/iot-agent/update.lock`).
//!
//! A workload that must not be cut mid-way holds the lock (a container
//! whose score asks for it gets `<lock_dir>` bind-mounted read-only at
//! `/run/iot-agent`; a host process opens the file directly). While anyone
//! holds it the agent does not stop or replace the deployment's containers.
//! The agent takes it with [`UpdateLock::try_acquire`] and keeps the
//! [`Guard`] while it applies, so a workload cannot take it half-way.
//!
//! `flock`, not a file's existence: the kernel drops a lock when the last
//! descriptor of its open file goes away, so a holder that crashes or is
//! killed releases it. The lock belongs to the open file, not the process:
//! children that inherit the descriptor hold it too (util-linux
//! `flock FILE cmd` keeps it until `cmd` exits too, unless `-o`).
//!
//! Across the bind mount (tested in `tests/update_lock.rs` with rootful
//! Podman 4): a container process that `flock`s
//! `/run/iot-agent/update.lock`, mounted read-only, holds it for the host
//! too (the agent gets [`Acquired::Held`], and `/proc/locks` names the
//! container's process by its host pid); `podman kill` (SIGKILL) releases
//! it at once. A read-only mount is enough: `flock` needs no write access,
//! and the container cannot replace or remove the file. (Debian's busybox
//! has no `flock` applet: a busybox-based workload needs its own.)
//!
//! Who holds it comes from `/proc/locks` (device and inode of the file)
//! and `/proc/<pid>/comm`, best effort: the pid there is the process that
//! took the lock, which may have exited while a child it passed the
//! descriptor to keeps holding it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in the lock directory.
pub const LOCK_FILE: &str = "update.lock";

/// The update lock of one device: `<dir>/update.lock`.
#[derive(Debug, Clone)]
pub struct UpdateLock {
    dir: PathBuf,
}

/// The answer of [`UpdateLock::try_acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// Nobody held it; the agent holds it now, until the guard is dropped.
    Free(Guard),
    /// Someone else holds it.
    Held(Holder),
}

/// The agent's hold on the update lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Guard {
    // Closing the descriptor releases the flock.
    _file: File,
}

/// Who holds the lock, when `/proc` tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// The process that took the lock (in the agent's pid namespace).
    pub pid: Option<u32>,
    /// Its command name (`/proc/<pid>/comm`), when it still runs.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    /// `pid 4242 (kiosk)`, `pid 4242`, or `another process`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.command) {
            (Some(pid), Some(c)) => write!(f, "pid {pid} ({c})"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            (None, _) => f.write_str("another process"),
        }
    }
}

/// Why the lock could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be created or opened.
    #[error("cannot open the update lock {}", path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `flock` failed for another reason than someone holding it.
    #[error("cannot lock the update lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl UpdateLock {
    /// The update lock in `dir` (the agent's `[update] lock_dir`).
    pub fn new(dir: PathBuf) -> Self {
        UpdateLock { dir }
    }

    /// The lock directory, which containers get at `/run/iot-agent`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/update.lock`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Creates the directory (0755) and the lock file (0644) if missing,
    /// so that workloads can open it read-only. An existing directory is
    /// kept as it is; an existing file is made readable by all if it is not.
    pub fn ensure(&self) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)?;
        let path = self.path();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)?;
        // The umask may have taken bits off the mode: a workload that runs
        // as another user must still be able to open it.
        let meta = file.metadata()?;
        if meta.permissions().mode() & 0o444 != 0o444 {
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// Takes the lock if nobody holds it (never waits). Creates the file
    /// first if it is missing.
    pub fn try_acquire(&self) -> Result<Acquired, LockError> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure().map_err(|source| LockError::Open {
                    path: path.clone(),
                    source,
                })?;
                File::open(&path).map_err(|source| LockError::Open {
                    path: path.clone(),
                    source,
                })?
            }
            Err(source) => return Err(LockError::Open { path, source }),
        };
        match file.try_lock() {
            Ok(()) => Ok(Acquired::Free(Guard { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(Acquired::Held(holder_of(&file))),
            Err(TryLockError::Error(source)) => Err(LockError::Lock { path, source }),
        }
    }
}

/// Who holds a lock on `file`, from `/proc/locks`; empty when unknown.
fn holder_of(file: &File) -> Holder {
    let Ok(meta) = file.metadata() else {
        return Holder::default();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Holder::default();
    };
    let id = FileId {
        major: libc::major(meta.dev()),
        minor: libc::minor(meta.dev()),
        inode: meta.ino(),
    };
    let pid = flock_holder(&locks, id, std::process::id());
    Holder {
        pid,
        command: pid.and_then(command_of),
    }
}

/// `/proc/<pid>/comm` without its newline.
fn command_of(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim_end_matches('\n');
    (!comm.is_empty()).then(|| comm.to_owned())
}

/// A file as `/proc/locks` names it: the device of its filesystem and its
/// inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    major: u32,
    minor: u32,
    inode: u64,
}

/// One granted lock of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockLine<'a> {
    class: &'a str,
    /// `None` for -1 (open file description locks have no owner pid).
    pid: Option<u32>,
    file: FileId,
}

/// Parses a `/proc/locks` line of a granted lock, e.g.
/// `1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF`. Lines of processes
/// waiting for a lock (`1: -> FLOCK ...`) and malformed ones give `None`.
/// The device is `major:minor` in hex, the inode in decimal.
fn parse_lock_line(line: &str) -> Option<LockLine<'_>> {
    let mut fields = line.split_whitespace();
    fields.next()?.strip_suffix(':')?;
    let class = fields.next()?;
    if class == "->" {
        return None;
    }
    let _kind = fields.next()?; // ADVISORY / MANDATORY / ...
    let _access = fields.next()?; // READ / WRITE / ...
    let pid = fields.next()?.parse::<i64>().ok()?;
    let mut id = fields.next()?.split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let inode = id.next()?.parse().ok()?;
    if id.next().is_some() {
        return None;
    }
    Some(LockLine {
        class,
        pid: u32::try_from(pid).ok().filter(|p| *p > 0),
        file: FileId {
            major,
            minor,
            inode,
        },
    })
}

/// The pid of a process holding a `flock` on `file`, other than `own`
/// (the agent may itself hold it through another descriptor).
fn flock_holder(locks: &str, file: FileId, own: u32) -> Option<u32> {
    locks
        .lines()
        .filter_map(parse_lock_line)
        .filter(|l| l.class == "FLOCK" && l.file == file)
        .filter_map(|l| l.pid)
        .find(|pid| *pid != own)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FILE: FileId = FileId {
        major: 0,
        minor: 0x2a,
        inode: 5_310_327,
    };

    #[test]
    fn parses_a_granted_flock() {
        let l = parse_lock_line("1: FLOCK  ADVISORY  WRITE 8237 00:2a:5310327 0 EOF").unwrap();
        assert_eq!(
            l,
            LockLine {
                class: "FLOCK",
                pid: Some(8237),
                file: FILE
            }
        );
        let l = parse_lock_line("12: POSIX  ADVISORY  READ 77 fe:01:42 0 EOF").unwrap();
        assert_eq!(l.class, "POSIX");
        assert_eq!(
            l.file,
            FileId {
                major: 0xfe,
                minor: 1,
                inode: 42
            }
        );
    }

    #[test]
    fn skips_waiters_and_malformed_lines() {
        assert_eq!(
            parse_lock_line("1: -> FLOCK  ADVISORY  WRITE 9 00:2a:5310327 0 EOF"),
            None
        );
        for bad in [
            "",
            "garbage",
            "1: FLOCK ADVISORY WRITE",
            "1: FLOCK ADVISORY WRITE x 00:2a:1 0 EOF",
            "1: FLOCK ADVISORY WRITE 9 00:2a 0 EOF",
            "1: FLOCK ADVISORY WRITE 9 zz:2a:1 0 EOF",
            "1: FLOCK ADVISORY WRITE 9 00:2a:1:4 0 EOF",
            "FLOCK ADVISORY WRITE 9 00:2a:1 0 EOF",
        ] {
            assert_eq!(parse_lock_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn open_file_description_locks_have_no_pid() {
        let l = parse_lock_line("3: OFDLCK ADVISORY  WRITE -1 00:2a:5310327 0 EOF").unwrap();
        assert_eq!(l.pid, None);
    }

    #[test]
    fn finds_the_flock_holder_of_this_file_only() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 10 00:2a:5310327 0 EOF
2: FLOCK  ADVISORY  WRITE 11 00:2b:5310327 0 EOF
3: FLOCK  ADVISORY  WRITE 12 00:2a:5310328 0 EOF
4: FLOCK  ADVISORY  WRITE 100 00:2a:5310327 0 EOF
4: -> FLOCK  ADVISORY  WRITE 13 00:2a:5310327 0 EOF
5: FLOCK  ADVISORY  READ 4242 00:2a:5310327 0 EOF
";
        // 100 is the agent itself; 13 only waits.
        assert_eq!(flock_holder(locks, FILE, 100), Some(4242));
        assert_eq!(flock_holder(locks, FILE, 1), Some(100));
        assert_eq!(flock_holder("", FILE, 1), None);
    }

    #[test]
    fn holder_reads_like_a_status_message() {
        let h = Holder {
            pid: Some(4242),
            command: Some("kiosk".into()),
        };
        assert_eq!(h.to_string(), "pid 4242 (kiosk)");
        assert_eq!(
            Holder {
                pid: Some(7),
                command: None
            }
            .to_string(),
            "pid 7"
        );
        assert_eq!(Holder::default().to_string(), "another process");
    }

    #[test]
    fn ensure_creates_the_directory_and_a_readable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = UpdateLock::new(tmp.path().join("run/iot-agent"));
        lock.ensure().unwrap();
        lock.ensure().unwrap();
        let dir = std::fs::metadata(lock.dir()).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.permissions().mode() & 0o755, 0o755);
        let file = std::fs::metadata(lock.path()).unwrap();
        assert!(file.is_file());
        assert_eq!(file.permissions().mode() & 0o644, 0o644);
    }

    #[test]
    fn the_agent_takes_it_when_free_and_a_second_try_sees_it_held() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = UpdateLock::new(tmp.path().to_path_buf());
        // The file is created on first use.
        let Acquired::Free(guard) = lock.try_acquire().unwrap() else {
            panic!("a fresh lock is free")
        };
        // flock conflicts between descriptors, even in one process; the
        // holder is this process, which flock_holder leaves out.
        match lock.try_acquire().unwrap() {
            Acquired::Held(h) => assert_eq!(h.pid, None, "{h:?}"),
            Acquired::Free(_) => panic!("held by the guard"),
        }
        drop(guard);
        assert!(matches!(lock.try_acquire().unwrap(), Acquired::Free(_)));
    }

    #[test]
    fn a_lock_directory_that_is_a_file_is_an_open_error() {
        let tmp = tempfile::tempdir().unwrap();
        let not_a_dir = tmp.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let err = UpdateLock::new(not_a_dir).try_acquire().unwrap_err();
        assert!(matches!(err, LockError::Open { .. }), "{err:?}");
    }
}
