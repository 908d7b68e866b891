//! wsgate-core: the gateway filter's decisions as pure functions, with no proxy-wasm dependency.
//!
//! The proxy-wasm glue (`wsgate-filter`) turns Envoy's headers into a [`RequestView`], calls
//! [`decide`], and applies the [`Decision`]; the sidecar reuses [`token`] to accept Kubernetes
//! subprotocol tokens when no gateway is in front, and sidecar and client share [`framing`].
//! Nothing here performs I/O.
//!
//! - [`base64`]: Go's `RawURLEncoding` decoder (the apiserver's) and the key encoder.
//! - [`token`]: the Kubernetes `base64url.bearer.authorization.k8s.io.` subprotocol token.
//! - [`upgrade`]: which requests are WebSocket (or SPDY) upgrades.
//! - [`cidr`]: trusted source networks for the plaintext allowance.
//! - [`route`]: cluster extraction and validation for SSH-proxy routing.
//! - [`config`]: the `pluginConfig` JSON, validated into a [`Policy`].
//! - [`reply`]: every refusal, mapped in one place to a status and a JSON body.
//! - [`decide`]: request and response decisions.
//! - [`framing`]: SkyPilot's SSH-over-WebSocket type-byte framing (sidecar and client).
//! - [`outcome`]: what happened, one counter each.
//! - [`wsframe`]: RFC 6455 frame headers for the sidecar's data path.

pub mod base64;
pub mod cidr;
pub mod config;
pub mod decide;
pub mod framing;
pub mod headers;
pub mod outcome;
#[doc(hidden)]
pub mod props;
pub mod reply;
pub mod route;
pub mod token;
pub mod upgrade;
pub mod wsframe;

pub use config::{ConfigError, Policy};
pub use decide::{
    decide, decide_response, leaves_alone, Action, Decision, HeaderOp, RequestView, UpgradeMemo,
};
pub use outcome::Outcome;
pub use reply::{LocalReply, Rejection};

/// The crate version, logged by the filter at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
