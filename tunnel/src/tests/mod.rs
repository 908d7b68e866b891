//! Engine tests over `tokio::io::duplex`. The peer is tungstenite (an independent RFC 6455
//! implementation: its client masks, its server rejects unmasked client frames), or raw bytes
//! where a test needs what a library would not send.
//!
//! - `server`: the sidecar's role (a client's frames in, the target's bytes out).
//! - `client`: `wsgate proxy`'s role (the server's frames in, stdin's bytes out).
//! - `stuck`: a peer or local side that stops reading, in both roles: the session still ends.
//! - `resume`: resumption, both roles against each other over a network that breaks.

mod client;
mod resume;
mod server;
mod stuck;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use wsgate_proto::framing::Framing;
use wsgate_proto::wsframe::{self, HeaderError, Opcode};

use crate::{run, CloseFrame, Config, Ended, Hooks, Reason, Role, Violation};

/// What a session reported.
#[derive(Default)]
pub(crate) struct Seen {
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub latency: Mutex<Vec<u64>>,
}

impl Seen {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

impl Hooks for Seen {
    fn peer_to_local(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }
    fn local_to_peer(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }
    fn latency_ms(&self, ms: u64) {
        self.latency.lock().unwrap().push(ms);
    }
    fn close_frame(&self, why: &Reason) -> Option<CloseFrame> {
        close_for(why)
    }
}

/// The close frames the tests expect: RFC 6455's codes for each kind of end. (Each end maps
/// its reasons itself; the engine sends what it is given.)
pub(crate) fn close_for(why: &Reason) -> Option<CloseFrame> {
    let code = match why {
        Reason::PeerClosed(f) => f.as_ref().map_or(1000, |f| f.code),
        Reason::LocalClosed | Reason::Redirected(_) => 1000,
        Reason::Shutdown | Reason::Superseded => 1001,
        Reason::Violation(
            Violation::Header(HeaderError::TooBig(_)) | Violation::MessageTooBig(_),
        ) => 1009,
        Reason::Violation(Violation::Text | Violation::Framing(_))
        | Reason::IdleTimeout
        | Reason::MaxAge => 1008,
        Reason::Violation(_) => 1002,
        Reason::LocalReadFailed(_) | Reason::LocalWriteFailed(_) | Reason::KeepaliveTimeout => 1011,
        Reason::PeerEof
        | Reason::PeerReadFailed(_)
        | Reason::PeerWriteFailed(_)
        | Reason::Lingered => return None,
    };
    Some(CloseFrame {
        code,
        reason: why.to_string(),
    })
}

/// The sidecar's settings, small: 1 KiB frames, 4 KiB reads, no timers.
pub(crate) fn server_config(framing: Framing) -> Config {
    Config {
        role: Role::Server,
        framing: Some(framing),
        max_frame: 1024,
        max_message: 1024 + 16,
        peer_read_size: 4096,
        local_read_size: 1024,
        ping_interval: None,
        max_missed_pongs: Some(2),
        idle_timeout: None,
        max_age: None,
        resume: None,
    }
}

/// `wsgate proxy`'s settings, small: 1 KiB frames, 4 KiB reads, pings every 10 s, the framing
/// learnt from the server's first message.
pub(crate) fn client_config() -> Config {
    Config {
        role: Role::Client,
        framing: None,
        max_frame: 1024,
        max_message: 16 << 20,
        peer_read_size: 4096,
        local_read_size: 4096,
        ping_interval: Some(Duration::from_secs(10)),
        max_missed_pongs: None,
        idle_timeout: None,
        max_age: None,
        resume: None,
    }
}

/// Runs a server-role session between `peer` and `target` (split for the engine).
pub(crate) async fn serve(
    peer: DuplexStream,
    target: DuplexStream,
    c: &Config,
    seen: &Seen,
    shutdown: impl Future<Output = ()>,
) -> Reason {
    let (rd, wr) = tokio::io::split(target);
    run(peer, BytesMut::new(), rd, wr, c, seen, shutdown)
        .await
        .reason
}

/// Runs a client-role session on `conn`, with `stdin` and `stdout` as the local side.
pub(crate) async fn connect(
    conn: DuplexStream,
    read_ahead: &[u8],
    stdin: DuplexStream,
    stdout: DuplexStream,
    c: &Config,
    seen: &Seen,
    hangup: impl Future<Output = ()>,
) -> Ended {
    run(
        conn,
        BytesMut::from(read_ahead),
        stdin,
        stdout,
        c,
        seen,
        hangup,
    )
    .await
}

/// The engine's end of a connection, and tungstenite in `role` on the other end.
pub(crate) async fn ws(role: WsRole) -> (DuplexStream, WebSocketStream<DuplexStream>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let ws = WebSocketStream::from_raw_socket(theirs, role, Some(WebSocketConfig::default())).await;
    (ours, ws)
}

pub(crate) fn bin(b: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(b))
}

/// The next message; panics if the connection ends first.
pub(crate) async fn next(ws: &mut WebSocketStream<DuplexStream>) -> Message {
    use futures_util::StreamExt;
    ws.next().await.unwrap().unwrap()
}

pub(crate) fn close_code(m: &Message) -> Option<(u16, String)> {
    match m {
        Message::Close(Some(f)) => Some((f.code.into(), f.reason.to_string())),
        _ => None,
    }
}

/// A client frame built by hand (masked with a fixed key); `b0` is its first byte.
pub(crate) fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let (h, n) = wsframe::header(Opcode::Binary, payload.len() as u64, Some(mask));
    let mut f = h[..n].to_vec();
    f[0] = b0;
    let mut p = payload.to_vec();
    wsframe::apply_mask(&mut p, mask);
    f.extend_from_slice(&p);
    f
}

/// A server frame built by hand (unmasked); `b0` is its first byte.
pub(crate) fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let (h, n) = wsframe::header(Opcode::Binary, payload.len() as u64, None);
    let mut f = h[..n].to_vec();
    f[0] = b0;
    f.extend_from_slice(payload);
    f
}

/// Reads frames until EOF: (opcode, unmasked payload) each.
pub(crate) async fn frames_of<R: AsyncRead + Unpin>(mut r: R) -> Vec<(Opcode, Vec<u8>)> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).await.unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(h) = wsframe::parse(&bytes[at..], u64::MAX).unwrap() {
        let p = at + h.header_len..at + h.frame_len() as usize;
        let mut payload = bytes[p.clone()].to_vec();
        if let Some(m) = h.mask {
            wsframe::apply_mask(&mut payload, m);
        }
        frames.push((h.opcode, payload));
        at = p.end;
    }
    assert_eq!(at, bytes.len(), "no half frame");
    frames
}

/// The code of the last frame, which must be a close.
pub(crate) fn close_of(frames: &[(Opcode, Vec<u8>)]) -> u16 {
    let (op, p) = frames.last().unwrap();
    assert_eq!(*op, Opcode::Close);
    u16::from_be_bytes([p[0], p[1]])
}
