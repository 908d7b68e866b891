//! wsgate-sidecar: the WebSocket ↔ SSH bridge that runs next to `sshd` (or centrally).
//!
//! - [`server`]: routes, the handshake (everything is checked and the target connected before
//!   the upgrade), sessions, graceful shutdown; `run(listener, admin, sidecar, shutdown)`.
//! - [`upgrade`]: the WebSocket upgrade (checks, `101`), handing the raw connection over.
//! - [`bridge`]: one session's byte pump and RFC 6455 framing, generic over both connections.
//! - [`auth`], [`authz`]: who is asking, and may they reach this cluster.
//! - [`target`]: cluster + worker → address (never chosen by the client).
//! - [`kube`]: TokenReview, SubjectAccessReview and pod lookup (central mode) with kube-rs.
//! - [`sessions`]: admission limits and the `/sessions` listing.
//! - [`metrics`]: Prometheus text.
//! - [`error`]: every refusal and close reason, mapped to statuses and close codes.
//! - [`config`]: flags and environment.

pub mod auth;
pub mod authz;
pub mod bridge;
pub mod config;
pub mod error;
pub mod headtimeout;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod sessions;
pub mod target;
pub mod upgrade;

pub use server::{run, Settings, Sidecar};
