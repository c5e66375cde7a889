//! QMP, qemu's control socket: the guest's power button.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Asks the guest to power off (the power button, through QMP).
pub fn powerdown(qmp: &Path) -> Result<()> {
    let mut s = UnixStream::connect(qmp).with_context(|| format!("connect {}", qmp.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    for req in [
        r#"{"execute":"qmp_capabilities"}"#,
        r#"{"execute":"system_powerdown"}"#,
    ] {
        s.write_all(req.as_bytes())?;
        s.write_all(b"\n")?;
        line.clear();
        r.read_line(&mut line)?;
        if line.contains("\"error\"") {
            bail!("qmp {req}: {line}");
        }
    }
    Ok(())
}
