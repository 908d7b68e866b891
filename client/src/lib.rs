//! wsgate-client: `wsgate proxy`, ssh's ProxyCommand over a WebSocket, and `wsgate ssh-config`.
//!
//! - [`cli`]: flags (clap derive: the doc comments are `--help`), turned into the options below.
//! - [`run`]: `wsgate proxy` from start to end (token, connection, session, redirect, hangup),
//!   each session in one log span.
//! - [`ssh_config`]: the `~/.ssh/config` block, with this binary as the ProxyCommand.
//! - [`endpoint`]: server URL + cluster → `ws(s)://` session URL.
//! - [`credentials`]: the token and where it came from.
//! - [`tls`]: rustls with system roots, `--ca-file`, or (loudly) no verification.
//! - [`proxy`]: the proxy settings (`https_proxy`, `no_proxy`, `--proxy`), CONNECT and SOCKS5.
//! - [`connect`]: the handshake, and its failures as actionable errors.
//! - [`session`]: one session on `wsgate-tunnel`'s engine (client role), its end told to the user.
//! - [`resume`]: resumable sessions' rules: headers, the sidecar's ticket, the reconnect
//!   backoff, which refusals are final.
//! - [`stdio`]: stdin/stdout registered with the reactor.
//! - [`error`]: messages and exit codes.
//!
//! Logs go to stderr only: stdout carries the SSH session.

pub mod cli;
pub mod connect;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod proxy;
pub mod resume;
pub mod run;
pub mod session;
pub mod ssh_config;
pub mod stdio;
pub mod tls;
