//! The bridge: one WebSocket session ↔ one TCP connection to the target, both directions at once.
//!
//! Generic over the WebSocket (`Sink` + `Stream` of axum messages) and the target (`AsyncRead`
//! and `AsyncWrite`), so it is tested with channels and `tokio::io::duplex` as well as end to end.
//! Memory is bounded: one read buffer of at most `max_frame` bytes towards the client (touched
//! only as far as data arrives), and one frame at a time towards the target (the next frame is not read until the last is written), so a slow
//! peer slows the other side down instead of growing a queue.

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message};
use bytes::{BufMut, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CloseReason;
use wsgate_core::framing::{decode, Framing, Inbound, TYPE_DATA};

/// Per-session settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub framing: Framing,
    /// Largest payload read from the target into one frame (and accepted from the client).
    pub max_frame: usize,
    /// WebSocket pings from the server; `None` disables them.
    pub ping_interval: Option<Duration>,
    /// Pings without a pong before the session is closed.
    pub max_missed_pongs: u32,
    /// Close after this long with no session bytes either way.
    pub idle_timeout: Option<Duration>,
    /// Close after this long regardless.
    pub max_age: Option<Duration>,
}

/// Where the bridge reports bytes and latency (the session listing and the metrics).
pub trait Observer: Send + Sync {
    fn up(&self, bytes: u64);
    fn down(&self, bytes: u64);
    fn latency_ms(&self, ms: u64);
}

/// How often timers (idle, age, keepalive) are checked.
const TICK: Duration = Duration::from_millis(500);

/// Runs the session to its end and returns why it ended; the close frame has been sent.
pub async fn bridge<W, E, T>(
    ws: W,
    target: T,
    cfg: &BridgeConfig,
    obs: &dyn Observer,
    shutdown: CancellationToken,
) -> CloseReason
where
    W: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
    E: Display,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last session byte, for the idle timeout.
    let last_activity = AtomicU64::new(0);
    let touch = || last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    // Server pings not yet answered.
    let missed = AtomicU32::new(0);
    let (mut tx, mut rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(target);
    // Frames the client→target direction must send back (SkyPilot ping echoes).
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Message>(16);

    let up = async {
        while let Some(msg) = rx.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return classify_read_error(&e),
            };
            match msg {
                Message::Binary(frame) => match decode(cfg.framing, &frame) {
                    Ok(Inbound::Data([])) => {}
                    Ok(Inbound::Data(d)) => {
                        if wr.write_all(d).await.is_err() {
                            return CloseReason::TargetError;
                        }
                        obs.up(d.len() as u64);
                        touch();
                    }
                    Ok(Inbound::Ping(f)) => {
                        let echo = Message::Binary(Bytes::copy_from_slice(f));
                        if ctl_tx.send(echo).await.is_err() {
                            return CloseReason::ClientGone;
                        }
                    }
                    Ok(Inbound::Latency(ms)) => obs.latency_ms(ms),
                    Err(e) => return CloseReason::Frame(e),
                },
                Message::Text(_) => return CloseReason::TextFrame,
                Message::Pong(_) => missed.store(0, Ordering::Relaxed),
                // Answered by the WebSocket layer itself.
                Message::Ping(_) => {}
                Message::Close(_) => {
                    let _ = wr.shutdown().await;
                    return CloseReason::ClientClosed;
                }
            }
        }
        CloseReason::ClientGone
    };

    let down = async {
        let hdr = cfg.framing.header_len();
        // Filled by the kernel without zeroing first, and handed to the WebSocket layer
        // without copying: an idle session costs one touched page here, not `max_frame` bytes,
        // and the allocation comes back to `buf` once the frame has been written out.
        let mut buf = BytesMut::new();
        let mut tick = tokio::time::interval_at(start + TICK, TICK);
        let mut next_ping = cfg.ping_interval.map(|p| start + p);
        loop {
            if buf.is_empty() {
                buf.reserve(hdr + cfg.max_frame);
                if hdr == 1 {
                    buf.put_u8(TYPE_DATA);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return CloseReason::Shutdown,
                Some(m) = ctl_rx.recv() => {
                    if tx.send(m).await.is_err() {
                        return CloseReason::ClientGone;
                    }
                }
                r = read_chunk(&mut rd, &mut buf, cfg.max_frame) => match r {
                    Ok(0) => return CloseReason::TargetClosed,
                    Ok(n) => {
                        if tx.send(Message::Binary(buf.split().freeze())).await.is_err() {
                            return CloseReason::ClientGone;
                        }
                        obs.down(n as u64);
                        touch();
                    }
                    Err(_) => return CloseReason::TargetError,
                },
                now = tick.tick() => {
                    let age = now.duration_since(start);
                    if cfg.max_age.is_some_and(|m| age >= m) {
                        return CloseReason::MaxAge;
                    }
                    let idle = age.saturating_sub(Duration::from_millis(last_activity.load(Ordering::Relaxed)));
                    if cfg.idle_timeout.is_some_and(|t| idle >= t) {
                        return CloseReason::IdleTimeout;
                    }
                    if let (Some(at), Some(every)) = (next_ping, cfg.ping_interval) {
                        if now >= at {
                            if missed.fetch_add(1, Ordering::Relaxed) >= cfg.max_missed_pongs {
                                return CloseReason::KeepaliveTimeout;
                            }
                            if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                                return CloseReason::ClientGone;
                            }
                            next_ping = Some(now + every);
                        }
                    }
                }
            }
        }
    };

    let reason = tokio::select! {
        r = up => r,
        r = down => r,
    };
    if !matches!(reason, CloseReason::ClientGone) {
        let close = CloseFrame {
            code: reason.code(),
            reason: reason.message().into(),
        };
        let _ = tx.send(Message::Close(Some(close))).await;
    }
    let _ = tx.close().await;
    let _ = wr.shutdown().await;
    reason
}

/// Appends at most `max` bytes from `rd` to `buf` (cancel-safe: nothing is read if dropped).
async fn read_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<usize> {
    rd.read_buf(&mut buf.limit(max)).await
}

/// A read error from the WebSocket layer. Oversized frames are the one case worth telling apart;
/// the layer reports them as "Space limit exceeded: Message too long" (tungstenite's wording).
fn classify_read_error(e: &dyn Display) -> CloseReason {
    let s = e.to_string();
    if s.contains("too long") || s.contains("too big") {
        CloseReason::TooBig
    } else {
        CloseReason::ClientGone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};
    use wsgate_core::framing::FrameError;

    /// A WebSocket made of two channels: what the bridge sends, and what it receives.
    struct ChannelWs {
        tx: mpsc::UnboundedSender<Message>,
        rx: mpsc::UnboundedReceiver<Result<Message, String>>,
    }

    impl Sink<Message> for ChannelWs {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), String> {
            self.tx.unbounded_send(m).map_err(|e| e.to_string())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Stream for ChannelWs {
        type Item = Result<Message, String>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.rx).poll_next(cx)
        }
    }

    #[derive(Default)]
    struct Seen {
        up: AtomicU64,
        down: AtomicU64,
        latency: Mutex<Vec<u64>>,
    }

    impl Observer for Seen {
        fn up(&self, n: u64) {
            self.up.fetch_add(n, Ordering::Relaxed);
        }
        fn down(&self, n: u64) {
            self.down.fetch_add(n, Ordering::Relaxed);
        }
        fn latency_ms(&self, ms: u64) {
            self.latency.lock().unwrap().push(ms);
        }
    }

    fn cfg(framing: Framing) -> BridgeConfig {
        BridgeConfig {
            framing,
            max_frame: 1024,
            ping_interval: None,
            max_missed_pongs: 2,
            idle_timeout: None,
            max_age: None,
        }
    }

    type Client = (
        mpsc::UnboundedSender<Result<Message, String>>,
        mpsc::UnboundedReceiver<Message>,
    );

    fn ws() -> (ChannelWs, Client) {
        let (to_bridge, rx) = mpsc::unbounded();
        let (tx, from_bridge) = mpsc::unbounded();
        (ChannelWs { tx, rx }, (to_bridge, from_bridge))
    }

    fn bin(b: &[u8]) -> Result<Message, String> {
        Ok(Message::Binary(Bytes::copy_from_slice(b)))
    }

    fn close_code(m: &Message) -> Option<(u16, String)> {
        match m {
            Message::Close(Some(f)) => Some((f.code, f.reason.to_string())),
            _ => None,
        }
    }

    #[tokio::test]
    async fn typed_framing_both_ways_then_target_eof_closes_1000() {
        let (w, (to, mut from)) = ws();
        let (target, mut sshd) = tokio::io::duplex(4096);
        let seen = Seen::default();
        let c = cfg(Framing::Typed);
        let session = bridge(w, target, &c, &seen, CancellationToken::new());
        let peer = async {
            to.unbounded_send(bin(b"\x00hello")).unwrap();
            let mut got = [0u8; 5];
            sshd.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            // A ping is echoed unchanged; a latency report is recorded.
            to.unbounded_send(bin(&[1, 0, 0, 0, 42])).unwrap();
            assert_eq!(
                from.next().await.unwrap(),
                Message::Binary(Bytes::from_static(&[1, 0, 0, 0, 42]))
            );
            let mut lat = vec![2u8];
            lat.extend_from_slice(&17u64.to_be_bytes());
            to.unbounded_send(bin(&lat)).unwrap();
            sshd.write_all(b"SSH-2.0-test\r\n").await.unwrap();
            assert_eq!(
                from.next().await.unwrap(),
                Message::Binary(Bytes::from_static(b"\x00SSH-2.0-test\r\n"))
            );
            sshd.shutdown().await.unwrap();
            drop(sshd);
            from.next().await.unwrap()
        };
        let (reason, last) = tokio::join!(session, peer);
        assert_eq!(reason, CloseReason::TargetClosed);
        assert_eq!(
            close_code(&last),
            Some((1000, "target closed the connection".into()))
        );
        assert_eq!(seen.up.load(Ordering::Relaxed), 5);
        assert_eq!(seen.down.load(Ordering::Relaxed), 14);
        assert_eq!(*seen.latency.lock().unwrap(), vec![17]);
    }

    #[tokio::test]
    async fn raw_framing_passes_bytes_untouched() {
        let (w, (to, mut from)) = ws();
        let (target, mut sshd) = tokio::io::duplex(4096);
        let seen = Seen::default();
        let c = cfg(Framing::Raw);
        let session = bridge(w, target, &c, &seen, CancellationToken::new());
        let peer = async {
            to.unbounded_send(bin(&[1, 0, 0, 0, 42])).unwrap();
            let mut got = [0u8; 5];
            sshd.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [1, 0, 0, 0, 42]);
            sshd.write_all(&[0, 1, 2]).await.unwrap();
            assert_eq!(
                from.next().await.unwrap(),
                Message::Binary(Bytes::from_static(&[0, 1, 2]))
            );
            // Client close: the target sees EOF (shutdown of its write side).
            to.unbounded_send(Ok(Message::Close(None))).unwrap();
            let mut rest = Vec::new();
            sshd.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        let (reason, ()) = tokio::join!(session, peer);
        assert_eq!(reason, CloseReason::ClientClosed);
    }

    #[tokio::test]
    async fn bad_frames_close_with_a_reason() {
        for (frame, want) in [
            (vec![7u8, 1], CloseReason::Frame(FrameError::UnknownType(7))),
            (vec![1u8, 0], CloseReason::Frame(FrameError::BadPing(2))),
        ] {
            let (w, (to, mut from)) = ws();
            let (target, _sshd) = tokio::io::duplex(64);
            let c = cfg(Framing::Typed);
            to.unbounded_send(bin(&frame)).unwrap();
            let reason = bridge(w, target, &c, &Seen::default(), CancellationToken::new()).await;
            assert_eq!(reason, want);
            let (code, msg) = close_code(&from.next().await.unwrap()).unwrap();
            assert_eq!(code, 1008);
            assert_eq!(msg, want.message());
        }
        let (w, (to, _from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        to.unbounded_send(Ok(Message::Text("hi".into()))).unwrap();
        let reason = bridge(
            w,
            target,
            &cfg(Framing::Raw),
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::TextFrame);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_and_max_age() {
        let (w, (_to, mut from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.idle_timeout = Some(Duration::from_secs(30));
        let reason = bridge(w, target, &c, &Seen::default(), CancellationToken::new()).await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        assert_eq!(close_code(&from.next().await.unwrap()).unwrap().0, 1008);

        let (w, (_to, _from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.max_age = Some(Duration::from_secs(60));
        let t0 = Instant::now();
        let reason = bridge(w, target, &c, &Seen::default(), CancellationToken::new()).await;
        assert_eq!(reason, CloseReason::MaxAge);
        assert!(t0.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_and_gives_up_without_pongs() {
        let (w, (_to, mut from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 2;
        let reason = bridge(w, target, &c, &Seen::default(), CancellationToken::new()).await;
        assert_eq!(reason, CloseReason::KeepaliveTimeout);
        let mut pings = 0;
        while let Ok(m) = from.try_recv() {
            if matches!(m, Message::Ping(_)) {
                pings += 1;
            } else {
                assert_eq!(close_code(&m).unwrap().0, 1011);
            }
        }
        assert_eq!(pings, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_keep_the_session_alive() {
        let (w, (to, mut from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 1;
        c.max_age = Some(Duration::from_secs(100));
        let seen = Seen::default();
        let session = bridge(w, target, &c, &seen, CancellationToken::new());
        let answer = async {
            while let Some(m) = from.next().await {
                if matches!(m, Message::Ping(_)) {
                    to.unbounded_send(Ok(Message::Pong(Bytes::new()))).unwrap();
                } else {
                    return m;
                }
            }
            panic!("no close");
        };
        let (reason, last) = tokio::join!(session, answer);
        assert_eq!(reason, CloseReason::MaxAge);
        assert_eq!(close_code(&last).unwrap().0, 1008);
    }

    #[tokio::test]
    async fn shutdown_closes_1001() {
        let (w, (_to, mut from)) = ws();
        let (target, _sshd) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        stop.cancel();
        let reason = bridge(w, target, &cfg(Framing::Raw), &Seen::default(), stop).await;
        assert_eq!(reason, CloseReason::Shutdown);
        assert_eq!(
            close_code(&from.next().await.unwrap()).unwrap(),
            (1001, "server shutting down".into())
        );
    }

    #[tokio::test]
    async fn large_target_output_is_split_into_bounded_frames() {
        let (w, (_to, mut from)) = ws();
        let (target, mut sshd) = tokio::io::duplex(1 << 16);
        let c = cfg(Framing::Typed);
        let seen = Seen::default();
        let session = bridge(w, target, &c, &seen, CancellationToken::new());
        let peer = async {
            sshd.write_all(&vec![7u8; 10_000]).await.unwrap();
            drop(sshd);
            let mut total = 0;
            while let Some(m) = from.next().await {
                if let Message::Binary(b) = m {
                    assert!(b.len() <= 1 + 1024);
                    assert_eq!(b[0], 0);
                    total += b.len() - 1;
                }
            }
            total
        };
        let (_, total) = tokio::join!(session, peer);
        assert_eq!(total, 10_000);
    }
}
