//! SkyPilot's SSH-over-WebSocket framing, exactly as its API server and client speak it.
//!
//! Clients that send `client_version` > 21 prefix every binary frame with one type byte:
//! `0` data, `1` ping (`!BI`: type + u32 id, echoed back unchanged), `2` latency report (`!BQ`,
//! milliseconds, client → server), `3` redirect (server → client, type + JSON). Older clients
//! (or none given) send raw bytes. This module only parses and builds frames; it does no I/O.

/// SkyPilot's threshold: `timestamps_supported = client_version > 21`.
pub const TYPED_FRAMING_MIN_VERSION: u32 = 22;

pub const TYPE_DATA: u8 = 0;
pub const TYPE_PING: u8 = 1;
pub const TYPE_LATENCY: u8 = 2;
pub const TYPE_REDIRECT: u8 = 3;

/// Which framing a session speaks, decided once from the query's `client_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Every binary frame is session bytes.
    Raw,
    /// Every binary frame starts with a type byte.
    Typed,
}

impl Framing {
    pub fn for_client_version(version: Option<u32>) -> Framing {
        match version {
            Some(v) if v >= TYPED_FRAMING_MIN_VERSION => Framing::Typed,
            _ => Framing::Raw,
        }
    }

    /// Bytes added in front of each data frame.
    pub fn header_len(self) -> usize {
        match self {
            Framing::Raw => 0,
            Framing::Typed => 1,
        }
    }
}

/// A frame received from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Session bytes for the target.
    Data(&'a [u8]),
    /// A ping; the whole frame goes back unchanged.
    Ping(&'a [u8]),
    /// The client's measured round trip, in milliseconds.
    Latency(u64),
}

/// A frame that breaks the framing: the session is closed with this as the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame without a type byte")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("ping frame of {0} bytes (want 5)")]
    BadPing(usize),
    #[error("latency frame of {0} bytes (want 9)")]
    BadLatency(usize),
    #[error("redirect frames only go from server to client")]
    UnexpectedRedirect,
}

/// Parses one binary frame from the client.
pub fn decode(framing: Framing, frame: &[u8]) -> Result<Inbound<'_>, FrameError> {
    if framing == Framing::Raw {
        return Ok(Inbound::Data(frame));
    }
    let (&kind, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    match kind {
        TYPE_DATA => Ok(Inbound::Data(rest)),
        TYPE_PING if rest.len() == 4 => Ok(Inbound::Ping(frame)),
        TYPE_PING => Err(FrameError::BadPing(frame.len())),
        TYPE_LATENCY => {
            let ms: [u8; 8] = rest
                .try_into()
                .map_err(|_| FrameError::BadLatency(frame.len()))?;
            Ok(Inbound::Latency(u64::from_be_bytes(ms)))
        }
        TYPE_REDIRECT => Err(FrameError::UnexpectedRedirect),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// A frame a client receives from the server (typed framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromServer<'a> {
    /// Session bytes for the client's stdout.
    Data(&'a [u8]),
    /// The echo of the client's ping with this id.
    Pong(u32),
    /// Reconnect elsewhere: JSON `{"url": ..., "headers": {...}}`.
    Redirect(&'a [u8]),
}

/// Parses one binary frame from the server (the client side of [`decode`]).
pub fn decode_from_server(frame: &[u8]) -> Result<FromServer<'_>, FrameError> {
    let (&kind, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    match kind {
        TYPE_DATA => Ok(FromServer::Data(rest)),
        TYPE_PING => {
            let id: [u8; 4] = rest
                .try_into()
                .map_err(|_| FrameError::BadPing(frame.len()))?;
            Ok(FromServer::Pong(u32::from_be_bytes(id)))
        }
        TYPE_REDIRECT => Ok(FromServer::Redirect(rest)),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// A client ping (`!BI`).
pub fn ping_frame(id: u32) -> [u8; 5] {
    let b = id.to_be_bytes();
    [TYPE_PING, b[0], b[1], b[2], b[3]]
}

/// A client latency report (`!BQ`, milliseconds).
pub fn latency_frame(ms: u64) -> [u8; 9] {
    let mut f = [0u8; 9];
    f[0] = TYPE_LATENCY;
    f[1..].copy_from_slice(&ms.to_be_bytes());
    f
}

/// A redirect frame (server → client): type byte + JSON `{"url": ..., "headers": {...}}`.
pub fn redirect_frame(info: &serde_json::Value) -> Vec<u8> {
    let mut f = vec![TYPE_REDIRECT];
    f.extend_from_slice(info.to_string().as_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_by_client_version() {
        assert_eq!(Framing::for_client_version(None), Framing::Raw);
        assert_eq!(Framing::for_client_version(Some(21)), Framing::Raw);
        assert_eq!(Framing::for_client_version(Some(22)), Framing::Typed);
        assert_eq!(Framing::for_client_version(Some(62)), Framing::Typed);
    }

    #[test]
    fn decode_table() {
        use Framing::*;
        let ping = [1u8, 0, 0, 0, 7];
        let mut latency = vec![2u8];
        latency.extend_from_slice(&42u64.to_be_bytes());
        struct Case<'a> {
            name: &'static str,
            framing: Framing,
            frame: Vec<u8>,
            want: Result<Inbound<'a>, FrameError>,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "raw passes everything",
                framing: Raw,
                frame: vec![1, 2, 3],
                want: Ok(Inbound::Data(&[1, 2, 3])),
            },
            Case {
                name: "raw empty",
                framing: Raw,
                frame: vec![],
                want: Ok(Inbound::Data(&[])),
            },
            Case {
                name: "typed data",
                framing: Typed,
                frame: vec![0, b'h', b'i'],
                want: Ok(Inbound::Data(b"hi")),
            },
            Case {
                name: "typed empty data",
                framing: Typed,
                frame: vec![0],
                want: Ok(Inbound::Data(&[])),
            },
            Case {
                name: "ping echoed whole",
                framing: Typed,
                frame: ping.to_vec(),
                want: Ok(Inbound::Ping(&ping)),
            },
            Case {
                name: "short ping",
                framing: Typed,
                frame: vec![1, 0, 0],
                want: Err(FrameError::BadPing(3)),
            },
            Case {
                name: "latency",
                framing: Typed,
                frame: latency.clone(),
                want: Ok(Inbound::Latency(42)),
            },
            Case {
                name: "short latency",
                framing: Typed,
                frame: vec![2, 0],
                want: Err(FrameError::BadLatency(2)),
            },
            Case {
                name: "redirect from client",
                framing: Typed,
                frame: vec![3, b'{', b'}'],
                want: Err(FrameError::UnexpectedRedirect),
            },
            Case {
                name: "unknown type",
                framing: Typed,
                frame: vec![9, 1],
                want: Err(FrameError::UnknownType(9)),
            },
            Case {
                name: "empty typed frame",
                framing: Typed,
                frame: vec![],
                want: Err(FrameError::Empty),
            },
        ];
        for Case {
            name,
            framing,
            frame,
            want,
        } in cases
        {
            let got = decode(framing, &frame);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name}");
        }
    }

    #[test]
    fn client_side_frames_round_trip() {
        // What the client sends is what the server decodes, and back.
        let ping = ping_frame(0x0102_0304);
        assert_eq!(ping, [1, 1, 2, 3, 4]);
        assert_eq!(decode(Framing::Typed, &ping), Ok(Inbound::Ping(&ping)));
        assert_eq!(decode_from_server(&ping), Ok(FromServer::Pong(0x0102_0304)));
        assert_eq!(
            decode(Framing::Typed, &latency_frame(99)),
            Ok(Inbound::Latency(99))
        );
        assert_eq!(decode_from_server(b"\x00abc"), Ok(FromServer::Data(b"abc")));
        assert_eq!(
            decode_from_server(b"\x03{}"),
            Ok(FromServer::Redirect(b"{}"))
        );
        assert_eq!(decode_from_server(&[1, 0]), Err(FrameError::BadPing(2)));
        assert_eq!(decode_from_server(&[2, 0]), Err(FrameError::UnknownType(2)));
        assert_eq!(decode_from_server(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn redirect_frame_carries_its_json() {
        let f = redirect_frame(&serde_json::json!({"url": "wss://x"}));
        assert_eq!(f[0], TYPE_REDIRECT);
        assert_eq!(&f[1..], br#"{"url":"wss://x"}"#);
    }
}
