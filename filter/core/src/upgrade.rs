//! Which requests are upgrades, by the Kubernetes rules and as Envoy presents HTTP/2 WebSockets.
//!
//! WebSocket: the first `Upgrade` value is `websocket` (case-insensitive) and some `Connection`
//! line contains `upgrade` (case-insensitive), like `wsstream.IsWebSocketRequest`; or the request
//! came over HTTP/2 or HTTP/3 (RFC 8441/9220 extended CONNECT, which Envoy turns into
//! `upgrade: websocket`). SPDY (kubectl's fallback) counts for the redirect guard only.

use crate::headers::Headers;

/// The kind of upgrade a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeKind {
    /// A WebSocket upgrade over HTTP/1.1.
    WebSocket,
    /// A WebSocket over HTTP/2 or HTTP/3 extended CONNECT, presented by Envoy as an upgrade.
    WebSocketH2,
    /// `Upgrade: SPDY/3.1`, kubectl's fallback: guarded against redirects, never token-rewritten.
    Spdy,
}

impl UpgradeKind {
    pub fn is_websocket(self) -> bool {
        matches!(self, UpgradeKind::WebSocket | UpgradeKind::WebSocketH2)
    }
}

/// Whether `protocol` (Envoy's `request.protocol` property) is an HTTP/2 or HTTP/3 stream.
pub fn is_multiplexed(protocol: &str) -> bool {
    protocol.starts_with("HTTP/2") || protocol.starts_with("HTTP/3")
}

/// Classifies a request; `None` for plain requests and other upgrades (e.g. `h2c`).
///
/// `multiplexed` is asked only when the answer can matter (in the filter it is a host call, and
/// one that returns a value, so it costs more than a header lookup): Envoy's HTTP/2 codec hands
/// an extended CONNECT to filters as the same `upgrade`/`connection` headers as HTTP/1.1, so
/// only the protocol tells them apart, and that only changes what happens to a WebSocket
/// request without `Sec-WebSocket-Key` (RFC 8441 clients send none; one is added for HTTP/1.1
/// upstreams) or to one whose `Connection` does not say `upgrade`. A multiplexed request that
/// does carry a key is classified as [`UpgradeKind::WebSocket`]: it is handled identically.
pub fn classify(headers: Headers<'_>, multiplexed: impl FnOnce() -> bool) -> Option<UpgradeKind> {
    let upgrade = headers.first("upgrade")?;
    let connection_upgrade = headers
        .all("connection")
        .any(|v| v.to_ascii_lowercase().contains("upgrade"));
    if upgrade.eq_ignore_ascii_case("websocket") {
        if connection_upgrade && headers.has("sec-websocket-key") {
            return Some(UpgradeKind::WebSocket);
        }
        if multiplexed() {
            return Some(UpgradeKind::WebSocketH2);
        }
        if connection_upgrade {
            return Some(UpgradeKind::WebSocket);
        }
        return None;
    }
    let is_spdy = upgrade
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("spdy/"));
    if is_spdy && (connection_upgrade || multiplexed()) {
        return Some(UpgradeKind::Spdy);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::list as h;

    #[test]
    fn classification_table() {
        use UpgradeKind::*;
        struct Case {
            name: &'static str,
            headers: Vec<(String, String)>,
            /// What the `multiplexed` host call answers: an HTTP/2 or HTTP/3 stream.
            multiplexed: bool,
            want: Option<UpgradeKind>,
        }
        let cases: &[Case] = &[
            Case {
                name: "plain GET",
                headers: h(&[(":method", "GET")]),
                multiplexed: false,
                want: None,
            },
            Case {
                name: "websocket",
                headers: h(&[("upgrade", "websocket"), ("connection", "Upgrade")]),
                multiplexed: false,
                want: Some(WebSocket),
            },
            Case {
                name: "case-insensitive values",
                headers: h(&[
                    ("upgrade", "WebSocket"),
                    ("connection", "keep-alive, UPGRADE"),
                ]),
                multiplexed: false,
                want: Some(WebSocket),
            },
            Case {
                name: "every connection line is scanned",
                headers: h(&[
                    ("upgrade", "websocket"),
                    ("connection", "keep-alive"),
                    ("connection", "upgrade"),
                ]),
                multiplexed: false,
                want: Some(WebSocket),
            },
            Case {
                name: "connection substring match, like the apiserver",
                headers: h(&[("upgrade", "websocket"), ("connection", "xupgradex")]),
                multiplexed: false,
                want: Some(WebSocket),
            },
            Case {
                name: "no connection upgrade",
                headers: h(&[("upgrade", "websocket")]),
                multiplexed: false,
                want: None,
            },
            Case {
                name: "only the first upgrade line counts",
                headers: h(&[
                    ("upgrade", "h2c"),
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                ]),
                multiplexed: false,
                want: None,
            },
            Case {
                name: "h2 websocket as Envoy presents it",
                headers: h(&[(":method", "GET"), ("upgrade", "websocket")]),
                multiplexed: true,
                want: Some(WebSocketH2),
            },
            Case {
                name: "h2 websocket with the connection line Envoy's codec adds",
                headers: h(&[("upgrade", "websocket"), ("connection", "upgrade")]),
                multiplexed: true,
                want: Some(WebSocketH2),
            },
            Case {
                name: "h2 websocket that sends a key anyway: handled like HTTP/1.1",
                headers: h(&[
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ]),
                multiplexed: true,
                want: Some(WebSocket),
            },
            Case {
                name: "spdy",
                headers: h(&[("upgrade", "SPDY/3.1"), ("connection", "Upgrade")]),
                multiplexed: false,
                want: Some(Spdy),
            },
            Case {
                name: "h2c is not ours",
                headers: h(&[
                    ("upgrade", "h2c"),
                    ("connection", "Upgrade, HTTP2-Settings"),
                ]),
                multiplexed: false,
                want: None,
            },
            Case {
                name: "websocket-ish",
                headers: h(&[("upgrade", "websocketx"), ("connection", "upgrade")]),
                multiplexed: false,
                want: None,
            },
        ];
        for Case {
            name,
            headers,
            multiplexed,
            want,
        } in cases
        {
            assert_eq!(classify(Headers(headers), || *multiplexed), *want, "{name}");
        }
    }

    /// The protocol is a host call returning a value: an HTTP/1.1 WebSocket with its key (every
    /// browser and client library), an SPDY upgrade and a plain request never ask for it.
    #[test]
    fn protocol_is_asked_only_when_it_matters() {
        let ask = |headers: &[(&str, &str)]| {
            let asked = std::cell::Cell::new(false);
            let list = h(headers);
            classify(Headers(&list), || {
                asked.set(true);
                false
            });
            asked.get()
        };
        let ws = [("upgrade", "websocket"), ("connection", "Upgrade")];
        assert!(!ask(&[(":method", "GET")]));
        assert!(!ask(&[ws[0], ws[1], ("sec-websocket-key", "k")]));
        assert!(!ask(&[("upgrade", "SPDY/3.1"), ("connection", "Upgrade")]));
        assert!(ask(&ws));
        assert!(ask(&[ws[0]]));
    }

    #[test]
    fn protocol_property() {
        assert!(is_multiplexed("HTTP/2"));
        assert!(is_multiplexed("HTTP/3"));
        assert!(!is_multiplexed("HTTP/1.1"));
        assert!(!is_multiplexed(""));
    }
}
