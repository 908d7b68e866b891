//! Serving HTTP/1.1 connections with a deadline on every request head, on keep-alive idle time
//! and on the delivery of a `101`, and a cap on how many connections are open, so no connection
//! that is not an upgraded session can be held open for free and no flood of them can take
//! every file descriptor.
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
//! | switching | the answer was `101`; hyper is writing it | `--header-read-timeout` |
//! | upgraded | hyper handed the connection over, the `101` written | none: a session, with its own limits |
//!
//! Leading blank lines are bytes of a head (RFC 9112 lets a server skip them; hyper does), so
//! trickling them does not restart anything. The deadline also fails writes, so a client that
//! never reads its answer is cut as well; the `101` included: hyper hands the connection over
//! only once the `101` is written, and a client that pipelines requests without reading can
//! keep that write from finishing, which without a deadline would hold the session's admission
//! and its target connection for ever. This is Go's `ReadHeaderTimeout` + `IdleTimeout`
//! (nginx: `client_header_timeout` + `keepalive_timeout`). hyper's own `header_read_timeout`
//! covers heads too (on a kept-alive connection its timer starts when the connection goes idle,
//! and blank lines are inside it), but it cannot tell idle time from head time, so it could not
//! give keep-alive its own limit; it is turned off and this module keeps one clock per
//! connection instead. After the upgrade the wrapper is a plain pass-through: one predictable
//! branch per read or write, nothing on the session's data path that could be measured.
//!
//! `--max-connections` places are taken before `accept`: past the cap, new connections wait in
//! the kernel's listen queue (they cost no descriptor here) until one closes. The place belongs
//! to the connection's I/O, so an upgraded session keeps it until its socket is closed.

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
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::origin::PeerAddr;

/// The largest request head read (hyper answers 431 past it). Ours are small: a bearer token,
/// a few subprotocols and cookies; hyper's own default (~400 KB) would let every connection
/// hold that much, and a `101` echo a huge subprotocol back.
const MAX_HEAD: usize = 64 * 1024;

/// The limits of one listener and of each of its connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From accept (or from the first byte of a kept-alive connection's next request) to a
    /// complete request head; also from a `101` to its last byte written.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for the first byte of its next request; zero
    /// turns keep-alive off (every answer closes its connection).
    pub keepalive_timeout: Duration,
    /// Connections open at once, upgraded ones included (each holds a file descriptor); past
    /// it, new ones wait in the listen queue.
    pub max_connections: usize,
    /// After the stop, how long connections still in HTTP may take to finish the request they
    /// are on; past it they are dropped.
    pub drain: Duration,
}

/// The connection's phase as the router's side sees it, read by the I/O wrapper ([`Guarded`]).
/// The low three bits are the phase; the rest counts changes, so the wrapper notices every
/// one, also `busy → idle → busy` between two of its polls.
#[derive(Debug, Default)]
struct Phase(AtomicU32);

/// The bits of [`Phase`] that hold the phase.
const PHASE_BITS: u32 = 7;
/// Waiting for (or reading) a request head; the initial phase.
const HEAD: u32 = 0;
/// The router has the request.
const BUSY: u32 = 1;
/// The answer is out; keep-alive is waiting for the next request.
const IDLE: u32 = 2;
/// The answer is `101`: hyper writes it, then hands the connection over.
const SWITCHING: u32 = 3;
/// hyper handed the connection over: it is a session now.
const UPGRADED: u32 = 4;

impl Phase {
    fn set(&self, phase: u32) {
        // Only the connection's own task writes (the service runs inside its hyper connection,
        // and the connection marks the handover itself), so a plain load and store suffice.
        let word = self.0.load(Ordering::Relaxed);
        self.0.store(
            (word & !PHASE_BITS).wrapping_add(PHASE_BITS + 1) | phase,
            Ordering::Release,
        );
    }

    fn word(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    fn get(&self) -> u32 {
        self.word() & PHASE_BITS
    }
}

/// One of a listener's `max_connections` places, owned by the connection's I/O (the HTTP
/// server's, then the session's after an upgrade), so it comes back when the socket closes.
struct Slot {
    /// The place itself.
    _permit: OwnedSemaphorePermit,
    /// Counts the open connections (`wsgate_connections_open`), on the session listener.
    metrics: Option<Arc<Metrics>>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: Option<Arc<Metrics>>) -> Slot {
        if let Some(m) = &metrics {
            m.connection_opened();
        }
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connection_closed();
        }
    }
}

/// An accepted connection whose reads and writes fail with `TimedOut` once the deadline of its
/// phase passes.
pub struct Guarded<T> {
    /// The accepted TCP stream (a duplex pipe in tests).
    inner: T,
    /// Shared with the connection's service, which moves it through `busy`, `idle`,
    /// `switching`, and with the connection's task, which marks `upgraded`.
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
    /// The listener's place this connection holds, for as long as the socket is open (`None`
    /// in tests of the wrapper alone). Never touched: only dropped with the connection.
    _slot: Option<Slot>,
}

impl<T> Guarded<T> {
    fn new(inner: T, phase: Arc<Phase>, limits: HttpLimits, slot: Option<Slot>) -> Self {
        let mut g = Guarded {
            inner,
            seen: phase.word(),
            phase,
            limits,
            deadline: None,
            awaiting_request: false,
            passthrough: false,
            _slot: slot,
        };
        g.arm(limits.header_read_timeout);
        g
    }

    fn arm(&mut self, after: Duration) {
        // A limit past the end of time (`--header-read-timeout 1000years`) is thirty years.
        let now = Instant::now();
        let at = now
            .checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86400));
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Follows the service's phase changes; then fails if the deadline has passed. Once
    /// upgraded, one branch and nothing else (the session's data path).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.passthrough {
            return Ok(());
        }
        let word = self.phase.word();
        if word != self.seen {
            self.seen = word;
            match word & PHASE_BITS {
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
                SWITCHING => {
                    self.awaiting_request = false;
                    self.arm(self.limits.header_read_timeout);
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
                } else if self.seen & PHASE_BITS == SWITCHING {
                    "the 101 answer was not taken in time"
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
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
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
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
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

/// How often at most the log says that the connection cap is reached.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `until` resolves; then stops accepting (the listening
/// socket is closed at once), lets each connection finish the request it is on (an idle one is
/// closed), and returns when every connection is done, or after `limits.drain`, dropping the
/// ones left. Upgraded connections are not waited for: they belong to their sessions.
/// `metrics`, when given, times the WebSocket handshakes and counts the open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Option<Arc<Metrics>>,
    until: impl Future<Output = ()>,
) {
    let stops = Stops::default();
    let connections = TaskTracker::new();
    let places = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut said_full: Option<Instant> = None;
    let mut until = std::pin::pin!(until);
    loop {
        // A place first: past the cap, connections wait in the kernel's queue, not here.
        let place = tokio::select! {
            () = until.as_mut() => break,
            p = Arc::clone(&places).acquire_owned() => p,
        };
        // The semaphore is never closed.
        let Ok(place) = place else { break };
        if places.available_permits() == 0
            && said_full.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY)
        {
            said_full = Some(Instant::now());
            warn!(
                max_connections = limits.max_connections,
                "connection limit reached: new connections wait in the listen queue"
            );
        }
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
        let slot = Slot::new(place, metrics.clone());
        connections.spawn(connection(
            tcp,
            peer,
            app.clone(),
            limits,
            metrics.clone(),
            slot,
            stops.clone(),
        ));
    }
    drop(listener);
    stops.stop.cancel();
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        info!(
            connections = connections.len(),
            "connections still in HTTP after the drain time: dropped"
        );
        stops.cut.cancel();
        connections.wait().await;
    }
}

/// How the accept loop ends its connections.
#[derive(Debug, Clone, Default)]
struct Stops {
    /// Asks a connection to finish the request it is on, then close (the listener stopped).
    stop: CancellationToken,
    /// Drops it where it is (the drain time is over).
    cut: CancellationToken,
}

/// One connection: hyper's HTTP/1.1 server with upgrades, the deadlines, and graceful stop.
/// `stops` ends it, gracefully or not.
async fn connection<T>(
    io: T,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    metrics: Option<Arc<Metrics>>,
    slot: Slot,
    stops: Stops,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Stops { stop, cut } = stops;
    let phase = Arc::new(Phase::default());
    let io = TokioIo::new(Guarded::new(io, Arc::clone(&phase), limits, Some(slot)));
    let handler_phase = Arc::clone(&phase);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (app, phase, metrics) = (app.clone(), Arc::clone(&handler_phase), metrics.clone());
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
            phase.set(if upgraded { SWITCHING } else { IDLE });
            if let (true, Some(m)) = (handshake, &metrics) {
                m.observe_handshake(started.elapsed(), upgraded);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own deadlines replace hyper's (see the module comment); hyper gets no timer.
    http.header_read_timeout(None)
        .keep_alive(!limits.keepalive_timeout.is_zero())
        .max_header_size(MAX_HEAD);
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            // A graceful stop while the `101` is being written would make hyper hand the
            // connection over at once, the rest of the `101` unwritten; the switching deadline
            // bounds that write anyway.
            if phase.get() != SWITCHING {
                conn.as_mut().graceful_shutdown();
            }
            tokio::select! {
                // An upgrade handed over at the last moment is marked below, not dropped.
                biased;
                r = conn.as_mut() => r,
                () = cut.cancelled() => {
                    debug!(peer = %peer, "connection dropped at shutdown");
                    return;
                }
            }
        }
    };
    // hyper resolves the connection once it has handed an upgraded one over (the `101`
    // written): from now on the wrapper is a pass-through.
    if ended.is_ok() && phase.get() == SWITCHING {
        phase.set(UPGRADED);
    }
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
        max_connections: 16,
        drain: Duration::from_secs(5),
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
            Guarded::new(server, Arc::clone(&phase), limits, None),
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
                Guarded::new(server, Arc::clone(&phase), LIMITS, None),
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

    /// An upgrade request as a WebSocket client sends it.
    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

    type Handover =
        tokio::sync::mpsc::UnboundedSender<hyper::Result<TokioIo<hyper::upgrade::Upgraded>>>;

    /// Answers `/ws` with a `101` and reports what hyper hands over (the connection, or the
    /// error if the upgrade never completes), as the real handler's session task waits for it.
    fn upgrade_app(handover: Handover) -> Router {
        let ws = move |mut req: Request<axum::body::Body>| {
            let handover = handover.clone();
            async move {
                if let Some(on) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
                    tokio::spawn(async move {
                        let _ = handover.send(on.await.map(TokioIo::new));
                    });
                }
                (
                    StatusCode::SWITCHING_PROTOCOLS,
                    [
                        (header::CONNECTION, "upgrade"),
                        (header::UPGRADE, "websocket"),
                    ],
                )
            }
        };
        Router::new()
            .route("/ws", axum::routing::get(ws))
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
    }

    async fn slot() -> Slot {
        let places = Arc::new(Semaphore::new(1));
        Slot::new(places.acquire_owned().await.unwrap(), None)
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    /// Reads one answer head.
    async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(r.read(&mut byte).await.unwrap(), 1, "closed in a head");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// The `101` cannot be written while the client reads nothing (here the pipe is shorter
    /// than the answer; on TCP, pipelined requests whose answers the client does not read fill
    /// the socket first). The write has the head deadline: the connection is cut, the upgrade
    /// fails, and the handler's task lets go of what it holds (admission, target connection)
    /// instead of waiting for ever.
    #[tokio::test(start_paused = true)]
    async fn a_101_the_client_does_not_take_is_cut_and_the_upgrade_fails() {
        let (tx, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let (mut client, server) = tokio::io::duplex(16);
        let stops = Stops::default();
        let conn = tokio::spawn(connection(
            server,
            peer(),
            upgrade_app(tx),
            LIMITS,
            None,
            slot().await,
            stops,
        ));
        let t0 = Instant::now();
        client.write_all(UPGRADE).await.unwrap();
        let upgrade = tokio::time::timeout(Duration::from_secs(600), handed.recv())
            .await
            .expect("the upgrade never ended")
            .unwrap();
        let Err(err) = upgrade else {
            panic!("no upgrade without the whole 101")
        };
        assert_eq!(t0.elapsed(), LIMITS.header_read_timeout, "{err}");
        tokio::time::timeout(Duration::from_secs(1), conn)
            .await
            .expect("the connection ends with the upgrade")
            .unwrap();
    }

    /// Once hyper has written the `101` and handed the connection over, the session has no
    /// deadline of ours: an hour of silence is fine.
    #[tokio::test(start_paused = true)]
    async fn a_taken_101_hands_over_a_connection_with_no_deadline() {
        let (tx, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let (mut client, server) = tokio::io::duplex(1024);
        let stops = Stops::default();
        tokio::spawn(connection(
            server,
            peer(),
            upgrade_app(tx),
            LIMITS,
            None,
            slot().await,
            stops,
        ));
        client.write_all(UPGRADE).await.unwrap();
        assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));
        let mut session = handed.recv().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"frame").await.unwrap();
        let mut buf = [0u8; 5];
        session.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"frame");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        session.write_all(b"back").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }

    /// A stop while the `101` is being written does not make hyper hand the connection over
    /// with the answer half written: the client that reads it gets all of it, then its session.
    #[tokio::test(start_paused = true)]
    async fn a_stop_while_the_101_is_written_lets_it_finish() {
        let (tx, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let (mut client, server) = tokio::io::duplex(16);
        let stops = Stops::default();
        tokio::spawn(connection(
            server,
            peer(),
            upgrade_app(tx),
            LIMITS,
            None,
            slot().await,
            stops.clone(),
        ));
        client.write_all(UPGRADE).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stops.stop.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut client))
            .await
            .expect("the 101 was left half written");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        let mut session = handed.recv().await.unwrap().unwrap();
        session.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Serves `upgrade_app` on a loopback port with `limits` until the returned token is
    /// cancelled; the task ends when `serve` returns.
    async fn serving(
        limits: HttpLimits,
        metrics: Option<Arc<Metrics>>,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            upgrade_app(tx),
            limits,
            metrics,
            stop.clone().cancelled_owned(),
        ));
        (addr, stop, task)
    }

    /// Past `max_connections`, a connection is not accepted (it waits in the listen queue and
    /// costs no descriptor here) until another one closes; the gauge counts the open ones.
    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let metrics = Arc::new(Metrics::default());
        let limits = HttpLimits {
            max_connections: 2,
            ..LIMITS
        };
        let (addr, _stop, _task) = serving(limits, Some(Arc::clone(&metrics))).await;
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(HEALTHZ).await.unwrap();
            conns.push(c);
        }
        for c in &mut conns[..2] {
            assert!(read_head(c).await.starts_with("HTTP/1.1 200"));
        }
        let mut byte = [0u8; 1];
        let third = tokio::time::timeout(Duration::from_millis(300), conns[2].read(&mut byte));
        assert!(third.await.is_err(), "the third connection was served");
        assert!(metrics.render().contains("\nwsgate_connections_open 2\n"));
        conns.remove(0);
        let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut conns[1]))
            .await
            .expect("a place came back");
        assert!(head.starts_with("HTTP/1.1 200"));
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !metrics.render().contains("\nwsgate_connections_open 0\n") {
            assert!(Instant::now() < deadline, "{}", metrics.render());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After the stop, connections still in HTTP get `drain`, then they are dropped: `serve`
    /// returns even though a client holds a head open for longer.
    #[tokio::test]
    async fn the_stop_waits_for_connections_at_most_the_drain_time() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(60),
            drain: Duration::from_millis(200),
            ..LIMITS
        };
        let (addr, stop, task) = serving(limits, None).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve did not return")
            .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );
        let mut byte = [0u8; 1];
        assert_eq!(c.read(&mut byte).await.unwrap_or(0), 0, "dropped");
    }
}
