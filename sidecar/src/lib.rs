//! wsgate-sidecar: the WebSocket ↔ SSH bridge that runs next to `sshd` (or centrally).
//!
//! - [`server`]: routes, the handshake (everything is checked and the target connected before
//!   the upgrade), sessions, graceful shutdown; `run(listener, admin, sidecar, shutdown)`.
//! - [`http`]: the accept loop and HTTP/1.1 connections, a deadline on every head and idle wait.
//! - [`upgrade`]: the WebSocket upgrade (checks, `101`), handing the raw connection over.
//! - [`bridge`]: one session's byte pump and RFC 6455 framing, generic over both connections.
//! - [`auth`], [`authz`]: who is asking, and may they reach this cluster.
//! - [`target`]: cluster + worker → address (never chosen by the client).
//! - [`kube`]: TokenReview, SubjectAccessReview and pod lookup (central mode) with kube-rs.
//! - [`sessions`]: admission limits and the `/sessions` listing.
//! - [`origin`]: where a request comes from (peer, and the client behind trusted hops), for
//!   the audit.
//! - [`metrics`]: Prometheus text.
//! - [`error`]: every refusal and close reason, mapped to statuses and close codes.
//! - [`config`]: flags, environment and config file, validated into a [`Sidecar`].

pub mod auth;
pub mod authz;
pub mod bridge;
pub mod config;
pub mod error;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod origin;
pub mod server;
pub mod sessions;
pub mod target;
pub mod upgrade;

pub use server::{run, Settings, Sidecar};
