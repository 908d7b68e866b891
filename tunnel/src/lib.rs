//! wsgate-tunnel: the engine both ends of a wsgate tunnel run — one WebSocket ↔ one local byte
//! stream — generic over `AsyncRead`/`AsyncWrite`, so it is tested over `tokio::io::duplex`.
//!
//! The sidecar runs it in the [`Role::Server`] role (client's connection ↔ the target sshd),
//! `wsgate proxy` in the [`Role::Client`] role (the server's connection ↔ stdin/stdout). The
//! RFC 6455 framing is done on the connection's bytes with [`wsgate_proto::wsframe`], in place:
//! one read from the peer, its frames unmasked where they lie and their payloads written to the
//! local side with one `writev`; a local read framed behind room kept for the header and queued
//! without a copy. (A general WebSocket library zero-filled its read buffer, copied payloads and
//! made a syscall per frame: 2-3× the CPU per GiB of a plain copy.)
//!
//! - [`engine`]: [`run`], its [`Config`], [`Role`] and [`Hooks`]; the loop whose every pending
//!   read and write is raced against the timers, the keepalive and shutdown.
//! - [`reason`]: why a session ended, one [`Reason`] each; the ends map it to what they report.
//! - `inbound`: peer → local, the frames of a read taken in place (no I/O).
//! - `outbound`: local → peer, a local read framed in place (no I/O).
//! - `writer`: a connection's cancel-safe, vectored write queue.
//! - `replay`: resumption's bookkeeping: the bytes sent and not acknowledged, and the counts.
//!
//! Nothing here logs session bytes.

pub mod engine;
mod inbound;
mod outbound;
pub mod reason;
mod replay;
mod writer;

#[cfg(test)]
mod tests;

pub use engine::{
    run, Config, Ended, Hooks, Leg, Replayed, ResumeConfig, Role, Session, CLOSE_WAIT, LINGER,
};
pub use reason::{CloseFrame, Reason, Violation};
