//! Serving HTTP/1.1 connections with a deadline on every request head and on keep-alive idle
//! time, so no connection that is not an upgraded session can be held open for free.
//!
//! The accept loop and the per-connection hyper server live here (both listeners use them);
//! what happens on a request is the router's business, never this module's.
//!
//! Every connection is, at any moment, in one phase, and every phase but two has a deadline:
//!
//! | phase | from | deadline |
//! |---|---|---|
//! | head | accept, or the first byte after an idle wait | `--header-read-timeout` |
//! | busy | a complete head reached the router | none here (`--handshake-timeout` bounds it) |
//! | idle | the answer left the router (keep-alive) | `--keepalive-timeout` |
//! | upgraded | the answer was `101` | none: a session, with its own limits |
//!
//! Leading blank lines are bytes of a head (RFC 9112 lets a server skip them; hyper does), so
//! trickling them does not restart anything. The deadline also fails writes, so a client that
//! never reads its answer is cut as well. This is Go's `ReadHeaderTimeout` + `IdleTimeout`
//! (nginx: `client_header_timeout` + `keepalive_timeout`). hyper's own `header_read_timeout`
//! covers heads too (on a kept-alive connection its timer starts when the connection goes idle,
//! and blank lines are inside it), but it cannot tell idle time from head time, so it could not
//! give keep-alive its own limit; it is turned off and this module keeps one clock per
//! connection instead. After the upgrade the wrapper is a plain pass-through: one predictable
//! branch per read or write, nothing on the session's data path that could be measured.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::origin::PeerAddr;

/// The limits every connection of one listener gets.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From accept (or from the first byte of a kept-alive connection's next request) to a
    /// complete request head.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for the first byte of its next request; zero
    /// turns keep-alive off (every answer closes its connection).
    pub keepalive_timeout: Duration,
}

/// The connection's phase as the router's side sees it, read by the I/O wrapper ([`Guarded`]).
/// The low two bits are the phase; the rest counts changes, so the wrapper notices every one,
/// also `busy → idle → busy` between two of its polls.
#[derive(Debug, Default)]
struct Phase(AtomicU32);

/// Waiting for (or reading) a request head; the initial phase.
const HEAD: u32 = 0;
/// The router has the request.
const BUSY: u32 = 1;
/// The answer is out; keep-alive is waiting for the next request.
const IDLE: u32 = 2;
/// The answer was `101`: the connection is a session now.
const UPGRADED: u32 = 3;

impl Phase {
    fn set(&self, phase: u32) {
        // Only the connection's own task writes (the service runs inside its hyper connection).
        let word = self.0.load(Ordering::Relaxed);
        self.0
            .store((word & !3).wrapping_add(4) | phase, Ordering::Release);
    }

    fn word(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// An accepted connection whose reads and writes fail with `TimedOut` once the deadline of its
/// phase passes.
pub struct Guarded<T> {
    /// The accepted TCP stream (a duplex pipe in tests).
    inner: T,
    /// Shared with the connection's service, which moves it through `busy`, `idle`, `upgraded`.
    phase: Arc<Phase>,
    /// The phase word last acted on.
    seen: u32,
    /// The deadlines of the phases.
    limits: HttpLimits,
    /// The running deadline; `None` while busy or upgraded.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Idle: the next byte read starts a head, and the head's deadline.
    awaiting_request: bool,
    /// Upgraded: every call goes straight to `inner` from now on.
    passthrough: bool,
}

impl<T> Guarded<T> {
    fn new(inner: T, phase: Arc<Phase>, limits: HttpLimits) -> Self {
        let mut g = Guarded {
            inner,
            seen: phase.word(),
            phase,
            limits,
            deadline: None,
            awaiting_request: false,
            passthrough: false,
        };
        g.arm(limits.header_read_timeout);
        g
    }

    fn arm(&mut self, after: Duration) {
        let at = Instant::now() + after;
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Follows the service's phase changes; then fails if the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let word = self.phase.word();
        if word != self.seen {
            self.seen = word;
            match word & 3 {
                // Never set by the service: a head starts at accept or with an idle byte.
                HEAD => {}
                BUSY => {
                    self.deadline = None;
                    self.awaiting_request = false;
                }
                IDLE => {
                    self.awaiting_request = true;
                    // With keep-alive off, hyper closes after the answer: the answer itself
                    // still gets a bound.
                    let idle = match self.limits.keepalive_timeout {
                        d if d.is_zero() => self.limits.header_read_timeout,
                        d => d,
                    };
                    self.arm(idle);
                }
                _ => {
                    // UPGRADED, the only value left.
                    self.deadline = None;
                    self.passthrough = true;
                }
            }
        }
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                let what = if self.awaiting_request {
                    "keep-alive connection idle too long"
                } else {
                    "request head not complete in time"
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, what));
            }
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.passthrough {
            if let Err(e) = this.check(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.awaiting_request && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before
        {
            this.awaiting_request = false;
            this.arm(this.limits.header_read_timeout);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.passthrough {
            if let Err(e) = this.check(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.passthrough {
            if let Err(e) = this.check(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept errors that concern one connection only (the next accept may well succeed).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` until `until` resolves; then stops accepting (the listening
/// socket is closed at once), lets each connection finish the request it is on (an idle one is
/// closed), and returns when every connection is done. Upgraded connections are not waited
/// for: they belong to their sessions. `metrics`, when given, times the WebSocket handshakes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Option<Arc<Metrics>>,
    until: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut until = std::pin::pin!(until);
    loop {
        let accepted = tokio::select! {
            () = until.as_mut() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!(error = %e, "accept failed; retrying in 1s");
                tokio::select! {
                    () = until.as_mut() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            app.clone(),
            limits,
            metrics.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// One connection: hyper's HTTP/1.1 server with upgrades, the deadlines, and graceful stop.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    metrics: Option<Arc<Metrics>>,
    stop: CancellationToken,
) {
    let phase = Arc::new(Phase::default());
    let io = TokioIo::new(Guarded::new(tcp, Arc::clone(&phase), limits));
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (app, phase, metrics) = (app.clone(), Arc::clone(&phase), metrics.clone());
        async move {
            phase.set(BUSY);
            // The handlers read the peer as `ConnectInfo<PeerAddr>` (the audit trail).
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            let handshake = req.headers().contains_key(header::UPGRADE);
            let started = std::time::Instant::now();
            let resp = match app.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            phase.set(if upgraded { UPGRADED } else { IDLE });
            if let (true, Some(m)) = (handshake, &metrics) {
                m.observe_handshake(started.elapsed(), upgraded);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own deadlines replace hyper's (see the module comment); hyper gets no timer.
    http.header_read_timeout(None)
        .keep_alive(!limits.keepalive_timeout.is_zero());
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(peer = %peer, error = %e, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: HttpLimits = HttpLimits {
        header_read_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(30),
    };

    fn guarded(
        limits: HttpLimits,
    ) -> (
        tokio::io::DuplexStream,
        Guarded<tokio::io::DuplexStream>,
        Arc<Phase>,
    ) {
        let (client, server) = tokio::io::duplex(1024);
        let phase = Arc::new(Phase::default());
        (
            client,
            Guarded::new(server, Arc::clone(&phase), limits),
            phase,
        )
    }

    /// Reads until the wrapper fails; returns when that happened, from the start.
    async fn cut_after(conn: &mut Guarded<tokio::io::DuplexStream>) -> Duration {
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    return t0.elapsed();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_head_has_its_deadline_from_accept() {
        let (mut client, mut conn, _phase) = guarded(LIMITS);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert_eq!(cut_after(&mut conn).await, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn phases_table() {
        /// What happens after a first request was answered (`busy`, then `idle`).
        struct Case {
            name: &'static str,
            /// Seconds idle before the client sends `bytes` (None: it never does).
            idle: Option<u64>,
            bytes: &'static [u8],
            keepalive: u64,
            /// When the connection is cut, counted from the answer.
            cut_at: u64,
        }
        let cases = [
            Case {
                name: "idle after an answer: cut at the keep-alive timeout",
                idle: None,
                bytes: b"",
                keepalive: 30,
                cut_at: 30,
            },
            Case {
                name: "a second head started, never finished: the head timeout from its first byte",
                idle: Some(5),
                bytes: b"GET /healthz HTTP/1.1\r\nHo",
                keepalive: 30,
                cut_at: 15,
            },
            Case {
                name: "blank lines are part of the head",
                idle: Some(1),
                bytes: b"\r\n\r\n\r\n",
                keepalive: 30,
                cut_at: 11,
            },
            Case {
                name: "keep-alive off: the answer still has a bound (the head timeout)",
                idle: None,
                bytes: b"",
                keepalive: 0,
                cut_at: 10,
            },
        ];
        for c in cases {
            let (mut client, mut conn, phase) = guarded(HttpLimits {
                keepalive_timeout: Duration::from_secs(c.keepalive),
                ..LIMITS
            });
            let head = b"GET /healthz HTTP/1.1\r\n\r\n";
            client.write_all(head).await.unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(conn.read(&mut buf).await.unwrap(), head.len());
            phase.set(BUSY);
            // A slow handler is not the head's business.
            tokio::time::sleep(Duration::from_secs(60)).await;
            phase.set(IDLE);
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            let t0 = Instant::now();
            if let Some(idle) = c.idle {
                tokio::time::sleep(Duration::from_secs(idle)).await;
                client.write_all(c.bytes).await.unwrap();
            }
            cut_after(&mut conn).await;
            assert_eq!(t0.elapsed(), Duration::from_secs(c.cut_at), "{}", c.name);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_deadline() {
        let (mut client, mut conn, phase) = guarded(LIMITS);
        let head = b"GET /ws HTTP/1.1\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), head.len());
        phase.set(BUSY);
        phase.set(UPGRADED);
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        // A session idle for an hour afterwards is not cut.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"frame").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_answer_is_cut() {
        let (_client, mut conn, phase) = {
            let (client, server) = tokio::io::duplex(16);
            let phase = Arc::new(Phase::default());
            (
                client,
                Guarded::new(server, Arc::clone(&phase), LIMITS),
                phase,
            )
        };
        phase.set(BUSY);
        phase.set(IDLE);
        let t0 = Instant::now();
        let err = conn.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }
}
