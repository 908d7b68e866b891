//! Resumption's bookkeeping (no I/O): the session bytes sent and not yet acknowledged, kept for
//! a replay, and the counts both ways. The bytes are the frames' own payloads (the client
//! role's still masked, with the key that unmasks them), so keeping them costs no copy; only a
//! replay copies.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use wsgate_proto::wsframe::{apply_mask, mask_from};

use crate::reason::Violation;

/// Unacknowledged session bytes, and where both directions stand.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Unacknowledged bytes kept at most before the local side stops being read.
    cap: u64,
    /// Sent and unacknowledged, in order: `sent - acked` bytes.
    chunks: VecDeque<Chunk>,
    /// Of our session bytes, those the peer acknowledged (where `chunks` starts).
    acked: u64,
    /// Our session bytes sent in all legs (where `chunks` ends).
    sent: u64,
    /// The peer's session bytes received in all legs.
    received: u64,
    /// The count our last acknowledgement (or `resume`) gave the peer.
    acked_to_peer: u64,
    /// Received bytes acknowledged once this many are unacknowledged (the peer's buffer's quarter).
    ack_every: u64,
    /// Where small payloads are copied to (see [`SMALL`]).
    tail: BytesMut,
}

/// A payload shorter than this is copied into a shared buffer rather than kept where it was
/// read: a kept payload holds its whole read buffer (up to the read size, 64 KiB and more), so
/// a trickle of small reads kept as they were would hold many times the bytes counted against
/// the bound. Larger ones are kept without a copy (a bulk transfer's reads fill their buffers),
/// holding at most read size / `SMALL` times their bytes.
const SMALL: usize = 16 << 10;

/// The shared buffer's size: small payloads share allocations of this many bytes.
const TAIL: usize = 64 << 10;

/// A frame's payload as it went out: masked with `mask` from its first byte (client role).
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    mask: Option<[u8; 4]>,
}

impl Replay {
    pub(crate) fn new(cap: usize, ack_every: u64) -> Self {
        Replay {
            cap: cap as u64,
            ack_every,
            chunks: VecDeque::new(),
            acked: 0,
            sent: 0,
            received: 0,
            acked_to_peer: 0,
            tail: BytesMut::new(),
        }
    }

    /// Everything sent was acknowledged.
    pub(crate) fn all_acknowledged(&self) -> bool {
        self.acked == self.sent
    }

    /// The buffer is at its bound: read nothing more from the local side.
    pub(crate) fn full(&self) -> bool {
        self.sent - self.acked >= self.cap
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Bytes received since the last acknowledgement we sent.
    pub(crate) fn unacknowledged(&self) -> u64 {
        self.received - self.acked_to_peer
    }

    /// Enough is unacknowledged to acknowledge it now.
    pub(crate) fn ack_due(&self) -> bool {
        self.unacknowledged() >= self.ack_every
    }

    /// A payload sent to the peer, masked with `mask` from its first byte (if masked).
    pub(crate) fn sent_chunk(&mut self, bytes: Bytes, mask: Option<[u8; 4]>) {
        if bytes.is_empty() {
            return;
        }
        self.sent += bytes.len() as u64;
        if bytes.len() >= SMALL {
            self.chunks.push_back(Chunk { bytes, mask });
            return;
        }
        if self.tail.capacity() - self.tail.len() < bytes.len() {
            self.tail = BytesMut::with_capacity(TAIL);
        }
        let at = self.tail.len();
        self.tail.extend_from_slice(&bytes);
        if let Some(mask) = mask {
            apply_mask(&mut self.tail[at..], mask);
        }
        let copy = self.tail.split().freeze();
        self.chunks.push_back(Chunk {
            bytes: copy,
            mask: None,
        });
    }

    pub(crate) fn got(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// The count to acknowledge now (and remembered as acknowledged).
    pub(crate) fn take_ack(&mut self) -> u64 {
        self.acked_to_peer = self.received;
        self.received
    }

    /// The peer acknowledged `n` of our bytes: those are dropped.
    pub(crate) fn ack(&mut self, n: u64) -> Result<(), Violation> {
        if n < self.acked || n > self.sent {
            return Err(Violation::Control(format!(
                "ack {n} outside the bytes in flight ({}..={})",
                self.acked, self.sent
            )));
        }
        let mut drop = n - self.acked;
        while drop > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let len = front.bytes.len() as u64;
            if len <= drop {
                drop -= len;
                self.chunks.pop_front();
            } else {
                let k = drop as usize;
                front.bytes.advance(k);
                front.mask = front.mask.map(|m| mask_from(m, k));
                drop = 0;
            }
        }
        self.acked = n;
        Ok(())
    }

    /// The peer, resuming, has `n` of our bytes: what it lacks, unmasked, in order. Bytes
    /// before `n` are dropped as acknowledged; a count outside what is kept cannot be resumed.
    pub(crate) fn replay_from(&mut self, n: u64) -> Result<Vec<Bytes>, Violation> {
        self.ack(n).map_err(|_| {
            Violation::Control(format!(
                "resume {n} outside the bytes kept ({}..={})",
                self.acked, self.sent
            ))
        })?;
        Ok(self
            .chunks
            .iter()
            .map(|c| match c.mask {
                None => c.bytes.clone(),
                Some(mask) => {
                    let mut plain = c.bytes.to_vec();
                    apply_mask(&mut plain, mask);
                    Bytes::from(plain)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(plain: &[u8], mask: [u8; 4]) -> Bytes {
        let mut b = plain.to_vec();
        apply_mask(&mut b, mask);
        Bytes::from(b)
    }

    #[test]
    fn acks_drop_bytes_and_a_replay_unmasks_what_is_left() {
        let mut r = Replay::new(1 << 20, 1 << 10);
        let m = [1, 2, 3, 4];
        r.sent_chunk(masked(b"hello ", m), Some(m));
        r.sent_chunk(Bytes::from_static(b"wide "), None);
        r.sent_chunk(masked(b"world", [9, 8, 7, 6]), Some([9, 8, 7, 6]));
        assert_eq!(r.sent(), 16);
        r.ack(3).unwrap();
        // A cut in the middle of a masked chunk keeps the key's phase.
        let got: Vec<u8> = r.replay_from(4).unwrap().concat();
        assert_eq!(got, b"o wide world");
        let got: Vec<u8> = r.replay_from(13).unwrap().concat();
        assert_eq!(got, b"rld");
        assert_eq!(r.replay_from(16).unwrap().concat(), b"");
    }

    #[test]
    fn counts_outside_the_bytes_kept_are_refused() {
        struct Case {
            acked: u64,
            ack: u64,
        }
        for c in [Case { acked: 0, ack: 11 }, Case { acked: 5, ack: 4 }] {
            let mut r = Replay::new(1 << 20, 1 << 10);
            r.sent_chunk(Bytes::from_static(b"0123456789"), None);
            r.ack(c.acked).unwrap();
            assert!(matches!(r.ack(c.ack), Err(Violation::Control(_))));
            assert!(r.replay_from(c.ack).is_err());
        }
    }

    #[test]
    fn small_payloads_do_not_hold_the_buffers_they_were_read_into() {
        let mut r = Replay::new(1 << 20, 1 << 10);
        let read = Bytes::from(vec![7u8; 64 << 10]);
        r.sent_chunk(read.slice(0..100), None);
        r.sent_chunk(read.slice(100..(100 + SMALL)), None);
        // The small one was copied: only the large one still shares the read buffer.
        assert!(!r.chunks[0].bytes.as_ptr_range().contains(&read.as_ptr()));
        assert_eq!(r.chunks[1].bytes.as_ptr(), read[100..].as_ptr());
        let m = [5, 6, 7, 8];
        r.sent_chunk(masked(b"typed", m), Some(m));
        assert_eq!(r.replay_from(0).unwrap().concat().len(), 100 + SMALL + 5);
        assert!(r.replay_from(100 + SMALL as u64).unwrap().concat() == b"typed");
    }

    #[test]
    fn full_at_the_bound_until_acknowledged() {
        let mut r = Replay::new(8, 1);
        r.sent_chunk(Bytes::from_static(b"1234567"), None);
        assert!(!r.full());
        r.sent_chunk(Bytes::from_static(b"89"), None);
        assert!(r.full());
        r.ack(2).unwrap();
        assert!(!r.full());
    }

    #[test]
    fn acknowledgements_count_what_was_received_since_the_last() {
        let mut r = Replay::new(8, 1);
        r.got(100);
        assert_eq!(r.unacknowledged(), 100);
        assert_eq!(r.take_ack(), 100);
        r.got(5);
        assert_eq!((r.unacknowledged(), r.received()), (5, 105));
    }
}
