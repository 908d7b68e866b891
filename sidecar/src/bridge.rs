//! The bridge: one WebSocket session ↔ one TCP connection to the target, both directions at once.
//!
//! It works on the client's connection as bytes (what the HTTP upgrade hands over) and does the
//! RFC 6455 framing itself with [`wsgate_proto::wsframe`]: client frames are unmasked in place in
//! the buffer they were read into and the session data in it goes to the target in one `writev`,
//! a data frame's payload as far as it has arrived (so a frame larger than a read is neither
//! waited for nor moved to the buffer's front); target bytes are read in just behind room for a
//! frame header, so each goes to the client in one write with no copy. (A general WebSocket
//! library zero-filled its read buffer, copied payloads, and made a syscall per frame: 2-3× the
//! CPU per GiB of a plain copy.)
//!
//! Generic over both connections (`AsyncRead + AsyncWrite`), so it is tested over
//! `tokio::io::duplex` with tungstenite's client as the peer, as well as end to end.
//! Memory is bounded: towards the target, one read buffer (`read_size`; a typed control message,
//! gathered whole, of at most `max_frame` bytes) whose data is all written before more is read;
//! towards the client, one frame of at most `max_frame` bytes at a time. A slow peer slows the
//! other side down instead of growing a queue, and untouched buffer pages cost nothing, so an
//! idle session holds little.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CloseReason;
use wsgate_proto::framing::{decode, Framing, Inbound, TYPE_DATA};
use wsgate_proto::wsframe::{
    self, close_payload, server_frame, server_header, Header, HeaderError, Opcode, MAX_HEADER,
    MAX_SERVER_HEADER,
};

/// Per-session settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub framing: Framing,
    /// Largest payload read from the target into one frame (and accepted from the client).
    pub max_frame: usize,
    /// Bytes asked for per read from the client: larger means fewer syscalls on a busy session;
    /// only the pages data actually arrives in are touched, so an idle session pays little.
    pub read_size: usize,
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

/// How long the closing frame (behind any frame under way) may take to reach a client that is
/// not reading; the session then ends without it. Shutting the connections down is bounded by
/// the same again, so a session ends at most `2 × CLOSE_WAIT` after its reason.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Frames' payloads gathered into one `writev` at most (Linux's `IOV_MAX` is 1024), and replies
/// queued per pass over the read buffer.
const MAX_SLICES: usize = 256;

/// Slack over `max_frame` for a whole client message: the type byte and a little more, as
/// clients count frame sizes differently.
const MESSAGE_SLACK: usize = 16;

/// Runs the session to its end and returns why it ended; the close frame has been sent.
pub async fn bridge<C, T>(
    client: C,
    target: T,
    cfg: &BridgeConfig,
    obs: &dyn Observer,
    shutdown: CancellationToken,
) -> CloseReason
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last session byte, for the idle timeout.
    let last_activity = AtomicU64::new(0);
    let touch = || last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    // Server pings not yet answered.
    let missed = AtomicU32::new(0);
    let (mut crd, cwr) = tokio::io::split(client);
    let mut out = FrameWriter::new(cwr);
    let (mut rd, mut wr) = tokio::io::split(target);
    // Frames the client→target direction must send back (pongs, SkyPilot ping echoes).
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Bytes>(16);

    let up = async {
        let max = (cfg.max_frame + MESSAGE_SLACK) as u64;
        let mut buf = BytesMut::new();
        let mut msg = Incoming::Idle;
        // A data frame being passed on as its payload arrives.
        let mut streaming: Option<Streaming> = None;
        let mut data: Vec<Range<usize>> = Vec::new();
        let mut replies: Vec<Bytes> = Vec::new();
        loop {
            // Every complete frame in the buffer, data payloads gathered for one write.
            let mut at = 0;
            let stop = loop {
                // Bounded per pass: a read full of tiny pings queues at most this many replies.
                if data.len() == MAX_SLICES || replies.len() == MAX_SLICES {
                    break Stop::Full;
                }
                if let Some(s) = &mut streaming {
                    let n = s.left.min(buf.len() - at);
                    if n == 0 {
                        break Stop::Need(1);
                    }
                    wsframe::apply_mask(&mut buf[at..at + n], wsframe::mask_from(s.mask, s.done));
                    data.push(at..at + n);
                    at += n;
                    s.done += n;
                    s.left -= n;
                    if s.left > 0 {
                        break Stop::Need(1);
                    }
                    streaming = None;
                    continue;
                }
                let (h, payload) = match next_frame(&mut buf[at..], max) {
                    Ok(Next::Frame(h, p)) => (h, at + p.start..at + p.end),
                    Ok(Next::Partial(h, mask, from)) => {
                        // Session data goes on as it arrives; anything else waits to be whole.
                        // At least the payload's first byte is here (the type byte, if any).
                        let first = [buf[at + from] ^ mask[0]];
                        match msg.frame(cfg.framing, &h, &first, false, max) {
                            Ok(Part::Data(skip)) => {
                                at += from + skip;
                                let left = h.len as usize - skip;
                                streaming = Some(Streaming {
                                    mask,
                                    done: skip,
                                    left,
                                });
                                continue;
                            }
                            Ok(_) => break Stop::Need(from + h.len as usize),
                            Err(r) => break Stop::End(r),
                        }
                    }
                    Ok(Next::Need(n)) => break Stop::Need(n),
                    Err(r) => break Stop::End(r),
                };
                at = payload.end;
                match h.opcode {
                    Opcode::Binary | Opcode::Continuation => {
                        match msg.frame(cfg.framing, &h, &buf[payload.clone()], true, max) {
                            Ok(Part::Data(skip)) if payload.len() > skip => {
                                data.push(payload.start + skip..payload.end)
                            }
                            Ok(Part::Data(_) | Part::Pending | Part::Wait) => {}
                            Ok(Part::Reply(f)) => replies.push(f),
                            Ok(Part::Latency(ms)) => obs.latency_ms(ms),
                            Err(r) => break Stop::End(r),
                        }
                    }
                    Opcode::Text => break Stop::End(CloseReason::TextFrame),
                    Opcode::Ping => {
                        replies.push(Bytes::from(server_frame(Opcode::Pong, &buf[payload])))
                    }
                    Opcode::Pong => missed.store(0, Ordering::Relaxed),
                    _ => break Stop::End(CloseReason::ClientClosed),
                }
            };
            if !data.is_empty() {
                match write_ranges(&mut wr, &buf, &data).await {
                    Ok(n) => {
                        obs.up(n as u64);
                        touch();
                    }
                    Err(_) => return CloseReason::TargetError,
                }
                data.clear();
            }
            for f in replies.drain(..) {
                if ctl_tx.send(f).await.is_err() {
                    return CloseReason::ClientGone;
                }
            }
            buf.advance(at);
            let need = match stop {
                Stop::End(r) => {
                    if r == CloseReason::ClientClosed {
                        let _ = wr.shutdown().await;
                    }
                    return r;
                }
                Stop::Full => continue,
                Stop::Need(n) => n,
            };
            // Enough for the frame under way, and up to `read_size` when more is there.
            let want = need.saturating_sub(buf.len()).max(cfg.read_size);
            buf.reserve(want);
            match read_chunk(&mut crd, &mut buf, want).await {
                Ok(0) | Err(_) => return CloseReason::ClientGone,
                Ok(_) => {}
            }
        }
    };

    let down = async {
        let hdr = cfg.framing.header_len();
        // Room for the largest header (and the type byte) in front of what the target sends.
        let front = MAX_SERVER_HEADER + hdr;
        // Filled by the kernel without zeroing first, and sent without copying: an idle session
        // costs one touched page here, not `max_frame` bytes, and the allocation comes back to
        // `buf` once the frame has been written out.
        let mut buf = BytesMut::new();
        let mut tick = tokio::time::interval_at(start + TICK, TICK);
        let mut next_ping = cfg.ping_interval.map(|p| start + p);
        // Ping intervals in a row in which not one byte reached a client that has frames
        // waiting: a client that does not read cannot answer pings, but it could send pongs
        // blindly, so this counts on its own.
        let mut stalled = 0u32;
        let mut written_at_ping = 0u64;
        loop {
            if buf.is_empty() {
                buf.reserve(front + cfg.max_frame);
                buf.put_bytes(0, MAX_SERVER_HEADER);
                if hdr == 1 {
                    buf.put_u8(TYPE_DATA);
                }
            }
            // A write to the client is one arm among the others, never awaited inside one: a
            // client that stops reading stalls only that arm, while the shutdown, the timers
            // and the keepalive still fire. Nothing more is read (from the target, or replies
            // from the other direction) until the frames queued for the client are out.
            let idle = out.is_idle();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return CloseReason::Shutdown,
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
                            next_ping = Some(now + every);
                            if !out.is_idle() && out.written == written_at_ping {
                                // No ping is queued behind frames the client is not taking.
                                stalled += 1;
                                if stalled > cfg.max_missed_pongs {
                                    return CloseReason::KeepaliveTimeout;
                                }
                                continue;
                            }
                            stalled = 0;
                            written_at_ping = out.written;
                            if missed.fetch_add(1, Ordering::Relaxed) >= cfg.max_missed_pongs {
                                return CloseReason::KeepaliveTimeout;
                            }
                            out.push(Bytes::from(server_frame(Opcode::Ping, &[])));
                        }
                    }
                }
                r = out.flush(), if !idle => {
                    if r.is_err() {
                        return CloseReason::ClientGone;
                    }
                }
                Some(f) = ctl_rx.recv(), if idle => out.push(f),
                r = read_chunk(&mut rd, &mut buf, cfg.max_frame), if idle => match r {
                    Ok(0) => return CloseReason::TargetClosed,
                    Ok(n) => {
                        let mut h = [0u8; MAX_SERVER_HEADER];
                        let hl = server_header(&mut h, Opcode::Binary, (hdr + n) as u64);
                        let from = MAX_SERVER_HEADER - hl;
                        buf[from..MAX_SERVER_HEADER].copy_from_slice(&h[from..]);
                        out.push(buf.split().freeze().slice(from..));
                        // Most writes complete at once: try now rather than on the next turn.
                        if out.try_flush().is_err() {
                            return CloseReason::ClientGone;
                        }
                        obs.down(n as u64);
                        touch();
                    }
                    Err(_) => return CloseReason::TargetError,
                },
            }
        }
    };

    let reason = tokio::select! {
        r = up => r,
        r = down => r,
    };
    if reason != CloseReason::ClientGone {
        // Replies asked for before the end (a pong for a ping just before the client's close)
        // still go out, then the close frame, behind any frame already under way; a client
        // that is not reading gets `CLOSE_WAIT` for all of it, then the connection is dropped.
        while let Ok(f) = ctl_rx.try_recv() {
            out.push(f);
        }
        out.push(Bytes::from(server_frame(
            Opcode::Close,
            &close_payload(reason.code(), &reason.message()),
        )));
        let _ = tokio::time::timeout(CLOSE_WAIT, out.flush()).await;
    }
    // Shutting a socket down does not wait for the peer, but a generic writer might: bounded too.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = out.w.shutdown().await;
        let _ = wr.shutdown().await;
    })
    .await;
    reason
}

/// Why the scan of the read buffer stopped.
enum Stop {
    /// The frame under way needs this many bytes from where it starts (the buffer's start once
    /// the frames before it are consumed).
    Need(usize),
    /// As many payloads (or replies) as one pass takes are gathered; more frames may be buffered.
    Full,
    /// The session ends.
    End(CloseReason),
}

/// The next frame in a buffer.
enum Next {
    /// A whole frame, unmasked in place; the payload's range in the buffer.
    Frame(Header, Range<usize>),
    /// A data-carrying frame whose header and some (not all) of its payload are here, still
    /// masked with this key; its payload starts at this offset.
    Partial(Header, [u8; 4], usize),
    /// Not enough for either: the buffer must hold this many bytes.
    Need(usize),
}

/// A data frame whose payload goes to the target as it arrives, so a frame larger than one
/// read is neither gathered nor copied to the buffer's front.
struct Streaming {
    mask: [u8; 4],
    /// Payload bytes already past (where the mask's 4-byte cycle stands).
    done: usize,
    /// Payload bytes still to come.
    left: usize,
}

/// Reads the frame at the start of `buf`: a whole one is unmasked in place.
fn next_frame(buf: &mut [u8], max: u64) -> Result<Next, CloseReason> {
    let h = match wsframe::parse(buf, max) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Next::Need(MAX_HEADER)),
        Err(HeaderError::TooBig(_)) => return Err(CloseReason::TooBig),
        Err(e) => return Err(CloseReason::Protocol(e.to_string())),
    };
    let Some(mask) = h.mask else {
        return Err(CloseReason::Protocol("client frames must be masked".into()));
    };
    // `len` is at most `max`, so this fits.
    let end = h.header_len + h.len as usize;
    if end <= buf.len() {
        wsframe::apply_mask(&mut buf[h.header_len..end], mask);
        return Ok(Next::Frame(h, h.header_len..end));
    }
    if !matches!(h.opcode, Opcode::Binary | Opcode::Continuation) {
        return Ok(Next::Need(end));
    }
    if buf.len() == h.header_len {
        return Ok(Next::Need(h.header_len + 1));
    }
    Ok(Next::Partial(h, mask, h.header_len))
}

/// The client message that continuation frames extend.
enum Incoming {
    Idle,
    /// A typed message whose fragments so far were empty: its type byte is still to come
    /// (RFC 6455 allows empty fragments).
    Untyped,
    /// Session bytes: every further fragment is data as it comes.
    Data,
    /// A typed control message (ping, latency report) split over frames, gathered whole.
    Typed(Vec<u8>),
}

/// What one data-carrying frame asks for.
enum Part {
    /// The payload after this many bytes (the type byte) is session data.
    Data(usize),
    /// A frame for the client (a SkyPilot ping echo).
    Reply(Bytes),
    Latency(u64),
    /// Kept until the message's last frame.
    Pending,
    /// Not session data and not all here: the frame is taken once it is whole.
    Wait,
}

impl Incoming {
    /// `payload` is the frame's whole payload, or (`whole` false) as much of its start as has
    /// arrived: then only session data is taken, anything else is left for later.
    fn frame(
        &mut self,
        framing: Framing,
        h: &Header,
        payload: &[u8],
        whole: bool,
        max: u64,
    ) -> Result<Part, CloseReason> {
        let starts = h.opcode == Opcode::Binary;
        let part = match (std::mem::replace(self, Incoming::Idle), starts) {
            (Incoming::Idle, false) => {
                return Err(CloseReason::Protocol(
                    "continuation frame outside a message".into(),
                ))
            }
            (Incoming::Untyped | Incoming::Data | Incoming::Typed(_), true) => {
                return Err(CloseReason::Protocol(
                    "new message before the last one ended".into(),
                ))
            }
            (Incoming::Data, false) => {
                *self = Incoming::Data;
                Part::Data(0)
            }
            // A message's first byte, in its first frame or (after empty ones) a later one.
            (Incoming::Idle | Incoming::Untyped, _) if framing == Framing::Raw => {
                *self = Incoming::Data;
                Part::Data(0)
            }
            (Incoming::Idle | Incoming::Untyped, _) if payload.first() == Some(&TYPE_DATA) => {
                *self = Incoming::Data;
                Part::Data(1)
            }
            (Incoming::Idle | Incoming::Untyped, _) if payload.is_empty() && !h.fin => {
                *self = Incoming::Untyped;
                Part::Pending
            }
            (before, _) if !whole => {
                *self = before;
                return Ok(Part::Wait);
            }
            (Incoming::Idle | Incoming::Untyped, _) => {
                gather(framing, Vec::new(), h.fin, payload, max, self)?
            }
            (Incoming::Typed(so_far), false) => gather(framing, so_far, h.fin, payload, max, self)?,
        };
        if h.fin {
            *self = Incoming::Idle;
        }
        Ok(part)
    }
}

/// Adds a fragment to a typed control message and, at its last frame, decodes it.
fn gather(
    framing: Framing,
    mut so_far: Vec<u8>,
    fin: bool,
    payload: &[u8],
    max: u64,
    msg: &mut Incoming,
) -> Result<Part, CloseReason> {
    so_far.extend_from_slice(payload);
    if so_far.len() as u64 > max {
        return Err(CloseReason::TooBig);
    }
    if !fin {
        *msg = Incoming::Typed(so_far);
        return Ok(Part::Pending);
    }
    match decode(framing, &so_far) {
        Ok(Inbound::Ping(f)) => Ok(Part::Reply(Bytes::from(server_frame(Opcode::Binary, f)))),
        Ok(Inbound::Latency(ms)) => Ok(Part::Latency(ms)),
        // Only a message whose type byte is not data gets here.
        Ok(Inbound::Data(_)) => Ok(Part::Pending),
        Err(e) => Err(CloseReason::Frame(e)),
    }
}

/// Writes the ranges of `buf` in order, as few `writev`s as the kernel allows; the byte count.
async fn write_ranges<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    ranges: &[Range<usize>],
) -> std::io::Result<usize> {
    let mut slices: Vec<IoSlice<'_>> = ranges
        .iter()
        .map(|r| IoSlice::new(&buf[r.clone()]))
        .collect();
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = w.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(total)
}

/// The client's write side: frames queued whole and written in order, so the client never sees
/// half a frame followed by another. `flush` is cancel-safe (progress is kept between calls),
/// which lets the bridge race it against its timers instead of waiting on a client that does
/// not read.
struct FrameWriter<W> {
    w: W,
    /// Frames for the client, in order. At most one data frame (nothing is read from the target
    /// while frames wait), the replies taken with it, and a keepalive ping per interval in which
    /// the client took bytes (the keepalive gives up on one that takes none).
    queue: VecDeque<Bytes>,
    /// How much of the first frame is out.
    done: usize,
    /// Bytes written in all: whether a client with frames waiting is taking any.
    written: u64,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn new(w: W) -> Self {
        FrameWriter {
            w,
            queue: VecDeque::new(),
            done: 0,
            written: 0,
        }
    }

    fn push(&mut self, frame: Bytes) {
        self.queue.push_back(frame);
    }

    /// Nothing waits to be written.
    fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes until the queue is empty.
    async fn flush(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_queue(cx)).await
    }

    /// Writes what the socket takes now, without waiting for it to take more.
    fn try_flush(&mut self) -> std::io::Result<()> {
        let waker = std::task::Waker::noop();
        match self.poll_flush_queue(&mut std::task::Context::from_waker(waker)) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    fn poll_flush_queue(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(f) = self.queue.front() {
            let n = ready!(Pin::new(&mut self.w).poll_write(cx, &f[self.done..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.done += n;
            self.written += n as u64;
            if self.done == f.len() {
                self.queue.pop_front();
                self.done = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Appends at most `max` bytes from `rd` to `buf` (cancel-safe: nothing is read if dropped).
async fn read_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<usize> {
    rd.read_buf(&mut buf.limit(max)).await
}

#[cfg(test)]
mod tests {
    //! The peer is tungstenite's client (an independent RFC 6455 implementation) over
    //! `tokio::io::duplex`, or raw bytes where a test needs what a library would not send.
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Mutex;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;
    use wsgate_proto::framing::FrameError;

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
            read_size: 4096,
            ping_interval: None,
            max_missed_pongs: 2,
            idle_timeout: None,
            max_age: None,
        }
    }

    /// The bridge's end of a client connection, and tungstenite's client on the other end.
    async fn ws() -> (DuplexStream, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let ws = WebSocketStream::from_raw_socket(
            client,
            Role::Client,
            Some(WebSocketConfig::default()),
        )
        .await;
        (server, ws)
    }

    fn bin(b: &[u8]) -> Message {
        Message::Binary(Bytes::copy_from_slice(b))
    }

    /// The next message, skipping none; panics if the connection ends first.
    async fn next(c: &mut WebSocketStream<DuplexStream>) -> Message {
        c.next().await.unwrap().unwrap()
    }

    fn close_code(m: &Message) -> Option<(u16, String)> {
        match m {
            Message::Close(Some(f)) => Some((f.code.into(), f.reason.to_string())),
            _ => None,
        }
    }

    /// A client frame built by hand (masked with a fixed key).
    fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![b0];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        wsframe::apply_mask(&mut p, mask);
        f.extend_from_slice(&p);
        f
    }

    /// Reads raw server frames until EOF: (opcode, payload) each.
    async fn server_frames<R: AsyncRead + Unpin>(mut r: R) -> Vec<(Opcode, Vec<u8>)> {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).await.unwrap();
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(h) = wsframe::parse(&bytes[at..], u64::MAX).unwrap() {
            assert!(h.mask.is_none(), "servers never mask");
            let p = at + h.header_len..at + h.header_len + h.len as usize;
            frames.push((h.opcode, bytes[p.clone()].to_vec()));
            at = p.end;
        }
        assert_eq!(at, bytes.len(), "no half frame");
        frames
    }

    fn close_of(frames: &[(Opcode, Vec<u8>)]) -> u16 {
        let (op, p) = frames.last().unwrap();
        assert_eq!(*op, Opcode::Close);
        u16::from_be_bytes([p[0], p[1]])
    }

    #[tokio::test]
    async fn typed_framing_both_ways_then_target_eof_closes_1000() {
        let (server, mut client) = ws().await;
        let (target, mut sshd) = tokio::io::duplex(4096);
        let seen = Seen::default();
        let c = cfg(Framing::Typed);
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let peer = async {
            client.send(bin(b"\x00hello")).await.unwrap();
            let mut got = [0u8; 5];
            sshd.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            // A ping is echoed unchanged; a latency report is recorded.
            client.send(bin(&[1, 0, 0, 0, 42])).await.unwrap();
            assert_eq!(next(&mut client).await, bin(&[1, 0, 0, 0, 42]));
            let mut lat = vec![2u8];
            lat.extend_from_slice(&17u64.to_be_bytes());
            client.send(bin(&lat)).await.unwrap();
            sshd.write_all(b"SSH-2.0-test\r\n").await.unwrap();
            assert_eq!(next(&mut client).await, bin(b"\x00SSH-2.0-test\r\n"));
            sshd.shutdown().await.unwrap();
            drop(sshd);
            next(&mut client).await
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
        let (server, mut client) = ws().await;
        let (target, mut sshd) = tokio::io::duplex(4096);
        let seen = Seen::default();
        let c = cfg(Framing::Raw);
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let peer = async {
            client.send(bin(&[1, 0, 0, 0, 42])).await.unwrap();
            let mut got = [0u8; 5];
            sshd.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [1, 0, 0, 0, 42]);
            sshd.write_all(&[0, 1, 2]).await.unwrap();
            assert_eq!(next(&mut client).await, bin(&[0, 1, 2]));
            // Client close: the target sees EOF (shutdown of its write side), the client gets
            // a close back.
            client.send(Message::Close(None)).await.unwrap();
            let mut rest = Vec::new();
            sshd.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            next(&mut client).await
        };
        let (reason, last) = tokio::join!(session, peer);
        assert_eq!(reason, CloseReason::ClientClosed);
        assert_eq!(close_code(&last).unwrap().0, 1000);
    }

    #[tokio::test]
    async fn many_frames_in_one_read_arrive_in_order() {
        // 600 small frames flushed at once: more than one writev's worth (MAX_SLICES) in one
        // read; then 40 larger ones through 4 KiB reads, which end mid-frame.
        let (server, mut client) = ws().await;
        let (target, mut sshd) = tokio::io::duplex(1 << 20);
        let frames: Vec<Vec<u8>> = (1..=600usize)
            .map(|i| i % 13 + 1)
            .chain((1..=40).map(|i| i * 25))
            .enumerate()
            .map(|(i, n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let want = frames.concat();
        let send = async {
            for f in &frames[..600] {
                client.feed(bin(f)).await.unwrap();
            }
            client.flush().await.unwrap();
            for f in &frames[600..] {
                client.send(bin(f)).await.unwrap();
            }
            client
        };
        let seen = Seen::default();
        let c = cfg(Framing::Raw);
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let check = async {
            let mut got = vec![0u8; want.len()];
            sshd.read_exact(&mut got).await.unwrap();
            assert!(got == want, "bytes differ");
            drop(sshd);
        };
        let (reason, _, _) = tokio::join!(session, send, check);
        assert_eq!(reason, CloseReason::TargetClosed);
        assert_eq!(seen.up.load(Ordering::Relaxed), want.len() as u64);
    }

    #[tokio::test]
    async fn fragmented_messages_are_joined() {
        // Data split over frames (the type byte only in the first), and a SkyPilot ping split
        // after its type byte, with a WebSocket ping between fragments (allowed by RFC 6455).
        let (server, mut peer) = tokio::io::duplex(1 << 16);
        let (target, mut sshd) = tokio::io::duplex(4096);
        let mut bytes = raw_frame(Opcode::Binary as u8, b"\x00ab");
        bytes.extend(raw_frame(Opcode::Ping as u8 | 0x80, b"p"));
        bytes.extend(raw_frame(Opcode::Continuation as u8, b"cd"));
        bytes.extend(raw_frame(0x80 | Opcode::Continuation as u8, b"ef"));
        bytes.extend(raw_frame(Opcode::Binary as u8, &[1, 0]));
        bytes.extend(raw_frame(0x80 | Opcode::Continuation as u8, &[0, 0, 9]));
        bytes.extend(raw_frame(0x80 | Opcode::Close as u8, &[]));
        peer.write_all(&bytes).await.unwrap();
        let c = cfg(Framing::Typed);
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::ClientClosed);
        let mut got = Vec::new();
        sshd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcdef");
        let frames = server_frames(peer).await;
        assert_eq!(frames[0], (Opcode::Pong, b"p".to_vec()));
        assert_eq!(frames[1], (Opcode::Binary, vec![1, 0, 0, 0, 9]));
        assert_eq!(close_of(&frames), 1000);
    }

    #[tokio::test]
    async fn a_typed_message_may_start_with_empty_fragments() {
        // RFC 6455 allows empty fragments: the type byte then comes in a later frame.
        let (server, mut peer) = tokio::io::duplex(1 << 16);
        let (target, mut sshd) = tokio::io::duplex(4096);
        let mut bytes = raw_frame(Opcode::Binary as u8, b"");
        bytes.extend(raw_frame(Opcode::Continuation as u8, b""));
        bytes.extend(raw_frame(0x80 | Opcode::Continuation as u8, b"\x00ab"));
        bytes.extend(raw_frame(Opcode::Binary as u8, b""));
        bytes.extend(raw_frame(
            0x80 | Opcode::Continuation as u8,
            &[1, 0, 0, 0, 9],
        ));
        bytes.extend(raw_frame(0x80 | Opcode::Close as u8, &[]));
        peer.write_all(&bytes).await.unwrap();
        let c = cfg(Framing::Typed);
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::ClientClosed);
        let mut got = Vec::new();
        sshd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ab");
        let frames = server_frames(peer).await;
        assert_eq!(frames[0], (Opcode::Binary, vec![1, 0, 0, 0, 9]));
        assert_eq!(close_of(&frames), 1000);

        // A typed message that is empty as a whole still has no type: refused.
        let (server, mut peer) = tokio::io::duplex(1 << 16);
        let (target, _sshd) = tokio::io::duplex(64);
        let mut bytes = raw_frame(Opcode::Binary as u8, b"");
        bytes.extend(raw_frame(0x80 | Opcode::Continuation as u8, b""));
        peer.write_all(&bytes).await.unwrap();
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::Frame(FrameError::Empty));
    }

    /// A session whose client or target never reads, with `end` to end it; every such session
    /// must end anyway, with the reason, and not much later than asked (time is paused: the
    /// runtime jumps to each timer, and a hang would show as the one-hour guard firing).
    async fn stuck(
        target_stuck: bool,
        c: BridgeConfig,
        stop: CancellationToken,
    ) -> (CloseReason, Duration) {
        // Small pipes, so the writer blocks soon.
        let (server, mut peer) = tokio::io::duplex(1024);
        let (target, mut sshd) = tokio::io::duplex(1024);
        let t0 = Instant::now();
        let seen = Seen::default();
        let session = bridge(server, target, &c, &seen, stop);
        let flood = async {
            if target_stuck {
                // The client sends data frames without end; the target reads nothing.
                let frame = raw_frame(0x80 | Opcode::Binary as u8, &[7u8; 1000]);
                while peer.write_all(&frame).await.is_ok() {}
            } else {
                // The target sends without end; the client reads nothing.
                while sshd.write_all(&[7u8; 1000]).await.is_ok() {}
            }
            std::future::pending::<()>().await
        };
        let reason = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::select! {
                r = session => r,
                _ = flood => unreachable!(),
            }
        })
        .await
        .expect("the session outlived its limits");
        (reason, t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn limits_hold_when_a_side_stops_reading() {
        for target_stuck in [false, true] {
            let mut c = cfg(Framing::Raw);
            c.max_age = Some(Duration::from_secs(60));
            let (reason, took) = stuck(target_stuck, c, CancellationToken::new()).await;
            assert_eq!(reason, CloseReason::MaxAge, "target stuck: {target_stuck}");
            assert!(took < Duration::from_secs(60) + CLOSE_WAIT * 2 + TICK);

            let mut c = cfg(Framing::Raw);
            c.idle_timeout = Some(Duration::from_secs(30));
            let (reason, took) = stuck(target_stuck, c, CancellationToken::new()).await;
            assert_eq!(
                reason,
                CloseReason::IdleTimeout,
                "target stuck: {target_stuck}"
            );
            assert!(took < Duration::from_secs(30) + CLOSE_WAIT * 2 + TICK);

            let stop = CancellationToken::new();
            let cancel = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                cancel.cancel();
            });
            let (reason, took) = stuck(target_stuck, cfg(Framing::Raw), stop).await;
            assert_eq!(
                reason,
                CloseReason::Shutdown,
                "target stuck: {target_stuck}"
            );
            assert!(took < Duration::from_secs(5) + CLOSE_WAIT * 2 + TICK);
        }
        // A client that reads nothing answers no ping either: the keepalive ends it.
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 2;
        let (reason, _) = stuck(false, c, CancellationToken::new()).await;
        assert_eq!(reason, CloseReason::KeepaliveTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn blind_pongs_do_not_keep_a_client_that_reads_nothing() {
        // The target floods; the client reads nothing but sends a pong every 3 s: pings cannot
        // reach it, none is queued, and the stalled intervals end the session.
        let (server, mut peer) = tokio::io::duplex(1024);
        let (target, mut sshd) = tokio::io::duplex(1024);
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 2;
        let seen = Seen::default();
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let flood = async {
            while sshd.write_all(&[7u8; 1000]).await.is_ok() {}
            std::future::pending::<()>().await
        };
        let pongs = async {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if peer
                    .write_all(&raw_frame(0x80 | Opcode::Pong as u8, b""))
                    .await
                    .is_err()
                {
                    std::future::pending::<()>().await
                }
            }
        };
        let reason = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::select! {
                r = session => r,
                _ = flood => unreachable!(),
                _ = pongs => unreachable!(),
            }
        })
        .await
        .expect("the session outlived its keepalive");
        assert_eq!(reason, CloseReason::KeepaliveTimeout);
    }

    #[tokio::test]
    async fn bad_frames_close_with_a_reason() {
        for (frame, want) in [
            (vec![7u8, 1], CloseReason::Frame(FrameError::UnknownType(7))),
            (vec![1u8, 0], CloseReason::Frame(FrameError::BadPing(2))),
        ] {
            let (server, mut client) = ws().await;
            let (target, _sshd) = tokio::io::duplex(64);
            let c = cfg(Framing::Typed);
            client.send(bin(&frame)).await.unwrap();
            let reason = bridge(
                server,
                target,
                &c,
                &Seen::default(),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(reason, want);
            let (code, msg) = close_code(&next(&mut client).await).unwrap();
            assert_eq!(code, 1008);
            assert_eq!(msg, want.message());
        }
        let (server, mut client) = ws().await;
        let (target, _sshd) = tokio::io::duplex(64);
        client.send(Message::Text("hi".into())).await.unwrap();
        let c = cfg(Framing::Raw);
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::TextFrame);
        assert_eq!(close_code(&next(&mut client).await).unwrap().0, 1008);
    }

    #[tokio::test]
    async fn a_data_frame_larger_than_a_read_goes_on_as_it_arrives() {
        // One 10 000-byte frame (reads of 4 KiB) sent in pieces cut inside the header, right
        // after it, after the type byte and at odd offsets: each piece's payload reaches the
        // target before the next piece is sent (nothing waits for the whole frame), the mask's
        // 4-byte cycle carries across pieces, and typed framing keeps the type byte out.
        for framing in [Framing::Raw, Framing::Typed] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let skip = usize::from(framing == Framing::Typed);
            let msg = [&[TYPE_DATA][..skip], &payload].concat();
            let frame = raw_frame(0x82, &msg);
            let header = 8; // 2 bytes, a 16-bit length, the mask
            let (server, mut peer) = tokio::io::duplex(1 << 16);
            let (target, mut sshd) = tokio::io::duplex(1 << 16);
            let c = BridgeConfig {
                max_frame: 1 << 16,
                ..cfg(framing)
            };
            let seen = Seen::default();
            let session = bridge(server, target, &c, &seen, CancellationToken::new());
            let driver = async {
                let mut got = Vec::new();
                let mut sent = 0;
                for cut in [2, 8, 9, 1003, 4100, 9001, frame.len()] {
                    peer.write_all(&frame[sent..cut]).await.unwrap();
                    sent = cut;
                    let want = sent.saturating_sub(header + skip);
                    let arrived = async {
                        while got.len() < want {
                            let mut b = [0u8; 8192];
                            let n = sshd.read(&mut b).await.unwrap();
                            got.extend_from_slice(&b[..n]);
                        }
                    };
                    tokio::time::timeout(Duration::from_secs(5), arrived)
                        .await
                        .unwrap_or_else(|_| panic!("{framing:?}: {want} bytes by byte {cut}"));
                    assert_eq!(got.len(), want, "{framing:?}: nothing ahead of the client");
                }
                assert!(got == payload, "{framing:?}: the bytes, unmasked");
                drop(peer);
            };
            let (reason, ()) = tokio::join!(session, driver);
            assert_eq!(reason, CloseReason::ClientGone);
            assert_eq!(seen.up.load(Ordering::Relaxed), 10_000);
        }
    }

    #[tokio::test]
    async fn a_typed_message_split_across_reads_is_taken_whole() {
        // A SkyPilot ping whose frame arrives in two reads is echoed whole, not streamed.
        let ping = [1u8, 0, 0, 0, 42];
        let frame = raw_frame(0x82, &ping);
        let (server, peer) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(peer);
        let (target, mut sshd) = tokio::io::duplex(4096);
        let c = cfg(Framing::Typed);
        let seen = Seen::default();
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let driver = async {
            wr.write_all(&frame[..8]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            wr.write_all(&frame[8..]).await.unwrap();
            wr.write_all(&raw_frame(0x88, &1000u16.to_be_bytes()))
                .await
                .unwrap();
            let frames = server_frames(&mut rd).await;
            let mut to_target = Vec::new();
            sshd.read_to_end(&mut to_target).await.unwrap();
            (frames, to_target)
        };
        let (reason, (frames, to_target)) = tokio::join!(session, driver);
        assert_eq!(reason, CloseReason::ClientClosed);
        assert_eq!(frames[0], (Opcode::Binary, ping.to_vec()));
        assert_eq!(close_of(&frames), 1000);
        assert!(to_target.is_empty(), "a ping is not session data");
    }

    #[tokio::test]
    async fn rfc_6455_violations_close_1002_and_oversized_1009() {
        let unmasked = |b0: u8, p: &[u8]| {
            let mut f = vec![b0, p.len() as u8];
            f.extend_from_slice(p);
            f
        };
        let mut big = vec![0x82, 0x80 | 126];
        big.extend_from_slice(&1100u16.to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("unmasked", unmasked(0x82, b"x"), 1002, "protocol_error"),
            ("rsv1", raw_frame(0xC2, b"x"), 1002, "protocol_error"),
            ("opcode 3", raw_frame(0x83, b"x"), 1002, "protocol_error"),
            (
                "stray continuation",
                raw_frame(0x80, b"x"),
                1002,
                "protocol_error",
            ),
            (
                "binary inside a message",
                [raw_frame(0x02, b"x"), raw_frame(0x82, b"y")].concat(),
                1002,
                "protocol_error",
            ),
            (
                "fragmented ping",
                raw_frame(0x09, b""),
                1002,
                "protocol_error",
            ),
            (
                "oversized, refused from its header",
                big,
                1009,
                "frame_too_big",
            ),
        ];
        for (what, bytes, code, label) in cases {
            let (server, mut peer) = tokio::io::duplex(1 << 16);
            let (target, mut sshd) = tokio::io::duplex(4096);
            peer.write_all(&bytes).await.unwrap();
            let c = cfg(Framing::Raw);
            let reason = bridge(
                server,
                target,
                &c,
                &Seen::default(),
                CancellationToken::new(),
            )
            .await;
            assert_eq!((reason.code(), reason.label()), (code, label), "{what}");
            assert_eq!(close_of(&server_frames(peer).await), code, "{what}");
            let mut got = Vec::new();
            sshd.read_to_end(&mut got).await.unwrap();
            assert!(
                got.len() <= 1,
                "{what}: only a complete earlier frame reaches the target"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_and_max_age() {
        let (server, mut client) = ws().await;
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.idle_timeout = Some(Duration::from_secs(30));
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        assert_eq!(close_code(&next(&mut client).await).unwrap().0, 1008);

        let (server, _client) = ws().await;
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.max_age = Some(Duration::from_secs(60));
        let t0 = Instant::now();
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::MaxAge);
        assert!(t0.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_and_gives_up_without_pongs() {
        // A raw peer that never answers.
        let (server, peer) = tokio::io::duplex(1 << 16);
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 2;
        let reason = bridge(
            server,
            target,
            &c,
            &Seen::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(reason, CloseReason::KeepaliveTimeout);
        let frames = server_frames(peer).await;
        let pings = frames.iter().filter(|(op, _)| *op == Opcode::Ping).count();
        assert_eq!(pings, 2);
        assert_eq!(close_of(&frames), 1011);
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_keep_the_session_alive() {
        // tungstenite answers pings by itself while it reads.
        let (server, mut client) = ws().await;
        let (target, _sshd) = tokio::io::duplex(64);
        let mut c = cfg(Framing::Raw);
        c.ping_interval = Some(Duration::from_secs(10));
        c.max_missed_pongs = 1;
        c.max_age = Some(Duration::from_secs(100));
        let seen = Seen::default();
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let answer = async {
            loop {
                let m = next(&mut client).await;
                if !matches!(m, Message::Ping(_)) {
                    return m;
                }
            }
        };
        let (reason, last) = tokio::join!(session, answer);
        assert_eq!(reason, CloseReason::MaxAge);
        assert_eq!(close_code(&last).unwrap().0, 1008);
    }

    #[tokio::test]
    async fn shutdown_closes_1001() {
        let (server, mut client) = ws().await;
        let (target, _sshd) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        stop.cancel();
        let reason = bridge(server, target, &cfg(Framing::Raw), &Seen::default(), stop).await;
        assert_eq!(reason, CloseReason::Shutdown);
        assert_eq!(
            close_code(&next(&mut client).await).unwrap(),
            (1001, "server shutting down".into())
        );
    }

    #[tokio::test]
    async fn large_target_output_is_split_into_bounded_frames() {
        let (server, mut client) = ws().await;
        let (target, mut sshd) = tokio::io::duplex(1 << 16);
        let c = cfg(Framing::Typed);
        let seen = Seen::default();
        let session = bridge(server, target, &c, &seen, CancellationToken::new());
        let peer = async {
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            sshd.write_all(&data).await.unwrap();
            drop(sshd);
            let mut got = Vec::new();
            while let Some(Ok(m)) = client.next().await {
                if let Message::Binary(b) = m {
                    assert!(b.len() <= 1 + 1024);
                    assert_eq!(b[0], 0);
                    got.extend_from_slice(&b[1..]);
                }
            }
            assert!(got == data, "bytes differ");
        };
        tokio::join!(session, peer);
        assert_eq!(seen.down.load(Ordering::Relaxed), 100_000);
    }
}
