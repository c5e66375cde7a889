//! `board-sim`'s options: the boards, the host's NATS, and what goes into
//! and around each guest.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::base_image;
use crate::flags::Args;
use crate::image::payload::Credentials;

/// One board to boot.
#[derive(Debug, Clone)]
pub struct Board {
    /// The device id (also the directory and disk name).
    pub id: String,
    /// Where the board's disk and logs live.
    pub dir: PathBuf,
    /// The board's disk image.
    pub disk: PathBuf,
    /// The serial console log.
    pub console: PathBuf,
    /// The QMP socket (power button).
    pub qmp: PathBuf,
}

/// Everything `board-sim` was asked for.
pub struct Options {
    /// The boards, one per `--device-id`.
    pub boards: Vec<Board>,
    /// The host's NATS, `IP:PORT`.
    pub nats: String,
    /// Boot the existing disks.
    pub reuse: bool,
    /// A base image instead of the cached one.
    pub base: Option<PathBuf>,
    /// An agent binary instead of `dist`'s.
    pub agent: Option<PathBuf>,
    /// Build the agent with `cross`.
    pub cross: bool,
    /// Container images baked into the disk: (name, tarball).
    pub preload: Vec<(String, PathBuf)>,
    /// Host loopback port -> guest port.
    pub forward: Vec<(u16, u16)>,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// The NATS credentials baked into each disk.
    pub credentials: Credentials,
    /// Power off after this long.
    pub timeout: Option<Duration>,
}

fn parse_forward(s: &str) -> Result<(u16, u16)> {
    let (h, g) = s
        .split_once(':')
        .with_context(|| format!("--forward {s:?} must be HOSTPORT:GUESTPORT, e.g. 8080:80"))?;
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("--forward {s:?}: {p:?} is not a port (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

fn parse_preload(s: &str) -> Result<(String, PathBuf)> {
    let (name, file) = s.split_once('=').with_context(|| {
        format!("--preload {s:?} must be NAME=TARBALL, e.g. localhost/web:1=web.tar")
    })?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("--preload {s:?}: the image name must be non-empty, without spaces or quotes");
    }
    let file = PathBuf::from(file);
    if !file.is_file() {
        bail!(
            "--preload {s:?}: {} does not exist (make it with `podman save` or a rootfs `tar`)",
            file.display()
        );
    }
    Ok((name.to_string(), file))
}

impl Options {
    /// Takes `board-sim`'s options from `args`.
    pub fn from_args(args: &mut Args) -> Result<Options> {
        let mut ids = args.values("--device-id")?;
        if ids.is_empty() {
            ids.push("vboard-1".into());
        }
        let dir = args
            .path("--dir")?
            .unwrap_or_else(|| base_image::cache_dir().join("boards"));
        let mut boards = Vec::new();
        for id in ids {
            protocol::keys::validate_device_id(&id)
                .map_err(|e| anyhow::anyhow!("--device-id {id:?}: {e}"))?;
            if boards.iter().any(|b: &Board| b.id == id) {
                bail!("--device-id {id:?} is given twice; each board needs its own id");
            }
            let d = dir.join(&id);
            boards.push(Board {
                disk: d.join(format!("{id}.img")),
                console: d.join("console.log"),
                qmp: d.join("qmp.sock"),
                dir: d,
                id,
            });
        }
        let nats = args
            .value("--nats")?
            .unwrap_or_else(|| "127.0.0.1:4222".into());
        nats.parse::<SocketAddr>().with_context(|| {
            format!("--nats {nats:?} must be IP:PORT of the host's NATS, e.g. 127.0.0.1:4222")
        })?;
        let forward = args
            .values("--forward")?
            .iter()
            .map(|s| parse_forward(s))
            .collect::<Result<Vec<_>>>()?;
        if !forward.is_empty() && boards.len() > 1 {
            bail!("--forward works with one board only (host ports cannot be shared)");
        }
        let preload = args
            .values("--preload")?
            .iter()
            .map(|s| parse_preload(s))
            .collect::<Result<Vec<_>>>()?;
        let num = |args: &mut Args, name: &str, default: u32, max: u32| -> Result<u32> {
            match args.value(name)? {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .with_context(|| format!("{name} {v:?} must be a number from 1 to {max}")),
            }
        };
        let memory = num(args, "--memory", 1024, 65536)?;
        let cpus = num(args, "--cpus", 2, 16)?;
        let timeout = match args.value("--timeout-secs")? {
            None => None,
            Some(v) => Some(Duration::from_secs(v.parse().with_context(|| {
                format!("--timeout-secs {v:?} must be a number of seconds")
            })?)),
        };
        Ok(Options {
            boards,
            nats,
            reuse: args.flag("--reuse"),
            base: args.path("--base")?,
            agent: args.path("--agent")?,
            cross: args.flag("--cross"),
            preload,
            forward,
            memory,
            cpus,
            credentials: crate::image::payload::credentials_from_args(args)?,
            timeout,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;

    /// `board-sim`'s options parsed from `s`.
    pub fn opts(s: &str) -> Result<Options> {
        let mut a = Args::new(
            "board-sim",
            s.split_whitespace().map(String::from).collect(),
        );
        let o = Options::from_args(&mut a)?;
        a.finish()?;
        Ok(o)
    }

    #[test]
    fn options_parse_and_bad_ones_say_what_to_do() {
        let o = opts("--device-id a --device-id b --nats 127.0.0.1:5000 --cpus 1").unwrap();
        assert_eq!(o.boards.len(), 2);
        assert_eq!(o.boards[1].disk.file_name().unwrap(), "b.img");
        assert_eq!(o.nats, "127.0.0.1:5000");
        assert_eq!(opts("").unwrap().boards[0].id, "vboard-1");
        let err = |s: &str| format!("{:#}", opts(s).err().unwrap());
        assert!(err("--device-id a.b").contains("'.'"));
        assert!(err("--device-id a --device-id a").contains("twice"));
        assert!(err("--nats localhost").contains("IP:PORT"));
        assert!(err("--forward 8080").contains("HOSTPORT:GUESTPORT"));
        assert!(err("--device-id a --device-id b --forward 1:2").contains("one board"));
        assert!(err("--preload x").contains("NAME=TARBALL"));
        assert!(err("--preload x=/nonexistent.tar").contains("does not exist"));
        assert!(err("--memory 0").contains("--memory"));
    }
}
