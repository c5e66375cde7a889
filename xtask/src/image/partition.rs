//! Reading MBR and GPT partition tables from an image file, so each
//! filesystem can be addressed by byte offset without a loop device.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::boards::TableKind;

const SECTOR: u64 = 512;

/// A partition's place in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Number, from 1, as Linux names it (`sdX<number>`).
    pub number: u32,
    /// Byte offset of its first sector.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The partition table found in an image.
#[derive(Debug, Clone)]
pub struct Table {
    /// MBR or GPT (a protective MBR counts as GPT).
    pub kind: TableKind,
    /// The used entries.
    pub partitions: Vec<Partition>,
}

impl Table {
    /// Partition `number`, or an error saying what the image holds.
    pub fn get(&self, number: u32, role: &str) -> Result<Partition> {
        self.partitions
            .iter()
            .copied()
            .find(|p| p.number == number)
            .with_context(|| {
                let have: Vec<String> = self
                    .partitions
                    .iter()
                    .map(|p| p.number.to_string())
                    .collect();
                format!(
                    "the base image has no partition {number} (the board's {role} partition); \
                     it has partitions [{}]. Use a base image made for this board, or fix the board file",
                    have.join(", ")
                )
            })
    }
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from(u32_le(b, at)) | (u64::from(u32_le(b, at + 4)) << 32)
}

/// Reads the partition table of the image at `path`.
pub fn read(path: &Path) -> Result<Table> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr).with_context(|| {
        format!(
            "{} is smaller than one sector; it is not a disk image",
            path.display()
        )
    })?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        bail!(
            "{} has no partition table (no MBR signature); pass a whole-disk image \
             such as a Raspberry Pi OS .img, not a single filesystem",
            path.display()
        );
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
            (e[4], u64::from(u32_le(e, 8)), u64::from(u32_le(e, 12)))
        })
        .collect();
    if entries.iter().any(|(t, _, _)| *t == 0xEE) {
        return read_gpt(&mut f, len, path);
    }
    let mut partitions = Vec::new();
    for (i, (ty, start, sectors)) in entries.into_iter().enumerate() {
        if ty == 0 || sectors == 0 {
            continue;
        }
        let p = Partition {
            number: i as u32 + 1,
            offset: start * SECTOR, // < 2^32 * 512: no overflow
            size: sectors * SECTOR,
        };
        check_bounds(&p, len, path)?;
        partitions.push(p);
    }
    Ok(Table {
        kind: TableKind::Mbr,
        partitions,
    })
}

fn read_gpt(f: &mut File, len: u64, path: &Path) -> Result<Table> {
    let mut hdr = [0u8; 92];
    f.seek(SeekFrom::Start(SECTOR))?;
    f.read_exact(&mut hdr)?;
    if &hdr[0..8] != b"EFI PART" {
        bail!(
            "{} has a protective MBR but no GPT header at sector 1 (only 512-byte \
             sectors are supported); the image may be damaged",
            path.display()
        );
    }
    let entries_lba = u64_le(&hdr, 72);
    let count = u32_le(&hdr, 80);
    let entry_size = u32_le(&hdr, 84);
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        bail!(
            "{}: implausible GPT header (entry size {entry_size}, {count} entries)",
            path.display()
        );
    }
    let mut table = vec![0u8; count as usize * entry_size as usize];
    f.seek(SeekFrom::Start(entries_lba.saturating_mul(SECTOR)))?;
    f.read_exact(&mut table)
        .with_context(|| format!("{}: GPT entries run past the end", path.display()))?;
    let mut partitions = Vec::new();
    for (i, e) in table.chunks(entry_size as usize).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (u64_le(e, 32), u64_le(e, 40));
        if last < first {
            bail!(
                "{}: GPT entry {} ends before it starts",
                path.display(),
                i + 1
            );
        }
        let p = Partition {
            number: i as u32 + 1,
            offset: first.saturating_mul(SECTOR),
            size: (last - first).saturating_add(1).saturating_mul(SECTOR),
        };
        check_bounds(&p, len, path)?;
        partitions.push(p);
    }
    Ok(Table {
        kind: TableKind::Gpt,
        partitions,
    })
}

fn check_bounds(p: &Partition, len: u64, path: &Path) -> Result<()> {
    if p.offset.saturating_add(p.size) > len {
        bail!(
            "{}: partition {} ends at byte {} but the image has only {len} bytes; \
             the image is truncated (was the download or decompression complete?)",
            path.display(),
            p.number,
            p.offset.saturating_add(p.size)
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn image(f: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = vec![0u8; 64 * 1024];
        b[510] = 0x55;
        b[511] = 0xAA;
        f(&mut b);
        let p = dir.path().join("d.img");
        std::fs::write(&p, b).unwrap();
        (dir, p)
    }

    #[test]
    fn mbr_entries_and_truncation() {
        let (_d, p) = image(|b| {
            b[446 + 4] = 0x0c;
            b[446 + 8..446 + 12].copy_from_slice(&8u32.to_le_bytes());
            b[446 + 12..446 + 16].copy_from_slice(&16u32.to_le_bytes());
        });
        let t = read(&p).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(
            t.partitions,
            [Partition {
                number: 1,
                offset: 4096,
                size: 8192
            }]
        );
        let e = t.get(2, "root").unwrap_err().to_string();
        assert!(e.contains("no partition 2") && e.contains("[1]"), "{e}");
        let (_d, p) = image(|b| {
            b[446 + 4] = 0x83;
            b[446 + 8..446 + 12].copy_from_slice(&8u32.to_le_bytes());
            b[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        });
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("truncated"));
    }

    #[test]
    fn hostile_gpt_values_are_errors_not_panics() {
        let (_d, p) = image(|b| {
            b[446 + 4] = 0xEE;
            b[512..520].copy_from_slice(b"EFI PART");
            b[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
            b[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
            b[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
            // Entry 1: a type GUID, first LBA near u64::MAX.
            b[1024] = 1;
            b[1024 + 32..1024 + 40].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
            b[1024 + 40..1024 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        });
        assert!(read(&p).is_err());
        let (_d, p) = image(|b| b[446 + 4] = 0xEE);
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("no GPT header"));
        let (_d, p) = image(|b| b[510] = 0);
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("no partition table"));
    }
}
