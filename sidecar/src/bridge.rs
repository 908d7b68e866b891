//! The bridge: one WebSocket session ↔ one TCP connection to the target, both directions at
//! once: the sidecar's side of [`wsgate_tunnel`], in the server role. The engine does the RFC
//! 6455 framing on the client's connection as bytes (what the HTTP upgrade hands over), in
//! place, and races every pending read and write against the session's limits; this module
//! maps the sidecar's settings onto it, and its end onto the one [`CloseReason`] the audit and
//! the metrics record (mapped in [`crate::error`]).
//!
//! A [`Bridge`] is one session's target side and replay state, kept across its legs (client
//! connections): one leg for a session that is not resumable ([`bridge`]), as many as its
//! client resumes it for one that is (`crate::server` runs them, `crate::resume` hands them
//! over).
//!
//! Memory is bounded: towards the target, one read buffer (`read_size`; a typed control message,
//! gathered whole, of at most `max_frame` bytes) whose data is all written before more is read;
//! towards the client, one frame of at most `max_frame` bytes at a time. A slow peer slows the
//! other side down instead of growing a queue, and untouched buffer pages cost nothing, so an
//! idle session holds little.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;
use wsgate_proto::framing::Framing;
use wsgate_tunnel::{CloseFrame, Config, Hooks, Reason, ResumeConfig, Role, Session};

use crate::error::CloseReason;

pub use wsgate_tunnel::{Leg, Replayed, CLOSE_WAIT};

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
    /// Pings without a pong (or ping intervals in which the client took none of the frames
    /// waiting for it) before the session is closed.
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
    /// A resumed leg's exchange: the target's bytes its client had not received, sent again
    /// (`to_peer`), and the client's the target had not, which the client says it sends again
    /// (`from_peer`).
    fn replayed(&self, _replayed: Replayed) {}
}

/// Slack over `max_frame` for a whole client message: the type byte and a little more, as
/// clients count frame sizes differently.
const MESSAGE_SLACK: usize = 16;

/// Runs a session that is not resumable to its end and returns why it ended; the close frame
/// has been sent (a client that is not reading gets `CLOSE_WAIT` for it), and the session ends
/// at most `2 × CLOSE_WAIT` after its reason, whatever its peers do.
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
    let mut b = Bridge::new(target, cfg, None);
    let never = CancellationToken::new();
    let end = b
        .run_leg(
            client,
            Leg::First { greeting: None },
            obs,
            &shutdown,
            &never,
        )
        .await;
    end.reason
}

/// How a leg ended.
#[derive(Debug)]
pub struct LegEnd {
    /// Why: the session's close reason when it is over; the leg's when it was lost.
    pub reason: CloseReason,
    /// Only the leg ended (resumable sessions): its client may resume the session.
    pub lost: bool,
}

/// One session's target connection and replay state, across its legs.
pub struct Bridge<T> {
    session: Session<ReadHalf<T>, WriteHalf<T>>,
    config: Config,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Bridge<T> {
    /// `resume`: the session is resumable, on these terms; `None`: it is not, and its first
    /// leg is its only one.
    pub fn new(target: T, cfg: &BridgeConfig, resume: Option<ResumeConfig>) -> Self {
        let (from_target, to_target) = tokio::io::split(target);
        let mut config = tunnel_config(cfg);
        config.resume = resume;
        Bridge {
            session: Session::new(from_target, to_target, &config),
            config,
        }
    }

    /// Runs one leg over `client` until the session ends (`shutdown`: for good, 1001) or the
    /// leg is lost (`takeover`: another connection resumed the session).
    pub async fn run_leg<C>(
        &mut self,
        client: C,
        leg: Leg,
        obs: &dyn Observer,
        shutdown: &CancellationToken,
        takeover: &CancellationToken,
    ) -> LegEnd
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let ended = self
            .session
            .run_leg(
                client,
                BytesMut::new(),
                leg,
                &self.config,
                &self.reports(obs),
                shutdown.cancelled(),
                takeover.cancelled(),
            )
            .await;
        LegEnd {
            reason: CloseReason::from(&ended.reason),
            lost: ended.lost,
        }
    }

    /// When the session's own limits (`--max-session-age`, `--idle-timeout`) end it, and
    /// why: a parked session waits no longer, whatever its resume window.
    pub fn limit(&self) -> Option<(tokio::time::Instant, CloseReason)> {
        let (at, why) = self.session.limit()?;
        Some((at, CloseReason::from(&why)))
    }

    /// Writes to the target what the last leg left queued for it (while parked). Cancel-safe.
    pub async fn flush_target(&mut self) -> std::io::Result<()> {
        self.session.flush_local().await
    }

    /// Ends the session for good after a lost leg: the target connection is flushed and shut
    /// down, within `2 × CLOSE_WAIT`.
    pub async fn close(self, obs: &dyn Observer) {
        let reports = self.reports(obs);
        self.session.close(&reports).await;
    }

    fn reports<'a>(&self, obs: &'a dyn Observer) -> Reports<'a> {
        Reports {
            obs,
            resumable: self.config.resume.is_some(),
        }
    }
}

fn tunnel_config(cfg: &BridgeConfig) -> Config {
    Config {
        role: Role::Server,
        framing: Some(cfg.framing),
        max_frame: cfg.max_frame,
        max_message: (cfg.max_frame + MESSAGE_SLACK) as u64,
        peer_read_size: cfg.read_size,
        // One frame per target read: `max_frame` bytes at most.
        local_read_size: cfg.max_frame,
        ping_interval: cfg.ping_interval,
        max_missed_pongs: Some(cfg.max_missed_pongs),
        idle_timeout: cfg.idle_timeout,
        max_age: cfg.max_age,
        resume: None,
    }
}

/// The engine's reports, passed to the session's observer; its close frames, from the
/// sidecar's close reasons.
struct Reports<'a> {
    obs: &'a dyn Observer,
    /// The session is resumable: its close frames say whether the client may resume.
    resumable: bool,
}

impl Hooks for Reports<'_> {
    fn peer_to_local(&self, bytes: u64) {
        self.obs.up(bytes);
    }
    fn local_to_peer(&self, bytes: u64) {
        self.obs.down(bytes);
    }
    fn latency_ms(&self, ms: u64) {
        self.obs.latency_ms(ms);
    }
    fn close_frame(&self, why: &Reason) -> Option<CloseFrame> {
        let reason = CloseReason::from(why);
        if self.resumable {
            reason.resumable_close_frame()
        } else {
            reason.close_frame()
        }
    }
    fn replayed(&self, replayed: Replayed) {
        self.obs.replayed(replayed);
    }
}

#[cfg(test)]
mod tests {
    //! The bridge as the sidecar runs it: settings, observer and close reasons wired to the
    //! engine (whose own behaviour is tested in `wsgate-tunnel`). The peer is tungstenite's
    //! client (an independent RFC 6455 implementation) over `tokio::io::duplex`, or raw bytes
    //! where a test needs what a library would not send.
    use super::*;
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;
    use wsgate_proto::framing::FrameError;
    use wsgate_proto::wsframe::{self, Opcode};

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
    async fn bad_frames_close_with_a_reason() {
        struct Case {
            frame: Vec<u8>,
            want: CloseReason,
        }
        let cases = [
            Case {
                frame: vec![7u8, 1],
                want: CloseReason::Frame(FrameError::UnknownType(7)),
            },
            Case {
                frame: vec![1u8, 0],
                want: CloseReason::Frame(FrameError::BadPing(2)),
            },
        ];
        for Case { frame, want } in cases {
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
    async fn rfc_6455_violations_close_1002_and_oversized_1009() {
        struct Case {
            what: &'static str,
            bytes: Vec<u8>,
            code: u16,
            label: &'static str,
        }
        let unmasked = |b0: u8, p: &[u8]| {
            let mut f = vec![b0, p.len() as u8];
            f.extend_from_slice(p);
            f
        };
        let mut big = vec![0x82, 0x80 | 126];
        big.extend_from_slice(&1100u16.to_be_bytes());
        let protocol_error = |what, bytes| Case {
            what,
            bytes,
            code: 1002,
            label: "protocol_error",
        };
        let cases = [
            protocol_error("unmasked", unmasked(0x82, b"x")),
            protocol_error("rsv1", raw_frame(0xC2, b"x")),
            protocol_error("opcode 3", raw_frame(0x83, b"x")),
            protocol_error("stray continuation", raw_frame(0x80, b"x")),
            protocol_error(
                "binary inside a message",
                [raw_frame(0x02, b"x"), raw_frame(0x82, b"y")].concat(),
            ),
            protocol_error("fragmented ping", raw_frame(0x09, b"")),
            Case {
                what: "oversized, refused from its header",
                bytes: big,
                code: 1009,
                label: "frame_too_big",
            },
        ];
        for Case {
            what,
            bytes,
            code,
            label,
        } in cases
        {
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
