//! Pushing bytes and ping-pong through a path: a direct TCP connection (the baseline) or a stdio
//! bridge client started as a child process, the way ssh starts its `ProxyCommand`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::target::{header, BANNER, ECHO, PUSH};

/// The path under test.
#[derive(clap::Args)]
pub struct Via {
    /// Connect straight to the target (raw TCP, the baseline).
    #[arg(long, conflicts_with = "command")]
    connect: Option<SocketAddr>,
    /// A stdio client to run instead, after `--` (e.g. `-- wsgate proxy ws://… prod`); its
    /// stdin goes to the target and the target's bytes come back on its stdout.
    #[arg(last = true)]
    command: Vec<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open path; the child (if any) is measured before it is told to stop.
struct Opened {
    io: Box<dyn Io>,
    child: Option<Child>,
}

/// Opens the path and reads the target's banner through it.
async fn open(via: &Via) -> anyhow::Result<Opened> {
    let mut p = open_path(via).await?;
    let mut banner = [0u8; BANNER.len()];
    p.io.read_exact(&mut banner)
        .await
        .context("path closed before the target's banner")?;
    if banner != BANNER {
        bail!("not the target's banner: {banner:?}");
    }
    Ok(p)
}

async fn open_path(via: &Via) -> anyhow::Result<Opened> {
    if let Some(addr) = via.connect {
        let sock = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        sock.set_nodelay(true)?;
        return Ok(Opened {
            io: Box::new(sock),
            child: None,
        });
    }
    let Some((prog, args)) = via.command.split_first() else {
        bail!("give --connect ADDR or a command after --");
    };
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {prog}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("{prog}: no stdio pipes");
    };
    Ok(Opened {
        io: Box::new(tokio::io::join(stdout, stdin)),
        child: Some(child),
    })
}

impl Opened {
    /// CPU seconds and peak RSS of the child so far (zeros for a direct connection).
    fn child_stats(&self) -> (f64, u64) {
        self.child
            .as_ref()
            .and_then(Child::id)
            .map(proc_stats)
            .unwrap_or((0.0, 0))
    }

    /// Closes the client's stdin (its EOF) and waits for it to exit.
    async fn finish(self) {
        drop(self.io);
        if let Some(mut child) = self.child {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// utime+stime in seconds and VmHWM in KiB of a live process, from /proc.
fn proc_stats(pid: u32) -> (f64, u64) {
    // Linux's USER_HZ is 100 on every platform it supports.
    const TICKS: f64 = 100.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / TICKS)
        })
        .unwrap_or(0.0);
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    (cpu, hwm)
}

/// Random bytes (xorshift), so a path that compresses cannot look faster than it is.
fn random_block(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `bytes` bytes taken over and over from `block`, then flushes.
async fn write_repeated<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    block: &[u8],
    bytes: u64,
) -> std::io::Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    w.flush().await
}

pub async fn random_to_stdout(bytes: u64) -> anyhow::Result<()> {
    write_repeated(&mut tokio::io::stdout(), &random_block(1 << 20), bytes).await?;
    Ok(())
}

pub async fn push(via: &Via, bytes: u64) -> anyhow::Result<serde_json::Value> {
    let block = random_block(1 << 20);
    let mut p = open(via).await?;
    let start = Instant::now();
    p.io.write_all(&header(PUSH, bytes)).await?;
    write_repeated(&mut p.io, &block, bytes)
        .await
        .context("path closed while pushing")?;
    let mut ack = [0u8; 8];
    p.io.read_exact(&mut ack)
        .await
        .context("path closed before the target acknowledged")?;
    let secs = start.elapsed().as_secs_f64();
    if u64::from_be_bytes(ack) != bytes {
        bail!(
            "target acknowledged {} bytes, pushed {bytes}",
            u64::from_be_bytes(ack)
        );
    }
    let (cpu, hwm) = p.child_stats();
    p.finish().await;
    Ok(json!({
        "bytes": bytes,
        "secs": secs,
        "mb_per_s": bytes as f64 / secs / 1e6,
        "client_cpu_s": cpu,
        "client_peak_rss_kib": hwm,
    }))
}

pub async fn pingpong(via: &Via, count: usize, size: usize) -> anyhow::Result<serde_json::Value> {
    let msg = random_block(size);
    let mut back = vec![0u8; size];
    let start = Instant::now();
    let mut p = open(via).await?;
    let mut first = header(ECHO, 0).to_vec();
    first.extend_from_slice(&msg);
    p.io.write_all(&first).await?;
    p.io.flush().await?;
    p.io.read_exact(&mut back).await.context("no echo")?;
    let first_echo_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut rtt_us = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        p.io.write_all(&msg).await?;
        p.io.flush().await?;
        p.io.read_exact(&mut back)
            .await
            .context("path closed mid ping-pong")?;
        rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
        if back != msg {
            bail!("echo differs from what was sent");
        }
    }
    rtt_us.sort_by(f64::total_cmp);
    let (cpu, hwm) = p.child_stats();
    p.finish().await;
    Ok(json!({
        "count": count,
        "first_echo_ms": first_echo_ms,
        "p50_us": percentile(&rtt_us, 0.50),
        "p99_us": percentile(&rtt_us, 0.99),
        "client_cpu_s": cpu,
        "client_peak_rss_kib": hwm,
    }))
}

/// The `q` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
