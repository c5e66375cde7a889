//! The on-disk cache of the last desired state of every deployment, so a
//! board that reboots without network brings its workloads back.
//!
//! One file per deployment under `<state_dir>/desired/`, named by the
//! deployment (a key token, so always a safe file name), holding the value
//! exactly as it came from NATS. Writes are atomic: temp file, fsync,
//! rename, fsync of the directory.
//!
//! Those fsyncs take tens to hundreds of milliseconds on an SD card, and the
//! agent runs on one thread, so the agent hands its writes to a
//! [`CacheWriter`], which makes them on a thread of its own.
//!
//! A write can fail (a full `state_dir`) while the deployment runs: the
//! writer keeps a [`CacheHealth`], which deployments the cache does not hold
//! as last applied, so the agent can say so in their status and in its
//! heartbeat, until a later write for them succeeds. A failed write is tried
//! again every [`RETRY_AFTER`] (a full disk may be freed without anything
//! else changing), unless a newer change of that deployment replaces it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::limits::MAX_STRING_LEN;
use protocol::status::clip_message;
use protocol::{DeploymentStatus, Text};
use tokio::sync::watch;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// What a store other than the desired-state cache holds, for its log
    /// lines (`None`: the desired state, whose messages users know).
    holds: Option<&'static str>,
}

impl Cache {
    /// Opens (creating) `<state_dir>/desired`.
    pub fn open(state_dir: &Path) -> io::Result<Cache> {
        Self::open_store(state_dir, "desired", None)
    }

    /// Opens (creating) `<state_dir>/healthy`: per deployment the last
    /// value that was `Healthy` on this device (see [`crate::rollback`]).
    pub fn open_healthy(state_dir: &Path) -> io::Result<Cache> {
        Self::open_store(state_dir, "healthy", Some("last healthy value"))
    }

    /// Opens (creating) `<state_dir>/failed`: per deployment the revision
    /// that failed and was rolled back (see [`crate::rollback`]).
    pub fn open_failed(state_dir: &Path) -> io::Result<Cache> {
        Self::open_store(state_dir, "failed", Some("failed-revision marker"))
    }

    /// The admitted store's directory under `state_dir`.
    pub const ADMITTED: &'static str = "admitted";

    /// Opens (creating) `<state_dir>/admitted`: per deployment the value
    /// the update gate last let through, which the reconciler runs (see
    /// [`crate::gate`]).
    pub fn open_admitted(state_dir: &Path) -> io::Result<Cache> {
        Self::open_store(state_dir, Self::ADMITTED, Some("admitted value"))
    }

    /// Opens (creating) `<state_dir>/held`: per deployment the change the
    /// update gate holds back (an empty file: a delete; see
    /// [`crate::gate`]).
    pub fn open_held(state_dir: &Path) -> io::Result<Cache> {
        Self::open_store(state_dir, "held", Some("held change"))
    }

    /// One file per deployment under `<state_dir>/<name>`, with the same
    /// atomic writes.
    fn open_store(state_dir: &Path, name: &str, holds: Option<&'static str>) -> io::Result<Cache> {
        let dir = state_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Cache { dir, holds })
    }

    /// Every cached deployment and its raw value. Files that are not valid
    /// deployment names (temp files of an interrupted write) are skipped.
    pub fn load_all(&self) -> io::Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if protocol::keys::validate_deployment_name(&name).is_err() {
                continue;
            }
            out.insert(name, std::fs::read(entry.path())?);
        }
        Ok(out)
    }

    /// Stores `value` for `deployment`, atomically; unchanged values are not
    /// rewritten (flash wear).
    pub fn store(&self, deployment: &str, value: &[u8]) -> io::Result<()> {
        let path = self.dir.join(deployment);
        if std::fs::read(&path).is_ok_and(|old| old == value) {
            return Ok(());
        }
        let tmp = self.dir.join(format!(".{deployment}.tmp"));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(value)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            // On a full disk a partial temp file holds space the next write
            // needs.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path)?;
        self.sync_dir()
    }

    /// Whether some desired state of `deployment` is on disk.
    pub fn holds(&self, deployment: &str) -> bool {
        self.dir.join(deployment).is_file()
    }

    /// Forgets `deployment`.
    pub fn remove(&self, deployment: &str) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(deployment)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Why the cache does not hold a deployment as it was last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFailure {
    /// Its newest desired state could not be written.
    NotStored {
        /// The write's error.
        error: String,
        /// An older desired state of it is on disk (and would come back).
        older_on_disk: bool,
    },
    /// It was deleted but could not be dropped from the cache.
    NotRemoved {
        /// The removal's error.
        error: String,
    },
}

impl CacheFailure {
    fn error(&self) -> &str {
        match self {
            CacheFailure::NotStored { error, .. } | CacheFailure::NotRemoved { error } => error,
        }
    }
}

impl std::fmt::Display for CacheFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheFailure::NotStored {
                error,
                older_on_disk: false,
            } => write!(
                f,
                "not cached on the device: {error} (would not come back after an offline reboot)"
            ),
            CacheFailure::NotStored {
                error,
                older_on_disk: true,
            } => write!(
                f,
                "not cached on the device: {error} (an offline reboot would bring back an older revision)"
            ),
            CacheFailure::NotRemoved { error } => write!(
                f,
                "still cached on the device: {error} (would come back after an offline reboot)"
            ),
        }
    }
}

/// The deployments whose last cache write failed, and why. Empty when the
/// cache holds what was last applied (as far as writes were made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheHealth {
    failing: BTreeMap<String, CacheFailure>,
}

impl CacheHealth {
    /// Whether every write succeeded.
    pub fn is_ok(&self) -> bool {
        self.failing.is_empty()
    }

    /// Why `deployment` is not cached as last applied, if it is not.
    pub fn failure(&self, deployment: &str) -> Option<&CacheFailure> {
        self.failing.get(deployment)
    }

    /// Deployments whose failure differs between `self` and `other`.
    pub fn changed_since<'a>(&'a self, other: &'a CacheHealth) -> BTreeSet<&'a str> {
        let mut out = BTreeSet::new();
        for (d, f) in &self.failing {
            if other.failing.get(d) != Some(f) {
                out.insert(d.as_str());
            }
        }
        for d in other.failing.keys() {
            if !self.failing.contains_key(d) {
                out.insert(d.as_str());
            }
        }
        out
    }

    /// The device-level warning for the heartbeat, if any write failed:
    /// the first error and the deployments it concerns.
    pub fn warning(&self) -> Option<String> {
        let (_, first) = self.failing.iter().next()?;
        let names: Vec<&str> = self.failing.keys().map(String::as_str).collect();
        Some(format!(
            "cannot write the desired-state cache in state_dir ({}): after an offline reboot {} deployment(s) would not be restored as last applied: {}",
            first.error(),
            names.len(),
            names.join(", ")
        ))
    }

    /// `status` with `deployment`'s failure, if any, at the end of its
    /// message; the failure is kept whole, the message before it is clipped
    /// when both do not fit.
    pub fn note_on(
        &self,
        deployment: &str,
        mut status: DeploymentStatus<'static>,
    ) -> DeploymentStatus<'static> {
        let Some(failure) = self.failing.get(deployment) else {
            return status;
        };
        let note = failure.to_string();
        let note = clip_message(&note);
        let message = if status.message.is_empty() {
            note.to_string()
        } else {
            let room = MAX_STRING_LEN.saturating_sub(note.len() + 2);
            let mut end = room.min(status.message.len());
            while !status.message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}; {note}", &status.message[..end])
        };
        // A note of the bound's whole length leaves no room for "; ":
        // clipped rather than over the bound, which would not encode.
        status.message = Text::owned(clip_message(&message).to_string());
        status
    }

    /// Takes in the result of a write for `deployment`; whether anything
    /// changed.
    fn record(&mut self, deployment: &str, result: Result<(), CacheFailure>) -> bool {
        match result {
            Ok(()) => self.failing.remove(deployment).is_some(),
            Err(f) => {
                if self.failing.get(deployment) == Some(&f) {
                    return false;
                }
                self.failing.insert(deployment.to_string(), f);
                true
            }
        }
    }
}

/// Writes to a [`Cache`] on a thread of its own, so the caller never waits
/// for the disk. Per deployment only the newest change not yet on disk is
/// kept (a superseded value never reaches the flash) and changes land in
/// the order they were made; [`CacheWriter::close`] writes what is left.
/// Failures are logged with the deployment's name and kept in a
/// [`CacheHealth`] ([`CacheWriter::health`]) until a later write for that
/// deployment succeeds.
#[derive(Debug, Clone)]
pub struct CacheWriter {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Debug)]
struct Shared {
    cache: Cache,
    queue: Mutex<Queue>,
    /// Signalled when work arrives, when a batch is on disk and on close.
    changed: Condvar,
    /// What the writes so far left undone; changed only when it changes.
    health: watch::Sender<CacheHealth>,
    /// How long a failed write waits to be tried again.
    retry_after: Duration,
}

#[derive(Debug, Default)]
struct Queue {
    pending: BTreeMap<String, Op>,
    /// Changes whose write failed, tried again after [`RETRY_AFTER`]; a
    /// newer change of the same deployment drops its entry.
    failed: BTreeMap<String, Op>,
    /// When `failed` is next tried: set when it gains its first entry, so
    /// a stream of other changes does not keep putting the retry off.
    retry_at: Option<Instant>,
    /// A batch taken from `pending` is being written: a flush must wait for
    /// it, and a newer change for one of its deployments waits in `pending`
    /// until it is done, which keeps each deployment's changes in order.
    writing: bool,
    /// A thread drains `pending`; without one, callers write themselves.
    running: bool,
    closing: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Store(Bytes),
    Remove,
}

/// How long a failed cache write waits before it is tried again: often
/// enough that a freed disk clears the warning within a heartbeat or two,
/// rarely enough that a disk that stays full costs nothing noticeable.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The writer thread touches only a few pages of stack; the default 2 MiB
/// would be address space for nothing on a small board.
const WRITER_STACK: usize = 128 * 1024;

impl CacheWriter {
    /// Starts the writer thread for `cache`. When no thread can be started
    /// the writes are made by the caller, as slow as before but never lost.
    pub fn start(cache: Cache) -> CacheWriter {
        Self::start_retrying_after(cache, RETRY_AFTER)
    }

    /// [`Self::start`] with failed writes tried again after `retry_after`.
    pub fn start_retrying_after(cache: Cache, retry_after: Duration) -> CacheWriter {
        let shared = Arc::new(Shared {
            cache,
            retry_after,
            queue: Mutex::new(Queue {
                running: true,
                ..Queue::default()
            }),
            changed: Condvar::new(),
            health: watch::Sender::new(CacheHealth::default()),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cache-writer".into())
            .stack_size(WRITER_STACK)
            .spawn(move || drain(&worker));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                crate::warn!(
                    "cannot start the cache writer thread ({e}); writing the cache inline"
                );
                shared.lock().running = false;
                None
            }
        };
        CacheWriter {
            shared,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    /// Follows the cache's health: changes only when a deployment starts or
    /// stops failing (or fails differently).
    pub fn health(&self) -> watch::Receiver<CacheHealth> {
        self.shared.health.subscribe()
    }

    /// Queues `value` as `deployment`'s cached desired state.
    pub fn store(&self, deployment: &str, value: Bytes) {
        self.enqueue(deployment, Op::Store(value));
    }

    /// Queues dropping `deployment` from the cache.
    pub fn remove(&self, deployment: &str) {
        self.enqueue(deployment, Op::Remove);
    }

    fn enqueue(&self, deployment: &str, op: Op) {
        let mut q = self.shared.lock();
        q.failed.remove(deployment);
        if q.failed.is_empty() {
            q.retry_at = None;
        }
        q.pending.insert(deployment.to_string(), op);
        if q.running {
            self.shared.changed.notify_all();
            return;
        }
        // No thread (it could not start, died, or was closed): write here,
        // including whatever it left behind or failed to write before, so
        // nothing is lost or reordered.
        write_inline(&self.shared, &mut q);
    }

    /// Waits until every change queued so far is on disk.
    pub fn flush(&self) {
        let mut q = self.shared.lock();
        while q.running && (q.writing || !q.pending.is_empty()) {
            q = self.shared.wait(q);
        }
    }

    /// Writes every queued change and stops the thread; changes queued
    /// later are written by the caller. Blocks until done: at shutdown, so a
    /// reboot without network restores what NATS last said.
    pub fn close(&self) {
        {
            let mut q = self.shared.lock();
            q.closing = true;
            self.shared.changed.notify_all();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            crate::error!("the cache writer thread failed");
        }
        // Left behind only by a thread that died mid-way, plus one last try
        // of what failed before (the disk may have room by now).
        let mut q = self.shared.lock();
        write_inline(&self.shared, &mut q);
    }
}

impl Shared {
    // Nothing panics while holding the lock; should something still do so,
    // the queue is consistent enough to keep writing.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, q: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed.wait(q).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a change or until `timeout`.
    fn wait_timeout<'a>(
        &self,
        q: MutexGuard<'a, Queue>,
        timeout: Duration,
    ) -> MutexGuard<'a, Queue> {
        self.changed
            .wait_timeout(q, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// Writes what is pending and what failed before, on the caller's thread
/// (with the lock held: there is no writer thread to race).
fn write_inline(shared: &Shared, q: &mut Queue) {
    let mut batch = std::mem::take(&mut q.failed);
    batch.append(&mut q.pending);
    q.failed = write_all(shared, batch);
}

/// The writer thread: takes everything pending, writes it without holding
/// the lock (so the agent can queue meanwhile), repeats until closed.
fn drain(shared: &Shared) {
    let _dead = Dead(shared);
    let mut q = shared.lock();
    loop {
        let now = Instant::now();
        if !q.failed.is_empty() && q.retry_at.is_some_and(|at| at <= now) {
            // Due: retried with whatever is pending. Newer changes already
            // dropped their entries in `failed` (enqueue); `append` lets a
            // pending change win all the same.
            let mut batch = std::mem::take(&mut q.failed);
            batch.append(&mut q.pending);
            q.pending = batch;
            q.retry_at = None;
        }
        if q.pending.is_empty() {
            if q.closing {
                // Under the same lock as the emptiness check, so a change
                // queued from now on is written by its caller, not stranded.
                q.running = false;
                shared.changed.notify_all();
                return;
            }
            q = match q.retry_at.filter(|_| !q.failed.is_empty()) {
                None => shared.wait(q),
                Some(at) => shared.wait_timeout(q, at.saturating_duration_since(now)),
            };
            continue;
        }
        let batch = std::mem::take(&mut q.pending);
        q.writing = true;
        drop(q);
        let failed = write_all(shared, batch);
        q = shared.lock();
        for (deployment, op) in failed {
            // A change queued while this batch was written supersedes it.
            if !q.pending.contains_key(&deployment) {
                q.failed.insert(deployment, op);
            }
        }
        if !q.failed.is_empty() && q.retry_at.is_none() {
            q.retry_at = Some(Instant::now() + shared.retry_after);
        }
        q.writing = false;
        shared.changed.notify_all();
    }
}

/// Should the writer thread panic, hands the writing to the callers rather
/// than leaving `flush` and `close` waiting forever.
struct Dead<'a>(&'a Shared);

impl Drop for Dead<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::error!("the cache writer thread failed; writing the cache inline from now on");
            let mut q = self.0.lock();
            q.running = false;
            q.writing = false;
            self.0.changed.notify_all();
        }
    }
}

/// Writes `batch`; returns the changes that failed. A failure is logged
/// when it starts or changes, not at every retry.
fn write_all(shared: &Shared, batch: BTreeMap<String, Op>) -> BTreeMap<String, Op> {
    let cache = &shared.cache;
    let mut failed = BTreeMap::new();
    for (deployment, op) in batch {
        let result = match &op {
            Op::Store(value) => {
                cache
                    .store(&deployment, value)
                    .map_err(|e| CacheFailure::NotStored {
                        error: e.to_string(),
                        older_on_disk: cache.holds(&deployment),
                    })
            }
            Op::Remove => cache
                .remove(&deployment)
                .map_err(|e| CacheFailure::NotRemoved {
                    error: e.to_string(),
                }),
        };
        let failure = result.as_ref().err().cloned();
        if result.is_err() {
            failed.insert(deployment.clone(), op);
        }
        let changed = shared
            .health
            .send_if_modified(|h| h.record(&deployment, result));
        match (failure, cache.holds) {
            (Some(f), None) if changed => crate::error!(
                "{deployment}: {f}; retrying every {}s",
                shared.retry_after.as_secs()
            ),
            (None, None) if changed => crate::info!("{deployment}: cached again"),
            (Some(f), Some(what)) if changed => crate::error!(
                "{deployment}: cannot write its {what} under state_dir: {}; retrying every {}s",
                f.error(),
                shared.retry_after.as_secs()
            ),
            (None, Some(what)) if changed => crate::info!("{deployment}: {what} written"),
            _ => {}
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        c.store("web", b"v1").unwrap();
        c.store("web", b"v2").unwrap();
        c.store("db", b"x").unwrap();
        std::fs::write(d.path().join("desired/.web.tmp"), b"junk").unwrap();
        let all = c.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["web"], b"v2");
        c.remove("web").unwrap();
        c.remove("web").unwrap();
        assert_eq!(Cache::open(d.path()).unwrap().load_all().unwrap().len(), 1);
    }

    /// A small deterministic generator: the same burst on every run.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Queues a burst of puts and deletes over `names`; returns what the
    /// cache must hold afterwards (the last op per deployment).
    fn burst(
        w: &CacheWriter,
        names: &[String],
        ops: usize,
        seed: u64,
    ) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut rng = Lcg(seed);
        let mut want = BTreeMap::new();
        for i in 0..ops {
            let name = &names[rng.next(names.len() as u64) as usize];
            if rng.next(4) == 0 {
                w.remove(name);
                want.insert(name.clone(), None);
            } else {
                let v = format!("{name}-{seed}-{i}").into_bytes();
                w.store(name, Bytes::from(v.clone()));
                want.insert(name.clone(), Some(v));
            }
        }
        want
    }

    /// The directory holds exactly the expected files (no temp file left).
    fn assert_on_disk(dir: &Path, want: &BTreeMap<String, Option<Vec<u8>>>) {
        let want: BTreeMap<String, Vec<u8>> = want
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let mut have = BTreeMap::new();
        for e in std::fs::read_dir(dir.join("desired")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            have.insert(name, std::fs::read(e.path()).unwrap());
        }
        assert_eq!(have, want);
    }

    #[test]
    fn writer_keeps_each_deployments_order() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        // put v1, put v2, delete -> absent; put, delete, put -> the last put.
        w.store("a", Bytes::from_static(b"v1"));
        w.store("a", Bytes::from_static(b"v2"));
        w.remove("a");
        w.store("b", Bytes::from_static(b"v1"));
        w.remove("b");
        w.store("b", Bytes::from_static(b"v3"));
        w.flush();
        let want = BTreeMap::from([
            ("a".to_string(), None),
            ("b".to_string(), Some(b"v3".to_vec())),
        ]);
        assert_on_disk(d.path(), &want);
        // The same again once both files exist, while the thread is busy.
        w.store("a", Bytes::from_static(b"v4"));
        w.store("b", Bytes::from_static(b"v5"));
        w.store("a", Bytes::from_static(b"v6"));
        w.remove("b");
        w.flush();
        let want = BTreeMap::from([
            ("a".to_string(), Some(b"v6".to_vec())),
            ("b".to_string(), None),
        ]);
        assert_on_disk(d.path(), &want);
        w.close();
    }

    #[test]
    fn writer_burst_ends_at_the_last_op_per_deployment() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        let names: Vec<String> = (0..8).map(|i| format!("dep-{i}")).collect();
        let mut want = BTreeMap::new();
        for round in 0..5 {
            want.extend(burst(&w, &names, 400, round));
            w.flush();
            assert_on_disk(d.path(), &want);
        }
        w.close();
        assert_on_disk(d.path(), &want);
    }

    #[test]
    fn writer_orders_bursts_from_several_threads() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        // Each thread owns its deployments, as each key has one writer.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    let names: Vec<String> = (0..3).map(|i| format!("t{t}-{i}")).collect();
                    burst(&w, &names, 300, t)
                })
            })
            .collect();
        let mut want = BTreeMap::new();
        for t in threads {
            want.extend(t.join().unwrap());
        }
        w.flush();
        assert_on_disk(d.path(), &want);
        w.close();
    }

    #[test]
    fn close_writes_everything_queued() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        let names: Vec<String> = (0..6).map(|i| format!("dep-{i}")).collect();
        let mut want = burst(&w, &names, 500, 7);
        // No flush: close alone must leave the disk at the last state.
        w.close();
        assert_on_disk(d.path(), &want);
        // Changes after close are written at once by the caller.
        w.store("late", Bytes::from_static(b"x"));
        want.insert("late".into(), Some(b"x".to_vec()));
        w.remove("dep-0");
        want.insert("dep-0".into(), None);
        assert_on_disk(d.path(), &want);
        w.close();
        w.flush();
    }

    fn status(message: &str) -> DeploymentStatus<'static> {
        DeploymentStatus {
            revision: 1,
            phase: protocol::Phase::Running,
            containers: protocol::BoundedVec::new(),
            message: Text::owned(message.to_string()),
            timestamp_ms: 0,
            reason: protocol::Reason::None,
            running_revision: None,
            waiting: None,
        }
    }

    #[test]
    fn health_tracks_each_deployments_last_write() {
        let mut h = CacheHealth::default();
        let full = || CacheFailure::NotStored {
            error: "No space left on device (os error 28)".into(),
            older_on_disk: false,
        };
        assert!(h.is_ok() && h.warning().is_none());
        assert!(h.record("web", Err(full())));
        assert!(
            !h.record("web", Err(full())),
            "the same failure is no change"
        );
        let before = h.clone();
        assert!(h.record(
            "db",
            Err(CacheFailure::NotRemoved {
                error: "EIO".into()
            })
        ));
        assert_eq!(h.changed_since(&before), BTreeSet::from(["db"]));
        let warning = h.warning().unwrap();
        assert!(
            warning.contains("(EIO)")
                && warning.contains("2 deployment(s)")
                && warning.contains("db, web"),
            "{warning}"
        );
        // The note goes at the end of the message, or is the message.
        let s = h.note_on("web", status("exited once"));
        assert_eq!(
            s.message.as_str(),
            "exited once; not cached on the device: No space left on device (os error 28) (would not come back after an offline reboot)"
        );
        assert!(
            h.note_on("db", status(""))
                .message
                .starts_with("still cached")
        );
        assert_eq!(h.note_on("other", status("x")).message.as_str(), "x");
        // A message at its bound is clipped to keep the note whole.
        let s = h.note_on("web", status(&"é".repeat(MAX_STRING_LEN / 2)));
        assert!(s.message.len() <= MAX_STRING_LEN, "{}", s.message.len());
        assert!(s.message.ends_with("offline reboot)"));
        // A note as long as the bound (a long OS error) stays within it too.
        let mut long = CacheHealth::default();
        long.record(
            "web",
            Err(CacheFailure::NotRemoved {
                error: "x".repeat(MAX_STRING_LEN * 2),
            }),
        );
        let s = long.note_on("web", status("exited once"));
        assert!(s.message.len() <= MAX_STRING_LEN, "{}", s.message.len());
        // A write that succeeds clears it.
        let before = h.clone();
        assert!(h.record("web", Ok(())));
        assert!(!h.record("web", Ok(())));
        assert_eq!(h.changed_since(&before), BTreeSet::from(["web"]));
        assert!(h.record("db", Ok(())));
        assert!(h.is_ok() && h.warning().is_none());
    }

    #[test]
    fn the_writer_reports_failures_until_a_write_succeeds() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        let mut health = w.health();
        // Nothing cached yet, and a directory where the file goes.
        let blocker = d.path().join("desired/web");
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        w.store("web", Bytes::from_static(b"v1"));
        w.store("db", Bytes::from_static(b"v1"));
        w.flush();
        assert!(health.has_changed().unwrap());
        let h = health.borrow_and_update().clone();
        assert!(
            matches!(
                h.failure("web"),
                Some(CacheFailure::NotStored {
                    older_on_disk: false,
                    ..
                })
            ),
            "{h:?}"
        );
        assert!(h.failure("db").is_none());
        // The removal fails too: the deleted deployment is still on disk.
        w.remove("web");
        w.flush();
        assert!(matches!(
            health.borrow_and_update().failure("web"),
            Some(CacheFailure::NotRemoved { .. })
        ));
        // Room again: the next write clears it, and says so.
        std::fs::remove_dir_all(&blocker).unwrap();
        w.store("web", Bytes::from_static(b"v2"));
        w.flush();
        assert!(health.has_changed().unwrap());
        assert!(health.borrow_and_update().is_ok());
        // A failure over an older cached value says the older one is there;
        // no temp file is left behind by a failed write.
        std::fs::create_dir_all(d.path().join("desired/.db.tmp/x")).unwrap();
        w.store("db", Bytes::from_static(b"v2"));
        w.flush();
        assert!(matches!(
            health.borrow_and_update().failure("db"),
            Some(CacheFailure::NotStored {
                older_on_disk: true,
                ..
            })
        ));
        assert_eq!(std::fs::read(d.path().join("desired/db")).unwrap(), b"v1");
        w.close();
    }

    #[test]
    fn a_failed_write_leaves_the_others_and_the_writer_working() {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start(Cache::open(d.path()).unwrap());
        // A directory where the file should go: the rename fails.
        std::fs::create_dir_all(d.path().join("desired/web/x")).unwrap();
        w.store("web", Bytes::from_static(b"v1"));
        w.store("db", Bytes::from_static(b"v1"));
        w.flush();
        assert!(d.path().join("desired/web").is_dir());
        w.store("db", Bytes::from_static(b"v2"));
        w.close();
        assert_eq!(std::fs::read(d.path().join("desired/db")).unwrap(), b"v2");
    }

    /// Waits up to 10 s for `cond` on the writer's health.
    fn wait_health(w: &CacheWriter, cond: impl Fn(&CacheHealth) -> bool) -> bool {
        let health = w.health();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if cond(&health.borrow()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A writer retrying after `retry_after` whose write of `web` v1
    /// failed (a directory stands where its file goes, removed by the
    /// caller to make room again): the temp dir, the writer, that path.
    fn failed_web(retry_after: Duration) -> (tempfile::TempDir, CacheWriter, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let w = CacheWriter::start_retrying_after(Cache::open(d.path()).unwrap(), retry_after);
        let blocker = d.path().join("desired/web");
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        w.store("web", Bytes::from_static(b"v1"));
        w.flush();
        assert!(wait_health(&w, |h| h.failure("web").is_some()));
        (d, w, blocker)
    }

    #[test]
    fn a_failed_write_is_tried_again_until_it_succeeds() {
        let (_d, w, blocker) = failed_web(Duration::from_millis(20));
        // Room again, and no newer change: the retry writes it by itself.
        std::fs::remove_dir_all(&blocker).unwrap();
        assert!(wait_health(&w, CacheHealth::is_ok), "never retried");
        assert_eq!(std::fs::read(&blocker).unwrap(), b"v1");
        w.close();
    }

    #[test]
    fn a_newer_change_replaces_a_failed_one_and_close_tries_once_more() {
        // Retries far off: only a newer change or the close write again.
        let (_d, w, blocker) = failed_web(Duration::from_secs(3600));
        w.store("web", Bytes::from_static(b"v2"));
        w.flush();
        assert!(wait_health(&w, |h| h.failure("web").is_some()));
        std::fs::remove_dir_all(&blocker).unwrap();
        w.close();
        assert_eq!(
            std::fs::read(&blocker).unwrap(),
            b"v2",
            "the newest value, at close"
        );
        assert!(w.health().borrow().is_ok());
    }

    #[test]
    fn a_failed_write_is_retried_while_other_changes_keep_coming() {
        let (_d, w, blocker) = failed_web(Duration::from_millis(100));
        std::fs::remove_dir_all(&blocker).unwrap();
        // Another deployment changes every 10 ms, far more often than the
        // retry interval: the retry must not be put off by each of them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut n = 0u32;
        while !w.health().borrow().is_ok() && std::time::Instant::now() < deadline {
            n += 1;
            w.store("db", Bytes::from(n.to_string()));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(w.health().borrow().is_ok(), "never retried under traffic");
        assert_eq!(std::fs::read(&blocker).unwrap(), b"v1");
        w.close();
    }
}
