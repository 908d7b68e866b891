//! The engine: one WebSocket (the peer) ↔ one local byte stream, both directions in one loop
//! whose only `.await` is its `select!`. Every pending read and write is an arm of it, beside
//! the timers (keepalive, idle, age, linger) and the shutdown future, so a peer or local side
//! that stops reading stalls only its own arm; the session still ends on time, with one
//! [`Reason`].
//!
//! Back-pressure instead of queues: nothing more is read from the peer until the session bytes
//! of the last read are written to the local side (and while the peer's queue of replies is
//! full), and nothing more from the local side until the frames queued for the peer are out.

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
use crate::reason::{CloseFrame, Reason};
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
}

/// What the engine reports to, and asks of, the end that runs it.
pub trait Hooks: Send + Sync {
    /// Session bytes from the peer written to the local side.
    fn peer_to_local(&self, _bytes: u64) {}
    /// Session bytes read from the local side and queued for the peer.
    fn local_to_peer(&self, _bytes: u64) {}
    /// A measured round trip, in milliseconds (SkyPilot's latency frames and pings).
    fn latency_ms(&self, _ms: u64) {}
    /// The close frame to send for this reason (`None`: none). Asked once per session: when it
    /// ends, or (client role) when the local input ends, with [`Reason::LocalClosed`].
    fn close_frame(&self, why: &Reason) -> Option<CloseFrame>;
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
}

/// Runs a session to its end. `peer` is the WebSocket's connection after the handshake, and
/// `read_ahead` the bytes of it the handshake read past its end; `input` and `output` are the
/// local side. The session ends when `shutdown` resolves, if nothing ends it first; the close
/// frame [`Hooks::close_frame`] picks is sent, within [`CLOSE_WAIT`].
pub async fn run<P, I, O, S>(
    peer: P,
    read_ahead: BytesMut,
    mut input: I,
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
    let (mut peer_rd, peer_wr) = tokio::io::split(peer);
    let framing = match (config.role, config.framing) {
        (Role::Server, None) => Some(Framing::Raw),
        (_, framing) => framing,
    };
    let now = Instant::now();
    let idle = config.idle_timeout;
    let mut t = Tunnel {
        config,
        hooks,
        from_peer: FromPeer::new(read_ahead, framing),
        input: BytesMut::new(),
        framer: Framer::new(config.role),
        to_peer: Writer::new(peer_wr),
        to_local: Writer::new(output),
        reported: 0,
        timers: Timers {
            ping: config.ping_interval.filter(|p| !p.is_zero()),
            ping_at: None,
            age_at: config.max_age.map(|m| now + m),
            idle,
            idle_at: idle.map(|i| now + i),
            last_activity: now,
            linger_at: None,
        },
        keepalive: Keepalive::default(),
        input_ended: false,
    };
    t.timers.ping_at = t.timers.ping.map(|p| now + p);
    let reason = t.pump(&mut peer_rd, &mut input, pin!(shutdown)).await;
    t.finish(&reason).await;
    Ended {
        reason,
        framing: t.from_peer.framing,
        input_ended: t.input_ended,
    }
}

struct Tunnel<'a, P, O> {
    config: &'a Config,
    /// Where bytes and latency are reported, and close frames chosen.
    hooks: &'a dyn Hooks,
    /// The peer's frames as they are read, and where their stream stands.
    from_peer: FromPeer,
    /// The local input is read into this, behind room for a frame header.
    input: BytesMut,
    /// Frames what goes to the peer (masked in the client role).
    framer: Framer,
    /// Whole frames for the peer, in order.
    to_peer: Writer<WriteHalf<P>>,
    /// Session bytes for the local side, ranges of the peer's read buffer.
    to_local: Writer<O>,
    /// Of `to_local`'s bytes, those already reported to [`Hooks::peer_to_local`].
    reported: u64,
    timers: Timers,
    keepalive: Keepalive,
    /// The local input ended (client role): nothing more is read from it, and our close is
    /// out.
    input_ended: bool,
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
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        [self.ping_at, self.age_at, self.idle_at, self.linger_at]
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

impl<P, O> Tunnel<'_, P, O>
where
    P: AsyncRead + AsyncWrite + Unpin,
    O: AsyncWrite + Unpin,
{
    /// Moves bytes both ways until something ends the session.
    async fn pump<R, I, S>(
        &mut self,
        peer: &mut R,
        input: &mut I,
        mut shutdown: Pin<&mut S>,
    ) -> Reason
    where
        R: AsyncRead + Unpin,
        I: AsyncRead + Unpin,
        S: Future<Output = ()>,
    {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed = None;
        loop {
            self.report_local();
            // Frames already buffered are taken before anything more is read.
            let peer_side_free = self.to_local.is_idle() && self.to_peer.queued() < MAX_SLICES;
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
            let read_input = !self.input_ended
                && self.from_peer.framing.is_some()
                && !self.to_peer.is_closed()
                && self.to_peer.is_idle();
            if read_input {
                self.framer
                    .prepare(&mut self.input, self.config.local_read_size);
            }
            let deadline = self.timers.next();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(at);
                }
                armed = deadline;
            }
            tokio::select! {
                () = shutdown.as_mut() => return Reason::Shutdown,
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
                r = self.to_local.flush(), if !self.to_local.is_idle() => {
                    if let Err(e) = r {
                        return Reason::LocalWriteFailed(e);
                    }
                }
                r = read_chunk(peer, &mut self.from_peer.buf, want), if read_peer => match r {
                    Ok(0) => return Reason::PeerEof,
                    Ok(_) => self.from_peer.want = None,
                    Err(e) => return Reason::PeerReadFailed(e),
                },
                r = read_chunk(input, &mut self.input, self.config.local_read_size), if read_input => {
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
        for piece in self.from_peer.pieces.drain(..) {
            self.to_local.push(match piece {
                Piece::Range(r) => taken.slice(r),
                Piece::Whole(b) => b,
            });
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
        if !self.to_local.is_idle() {
            self.to_local
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
            Event::Ping(payload) => self.framer.control(Opcode::Pong, &taken[payload]),
            Event::Echo(ping) => self.framer.control(Opcode::Binary, &ping),
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
                self.framer.control(Opcode::Binary, &latency_frame(ms))
            }
        };
        self.to_peer.push(frame.map_err(Reason::PeerWriteFailed)?);
        Ok(())
    }

    /// A local read: its bytes framed for the peer, or its end.
    fn on_input(&mut self, read: io::Result<usize>) -> Result<(), Reason> {
        let n = match (read, self.config.role) {
            (Ok(0), Role::Server) => return Err(Reason::LocalClosed),
            (Err(e), Role::Server) => return Err(Reason::LocalReadFailed(e)),
            // ssh closing our stdin is its session ending: our close goes out, and the
            // server's is waited for, briefly.
            (Ok(0) | Err(_), Role::Client) => {
                self.input_ended = true;
                self.send_close(&Reason::LocalClosed);
                self.timers.linger_at = Some(Instant::now() + LINGER);
                return Ok(());
            }
            (Ok(n), _) => n,
        };
        let framing = self.from_peer.framing.unwrap_or(Framing::Raw);
        self.framer
            .data(
                &mut self.input,
                framing,
                self.config.max_frame,
                &mut self.to_peer,
            )
            .map_err(Reason::PeerWriteFailed)?;
        self.hooks.local_to_peer(n as u64);
        self.timers.touch();
        self.to_peer.try_flush().map_err(Reason::PeerWriteFailed)
    }

    fn on_timers(&mut self) -> Result<(), Reason> {
        let now = Instant::now();
        let t = &mut self.timers;
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
            return Err(Reason::Lingered);
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
                self.framer.control(Opcode::Binary, &ping_frame(ka.next_id))
            }
            _ => self.framer.control(Opcode::Ping, &[]),
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
            if let Ok(frame) = self.framer.close(c.code, &c.reason) {
                self.to_peer.push_close(frame);
            }
        }
    }

    /// Reports the session bytes the local side took since the last report.
    fn report_local(&mut self) {
        let written = self.to_local.written();
        if written > self.reported {
            self.hooks.peer_to_local(written - self.reported);
            self.reported = written;
            self.timers.touch();
        }
    }

    /// After the end: what is queued goes out (the close frame last, if any), then both
    /// connections are shut down; each step bounded by [`CLOSE_WAIT`], so a peer or local side
    /// that is not reading delays the end by at most twice that.
    async fn finish(&mut self, reason: &Reason) {
        let peer_gone = reason.peer_is_gone();
        if !peer_gone {
            self.send_close(reason);
        }
        let local_ok = !matches!(reason, Reason::LocalWriteFailed(_));
        let (to_peer, to_local) = (&mut self.to_peer, &mut self.to_local);
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
        let shut_local = self.config.role == Role::Server;
        let (to_peer, to_local) = (&mut self.to_peer, &mut self.to_local);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = to_peer.shutdown().await;
            if shut_local {
                let _ = to_local.shutdown().await;
            }
        })
        .await;
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
