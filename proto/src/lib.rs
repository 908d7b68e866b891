//! wsgate-proto: the wire formats both ends of a tunnel (and the gateway filter) share; no I/O.
//!
//! The sidecar and the client speak these on the wire, the filter reads the token codec and
//! the names; nothing here reads a socket or needs a runtime, so every format is tested as a
//! pure function.
//!
//! - [`wsframe`]: RFC 6455 frame headers, masking and close payloads.
//! - [`framing`]: SkyPilot's SSH-over-WebSocket type-byte framing.
//! - [`token`]: the Kubernetes `base64url.bearer.authorization.k8s.io.` subprotocol token.
//! - [`base64`]: Go's `RawURLEncoding` decoder (the apiserver's) and the encoders.
//! - [`names`]: RFC 1123 labels, header names and values, the header names wsgate adds.
//! - [`query`]: a path's query string and its form decoding.
//! - [`cidr`]: source addresses and networks (the plaintext allowance, trusted origins).
//! - [`text`]: text from the network escaped before a terminal or a log sees it.
//! - [`hex`]: lower-case hexadecimal (resumable sessions' ids and secrets).

pub mod base64;
pub mod cidr;
pub mod framing;
pub mod hex;
pub mod names;
pub mod query;
pub mod text;
pub mod token;
pub mod wsframe;
