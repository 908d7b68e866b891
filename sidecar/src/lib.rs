//! wsgate-sidecar: the WebSocket ↔ SSH bridge that runs next to `sshd` (or centrally).
//!
//! From the command line to a session:
//! - [`settings`]: flags, `WSGATE_*` environment and config file, read fail-closed into `Args`.
//! - [`config`]: `Args` checked and turned into a [`Config`], plain data, no I/O.
//! - [`backends`]: the authenticator, authorizer and target resolver a `Config` names (files
//!   read, a Kubernetes client connected).
//! - [`server`]: [`run`]`(listeners, config, shutdown)`: routes, the handshake (everything is
//!   checked and the target connected before the upgrade), sessions, graceful shutdown.
//! - [`http`]: the accept loop and HTTP/1.1 connections, a deadline on every head and idle wait.
//! - [`upgrade`]: the WebSocket upgrade (checks, `101`), handing the raw connection over.
//! - [`bridge`]: one session on `wsgate-tunnel`'s engine (server role), over one leg or (resumable)
//!   several, its end mapped to a close reason.
//! - [`auth`], [`authz`]: who is asking, and may they reach this cluster.
//! - [`target`]: cluster + worker → address (never chosen by the client).
//! - [`kube`]: TokenReview, SubjectAccessReview and pod lookup (central mode) with kube-rs.
//! - [`sessions`]: admission limits and the `/sessions` listing.
//! - [`resume`]: resumable sessions: the `x-wsgate-resume` header, the sessions held for their
//!   clients to come back to, and the checks a resume passes (who may hand a session its next
//!   leg).
//! - [`origin`]: where a request comes from (peer, and the client behind trusted hops), for
//!   the audit.
//! - [`logs`]: the log's two formats (text from outside is escaped with `wsgate_proto::text`).
//! - [`metrics`]: Prometheus text.
//! - [`error`]: every refusal and close reason, mapped to statuses and close codes.

pub mod auth;
pub mod authz;
pub mod backends;
pub mod bridge;
pub mod config;
pub mod error;
pub mod http;
pub mod kube;
pub mod logs;
pub mod metrics;
pub mod origin;
pub mod resume;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod target;
pub mod upgrade;

pub use config::Config;
pub use server::{run, Listeners, StartError};
