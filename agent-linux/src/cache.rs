//! The on-disk cache of the last desired state of every deployment, so a
//! board that reboots without network brings its workloads back.
//!
//! One file per deployment under `<state_dir>/desired/`, named by the
//! deployment (a key token, so always a safe file name), holding the value
//! exactly as it came from NATS. Writes are atomic: temp file, fsync,
//! rename, fsync of the directory.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating) `<state_dir>/desired`.
    pub fn open(state_dir: &Path) -> io::Result<Cache> {
        let dir = state_dir.join("desired");
        std::fs::create_dir_all(&dir)?;
        Ok(Cache { dir })
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
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(value)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        self.sync_dir()
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
}
