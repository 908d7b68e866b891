//! The HTTP/1.1 WebSocket upgrade (RFC 6455 §4.2): checking the request, answering `101`, and
//! handing the raw connection to the bridge (`crate::bridge`; the tunnel engine frames it).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};

use crate::error::Reject;

/// The client's connection after the upgrade, as tokio I/O.
pub type Connection = TokioIo<Upgraded>;

/// A request that asked for a WebSocket properly; the connection is taken once `101` is sent.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Reject;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Reject> {
        let key = client_key(&parts.headers).ok_or(Reject::NotWebSocket)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Reject::NotWebSocket)?;
        Ok(WsUpgrade { key, on_upgrade })
    }
}

/// RFC 6455's checks on an upgrade request (the method is the route's): the key, if it is one.
fn client_key(h: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)? != "13" {
        return None;
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .cloned()
}

/// `Sec-WebSocket-Accept` for a client's key.
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    wsgate_proto::base64::encode_std(&sha.finalize())
}

impl WsUpgrade {
    /// The `101` answer (echoing `protocol` when the client offered one), and the connection,
    /// which hyper hands over once the answer is sent. No extension is ever accepted: session
    /// bytes are SSH ciphertext, and compressing them only costs CPU.
    pub fn accept(
        self,
        protocol: Option<&str>,
    ) -> (
        Response,
        impl std::future::Future<Output = hyper::Result<Connection>>,
    ) {
        let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept_key(self.key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        let on_upgrade = self.on_upgrade;
        (resp, async move { on_upgrade.await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_request_table() {
        let base: [(&str, &str); 4] = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        struct Case {
            name: &'static str,
            /// Headers whose values replace those in `base`.
            changes: Vec<(&'static str, &'static str)>,
            /// Whether the request passes RFC 6455's checks (`client_key` finds the key).
            accepted: bool,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "complete",
                changes: vec![],
                accepted: true,
            },
            Case {
                name: "keep-alive, Upgrade",
                changes: vec![("connection", "keep-alive, Upgrade")],
                accepted: true,
            },
            Case {
                name: "WebSocket in capitals",
                changes: vec![("upgrade", "WebSocket")],
                accepted: true,
            },
            Case {
                name: "no upgrade token",
                changes: vec![("connection", "keep-alive")],
                accepted: false,
            },
            Case {
                name: "h2c",
                changes: vec![("upgrade", "h2c")],
                accepted: false,
            },
            Case {
                name: "version 8",
                changes: vec![("sec-websocket-version", "8")],
                accepted: false,
            },
            Case {
                name: "empty key",
                changes: vec![("sec-websocket-key", "")],
                accepted: false,
            },
        ];
        for Case {
            name,
            changes,
            accepted,
        } in cases
        {
            let mut h = HeaderMap::new();
            for (k, v) in base {
                let v = changes
                    .iter()
                    .find(|(ck, _)| *ck == k)
                    .map_or(v, |(_, cv)| *cv);
                h.insert(k, HeaderValue::from_static(v));
            }
            assert_eq!(client_key(&h).is_some(), accepted, "{name}");
        }
        let mut h = HeaderMap::new();
        for (k, v) in &base[..3] {
            h.insert(*k, HeaderValue::from_static(v));
        }
        assert!(client_key(&h).is_none(), "no key");
    }
}
