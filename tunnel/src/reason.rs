//! Why a tunnel ended: exactly one [`Reason`] per session, decided where it happened. The ends
//! map it to what they report (the sidecar: close codes, audit labels and metrics in its
//! `error.rs`; the client: its errors and exit codes); this module maps nothing.

use std::io;

use bytes::Bytes;
use wsgate_proto::framing::FrameError;
use wsgate_proto::wsframe::HeaderError;

/// A close frame's code and reason text: one the peer sent, or one to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// The peer sent a close frame (`None`: one without a code).
    #[error("the peer closed the session")]
    PeerClosed(Option<CloseFrame>),
    /// The peer's connection ended without a close frame.
    #[error("the peer's connection closed without a close frame")]
    PeerEof,
    #[error("reading from the peer failed: {0}")]
    PeerReadFailed(#[source] io::Error),
    #[error("writing to the peer failed: {0}")]
    PeerWriteFailed(#[source] io::Error),
    /// The peer sent what RFC 6455 or the framing forbids.
    #[error("the peer broke the protocol: {0}")]
    Violation(#[from] Violation),
    /// The server's first message is SkyPilot's redirect (client role): its JSON.
    #[error("the server redirects the session")]
    Redirected(Bytes),
    /// The local input ended (server role: the target closed its side).
    #[error("the local side closed")]
    LocalClosed,
    #[error("reading from the local side failed: {0}")]
    LocalReadFailed(#[source] io::Error),
    #[error("writing to the local side failed: {0}")]
    LocalWriteFailed(#[source] io::Error),
    /// The shutdown future resolved (the sidecar draining; ssh hanging up on the client).
    #[error("shut down")]
    Shutdown,
    /// No session byte either way for the configured time.
    #[error("idle timeout")]
    IdleTimeout,
    #[error("maximum session age reached")]
    MaxAge,
    /// Pings went unanswered, or the peer took none of the frames waiting for it, too long.
    #[error("keepalive timeout")]
    KeepaliveTimeout,
    /// Our close went out after the local input ended (client role), and the peer's did not
    /// come within [`crate::LINGER`].
    #[error("the peer did not answer our close in time")]
    Lingered,
    /// Another connection resumed the session: this one is left (resumption on).
    #[error("another connection resumed the session")]
    Superseded,
}

impl Reason {
    /// The peer's connection is of no further use: no close frame is sent.
    pub fn peer_is_gone(&self) -> bool {
        matches!(
            self,
            Reason::PeerEof | Reason::PeerReadFailed(_) | Reason::PeerWriteFailed(_)
        )
    }
}

/// A frame the peer must not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Reserved bits, an unknown opcode, a bad control frame, or a payload over the limit
    /// ([`HeaderError::TooBig`], refused from the header before any of it is read).
    #[error("{0}")]
    Header(HeaderError),
    #[error("client frames must be masked")]
    Unmasked,
    #[error("a masked frame (servers never mask)")]
    Masked,
    #[error("continuation frame outside a message")]
    StrayContinuation,
    #[error("new message before the last one ended")]
    Interleaved,
    /// A message gathered whole (a typed control message, or a client's first) grew over
    /// this limit.
    #[error("a message over the limit of {0} bytes")]
    MessageTooBig(u64),
    /// A text frame where only binary ones are accepted (server role).
    #[error("a text frame (the session is binary)")]
    Text,
    /// A binary message that breaks SkyPilot's typed framing.
    #[error("{0}")]
    Framing(FrameError),
    /// SkyPilot's redirect after the session started (client role).
    #[error("a redirect in the middle of a session")]
    LateRedirect,
    /// A control message (resumption on) that is unknown or malformed, or a count outside the
    /// bytes sent or kept.
    #[error("bad control message: {0}")]
    Control(String),
}
