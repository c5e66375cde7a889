//! A minimal HTTP/1.1 client over any byte stream: the unix socket of the
//! libpod REST API, and TCP or TLS-over-TCP for the HTTP health checks.
//! One connection per request (`Connection: close`), bodies delimited by
//! `Content-Length`, chunked encoding or EOF, and streamed bodies read
//! incrementally (events, an exec's output). Every read is bounded (a
//! header line, a piece of body), so a peer that sends endless data cannot
//! grow the agent's memory: a health check talks to a container, which the
//! agent does not trust.
//!
//! Why not hyper (through podman-api): the agent's footprint goal is a
//! 5 MiB binary and 3.5 MiB RSS, and this covers everything the agent sends
//! in a few hundred lines.

use std::io;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest response body read into memory (Podman's answers are small;
/// pull progress for big images is the largest).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Longest line of a response head or chunk header.
const MAX_LINE: usize = 8 * 1024;

/// Most header lines in a response head.
const MAX_HEADERS: usize = 100;

/// Largest piece of body [`StreamingResponse::next_chunk`] returns.
const PIECE: usize = 16 * 1024;

/// Read buffer of a connection made by [`send`] (tokio's default).
const READ_BUFFER: usize = 8 * 1024;

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

/// One request: what [`send`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`...
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The `Host` header, unless `headers` has one.
    pub host: &'a str,
    /// More headers (name, value), sent as given.
    pub headers: &'a [(&'a str, &'a str)],
    /// A JSON body.
    pub body: Option<&'a [u8]>,
}

/// Sends one request to the libpod socket and reads the whole response.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let json: &[(&str, &str)] = if body.is_some() {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    request_with(socket, method, path, json, body).await
}

/// [`request`] with the headers given (and no others but `Host`): a body
/// that is not JSON, an `X-Registry-Auth`.
pub async fn request_with(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let stream = UnixStream::connect(socket).await?;
    let request = Request {
        method,
        path,
        host: "d",
        headers,
        body,
    };
    let mut stream = send(stream, &request).await?;
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

/// A response whose body is read as it arrives, over stream `S` (by
/// default the libpod unix socket).
pub struct StreamingResponse<S = UnixStream> {
    /// Status code.
    pub status: u16,
    reader: BufReader<S>,
    framing: Framing,
    pending: Vec<u8>,
}

enum Framing {
    Length(usize),
    /// `left`: bytes of the current chunk still to read (0: a chunk header
    /// comes next).
    Chunked {
        left: usize,
        done: bool,
    },
    UntilEof {
        done: bool,
    },
}

/// Sends a request to the libpod socket and returns once the response head
/// has arrived.
pub async fn open(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<StreamingResponse> {
    let stream = UnixStream::connect(socket).await?;
    let json = [("Content-Type", "application/json")];
    let request = Request {
        method,
        path,
        host: "d",
        headers: if body.is_some() { &json } else { &[] },
        body,
    };
    send(stream, &request).await
}

/// Sends `request` on a connected `stream` and returns once the response
/// head has arrived.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &Request<'_>,
) -> io::Result<StreamingResponse<S>> {
    send_buffered(stream, request, READ_BUFFER).await
}

/// [`send`], reading the response through a buffer of `capacity` bytes
/// (lines longer than it are still read whole, up to the line limit).
pub async fn send_buffered<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &Request<'_>,
    capacity: usize,
) -> io::Result<StreamingResponse<S>> {
    // A line break in any part would end the line early and let the rest
    // pass for other headers: checks carry user-written paths and headers.
    let parts = [request.method, request.path, request.host]
        .into_iter()
        .chain(request.headers.iter().flat_map(|(k, v)| [*k, *v]));
    for part in parts {
        if part.contains(['\r', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("line break in the request: {part:?}"),
            ));
        }
    }
    let mut reader = BufReader::with_capacity(capacity, stream);
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
    if !request
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("Host: {}\r\n", request.host));
    }
    for (k, v) in request.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n");
    if let Some(b) = request.body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    if let Some(b) = request.body {
        msg.extend_from_slice(b);
    }
    reader.get_mut().write_all(&msg).await?;
    reader.get_mut().flush().await?;

    let mut line = Vec::new();
    read_line(&mut reader, &mut line).await?;
    let status = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            bad(format!(
                "bad status line {:?}",
                String::from_utf8_lossy(&line)
            ))
        })?;
    let mut length = None;
    let mut chunked = false;
    let mut headers = 0;
    loop {
        if read_line(&mut reader, &mut line).await? == 0 {
            return Err(bad("connection closed in the response head"));
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(bad("too many response headers"));
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
        Framing::Chunked {
            left: 0,
            done: false,
        }
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

/// Reads one line (with its newline) into `line`, at most [`MAX_LINE`]
/// bytes; returns the bytes read, 0 at EOF.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> io::Result<usize> {
    line.clear();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        let (take, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(bad("line too long"));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if end {
            return Ok(line.len());
        }
    }
}

impl<S: AsyncRead + Unpin> StreamingResponse<S> {
    /// The next piece of the body (at most 16 KiB), `None` at its end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.next_chunk_max(PIECE).await
    }

    /// The next piece of the body, at most `max` bytes (and 16 KiB),
    /// `None` at its end.
    pub async fn next_chunk_max(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let max = max.clamp(1, PIECE);
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(n) => {
                let mut buf = vec![0; (*n).min(max)];
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
                let mut buf = vec![0; max];
                let got = self.reader.read(&mut buf).await?;
                if got == 0 {
                    *done = true;
                    return Ok(None);
                }
                buf.truncate(got);
                Ok(Some(buf))
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(None);
                }
                if *left == 0 {
                    let mut line = Vec::new();
                    if read_line(&mut self.reader, &mut line).await? == 0 {
                        return Err(bad("connection closed in a chunk header"));
                    }
                    let text = String::from_utf8_lossy(&line);
                    let size_hex = text.trim().split(';').next().unwrap_or("");
                    let size = usize::from_str_radix(size_hex, 16)
                        .map_err(|_| bad(format!("bad chunk size {text:?}")))?;
                    if size == 0 {
                        *done = true;
                        return Ok(None);
                    }
                    *left = size;
                }
                // A chunk is read in pieces, so its announced size never
                // decides how much the agent allocates.
                let mut buf = vec![0; (*left).min(max)];
                let got = self.reader.read(&mut buf).await?;
                if got == 0 {
                    return Err(bad("connection closed in a chunk"));
                }
                *left -= got;
                buf.truncate(got);
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.reader.read_exact(&mut crlf).await?;
                }
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

    /// Up to `max` bytes of the body, the rest left unread (for a message).
    pub async fn body_prefix(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(chunk) = self.next_chunk().await? else {
                break;
            };
            let take = chunk.len().min(max - out.len());
            out.extend_from_slice(&chunk[..take]);
        }
        Ok(out)
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

    /// The request as written, and the answer read back, over an in-memory
    /// stream: what a health check does over TCP or TLS.
    #[tokio::test]
    async fn any_stream_with_headers() {
        let (client, mut server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            server
                .write_all(b"HTTP/1.1 503 Busy\r\n\r\nnot ready yet")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let request = Request {
            method: "GET",
            path: "/healthz",
            host: "10.0.0.2:80",
            headers: &[("X-Probe", "1")],
            body: None,
        };
        let mut r = send(client, &request).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body_prefix(3).await.unwrap(), b"not");
        assert_eq!(
            peer.await.unwrap(),
            "GET /healthz HTTP/1.1\r\nHost: 10.0.0.2:80\r\nX-Probe: 1\r\nConnection: close\r\n\r\n"
        );
    }

    /// A chunk announced bigger than any body is read in bounded pieces,
    /// and a header line without end is refused, not buffered.
    #[tokio::test]
    async fn bounded_reads() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            server
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n")
                .await
                .unwrap();
            server.write_all(&[b'x'; 40 * 1024]).await.unwrap();
            // Held open: the client must not wait for the rest.
            std::future::pending::<()>().await;
        });
        let request = Request {
            method: "GET",
            path: "/",
            host: "h",
            headers: &[("Host", "mine")],
            body: None,
        };
        let mut r = send(client, &request).await.unwrap();
        let piece = r.next_chunk().await.unwrap().unwrap();
        assert!(!piece.is_empty() && piece.len() <= PIECE);

        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            server.write_all(b"HTTP/1.1 200 OK\r\nX: ").await.unwrap();
            server.write_all(&[b'y'; 2 * MAX_LINE]).await.unwrap();
            std::future::pending::<()>().await;
        });
        let err = send(client, &request).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// A read buffer smaller than a header line still reads the head
    /// whole, and a body piece is cut to the size asked for.
    #[tokio::test]
    async fn small_buffer() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let long = "v".repeat(300);
            let reply =
                format!("HTTP/1.1 500 Oops\r\nX-Long: {long}\r\nContent-Length: 40\r\n\r\n");
            server.write_all(reply.as_bytes()).await.unwrap();
            server.write_all(&[b'b'; 40]).await.unwrap();
            std::future::pending::<()>().await;
        });
        let request = Request {
            method: "GET",
            path: "/",
            host: "h",
            headers: &[],
            body: None,
        };
        let mut r = send_buffered(client, &request, 16).await.unwrap();
        assert_eq!(r.status, 500);
        // A piece is what one read gives: here the buffer's rest.
        let piece = r.next_chunk_max(8).await.unwrap().unwrap();
        assert!(!piece.is_empty() && piece.len() <= 8, "{piece:?}");
        let rest = r.body_prefix(100).await.unwrap();
        assert_eq!(piece.len() + rest.len(), 40);
        assert!(rest.iter().all(|b| *b == b'b'));
        assert_eq!(r.next_chunk_max(8).await.unwrap(), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("{\"a\":[\"b=c\"]}"),
            "%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D"
        );
    }
}
