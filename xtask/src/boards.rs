//! Board files (`boards/<name>.toml`): parsed into a raw form that rejects
//! unknown keys, then validated into a [`Board`], with errors naming the file
//! and the field. `cargo xtask boards` lists them.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::flags::Args;
use crate::util::project_root;

/// Help for `cargo xtask boards`.
pub const HELP: &str = "\
cargo xtask boards [--dir DIR]
    List the supported boards (boards/*.toml) after validating every file.";

/// A validated board description.
#[derive(Debug, Clone)]
pub struct Board {
    /// The board's name (the file stem), e.g. `rpi4`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// The Rust target triple of the agent for this board.
    pub target: String,
    /// Partition table and the partitions xtask writes to.
    pub layout: Layout,
    /// Kernel command-line additions, and where they go.
    pub cmdline: Cmdline,
    /// How the device identity reaches the board.
    pub identity: Identity,
    /// How an image reaches the board's storage.
    pub flash: FlashMethod,
}

/// The partition layout of a board image.
#[derive(Debug, Clone)]
pub struct Layout {
    /// MBR or GPT.
    pub table: TableKind,
    /// The boot (firmware or EFI system) partition.
    pub boot: PartitionSpec,
    /// The root filesystem partition.
    pub root: PartitionSpec,
}

/// Partition table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// DOS/MBR table (Raspberry Pi firmware reads only this).
    Mbr,
    /// GUID partition table (UEFI machines).
    Gpt,
}

/// Filesystems xtask can write without mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// FAT12/16/32, written with mtools.
    Vfat,
    /// ext2/3/4, written with debugfs.
    Ext4,
}

/// One partition of the layout.
#[derive(Debug, Clone, Copy)]
pub struct PartitionSpec {
    /// Partition number, from 1.
    pub number: u32,
    /// Its filesystem.
    pub fs: FsKind,
}

/// Which partition of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The boot partition.
    Boot,
    /// The root partition.
    Root,
}

/// Where the kernel command line lives and what Podman needs added to it.
#[derive(Debug, Clone)]
pub struct Cmdline {
    /// The file holding the one-line command line, if the board has one.
    pub file: Option<(Which, String)>,
    /// Parameters to add (each once).
    pub add: Vec<String>,
}

/// How the device identity (agent config, credentials, hostname) is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// Files written into the root filesystem (`/etc/iot-agent/`,
    /// `/etc/hostname`), the unit enabled through a `.wants` symlink.
    Rootfs,
}

/// How the image is put on the board's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlashMethod {
    /// Raw write to a block device (SD card, USB stick, NVMe in an adapter).
    BlockDevice,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
        })
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Vfat => "vfat",
            FsKind::Ext4 => "ext4",
        })
    }
}

// The raw, file-shaped form. `deny_unknown_fields` turns a typo into an
// error instead of a silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    description: String,
    target: String,
    image: RawImage,
    #[serde(default)]
    cmdline: RawCmdline,
    identity: RawIdentity,
    flash: RawFlash,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    partition_table: TableKind,
    boot: RawPartition,
    root: RawPartition,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    partition: i64,
    filesystem: FsKind,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCmdline {
    file: Option<String>,
    #[serde(default)]
    add: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    method: Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlash {
    method: FlashMethod,
}

/// The directory holding the board files.
pub fn boards_dir() -> PathBuf {
    project_root().join("boards")
}

/// Parses and validates one board file's text; `file` names it in errors.
pub fn parse(name: &str, file: &Path, text: &str) -> Result<Board> {
    let raw: RawBoard = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}\nfix the field named above (see boards/README.md for the schema)",
            file.display(),
            e.to_string().trim_end()
        )
    })?;
    validate(name, raw).with_context(|| format!("{}: invalid board file", file.display()))
}

fn validate(name: &str, raw: RawBoard) -> Result<Board> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("the file name must be lower-case letters, digits and '-' (it is the board name)");
    }
    if raw.description.trim().is_empty() {
        bail!("field `description` is empty; describe the board in one line");
    }
    let parts: Vec<&str> = raw.target.split('-').collect();
    if !(parts.len() == 4 && parts[2] == "linux") {
        bail!(
            "field `target` = {:?} is not a Linux target triple such as \
             \"aarch64-unknown-linux-musl\"; the agent runs on Linux only",
            raw.target
        );
    }
    let table = raw.image.partition_table;
    let max = match table {
        TableKind::Mbr => 4,
        TableKind::Gpt => 128,
    };
    let part = |field: &str, p: &RawPartition| -> Result<PartitionSpec> {
        if p.partition < 1 || p.partition > max {
            bail!(
                "field `image.{field}.partition` = {} is out of range; a {table} table has \
                 primary partitions 1 to {max}",
                p.partition
            );
        }
        Ok(PartitionSpec {
            number: p.partition as u32,
            fs: p.filesystem,
        })
    };
    let boot = part("boot", &raw.image.boot)?;
    let root = part("root", &raw.image.root)?;
    if boot.number == root.number {
        bail!(
            "fields `image.boot.partition` and `image.root.partition` are both {}; \
             they must differ",
            boot.number
        );
    }
    if boot.fs != FsKind::Vfat {
        bail!("field `image.boot.filesystem` must be \"vfat\" (firmware and UEFI read FAT)");
    }
    if root.fs != FsKind::Ext4 {
        bail!(
            "field `image.root.filesystem` must be \"ext4\": the agent, its unit and \
             credentials need Unix modes and symlinks"
        );
    }
    let file = match raw.cmdline.file {
        None => None,
        Some(f) => {
            let (which, path) = match f.split_once(':') {
                Some(("boot", p)) => (Which::Boot, p),
                Some(("root", p)) => (Which::Root, p),
                _ => bail!(
                    "field `cmdline.file` = {f:?} must be \"boot:/PATH\" or \"root:/PATH\" \
                     (the partition, then the path inside it)"
                ),
            };
            if !path.starts_with('/') || path.len() < 2 || path.contains("..") {
                bail!(
                    "field `cmdline.file` = {f:?}: the path must be absolute, e.g. \"boot:/cmdline.txt\""
                );
            }
            Some((which, path.to_string()))
        }
    };
    for (i, a) in raw.cmdline.add.iter().enumerate() {
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            bail!("field `cmdline.add[{i}]` = {a:?} must be one kernel parameter without spaces");
        }
    }
    if file.is_none() && !raw.cmdline.add.is_empty() {
        bail!(
            "field `cmdline.add` is set but `cmdline.file` is missing; say where the command line lives"
        );
    }
    Ok(Board {
        name: name.to_string(),
        description: raw.description,
        target: raw.target,
        layout: Layout { table, boot, root },
        cmdline: Cmdline {
            file,
            add: raw.cmdline.add,
        },
        identity: raw.identity.method,
        flash: raw.flash.method,
    })
}

/// Loads board `name` from `dir`.
pub fn load_from(dir: &Path, name: &str) -> Result<Board> {
    let file = dir.join(format!("{name}.toml"));
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let known = names(dir).unwrap_or_default().join(", ");
            bail!(
                "unknown board {name:?} (no {}); known boards: {known}. \
                 Run `cargo xtask boards`, or add a board file",
                file.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    parse(name, &file, &text)
}

/// Loads board `name` from `boards/`.
pub fn load(name: &str) -> Result<Board> {
    load_from(&boards_dir(), name)
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml")
            && let Some(stem) = p.file_stem()
        {
            out.push(stem.to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Loads and validates every board in `dir`; the first bad file is an error.
pub fn load_all(dir: &Path) -> Result<Vec<Board>> {
    names(dir)?.iter().map(|n| load_from(dir, n)).collect()
}

/// `cargo xtask boards`.
pub fn cmd(mut args: Args) -> Result<()> {
    let dir = args.path("--dir")?.unwrap_or_else(boards_dir);
    args.finish()?;
    let boards = load_all(&dir)?;
    println!(
        "{:<16} {:<28} {:<5} {:<11} {:<11} description",
        "board", "target", "table", "boot", "root"
    );
    for b in &boards {
        println!(
            "{:<16} {:<28} {:<5} {:<11} {:<11} {}",
            b.name,
            b.target,
            b.layout.table,
            format!("p{} {}", b.layout.boot.number, b.layout.boot.fs),
            format!("p{} {}", b.layout.root.number, b.layout.root.fs),
            b.description
        );
        println!(
            "{:<16} identity: {}, flash: {}",
            "",
            match b.identity {
                Identity::Rootfs => "rootfs files",
            },
            match b.flash {
                FlashMethod::BlockDevice => "raw write to a block device",
            }
        );
        if !b.cmdline.add.is_empty() {
            println!("{:<16} cmdline += {}", "", b.cmdline.add.join(" "));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "test board"
target = "aarch64-unknown-linux-musl"
[image]
partition_table = "mbr"
boot = { partition = 1, filesystem = "vfat" }
root = { partition = 2, filesystem = "ext4" }
[cmdline]
file = "boot:/cmdline.txt"
add = ["cgroup_enable=memory"]
[identity]
method = "rootfs"
[flash]
method = "block-device"
"#;

    fn err(text: &str) -> String {
        format!(
            "{:#}",
            parse("t", Path::new("boards/t.toml"), text).unwrap_err()
        )
    }

    #[test]
    fn shipped_boards_are_valid() {
        let boards = load_all(&boards_dir()).unwrap();
        let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
        for want in ["rpi3", "rpi4", "rpi5", "generic-aarch64"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let g = boards.iter().find(|b| b.name == "generic-aarch64").unwrap();
        assert_eq!(g.layout.table, TableKind::Gpt);
        let p = boards.iter().find(|b| b.name == "rpi4").unwrap();
        assert_eq!(p.target, "aarch64-unknown-linux-musl");
        assert!(p.cmdline.add.iter().any(|a| a == "cgroup_enable=memory"));
    }

    #[test]
    fn good_file_parses() {
        let b = parse("t", Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(b.layout.boot.number, 1);
        assert_eq!(b.cmdline.file, Some((Which::Boot, "/cmdline.txt".into())));
    }

    #[test]
    fn unknown_key_names_file_and_field() {
        let e = err(&GOOD.replace("[flash]", "[flash]\nspeed = 3"));
        assert!(e.contains("boards/t.toml") && e.contains("speed"), "{e}");
        let e = err(&GOOD.replace("description", "descripton"));
        assert!(e.contains("descripton"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (GOOD.replace("\"mbr\"", "\"apm\""), "apm"),
            (
                GOOD.replace("partition = 2", "partition = 5"),
                "image.root.partition",
            ),
            (
                GOOD.replace("partition = 2", "partition = 1"),
                "image.root.partition",
            ),
            (
                GOOD.replace("aarch64-unknown-linux-musl", "thumbv7em-none-eabihf"),
                "target",
            ),
            (
                GOOD.replace("boot:/cmdline.txt", "cmdline.txt"),
                "cmdline.file",
            ),
            (
                GOOD.replace("\"cgroup_enable=memory\"", "\"a b\""),
                "cmdline.add[0]",
            ),
            (
                GOOD.replace(
                    "root = { partition = 2, filesystem = \"ext4\" }",
                    "root = { partition = 2, filesystem = \"vfat\" }",
                ),
                "image.root.filesystem",
            ),
            (GOOD.replace("\"block-device\"", "\"usb-boot\""), "usb-boot"),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert!(
                e.contains(field) && e.contains("boards/t.toml"),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let e = load("nope").unwrap_err().to_string();
        assert!(
            e.contains("rpi4") && e.contains("cargo xtask boards"),
            "{e}"
        );
    }
}
