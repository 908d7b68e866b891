//! Local → peer: what one local read returns becomes binary frames where it lies. The read goes
//! in just behind room for a header, so the first frame's header (and type byte) is written in
//! front of its payload and the two go out as one segment; the client role masks each frame in
//! place with a fresh key. Nothing is copied. Also the small frames: pings, pongs, echoes,
//! latency reports and the close.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use wsgate_proto::framing::{Framing, TYPE_DATA};
use wsgate_proto::wsframe::{
    self, apply_mask, client_frame, mask_from, server_frame, Opcode, MAX_CONTROL_PAYLOAD,
    MAX_HEADER,
};

use crate::engine::Role;
use crate::replay::Replay;
use crate::writer::Writer;

/// Room kept in front of a local read at least: the largest header and the type byte.
const MIN_ROOM: usize = MAX_HEADER + 1;

/// Where a local read's payload starts: on a cache line. The kernel copies what is read (pipe
/// pages, which start on a page) into it; a destination a few bytes past the source modulo
/// 4 KiB stalls that copy on 4K aliasing (measured: the client's stdin copy took ~40% of its
/// CPU at page offset 16 or 31, ~11% at 64). Aligned, the distance is 0 or at least a line.
const ALIGN: usize = 64;

/// Builds the frames one end sends: masked (client role) or not (server role).
pub(crate) struct Framer {
    role: Role,
    masks: Masks,
    /// Bytes in front of the current local read's payload (see [`Framer::prepare`]).
    room: usize,
    /// Where each later frame's header ends in a read's header segment (reused).
    head_ends: Vec<usize>,
    /// Each frame's key, from its payload's first byte, for the replay buffer (reused).
    keys: Vec<Option<[u8; 4]>>,
    /// Resumption on: the read buffers handed out, oldest first, each reused once nothing else
    /// holds it (its frames written and acknowledged). Without them every read needs a fresh
    /// allocation, since the replay buffer still holds the last ones' frames, and the allocator
    /// keeps handing back pages it had returned to the kernel: `wsgate proxy` took ~100k page
    /// faults per GiB pushed that way, ~3k with reuse (the window's buffers, touched once).
    spares: VecDeque<Bytes>,
    /// When the spares are freed unless a local read comes first: set once everything sent is
    /// acknowledged (see [`Framer::caught_up`]).
    release_at: Option<Instant>,
}

/// Read buffers remembered at most for reuse (see [`Framer::spares`]): more than a default
/// replay buffer's worth of full reads (`wsgate proxy`: 8 MiB of 256 KiB; the sidecar: 4 MiB
/// of 64 KiB). Past it the oldest is forgotten (freed when acknowledged, as without reuse).
const MAX_SPARES: usize = 80;

/// How long a session that has everything acknowledged keeps its spare read buffers while it
/// reads nothing. Freeing them on the acknowledgement itself made a fast push, which catches up
/// whenever its source pauses for a moment, give them back to the allocator and fault them in
/// again: `wsgate proxy` took 2.6k–57k page faults per GiB pushed that way, 2.36k keeping them.
const SPARES_KEPT: Duration = Duration::from_secs(1);

impl Framer {
    pub(crate) fn new(role: Role) -> Self {
        Framer {
            role,
            masks: Masks::default(),
            room: MIN_ROOM,
            head_ends: Vec::new(),
            keys: Vec::new(),
            spares: VecDeque::new(),
            release_at: None,
        }
    }

    /// Sets an empty `buf` up for the next local read: `read_size` bytes of capacity behind
    /// room for the header, the payload starting on an [`ALIGN`] boundary. The allocation comes
    /// back once the frames it held are written out, and the kernel fills it without zeroing
    /// first: an idle session touches one page.
    pub(crate) fn prepare(&mut self, buf: &mut BytesMut, read_size: usize) {
        if buf.is_empty() {
            let size = MIN_ROOM + ALIGN + read_size;
            if buf.capacity() < size {
                if let Some(spare) = self.spare() {
                    *buf = spare;
                }
            }
            buf.reserve(size);
            let start = buf.as_ptr() as usize;
            self.room = MIN_ROOM + (ALIGN - (start + MIN_ROOM) % ALIGN) % ALIGN;
            buf.put_bytes(0, self.room);
        }
    }

    /// Frames what a local read put behind the room in `buf` (set up by [`Framer::prepare`]) as
    /// binary frames of at most
    /// `max_frame` bytes of it each (plus the type byte, typed), queued for the peer in order;
    /// with resumption on, the payloads are kept in `replay` too (shared, not copied).
    pub(crate) fn data<W: AsyncWrite + Unpin>(
        &mut self,
        buf: &mut BytesMut,
        framing: Framing,
        max_frame: usize,
        out: &mut Writer<W>,
        replay: Option<&mut Replay>,
    ) -> io::Result<()> {
        let room = self.room;
        let end = buf.len();
        if end <= room {
            return Ok(());
        }
        self.release_at = None;
        let typed = framing.header_len();
        let max_frame = max_frame.max(1);
        let first_end = end.min(room + max_frame);
        let mut first_from = room;
        // Later frames (a read larger than a frame: the client role) get their headers in one
        // small segment, each beside its payload in the `writev`.
        let mut heads = BytesMut::with_capacity((end - first_end).div_ceil(max_frame) * MIN_ROOM);
        self.head_ends.clear();
        self.keys.clear();
        let mut at = room;
        while at < end {
            let piece = at..end.min(at + max_frame);
            let mask = self.next_mask()?;
            self.keys.push(mask.map(|m| mask_from(m, typed)));
            let (h, hl) = wsframe::header(Opcode::Binary, (piece.len() + typed) as u64, mask);
            if at == room {
                first_from = room - typed - hl;
                buf[first_from..first_from + hl].copy_from_slice(&h[..hl]);
                if typed == 1 {
                    buf[room - 1] = TYPE_DATA;
                }
                if let Some(mask) = mask {
                    apply_mask(&mut buf[room - typed..piece.end], mask);
                }
            } else {
                heads.extend_from_slice(&h[..hl]);
                if typed == 1 {
                    heads.put_u8(TYPE_DATA ^ mask.map_or(0, |m| m[0]));
                }
                if let Some(mask) = mask {
                    apply_mask(&mut buf[piece.clone()], mask_from(mask, typed));
                }
                self.head_ends.push(heads.len());
            }
            at = piece.end;
        }
        let frames = buf.split().freeze();
        let heads = heads.freeze();
        if let Some(replay) = replay {
            // The replay buffer keeps these frames: the next read goes to a buffer of its own,
            // and this one is reused when they are acknowledged.
            *buf = BytesMut::new();
            if self.spares.len() == MAX_SPARES {
                self.spares.pop_front();
            }
            self.spares.push_back(frames.clone());
            let mut at = room;
            for &key in &self.keys {
                let piece_end = end.min(at + max_frame);
                replay.sent_chunk(frames.slice(at..piece_end), key);
                at = piece_end;
            }
        }
        out.push(frames.slice(first_from..first_end));
        let (mut head_at, mut at) = (0, first_end);
        for &head_end in &self.head_ends {
            let piece_end = end.min(at + max_frame);
            out.push(heads.slice(head_at..head_end));
            out.push(frames.slice(at..piece_end));
            (head_at, at) = (head_end, piece_end);
        }
        Ok(())
    }

    /// The newest read buffer nothing else holds any more (the likeliest to be in cache),
    /// emptied.
    fn spare(&mut self) -> Option<BytesMut> {
        let at = self.spares.iter().rposition(Bytes::is_unique)?;
        let mut spare = self.spares.remove(at)?.try_into_mut().ok()?;
        spare.clear();
        Some(spare)
    }

    /// Everything sent is acknowledged: the spare read buffers are freed at
    /// [`Framer::release_at`] unless a local read comes first.
    pub(crate) fn caught_up(&mut self, now: Instant) {
        if !self.spares.is_empty() {
            self.release_at.get_or_insert(now + SPARES_KEPT);
        }
    }

    /// When [`Framer::release_spares`] is due (see [`Framer::caught_up`]).
    pub(crate) fn release_at(&self) -> Option<Instant> {
        self.release_at
    }

    /// Frees the read buffers nothing holds (everything sent was acknowledged and nothing read
    /// since, or a leg ended), so an idle or parked session keeps no more than the one it reads
    /// into.
    pub(crate) fn release_spares(&mut self) {
        self.spares.retain(|b| !b.is_unique());
        self.release_at = None;
    }

    /// The spare read buffers kept.
    #[cfg(test)]
    pub(crate) fn spares(&self) -> usize {
        self.spares.len()
    }

    /// One small whole frame (a control frame, or a typed control message).
    pub(crate) fn control(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<Bytes> {
        Ok(Bytes::from(match self.next_mask()? {
            None => server_frame(opcode, payload),
            Some(mask) => client_frame(opcode, payload, mask),
        }))
    }

    /// A close frame; a reason too long for a control frame is cut (at a character boundary).
    pub(crate) fn close(&mut self, code: u16, reason: &str) -> io::Result<Bytes> {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.control(Opcode::Close, &wsframe::close_payload(code, &reason[..end]))
    }

    fn next_mask(&mut self) -> io::Result<Option<[u8; 4]>> {
        match self.role {
            Role::Server => Ok(None),
            Role::Client => self.masks.next().map(Some),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Every frame of `bytes` (a stream of whole frames): (header, unmasked payload).
    fn frames(bytes: &[u8]) -> Vec<(wsframe::Header, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let h = wsframe::parse(&bytes[at..], u64::MAX).unwrap().unwrap();
            let p = at + h.header_len..at + h.frame_len() as usize;
            let mut payload = bytes[p.clone()].to_vec();
            if let Some(m) = h.mask {
                apply_mask(&mut payload, m);
            }
            out.push((h, payload));
            at = p.end;
        }
        out
    }

    #[tokio::test]
    async fn a_read_becomes_frames_of_at_most_max_frame_bytes() {
        struct Case {
            role: Role,
            framing: Framing,
            read: usize,
            max_frame: usize,
        }
        let cases = [
            Case {
                role: Role::Client,
                framing: Framing::Typed,
                read: 10_000,
                max_frame: 4096,
            },
            Case {
                role: Role::Client,
                framing: Framing::Raw,
                read: 8192,
                max_frame: 4096,
            },
            Case {
                role: Role::Client,
                framing: Framing::Typed,
                read: 1,
                max_frame: 4096,
            },
            Case {
                role: Role::Server,
                framing: Framing::Typed,
                read: 65536,
                max_frame: 65536,
            },
            Case {
                role: Role::Server,
                framing: Framing::Raw,
                read: 100,
                max_frame: 100,
            },
        ];
        for c in cases {
            let data: Vec<u8> = (0..c.read).map(|i| (i * 7 % 251) as u8).collect();
            let mut buf = BytesMut::new();
            let mut framer = Framer::new(c.role);
            framer.prepare(&mut buf, c.read);
            assert_eq!(
                (buf.as_ptr() as usize + buf.len()) % ALIGN,
                0,
                "payload on a line"
            );
            buf.extend_from_slice(&data);
            let (w, mut r) = tokio::io::duplex(1 << 20);
            let mut out = Writer::new(w);
            let mut replay = Replay::new(1 << 20, 1 << 10);
            framer
                .data(
                    &mut buf,
                    c.framing,
                    c.max_frame,
                    &mut out,
                    Some(&mut replay),
                )
                .unwrap();
            // What the replay buffer keeps is the payload as read, however it was masked.
            assert_eq!(replay.replay_from(0).unwrap().concat(), data);
            out.flush().await.unwrap();
            drop(out);
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).await.unwrap();
            let skip = c.framing.header_len();
            let mut got = Vec::new();
            let frames = frames(&bytes);
            assert_eq!(frames.len(), c.read.div_ceil(c.max_frame));
            for (h, payload) in frames {
                assert_eq!(h.opcode, Opcode::Binary);
                assert!(h.fin);
                assert_eq!(h.mask.is_some(), c.role == Role::Client);
                assert!(payload.len() <= c.max_frame + skip);
                if skip == 1 {
                    assert_eq!(payload[0], TYPE_DATA);
                }
                got.extend_from_slice(&payload[skip..]);
            }
            assert_eq!(got, data, "{:?} {:?} {}", c.role, c.framing, c.read);
        }
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let f = Framer::new(Role::Server).close(1011, &reason).unwrap();
        let h = wsframe::parse(&f, 125).unwrap().unwrap();
        assert_eq!(h.len, 124);
        assert!(std::str::from_utf8(&f[h.header_len + 2..]).is_ok());
    }

    #[tokio::test]
    async fn with_resumption_a_read_buffer_is_reused_once_acknowledged_and_freed_after_a_quiet_spell(
    ) {
        const READ: usize = 64 << 10;
        let mut framer = Framer::new(Role::Client);
        let mut replay = Replay::new(1 << 20, 1 << 10);
        let (w, _r) = tokio::io::duplex(4 << 20);
        let mut out = Writer::new(w);
        let mut buf = BytesMut::new();
        // One read: where its buffer starts, once its frames are out.
        let mut read = async |framer: &mut Framer, replay: &mut Replay| {
            framer.prepare(&mut buf, READ);
            let at = buf.as_ptr();
            buf.put_bytes(7, READ);
            framer
                .data(&mut buf, Framing::Raw, READ, &mut out, Some(replay))
                .unwrap();
            out.flush().await.unwrap();
            at
        };
        let first = read(&mut framer, &mut replay).await;
        // The replay buffer still holds the first read: the second gets a buffer of its own.
        let second = read(&mut framer, &mut replay).await;
        assert_ne!(first, second);
        replay.ack(READ as u64).unwrap();
        let third = read(&mut framer, &mut replay).await;
        assert_eq!(third, first, "the acknowledged buffer is reused");
        assert_eq!(framer.spares.len(), 2);
        // All acknowledged: the spares are due to go a while later, unless a read comes first.
        replay.ack(3 * READ as u64).unwrap();
        let now = Instant::now();
        framer.caught_up(now);
        assert_eq!(framer.release_at(), Some(now + SPARES_KEPT));
        read(&mut framer, &mut replay).await;
        assert_eq!(framer.release_at(), None, "a read puts it off");
        replay.ack(4 * READ as u64).unwrap();
        framer.caught_up(now);
        framer.release_spares();
        assert!(framer.spares.is_empty());
        assert_eq!(framer.release_at(), None);
    }
}
