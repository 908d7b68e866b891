//! Peer → local: the complete frames in the read buffer taken where they lie. The server role
//! unmasks in place; session bytes are handed on as ranges of the buffer (written with one
//! `writev` for all of them); a data frame larger than a read goes on as its payload arrives
//! (neither gathered nor moved to the buffer's front); fragments, typed control messages and a
//! client's first message (which tells it the framing) are sorted out. No I/O.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use wsgate_proto::framing::{decode, decode_from_server, Framing, FromServer, Inbound, TYPE_DATA};
use wsgate_proto::wsframe::{self, Header, Opcode, MAX_HEADER};

use crate::engine::Role;
use crate::reason::{CloseFrame, Reason, Violation};
use crate::writer::MAX_SLICES;

/// The read side of the peer's connection: its buffer and where the stream of frames stands.
pub(crate) struct FromPeer {
    pub buf: BytesMut,
    /// `None`: whole frames may be buffered that were not taken yet (read nothing until they
    /// are); `Some(n)`: the frame under way needs the buffer to hold `n` bytes.
    pub want: Option<usize>,
    /// `None` until the peer's first message tells it (client role).
    pub framing: Option<Framing>,
    /// Resumption is on: text messages are control messages (`ack`, `resume`, `session`).
    control: bool,
    /// The message that continuation frames extend.
    msg: Message,
    /// A data frame being passed on as its payload arrives.
    streaming: Option<Streaming>,
    /// What one pass found, in order; kept to reuse their allocations.
    pub pieces: Vec<Piece>,
    pub events: Vec<Event>,
}

/// Session bytes for the local side.
pub(crate) enum Piece {
    /// Payload still in the read buffer (from where the pass started).
    Range(Range<usize>),
    /// A message that was gathered whole (a client's first).
    Whole(Bytes),
}

/// What a pass found besides session bytes, handled once the pass is over.
pub(crate) enum Event {
    /// A WebSocket ping: its payload (a range like [`Piece::Range`]) goes back in a pong.
    Ping(Range<usize>),
    /// A WebSocket pong.
    Pong,
    /// A SkyPilot ping from the client (server role): the whole frame goes back unchanged.
    Echo(Bytes),
    /// The client's measured round trip, in milliseconds (server role).
    Latency(u64),
    /// Our SkyPilot ping with this id came back (client role).
    Answer(u32),
    /// A control message (a text message, with resumption on).
    Control(Vec<u8>),
}

/// Why a pass over the buffer stopped.
pub(crate) enum Stop {
    /// The frame under way needs this many bytes from where it starts.
    Need(usize),
    /// As many payloads (or events) as one pass takes are gathered; more frames may be
    /// buffered.
    Full,
    /// The session ends.
    End(Reason),
}

/// The next frame in a buffer.
enum Next {
    /// A whole frame, unmasked in place; the payload's range.
    Frame(Header, Range<usize>),
    /// A data-carrying frame whose header and some (not all) of its payload are here, still
    /// masked with this key; its payload starts at this offset.
    Partial(Header, Option<[u8; 4]>, usize),
    /// Not enough for either: the buffer must hold this many bytes.
    Need(usize),
}

/// What decides how a data-carrying frame is taken.
#[derive(Clone, Copy)]
struct Kind {
    role: Role,
    framing: Option<Framing>,
    /// Text messages are control messages (resumption on).
    control: bool,
}

/// A data frame whose payload goes on as it arrives.
struct Streaming {
    mask: Option<[u8; 4]>,
    /// Payload bytes already past (where the mask's 4-byte cycle stands).
    done: usize,
    /// Payload bytes still to come.
    left: usize,
}

/// The message that continuation frames extend.
enum Message {
    Idle,
    /// A typed message whose fragments so far were empty: its type byte is still to come
    /// (RFC 6455 allows empty fragments).
    Untyped,
    /// Session bytes: every further fragment is data as it comes.
    Data,
    /// Gathered whole: a typed control message split over frames, or the first message of a
    /// client that does not know the framing yet.
    Gather(Vec<u8>),
    /// A text message the client role ignores.
    Skip,
    /// A control message (resumption on), gathered whole.
    Control(Vec<u8>),
}

/// What one data-carrying frame asks for.
enum Part {
    /// The payload after this many bytes (the type byte) is session data.
    Data(usize),
    /// A message complete with this frame, gathered whole.
    Whole(Vec<u8>),
    /// Kept until the message's last frame.
    Pending,
    /// Ignored (a text message, client role).
    Skip,
    /// A control message complete with this frame.
    Control(Vec<u8>),
    /// Not session data and not all here: taken once it is whole.
    Wait,
}

impl FromPeer {
    pub(crate) fn new(buf: BytesMut, framing: Option<Framing>, control: bool) -> Self {
        FromPeer {
            buf,
            want: None,
            framing,
            control,
            msg: Message::Idle,
            streaming: None,
            pieces: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Reserves room for the next read; how much it may bring: enough for the frame under way,
    /// and up to `read_size` when more is there.
    pub(crate) fn prepare(&mut self, read_size: usize) -> usize {
        let want = self
            .want
            .unwrap_or(0)
            .saturating_sub(self.buf.len())
            .max(read_size);
        self.buf.reserve(want);
        want
    }

    /// Takes every complete frame at the front of the buffer (at most [`MAX_SLICES`] payloads
    /// or events), into `pieces` and `events`; returns the bytes taken and why it stopped.
    pub(crate) fn scan(&mut self, role: Role, max: u64) -> (usize, Stop) {
        let mut at = 0;
        let stop = loop {
            // Bounded per pass: a read full of tiny pings queues at most this many replies.
            if self.pieces.len() >= MAX_SLICES || self.events.len() >= MAX_SLICES {
                break Stop::Full;
            }
            if let Some(s) = &mut self.streaming {
                let n = s.left.min(self.buf.len() - at);
                if n == 0 {
                    break Stop::Need(1);
                }
                if let Some(mask) = s.mask {
                    wsframe::apply_mask(
                        &mut self.buf[at..at + n],
                        wsframe::mask_from(mask, s.done),
                    );
                }
                self.pieces.push(Piece::Range(at..at + n));
                at += n;
                s.done += n;
                s.left -= n;
                if s.left > 0 {
                    break Stop::Need(1);
                }
                self.streaming = None;
                continue;
            }
            let (h, payload) = match next_frame(&mut self.buf[at..], role, max) {
                Ok(Next::Frame(h, p)) => (h, at + p.start..at + p.end),
                Ok(Next::Partial(h, mask, from)) => {
                    // Session data goes on as it arrives; anything else waits to be whole.
                    // At least the payload's first byte is here (the type byte, if any).
                    let first = [self.buf[at + from] ^ mask.map_or(0, |m| m[0])];
                    let kind = self.kind(role);
                    match self.msg.frame(kind, &h, &first, false, max) {
                        Ok(Part::Data(skip)) => {
                            at += from + skip;
                            self.streaming = Some(Streaming {
                                mask,
                                done: skip,
                                left: h.len as usize - skip,
                            });
                            continue;
                        }
                        Ok(_) => break Stop::Need(from + h.len as usize),
                        Err(v) => break Stop::End(v.into()),
                    }
                }
                Ok(Next::Need(n)) => break Stop::Need(n),
                Err(v) => break Stop::End(v.into()),
            };
            at = payload.end;
            match h.opcode {
                Opcode::Binary | Opcode::Continuation | Opcode::Text => {
                    let kind = self.kind(role);
                    let part = self
                        .msg
                        .frame(kind, &h, &self.buf[payload.clone()], true, max);
                    match part {
                        Ok(Part::Data(skip)) if payload.len() > skip => self
                            .pieces
                            .push(Piece::Range(payload.start + skip..payload.end)),
                        Ok(Part::Data(_) | Part::Pending | Part::Skip | Part::Wait) => {}
                        Ok(Part::Whole(m)) => {
                            if let Err(r) = self.message(role, m) {
                                break Stop::End(r);
                            }
                        }
                        Ok(Part::Control(m)) => self.events.push(Event::Control(m)),
                        Err(v) => break Stop::End(v.into()),
                    }
                }
                Opcode::Ping => self.events.push(Event::Ping(payload)),
                Opcode::Pong => self.events.push(Event::Pong),
                Opcode::Close => {
                    break Stop::End(Reason::PeerClosed(close_frame(&self.buf[payload])))
                }
            }
        };
        (at, stop)
    }

    fn kind(&self, role: Role) -> Kind {
        Kind {
            role,
            framing: self.framing,
            control: self.control,
        }
    }

    /// A message gathered whole: a typed control message, or the first one (client role).
    fn message(&mut self, role: Role, msg: Vec<u8>) -> Result<(), Reason> {
        let Some(framing) = self.framing else {
            return self.first_message(msg);
        };
        match role {
            Role::Server => match decode(framing, &msg) {
                Ok(Inbound::Ping(_)) => self.events.push(Event::Echo(Bytes::from(msg))),
                Ok(Inbound::Latency(ms)) => self.events.push(Event::Latency(ms)),
                // Data messages are passed on as they come, so none is gathered; still, data.
                Ok(Inbound::Data(d)) => {
                    let skip = msg.len() - d.len();
                    self.pieces
                        .push(Piece::Whole(Bytes::from(msg).slice(skip..)));
                }
                Err(e) => return Err(Violation::Framing(e).into()),
            },
            Role::Client => match decode_from_server(&msg) {
                Ok(FromServer::Data(_)) => {
                    self.pieces.push(Piece::Whole(Bytes::from(msg).slice(1..)))
                }
                Ok(FromServer::Pong(id)) => self.events.push(Event::Answer(id)),
                Ok(FromServer::Redirect(_)) => return Err(Violation::LateRedirect.into()),
                Err(e) => return Err(Violation::Framing(e).into()),
            },
        }
        Ok(())
    }

    /// The server talks first (sshd sends its banner), so its first message tells a client the
    /// framing: a `0` type byte means typed frames; `SSH-` (or anything else) an older server
    /// that sends raw bytes; a `3` is a redirect to follow.
    fn first_message(&mut self, msg: Vec<u8>) -> Result<(), Reason> {
        let msg = Bytes::from(msg);
        let (framing, data) = if msg.starts_with(b"SSH-") {
            (Framing::Raw, msg)
        } else {
            match decode_from_server(&msg) {
                Ok(FromServer::Data(_)) => (Framing::Typed, msg.slice(1..)),
                Ok(FromServer::Redirect(_)) => return Err(Reason::Redirected(msg.slice(1..))),
                _ => (Framing::Raw, msg),
            }
        };
        tracing::debug!(?framing, "framing chosen from the server's first message");
        self.framing = Some(framing);
        self.pieces.push(Piece::Whole(data));
        Ok(())
    }
}

/// Reads the frame at the start of `buf`: a whole one is unmasked in place. The server role
/// takes masked frames only, the client role unmasked ones only (RFC 6455 §5.1).
fn next_frame(buf: &mut [u8], role: Role, max: u64) -> Result<Next, Violation> {
    let h = match wsframe::parse(buf, max) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Next::Need(MAX_HEADER)),
        Err(e) => return Err(Violation::Header(e)),
    };
    let mask = match (role, h.mask) {
        (Role::Server, None) => return Err(Violation::Unmasked),
        (Role::Client, Some(_)) => return Err(Violation::Masked),
        (_, mask) => mask,
    };
    // `len` is at most `max`, so this fits.
    let end = h.header_len + h.len as usize;
    if end <= buf.len() {
        if let Some(mask) = mask {
            wsframe::apply_mask(&mut buf[h.header_len..end], mask);
        }
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

impl Message {
    /// `payload` is the frame's whole payload, or (`whole` false) as much of its start as has
    /// arrived: then only session data is taken, anything else is left for later.
    fn frame(
        &mut self,
        kind: Kind,
        h: &Header,
        payload: &[u8],
        whole: bool,
        max: u64,
    ) -> Result<Part, Violation> {
        let Kind {
            role,
            framing,
            control,
        } = kind;
        if role == Role::Server && h.opcode == Opcode::Text && !control {
            return Err(Violation::Text);
        }
        let starts = h.opcode != Opcode::Continuation;
        let part = match (std::mem::replace(self, Message::Idle), starts) {
            (Message::Idle, false) => return Err(Violation::StrayContinuation),
            (
                Message::Untyped
                | Message::Data
                | Message::Gather(_)
                | Message::Skip
                | Message::Control(_),
                true,
            ) => return Err(Violation::Interleaved),
            (Message::Data, false) => {
                *self = Message::Data;
                Part::Data(0)
            }
            // A message's first byte, in its first frame or (after empty ones) a later one.
            (Message::Idle | Message::Untyped, _)
                if h.opcode != Opcode::Text && framing == Some(Framing::Raw) =>
            {
                *self = Message::Data;
                Part::Data(0)
            }
            (Message::Idle | Message::Untyped, _)
                if h.opcode != Opcode::Text
                    && framing == Some(Framing::Typed)
                    && payload.first() == Some(&TYPE_DATA) =>
            {
                *self = Message::Data;
                Part::Data(1)
            }
            (Message::Idle | Message::Untyped, _)
                if h.opcode != Opcode::Text
                    && framing.is_some()
                    && payload.is_empty()
                    && !h.fin =>
            {
                *self = Message::Untyped;
                Part::Pending
            }
            (before, _) if !whole => {
                *self = before;
                return Ok(Part::Wait);
            }
            (Message::Idle, true) if h.opcode == Opcode::Text && control => {
                control_part(Vec::new(), h.fin, payload, self)?
            }
            (Message::Control(so_far), false) => control_part(so_far, h.fin, payload, self)?,
            (Message::Idle, true) if h.opcode == Opcode::Text => {
                *self = Message::Skip;
                Part::Skip
            }
            (Message::Skip, false) => {
                *self = Message::Skip;
                Part::Skip
            }
            (Message::Idle | Message::Untyped, _) => gather(Vec::new(), h.fin, payload, max, self)?,
            (Message::Gather(so_far), false) => gather(so_far, h.fin, payload, max, self)?,
        };
        if h.fin {
            *self = Message::Idle;
        }
        Ok(part)
    }
}

/// Adds a fragment to a message gathered whole; at its last frame, the message.
fn gather(
    mut so_far: Vec<u8>,
    fin: bool,
    payload: &[u8],
    max: u64,
    msg: &mut Message,
) -> Result<Part, Violation> {
    so_far.extend_from_slice(payload);
    if so_far.len() as u64 > max {
        return Err(Violation::MessageTooBig(max));
    }
    if !fin {
        *msg = Message::Gather(so_far);
        return Ok(Part::Pending);
    }
    Ok(Part::Whole(so_far))
}

/// Adds a fragment to a control message; at its last frame, the message. Control messages are
/// short: one over [`MAX_CONTROL`] bytes is refused.
fn control_part(
    mut so_far: Vec<u8>,
    fin: bool,
    payload: &[u8],
    msg: &mut Message,
) -> Result<Part, Violation> {
    so_far.extend_from_slice(payload);
    if so_far.len() > MAX_CONTROL {
        return Err(Violation::Control(format!(
            "a control message over {MAX_CONTROL} bytes"
        )));
    }
    if !fin {
        *msg = Message::Control(so_far);
        return Ok(Part::Pending);
    }
    Ok(Part::Control(so_far))
}

/// The longest control message accepted (they fit in one control-sized frame).
pub(crate) const MAX_CONTROL: usize = 125;

/// A close frame's code and reason (none if it carried no code).
fn close_frame(payload: &[u8]) -> Option<CloseFrame> {
    let (code, reason) = payload.split_first_chunk::<2>()?;
    Some(CloseFrame {
        code: u16::from_be_bytes(*code),
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}
