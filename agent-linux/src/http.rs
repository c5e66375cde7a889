//! A minimal HTTP/1.1 client over a unix socket, just enough for the libpod
//! REST API: one connection per request (`Connection: close`), bodies
//! delimited by `Content-Length`, chunked encoding or EOF, and streamed
//! bodies read incrementally (events).
//!
//! Why not hyper (through podman-api): the agent's footprint goal is a
//! 5 MiB binary and 3.5 MiB RSS, and this covers everything the agent sends
//! in a few hundred lines.

use std::io;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest response body read into memory (Podman's answers are small;
/// pull progress for big images is the largest).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A complete response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Sends one request and reads the whole response.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut stream = open(socket, method, path, body).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next_chunk().await? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(bad("response body too large"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Response {
        status: stream.status,
        body: out,
    })
}

/// A response whose body is read as it arrives.
pub struct StreamingResponse {
    /// Status code.
    pub status: u16,
    reader: BufReader<UnixStream>,
    framing: Framing,
    pending: Vec<u8>,
}

enum Framing {
    Length(usize),
    Chunked { done: bool },
    UntilEof { done: bool },
}

/// Sends a request and returns once the response head has arrived.
pub async fn open(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<StreamingResponse> {
    let stream = UnixStream::connect(socket).await?;
    let mut reader = BufReader::new(stream);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    if let Some(b) = body {
        msg.extend_from_slice(b);
    }
    reader.get_mut().write_all(&msg).await?;

    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(bad("connection closed in the response head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let framing = if chunked {
        Framing::Chunked { done: false }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        Framing::UntilEof { done: false }
    };
    Ok(StreamingResponse {
        status,
        reader,
        framing,
        pending: Vec::new(),
    })
}

impl StreamingResponse {
    /// The next piece of the body, `None` at its end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(n) => {
                let mut buf = vec![0; (*n).min(64 * 1024)];
                let got = self.reader.read(&mut buf).await?;
                if got == 0 {
                    return Err(bad("connection closed before the body ended"));
                }
                *n -= got;
                buf.truncate(got);
                Ok(Some(buf))
            }
            Framing::UntilEof { done } => {
                if *done {
                    return Ok(None);
                }
                let mut buf = vec![0; 16 * 1024];
                let got = self.reader.read(&mut buf).await?;
                if got == 0 {
                    *done = true;
                    return Ok(None);
                }
                buf.truncate(got);
                Ok(Some(buf))
            }
            Framing::Chunked { done } => {
                if *done {
                    return Ok(None);
                }
                let mut line = String::new();
                if self.reader.read_line(&mut line).await? == 0 {
                    return Err(bad("connection closed in a chunk header"));
                }
                let size_hex = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                if size > MAX_BODY {
                    return Err(bad("chunk too large"));
                }
                if size == 0 {
                    *done = true;
                    return Ok(None);
                }
                let mut buf = vec![0; size + 2];
                self.reader.read_exact(&mut buf).await?;
                buf.truncate(size);
                Ok(Some(buf))
            }
        }
    }

    /// The next newline-terminated line of the body (without the newline),
    /// `None` at its end. For streams of JSON objects.
    pub async fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=pos).collect();
                line.pop();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            match self.next_chunk().await? {
                Some(c) => {
                    if self.pending.len() + c.len() > MAX_BODY {
                        return Err(bad("line too long"));
                    }
                    self.pending.extend_from_slice(&c)
                }
                None if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.pending))),
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::UnixListener;

    async fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(reply).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn chunked_and_lines() {
        let (_d, p) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n9\r\n}\n{\"b\":2}\r\n1\r\n\n\r\n0\r\n\r\n",
        )
        .await;
        let mut r = open(&p, "GET", "/x", None).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"b\":2}");
        assert_eq!(r.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn content_length() {
        let (_d, p) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!").await;
        let r = request(&p, "GET", "/x", Some(b"{}")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "nope!"));
        assert!(!r.is_success());
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("{\"a\":[\"b=c\"]}"),
            "%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D"
        );
    }
}
