//! `cargo xtask disk-image`: bakes the agent and a device's identity into a copy
//! of a board's base image, without root and without mounting, then reads
//! every file back to verify it.

pub mod fs;
pub mod partition;
pub mod payload;

use anyhow::{Context, Result, bail};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::boards::{self, Board, Which};
use crate::flags::Args;
use crate::progress::Progress;
use crate::util::{human, sha256_file};
use crate::{dist, elf, source};
use fs::{Ext4, Fat, Staging};
use payload::Identity;

/// Help for `cargo xtask disk-image`.
pub fn help() -> String {
    format!(
        "\
cargo xtask disk-image --board BOARD --base BASE.img[.xz|.gz] --device-id ID
                       --nats-url URL [--nats-url URL...] [credentials] -o OUT.img
                       [--hostname NAME] [--label KEY=VALUE...] [--agent PATH] [--cross]
    (formerly `cargo xtask image`) Copy BASE, a board's disk image, into
    OUT and write into its root filesystem, without root or mounting: the
    agent ({}), its config ({}), credentials and the
    sealing key (0600), the systemd unit (enabled at boot) and the hostname; add the board's
    kernel parameters to its command line. Every file is read back and
    compared.
    --label K=V    a board label for the agent's [labels] (repeatable);
                   board=BOARD is added unless given
    --agent PATH   use this agent binary instead of running `cargo xtask dist`
{}",
        payload::AGENT_BIN,
        payload::CONFIG_FILE,
        payload::CREDENTIALS_HELP
    )
}

/// What to build.
pub struct Request {
    /// The board.
    pub board: Board,
    /// The base image (raw, `.xz` or `.gz`).
    pub base: PathBuf,
    /// Where to write the result.
    pub out: PathBuf,
    /// The device's identity.
    pub identity: Identity,
    /// The agent binary; `None` builds it with `dist`.
    pub agent: Option<PathBuf>,
    /// Build with `cross`.
    pub cross: bool,
}

impl Request {
    /// Takes the options shared by `image` and the one-shot `flash`.
    pub fn from_args(args: &mut Args, out: Option<PathBuf>) -> Result<Request> {
        let board = boards::load(&args.required("--board", "NAME (see `cargo xtask boards`)")?)?;
        let base = PathBuf::from(args.required("--base", "BASE.img[.xz|.gz]")?);
        let mut identity = Identity::from_args(args)?;
        identity.label_board(&board.name);
        let out = match out {
            Some(o) => o,
            None => PathBuf::from(args.required("-o", "OUT.img")?),
        };
        Ok(Request {
            board,
            base,
            out,
            identity,
            agent: args.path("--agent")?,
            cross: args.flag("--cross"),
        })
    }
}

/// `cargo xtask disk-image`.
pub fn cmd(mut args: Args) -> Result<()> {
    let out = match args.path("--output")? {
        Some(o) => Some(o),
        None => args.path("-o")?,
    };
    let out = out
        .context("`cargo xtask disk-image` needs -o OUT.img; see `cargo xtask help disk-image`")?;
    let req = Request::from_args(&mut args, Some(out))?;
    args.finish()?;
    build(&req)?;
    println!(
        "next: cargo xtask flash --image {} --to /dev/sdX",
        req.out.display()
    );
    Ok(())
}

/// Builds the image described by `req`.
pub fn build(req: &Request) -> Result<()> {
    if !req.base.is_file() {
        bail!(
            "base image {} does not exist; download your board's OS image (e.g. Raspberry Pi OS Lite 64-bit .img.xz) and pass its path",
            req.base.display()
        );
    }
    if let (Ok(a), Ok(b)) = (req.base.canonicalize(), req.out.canonicalize())
        && a == b
    {
        bail!("-o must differ from --base: the base image is never modified");
    }
    let agent = match &req.agent {
        Some(p) => p.clone(),
        None => dist::build_for_board(&req.board, req.cross)?.binary,
    };
    elf::check_matches_target(&agent, &req.board.target)?;

    copy_base(&req.base, &req.out)?;
    let result = write_into(req, &agent);
    if result.is_err() {
        // A half-written image must not be flashed by mistake.
        let _ = std::fs::remove_file(&req.out);
    }
    result?;
    let sum = sha256_file(&req.out)?;
    println!(
        "image ready: {} ({}, sha256 {sum}) for device {} on board {}",
        req.out.display(),
        human(std::fs::metadata(&req.out)?.len()),
        req.identity.device_id,
        req.board.name
    );
    Ok(())
}

fn copy_base(base: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut src = source::open(base)?;
    let mut dst = std::fs::File::create(out)
        .with_context(|| format!("create {}; check the directory is writable", out.display()))?;
    let total = match source::Compression::detect(base)? {
        source::Compression::None => Some(std::fs::metadata(base)?.len()),
        _ => None,
    };
    let mut progress = Progress::new("copying base image", total);
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = src.read(&mut buf).with_context(|| {
            format!(
                "read {}: is the file complete and not corrupt?",
                base.display()
            )
        })?;
        if n == 0 {
            break;
        }
        write_sparse(&mut dst, &buf[..n])
            .with_context(|| format!("write {} (disk full?)", out.display()))?;
        progress.add(n as u64);
    }
    // Holes at the end still count: the file is as long as the source.
    let len = dst.stream_position()?;
    dst.set_len(len)?;
    dst.sync_all()?;
    progress.finish();
    Ok(())
}

/// Writes `data`, leaving holes for all-zero 64 KiB blocks: a 2 GiB base
/// image is mostly empty, and a sparse copy costs only what it holds.
fn write_sparse(dst: &mut std::fs::File, data: &[u8]) -> std::io::Result<()> {
    // Slice equality is a memcmp, fast even in an unoptimised xtask.
    static ZERO: [u8; 64 << 10] = [0; 64 << 10];
    for block in data.chunks(ZERO.len()) {
        if block == &ZERO[..block.len()] {
            dst.seek(SeekFrom::Current(block.len() as i64))?;
        } else {
            dst.write_all(block)?;
        }
    }
    Ok(())
}

/// A file to place in the root filesystem.
struct Placed {
    path: &'static str,
    bytes: Vec<u8>,
    mode: u32,
}

fn write_into(req: &Request, agent: &Path) -> Result<()> {
    let board = &req.board;
    let id = &req.identity;
    let table = partition::read(&req.out)?;
    if table.kind != board.layout.table {
        bail!(
            "the base image has a {} partition table but board {} expects {}; \
             use the base image made for this board or pick the right --board",
            table.kind,
            board.name,
            board.layout.table
        );
    }
    let root_p = table.get(board.layout.root.number, "root")?;
    let boot_p = table.get(board.layout.boot.number, "boot")?;
    let root = Ext4::new(&req.out, root_p.offset)?;
    let scratch_parent = req
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut stage = Staging::new(scratch_parent)?;

    let config_mode = if id.credentials.holds_secret() {
        0o600
    } else {
        0o644
    };
    let mut files = vec![
        Placed {
            path: payload::AGENT_BIN,
            bytes: std::fs::read(agent).with_context(|| format!("read {}", agent.display()))?,
            mode: 0o755,
        },
        Placed {
            path: payload::CONFIG_FILE,
            bytes: payload::config_toml(id)?.into_bytes(),
            mode: config_mode,
        },
        Placed {
            path: payload::UNIT_FILE,
            bytes: payload::unit().into_bytes(),
            mode: 0o644,
        },
        Placed {
            path: payload::STOP_UNIT_FILE,
            bytes: payload::workloads_stop_unit().into_bytes(),
            mode: 0o644,
        },
        Placed {
            path: "/etc/hostname",
            bytes: format!("{}\n", id.hostname).into_bytes(),
            mode: 0o644,
        },
    ];
    if let Some((host, board)) = payload::credential_file(&id.credentials) {
        files.push(Placed {
            path: board,
            bytes: std::fs::read(host).with_context(|| format!("read {}", host.display()))?,
            mode: 0o600,
        });
    }
    // Only the layout `cargo xtask creds` writes (ID.nk/ID.creds beside
    // ID.xk): a key beside a credential file named otherwise may be another
    // device's, and none is created in a directory that is not a creds one.
    let source = payload::sealing_key_source(&id.credentials).filter(|host| {
        let ours = host.file_stem().is_some_and(|s| *s == *id.device_id);
        if !ours {
            eprintln!(
                "note: {} is not named after --device-id {}; no sealing key baked (the agent creates one at its first start)",
                host.display(),
                id.device_id
            );
        }
        ours
    });
    let sealing_key_baked = match source {
        Some(host) => {
            files.push(Placed {
                path: payload::SEALING_KEY_FILE,
                bytes: sealing_key(&host, &id.device_id)?,
                mode: 0o600,
            });
            true
        }
        None => false,
    };
    let old_hosts = root.read("/etc/hosts")?.unwrap_or_default();
    files.push(Placed {
        path: "/etc/hosts",
        bytes: payload::hosts(&String::from_utf8_lossy(&old_hosts), &id.hostname).into_bytes(),
        mode: 0o644,
    });

    eprintln!(
        "writing the agent and device {} into the root filesystem...",
        id.device_id
    );
    root.mkdir_p("/usr/local/bin", 0o755)?;
    root.mkdir_p(payload::CONFIG_DIR, 0o700)?;
    root.mkdir_p("/etc/systemd/system/multi-user.target.wants", 0o755)?;
    for f in &files {
        let local = stage.file(&f.bytes)?;
        root.put(f.path, &local, f.mode)?;
    }
    if !sealing_key_baked {
        // The agent creates the key at first start; a key left by an
        // earlier bake of this image is another device's.
        root.remove(payload::SEALING_KEY_FILE)?;
    }
    root.symlink(payload::UNIT_WANTS, payload::UNIT_FILE)?;
    root.symlink(payload::STOP_UNIT_WANTS, payload::STOP_UNIT_FILE)?;

    let mut cmdline_written = None;
    if let Some((which, path)) = &board.cmdline.file {
        if *which == Which::Root {
            let old = root.read(path)?.with_context(|| no_cmdline(path, board))?;
            let new = payload::cmdline(&String::from_utf8_lossy(&old), &board.cmdline.add);
            root.put(path, &stage.file(new.as_bytes())?, 0o644)?;
            cmdline_written = Some((Which::Root, path.clone(), new));
        } else {
            let fat = Fat::new(&req.out, boot_p.offset)?;
            let old = fat.read(path)?.with_context(|| no_cmdline(path, board))?;
            let new = payload::cmdline(&String::from_utf8_lossy(&old), &board.cmdline.add);
            fat.write(path, &stage.file(new.as_bytes())?)?;
            cmdline_written = Some((Which::Boot, path.clone(), new));
        }
    }

    // Read everything back: the image is only as good as what is on it.
    for f in &files {
        let got = root
            .read(f.path)?
            .with_context(|| format!("verify: {} is missing after writing it", f.path))?;
        if got != f.bytes {
            bail!("verify: {} differs from what was written", f.path);
        }
        let st = root.stat(f.path)?.context("verify: stat")?;
        if st.mode != f.mode || st.uid != 0 || st.gid != 0 {
            bail!(
                "verify: {} has mode {:o} owner {}:{}, expected {:o} root:root",
                f.path,
                st.mode,
                st.uid,
                st.gid,
                f.mode
            );
        }
    }
    if !sealing_key_baked && root.stat(payload::SEALING_KEY_FILE)?.is_some() {
        bail!(
            "verify: {} is still there; it belongs to an earlier bake",
            payload::SEALING_KEY_FILE
        );
    }
    for (wants, unit) in [
        (payload::UNIT_WANTS, payload::UNIT_FILE),
        (payload::STOP_UNIT_WANTS, payload::STOP_UNIT_FILE),
    ] {
        let link = root.stat(wants)?.and_then(|s| s.link);
        if link.as_deref() != Some(unit) {
            bail!("verify: {wants} does not point to the unit ({link:?})");
        }
    }
    if let Some((which, path, want)) = cmdline_written {
        let got = match which {
            Which::Root => root.read(&path)?,
            Which::Boot => Fat::new(&req.out, boot_p.offset)?.read(&path)?,
        };
        if got.as_deref() != Some(want.as_bytes()) {
            bail!("verify: the kernel command line {path} differs from what was written");
        }
    }
    eprintln!(
        "verified {} files, the unit symlink and the command line",
        files.len()
    );
    Ok(())
}

/// The seed file of the device's sealing key at `host`, created there when
/// missing (as `cargo xtask creds` would), so that re-baking the board
/// keeps its key.
fn sealing_key(host: &Path, device: &str) -> Result<Vec<u8>> {
    let existed = host.exists();
    let public = crate::creds::ensure_sealing_key(host).with_context(|| {
        format!(
            "the sealing key of device {device}; run `cargo xtask creds --out DIR --device {device}` \
             and pass DIR's credentials"
        )
    })?;
    eprintln!(
        "device {device}: sealing key {public} ({} {})",
        if existed { "from" } else { "created in" },
        host.display()
    );
    std::fs::read(host).with_context(|| format!("read {}", host.display()))
}

fn no_cmdline(path: &str, board: &Board) -> String {
    format!(
        "the base image has no {path}, where board {} keeps the kernel command line; \
         is it an image for this board?",
        board.name
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_copy_of_a_mostly_empty_image_is_sparse_and_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.img");
        let mut data = vec![0u8; 8 << 20];
        data[..4096].fill(0xab);
        data[(5 << 20) + 7] = 1;
        std::fs::write(&base, &data).unwrap();
        let out = tmp.path().join("out.img");
        copy_base(&base, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // Two 64 KiB blocks hold data; the rest are holes (st_blocks is in
        // 512-byte units; allow for filesystems that allocate more).
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    }
}
