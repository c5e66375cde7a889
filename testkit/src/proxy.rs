//! A loopback TCP proxy that a test can cut and restore, to take one
//! client off the network while the server keeps running (and taking
//! writes from everyone else).
//!
//! Plain threads rather than tokio tasks, so the proxy keeps forwarding
//! while a test blocks its runtime (a sync wait, a `current_thread` test).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Forwards every connection made to [`TcpProxy::url`] to the upstream
/// address, both ways, until [`TcpProxy::cut`]. Stopped on `Drop`.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    /// Live connections by id: (client side, upstream side).
    conns: Mutex<Links>,
    stopped: AtomicBool,
    refused: AtomicU64,
    accepted: AtomicU64,
}

#[derive(Default)]
struct Links {
    cut: bool,
    next_id: u64,
    live: Vec<(u64, TcpStream, TcpStream)>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Links> {
        // A panicking pump thread must not take the proxy down with it.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

impl TcpProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream`
    /// (a `SocketAddr`, `("127.0.0.1", port)`, `"127.0.0.1:4222"`...).
    pub fn start(upstream: impl ToSocketAddrs) -> TcpProxy {
        let upstream = upstream
            .to_socket_addrs()
            .expect("resolve the proxy's upstream")
            .next()
            .expect("the proxy's upstream has no address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, upstream, shared))
                .expect("spawn the proxy thread")
        };
        TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Starts a proxy forwarding to `127.0.0.1:port`.
    pub fn to_port(port: u16) -> TcpProxy {
        Self::start(("127.0.0.1", port))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every live connection (both ends see EOF) and closes new ones
    /// as soon as they are accepted, until [`TcpProxy::restore`].
    pub fn cut(&self) {
        let mut links = self.shared.links();
        links.cut = true;
        for (_, a, b) in links.live.drain(..) {
            close(&a, &b);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.links().cut = false;
    }

    /// How many connections were closed on arrival because the proxy was
    /// cut: a client counting here has noticed it lost its connection and
    /// is trying to reconnect.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// How many connections were forwarded.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many forwarded connections are open right now.
    pub fn live(&self) -> usize {
        self.shared.links().live.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.links().cut {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            // Upstream down: the client sees the same as a refused connect.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (|| {
            Some((
                client.try_clone().ok()?,
                server.try_clone().ok()?,
                client.try_clone().ok()?,
                server.try_clone().ok()?,
            ))
        })();
        let Some((c2, s2, c3, s3)) = clones else {
            close(&client, &server);
            continue;
        };
        let id = {
            // Registered under the lock that `cut` takes, so a connection
            // accepted while cutting is either closed here or by `cut`.
            let mut links = shared.links();
            if links.cut {
                shared.refused.fetch_add(1, Ordering::SeqCst);
                close(&client, &server);
                continue;
            }
            links.next_id += 1;
            let id = links.next_id;
            links.live.push((id, c3, s3));
            id
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let up = {
            let shared = shared.clone();
            move || pump(client, server, id, &shared)
        };
        let down = {
            let shared = shared.clone();
            move || pump(s2, c2, id, &shared)
        };
        // If a thread cannot start, the sockets it owned are dropped and
        // the connection dies, which a test sees as a disconnect.
        let _ = std::thread::Builder::new()
            .name("proxy-up".into())
            .spawn(up);
        let _ = std::thread::Builder::new()
            .name("proxy-down".into())
            .spawn(down);
    }
}

/// Copies `from` to `to` until either end closes, then closes both ends
/// of the connection (so the other direction ends too).
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    close(&from, &to);
    shared.links().live.retain(|(i, ..)| *i != id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that echoes every connection back; returns its port.
    fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        port
    }

    fn connect(p: &TcpProxy) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    /// Whether the peer closed: EOF or a reset, not a timeout.
    fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    #[test]
    fn forwards_both_ways() {
        let p = TcpProxy::to_port(echo_server());
        assert!(p.url().starts_with("nats://127.0.0.1:"));
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"hello").unwrap(), b"hello");
        // More than one buffer's worth, in both directions.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut r = s.try_clone().unwrap();
        let expect = big.clone();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            r.read_exact(&mut got).unwrap();
            got == expect
        });
        s.write_all(&big).unwrap();
        assert!(reader.join().unwrap());
        assert_eq!(p.accepted(), 1);
    }

    #[test]
    fn cut_closes_live_and_new_connections_until_restored() {
        let p = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], echo_server())));
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"a").unwrap(), b"a");
        assert_eq!(p.live(), 1);

        p.cut();
        assert!(closed(&mut s), "a live connection survived the cut");
        assert_eq!(p.live(), 0);
        let mut again = connect(&p);
        assert!(closed(&mut again), "a new connection got through the cut");
        assert!(
            crate::wait_until(Duration::from_secs(10), || p.refused() >= 1),
            "the refused connection was not counted"
        );

        p.restore();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"back").unwrap(), b"back");
        assert_eq!(p.accepted(), 2);
    }

    #[test]
    fn drop_closes_connections() {
        let p = TcpProxy::to_port(echo_server());
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"x").unwrap(), b"x");
        drop(p);
        assert!(closed(&mut s));
    }
}
