//! Opening an image that may be compressed: `.xz` and `.gz` are streamed,
//! never unpacked to a temporary file.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// How an image file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A raw image.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// xz (`.xz`).
    Xz,
}

impl Compression {
    /// Detects the format from the first bytes (magic), not the name.
    pub fn detect(path: &Path) -> Result<Compression> {
        let mut magic = [0u8; 6];
        let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let n = f.read(&mut magic)?;
        Ok(match &magic[..n] {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Compression::Xz,
            _ => Compression::None,
        })
    }
}

/// A reader over the uncompressed bytes of `path`.
pub fn open(path: &Path) -> Result<Box<dyn Read>> {
    let f = File::open(path).with_context(|| format!("open image {}", path.display()))?;
    let f = BufReader::with_capacity(1 << 20, f);
    Ok(match Compression::detect(path)? {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(f)),
    })
}

/// The uncompressed size of `path`. For compressed files this reads the
/// whole stream once: the gzip trailer only holds the size modulo 4 GiB, and
/// the check that a card is large enough must not be fooled by that.
pub fn uncompressed_size(path: &Path) -> Result<u64> {
    match Compression::detect(path)? {
        Compression::None => Ok(std::fs::metadata(path)
            .with_context(|| format!("stat {}", path.display()))?
            .len()),
        _ => {
            eprintln!(
                "measuring the uncompressed size of {} (one pass)...",
                path.display()
            );
            let n = std::io::copy(&mut open(path)?, &mut std::io::sink())
                .with_context(|| format!("{} is corrupt or truncated", path.display()))?;
            Ok(n)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_xz_stream_to_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let gz = dir.path().join("a.img.gz");
        let mut e = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        e.write_all(&data).unwrap();
        e.finish().unwrap();
        let xz = dir.path().join("a.img.xz");
        let mut e = xz2::write::XzEncoder::new(File::create(&xz).unwrap(), 6);
        e.write_all(&data).unwrap();
        e.finish().unwrap();
        for p in [&gz, &xz] {
            let mut out = Vec::new();
            open(p).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
            assert_eq!(uncompressed_size(p).unwrap(), data.len() as u64);
        }
        assert_eq!(Compression::detect(&gz).unwrap(), Compression::Gzip);
        assert_eq!(Compression::detect(&xz).unwrap(), Compression::Xz);
    }
}
