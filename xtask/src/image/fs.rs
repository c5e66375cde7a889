//! Reading and writing files inside a partition of an image file, without
//! root and without mounting: FAT through mtools (`-i image@@offset`), ext4
//! through debugfs (`image?offset=N`).

use anyhow::{Context, Result, bail};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{output, require_tool, show};

/// A FAT filesystem at `offset` inside `image`.
pub struct Fat {
    spec: String,
}

impl Fat {
    /// Addresses the FAT filesystem at byte `offset` of `image`.
    pub fn new(image: &Path, offset: u64) -> Result<Fat> {
        require_tool("mcopy", "mtools")?;
        Ok(Fat {
            spec: format!("{}@@{offset}", image.display()),
        })
    }

    fn mcopy(&self) -> Command {
        let mut c = Command::new("mcopy");
        // Images made by other tools often have geometry mtools dislikes;
        // the filesystem itself is what matters.
        c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&self.spec);
        c
    }

    /// The file at `path`, or `None` when it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut c = Command::new("mdir");
        c.env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-i", &self.spec])
            .arg(format!("::{path}"));
        if !c
            .output()
            .with_context(|| format!("run `{}`", show(&c)))?
            .status
            .success()
        {
            return Ok(None);
        }
        let mut c = self.mcopy();
        c.arg("-n").arg(format!("::{path}")).arg("-");
        Ok(Some(output(&mut c)?.stdout))
    }

    /// Writes `local` to `path`, replacing it.
    pub fn write(&self, path: &str, local: &Path) -> Result<()> {
        let mut c = self.mcopy();
        c.arg("-o").arg(local).arg(format!("::{path}"));
        output(&mut c).map(drop).with_context(|| {
            format!("write {path} into the FAT partition (is it full or read-only?)")
        })
    }
}

/// What `debugfs stat` says about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `regular`, `directory`, `symlink`, ...
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The target, for a symlink.
    pub link: Option<String>,
}

/// An ext2/3/4 filesystem at `offset` inside `image`.
pub struct Ext4 {
    spec: String,
}

impl Ext4 {
    /// Addresses the ext4 filesystem at byte `offset` of `image`.
    pub fn new(image: &Path, offset: u64) -> Result<Ext4> {
        require_tool("debugfs", "e2fsprogs")?;
        let fs = Ext4 {
            spec: format!("{}?offset={offset}", image.display()),
        };
        // Opening it once up front turns "not ext4" into a clear error.
        fs.debugfs(false, "stats -h").with_context(|| {
            format!(
                "the root partition of {} is not a readable ext2/3/4 filesystem; \
                 use a base image made for this board (or fix `image.root` in its board file)",
                image.display()
            )
        })?;
        Ok(fs)
    }

    /// Runs one debugfs request. debugfs exits 0 even when the request
    /// fails, so anything on stderr besides its banner is an error.
    fn debugfs(&self, write: bool, request: &str) -> Result<Vec<u8>> {
        let mut c = Command::new("debugfs");
        if write {
            c.arg("-w");
        }
        c.arg("-R").arg(request).arg(&self.spec);
        let out = output(&mut c)?;
        let err: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        if !err.is_empty() {
            bail!("debugfs `{request}`: {}", err.join("; "));
        }
        Ok(out.stdout)
    }

    /// The inode at `path`, or `None` when it does not exist.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        check_path(path)?;
        let out = match self.debugfs(false, &format!("stat \"{path}\"")) {
            Ok(o) => o,
            Err(e) if format!("{e}").contains("not found") => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&out);
        let field = |name: &str| -> Option<&str> {
            let at = text.find(name)? + name.len();
            text[at..].split_whitespace().next()
        };
        let mode = field("Mode:")
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .with_context(|| format!("debugfs stat {path}: no mode in {text}"))?;
        let num = |name| field(name).and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
        let link = text.find("Fast link dest:").map(|at| {
            text[at + "Fast link dest:".len()..]
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_string()
        });
        Ok(Some(Stat {
            kind: field("Type:").unwrap_or("?").to_string(),
            mode,
            uid: num("User:"),
            gid: num("Group:"),
            link,
        }))
    }

    /// The contents of the regular file `path`, or `None` when absent.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.stat(path)? {
            None => Ok(None),
            Some(s) if s.kind != "regular" => {
                bail!("{path} in the root filesystem is a {}, not a file", s.kind)
            }
            Some(_) => Ok(Some(self.debugfs(false, &format!("cat \"{path}\""))?)),
        }
    }

    /// Creates `path` and its missing parents, owned by root, with `mode`
    /// for the directories it creates.
    pub fn mkdir_p(&self, path: &str, mode: u32) -> Result<()> {
        check_path(path)?;
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            match self.stat(&cur)? {
                Some(s) if s.kind == "directory" => {}
                Some(s) => bail!(
                    "{cur} in the root filesystem is a {}, not a directory",
                    s.kind
                ),
                // Checked first: debugfs `mkdir` on an existing directory
                // leaks an inode and leaves the filesystem inconsistent.
                None => {
                    self.debugfs(true, &format!("mkdir \"{cur}\""))?;
                    self.own(&cur, 0o040000 | mode)?;
                }
            }
        }
        Ok(())
    }

    /// Sets mode (with type bits) and root ownership: debugfs copies the
    /// host file's owner, which would be the building user.
    fn own(&self, path: &str, full_mode: u32) -> Result<()> {
        self.debugfs(true, &format!("sif \"{path}\" mode 0{full_mode:o}"))?;
        self.debugfs(true, &format!("sif \"{path}\" uid 0"))?;
        self.debugfs(true, &format!("sif \"{path}\" gid 0"))?;
        Ok(())
    }

    fn remove_existing(&self, path: &str) -> Result<()> {
        match self.stat(path)? {
            None => Ok(()),
            Some(s) if s.kind == "directory" => {
                bail!("{path} in the root filesystem is a directory; remove it from the base image")
            }
            Some(_) => self.debugfs(true, &format!("rm \"{path}\"")).map(drop),
        }
    }

    /// Removes the file at `path` if there is one.
    pub fn remove(&self, path: &str) -> Result<()> {
        check_path(path)?;
        self.remove_existing(path)
    }

    /// Writes the host file `local` to `path` with `mode`, owned by root,
    /// replacing what was there.
    pub fn put(&self, path: &str, local: &Path, mode: u32) -> Result<()> {
        check_path(path)?;
        let local_s = local.to_str().context("temporary path is not UTF-8")?;
        check_path(local_s)?;
        self.remove_existing(path)?;
        self.debugfs(true, &format!("write \"{local_s}\" \"{path}\""))
            .with_context(|| {
                format!("write {path} into the root filesystem (is it full? grow the root partition of the base image)")
            })?;
        self.own(path, 0o100000 | mode)
    }

    /// Makes `path` a symlink to `target`, replacing what was there.
    pub fn symlink(&self, path: &str, target: &str) -> Result<()> {
        check_path(path)?;
        check_path(target)?;
        self.remove_existing(path)?;
        self.debugfs(true, &format!("symlink \"{path}\" \"{target}\""))?;
        self.debugfs(true, &format!("sif \"{path}\" uid 0"))?;
        self.debugfs(true, &format!("sif \"{path}\" gid 0"))?;
        Ok(())
    }
}

/// debugfs splits requests on whitespace and quotes: keep paths plain.
fn check_path(p: &str) -> Result<()> {
    if p.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        bail!(
            "path {p:?} contains whitespace or quotes, which debugfs cannot take; use a plain path"
        );
    }
    Ok(())
}

/// A scratch directory for files staged before they are copied in.
pub struct Staging {
    dir: PathBuf,
    n: usize,
}

impl Staging {
    /// A staging area inside `parent` (removed on drop).
    pub fn new(parent: &Path) -> Result<Staging> {
        let dir = parent.join(format!(".xtask-staging-{}", std::process::id()));
        // 0700: staged files include credentials.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        Ok(Staging { dir, n: 0 })
    }

    /// Writes `bytes` to a fresh file and returns its path.
    pub fn file(&mut self, bytes: &[u8]) -> Result<PathBuf> {
        self.n += 1;
        let p = self.dir.join(format!("f{}", self.n));
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
