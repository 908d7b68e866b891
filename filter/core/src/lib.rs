//! wsgate-core: the gateway filter's decisions as pure functions, with no proxy-wasm dependency.
//!
//! The proxy-wasm glue (`wsgate-filter`) turns Envoy's headers into a [`RequestView`], calls
//! [`decide`], and applies the [`Decision`]. The wire formats it reads (the Kubernetes
//! subprotocol token, base64url, names) live in `wsgate-proto`, which the sidecar and the client
//! share; only the glue and the fuzz targets depend on this crate. Nothing here performs I/O.
//!
//! - [`headers`]: read-only lookups over a request's header list.
//! - [`upgrade`]: which requests are WebSocket (or SPDY) upgrades.
//! - [`route`]: cluster extraction and validation for SSH-proxy routing.
//! - [`config`]: the `pluginConfig` JSON, validated into a [`Policy`].
//! - [`reply`]: every refusal, mapped in one place to a status and a JSON body.
//! - [`decide`]: request and response decisions.
//! - [`outcome`]: what happened, one counter each.

pub mod config;
pub mod decide;
pub mod headers;
pub mod outcome;
pub mod reply;
pub mod route;
pub mod upgrade;

pub use config::{ConfigError, Policy};
pub use decide::{
    decide, decide_response, leaves_alone, Action, Decision, HeaderOp, RequestView, UpgradeMemo,
};
pub use outcome::Outcome;
pub use reply::{LocalReply, Rejection};

/// The crate version, logged by the filter at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
