//! One session: stdin → WebSocket → stdout, with SkyPilot's framing when the server speaks it:
//! `wsgate proxy`'s side of [`wsgate_tunnel`], in the client role.
//!
//! The server talks first (sshd sends its banner), so its first message decides the framing: a
//! `0` type byte means typed frames; a message that starts with `SSH-` means an old server that
//! sends raw bytes; a `3` is a redirect to follow. The engine does the RFC 6455 framing on the
//! connection itself, in place: what one stdin read returns is masked where it lies and sent as
//! frames of at most `chunk` bytes in one `writev`, and the data of every complete frame one
//! read from the server brings goes to stdout in one `writev`; ssh hanging up, the keepalive
//! and the close handshake are raced against every pending read and write. This module maps
//! the options onto the engine, and its end onto what the user is told.
//!
//! A resumable session ([`Resumable`], when the server accepted resumption) is raw frames and
//! the text control messages of docs/resume.md; stdin, stdout and the replay state live in
//! the engine's [`wsgate_tunnel::Session`], across connections ("legs"). This module runs one
//! leg and says whether it was lost; `run` reconnects.

use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wsgate_proto::framing::Framing;
use wsgate_proto::wsframe;
use wsgate_tunnel::{
    CloseFrame, Config, Ended, Hooks, Leg, Reason, Replayed, ResumeConfig, Role, Violation,
};

use crate::error::ClientError;
use crate::resume::{self, Ticket};
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

/// The largest frame, or message gathered whole, accepted from the server.
const MAX_MESSAGE: u64 = 16 << 20;

/// Keepalive pings without an answer before a resumable leg counts as lost (30 s at the
/// default `--ping-interval`). Without a bound, a connection whose path died silently (a
/// laptop asleep, a NAT that forgot it) would be waited on for TCP's retransmission timeout,
/// many minutes; with resumption, giving up on it early costs only a reconnect.
const LOST_AFTER_PINGS: u32 = 3;

/// The engine's settings: today's session (the framing learnt from the server's first
/// message), or a resumable one (`resume`).
fn config(opts: &Options, resume: Option<ResumeConfig>) -> Config {
    let read_size = opts.read_size.max(1);
    let mut config = Config {
        role: Role::Client,
        framing: None,
        max_frame: opts.chunk.max(1),
        max_message: MAX_MESSAGE,
        peer_read_size: read_size,
        local_read_size: read_size,
        ping_interval: Some(opts.ping_interval),
        max_missed_pongs: None,
        idle_timeout: None,
        max_age: None,
        resume: None,
    };
    if resume.is_some() {
        // Accepting resumption fixes the framing: raw frames (docs/resume.md).
        config.framing = Some(Framing::Raw);
        config.max_missed_pongs = Some(LOST_AFTER_PINGS);
        config.resume = resume;
    }
    config
}

/// Runs until the session ends. `read_ahead` is what the server sent with its `101`. `hangup`
/// resolving (ssh sends SIGHUP to its ProxyCommand when it exits) ends the session like stdin
/// EOF: with a close frame, not a vanished connection.
pub async fn run<S, I, O, H>(
    conn: S,
    read_ahead: Vec<u8>,
    stdin: I,
    stdout: O,
    opts: &Options,
    hangup: H,
) -> Result<End, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    H: std::future::Future<Output = ()>,
{
    let config = config(opts, None);
    let ended = wsgate_tunnel::run(
        conn,
        BytesMut::from(&read_ahead[..]),
        stdin,
        stdout,
        &config,
        &ClientHooks::default(),
        hangup,
    )
    .await;
    outcome(ended)
}

/// A resumable session: stdin, stdout and what is kept for a replay, across connections.
pub struct Resumable<I, O> {
    session: wsgate_tunnel::Session<I, O>,
    config: Config,
    /// Where the sidecar's ticket lands (the engine calls the hooks from inside a leg).
    hooks: ClientHooks,
}

/// How a leg of a [`Resumable`] session ended.
pub enum LegEnd<I, O> {
    /// The connection was lost, the session was not: reconnect and resume it. `why` is a few
    /// words for the user (escaped).
    Lost {
        /// Boxed: the other variant is a few words.
        session: Box<Resumable<I, O>>,
        why: String,
    },
    /// The session is over (its stdout flushed), as [`run`] would have ended it: a deliberate
    /// end, or a lost connection that cannot be resumed (no ticket yet).
    Over(Result<End, ClientError>),
}

impl<I: AsyncRead + Unpin, O: AsyncWrite + Unpin> Resumable<I, O> {
    /// `server_replay_buffer`: what the server's `101` said it keeps for a replay, if it did.
    pub fn new(stdin: I, stdout: O, opts: &Options, server_replay_buffer: Option<u64>) -> Self {
        let config = config(
            opts,
            Some(ResumeConfig {
                replay_buffer: resume::REPLAY_BUFFER,
                peer_replay_buffer: server_replay_buffer,
            }),
        );
        Resumable {
            session: wsgate_tunnel::Session::new(stdin, stdout, &config),
            config,
            hooks: ClientHooks::default(),
        }
    }

    /// The sidecar's ticket for this session, once its `session` message came.
    pub fn ticket(&self) -> Option<Ticket> {
        self.hooks.ticket.lock().ok()?.clone()
    }

    /// One leg over `conn` (`read_ahead`: what came with its `101`): the first, or a resumed
    /// one. `hangup` resolving ends the session for good.
    pub async fn run_leg<S, H>(
        mut self,
        conn: S,
        read_ahead: Vec<u8>,
        resumed: bool,
        hangup: H,
    ) -> LegEnd<I, O>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        H: std::future::Future<Output = ()>,
    {
        let leg = if resumed {
            Leg::Resumed
        } else {
            Leg::First { greeting: None }
        };
        let ended = self
            .session
            .run_leg(
                conn,
                BytesMut::from(&read_ahead[..]),
                leg,
                &self.config,
                &self.hooks,
                hangup,
                // Only a server's leg is taken over.
                std::future::pending(),
            )
            .await;
        if ended.lost {
            // After our close went out (stdin ended), only the server's answer was missing:
            // nothing left to resume.
            if self.ticket().is_some() && !ended.input_ended {
                return LegEnd::Lost {
                    why: lost_why(&ended.reason),
                    session: Box::new(self),
                };
            }
            self.session.close(&self.hooks).await;
        }
        LegEnd::Over(outcome(ended))
    }

    /// Writes what is still queued for stdout (while waiting for the next leg). Cancel-safe.
    pub async fn flush_local(&mut self) -> std::io::Result<()> {
        self.session.flush_local().await
    }

    /// Ends the session after a lost leg that will not be resumed: stdout flushed.
    pub async fn close(self) {
        self.session.close(&self.hooks).await
    }
}

/// Closes a connection that did not resume the session (a close frame, best effort, within a
/// second): the server then ends the session it opened instead of waiting for it.
pub async fn close_unresumed<S: AsyncWrite + Unpin>(mut conn: S) {
    let mut mask = [0u8; 4];
    let _ = getrandom::fill(&mut mask);
    let payload = wsframe::close_payload(1000, "not resumed");
    let frame = wsframe::client_frame(wsframe::Opcode::Close, &payload, mask);
    let close = async {
        conn.write_all(&frame).await?;
        conn.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}

/// Why a leg was lost, in a few words for the `connection lost (…)` line (escaped).
fn lost_why(reason: &Reason) -> String {
    let why = match reason {
        Reason::PeerEof => "the connection closed".to_string(),
        Reason::PeerReadFailed(e) => format!("reading: {e}"),
        Reason::PeerWriteFailed(e) => format!("sending: {e}"),
        Reason::KeepaliveTimeout => "no answer to keepalive pings".to_string(),
        Reason::PeerClosed(Some(f)) if f.reason.is_empty() => {
            format!("the server is going away ({})", f.code)
        }
        Reason::PeerClosed(Some(f)) => {
            format!("the server is going away ({} {})", f.code, f.reason)
        }
        other => other.to_string(),
    };
    text::escape(&why).into_owned()
}

/// The client's close frames, its latency log, and (resumable sessions) the sidecar's ticket.
#[derive(Default)]
struct ClientHooks {
    ticket: Mutex<Option<Ticket>>,
}

impl Hooks for ClientHooks {
    fn latency_ms(&self, ms: u64) {
        tracing::info!(latency_ms = ms, "round trip to the server");
    }

    /// The sidecar's `session <id> <secret>`, once per session; anything else is a protocol
    /// violation (the engine handles `ack` and `resume` itself).
    fn control(&self, msg: &str) -> bool {
        let Ok(mut ticket) = self.ticket.lock() else {
            return false;
        };
        if ticket.is_some() {
            return false;
        }
        match Ticket::from_control(msg) {
            Some(t) => {
                tracing::info!(session = t.id(), "the server can resume this session");
                *ticket = Some(t);
                true
            }
            None => false,
        }
    }

    fn replayed(&self, r: Replayed) {
        tracing::info!(
            sent_again = r.to_peer,
            server_sends_again = r.from_peer,
            "resume exchange: bytes replayed each way"
        );
    }

    fn close_frame(&self, why: &Reason) -> Option<CloseFrame> {
        let (code, reason) = match why {
            // stdin closed, or ssh hung up.
            Reason::LocalClosed | Reason::Shutdown => (1000, "client done"),
            Reason::Redirected(_) => (1000, "redirected"),
            // The server's close is answered with its code.
            Reason::PeerClosed(f) => (f.as_ref().map_or(1000, |f| f.code), ""),
            Reason::Violation(_) => (1002, "protocol error"),
            _ => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.to_string(),
        })
    }
}

/// How the session's end reads to the user: an end, or an error that says what happened.
fn outcome(ended: Ended) -> Result<End, ClientError> {
    let Ended {
        reason,
        framing,
        input_ended,
        ..
    } = ended;
    let failed = |m: String| Err(ClientError::Protocol(m));
    match reason {
        Reason::Redirected(json) => serde_json::from_slice(&json)
            .map(End::Redirect)
            .map_err(|e| ClientError::Protocol(format!("bad redirect frame: {e}"))),
        Reason::PeerClosed(frame) => match frame {
            // A server going away cuts a session that was still in use: not a normal end (ssh
            // would report nothing and exit as if the command had ended).
            // 1012: a sidecar shutting down ends a resumable session that way (a 1001 is a
            // drop, resumed from).
            Some(f) if matches!(f.code, 1001 | 1012) && !input_ended => {
                Err(ClientError::GoingAway {
                    code: f.code,
                    reason: text::escape(&f.reason).into_owned(),
                })
            }
            _ if framing.is_none() => Err(closed_early(frame)),
            Some(f) if !matches!(f.code, 1000 | 1001) && !input_ended => failed(format!(
                "the server closed the session: {} {}",
                f.code,
                text::escape(&f.reason)
            )),
            _ => Ok(End::Done),
        },
        Reason::Violation(v) => failed(format!("bad frame from the server: {}", describe(&v))),
        Reason::PeerEof if framing.is_none() => {
            failed("the server closed before sending anything".into())
        }
        // After our close, the server may answer by closing the connection.
        Reason::PeerEof | Reason::PeerReadFailed(_) | Reason::PeerWriteFailed(_) if input_ended => {
            Ok(End::Done)
        }
        Reason::PeerEof => {
            failed("the server connection failed: it closed without a close frame".into())
        }
        Reason::PeerReadFailed(e) => failed(format!("the server connection failed: {e}")),
        Reason::PeerWriteFailed(e) => failed(format!("sending to the server failed: {e}")),
        Reason::LocalWriteFailed(e) => failed(format!("writing to stdout: {e}")),
        // ssh hung up; our close went out and the server did not answer in time; or stdin
        // ended (which in the client role only sends our close).
        Reason::Shutdown | Reason::Lingered | Reason::LocalClosed | Reason::LocalReadFailed(_) => {
            Ok(End::Done)
        }
        // The client sets no idle timeout or age; a pong limit only when resumable, and only
        // a server's leg is taken over.
        Reason::IdleTimeout | Reason::MaxAge | Reason::KeepaliveTimeout | Reason::Superseded => {
            failed(format!("the session ended: {reason}"))
        }
    }
}

/// A frame the server must not send, in the words `wsgate proxy` uses for it.
fn describe(v: &Violation) -> String {
    use wsgate_proto::wsframe::HeaderError;
    match v {
        Violation::Header(HeaderError::TooBig(n)) => {
            format!("a frame of {n} bytes is over the 16 MiB limit")
        }
        Violation::MessageTooBig(_) => "a message over the 16 MiB limit".into(),
        other => other.to_string(),
    }
}

fn closed_early(f: Option<CloseFrame>) -> ClientError {
    match f {
        Some(f) => ClientError::Protocol(format!(
            "the server closed the session: {} {}",
            f.code,
            text::escape(&f.reason)
        )),
        None => ClientError::Protocol("the server closed the session".into()),
    }
}

#[cfg(test)]
mod tests {
    //! The server is tungstenite's (an independent RFC 6455 implementation: it rejects unmasked
    //! client frames) over `tokio::io::duplex`, or raw bytes where a test needs what a library
    //! would not send.
    //!
    //! The engine's own behaviour (framing, fragments, pings, the close handshake, a server or
    //! ssh that stops reading) is tested in `wsgate-tunnel`; these check what the user is told.
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame as WsCloseFrame, Role as WsRole};
    use tokio_tungstenite::tungstenite::{Bytes, Message};
    use tokio_tungstenite::WebSocketStream;
    use wsgate_proto::framing::{redirect_frame, Framing};
    use wsgate_proto::wsframe::{self, apply_mask, client_frame, close_payload, Opcode};

    type Server = WebSocketStream<DuplexStream>;

    /// The session's end of the connection, and tungstenite's server on the other end.
    async fn server() -> (DuplexStream, Server) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let ws = WebSocketStream::from_raw_socket(server, WsRole::Server, None).await;
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
        srv.send(Message::Close(Some(WsCloseFrame {
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

    /// A server that sent its banner and then reads nothing: stdin floods until the connection
    /// is full, and ssh hanging up still ends the session, with a normal end, within the
    /// engine's bound (the client used to await that write and never see the hangup).
    #[tokio::test(start_paused = true)]
    async fn a_hangup_ends_a_session_whose_server_reads_nothing() {
        let (conn, _peer) = server_after_banner(&[]).await;
        let (stdin, mut feed) = tokio::io::duplex(1 << 16);
        let (mut read_out, stdout) = tokio::io::duplex(1 << 16);
        let o = opts();
        let hangup = tokio::time::sleep(Duration::from_secs(60));
        let t0 = tokio::time::Instant::now();
        let session = run(conn, Vec::new(), stdin, stdout, &o, hangup);
        let flood = async {
            let input = async { while feed.write_all(&[7u8; 4096]).await.is_ok() {} };
            let output =
                async { while read_out.read(&mut [0u8; 64]).await.is_ok_and(|n| n > 0) {} };
            tokio::join!(input, output);
            std::future::pending::<()>().await
        };
        let end = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::select! {
                r = session => r,
                () = flood => unreachable!(),
            }
        })
        .await
        .expect("the session outlived the hangup");
        assert_eq!(end.unwrap(), End::Done);
        assert!(t0.elapsed() <= Duration::from_secs(60) + wsgate_tunnel::CLOSE_WAIT * 2);
    }

    /// The sidecar's ticket is taken once, well formed; anything else is refused (the engine
    /// then ends the session with a protocol violation).
    #[test]
    fn the_ticket_comes_once_and_well_formed() {
        let hooks = ClientHooks::default();
        let id = "0123456789abcdef0123456789abcdef";
        let good = format!("session {id} fedcba9876543210fedcba9876543210");
        assert!(!hooks.control("session 1 2"));
        assert!(!hooks.control("hello"));
        assert!(hooks.ticket.lock().unwrap().is_none());
        assert!(hooks.control(&good));
        assert_eq!(hooks.ticket.lock().unwrap().as_ref().unwrap().id(), id);
        assert!(!hooks.control(&good), "a second ticket");
    }

    #[test]
    fn why_a_leg_was_lost() {
        let going = |reason: &str| {
            Reason::PeerClosed(Some(CloseFrame {
                code: 1001,
                reason: reason.into(),
            }))
        };
        let cases = [
            (Reason::PeerEof, "the connection closed"),
            (
                Reason::PeerReadFailed(std::io::Error::other("reset")),
                "reading: reset",
            ),
            (
                Reason::PeerWriteFailed(std::io::Error::other("broken pipe")),
                "sending: broken pipe",
            ),
            (Reason::KeepaliveTimeout, "no answer to keepalive pings"),
            (going(""), "the server is going away (1001)"),
            (
                going("drain\x1b[2J"),
                "the server is going away (1001 drain\\x1b[2J)",
            ),
        ];
        for (reason, want) in cases {
            assert_eq!(lost_why(&reason), want);
        }
    }

    /// Every way the engine ends a session, as the user is told it.
    #[test]
    fn outcomes() {
        struct Case {
            what: &'static str,
            reason: Reason,
            framing: Option<Framing>,
            input_ended: bool,
            /// `Ok(())` for `End::Done`, or the start of the error's message.
            want: Result<(), &'static str>,
        }
        let io = || std::io::Error::other("broken pipe");
        let closed = |code: u16, reason: &str| {
            Reason::PeerClosed(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        };
        let typed = Some(Framing::Typed);
        let cases = [
            Case {
                what: "server closed normally",
                reason: closed(1000, ""),
                framing: typed,
                input_ended: false,
                want: Ok(()),
            },
            Case {
                what: "server going away mid-session",
                reason: closed(1001, "bye"),
                framing: typed,
                input_ended: false,
                want: Err("the server is shutting down"),
            },
            Case {
                what: "server going away after our close",
                reason: closed(1001, "bye"),
                framing: typed,
                input_ended: true,
                want: Ok(()),
            },
            Case {
                what: "server error mid-session",
                reason: closed(1011, "target connection failed"),
                framing: typed,
                input_ended: false,
                want: Err("the server closed the session: 1011 target connection failed"),
            },
            Case {
                what: "server error after our close",
                reason: closed(1011, "x"),
                framing: typed,
                input_ended: true,
                want: Ok(()),
            },
            Case {
                what: "closed before its first message",
                reason: closed(1000, ""),
                framing: None,
                input_ended: false,
                want: Err("the server closed the session: 1000"),
            },
            Case {
                what: "EOF before its first message",
                reason: Reason::PeerEof,
                framing: None,
                input_ended: false,
                want: Err("the server closed before sending anything"),
            },
            Case {
                what: "EOF mid-session",
                reason: Reason::PeerEof,
                framing: typed,
                input_ended: false,
                want: Err("the server connection failed: it closed without a close frame"),
            },
            Case {
                what: "EOF after our close",
                reason: Reason::PeerEof,
                framing: typed,
                input_ended: true,
                want: Ok(()),
            },
            Case {
                what: "read error",
                reason: Reason::PeerReadFailed(io()),
                framing: typed,
                input_ended: false,
                want: Err("the server connection failed: broken pipe"),
            },
            Case {
                what: "write error",
                reason: Reason::PeerWriteFailed(io()),
                framing: typed,
                input_ended: false,
                want: Err("sending to the server failed: broken pipe"),
            },
            Case {
                what: "write error after our close",
                reason: Reason::PeerWriteFailed(io()),
                framing: typed,
                input_ended: true,
                want: Ok(()),
            },
            Case {
                what: "stdout broken",
                reason: Reason::LocalWriteFailed(io()),
                framing: typed,
                input_ended: false,
                want: Err("writing to stdout: broken pipe"),
            },
            Case {
                what: "no answer to our close",
                reason: Reason::Lingered,
                framing: typed,
                input_ended: true,
                want: Ok(()),
            },
            Case {
                what: "hangup",
                reason: Reason::Shutdown,
                framing: None,
                input_ended: false,
                want: Ok(()),
            },
            Case {
                what: "bad redirect",
                reason: Reason::Redirected(bytes::Bytes::from_static(b"{")),
                framing: None,
                input_ended: false,
                want: Err("bad redirect frame"),
            },
            Case {
                what: "oversized frame",
                reason: Reason::Violation(Violation::Header(wsframe::HeaderError::TooBig(1 << 25))),
                framing: typed,
                input_ended: false,
                want: Err(
                    "bad frame from the server: a frame of 33554432 bytes is over the 16 MiB limit",
                ),
            },
        ];
        for c in cases {
            let got = outcome(Ended {
                reason: c.reason,
                framing: c.framing,
                input_ended: c.input_ended,
                lost: false,
            });
            match (got, c.want) {
                (Ok(end), Ok(())) => assert_eq!(end, End::Done, "{}", c.what),
                (Err(e), Err(want)) => {
                    assert!(e.to_string().starts_with(want), "{}: {e}", c.what)
                }
                (got, want) => panic!("{}: {got:?}, want {want:?}", c.what),
            }
        }
    }
}
