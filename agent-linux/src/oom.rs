//! Out-of-memory kills as the kernel recorded them, for the containers
//! Podman does not say were OOM-killed.
//!
//! Why: before 5.0, Podman's inspect never sets `State.OOMKilled` (podman
//! #13102, fixed by #21523), so on Debian 12's Podman 4.3.1 an
//! out-of-memory kill looks like any `SIGKILL`: exit code 137. The kernel says it for sure:
//! each kill writes one record to its log, `oom-kill:constraint=...,
//! oom_memcg=<cgroup>,task_memcg=<cgroup>,...`, naming the container's
//! cgroup, `libpod-<full id>` (cgroupfs manager) or `libpod-<full
//! id>.scope`, maybe with a `/container` child (systemd manager), under
//! cgroup v1 and v2 alike (the one-line format since Linux 4.19). Only
//! kernel records count (facility 0): a process that writes to
//! `/dev/kmsg` is given the user facility, so a container cannot forge one.
//!
//! Cost: the reconciler asks only about a container that died by
//! `SIGKILL` (exit 137) and that Podman did not mark `OOMKilled`, once per
//! death ([`OomKills`] keeps the answer per container id and `FinishedAt`).
//! One question reads the whole ring buffer once, one record per `read`:
//! bounded by the buffer's size (`CONFIG_LOG_BUF_SHIFT`); here, with a full
//! buffer (`dmesg | wc -c`: 128 KB, 2 200 records, 143 KB as read), one
//! scan takes 1.7 ms (2 cores, debug build; the last unit test prints it),
//! so it runs inline in the pass. A container the agent restarts keeps its
//! id and cgroup, so a record counts for one death only: the next death of
//! that container looks only at records after it (by sequence number).
//!
//! When `/dev/kmsg` cannot be read (the agent not root, `dmesg_restrict`
//! without `CAP_SYSLOG`, the agent in a container), the answer is
//! Podman's (`Error` on Podman 4), and this is logged once, at debug.
//! What this cannot tell: an agent restarted after a container was
//! OOM-killed, restarted by the agent and then killed by another
//! `SIGKILL` attributes the old record to the new death (the sequence
//! numbers seen live in memory); and, like Podman 5 and Kubernetes, a
//! kill of any process of the container counts, not only of its first.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::log::Chain;

/// The kernel log device.
pub const KMSG: &str = "/dev/kmsg";

/// The longest record `/dev/kmsg` returns (`CONSOLE_EXT_LOG_MAX`); a
/// smaller buffer makes `read` fail with `EINVAL`.
const RECORD_MAX: usize = 8192;

/// Records read at most in one scan: the buffer is bounded, but a kernel
/// that logs faster than the agent reads would otherwise keep it reading.
const MAX_RECORDS: usize = 1 << 16;

/// Whether the kernel recorded an out-of-memory kill in the cgroup of
/// container `container_id` (Podman's full 64-hex id), from [`KMSG`].
pub fn killed_by_oom(container_id: &str) -> io::Result<bool> {
    Ok(KernelLog::device()
        .last_oom_kill(container_id, None)?
        .is_some())
}

/// A kernel log to read: [`KMSG`], or another path in tests.
#[derive(Debug, Clone)]
pub struct KernelLog {
    path: PathBuf,
}

impl KernelLog {
    /// The kernel's: [`KMSG`].
    pub fn device() -> KernelLog {
        KernelLog::at(KMSG)
    }

    /// The log at `path`, read as `/dev/kmsg` is.
    pub fn at(path: impl Into<PathBuf>) -> KernelLog {
        KernelLog { path: path.into() }
    }

    /// The sequence number of the last out-of-memory kill record naming
    /// `container_id`'s cgroup, among the records after `after` (all when
    /// `None`); `None` when there is none.
    pub fn last_oom_kill(&self, container_id: &str, after: Option<u64>) -> io::Result<Option<u64>> {
        // Non-blocking: at the end of the buffer `read` says `WouldBlock`
        // instead of waiting for the next record. `libc` is tokio's.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)?;
        scan(file, container_id, after)
    }
}

/// Reads records from `log` (one per `read`, as `/dev/kmsg` gives them)
/// to its end: the last OOM kill of `container_id` after `after`.
fn scan(mut log: impl Read, container_id: &str, after: Option<u64>) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; RECORD_MAX];
    let mut last = None;
    for _ in 0..MAX_RECORDS {
        let n = match log.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // The record we were at was overwritten: the next read goes
            // on from the oldest one left.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(seq) = oom_kill_seq(&buf[..n], container_id)
            && after.is_none_or(|a| seq > a)
        {
            last = Some(last.map_or(seq, |l: u64| l.max(seq)));
        }
    }
    Ok(last)
}

/// The sequence number of `record` (`pri,seq,usec,flags;message\n` and
/// maybe ` KEY=value` lines) when it is the kernel's OOM kill record for
/// the cgroup of `container_id`.
fn oom_kill_seq(record: &[u8], container_id: &str) -> Option<u64> {
    let record = std::str::from_utf8(record).ok()?;
    let (prefix, rest) = record.split_once(';')?;
    let mut fields = prefix.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    // Facility 0 (kernel); user space cannot log with it.
    if priority >> 3 != 0 {
        return None;
    }
    let message = rest.split('\n').next()?;
    let body = message.strip_prefix("oom-kill:")?;
    body.split(',')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| matches!(k, "oom_memcg" | "task_memcg") && names_container(v, container_id))
        .then_some(seq)
}

/// Whether cgroup `path` is (or is under) the cgroup of `container_id`:
/// a component `libpod-<id>` or `libpod-<id>.scope`, whole.
fn names_container(path: &str, container_id: &str) -> bool {
    !container_id.is_empty()
        && path.split('/').any(|part| {
            part.strip_prefix("libpod-")
                .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
                == Some(container_id)
        })
}

/// Logged once per process: the kernel log is unreadable.
static UNREADABLE_LOGGED: AtomicBool = AtomicBool::new(false);

/// What one death was found to be.
#[derive(Debug, Clone)]
struct Death {
    /// Podman's `State.FinishedAt` of that death.
    finished_at: String,
    /// The kernel recorded an OOM kill for it.
    oom: bool,
    /// The last OOM kill record of this container already counted.
    last_seq: Option<u64>,
}

/// The kernel's answer, per container and death: asked once per death.
#[derive(Debug)]
pub struct OomKills {
    log: KernelLog,
    /// By container id.
    deaths: BTreeMap<String, Death>,
}

impl OomKills {
    /// Asks `log`.
    pub fn new(log: KernelLog) -> OomKills {
        OomKills {
            log,
            deaths: BTreeMap::new(),
        }
    }

    /// Whether container `id`, which died by `SIGKILL` at `finished_at`
    /// (Podman's `State.FinishedAt`), was killed for want of memory. False
    /// when the kernel log cannot be read.
    pub fn killed(&mut self, id: &str, finished_at: &str) -> bool {
        let before = self.deaths.get(id);
        if let Some(d) = before
            && d.finished_at == finished_at
        {
            return d.oom;
        }
        let after = before.and_then(|d| d.last_seq);
        let found = match self.log.last_oom_kill(id, after) {
            Ok(found) => found,
            Err(e) => {
                if !UNREADABLE_LOGGED.swap(true, Ordering::Relaxed) {
                    crate::debug!(
                        "cannot read the kernel log {} ({}): out-of-memory kills are reported \
                         only when Podman says so (Podman 5)",
                        self.log.path.display(),
                        Chain(&e)
                    );
                }
                None
            }
        };
        self.deaths.insert(
            id.to_string(),
            Death {
                finished_at: finished_at.to_string(),
                oom: found.is_some(),
                last_seq: found.or(after),
            },
        );
        found.is_some()
    }

    /// Forgets the containers whose id `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.deaths.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "f48dd27ec823f249d395eb66777d6cf835aa2c6c9775e9b206ab43000e4b7d37";
    const OTHER: &str = "7f90659c94ec4514cdf250e6696942a942becb19f210358afbc5e07a618c0219";

    /// The record as the kernel writes it, cgroup `memcg` for `id`.
    fn record(pri: u32, seq: u64, oom_memcg: &str, task_memcg: &str) -> String {
        format!(
            "{pri},{seq},26359451224,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),\
             cpuset=libpod-{ID},mems_allowed=0,oom_memcg={oom_memcg},task_memcg={task_memcg},\
             task=sh,pid=12587,uid=0\n"
        )
    }

    #[test]
    fn a_cgroupfs_record_names_its_container() {
        let cg = format!("/libpod_parent/libpod-{ID}");
        assert_eq!(
            oom_kill_seq(record(6, 37758, &cg, &cg).as_bytes(), ID),
            Some(37758)
        );
    }

    #[test]
    fn a_systemd_scope_record_names_its_container() {
        let scope = format!("/machine.slice/libpod-{ID}.scope");
        let child = format!("{scope}/container");
        assert_eq!(
            oom_kill_seq(record(6, 9, &scope, &child).as_bytes(), ID),
            Some(9)
        );
        // Either field is enough (the limit may sit on a parent).
        assert_eq!(
            oom_kill_seq(record(6, 9, "/machine.slice", &child).as_bytes(), ID),
            Some(9)
        );
        // With continuation lines (` KEY=value`) after the message.
        let r = record(6, 9, &scope, &scope) + " SUBSYSTEM=memory\n";
        assert_eq!(oom_kill_seq(r.as_bytes(), ID), Some(9));
    }

    #[test]
    fn another_container_or_a_prefix_of_the_id_is_not_it() {
        let cg = format!("/libpod_parent/libpod-{OTHER}");
        assert_eq!(oom_kill_seq(record(6, 1, &cg, &cg).as_bytes(), ID), None);
        let cg = format!("/libpod_parent/libpod-{ID}");
        // A prefix of the id asked about, or the id a prefix of the record's.
        assert_eq!(
            oom_kill_seq(record(6, 1, &cg, &cg).as_bytes(), &ID[..12]),
            None
        );
        let longer = format!("/libpod_parent/libpod-{ID}0");
        assert_eq!(
            oom_kill_seq(record(6, 1, &longer, &longer).as_bytes(), ID),
            None
        );
        // conmon's scope, and the id only in cpuset= (not a memory cgroup).
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(
            oom_kill_seq(record(6, 1, &conmon, &conmon).as_bytes(), ID),
            None
        );
        assert_eq!(oom_kill_seq(record(6, 1, "/", "/").as_bytes(), ID), None);
        assert_eq!(oom_kill_seq(record(6, 1, &cg, &cg).as_bytes(), ""), None);
    }

    #[test]
    fn only_the_kernel_facility_counts() {
        let cg = format!("/libpod_parent/libpod-{ID}");
        // 14 = user.info: written to /dev/kmsg by a process.
        assert_eq!(oom_kill_seq(record(14, 1, &cg, &cg).as_bytes(), ID), None);
    }

    #[test]
    fn garbage_is_no_record() {
        let cg = format!("/libpod_parent/libpod-{ID}");
        for junk in [
            String::new(),
            "no prefix".to_string(),
            format!("6,x,1,-;oom-kill:oom_memcg={cg}"),
            format!("6,1,1,-;Memory cgroup out of memory: oom_memcg={cg}"),
            format!("6,1,1,-;oom-kill:oom_memcg{cg}"),
            format!("6,1,1,-;something\n oom-kill:oom_memcg={cg}"),
        ] {
            assert_eq!(oom_kill_seq(junk.as_bytes(), ID), None, "{junk:?}");
        }
        assert_eq!(oom_kill_seq(&[0xff, b';', b'6'], ID), None);
    }

    /// Gives one record per `read`, as `/dev/kmsg` does, with its errors.
    struct Kmsg(Vec<io::Result<String>>);

    impl Read for Kmsg {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let r = self.0.remove(0)?;
            buf[..r.len()].copy_from_slice(r.as_bytes());
            Ok(r.len())
        }
    }

    #[test]
    fn a_scan_reads_to_the_end_past_overwritten_records() {
        let cg = format!("/libpod_parent/libpod-{ID}");
        let log = || {
            Kmsg(vec![
                Ok("6,1,1,-;hello\n".into()),
                Ok(record(6, 2, &cg, &cg)),
                Err(io::ErrorKind::BrokenPipe.into()),
                Ok(record(6, 5, &cg, &cg)),
                Ok("6,6,1,-;bye\n".into()),
            ])
        };
        assert_eq!(scan(log(), ID, None).unwrap(), Some(5));
        assert_eq!(scan(log(), ID, Some(2)).unwrap(), Some(5));
        assert_eq!(scan(log(), ID, Some(5)).unwrap(), None);
        assert_eq!(scan(log(), OTHER, None).unwrap(), None);
        let broken = Kmsg(vec![Err(io::ErrorKind::PermissionDenied.into())]);
        assert!(scan(broken, ID, None).is_err());
    }

    /// Each death counts the records after the last one counted; the same
    /// death is not asked about twice.
    #[test]
    fn one_answer_per_death() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        let cg = format!("/libpod_parent/libpod-{ID}");
        // A regular file gives all records in one read: one per file here.
        std::fs::write(&path, record(6, 7, &cg, &cg)).unwrap();
        let mut kills = OomKills::new(KernelLog::at(&path));
        assert!(kills.killed(ID, "t1"));
        std::fs::remove_file(&path).unwrap();
        // Cached: the log is not read again (it is gone).
        assert!(kills.killed(ID, "t1"));
        // A later death with no new record: not OOM (an unreadable log
        // is Podman's answer too).
        std::fs::write(&path, record(6, 7, &cg, &cg)).unwrap();
        assert!(!kills.killed(ID, "t2"));
        std::fs::write(&path, record(6, 8, &cg, &cg)).unwrap();
        assert!(kills.killed(ID, "t3"));
        std::fs::remove_file(&path).unwrap();
        assert!(!kills.killed(OTHER, "t1"));
        kills.retain(|id| id != ID);
        assert!(kills.deaths.keys().eq([OTHER]));
    }

    /// This machine's kernel log, when readable: a scan ends (by itself,
    /// at the end of the buffer) and finds no kill of a container that
    /// never existed. Prints how long the scan took (the module's figure).
    #[test]
    fn the_real_kernel_log_is_read_to_its_end() {
        let started = std::time::Instant::now();
        match killed_by_oom(&"0".repeat(64)) {
            Ok(found) => {
                assert!(!found);
                eprintln!("one scan of {KMSG}: {:?}", started.elapsed());
            }
            Err(e) => eprintln!("skipped: cannot read {KMSG}: {e}"),
        }
    }
}
