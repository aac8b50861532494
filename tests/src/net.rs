//! Ports and a minimal HTTP/1.1 client for talking to the agent's listener.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A port of `[::1]` that was free a moment ago.
pub fn free_port6() -> u16 {
    TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts connections on `port` of 127.0.0.1.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    wait_addr(SocketAddr::from(([127, 0, 0, 1], port)), timeout)
}

/// Waits until something accepts connections on `addr` (IPv4 or IPv6).
pub fn wait_addr(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// GET `path` on 127.0.0.1:`port` with `Connection: close`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let (status, body) = http_get_bytes(port, path)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Like [`http_get`], the body as bytes.
pub fn http_get_bytes(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect :{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let chunked = head.contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest.get(n + 2..).unwrap_or(&[]);
    }
    out
}

/// Reads one request (request line, headers, a `content-length` body) from a connection a
/// test's receiver serves: its path and body, or None once the client closed it.
pub fn read_post(reader: &mut BufReader<TcpStream>) -> Result<Option<(String, Vec<u8>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().context("content-length")?;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Some((path, body)))
}
