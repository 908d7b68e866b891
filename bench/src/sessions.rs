//! Many idle sessions at once against a sidecar: how long a burst of handshakes takes, and (read
//! by the harness from /proc while they are held) what each one costs the sidecar in memory.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::drive::percentile;
use crate::target::{header, ECHO};

#[derive(clap::Args)]
pub struct SessionArgs {
    /// The sidecar's session URL, `ws://host:port/path`.
    #[arg(long)]
    url: String,
    /// Bearer token sent in `Authorization`.
    #[arg(long)]
    token: String,
    /// Sessions to open.
    #[arg(long)]
    count: usize,
    /// Handshakes in flight at once (= count: all in one burst).
    #[arg(long, default_value_t = 1000)]
    parallel: usize,
}

/// Opens the sessions, prints a JSON line once all are up, holds them (answering pings) until
/// stdin closes, then closes them all.
pub async fn run(a: &SessionArgs) -> anyhow::Result<serde_json::Value> {
    let mut req = a.url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", a.token))?,
    );
    let host = req
        .uri()
        .authority()
        .context("url has no host")?
        .to_string();
    let gate = Arc::new(Semaphore::new(a.parallel.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<anyhow::Result<f64>>(a.count.max(1));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(a.count);
    for _ in 0..a.count {
        let (req, host, gate, mut stop, up) = (
            req.clone(),
            host.clone(),
            gate.clone(),
            stop_rx.clone(),
            up_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t = Instant::now();
            let opened = async {
                let sock = TcpStream::connect(&host).await?;
                let (mut ws, _) = tokio_tungstenite::client_async(req, sock).await?;
                let mut hello = header(ECHO, 0).to_vec();
                hello.push(0x42);
                ws.send(Message::binary(hello)).await?;
                // The banner comes first (typed or raw framing), then the echo.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(b))) if b.last() == Some(&0x42) => break Ok(ws),
                        Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        other => bail!("no echo: {other:?}"),
                    }
                }
            }
            .await;
            drop(permit);
            let mut ws = match opened {
                Ok(ws) => {
                    let _ = up.send(Ok(t.elapsed().as_secs_f64() * 1e3)).await;
                    ws
                }
                Err(e) => {
                    let _ = up.send(Err(e)).await;
                    return;
                }
            };
            drop(up);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    // Reading answers the sidecar's keepalive pings.
                    m = ws.next() => if m.is_none() { return },
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(up_tx);
    let mut ms = Vec::with_capacity(a.count);
    let mut first_error = None;
    while let Some(r) = up_rx.recv().await {
        match r {
            Ok(t) => ms.push(t),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "opened": ms.len(),
            "failed": a.count - ms.len(),
            "first_error": first_error,
            "secs": secs,
            "handshake_p50_ms": percentile(&ms, 0.5),
            "handshake_p99_ms": percentile(&ms, 0.99),
        })
    );
    // Held until the harness has read the sidecar's memory and closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(json!({"closed": ms.len()}))
}
