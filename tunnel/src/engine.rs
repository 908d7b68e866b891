//! The engine: one WebSocket (the peer) ↔ one local byte stream, both directions in one loop
//! whose only `.await` is its `select!`. Every pending read and write is an arm of it, beside
//! the timers (keepalive, idle, age, linger) and the shutdown future, so a peer or local side
//! that stops reading stalls only its own arm; the session still ends on time, with one
//! [`Reason`].
//!
//! Back-pressure instead of queues: nothing more is read from the peer until the session bytes
//! of the last read are written to the local side (and while the peer's queue of replies is
//! full), and nothing more from the local side until the frames queued for the peer are out.
//!
//! With resumption on, a [`Session`] (the local side, the timers and the replay buffer) outlives
//! its connections: [`Session::run_leg`] runs one leg, and a leg that is lost rather than closed
//! leaves the local side as it was, for the next leg to go on from (see `docs/resume.md`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, WriteHalf};
use tokio::time::Instant;
use wsgate_proto::framing::{latency_frame, ping_frame, Framing};
use wsgate_proto::wsframe::Opcode;

use crate::inbound::{Event, FromPeer, Piece, Stop};
use crate::outbound::Framer;
use crate::reason::{CloseFrame, Reason, Violation};
use crate::replay::Replay;
use crate::writer::{Writer, MAX_SLICES};

/// How long the frames still queued at the end (the close frame last) and the session bytes
/// still on their way to the local side may take; shutting the connections down is bounded by
/// the same again, so a session ends at most `2 × CLOSE_WAIT` after its reason.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long the client role waits for the server's close after its own (sent when the local
/// input ended).
pub const LINGER: Duration = Duration::from_secs(2);

/// Unanswered SkyPilot pings remembered at most (SkyPilot's client uses the same bound).
const MAX_PENDING_PINGS: usize = 100;

/// With resumption on, received bytes are acknowledged once a quarter of the peer's replay
/// buffer (as it stated in the handshake) is unacknowledged, within these bounds...
/// Acknowledging a buffer's quarter frees the peer's buffer in steps while its later bytes
/// travel; the fewer acknowledgements, the less a bulk transfer pays for them (each is a write
/// that wakes the peer: at one per 256 KiB the sidecar took ~8 % more CPU per GiB pushed than
/// without resumption, at one per 2 MiB the same). Below 64 KiB one would come for every read or
/// two of a bulk transfer; above 2 MiB there is nothing left to save.
const ACK_BOUNDS: std::ops::RangeInclusive<u64> = (64 << 10)..=(2 << 20);

/// ... or once this many are, when the peer did not state its buffer: what every peer got
/// before buffers were stated, unchanged for one that states none.
const ACK_UNSTATED: u64 = 256 << 10;

/// How long a resumable server-role session whose target closed waits for the client to
/// acknowledge the target's last bytes before it takes the leg for lost (and parks) rather
/// than closing: a close on a leg that silently died would lose those bytes (a command's last
/// output, its exit status).
const ACK_WAIT: Duration = Duration::from_secs(10);

/// ... or this long after the first unacknowledged one: few enough acknowledgements not to cost
/// a bulk transfer anything measurable, soon enough that an interactive session's replay
/// buffer holds a few keystrokes.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Which end of the WebSocket this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that accepted the connection (the sidecar). The peer's frames must be masked and
    /// are unmasked in place; ours go unmasked; typed control messages are SkyPilot's client's
    /// (pings echoed, latency reports passed to [`Hooks::latency_ms`]); text frames are refused;
    /// the local input's end (the target closing) ends the session; the local output (the
    /// target connection) is shut down at the end.
    Server,
    /// The end that opened it (`wsgate proxy`). Every frame it sends is masked with a fresh
    /// key; the peer's must not be; text messages are ignored; the framing may be learnt from
    /// the server's first message; with typed framing its keepalive pings are SkyPilot's (their
    /// round trip goes to [`Hooks::latency_ms`] and back to the server); the local input's end
    /// (stdin closing) sends our close and waits up to [`LINGER`] for the server's; the local
    /// output (the process's stdout) is flushed at the end, never shut down.
    Client,
}

/// One session's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which end this is: who masks, and what the local input's end and typed control
    /// messages mean.
    pub role: Role,
    /// Fixed by the handshake (the sidecar reads the client's version), or `None` for a client
    /// that learns it from the server's first message (a server role without one uses raw).
    pub framing: Option<Framing>,
    /// The largest payload per frame sent: a local read larger than this goes as several
    /// frames (plus the type byte each, typed).
    pub max_frame: usize,
    /// The largest frame, or message gathered whole, accepted from the peer; larger ones are
    /// refused from their header, before any of their payload is read.
    pub max_message: u64,
    /// Bytes asked for per read from the peer: larger means fewer syscalls on a busy session;
    /// only the pages data arrives in are touched, so an idle session pays little.
    pub peer_read_size: usize,
    /// Bytes asked for per read from the local input.
    pub local_read_size: usize,
    /// Keepalive pings; `None` (or zero) sends none.
    pub ping_interval: Option<Duration>,
    /// Pings without a pong (or ping intervals in which the peer took none of the frames
    /// waiting for it) before the session ends; `None`: never.
    pub max_missed_pongs: Option<u32>,
    /// End after this long with no session bytes either way.
    pub idle_timeout: Option<Duration>,
    /// End after this long regardless.
    pub max_age: Option<Duration>,
    /// Resumption (negotiated in the handshake): `None` is a session that ends with its
    /// connection.
    pub resume: Option<ResumeConfig>,
}

/// Resumption's settings.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// Sent bytes kept until the peer acknowledges them, at most: at the bound the local side
    /// is not read until acknowledgements come (one local read may go over it).
    pub replay_buffer: usize,
    /// The peer's replay buffer, if it stated it in the handshake: how often its bytes are
    /// acknowledged (see [`ack_every`]).
    pub peer_replay_buffer: Option<u64>,
}

/// How many received bytes go unacknowledged at most (unless [`ACK_DELAY`] passes first), for
/// a peer that keeps `peer_replay_buffer` bytes (`None`: it did not say).
pub(crate) fn ack_every(peer_replay_buffer: Option<u64>) -> u64 {
    peer_replay_buffer.map_or(ACK_UNSTATED, |b| {
        (b / 4).clamp(*ACK_BOUNDS.start(), *ACK_BOUNDS.end())
    })
}

/// Which connection of a session a leg is.
#[derive(Debug, Clone)]
pub enum Leg {
    /// The first; `greeting` is a control message sent before anything else (the sidecar's
    /// `session <id> <secret>`).
    First { greeting: Option<String> },
    /// A resumed one: `resume <received> <sent>` goes first, and no new data goes until the
    /// peer's `resume` came and what it lacks is replayed.
    Resumed,
}

/// What a resume exchange sends again, each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Our bytes the peer had not received, sent again.
    pub to_peer: u64,
    /// The peer's bytes we had not received, which it sends again: what its `resume` says it
    /// sent, less what we received.
    pub from_peer: u64,
}

/// What the engine reports to, and asks of, the end that runs it.
pub trait Hooks: Send + Sync {
    /// Session bytes from the peer written to the local side.
    fn peer_to_local(&self, _bytes: u64) {}
    /// Session bytes read from the local side and queued for the peer.
    fn local_to_peer(&self, _bytes: u64) {}
    /// A measured round trip, in milliseconds (SkyPilot's latency frames and pings).
    fn latency_ms(&self, _ms: u64) {}
    /// The close frame to send for this reason (`None`: none). Asked once per leg: when it
    /// ends, or (client role) when the local input ends, with [`Reason::LocalClosed`].
    fn close_frame(&self, why: &Reason) -> Option<CloseFrame>;
    /// A control message the engine does not handle itself (it handles `ack` and `resume`):
    /// the client's `session <id> <secret>`. `false`: unknown, a protocol violation.
    fn control(&self, _msg: &str) -> bool {
        false
    }
    /// A resumed leg's exchange: what each side sends again.
    fn replayed(&self, _replayed: Replayed) {}
}

/// How a session ended.
#[derive(Debug)]
pub struct Ended {
    /// The one reason, for the audit (the sidecar) or the user's error (the client).
    pub reason: Reason,
    /// The framing by then; `None` if the peer's first message never came.
    pub framing: Option<Framing>,
    /// The local input had ended first (client role: our close was sent then).
    pub input_ended: bool,
    /// Only the leg ended, not the session: resumption is on and the connection broke (no close
    /// handshake, the keepalive, the peer's 1001, or [`Reason::Superseded`]). The local side is
    /// as it was: run another leg, or [`Session::close`] it.
    pub lost: bool,
}

/// Runs a session to its end. `peer` is the WebSocket's connection after the handshake, and
/// `read_ahead` the bytes of it the handshake read past its end; `input` and `output` are the
/// local side. The session ends when `shutdown` resolves, if nothing ends it first; the close
/// frame [`Hooks::close_frame`] picks is sent, within [`CLOSE_WAIT`].
pub async fn run<P, I, O, S>(
    peer: P,
    read_ahead: BytesMut,
    input: I,
    output: O,
    config: &Config,
    hooks: &dyn Hooks,
    shutdown: S,
) -> Ended
where
    P: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    S: Future<Output = ()>,
{
    let mut session = Session::new(input, output, config);
    let first = Leg::First { greeting: None };
    let ended = session
        .run_leg(
            peer,
            read_ahead,
            first,
            config,
            hooks,
            shutdown,
            std::future::pending(),
        )
        .await;
    if ended.lost {
        session.close(hooks).await;
    }
    ended
}

/// One session's local side, its limits' clocks and (resumption on) its replay buffer: what
/// outlives a connection.
pub struct Session<I, O> {
    role: Role,
    input: I,
    /// The local input is read into this, behind room for a frame header.
    input_buf: BytesMut,
    /// Frames what goes to the peer (masked in the client role); its room is `input_buf`'s.
    framer: Framer,
    /// Session bytes for the local side, ranges of the peer's read buffers.
    to_local: Writer<O>,
    /// Of `to_local`'s bytes, those already reported to [`Hooks::peer_to_local`].
    reported: u64,
    timers: Timers,
    /// The local input ended (client role): nothing more is read from it, and our close is
    /// out.
    input_ended: bool,
    /// Resumption on: what was sent and not acknowledged, and the counts.
    replay: Option<Replay>,
    /// The local input ended (server role, resumption on: the target closed) and the session
    /// ends once the peer has acknowledged every byte sent.
    local_eof: bool,
    /// Session bytes came from the peer. The client role reads its input only after: the
    /// server talks first (sshd's banner), so a client whose input is empty (`< /dev/null`, a
    /// probe) still gets the banner before its close, whether or not the framing was fixed in
    /// the handshake.
    peer_spoke: bool,
    /// The local side is finished (the session ended for good).
    closed: bool,
}

impl<I, O> Session<I, O>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    pub fn new(input: I, output: O, config: &Config) -> Self {
        let now = Instant::now();
        let idle = config.idle_timeout;
        Session {
            role: config.role,
            input,
            input_buf: BytesMut::new(),
            framer: Framer::new(config.role),
            to_local: Writer::new(output),
            reported: 0,
            timers: Timers {
                ping: None,
                ping_at: None,
                age_at: config.max_age.map(|m| now + m),
                idle,
                idle_at: idle.map(|i| now + i),
                last_activity: now,
                linger_at: None,
                ack_at: None,
            },
            input_ended: false,
            replay: config
                .resume
                .as_ref()
                .map(|r| Replay::new(r.replay_buffer, ack_every(r.peer_replay_buffer))),
            peer_spoke: config.role == Role::Server,
            local_eof: false,
            closed: false,
        }
    }

    /// The spare read buffers the session keeps.
    #[cfg(test)]
    pub(crate) fn spare_buffers(&self) -> usize {
        self.framer.spares()
    }

    /// Session bytes received from the peer, in all legs (resumption on; else 0).
    pub fn received(&self) -> u64 {
        self.replay.as_ref().map_or(0, Replay::received)
    }

    /// Session bytes sent to the peer, in all legs (resumption on; else 0).
    pub fn sent(&self) -> u64 {
        self.replay.as_ref().map_or(0, Replay::sent)
    }

    /// Runs one leg over `peer` (`read_ahead`: what the handshake read past its end) until the
    /// session ends or the leg is lost ([`Ended::lost`]). `shutdown` resolving ends the session
    /// for good; `takeover` resolving ends only this leg, as lost ([`Reason::Superseded`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn run_leg<P, S, T>(
        &mut self,
        peer: P,
        read_ahead: BytesMut,
        leg: Leg,
        config: &Config,
        hooks: &dyn Hooks,
        shutdown: S,
        takeover: T,
    ) -> Ended
    where
        P: AsyncRead + AsyncWrite + Unpin,
        S: Future<Output = ()>,
        T: Future<Output = ()>,
    {
        let (mut peer_rd, peer_wr) = tokio::io::split(peer);
        let framing = match (config.role, config.framing) {
            (Role::Server, None) => Some(Framing::Raw),
            (_, framing) => framing,
        };
        let now = Instant::now();
        let timers = &mut self.timers;
        timers.ping = config.ping_interval.filter(|p| !p.is_zero());
        timers.ping_at = timers.ping.map(|p| now + p);
        timers.linger_at = self.local_eof.then(|| now + ACK_WAIT);
        timers.ack_at = None;
        let control = self.replay.is_some();
        let mut t = Tunnel {
            config,
            hooks,
            from_peer: FromPeer::new(read_ahead, framing, control),
            to_peer: Writer::new(peer_wr),
            keepalive: Keepalive::default(),
            awaiting_resume: None,
            s: self,
        };
        match leg {
            Leg::First { greeting: Some(g) } => t.send_control(&g),
            Leg::First { greeting: None } => {}
            Leg::Resumed => {
                if let Some(r) = &mut t.s.replay {
                    let (received, sent) = (r.take_ack(), r.sent());
                    t.awaiting_resume = Some(received);
                    t.send_control(&format!("resume {received} {sent}"));
                }
            }
        }
        let reason = t.pump(&mut peer_rd, pin!(shutdown), pin!(takeover)).await;
        let lost = t.is_lost(&reason);
        t.finish(&reason, lost).await;
        // Waiting for the next leg, or ended: spare read buffers are not kept meanwhile.
        t.s.framer.release_spares();
        let framing = t.from_peer.framing;
        if !lost {
            self.closed = true;
        }
        Ended {
            reason,
            framing,
            input_ended: self.input_ended,
            lost,
        }
    }

    /// When the session's own limits end it, whatever its connections do, and which: the
    /// maximum age, or the idle timeout counted from the last session byte. A session whose
    /// leg was lost waits for the next one no longer than this (`None`: no limit set).
    pub fn limit(&self) -> Option<(Instant, Reason)> {
        let t = &self.timers;
        let age = t.age_at.map(|at| (at, Reason::MaxAge));
        let idle = t.idle.map(|i| (t.last_activity + i, Reason::IdleTimeout));
        [age, idle].into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// Reports the session bytes the local side took since the last report (and counts them
    /// as activity for the idle timeout).
    fn report_local(&mut self, hooks: &dyn Hooks) {
        let written = self.to_local.written();
        if written > self.reported {
            hooks.peer_to_local(written - self.reported);
            self.reported = written;
            self.timers.touch();
        }
    }

    /// Writes what is still queued for the local side (while no leg runs). Cancel-safe.
    pub async fn flush_local(&mut self) -> io::Result<()> {
        self.to_local.flush().await
    }

    /// Ends the session for good after a lost leg: what is queued for the local side is
    /// written and (server role) the local side shut down, each within [`CLOSE_WAIT`].
    pub async fn close(mut self, hooks: &dyn Hooks) {
        if self.closed {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.to_local.flush()).await;
        self.report_local(hooks);
        if self.role == Role::Server {
            let _ = tokio::time::timeout(CLOSE_WAIT, self.to_local.shutdown()).await;
        }
    }
}

struct Tunnel<'a, P, I, O> {
    config: &'a Config,
    /// Where bytes and latency are reported, and close frames chosen.
    hooks: &'a dyn Hooks,
    /// The peer's frames as they are read, and where their stream stands.
    from_peer: FromPeer,
    /// Whole frames for the peer, in order.
    to_peer: Writer<WriteHalf<P>>,
    keepalive: Keepalive,
    /// A resumed leg before the peer's `resume`: the count of the peer's bytes our own
    /// `resume` stated (what the peer sends again starts there). No new data goes out until
    /// the peer's missing bytes are queued.
    awaiting_resume: Option<u64>,
    /// What outlives the leg.
    s: &'a mut Session<I, O>,
}

/// Deadlines, each `None` when it does not apply; one sleep waits for the earliest.
struct Timers {
    /// The keepalive's interval, and when the next ping is due.
    ping: Option<Duration>,
    ping_at: Option<Instant>,
    /// When the session reaches its maximum age.
    age_at: Option<Instant>,
    idle: Option<Duration>,
    /// When the idle timeout is next checked (it ends the session if nothing moved since).
    idle_at: Option<Instant>,
    /// The last session byte either way (kept only with an idle timeout).
    last_activity: Instant,
    /// When the client role stops waiting for the server's close.
    linger_at: Option<Instant>,
    /// When received bytes are next acknowledged (resumption on).
    ack_at: Option<Instant>,
}

impl Timers {
    /// The earliest deadline, `spares` (the framer's) included.
    fn next(&self, spares: Option<Instant>) -> Option<Instant> {
        [
            self.ping_at,
            self.age_at,
            self.idle_at,
            self.linger_at,
            self.ack_at,
            spares,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn touch(&mut self) {
        if self.idle.is_some() {
            self.last_activity = Instant::now();
        }
    }
}

#[derive(Default)]
struct Keepalive {
    /// Pings not answered by a pong.
    missed: u32,
    /// Ping intervals in a row in which the peer took nothing of the frames waiting for it: a
    /// peer that does not read cannot answer pings, but it could send pongs blindly, so this
    /// counts on its own.
    stalled: u32,
    /// `to_peer`'s bytes written at the last ping.
    written_at_ping: u64,
    /// SkyPilot pings (client role, typed framing): the last id, and when each unanswered one
    /// was sent.
    next_id: u32,
    pending: HashMap<u32, Instant>,
}

impl<P, I, O> Tunnel<'_, P, I, O>
where
    P: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    /// Moves bytes both ways until something ends the session or the leg.
    async fn pump<R, S, T>(
        &mut self,
        peer: &mut R,
        mut shutdown: Pin<&mut S>,
        mut takeover: Pin<&mut T>,
    ) -> Reason
    where
        R: AsyncRead + Unpin,
        S: Future<Output = ()>,
        T: Future<Output = ()>,
    {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed = None;
        loop {
            self.report_local();
            // Frames already buffered are taken before anything more is read.
            let peer_side_free = self.s.to_local.is_idle() && self.to_peer.queued() < MAX_SLICES;
            if self.from_peer.want.is_none() && peer_side_free {
                if let Err(r) = self.take_frames() {
                    return r;
                }
                continue;
            }
            let read_peer = peer_side_free && self.from_peer.want.is_some();
            let want = if read_peer {
                self.from_peer.prepare(self.config.peer_read_size)
            } else {
                0
            };
            let read_input = !self.s.input_ended
                && !self.s.local_eof
                && self.s.peer_spoke
                && self.from_peer.framing.is_some()
                && !self.to_peer.is_closed()
                && self.to_peer.is_idle()
                && self.awaiting_resume.is_none()
                && !self.s.replay.as_ref().is_some_and(Replay::full);
            if read_input {
                self.s
                    .framer
                    .prepare(&mut self.s.input_buf, self.config.local_read_size);
            }
            let deadline = self.s.timers.next(self.s.framer.release_at());
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(at);
                }
                armed = deadline;
            }
            tokio::select! {
                () = shutdown.as_mut() => return Reason::Shutdown,
                () = takeover.as_mut() => return Reason::Superseded,
                () = sleep.as_mut(), if armed.is_some() => {
                    armed = None;
                    if let Err(r) = self.on_timers() {
                        return r;
                    }
                }
                r = self.to_peer.flush(), if !self.to_peer.is_idle() => {
                    if let Err(e) = r {
                        return Reason::PeerWriteFailed(e);
                    }
                }
                r = self.s.to_local.flush(), if !self.s.to_local.is_idle() => {
                    if let Err(e) = r {
                        return Reason::LocalWriteFailed(e);
                    }
                }
                r = read_chunk(peer, &mut self.from_peer.buf, want), if read_peer => match r {
                    Ok(0) => return Reason::PeerEof,
                    Ok(_) => self.from_peer.want = None,
                    Err(e) => return Reason::PeerReadFailed(e),
                },
                r = read_chunk(
                    &mut self.s.input,
                    &mut self.s.input_buf,
                    self.config.local_read_size,
                ), if read_input => {
                    if let Err(r) = self.on_input(r) {
                        return r;
                    }
                }
            }
        }
    }

    /// Takes the whole frames buffered: session bytes queued for the local side, replies for
    /// the peer, both tried at once.
    fn take_frames(&mut self) -> Result<(), Reason> {
        let (at, stop) = self
            .from_peer
            .scan(self.config.role, self.config.max_message);
        let taken = if at == 0 {
            Bytes::new()
        } else {
            self.from_peer.buf.split_to(at).freeze()
        };
        let mut got = 0;
        for piece in self.from_peer.pieces.drain(..) {
            let piece = match piece {
                Piece::Range(r) => taken.slice(r),
                Piece::Whole(b) => b,
            };
            got += piece.len();
            self.s.to_local.push(piece);
        }
        if got > 0 {
            self.s.peer_spoke = true;
            self.received(got);
        }
        let mut events = std::mem::take(&mut self.from_peer.events);
        let handled = events.drain(..).try_for_each(|e| self.on_event(e, &taken));
        self.from_peer.events = events;
        handled?;
        match stop {
            Stop::Need(n) => self.from_peer.want = Some(n),
            Stop::Full => {}
            Stop::End(r) => return Err(r),
        }
        if !self.s.to_local.is_idle() {
            self.s
                .to_local
                .try_flush()
                .map_err(Reason::LocalWriteFailed)?;
        }
        if !self.to_peer.is_idle() {
            self.to_peer.try_flush().map_err(Reason::PeerWriteFailed)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event, taken: &Bytes) -> Result<(), Reason> {
        let frame = match event {
            Event::Ping(payload) => self.s.framer.control(Opcode::Pong, &taken[payload]),
            Event::Echo(ping) => self.s.framer.control(Opcode::Binary, &ping),
            Event::Pong => {
                self.keepalive.missed = 0;
                return Ok(());
            }
            Event::Latency(ms) => {
                self.hooks.latency_ms(ms);
                return Ok(());
            }
            Event::Answer(id) => {
                let Some(sent) = self.keepalive.pending.remove(&id) else {
                    return Ok(());
                };
                self.keepalive.missed = 0;
                let ms = sent.elapsed().as_millis() as u64;
                self.hooks.latency_ms(ms);
                self.s.framer.control(Opcode::Binary, &latency_frame(ms))
            }
            Event::Control(msg) => return self.on_control(&msg),
        };
        self.to_peer.push(frame.map_err(Reason::PeerWriteFailed)?);
        Ok(())
    }

    /// A local read: its bytes framed for the peer, or its end.
    fn on_input(&mut self, read: io::Result<usize>) -> Result<(), Reason> {
        let n = match (read, self.config.role) {
            // The target closed: with resumption on, its last bytes must reach the client
            // first, whatever happens to this leg meanwhile.
            (Ok(0), Role::Server) if self.s.replay.is_some() => {
                self.s.local_eof = true;
                self.s.timers.linger_at = Some(Instant::now() + ACK_WAIT);
                return self.end_if_acknowledged();
            }
            (Ok(0), Role::Server) => return Err(Reason::LocalClosed),
            (Err(e), Role::Server) => return Err(Reason::LocalReadFailed(e)),
            // ssh closing our stdin is its session ending: our close goes out, and the
            // server's is waited for, briefly.
            (Ok(0) | Err(_), Role::Client) => {
                self.s.input_ended = true;
                self.send_close(&Reason::LocalClosed);
                self.s.timers.linger_at = Some(Instant::now() + LINGER);
                return Ok(());
            }
            (Ok(n), _) => n,
        };
        let framing = self.from_peer.framing.unwrap_or(Framing::Raw);
        let s = &mut *self.s;
        s.framer
            .data(
                &mut s.input_buf,
                framing,
                self.config.max_frame,
                &mut self.to_peer,
                s.replay.as_mut(),
            )
            .map_err(Reason::PeerWriteFailed)?;
        self.hooks.local_to_peer(n as u64);
        self.s.timers.touch();
        self.to_peer.try_flush().map_err(Reason::PeerWriteFailed)
    }

    fn on_timers(&mut self) -> Result<(), Reason> {
        let now = Instant::now();
        if self.s.timers.ack_at.is_some_and(|at| now >= at) {
            self.send_ack();
        }
        if self.s.framer.release_at().is_some_and(|at| now >= at) {
            self.s.framer.release_spares();
        }
        let t = &mut self.s.timers;
        if t.age_at.is_some_and(|at| now >= at) {
            return Err(Reason::MaxAge);
        }
        if let Some(idle) = t.idle {
            let until = t.last_activity + idle;
            if now >= until {
                return Err(Reason::IdleTimeout);
            }
            t.idle_at = Some(until);
        }
        if t.linger_at.is_some_and(|at| now >= at) {
            // A target's last bytes unacknowledged in time: the leg is taken for lost.
            return Err(if self.s.local_eof {
                Reason::KeepaliveTimeout
            } else {
                Reason::Lingered
            });
        }
        if let (Some(at), Some(every)) = (t.ping_at, t.ping) {
            if now >= at {
                t.ping_at = Some(now + every);
                self.keepalive(now)?;
            }
        }
        Ok(())
    }

    /// A ping, unless the peer is taking none of the frames already waiting for it: no ping is
    /// queued behind those, and such intervals count towards the limit on their own.
    fn keepalive(&mut self, now: Instant) -> Result<(), Reason> {
        let framing = match self.from_peer.framing {
            Some(f) if !self.to_peer.is_closed() => f,
            _ => return Ok(()),
        };
        let limit = self.config.max_missed_pongs;
        let ka = &mut self.keepalive;
        if !self.to_peer.is_idle() && self.to_peer.written() == ka.written_at_ping {
            ka.stalled += 1;
            if limit.is_some_and(|m| ka.stalled > m) {
                return Err(Reason::KeepaliveTimeout);
            }
            return Ok(());
        }
        ka.stalled = 0;
        ka.written_at_ping = self.to_peer.written();
        if limit.is_some_and(|m| ka.missed >= m) {
            return Err(Reason::KeepaliveTimeout);
        }
        ka.missed = ka.missed.saturating_add(1);
        let ping = match (self.config.role, framing) {
            (Role::Client, Framing::Typed) => {
                ka.next_id = ka.next_id.wrapping_add(1);
                if ka.pending.len() >= MAX_PENDING_PINGS {
                    ka.pending.clear();
                }
                ka.pending.insert(ka.next_id, now);
                self.s
                    .framer
                    .control(Opcode::Binary, &ping_frame(ka.next_id))
            }
            _ => self.s.framer.control(Opcode::Ping, &[]),
        };
        self.to_peer.push(ping.map_err(Reason::PeerWriteFailed)?);
        Ok(())
    }

    /// Queues the close frame the hooks pick for `why`: the last frame sent.
    fn send_close(&mut self, why: &Reason) {
        if self.to_peer.is_closed() {
            return;
        }
        if let Some(c) = self.hooks.close_frame(why) {
            if let Ok(frame) = self.s.framer.close(c.code, &c.reason) {
                self.to_peer.push_close(frame);
            }
        }
    }

    /// Reports the session bytes the local side took since the last report.
    fn report_local(&mut self) {
        self.s.report_local(self.hooks);
    }

    /// Session bytes from the peer queued for the local side: acknowledged now if enough are
    /// unacknowledged, else soon.
    fn received(&mut self, bytes: usize) {
        let Some(r) = &mut self.s.replay else {
            return;
        };
        r.got(bytes);
        if r.ack_due() {
            self.send_ack();
        } else if self.s.timers.ack_at.is_none() {
            self.s.timers.ack_at = Some(Instant::now() + ACK_DELAY);
        }
    }

    /// The target closed and the peer has every byte: the session's end.
    fn end_if_acknowledged(&self) -> Result<(), Reason> {
        match &self.s.replay {
            Some(r) if self.s.local_eof && r.all_acknowledged() => Err(Reason::LocalClosed),
            _ => Ok(()),
        }
    }

    /// `ack <received>`, if anything is unacknowledged.
    fn send_ack(&mut self) {
        self.s.timers.ack_at = None;
        match &mut self.s.replay {
            Some(r) if r.unacknowledged() > 0 => {
                let n = r.take_ack();
                self.send_control(&format!("ack {n}"));
            }
            _ => {}
        }
    }

    /// A control message, as a text frame.
    fn send_control(&mut self, msg: &str) {
        if let Ok(frame) = self.s.framer.control(Opcode::Text, msg.as_bytes()) {
            self.to_peer.push(frame);
        }
    }

    /// A control message from the peer: `ack <n>` and `resume <n> <sent>` are the engine's;
    /// others go to the hooks.
    fn on_control(&mut self, msg: &[u8]) -> Result<(), Reason> {
        let bad = || Reason::from(Violation::Control(text_of(msg)));
        let msg = std::str::from_utf8(msg).map_err(|_| bad())?;
        let replay = self.s.replay.as_mut().ok_or_else(bad)?;
        match (msg.split_once(' '), self.awaiting_resume) {
            (Some(("ack", n)), None) => {
                replay.ack(count(n).ok_or_else(bad)?)?;
                self.spares_if_caught_up();
                self.end_if_acknowledged()?;
            }
            (Some(("resume", counts)), Some(stated)) => {
                let (n, peer_sent) = counts.split_once(' ').ok_or_else(bad)?;
                let (n, peer_sent) = (count(n).ok_or_else(bad)?, count(peer_sent).ok_or_else(bad)?);
                // From the count our `resume` stated, not `received` now: bytes that came
                // behind the peer's `resume` in the same read may be counted already.
                let from_peer = resent_by_peer(stated, peer_sent)?;
                let missing = replay.replay_from(n)?;
                // The peer may have had everything: then no acknowledgement is to come.
                self.spares_if_caught_up();
                let replayed: usize = missing.iter().map(Bytes::len).sum();
                let max = self.config.max_frame.max(1);
                for chunk in missing {
                    for at in (0..chunk.len()).step_by(max) {
                        let piece = &chunk[at..chunk.len().min(at + max)];
                        let frame = self
                            .s
                            .framer
                            .control(Opcode::Binary, piece)
                            .map_err(Reason::PeerWriteFailed)?;
                        self.to_peer.push(frame);
                    }
                }
                self.awaiting_resume = None;
                self.hooks.replayed(Replayed {
                    to_peer: replayed as u64,
                    from_peer,
                });
                self.end_if_acknowledged()?;
            }
            _ if self.hooks.control(msg) => {}
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Everything sent is acknowledged: the spare read buffers go if nothing is read for a while.
    fn spares_if_caught_up(&mut self) {
        if self.s.replay.as_ref().is_some_and(Replay::all_acknowledged) {
            self.s.framer.caught_up(Instant::now());
        }
    }

    /// The leg ended but the session goes on: resumption is on, nothing deliberate ended it
    /// (ssh's stdin closing, the target closing, a limit, a close frame other than 1001), and
    /// the connection is what failed.
    fn is_lost(&self, reason: &Reason) -> bool {
        self.s.replay.is_some()
            && !self.s.input_ended
            && match reason {
                Reason::PeerEof
                | Reason::PeerReadFailed(_)
                | Reason::PeerWriteFailed(_)
                | Reason::KeepaliveTimeout
                | Reason::Superseded => true,
                Reason::PeerClosed(Some(f)) => f.code == 1001,
                _ => false,
            }
    }

    /// After the end: what is queued goes out (the close frame last, if any), then both
    /// connections are shut down; each step bounded by [`CLOSE_WAIT`], so a peer or local side
    /// that is not reading delays the end by at most twice that.
    /// A lost leg (`lost`) finishes the peer's side only: the local side stays as it is.
    async fn finish(&mut self, reason: &Reason, lost: bool) {
        let peer_gone = reason.peer_is_gone();
        if !peer_gone {
            self.send_close(reason);
        }
        let local_ok = !matches!(reason, Reason::LocalWriteFailed(_));
        let (to_peer, to_local) = (&mut self.to_peer, &mut self.s.to_local);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            tokio::join!(
                async {
                    if !peer_gone {
                        let _ = to_peer.flush().await;
                    }
                },
                async {
                    if local_ok {
                        let _ = to_local.flush().await;
                    }
                },
            )
        })
        .await;
        self.report_local();
        // Shutting a socket down does not wait for the peer, but a generic writer might.
        let shut_local = self.config.role == Role::Server && !lost;
        let (to_peer, to_local) = (&mut self.to_peer, &mut self.s.to_local);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = to_peer.shutdown().await;
            if shut_local {
                let _ = to_local.shutdown().await;
            }
        })
        .await;
    }
}

/// The peer, resuming, says it sent `peer_sent` bytes in all, and we stated that we had
/// received `stated`: how many it sends again. Fewer than we received cannot be.
fn resent_by_peer(stated: u64, peer_sent: u64) -> Result<u64, Violation> {
    peer_sent.checked_sub(stated).ok_or_else(|| {
        Violation::Control(format!(
            "resume: {peer_sent} bytes sent, fewer than the {stated} received"
        ))
    })
}

/// A count in a control message: decimal digits only.
fn count(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A control message as shown in an error: escaped, and only its first word (a `session`
/// message's secret is never shown).
fn text_of(msg: &[u8]) -> String {
    let word = msg.split(|&b| b == b' ').next().unwrap_or_default();
    wsgate_proto::text::escape(&String::from_utf8_lossy(word)).into_owned()
}

/// Appends at most `max` bytes from `rd` to `buf` (cancel-safe: nothing is read if dropped).
async fn read_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    rd.read_buf(&mut buf.limit(max)).await
}
