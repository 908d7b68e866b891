//! RFC 6455 frame headers for the sidecar's and the client's data paths: parse, mask and build.
//! No I/O.
//!
//! The sidecar and `wsgate proxy` move session bytes between a WebSocket and a socket or pipe.
//! Doing the framing themselves, over buffers they read into directly, lets them (un)mask in
//! place, write many frames' payloads with one `writev`, and send a frame's header beside its
//! payload without copying it: a general WebSocket library zero-fills its read buffer, copies
//! payloads and writes one frame per call.

/// A frame's opcode (RFC 6455 §5.2); the reserved ones are refused by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    /// The opcode of a frame's low nibble; `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes (RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// The longest header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;
/// The longest header a server sends (servers never mask).
pub const MAX_SERVER_HEADER: usize = 10;
/// Control frames carry at most this much (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    pub opcode: Opcode,
    /// Clients mask every frame; servers never do.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes the header itself takes (2 to 14).
    pub header_len: usize,
}

impl Header {
    /// Header plus payload, the bytes this frame takes in the stream.
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.len
    }
}

/// A header the sidecar will not accept; each closes the session (1002, or 1009 for size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("reserved bits set (no extension was negotiated)")]
    Reserved,
    #[error("unknown opcode {0}")]
    Opcode(u8),
    #[error("control frame fragmented or over 125 bytes")]
    BadControl,
    #[error("frame payload of {0} bytes is over the limit")]
    TooBig(u64),
}

/// Parses the header at the start of `buf`; `Ok(None)` until enough bytes for it have arrived.
/// A payload longer than `max_payload` is refused from its header alone, before any of it is
/// read.
pub fn parse(buf: &[u8], max_payload: u64) -> Result<Option<Header>, HeaderError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(HeaderError::Reserved);
    }
    let Some(opcode) = Opcode::from_bits(b0 & 0x0F) else {
        return Err(HeaderError::Opcode(b0 & 0x0F));
    };
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut l = [0u8; 8];
                l.copy_from_slice(b);
                (u64::from_be_bytes(l), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(HeaderError::BadControl);
    }
    if len > max_payload {
        return Err(HeaderError::TooBig(len));
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// XORs `data` with the mask, in place (masking and unmasking are the same operation). Eight
/// bytes at a time: the sidecar runs every byte a client sends through this.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // Each chunk was 8 bytes, a multiple of 4, so the tail starts at mask offset 0.
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// A final frame's header, masked with `mask` when given (clients mask, servers never do):
/// the bytes, left-aligned, and how many of them there are (2 to 14).
pub fn header(opcode: Opcode, len: u64, mask: Option<[u8; 4]>) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode as u8;
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut n = match len {
        0..=125 => {
            h[1] = masked | len as u8;
            2
        }
        126..=0xFFFF => {
            h[1] = masked | 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = masked | 127;
            h[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(m) = mask {
        h[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    (h, n)
}

/// Writes an unmasked (server) header for a final frame into the end of `out` and returns how
/// many bytes it took; the caller sends `out[MAX_SERVER_HEADER - n..]` and then the payload.
/// Right-aligned so a payload read in just after `out` follows its header with no copy.
pub fn server_header(out: &mut [u8; MAX_SERVER_HEADER], opcode: Opcode, len: u64) -> usize {
    let (h, n) = header(opcode, len, None);
    out[MAX_SERVER_HEADER - n..].copy_from_slice(&h[..n]);
    n
}

/// The mask to apply to a payload's bytes from offset `at` on (masking continues the 4-byte
/// cycle where the bytes before left it).
pub fn mask_from(mask: [u8; 4], at: usize) -> [u8; 4] {
    let mut m = mask;
    m.rotate_left(at % 4);
    m
}

/// A whole masked final frame (a client's control frames).
pub fn client_frame(opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (h, n) = header(opcode, payload.len() as u64, Some(mask));
    let mut f = Vec::with_capacity(n + payload.len());
    f.extend_from_slice(&h[..n]);
    f.extend_from_slice(payload);
    apply_mask(&mut f[n..], mask);
    f
}

/// A whole unmasked final frame (control frames and other small ones).
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_SERVER_HEADER];
    let n = server_header(&mut h, opcode, payload.len() as u64);
    let mut f = Vec::with_capacity(n + payload.len());
    f.extend_from_slice(&h[MAX_SERVER_HEADER - n..]);
    f.extend_from_slice(payload);
    f
}

/// A close frame's payload: the code, then the reason (RFC 6455 §5.5.1).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(
        fin: bool,
        opcode: Opcode,
        mask: Option<[u8; 4]>,
        len: u64,
        header_len: usize,
    ) -> Header {
        Header {
            fin,
            opcode,
            mask,
            len,
            header_len,
        }
    }

    #[test]
    fn parse_table() {
        const M: [u8; 4] = [1, 2, 3, 4];
        type Want = Result<Option<Header>, HeaderError>;
        struct Case {
            name: &'static str,
            buf: Vec<u8>,
            want: Want,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "empty",
                buf: vec![],
                want: Ok(None),
            },
            Case {
                name: "one byte",
                buf: vec![0x82],
                want: Ok(None),
            },
            Case {
                name: "small masked binary",
                buf: vec![0x82, 0x85, 1, 2, 3, 4],
                want: Ok(Some(hdr(true, Opcode::Binary, Some(M), 5, 6))),
            },
            Case {
                name: "mask not all here",
                buf: vec![0x82, 0x85, 1, 2],
                want: Ok(None),
            },
            Case {
                name: "unmasked",
                buf: vec![0x82, 0x05],
                want: Ok(Some(hdr(true, Opcode::Binary, None, 5, 2))),
            },
            Case {
                name: "16-bit length",
                buf: vec![0x02, 0xFE, 0x01, 0x00, 1, 2, 3, 4],
                want: Ok(Some(hdr(false, Opcode::Binary, Some(M), 256, 8))),
            },
            Case {
                name: "16-bit length cut",
                buf: vec![0x82, 0xFE, 0x01],
                want: Ok(None),
            },
            Case {
                name: "64-bit length",
                buf: vec![0x80, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
                want: Ok(Some(hdr(true, Opcode::Continuation, Some(M), 65536, 14))),
            },
            Case {
                name: "64-bit length over the limit, before the mask arrives",
                buf: vec![0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 1],
                want: Err(HeaderError::TooBig(65537)),
            },
            Case {
                name: "64-bit length with the top bit set",
                buf: vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                want: Err(HeaderError::TooBig(1 << 63)),
            },
            Case {
                name: "rsv1 (compression)",
                buf: vec![0xC2, 0x80],
                want: Err(HeaderError::Reserved),
            },
            Case {
                name: "rsv3",
                buf: vec![0x92, 0x80],
                want: Err(HeaderError::Reserved),
            },
            Case {
                name: "opcode 3",
                buf: vec![0x83, 0x80],
                want: Err(HeaderError::Opcode(3)),
            },
            Case {
                name: "opcode 0xB",
                buf: vec![0x8B, 0x80],
                want: Err(HeaderError::Opcode(0xB)),
            },
            Case {
                name: "fragmented ping",
                buf: vec![0x09, 0x80, 1, 2, 3, 4],
                want: Err(HeaderError::BadControl),
            },
            Case {
                name: "126-byte close",
                buf: vec![0x88, 0xFE, 0, 126],
                want: Err(HeaderError::BadControl),
            },
            Case {
                name: "125-byte pong",
                buf: vec![0x8A, 0xFD, 1, 2, 3, 4],
                want: Ok(Some(hdr(true, Opcode::Pong, Some(M), 125, 6))),
            },
        ];
        for Case { name, buf, want } in cases {
            assert_eq!(parse(&buf, 65536), want, "{name}");
        }
    }

    #[test]
    fn mask_matches_the_bytewise_definition_at_every_length() {
        let mask = [0xA5, 0x3C, 0x0F, 0xF0];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
            apply_mask(&mut fast, mask);
            assert_eq!(fast, data, "masking twice gives the data back");
        }
    }

    #[test]
    fn server_headers_round_trip_through_parse() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 24] {
            let mut out = [0u8; MAX_SERVER_HEADER];
            let n = server_header(&mut out, Opcode::Binary, len);
            let h = parse(&out[MAX_SERVER_HEADER - n..], u64::MAX);
            assert_eq!(
                h,
                Ok(Some(hdr(true, Opcode::Binary, None, len, n))),
                "length {len}"
            );
        }
    }

    #[test]
    fn client_headers_round_trip_through_parse() {
        const M: [u8; 4] = [9, 8, 7, 6];
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 24] {
            let (h, n) = header(Opcode::Binary, len, Some(M));
            assert_eq!(
                parse(&h[..n], u64::MAX),
                Ok(Some(hdr(true, Opcode::Binary, Some(M), len, n))),
                "length {len}"
            );
        }
    }

    #[test]
    fn masking_in_two_parts_equals_masking_at_once() {
        let mask = [0xA5, 0x3C, 0x0F, 0xF0];
        let data: Vec<u8> = (0..37).collect();
        for split in 0..data.len() {
            let mut whole = data.clone();
            apply_mask(&mut whole, mask);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, mask);
            apply_mask(b, mask_from(mask, split));
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn client_frames_unmask_to_their_payload() {
        let mask = [1, 2, 3, 4];
        let mut f = client_frame(Opcode::Ping, b"hello", mask);
        let h = parse(&f, 125).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.mask, h.len, h.header_len),
            (Opcode::Ping, Some(mask), 5, 6)
        );
        apply_mask(&mut f[6..], mask);
        assert_eq!(&f[6..], b"hello");
    }

    #[test]
    fn close_frame_layout() {
        let f = server_frame(Opcode::Close, &close_payload(1009, "frame too big"));
        assert_eq!(&f[..4], &[0x88, 15, 0x03, 0xF1]);
        assert_eq!(&f[4..], b"frame too big");
    }
}
