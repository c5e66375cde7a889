//! The NATS relay qemu runs for each guest connection (`guestfwd`):
//! stdin/stdout are the guest's connection, the other end the host's NATS.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Help for the internal `board-sim-relay` command.
pub const HELP: &str = "\
cargo xtask board-sim-relay HOST:PORT
    Internal: what qemu runs (guestfwd) for each guest connection to NATS;
    copies stdin/stdout to HOST:PORT. Started by `cargo xtask board-sim`.";

/// `xtask board-sim-relay HOST:PORT`: what qemu runs for each guest
/// connection to the NATS address. stdin/stdout (and stderr) are the guest's
/// connection, so this prints nothing, not even an error (the guest would
/// read it as NATS protocol); it ends when either side closes.
pub fn relay(args: Vec<String>) -> Result<()> {
    // NATS down: closing the connection is the whole answer.
    let _ = relay_inner(&args);
    Ok(())
}

fn relay_inner(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .context("usage: xtask board-sim-relay HOST:PORT (run by qemu)")?;
    let up = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let down = up.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut up = up;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
        let _ = tx.send(());
    });
    std::thread::spawn(move || {
        let mut down = down;
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match down.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx2.send(());
    });
    let _ = rx.recv();
    Ok(())
}
