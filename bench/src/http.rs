//! HTTP/1.1 load through Envoy: a minimal upstream and a closed-loop load generator, enough to
//! compare Envoy with no filter, with wsgate's filter and with a Lua filter doing the same work.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::drive::percentile;

/// Reads one request or response head (up to and including the blank line) into `buf`, keeping
/// any bytes after it at the front of `buf` for the next call. `None` on a clean EOF.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head over 64 KiB"));
        }
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines().skip(1).any(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

fn content_length(head: &str) -> usize {
    head.lines()
        .skip(1)
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

pub async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(sock).await;
        });
    }
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut sock, &mut buf).await? {
        let auth = if has_header(&head, "authorization") {
            "1"
        } else {
            "0"
        };
        if has_header(&head, "upgrade") {
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-bench-auth: {auth}\r\n\r\n"
            );
            sock.write_all(reply.as_bytes()).await?;
            let mut sink = [0u8; 4096];
            while sock.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        let reply =
            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-bench-auth: {auth}\r\n\r\nok");
        sock.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Keep-alive GETs on one connection per worker.
    Plain,
    /// A WebSocket handshake on a new connection each time (closed once the 101 is read).
    Upgrade,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Envoy's plaintext listener.
    #[arg(long)]
    addr: SocketAddr,
    /// Requests in flight at once (one per worker, closed loop).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "3")]
    seconds: f64,
    #[arg(long, value_enum, default_value = "plain")]
    mode: Mode,
    /// Request path (with query).
    #[arg(long, default_value = "/")]
    path: String,
    /// Extra request header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Default)]
struct Tally {
    lat_us: Vec<f64>,
    errors: u64,
    auth_seen: u64,
}

pub async fn load(a: &LoadArgs) -> anyhow::Result<serde_json::Value> {
    let mut req = format!("GET {} HTTP/1.1\r\nhost: bench\r\n", a.path);
    for h in &a.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if matches!(a.mode, Mode::Upgrade) {
        req.push_str(
            "connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    }
    req.push_str("\r\n");
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (req, addr, mode) = (req.clone(), a.addr, a.mode);
            tokio::spawn(async move { worker(addr, mode, req.as_bytes(), deadline).await })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.lat_us.extend(t.lat_us);
        all.errors += t.errors;
        all.auth_seen += t.auth_seen;
    }
    let secs = start.elapsed().as_secs_f64();
    if all.lat_us.is_empty() {
        bail!("no request succeeded ({} errors)", all.errors);
    }
    all.lat_us.sort_by(f64::total_cmp);
    Ok(json!({
        "requests": all.lat_us.len(),
        "errors": all.errors,
        "auth_seen": all.auth_seen,
        "rps": all.lat_us.len() as f64 / secs,
        "p50_us": percentile(&all.lat_us, 0.50),
        "p99_us": percentile(&all.lat_us, 0.99),
    }))
}

async fn worker(addr: SocketAddr, mode: Mode, req: &[u8], deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while Instant::now() < deadline {
        let started = Instant::now();
        match one(addr, mode, req, &mut conn).await {
            Ok(auth) => {
                t.lat_us.push(started.elapsed().as_secs_f64() * 1e6);
                t.auth_seen += u64::from(auth);
            }
            Err(_) => {
                t.errors += 1;
                conn = None;
            }
        }
    }
    t
}

/// One request; returns whether the upstream saw an `Authorization` header.
async fn one(
    addr: SocketAddr,
    mode: Mode,
    req: &[u8],
    conn: &mut Option<(TcpStream, Vec<u8>)>,
) -> anyhow::Result<bool> {
    if conn.is_none() || matches!(mode, Mode::Upgrade) {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *conn = Some((s, Vec::new()));
    }
    let Some((sock, buf)) = conn.as_mut() else {
        bail!("no connection")
    };
    sock.write_all(req).await?;
    let head = read_head(sock, buf).await?.context("closed")?;
    let want = if matches!(mode, Mode::Upgrade) {
        " 101 "
    } else {
        " 200 "
    };
    if !head.lines().next().is_some_and(|l| l.contains(want)) {
        bail!("unexpected reply: {}", head.lines().next().unwrap_or(""));
    }
    let auth = head.to_ascii_lowercase().contains("x-bench-auth: 1");
    if matches!(mode, Mode::Upgrade) {
        // Reset instead of FIN: thousands of closes a second would otherwise pile up in TIME_WAIT.
        if let Some((s, _)) = conn.take() {
            let _ = s.set_zero_linger();
        }
    } else {
        let len = content_length(&head);
        while buf.len() < len {
            let mut chunk = [0u8; 1024];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed mid body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..len);
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_are_split_and_the_rest_kept() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nAuthorization: x\r\n\r\nGET /2 HTTP/1.1\r\n\r\n";
        let mut buf = Vec::new();
        let h = read_head(&mut r, &mut buf).await.unwrap().unwrap();
        assert!(has_header(&h, "authorization"));
        assert!(!has_header(&h, "upgrade"));
        let h2 = read_head(&mut r, &mut buf).await.unwrap().unwrap();
        assert!(h2.starts_with("GET /2 "));
        assert!(read_head(&mut r, &mut buf).await.unwrap().is_none());
        assert_eq!(
            content_length("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
            2
        );
    }
}
