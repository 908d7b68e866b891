//! One session: stdin → WebSocket → stdout, with SkyPilot's framing when the server speaks it.
//!
//! The server talks first (sshd sends its banner), so its first message decides the framing: a
//! `0` type byte means typed frames; a message that starts with `SSH-` means an old server that
//! sends raw bytes; a `3` is a redirect to follow.
//!
//! The RFC 6455 framing is done here, on the connection itself, with [`wsgate_proto::wsframe`]:
//! what one stdin read returns is masked in place and sent as frames of at most `chunk` bytes
//! in one `writev` (each header beside its payload, nothing copied), and the data of every
//! complete frame one read from the server brings goes to stdout in one `writev`. (Through
//! tungstenite each payload was copied into a frame, then into its write buffer, then masked.)
//! Generic over the connection and stdio, so it is tested over `tokio::io::duplex` with
//! tungstenite's server (an independent RFC 6455 implementation) as the peer.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use wsgate_proto::framing::{
    decode_from_server, latency_frame, ping_frame, Framing, FromServer, TYPE_DATA,
};
use wsgate_proto::wsframe::{
    self, apply_mask, client_frame, close_payload, mask_from, HeaderError, Opcode, MAX_HEADER,
};

use crate::error::ClientError;
use wsgate_proto::text;

/// What ended a session that did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Normal end (stdin closed or the server closed).
    Done,
    /// The server sent SkyPilot's redirect frame: reconnect with this JSON.
    Redirect(serde_json::Value),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// SkyPilot pings (typed) or WebSocket pings (raw), for keepalive and latency.
    pub ping_interval: Duration,
    /// The largest frame we send (servers limit frame sizes; the sidecar's default is 64 KiB).
    pub chunk: usize,
    /// Read size, from stdin and from the server: what one stdin read returns is sent as frames
    /// of `chunk` bytes with one write, so a busy stream costs fewer syscalls and wake-ups on
    /// both sides.
    pub read_size: usize,
}

/// Unanswered pings remembered at most (SkyPilot's client uses the same bound).
const MAX_PENDING_PINGS: usize = 100;

/// The largest frame, or message gathered whole, accepted from the server.
const MAX_MESSAGE: u64 = 16 << 20;

/// How long to wait for the server's close after ours.
const LINGER: Duration = Duration::from_secs(2);

/// Runs until the session ends. `read_ahead` is what the server sent with its `101`. `hangup`
/// resolving (ssh sends SIGHUP to its ProxyCommand when it exits) ends the session like stdin
/// EOF: with a close frame, not a vanished connection.
pub async fn run<S, I, O, H>(
    conn: S,
    read_ahead: Vec<u8>,
    mut stdin: I,
    mut stdout: O,
    opts: &Options,
    hangup: H,
) -> Result<End, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    H: std::future::Future<Output = ()>,
{
    let mut hangup = std::pin::pin!(hangup);
    let (mut rd, wr) = tokio::io::split(conn);
    let mut to = ToServer::new(wr);
    let mut from = Inbound {
        buf: BytesMut::from(&read_ahead[..]),
        msg: Msg::Idle,
        framing: None,
    };
    let read_size = opts.read_size.max(1);
    let chunk = opts.chunk.max(1);
    let mut input = vec![0u8; read_size];
    let mut ticker =
        tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
    let mut next_id: u32 = 0;
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut stdin_done = false;
    // After stdin ends we send a close and wait briefly for the server's.
    let mut linger = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    let mut out: Vec<Out> = Vec::new();
    let mut events: Vec<Event> = Vec::new();

    loop {
        // Every complete frame buffered: the data to stdout in one write, then the rest.
        let scan = from.scan(&mut out, &mut events);
        if !out.is_empty() {
            write_out(&mut stdout, &from.buf, &out).await?;
            out.clear();
        }
        from.buf.advance(scan.consumed);
        for e in events.drain(..) {
            match e {
                Event::Ping(payload) => {
                    let _ = to.control(Opcode::Pong, &payload).await;
                }
                Event::Pong(id) => {
                    if let Some(sent) = pending.remove(&id) {
                        let ms = sent.elapsed().as_millis() as u64;
                        tracing::info!(latency_ms = ms, "round trip to the server");
                        let _ = to.control(Opcode::Binary, &latency_frame(ms)).await;
                    }
                }
            }
        }
        let need = match scan.stop {
            Stop::Need(n) => n,
            Stop::Redirect(json) => {
                let v = serde_json::from_slice(&json)
                    .map_err(|e| ClientError::Protocol(format!("bad redirect frame: {e}")))?;
                let _ = to.close(1000, "redirected").await;
                return Ok(End::Redirect(v));
            }
            Stop::Closed(frame) => {
                let _ = stdout.flush().await;
                let _ = to.close(frame.as_ref().map_or(1000, |f| f.0), "").await;
                return match frame {
                    // A server going away cuts a session that was still in use: not a normal
                    // end (ssh would report nothing and exit as if the command had ended).
                    Some((1001, reason)) if !stdin_done => Err(ClientError::GoingAway {
                        reason: text::escape(&reason).into_owned(),
                    }),
                    _ if from.framing.is_none() => Err(closed_early(frame)),
                    Some((code, reason)) if !matches!(code, 1000 | 1001) && !stdin_done => {
                        Err(ClientError::Protocol(format!(
                            "the server closed the session: {code} {}",
                            text::escape(&reason)
                        )))
                    }
                    _ => Ok(End::Done),
                };
            }
            Stop::Bad(why) => {
                let _ = to.close(1002, "protocol error").await;
                return Err(ClientError::Protocol(format!(
                    "bad frame from the server: {why}"
                )));
            }
        };
        let want = need.saturating_sub(from.buf.len()).max(read_size);
        from.buf.reserve(want);
        let started = from.framing.is_some();
        tokio::select! {
            r = read_chunk(&mut rd, &mut from.buf, want) => match r {
                Ok(0) if !started => {
                    return Err(ClientError::Protocol("the server closed before sending anything".into()))
                }
                Ok(0) | Err(_) if stdin_done => return Ok(End::Done),
                Ok(0) => {
                    return Err(ClientError::Protocol(
                        "the server connection failed: it closed without a close frame".into(),
                    ))
                }
                Err(e) => return Err(ClientError::Protocol(format!("the server connection failed: {e}"))),
                Ok(_) => {}
            },
            r = stdin.read(&mut input), if started && !stdin_done => match r {
                Ok(0) | Err(_) => {
                    stdin_done = true;
                    let _ = to.close(1000, "client done").await;
                    linger.as_mut().reset(Instant::now() + LINGER);
                }
                Ok(n) => {
                    let framing = from.framing.unwrap_or(Framing::Raw);
                    if let Err(e) = to.data(framing, &mut input[..n], chunk).await {
                        return Err(ClientError::Protocol(format!("sending to the server failed: {e}")));
                    }
                }
            },
            _ = ticker.tick(), if started => {
                let sent = match from.framing {
                    Some(Framing::Typed) => {
                        next_id = next_id.wrapping_add(1);
                        if pending.len() >= MAX_PENDING_PINGS {
                            pending.clear();
                        }
                        pending.insert(next_id, Instant::now());
                        to.control(Opcode::Binary, &ping_frame(next_id)).await
                    }
                    _ => to.control(Opcode::Ping, &[]).await,
                };
                if sent.is_err() && stdin_done {
                    return Ok(End::Done);
                }
            },
            _ = &mut linger, if stdin_done => return Ok(End::Done),
            _ = &mut hangup, if !stdin_done => {
                let _ = to.close(1000, "client done").await;
                return Ok(End::Done);
            },
        }
    }
}

/// What goes to stdout, in order: a payload still in the read buffer, or a message gathered
/// from its frames (the server's first).
enum Out {
    Buffered(Range<usize>),
    Owned(Vec<u8>),
}

/// What a scan found besides data; handled after the data before it is written.
enum Event {
    /// A WebSocket ping: answered with its payload.
    Ping(Vec<u8>),
    /// The echo of our SkyPilot ping with this id.
    Pong(u32),
}

/// Why a scan of the read buffer stopped.
enum Stop {
    /// The frame under way needs the buffer (from the end of what was consumed) to hold this
    /// many bytes.
    Need(usize),
    /// The server's first message is a redirect: this JSON.
    Redirect(Vec<u8>),
    /// The server's close frame: its code and reason, if it gave them.
    Closed(Option<(u16, String)>),
    /// A frame the server must not send.
    Bad(String),
}

struct Scan {
    /// Bytes at the front of the buffer that hold whole frames, done with once `out` is written.
    consumed: usize,
    stop: Stop,
}

/// The message that continuation frames extend.
enum Msg {
    Idle,
    /// Session bytes: every further fragment is data as it comes.
    Data,
    /// A message gathered whole: the first one (which decides the framing) or a typed control
    /// message split over frames.
    Gather(Vec<u8>),
    /// A text message: ignored.
    Skip,
}

/// The server → client direction: the read buffer, the message under way, and the framing once
/// the first message has decided it.
struct Inbound {
    buf: BytesMut,
    msg: Msg,
    framing: Option<Framing>,
}

impl Inbound {
    /// Takes every complete frame at the front of the buffer: data for stdout into `out`
    /// (ranges into the buffer), pings and pongs into `events`.
    fn scan(&mut self, out: &mut Vec<Out>, events: &mut Vec<Event>) -> Scan {
        let mut at = 0;
        let stop = loop {
            let h = match wsframe::parse(&self.buf[at..], MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break Stop::Need(MAX_HEADER),
                Err(HeaderError::TooBig(n)) => {
                    break Stop::Bad(format!("a frame of {n} bytes is over the 16 MiB limit"))
                }
                Err(e) => break Stop::Bad(e.to_string()),
            };
            // `len` is at most MAX_MESSAGE, so this fits.
            let end = h.header_len + h.len as usize;
            if at + end > self.buf.len() {
                break Stop::Need(end);
            }
            if h.mask.is_some() {
                break Stop::Bad("a masked frame (servers never mask)".into());
            }
            let payload = at + h.header_len..at + end;
            at += end;
            let stop = match h.opcode {
                Opcode::Binary | Opcode::Continuation | Opcode::Text => {
                    self.data_frame(h.opcode, h.fin, payload, out, events)
                }
                Opcode::Ping => {
                    events.push(Event::Ping(self.buf[payload].to_vec()));
                    None
                }
                Opcode::Pong => None,
                _ => Some(Stop::Closed(close_frame(&self.buf[payload]))),
            };
            if let Some(stop) = stop {
                break stop;
            }
        };
        Scan { consumed: at, stop }
    }

    /// One frame of a message; `Some` when the scan must stop.
    fn data_frame(
        &mut self,
        opcode: Opcode,
        fin: bool,
        payload: Range<usize>,
        out: &mut Vec<Out>,
        events: &mut Vec<Event>,
    ) -> Option<Stop> {
        let starts = opcode != Opcode::Continuation;
        let bytes = &self.buf[payload.clone()];
        match (std::mem::replace(&mut self.msg, Msg::Idle), starts) {
            (Msg::Idle, false) => {
                return Some(Stop::Bad("a continuation frame outside a message".into()))
            }
            (Msg::Idle, true) if opcode == Opcode::Text => self.msg = Msg::Skip,
            (Msg::Idle, true) => match self.framing {
                Some(Framing::Raw) => {
                    out.push(Out::Buffered(payload));
                    self.msg = Msg::Data;
                }
                Some(Framing::Typed) if bytes.first() == Some(&TYPE_DATA) => {
                    out.push(Out::Buffered(payload.start + 1..payload.end));
                    self.msg = Msg::Data;
                }
                _ => self.msg = Msg::Gather(bytes.to_vec()),
            },
            (_, true) => return Some(Stop::Bad("a new message before the last one ended".into())),
            (Msg::Data, false) => {
                out.push(Out::Buffered(payload));
                self.msg = Msg::Data;
            }
            (Msg::Gather(mut so_far), false) => {
                so_far.extend_from_slice(bytes);
                if so_far.len() as u64 > MAX_MESSAGE {
                    return Some(Stop::Bad("a message over the 16 MiB limit".into()));
                }
                self.msg = Msg::Gather(so_far);
            }
            (Msg::Skip, false) => self.msg = Msg::Skip,
        }
        if !fin {
            return None;
        }
        match std::mem::replace(&mut self.msg, Msg::Idle) {
            Msg::Gather(whole) => self.whole_message(whole, out, events),
            _ => None,
        }
    }

    /// A message gathered whole: the first one decides the framing.
    fn whole_message(
        &mut self,
        whole: Vec<u8>,
        out: &mut Vec<Out>,
        events: &mut Vec<Event>,
    ) -> Option<Stop> {
        if self.framing.is_none() {
            if whole.starts_with(b"SSH-") {
                self.framing = Some(Framing::Raw);
                out.push(Out::Owned(whole));
                return None;
            }
            match decode_from_server(&whole) {
                Ok(FromServer::Data(d)) => {
                    self.framing = Some(Framing::Typed);
                    out.push(Out::Owned(d.to_vec()));
                }
                Ok(FromServer::Redirect(json)) => return Some(Stop::Redirect(json.to_vec())),
                _ => {
                    self.framing = Some(Framing::Raw);
                    out.push(Out::Owned(whole));
                }
            }
            tracing::debug!(framing = ?self.framing, "framing chosen from the server's first message");
            return None;
        }
        match decode_from_server(&whole) {
            Ok(FromServer::Data(d)) => out.push(Out::Owned(d.to_vec())),
            Ok(FromServer::Pong(id)) => events.push(Event::Pong(id)),
            Ok(FromServer::Redirect(_)) => {
                return Some(Stop::Bad("a redirect in the middle of a session".into()))
            }
            Err(e) => return Some(Stop::Bad(e.to_string())),
        }
        None
    }
}

/// A close frame's code and reason (none if it carried no code).
fn close_frame(payload: &[u8]) -> Option<(u16, String)> {
    let (code, reason) = payload.split_first_chunk::<2>()?;
    Some((
        u16::from_be_bytes(*code),
        String::from_utf8_lossy(reason).into_owned(),
    ))
}

/// The client → server direction: frames masked with fresh keys, written whole.
struct ToServer<W> {
    w: W,
    masks: Masks,
    /// Our close frame is out: RFC 6455 allows nothing after it (not even the reply to the
    /// server's close, when ours crossed it).
    closed: bool,
}

impl<W: AsyncWrite + Unpin> ToServer<W> {
    fn new(w: W) -> Self {
        ToServer {
            w,
            masks: Masks::default(),
            closed: false,
        }
    }

    /// Session bytes as frames of at most `chunk` bytes (plus the type byte), masked in place
    /// and written with their headers in one `writev`.
    async fn data(&mut self, framing: Framing, data: &mut [u8], chunk: usize) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let typed = framing == Framing::Typed;
        let mut heads: Vec<([u8; MAX_HEADER + 1], usize)> = Vec::new();
        for piece in data.chunks_mut(chunk) {
            let mask = self.masks.next()?;
            let len = piece.len() + usize::from(typed);
            let (h, mut n) = wsframe::header(Opcode::Binary, len as u64, Some(mask));
            let mut head = [0u8; MAX_HEADER + 1];
            head[..n].copy_from_slice(&h[..n]);
            if typed {
                head[n] = TYPE_DATA ^ mask[0];
                n += 1;
            }
            apply_mask(piece, mask_from(mask, usize::from(typed)));
            heads.push((head, n));
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(heads.len() * 2);
        for ((head, n), piece) in heads.iter().zip(data.chunks(chunk)) {
            slices.push(IoSlice::new(&head[..*n]));
            slices.push(IoSlice::new(piece));
        }
        write_all_vectored(&mut self.w, &mut slices).await?;
        self.w.flush().await
    }

    /// One small frame (pings, pongs, SkyPilot's typed control frames).
    async fn control(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = opcode == Opcode::Close;
        let frame = client_frame(opcode, payload, self.masks.next()?);
        self.w.write_all(&frame).await?;
        self.w.flush().await
    }

    async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        self.control(Opcode::Close, &close_payload(code, reason))
            .await
    }
}

/// Masking keys from the OS's random source, fetched 64 at a time (RFC 6455 §5.3 asks for
/// unpredictable keys; one `getrandom` per frame would be a syscall per keystroke).
struct Masks {
    pool: [u8; 256],
    used: usize,
}

impl Default for Masks {
    fn default() -> Self {
        Masks {
            pool: [0; 256],
            used: 256,
        }
    }
}

impl Masks {
    fn next(&mut self) -> io::Result<[u8; 4]> {
        if self.used == self.pool.len() {
            getrandom::fill(&mut self.pool).map_err(|e| io::Error::other(e.to_string()))?;
            self.used = 0;
        }
        let mut m = [0u8; 4];
        m.copy_from_slice(&self.pool[self.used..self.used + 4]);
        self.used += 4;
        Ok(m)
    }
}

/// Appends at most `max` bytes from `rd` to `buf` (cancel-safe: nothing is read if dropped).
async fn read_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    rd.read_buf(&mut buf.limit(max)).await
}

/// Writes every slice, as few `writev`s as the kernel allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

async fn write_out<O: AsyncWrite + Unpin>(
    stdout: &mut O,
    buf: &[u8],
    out: &[Out],
) -> Result<(), ClientError> {
    let mut slices: Vec<IoSlice<'_>> = out
        .iter()
        .map(|o| match o {
            Out::Buffered(r) => &buf[r.clone()],
            Out::Owned(v) => &v[..],
        })
        .filter(|s| !s.is_empty())
        .map(IoSlice::new)
        .collect();
    let failed = |e: io::Error| ClientError::Protocol(format!("writing to stdout: {e}"));
    write_all_vectored(stdout, &mut slices)
        .await
        .map_err(failed)?;
    stdout.flush().await.map_err(failed)
}

fn closed_early(f: Option<(u16, String)>) -> ClientError {
    match f {
        Some((code, reason)) => ClientError::Protocol(format!(
            "the server closed the session: {code} {}",
            text::escape(&reason)
        )),
        None => ClientError::Protocol("the server closed the session".into()),
    }
}

#[cfg(test)]
mod tests {
    //! The server is tungstenite's (an independent RFC 6455 implementation: it rejects unmasked
    //! client frames) over `tokio::io::duplex`, or raw bytes where a test needs what a library
    //! would not send.
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
    use tokio_tungstenite::tungstenite::{Bytes, Message};
    use tokio_tungstenite::WebSocketStream;
    use wsgate_proto::framing::redirect_frame;

    type Server = WebSocketStream<DuplexStream>;

    /// The session's end of the connection, and tungstenite's server on the other end.
    async fn server() -> (DuplexStream, Server) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        (client, ws)
    }

    fn bin(b: &[u8]) -> Message {
        Message::Binary(Bytes::copy_from_slice(b))
    }

    fn opts() -> Options {
        Options {
            ping_interval: Duration::from_secs(10),
            chunk: 1024,
            read_size: 4096,
        }
    }

    /// The next message; panics if the connection ends first.
    async fn next(s: &mut Server) -> Message {
        s.next().await.unwrap().unwrap()
    }

    /// A raw server frame (unmasked, final unless `fin` is false).
    fn raw(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let (h, n) = wsframe::header(opcode, payload.len() as u64, None);
        let mut f = h[..n].to_vec();
        if !fin {
            f[0] &= 0x7F;
        }
        f.extend_from_slice(payload);
        f
    }

    /// The session's end of a raw server connection whose server has sent a typed banner, then
    /// `more` bytes; the server's end, to read frames from and write more to.
    async fn server_after_banner(more: &[u8]) -> (DuplexStream, DuplexStream) {
        let (conn, mut peer) = tokio::io::duplex(1 << 16);
        let mut first = raw(true, Opcode::Binary, b"\x00SSH-2.0-x\r\n");
        first.extend_from_slice(more);
        peer.write_all(&first).await.unwrap();
        (conn, peer)
    }

    #[tokio::test]
    async fn typed_server_gets_typed_frames_and_stdin_eof_closes() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
        let (stdin, mut feed) = tokio::io::duplex(1024);
        let (mut read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let peer = async {
            let mut got = vec![0u8; 11];
            read_out.read_exact(&mut got).await.unwrap();
            feed.write_all(b"SSH-2.0-client\r\n").await.unwrap();
            assert_eq!(next(&mut srv).await, bin(b"\x00SSH-2.0-client\r\n"));
            drop(feed);
            match next(&mut srv).await {
                Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
                other => panic!("{other:?}"),
            }
            // tungstenite answers the close; the session then ends.
            let _ = srv.next().await;
            got
        };
        let (end, got) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
        assert_eq!(got, b"SSH-2.0-x\r\n");
    }

    #[tokio::test]
    async fn old_server_gets_raw_frames() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"SSH-2.0-old\r\n")).await.unwrap();
        let (stdin, mut feed) = tokio::io::duplex(1024);
        let (_read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let peer = async {
            feed.write_all(b"hello").await.unwrap();
            assert_eq!(next(&mut srv).await, bin(b"hello"));
            srv.close(None).await.unwrap();
        };
        let (end, ()) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
    }

    /// Frames that came with the `101` (the handshake read them) are the session's first.
    #[tokio::test]
    async fn read_ahead_bytes_are_the_first_frames() {
        let (conn, mut srv) = server().await;
        let mut ahead = raw(true, Opcode::Binary, b"\x00SSH-2.0-x\r\n");
        ahead.extend(raw(false, Opcode::Binary, b"\x00more "));
        let (stdin, _feed) = tokio::io::duplex(1024);
        let (mut read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(conn, ahead, stdin, stdout, &o, std::future::pending());
        let peer = async {
            // The rest of the fragmented message comes over the connection.
            srv.get_mut()
                .write_all(&raw(true, Opcode::Continuation, b"bytes"))
                .await
                .unwrap();
            let mut got = vec![0u8; 21];
            read_out.read_exact(&mut got).await.unwrap();
            srv.close(None).await.unwrap();
            got
        };
        let (end, got) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
        assert_eq!(got, b"SSH-2.0-x\r\nmore bytes");
    }

    /// A bulk transfer both ways: stdin in reads larger than a frame (several frames per
    /// write), the server's frames many per read; every byte arrives, in order.
    #[tokio::test]
    async fn bulk_both_ways_in_order() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
        let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (stdin, mut feed) = tokio::io::duplex(1 << 16);
        let (mut read_out, stdout) = tokio::io::duplex(1 << 16);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let (srv_tx, mut srv_rx) = srv.split();
        let feeder = async {
            feed.write_all(&up).await.unwrap();
            feed
        };
        let reader = async {
            let mut got = Vec::new();
            let mut frames = 0;
            while got.len() < up.len() {
                match srv_rx.next().await.unwrap().unwrap() {
                    Message::Binary(b) => {
                        assert_eq!(b[0], TYPE_DATA);
                        assert!(b.len() <= 1 + 1024, "a frame over the chunk size");
                        got.extend_from_slice(&b[1..]);
                        frames += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            (got, frames, srv_rx)
        };
        let sender = async {
            let mut srv_tx = srv_tx;
            for piece in down.chunks(700) {
                let mut f = vec![TYPE_DATA];
                f.extend_from_slice(piece);
                srv_tx.feed(Message::Binary(f.into())).await.unwrap();
            }
            srv_tx.flush().await.unwrap();
            srv_tx
        };
        let drain = async {
            let mut got = vec![0u8; 11 + down.len()];
            read_out.read_exact(&mut got).await.unwrap();
            got
        };
        let all = async {
            let (feed, (got_up, frames, srv_rx), srv_tx, got_down) =
                tokio::join!(feeder, reader, sender, drain);
            drop(feed);
            let mut srv = srv_tx.reunite(srv_rx).unwrap();
            assert!(matches!(next(&mut srv).await, Message::Close(_)));
            let _ = srv.next().await;
            (got_up, frames, got_down)
        };
        let (end, (got_up, frames, got_down)) = tokio::join!(session, all);
        assert_eq!(end.unwrap(), End::Done);
        assert_eq!(got_up, up);
        assert!(frames >= up.len() / 1024);
        assert_eq!(&got_down[..11], b"SSH-2.0-x\r\n");
        assert_eq!(&got_down[11..], &down[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_and_reports_latency() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
        let (stdin, _feed) = tokio::io::duplex(1024);
        let (_read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let peer = async {
            let ping = next(&mut srv).await;
            assert_eq!(ping, bin(&ping_frame(1)));
            tokio::time::sleep(Duration::from_millis(30)).await;
            srv.send(ping).await.unwrap();
            assert_eq!(next(&mut srv).await, bin(&latency_frame(30)));
            srv.close(None).await.unwrap();
        };
        let (end, ()) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
    }

    /// A WebSocket ping is answered with its payload (tungstenite's server shows the pong).
    #[tokio::test]
    async fn websocket_pings_are_answered() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"SSH-2.0-old\r\n")).await.unwrap();
        srv.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        let (stdin, _feed) = tokio::io::duplex(1024);
        let (_read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let peer = async {
            assert_eq!(
                next(&mut srv).await,
                Message::Pong(Bytes::from_static(b"are you there"))
            );
            srv.close(None).await.unwrap();
        };
        let (end, ()) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
    }

    #[tokio::test]
    async fn hangup_sends_a_close_frame() {
        let (conn, mut srv) = server().await;
        srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
        let (stdin, _feed) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let end = run(conn, Vec::new(), stdin, stdout, &opts(), async {})
            .await
            .unwrap();
        assert_eq!(end, End::Done);
        match next(&mut srv).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn redirect_frame_and_error_closes() {
        let (conn, mut srv) = server().await;
        let info = serde_json::json!({"url": "wss://x/y"});
        srv.send(bin(&redirect_frame(&info))).await.unwrap();
        let (stdin, _f) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let end = run(
            conn,
            Vec::new(),
            stdin,
            stdout,
            &opts(),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(end, End::Redirect(info));

        let (conn, mut srv) = server().await;
        srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
        srv.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "target connection failed".into(),
        })))
        .await
        .unwrap();
        let (stdin, _f) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let e = run(
            conn,
            Vec::new(),
            stdin,
            stdout,
            &opts(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server closed the session: 1011 target connection failed"
        );
    }

    /// A server going away (1001) mid-session is an error of its own (exit 13), not an end;
    /// close reasons are escaped.
    #[tokio::test]
    async fn going_away_and_hostile_reasons() {
        struct Case {
            code: u16,
            reason: &'static str,
            want: &'static str,
            exit: i32,
        }
        let cases = [
            Case {
                code: 1001,
                reason: "server shutting down",
                want: "the server is shutting down (it closed the session with 1001 \"server shutting down\")",
                exit: 13,
            },
            Case {
                code: 1011,
                reason: "\x1b[31mred\x07\r\u{202e}",
                want: "the server closed the session: 1011 \\x1b[31mred\\x07\\r\\u{202e}",
                exit: 10,
            },
        ];
        for c in cases {
            let (conn, mut peer) =
                server_after_banner(&raw(true, Opcode::Close, &close_payload(c.code, c.reason)))
                    .await;
            let (stdin, _f) = tokio::io::duplex(64);
            let (_o, stdout) = tokio::io::duplex(64);
            let e = run(
                conn,
                Vec::new(),
                stdin,
                stdout,
                &opts(),
                std::future::pending(),
            )
            .await
            .unwrap_err();
            assert!(e.to_string().starts_with(c.want), "{e}");
            assert_eq!(e.exit_code(), c.exit);
            let _ = peer.read(&mut [0u8; 64]).await;
        }
    }

    /// What a server must not send ends the session with a clear error and a 1002 close.
    #[tokio::test]
    async fn bad_server_frames_are_refused() {
        let masked = {
            let mut f = client_frame(Opcode::Binary, b"\x00x", [1, 2, 3, 4]);
            f[0] |= 0x80;
            f
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("masked", masked, "a masked frame"),
            ("rsv1", vec![0xC2, 0x00], "reserved bits"),
            (
                "stray continuation",
                raw(true, Opcode::Continuation, b"x"),
                "continuation frame outside",
            ),
            (
                "over 16 MiB",
                vec![0x82, 0x7F, 0, 0, 0, 0, 1, 0, 0, 1],
                "over the 16 MiB limit",
            ),
            (
                "unknown type",
                raw(true, Opcode::Binary, b"\x07abc"),
                "bad frame from the server",
            ),
        ];
        for (what, bytes, want) in cases {
            let (conn, mut peer) = server_after_banner(&bytes).await;
            let (stdin, _f) = tokio::io::duplex(64);
            let (_o, stdout) = tokio::io::duplex(64);
            let e = run(
                conn,
                Vec::new(),
                stdin,
                stdout,
                &opts(),
                std::future::pending(),
            )
            .await
            .unwrap_err();
            assert!(e.to_string().contains(want), "{what}: {e}");
            assert!(
                e.to_string().starts_with("bad frame from the server"),
                "{what}: {e}"
            );
            // The session said why before it went: a close frame with 1002.
            let mut got = vec![0u8; 64];
            let n = peer.read(&mut got).await.unwrap();
            let h = wsframe::parse(&got[..n], 125).unwrap().unwrap();
            let mut payload = got[h.header_len..n].to_vec();
            apply_mask(&mut payload, h.mask.unwrap());
            assert_eq!(
                (h.opcode, &payload[..2]),
                (Opcode::Close, &1002u16.to_be_bytes()[..]),
                "{what}"
            );
        }
    }

    /// Our close after stdin's end crosses nothing: the server's close that answers it gets no
    /// second close frame (RFC 6455: nothing after a close).
    #[tokio::test]
    async fn one_close_frame_only() {
        let (conn, mut peer) = server_after_banner(&[]).await;
        let (stdin, feed) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let server = async {
            drop(feed);
            let mut got = [0u8; 64];
            let n = peer.read(&mut got).await.unwrap();
            let h = wsframe::parse(&got[..n], 125).unwrap().unwrap();
            assert_eq!((h.opcode, h.frame_len() as usize), (Opcode::Close, n));
            peer.write_all(&raw(true, Opcode::Close, &close_payload(1000, "")))
                .await
                .unwrap();
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).await.unwrap();
            rest
        };
        let (end, rest) = tokio::join!(session, server);
        assert_eq!(end.unwrap(), End::Done);
        assert_eq!(rest, b"", "bytes after our close frame");
    }

    #[tokio::test]
    async fn a_connection_lost_mid_session_is_an_error() {
        let (conn, peer) = server_after_banner(&[]).await;
        let (stdin, _f) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let o = opts();
        let session = run(conn, Vec::new(), stdin, stdout, &o, std::future::pending());
        let lose = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(peer);
        };
        let (e, ()) = tokio::join!(session, lose);
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("the server connection failed"),);
    }
}
