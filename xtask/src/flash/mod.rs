//! `cargo xtask flash`: writes an image (raw, `.xz` or `.gz`, streamed) to
//! a card or a file, after refusing system disks and asking for
//! confirmation; syncs, then verifies by reading back and comparing sha256.
//! The one-shot form runs dist + image first.

pub mod target;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::flags::Args;
use crate::image::{self, Request, payload};
use crate::progress::Progress;
use crate::source;
use crate::util::{hex, human, workspace_target};
use target::Target;

/// Help for `cargo xtask flash`.
pub fn help() -> String {
    format!(
        "\
cargo xtask flash --image IMAGE[.xz|.gz] --to DEVICE [--yes] [--force]
cargo xtask flash --board BOARD --base BASE.img[.xz|.gz] --device-id ID
                  --nats-url URL [credentials] --to DEVICE [--yes] [--force]
    Write an image to an SD card or disk (or a file) and verify it by reading
    it back. The second form builds the agent (dist) and the image (into
    target/images/ID.img) first.
    Refuses a target that is mounted, holds /, is a partition, is read-only,
    is smaller than the image, or is not removable (unless --force).
    --yes     do not ask for confirmation (needed when stdin is not a terminal)
    --force   allow a disk that is not marked removable (never a mounted or
              system disk)
    one-shot form: also --hostname NAME, --label KEY=VALUE (repeatable;
    board=BOARD is added unless given), --agent PATH (skip dist), --cross
{}",
        payload::CREDENTIALS_HELP
    )
}

/// `cargo xtask flash`.
pub fn cmd(mut args: Args) -> Result<()> {
    let to = PathBuf::from(args.required("--to", "DEVICE (e.g. /dev/sdb, see `lsblk`)")?);
    let yes = args.flag("--yes");
    let force = args.flag("--force");
    let image_arg = args.path("--image")?;
    let image = match image_arg {
        Some(img) => {
            args.finish()?;
            img
        }
        None => {
            let device = args.peek("--device-id");
            let out = workspace_target()
                .join("images")
                .join(format!("{}.img", device.unwrap_or_default()));
            let req = Request::from_args(&mut args, Some(out.clone())).context(
                "give either --image IMAGE, or --board, --base, --device-id and --nats-url to build one",
            )?;
            args.finish()?;
            // Refuse a bad target before spending minutes on a build.
            target::check(&target::inspect(&to)?, None, None, force)?;
            image::build(&req)?;
            out
        }
    };
    flash(&image, &to, yes, force)
}

/// Writes `image` to `to` after the checks and the confirmation.
pub fn flash(image: &Path, to: &Path, yes: bool, force: bool) -> Result<()> {
    if !image.is_file() {
        bail!(
            "image {} does not exist; build one with `cargo xtask disk-image`",
            image.display()
        );
    }
    let t = target::inspect(to)?;
    target::check(&t, Some(image), None, force)?;
    let size = source::uncompressed_size(image)?;
    target::check(&t, Some(image), Some(size), force)?;
    confirm(&t, image, size, yes)?;

    let (written, sum) = write(image, &t, size)?;
    eprintln!("verifying: reading {} back...", human(written));
    let back = read_back(&t, written)?;
    if back != sum {
        bail!(
            "verification FAILED: {} reads back as sha256 {back}, but {sum} was written. \
             The card may be failing or fake; try another card",
            to.display()
        );
    }
    println!(
        "flashed {} to {}: {} written and verified (sha256 {sum})",
        image.display(),
        to.display(),
        human(written)
    );
    if t.disk.is_some() {
        println!(
            "the card can be removed (or run `sudo eject {}` first)",
            to.display()
        );
    }
    Ok(())
}

fn confirm(t: &Target, image: &Path, size: u64, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "not writing {}: confirmation needed but stdin is not a terminal; \
             check the target, then pass --yes",
            t.path.display()
        );
    }
    let what = match &t.disk {
        Some(d) => format!(
            "{} ({}{}, {})",
            t.path.display(),
            d.model,
            if d.removable {
                ", removable"
            } else {
                ", NOT removable"
            },
            human(d.size)
        ),
        None => format!("the file {}", t.path.display()),
    };
    eprint!(
        "Write {} ({}) to {what}?\nEverything on it will be lost. Type 'yes' to continue: ",
        image.display(),
        human(size)
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}

/// Linux `O_EXCL` on a block device: the open fails with EBUSY if the
/// device is mounted or otherwise claimed, closing the race after the checks.
fn open_target(t: &Target) -> Result<std::fs::File> {
    let mut o = OpenOptions::new();
    o.write(true);
    if t.disk.is_some() {
        o.custom_flags(libc::O_EXCL);
    } else {
        o.create(true).truncate(true);
    }
    o.open(&t.path).with_context(|| {
        format!(
            "open {} for writing; if it is busy, unmount it; if permission is denied, run with sudo",
            t.path.display()
        )
    })
}

fn write(image: &Path, t: &Target, size: u64) -> Result<(u64, String)> {
    let mut src = source::open(image)?;
    let mut dst = open_target(t)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    let mut progress = Progress::new("writing", Some(size));
    loop {
        let n = read_full(&mut src, &mut buf).with_context(|| {
            format!("read {}: is it complete and not corrupt?", image.display())
        })?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).with_context(|| {
            format!(
                "write to {} failed at byte {written}; the card may be full, removed or failing",
                t.path.display()
            )
        })?;
        hash.update(&buf[..n]);
        written += n as u64;
        progress.add(n as u64);
    }
    eprintln!("syncing...");
    dst.sync_all()
        .with_context(|| format!("sync {}; do not remove the card", t.path.display()))?;
    progress.finish();
    Ok((written, hex(&hash.finalize())))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A buffer aligned for `O_DIRECT`.
#[repr(C, align(4096))]
struct Aligned([u8; 1 << 20]);

/// sha256 of the first `len` bytes of the target, read from the device
/// (`O_DIRECT` bypasses the page cache, which would only echo our writes).
fn read_back(t: &Target, len: u64) -> Result<String> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(&t.path)
    };
    let mut f = if t.disk.is_some() {
        open(true).or_else(|_| open(false))
    } else {
        open(false)
    }
    .with_context(|| format!("open {} to verify", t.path.display()))?;
    let mut buf = Box::new(Aligned([0; 1 << 20]));
    let mut hash = Sha256::new();
    let mut left = len;
    let mut progress = Progress::new("verifying", Some(len));
    while left > 0 {
        let n = read_full(&mut f, &mut buf.0)
            .with_context(|| format!("read back {}", t.path.display()))?;
        if n == 0 {
            bail!(
                "{} ended {} before the end of the image; it was not written completely",
                t.path.display(),
                human(left)
            );
        }
        let take = (n as u64).min(left) as usize;
        hash.update(&buf.0[..take]);
        left -= take as u64;
        progress.add(take as u64);
    }
    progress.finish();
    Ok(hex(&hash.finalize()))
}
