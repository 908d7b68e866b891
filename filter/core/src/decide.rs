//! The filter's decisions: (request view, policy) → decision, and the response-side guard.
//!
//! Pure: the glue reads headers and properties into a [`RequestView`], applies the returned
//! [`Decision`] (header operations, route-cache clearing, or a local reply), and keeps the
//! [`UpgradeMemo`] for the response. Randomness comes in as a function so tests are exact.

use std::net::IpAddr;

use crate::config::{ExistingAuthorization, Policy};
use crate::headers::Headers;
use crate::outcome::Outcome;
use crate::reply::{LocalReply, Rejection};
use crate::route::{path_has_prefix, route};
use crate::upgrade::{classify, is_multiplexed, UpgradeKind};
use wsgate_proto::base64::encode_std;
use wsgate_proto::names::is_header_value;
use wsgate_proto::query::split_query;
use wsgate_proto::token;

/// What the glue reads from Envoy for one request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// Request headers including pseudo-headers (`:path`, `:authority`), every line, as text:
    /// a value that was not UTF-8 (HTTP obs-text, bytes 0x80-0xFF) has U+FFFD in their place.
    pub headers: Headers<'a>,
    /// The names of the lines whose value was not UTF-8 (empty on almost every request). Their
    /// text is good for decisions but is not what the client sent: a decision never writes such
    /// a header back (the request is refused with `non_utf8_header` instead), so the filter
    /// forwards only the client's own bytes or values it made itself.
    pub non_utf8: &'a [String],
    /// Envoy's `request.protocol` property (`HTTP/1.1`, `HTTP/2`, ...). Asked for only when
    /// needed (requests with `upgrade`): in the filter each property is a host call.
    pub protocol: &'a dyn Fn() -> String,
    /// The downstream peer (Envoy's `source.address`), for the plaintext allowance; asked for
    /// only when that allowance could apply.
    pub source: &'a dyn Fn() -> Option<IpAddr>,
}

impl RequestView<'_> {
    /// Whether some line of `name` was not UTF-8.
    fn is_non_utf8(&self, name: &str) -> bool {
        self.non_utf8.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// A refusal if `name`, which the decision is about to rewrite from its text, was not UTF-8.
    fn rewritable(&self, name: &'static str) -> Result<(), Rejection> {
        if self.is_non_utf8(name) {
            return Err(Rejection::NonUtf8Header(name));
        }
        Ok(())
    }
}

/// One change to the request headers. `Set` replaces every line of that name.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Set { name: String, value: String },
    Remove { name: String },
}

impl std::fmt::Debug for HeaderOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The Authorization value is a credential: never printed.
            HeaderOp::Set { name, .. } if name == "authorization" => {
                write!(f, "Set({name}: <redacted>)")
            }
            HeaderOp::Set { name, value } => write!(f, "Set({name}: {value:?})"),
            HeaderOp::Remove { name } => write!(f, "Remove({name})"),
        }
    }
}

/// Continue (after the header operations) or answer at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Continue,
    Reply(LocalReply),
}

/// What the response side needs to know about an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeMemo {
    pub kind: UpgradeKind,
    /// Arrived over plaintext and was not let through: the hint points at the TLS port.
    pub plaintext: bool,
    pub authority: String,
    /// The original `:path`, query included.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Applied in order when the action is `Continue`.
    pub ops: Vec<HeaderOp>,
    /// Kept for the response when the request is an upgrade.
    pub memo: Option<UpgradeMemo>,
    /// One counter increment each.
    pub outcomes: Vec<Outcome>,
}

impl Decision {
    /// Continue with no header change, no counter and nothing kept for the response.
    pub fn changes_nothing(&self) -> bool {
        self.action == Action::Continue
            && self.ops.is_empty()
            && self.outcomes.is_empty()
            && self.memo.is_none()
    }

    fn reply(mut self, r: Rejection, outcome: Outcome) -> Decision {
        self.outcomes.push(outcome);
        self.action = Action::Reply(r.to_reply());
        self.ops.clear();
        self
    }
}

fn set(name: &str, value: impl Into<String>) -> HeaderOp {
    HeaderOp::Set {
        name: name.to_string(),
        value: value.into(),
    }
}

/// Decides what to do with a request.
pub fn decide(
    view: &RequestView<'_>,
    policy: &Policy,
    random_key: &mut dyn FnMut() -> [u8; 16],
) -> Decision {
    let h = view.headers;
    let kind = classify(h, || is_multiplexed(&(view.protocol)()));
    let path = h.first(":path").unwrap_or("/");
    let (path_only, _) = split_query(path);
    let authority = h
        .first(":authority")
        .or_else(|| h.first("host"))
        .unwrap_or("");
    let forwarded_proto = h.first("x-forwarded-proto").or_else(|| h.first(":scheme"));
    let plaintext = !forwarded_proto.is_some_and(|p| p.eq_ignore_ascii_case("https"));

    let mut d = Decision {
        action: Action::Continue,
        ops: Vec::new(),
        memo: None,
        outcomes: Vec::new(),
    };
    if kind.is_some() {
        d.outcomes.push(Outcome::Upgrade);
    }

    // A client must never choose its backend by sending the routing header itself.
    for name in &policy.routing_headers {
        if h.has(name) {
            d.ops.push(HeaderOp::Remove { name: name.clone() });
            d.outcomes.push(Outcome::ForgedHeaderRemoved);
        }
    }

    match route(&policy.routes, path) {
        None => {}
        Some(Err(refused)) => {
            return d.reply(
                Rejection::Route(refused.error),
                Outcome::RouteRejected(refused.error),
            );
        }
        Some(Ok(routed)) => {
            let r = routed.route;
            d.ops.push(set(&r.header, routed.cluster));
            if let Some(p) = routed.new_path {
                // The stripped path is the rest of the client's: its text, not its bytes.
                if let Err(refused) = view.rewritable(":path") {
                    return d.reply(refused, Outcome::NonUtf8Header);
                }
                d.ops.push(set(":path", p));
            }
            if let Some(a) = &r.authority {
                d.ops.push(set(":authority", a.clone()));
            }
            for name in &r.remove_headers {
                d.ops.push(HeaderOp::Remove { name: name.clone() });
            }
            for (name, value) in &r.set_headers {
                d.ops.push(set(name, value.clone()));
            }
            d.outcomes.push(Outcome::Routed);
        }
    }

    let t = &policy.token;
    let token_path = t.path_prefixes.is_empty()
        || t.path_prefixes
            .iter()
            .any(|p| path_has_prefix(path_only, p));
    if kind.is_some_and(UpgradeKind::is_websocket) && t.enabled && token_path {
        match token::extract(h.all("sec-websocket-protocol")) {
            Err(e) => return d.reply(Rejection::Token(e), Outcome::TokenError(e)),
            Ok(None) => {}
            Ok(Some(found)) => {
                let has_auth = h.has("authorization");
                let keep_existing = match (has_auth, t.existing_authorization) {
                    (true, ExistingAuthorization::Reject) => {
                        return d.reply(
                            Rejection::AuthorizationConflict,
                            Outcome::AuthorizationConflict,
                        );
                    }
                    (true, ExistingAuthorization::KeepExisting) => true,
                    _ => false,
                };
                // The remaining entries are rejoined from their text, not their bytes.
                if let Err(refused) = view.rewritable("sec-websocket-protocol") {
                    return d.reply(refused, Outcome::NonUtf8Header);
                }
                if keep_existing {
                    d.outcomes.push(Outcome::AuthorizationKept);
                } else {
                    let bearer = format!("Bearer {}", found.token.expose());
                    d.ops.push(set("authorization", bearer));
                    d.outcomes.push(Outcome::TokenRewritten);
                }
                d.ops.push(set("sec-websocket-protocol", found.remaining));
            }
        }
    }

    let mut still_plaintext = plaintext;
    if let (Some(_), true, Some(p)) = (kind, plaintext, &policy.guard.allow_plaintext) {
        let on_path = p
            .path_prefixes
            .iter()
            .any(|pre| path_has_prefix(path_only, pre));
        let trusted = on_path
            && (view.source)().is_some_and(|ip| p.trusted_cidrs.iter().any(|c| c.contains(ip)));
        if trusted {
            d.ops.push(set("x-forwarded-proto", "https"));
            d.outcomes.push(Outcome::PlaintextAllowed);
            still_plaintext = false;
        }
    }

    if kind == Some(UpgradeKind::WebSocketH2)
        && policy.h2_websocket_key
        && !h.has("sec-websocket-key")
    {
        d.ops
            .push(set("sec-websocket-key", encode_std(&random_key())));
        d.outcomes.push(Outcome::H2KeyAdded);
    }

    d.memo = kind.map(|kind| UpgradeMemo {
        kind,
        plaintext: still_plaintext,
        authority: authority.to_string(),
        path: path.to_string(),
    });
    d
}

/// Whether [`decide`] is certain to leave a request alone (continue, no header change, no
/// counter, no memo): it has no `upgrade` header, no client-sent routing header (the default
/// one is always among them, even with `{}`), and no route matches its path. Everything else
/// `decide` does applies to upgrades only.
///
/// The glue asks this first, with single-header host calls, because fetching every header is
/// a host call that copies the whole map into the module: on the ordinary requests a gateway
/// mostly carries, that copy was most of the filter's cost. A header that is absent costs the
/// host call alone; one that is present also costs a call back into the module to allocate the
/// value (about three times as much in Envoy's V8): so `upgrade` is asked first, and `:path`
/// (always present) only when no earlier check decided and some route could match it.
pub fn leaves_alone(
    path: &dyn Fn() -> Option<String>,
    has_header: &dyn Fn(&str) -> bool,
    policy: &Policy,
) -> bool {
    !has_header("upgrade")
        && !policy.routing_headers.iter().any(|n| has_header(n))
        && (policy.routes.is_empty()
            || route(&policy.routes, path().as_deref().unwrap_or("/")).is_none())
}

/// The response-side redirect guard: an upgrade answered with a redirect gets a 426 naming the
/// URL to use. Plain requests never reach here (the glue keeps no memo for them). `location` is
/// a host call in the glue, so it is asked for only when the status is a redirect.
pub fn decide_response(
    memo: &UpgradeMemo,
    status: u32,
    location: impl FnOnce() -> Option<String>,
    policy: &Policy,
) -> Option<LocalReply> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = location();
    let url = upgrade_url(memo, location.as_deref(), policy.guard.https_port)
        .filter(|u| is_header_value(u));
    Some(Rejection::UpgradeRedirected { status, url }.to_reply())
}

/// The URL the client should have used: the TLS version of the request for a plaintext upgrade,
/// otherwise the redirect target with a WebSocket scheme.
fn upgrade_url(
    memo: &UpgradeMemo,
    location: Option<&str>,
    https_port: Option<u16>,
) -> Option<String> {
    let (secure, insecure) = match memo.kind {
        UpgradeKind::Spdy => ("https", "http"),
        _ => ("wss", "ws"),
    };
    if !memo.plaintext {
        let loc = location?;
        if let Some(rest) = loc.strip_prefix("https://") {
            return Some(format!("{secure}://{rest}"));
        }
        if let Some(rest) = loc.strip_prefix("http://") {
            return Some(format!("{insecure}://{rest}"));
        }
        if loc.starts_with('/') && !memo.authority.is_empty() {
            return Some(format!("{secure}://{}{loc}", memo.authority));
        }
        return None;
    }
    if memo.authority.is_empty() {
        return None;
    }
    let host = strip_port(&memo.authority);
    let port = match https_port {
        Some(p) if p != 443 => format!(":{p}"),
        _ => String::new(),
    };
    Some(format!("{secure}://{host}{port}{}", memo.path))
}

/// `host:80` → `host`, `[::1]:80` → `[::1]`, `host` → `host`.
fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::list as hdrs;
    use wsgate_proto::base64::encode_raw_url;
    use wsgate_proto::token::BEARER_PROTOCOL_PREFIX;

    fn ws(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = hdrs(&[
            (":method", "GET"),
            (":path", "/api/v1/namespaces/default/pods/p/exec?command=sh"),
            (":authority", "gw.example.com"),
            (":scheme", "https"),
            ("x-forwarded-proto", "https"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        for (k, v2) in extra {
            // Replace same-name pseudo-headers and proto; append others.
            if k.starts_with(':') || *k == "x-forwarded-proto" {
                v.retain(|(n, _)| n != k);
            }
            v.push((k.to_string(), v2.to_string()));
        }
        v
    }

    fn tok(t: &str) -> String {
        format!("{BEARER_PROTOCOL_PREFIX}{}", encode_raw_url(t.as_bytes()))
    }

    fn policy(json: &str) -> Policy {
        Policy::from_json(json.as_bytes()).unwrap()
    }

    fn run(headers: &[(String, String)], protocol: &str, source: &str, p: &Policy) -> Decision {
        run_lossy(headers, &[], protocol, source, p)
    }

    /// `run`, with the named lines marked as not UTF-8 (as the glue reads obs-text).
    fn run_lossy(
        headers: &[(String, String)],
        non_utf8: &[&str],
        protocol: &str,
        source: &str,
        p: &Policy,
    ) -> Decision {
        let protocol = || protocol.to_string();
        let source = || source.parse().ok();
        let non_utf8: Vec<String> = non_utf8.iter().map(|n| n.to_string()).collect();
        let view = RequestView {
            headers: Headers(headers),
            non_utf8: &non_utf8,
            protocol: &protocol,
            source: &source,
        };
        decide(&view, p, &mut || [7u8; 16])
    }

    fn status(d: &Decision) -> Option<(u32, String)> {
        match &d.action {
            Action::Reply(r) => {
                let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                Some((r.status, body["reason"].as_str().unwrap().to_string()))
            }
            Action::Continue => None,
        }
    }

    fn op_value<'d>(d: &'d Decision, name: &str) -> Option<&'d str> {
        d.ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set { name: n, value } if n == name => Some(value.as_str()),
            _ => None,
        })
    }

    #[test]
    fn token_rewrite_table() {
        let default = Policy::default();
        let keep = policy(r#"{"tokenRewrite": {"existingAuthorization": "keepExisting"}}"#);
        let replace = policy(r#"{"tokenRewrite": {"existingAuthorization": "replace"}}"#);
        let scoped = policy(r#"{"tokenRewrite": {"pathPrefixes": ["/k8s"]}}"#);
        let off = policy(r#"{"tokenRewrite": {"enabled": false}}"#);
        let entry = format!("{}, v5.channel.k8s.io", tok("sekret"));
        struct Case<'a> {
            name: &'static str,
            headers: Vec<(String, String)>,
            policy: &'a Policy,
            /// The reply expected, as (status, reason); `None`: no reply.
            want_reply: Option<(u32, &'static str)>,
            /// The `Authorization` value expected to be set.
            want_auth: Option<&'static str>,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "rewritten",
                headers: ws(&[("sec-websocket-protocol", &entry)]),
                policy: &default,
                want_reply: None,
                want_auth: Some("Bearer sekret"),
            },
            Case {
                name: "no token: untouched",
                headers: ws(&[("sec-websocket-protocol", "v4.channel.k8s.io")]),
                policy: &default,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "not an upgrade: untouched even if malformed",
                headers: hdrs(&[
                    (":path", "/"),
                    (
                        "sec-websocket-protocol",
                        "base64url.bearer.authorization.k8s.io.!!",
                    ),
                ]),
                policy: &default,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "spdy: never rewritten",
                headers: ws(&[("upgrade", "SPDY/3.1"), ("sec-websocket-protocol", &entry)])
                    .into_iter()
                    .filter(|(k, v)| !(k == "upgrade" && v == "websocket"))
                    .collect(),
                policy: &default,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "token alone",
                headers: ws(&[("sec-websocket-protocol", &tok("sekret"))]),
                policy: &default,
                want_reply: Some((400, "missing_subprotocol")),
                want_auth: None,
            },
            Case {
                name: "two tokens",
                headers: ws(&[
                    ("sec-websocket-protocol", &entry),
                    ("sec-websocket-protocol", &tok("b")),
                ]),
                policy: &default,
                want_reply: Some((400, "multiple_tokens")),
                want_auth: None,
            },
            Case {
                name: "bad encoding",
                headers: ws(&[(
                    "sec-websocket-protocol",
                    "base64url.bearer.authorization.k8s.io.a=, x",
                )]),
                policy: &default,
                want_reply: Some((400, "invalid_encoding")),
                want_auth: None,
            },
            Case {
                name: "injection",
                headers: ws(&[("sec-websocket-protocol", &format!("{}, x", tok("a\r\nb")))]),
                policy: &default,
                want_reply: Some((400, "control_characters")),
                want_auth: None,
            },
            Case {
                name: "existing auth rejected",
                headers: ws(&[
                    ("authorization", "Bearer other"),
                    ("sec-websocket-protocol", &entry),
                ]),
                policy: &default,
                want_reply: Some((400, "authorization_conflict")),
                want_auth: None,
            },
            Case {
                name: "existing auth kept",
                headers: ws(&[
                    ("authorization", "Bearer other"),
                    ("sec-websocket-protocol", &entry),
                ]),
                policy: &keep,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "existing auth replaced",
                headers: ws(&[
                    ("authorization", "Bearer other"),
                    ("sec-websocket-protocol", &entry),
                ]),
                policy: &replace,
                want_reply: None,
                want_auth: Some("Bearer sekret"),
            },
            Case {
                name: "existing auth alone is fine",
                headers: ws(&[
                    ("authorization", "Bearer other"),
                    ("sec-websocket-protocol", "v4.channel.k8s.io"),
                ]),
                policy: &default,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "path scoped: inside",
                headers: ws(&[(":path", "/k8s/api"), ("sec-websocket-protocol", &entry)]),
                policy: &scoped,
                want_reply: None,
                want_auth: Some("Bearer sekret"),
            },
            Case {
                name: "path scoped: outside untouched",
                headers: ws(&[("sec-websocket-protocol", &entry)]),
                policy: &scoped,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "disabled",
                headers: ws(&[("sec-websocket-protocol", &entry)]),
                policy: &off,
                want_reply: None,
                want_auth: None,
            },
            Case {
                name: "h2 websocket rewritten",
                headers: ws(&[("sec-websocket-protocol", &entry)])
                    .into_iter()
                    .filter(|(k, _)| k != "connection")
                    .collect(),
                policy: &default,
                want_reply: None,
                want_auth: Some("Bearer sekret"),
            },
        ];
        for Case {
            name,
            headers,
            policy,
            want_reply,
            want_auth,
        } in cases
        {
            let proto = if name.starts_with("h2") {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            };
            let d = run(&headers, proto, "127.0.0.1", policy);
            let got = status(&d);
            assert_eq!(
                got.as_ref().map(|(s, r)| (*s, r.as_str())),
                want_reply,
                "{name}"
            );
            assert_eq!(op_value(&d, "authorization"), want_auth, "{name}");
            if want_reply.is_some() {
                assert!(d.ops.is_empty(), "{name}: nothing rewritten on error");
                let Action::Reply(r) = &d.action else {
                    unreachable!()
                };
                assert!(!r.body.contains("sekret"), "{name}: token echoed");
            }
            if want_auth.is_some() || name == "existing auth kept" {
                assert_eq!(
                    op_value(&d, "sec-websocket-protocol"),
                    Some("v5.channel.k8s.io"),
                    "{name}"
                );
            }
            if want_reply.is_none() && want_auth.is_none() && name != "existing auth kept" {
                assert_eq!(op_value(&d, "sec-websocket-protocol"), None, "{name}");
            }
        }
    }

    #[test]
    fn debug_output_redacts_authorization() {
        let entry = format!("{}, v5.channel.k8s.io", tok("sekret"));
        let d = run(
            &ws(&[("sec-websocket-protocol", &entry)]),
            "HTTP/1.1",
            "",
            &Policy::default(),
        );
        assert!(!format!("{d:?}").contains("sekret"));
    }

    #[test]
    fn plaintext_allowance_table() {
        let p = policy(
            r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["10.0.0.0/8", "127.0.0.1"],
                "pathPrefixes": ["/kubernetes-pod-ssh-proxy"]}}}"#,
        );
        let path = "/kubernetes-pod-ssh-proxy?cluster_name=a";
        struct Case {
            name: &'static str,
            path: &'static str,
            source: &'static str,
            /// The `x-forwarded-proto` the request arrives with.
            forwarded_proto: &'static str,
            allowed: bool,
        }
        let cases = [
            Case {
                name: "trusted source, allowed path",
                path,
                source: "10.2.3.4",
                forwarded_proto: "http",
                allowed: true,
            },
            Case {
                name: "loopback listed",
                path,
                source: "127.0.0.1",
                forwarded_proto: "http",
                allowed: true,
            },
            Case {
                name: "untrusted source",
                path,
                source: "192.0.2.1",
                forwarded_proto: "http",
                allowed: false,
            },
            Case {
                name: "other path",
                path: "/other",
                source: "10.2.3.4",
                forwarded_proto: "http",
                allowed: false,
            },
            Case {
                name: "already https: nothing to do",
                path,
                source: "10.2.3.4",
                forwarded_proto: "https",
                allowed: false,
            },
            Case {
                name: "unknown source",
                path,
                source: "",
                forwarded_proto: "http",
                allowed: false,
            },
        ];
        for Case {
            name,
            path,
            source,
            forwarded_proto,
            allowed,
        } in cases
        {
            let headers = ws(&[(":path", path), ("x-forwarded-proto", forwarded_proto)]);
            let d = run(&headers, "HTTP/1.1", source, &p);
            assert_eq!(
                op_value(&d, "x-forwarded-proto") == Some("https"),
                allowed,
                "{name}"
            );
            assert_eq!(
                d.outcomes.contains(&Outcome::PlaintextAllowed),
                allowed,
                "{name}"
            );
        }
        // A plain GET is never let through, whatever its source.
        let get = hdrs(&[(":path", path), ("x-forwarded-proto", "http")]);
        assert!(run(&get, "HTTP/1.1", "10.2.3.4", &p).ops.is_empty());
        // Default policy: never.
        let headers = ws(&[(":path", path), ("x-forwarded-proto", "http")]);
        assert!(run(&headers, "HTTP/1.1", "10.2.3.4", &Policy::default())
            .ops
            .is_empty());
    }

    #[test]
    fn requests_left_alone_are_exactly_those_decide_does_not_touch() {
        let p = policy(
            r#"{"routes": [
              {"name": "sky", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name"},
              {"name": "ui", "pattern": "/c/{cluster}"}
            ]}"#,
        );
        struct Case {
            name: &'static str,
            headers: Vec<(String, String)>,
            /// Whether `leaves_alone` says so.
            want_alone: bool,
        }
        let cases: &[Case] = &[
            Case {
                name: "plain GET",
                headers: hdrs(&[(":path", "/api/v1/pods")]),
                want_alone: true,
            },
            Case {
                name: "no path at all",
                headers: hdrs(&[(":method", "GET")]),
                want_alone: true,
            },
            Case {
                name: "routed prefix",
                headers: hdrs(&[(":path", "/kubernetes-pod-ssh-proxy?cluster_name=a")]),
                want_alone: false,
            },
            Case {
                name: "routed pattern",
                headers: hdrs(&[(":path", "/c/prod/x")]),
                want_alone: false,
            },
            Case {
                name: "forged routing header",
                headers: hdrs(&[(":path", "/"), ("x-wsgate-cluster", "prod")]),
                want_alone: false,
            },
            Case {
                name: "WebSocket upgrade",
                headers: ws(&[(":path", "/")]),
                want_alone: false,
            },
            Case {
                name: "empty upgrade header",
                headers: hdrs(&[(":path", "/"), ("upgrade", "")]),
                want_alone: false,
            },
        ];
        for Case {
            name,
            headers,
            want_alone,
        } in cases
        {
            let view = Headers(headers);
            let path = || view.first(":path").map(String::from);
            let alone = leaves_alone(&path, &|n| view.has(n), &p);
            assert_eq!(alone, *want_alone, "{name}");
            let d = run(headers, "HTTP/1.1", "10.0.0.1", &p);
            if alone {
                assert!(
                    d.changes_nothing(),
                    "{name}: left alone but decide changed it: {d:?}"
                );
            }
        }
    }

    #[test]
    fn routing_decisions() {
        let p = policy(
            r#"{"routes": [
              {"name": "sky", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name",
               "allowedClusters": ["prod"]},
              {"name": "ui", "pattern": "/c/{cluster}", "stripPrefix": true, "authority": "ui.internal",
               "removeHeaders": ["user-agent", "origin"], "setHeaders": {"x-via": "wsgate"}}
            ]}"#,
        );
        let d = run(
            &ws(&[(
                ":path",
                "/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0",
            )]),
            "HTTP/1.1",
            "",
            &p,
        );
        assert_eq!(op_value(&d, "x-wsgate-cluster"), Some("prod"));
        assert!(d.outcomes.contains(&Outcome::Routed));

        let d = run(
            &ws(&[(":path", "/kubernetes-pod-ssh-proxy?cluster_name=staging")]),
            "HTTP/1.1",
            "",
            &p,
        );
        assert_eq!(status(&d), Some((404, "unknown_cluster".into())));

        let d = run(
            &ws(&[(
                ":path",
                "/kubernetes-pod-ssh-proxy?cluster_name=10.0.0.1:22",
            )]),
            "HTTP/1.1",
            "",
            &p,
        );
        assert_eq!(status(&d), Some((400, "invalid_cluster".into())));

        let get = hdrs(&[
            (":path", "/c/dev/api?x=1"),
            ("user-agent", "Mozilla"),
            ("origin", "https://evil"),
        ]);
        let d = run(&get, "HTTP/1.1", "", &p);
        assert_eq!(op_value(&d, "x-wsgate-cluster"), Some("dev"));
        assert_eq!(op_value(&d, ":path"), Some("/api?x=1"));
        assert_eq!(op_value(&d, ":authority"), Some("ui.internal"));
        assert_eq!(op_value(&d, "x-via"), Some("wsgate"));
        assert!(d.ops.contains(&HeaderOp::Remove {
            name: "user-agent".into()
        }));
        assert!(d.ops.contains(&HeaderOp::Remove {
            name: "origin".into()
        }));
        assert!(d.memo.is_none(), "plain requests keep no memo");

        // A forged routing header is removed, on routed and unrouted requests alike.
        let forged = hdrs(&[(":path", "/elsewhere"), ("x-wsgate-cluster", "prod")]);
        let d = run(&forged, "HTTP/1.1", "", &p);
        assert_eq!(
            d.ops,
            vec![HeaderOp::Remove {
                name: "x-wsgate-cluster".into()
            }]
        );
        assert!(d.outcomes.contains(&Outcome::ForgedHeaderRemoved));
        let forged = hdrs(&[(":path", "/c/dev"), ("x-wsgate-cluster", "prod")]);
        let d = run(&forged, "HTTP/1.1", "", &p);
        assert_eq!(op_value(&d, "x-wsgate-cluster"), Some("dev"));
    }

    /// A client never chooses its backend: the default routing header and every rule's header
    /// are removed from every request, whatever the config, upgrade or not, routed or not; a
    /// rule that matches sets its own value after the removal. And the glue's pre-check never
    /// skips a request that carries one.
    #[test]
    fn client_sent_routing_headers_are_always_removed() {
        struct Case {
            name: &'static str,
            config: &'static str,
            headers: Vec<(String, String)>,
            /// The `Remove` operations expected, in order.
            removed: &'static [&'static str],
            /// The routing header a matched rule sets afterwards, and its value.
            routed: Option<(&'static str, &'static str)>,
        }
        let custom = r#"{"routes": [{"pattern": "/c/{cluster}", "header": "x-ui-cluster"}]}"#;
        let two = r#"{"routes": [
          {"pattern": "/c/{cluster}", "header": "x-ui-cluster"},
          {"prefix": "/ssh", "clusterQueryParam": "c"}]}"#;
        let plain = |extra: &[(&str, &str)]| {
            let mut h = hdrs(&[(":path", "/elsewhere"), (":authority", "gw")]);
            h.extend(hdrs(extra));
            h
        };
        let cases = vec![
            Case {
                name: "{}: plain GET with the default header",
                config: "{}",
                headers: plain(&[("x-wsgate-cluster", "prod")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "{}: WebSocket upgrade with the default header",
                config: "{}",
                headers: ws(&[("x-wsgate-cluster", "prod")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "{}: empty value",
                config: "{}",
                headers: plain(&[("x-wsgate-cluster", "")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "{}: two lines, one removal for both",
                config: "{}",
                headers: plain(&[("x-wsgate-cluster", "a"), ("x-wsgate-cluster", "b")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "{}: name in another case",
                config: "{}",
                headers: plain(&[("X-Wsgate-Cluster", "prod")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "{}: nothing sent, nothing removed",
                config: "{}",
                headers: plain(&[]),
                removed: &[],
                routed: None,
            },
            Case {
                name: "empty config input: the same as {}",
                config: "",
                headers: plain(&[("x-wsgate-cluster", "prod")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "custom header rule, unmatched: the default header still removed",
                config: custom,
                headers: plain(&[("x-wsgate-cluster", "prod")]),
                removed: &["x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "custom header rule, unmatched: both removed",
                config: custom,
                headers: plain(&[("x-wsgate-cluster", "prod"), ("x-ui-cluster", "prod")]),
                removed: &["x-ui-cluster", "x-wsgate-cluster"],
                routed: None,
            },
            Case {
                name: "custom header rule, matched: removed, then set to the validated cluster",
                config: custom,
                headers: hdrs(&[
                    (":path", "/c/dev/x"),
                    ("x-ui-cluster", "prod"),
                    ("x-wsgate-cluster", "prod"),
                ]),
                removed: &["x-ui-cluster", "x-wsgate-cluster"],
                routed: Some(("x-ui-cluster", "dev")),
            },
            Case {
                name: "two rules: the other rule's header removed on a match",
                config: two,
                headers: ws(&[(":path", "/ssh?c=dev"), ("x-ui-cluster", "prod")]),
                removed: &["x-ui-cluster"],
                routed: Some(("x-wsgate-cluster", "dev")),
            },
        ];
        for c in cases {
            let p = policy(c.config);
            let d = run(&c.headers, "HTTP/1.1", "", &p);
            assert_eq!(d.action, Action::Continue, "{}", c.name);
            let removed: Vec<&str> = d
                .ops
                .iter()
                .filter_map(|op| match op {
                    HeaderOp::Remove { name } => Some(name.as_str()),
                    HeaderOp::Set { .. } => None,
                })
                .collect();
            assert_eq!(removed, c.removed, "{}", c.name);
            assert_eq!(
                d.outcomes.contains(&Outcome::ForgedHeaderRemoved),
                !c.removed.is_empty(),
                "{}",
                c.name
            );
            if let Some((header, cluster)) = c.routed {
                assert_eq!(op_value(&d, header), Some(cluster), "{}", c.name);
                let set_at = d
                    .ops
                    .iter()
                    .position(|op| matches!(op, HeaderOp::Set { name, .. } if name == header));
                let removed_at = d
                    .ops
                    .iter()
                    .position(|op| matches!(op, HeaderOp::Remove { name } if name == header));
                if let (Some(set_at), Some(removed_at)) = (set_at, removed_at) {
                    assert!(removed_at < set_at, "{}: set before removed", c.name);
                }
            } else {
                assert!(
                    !d.ops
                        .iter()
                        .any(|op| matches!(op, HeaderOp::Set { name, .. } if p.routing_headers.contains(name))),
                    "{}: a routing header was set",
                    c.name
                );
            }
            let view = Headers(&c.headers);
            let path = || view.first(":path").map(String::from);
            let alone = leaves_alone(&path, &|n| view.has(n), &p);
            assert_eq!(alone, d.changes_nothing(), "{}: leaves_alone", c.name);
        }
    }

    /// A header value that was not UTF-8 reaches the core as text with U+FFFD in place of the
    /// client's bytes. The filter never writes such a text back: a request whose non-UTF-8
    /// header it would rewrite is refused (400 `non_utf8_header`, naming the header); one whose
    /// non-UTF-8 headers it only reads goes on with those headers untouched (no op on them).
    #[test]
    fn non_utf8_headers_are_refused_not_altered() {
        struct Case {
            name: &'static str,
            headers: Vec<(String, String)>,
            /// The lines the glue found not UTF-8.
            non_utf8: &'static [&'static str],
            config: &'static str,
            /// `Some((status, reason, header))`: refused; `None`: continues.
            refused: Option<(u32, &'static str, Option<&'static str>)>,
            /// When it continues: every `Set` of these client-derived headers, in order.
            sets: &'static [(&'static str, &'static str)],
        }
        // U+FFFD where the client's obs-text byte was, as the glue's lossy read has it.
        let entry = tok("sekret");
        let lossy_line = format!("{entry}, v5.channel.k8s.io, caf\u{FFFD}");
        let routes = r#"{"routes": [
          {"name": "sky", "prefix": "/kubernetes-pod-ssh-proxy", "clusterQueryParam": "cluster_name"},
          {"name": "ui", "pattern": "/c/{cluster}", "stripPrefix": true, "authority": "ui.internal",
           "removeHeaders": ["user-agent"]}
        ]}"#;
        const SWP: &str = "sec-websocket-protocol";
        let cases = vec![
            Case {
                name: "token and an obs-text entry on one line",
                headers: ws(&[(SWP, &lossy_line)]),
                non_utf8: &[SWP],
                config: "{}",
                refused: Some((400, "non_utf8_header", Some(SWP))),
                sets: &[],
            },
            Case {
                name: "token line, obs-text on another line",
                headers: ws(&[
                    (SWP, &format!("{entry}, v5.channel.k8s.io")),
                    (SWP, "x\u{FFFD}"),
                ]),
                non_utf8: &[SWP],
                config: "{}",
                refused: Some((400, "non_utf8_header", Some(SWP))),
                sets: &[],
            },
            Case {
                name: "keepExisting would still drop the token entry",
                headers: ws(&[(SWP, &lossy_line), ("authorization", "Bearer a")]),
                non_utf8: &[SWP],
                config: r#"{"tokenRewrite": {"existingAuthorization": "keepExisting"}}"#,
                refused: Some((400, "non_utf8_header", Some(SWP))),
                sets: &[],
            },
            Case {
                name: "reject: the conflict is the answer (nothing would be rewritten)",
                headers: ws(&[(SWP, &lossy_line), ("authorization", "Bearer a")]),
                non_utf8: &[SWP],
                config: "{}",
                refused: Some((400, "authorization_conflict", None)),
                sets: &[],
            },
            Case {
                name: "obs-text inside the token entry: its encoding is the error",
                headers: ws(&[(SWP, &format!("{entry}\u{FFFD}, v5.channel.k8s.io"))]),
                non_utf8: &[SWP],
                config: "{}",
                refused: Some((400, "invalid_encoding", None)),
                sets: &[],
            },
            Case {
                name: "no token: only read, untouched",
                headers: ws(&[(SWP, "v5.channel.k8s.io, caf\u{FFFD}")]),
                non_utf8: &[SWP],
                config: "{}",
                refused: None,
                sets: &[],
            },
            Case {
                name: "bare prefix: untouched",
                headers: ws(&[(SWP, &format!("{BEARER_PROTOCOL_PREFIX}, caf\u{FFFD}"))]),
                non_utf8: &[SWP],
                config: "{}",
                refused: None,
                sets: &[],
            },
            Case {
                name: "token rewrite off: untouched",
                headers: ws(&[(SWP, &lossy_line)]),
                non_utf8: &[SWP],
                config: r#"{"tokenRewrite": {"enabled": false}}"#,
                refused: None,
                sets: &[],
            },
            Case {
                name: "a U+FFFD the client really sent (UTF-8) is its own: rewritten",
                headers: ws(&[(SWP, &lossy_line)]),
                non_utf8: &[],
                config: "{}",
                refused: None,
                sets: &[(SWP, "v5.channel.k8s.io,caf\u{FFFD}")],
            },
            Case {
                name: "obs-text elsewhere: the token is still rewritten",
                headers: ws(&[
                    (SWP, &format!("{entry}, v5.channel.k8s.io")),
                    ("x-junk", "\u{FFFD}"),
                ]),
                non_utf8: &["x-junk"],
                config: "{}",
                refused: None,
                sets: &[(SWP, "v5.channel.k8s.io")],
            },
            Case {
                name: "stripPrefix route, obs-text path",
                headers: hdrs(&[(":path", "/c/dev/caf\u{FFFD}")]),
                non_utf8: &[":path"],
                config: routes,
                refused: Some((400, "non_utf8_header", Some(":path"))),
                sets: &[],
            },
            Case {
                name: "stripPrefix route, obs-text path, invalid cluster: the route's answer",
                headers: hdrs(&[(":path", "/c/D\u{FFFD}/x")]),
                non_utf8: &[":path"],
                config: routes,
                refused: Some((400, "invalid_cluster", None)),
                sets: &[],
            },
            Case {
                name: "query route, obs-text path: routed, path untouched",
                headers: ws(&[(
                    ":path",
                    "/kubernetes-pod-ssh-proxy?cluster_name=prod&x=\u{FFFD}",
                )]),
                non_utf8: &[":path"],
                config: routes,
                refused: None,
                sets: &[],
            },
            Case {
                name: "no route matches an obs-text path: untouched",
                headers: hdrs(&[(":path", "/caf\u{FFFD}")]),
                non_utf8: &[":path"],
                config: routes,
                refused: None,
                sets: &[],
            },
            Case {
                name: "obs-text authority: replaced whole by the configured one",
                headers: hdrs(&[(":path", "/c/dev/x"), (":authority", "gw\u{FFFD}")]),
                non_utf8: &[":authority"],
                config: routes,
                refused: None,
                sets: &[(":path", "/x"), (":authority", "ui.internal")],
            },
            Case {
                name: "obs-text in a removed header: removed, nothing written",
                headers: hdrs(&[(":path", "/c/dev/x"), ("user-agent", "caf\u{FFFD}")]),
                non_utf8: &["user-agent"],
                config: routes,
                refused: None,
                sets: &[(":path", "/x"), (":authority", "ui.internal")],
            },
        ];
        let client_derived = [":path", ":authority", SWP];
        for c in cases {
            let p = policy(c.config);
            let d = run_lossy(&c.headers, c.non_utf8, "HTTP/1.1", "", &p);
            match (&d.action, c.refused) {
                (Action::Reply(r), Some((st, reason, header))) => {
                    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                    assert_eq!(
                        (r.status, body["reason"].as_str()),
                        (st, Some(reason)),
                        "{}",
                        c.name
                    );
                    assert_eq!(body["header"].as_str(), header, "{}", c.name);
                    assert_eq!(
                        d.outcomes.contains(&Outcome::NonUtf8Header),
                        reason == "non_utf8_header",
                        "{}",
                        c.name
                    );
                    assert!(!r.body.contains('\u{FFFD}'), "{}: a value echoed", c.name);
                    assert!(
                        !r.body.contains("sekret") && !r.body.contains(&entry),
                        "{}",
                        c.name
                    );
                }
                (Action::Continue, None) => {
                    let sets: Vec<(&str, &str)> = d
                        .ops
                        .iter()
                        .filter_map(|op| match op {
                            HeaderOp::Set { name, value }
                                if client_derived.contains(&name.as_str()) =>
                            {
                                Some((name.as_str(), value.as_str()))
                            }
                            _ => None,
                        })
                        .collect();
                    assert_eq!(sets, c.sets, "{}", c.name);
                    assert!(!d.outcomes.contains(&Outcome::NonUtf8Header), "{}", c.name);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            }
            // Whatever happened, no header is written from a text that was not the client's.
            for op in &d.ops {
                if let HeaderOp::Set { name, value } = op {
                    let from_config = name == ":authority" && value == "ui.internal";
                    assert!(
                        from_config || !c.non_utf8.contains(&name.as_str()),
                        "{}: wrote {name} back from its lossy text",
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn h2_key_repair() {
        let h2: Vec<_> = ws(&[])
            .into_iter()
            .filter(|(k, _)| k != "sec-websocket-key" && k != "connection")
            .collect();
        let d = run(&h2, "HTTP/2", "", &Policy::default());
        // 16 bytes of 7s, standard base64.
        assert_eq!(
            op_value(&d, "sec-websocket-key"),
            Some("BwcHBwcHBwcHBwcHBwcHBw==")
        );
        assert!(d.outcomes.contains(&Outcome::H2KeyAdded));
        // A key already present is kept; HTTP/1.1 is never touched.
        let d = run(&ws(&[]), "HTTP/2", "", &Policy::default());
        assert_eq!(op_value(&d, "sec-websocket-key"), None);
        let h1: Vec<_> = ws(&[])
            .into_iter()
            .filter(|(k, _)| k != "sec-websocket-key")
            .collect();
        assert_eq!(
            op_value(
                &run(&h1, "HTTP/1.1", "", &Policy::default()),
                "sec-websocket-key"
            ),
            None
        );
        let off = policy(r#"{"h2WebSocketKey": false}"#);
        assert_eq!(
            op_value(&run(&h2, "HTTP/2", "", &off), "sec-websocket-key"),
            None
        );
    }

    #[test]
    fn redirect_guard_table() {
        let p = Policy::default();
        let p8443 = policy(r#"{"redirectGuard": {"httpsPort": 8443}}"#);
        let memo = |kind, plaintext, authority: &str| UpgradeMemo {
            kind,
            plaintext,
            authority: authority.into(),
            path: "/ssh?c=a".into(),
        };
        use UpgradeKind::*;
        struct Case<'a> {
            name: &'static str,
            memo: UpgradeMemo,
            /// The upstream response status.
            status: u32,
            /// The upstream `Location`, if any.
            location: Option<&'static str>,
            policy: &'a Policy,
            /// `None`: untouched; `Some(hint)`: a 426 whose URL header is `hint` (`None`: absent).
            want: Option<Option<&'static str>>,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "plaintext 301 → wss same host",
                memo: memo(WebSocket, true, "gw.example.com"),
                status: 301,
                location: Some("https://gw.example.com/ssh?c=a"),
                policy: &p,
                want: Some(Some("wss://gw.example.com/ssh?c=a")),
            },
            Case {
                name: "port 80 dropped",
                memo: memo(WebSocket, true, "gw.example.com:80"),
                status: 301,
                location: None,
                policy: &p,
                want: Some(Some("wss://gw.example.com/ssh?c=a")),
            },
            Case {
                name: "configured TLS port",
                memo: memo(WebSocket, true, "127.0.0.1:10080"),
                status: 301,
                location: None,
                policy: &p8443,
                want: Some(Some("wss://127.0.0.1:8443/ssh?c=a")),
            },
            Case {
                name: "ipv6 authority",
                memo: memo(WebSocket, true, "[::1]:80"),
                status: 308,
                location: None,
                policy: &p,
                want: Some(Some("wss://[::1]/ssh?c=a")),
            },
            Case {
                name: "spdy hint is https",
                memo: memo(Spdy, true, "gw"),
                status: 301,
                location: None,
                policy: &p,
                want: Some(Some("https://gw/ssh?c=a")),
            },
            Case {
                name: "upstream redirect over TLS, absolute",
                memo: memo(WebSocket, false, "gw"),
                status: 302,
                location: Some("https://other.example.com/x"),
                policy: &p,
                want: Some(Some("wss://other.example.com/x")),
            },
            Case {
                name: "upstream redirect, relative",
                memo: memo(WebSocketH2, false, "gw"),
                status: 307,
                location: Some("/new"),
                policy: &p,
                want: Some(Some("wss://gw/new")),
            },
            Case {
                name: "upstream redirect, no location",
                memo: memo(WebSocket, false, "gw"),
                status: 303,
                location: None,
                policy: &p,
                want: Some(None),
            },
            Case {
                name: "200 untouched",
                memo: memo(WebSocket, true, "gw"),
                status: 200,
                location: None,
                policy: &p,
                want: None,
            },
            Case {
                name: "101 untouched",
                memo: memo(WebSocket, true, "gw"),
                status: 101,
                location: None,
                policy: &p,
                want: None,
            },
            Case {
                name: "304 is not a redirect",
                memo: memo(WebSocket, true, "gw"),
                status: 304,
                location: None,
                policy: &p,
                want: None,
            },
        ];
        for Case {
            name,
            memo,
            status,
            location,
            policy,
            want,
        } in cases
        {
            let mut asked = false;
            let got = decide_response(
                &memo,
                status,
                || {
                    asked = true;
                    location.map(String::from)
                },
                policy,
            );
            // `Location` is a host call: only a redirect may ask for it.
            assert_eq!(asked, got.is_some(), "{name}: location asked");
            match want {
                None => assert!(got.is_none(), "{name}"),
                Some(url) => {
                    let r = got.unwrap_or_else(|| panic!("{name}: no reply"));
                    assert_eq!(r.status, 426, "{name}");
                    let hdr = r
                        .headers
                        .iter()
                        .find(|(k, _)| k == wsgate_proto::names::WEBSOCKET_URL_HEADER);
                    assert_eq!(hdr.map(|(_, v)| v.as_str()), url, "{name}");
                }
            }
        }
    }

    #[test]
    fn memo_records_plaintext_state() {
        let d = run(
            &ws(&[("x-forwarded-proto", "http"), (":authority", "gw:80")]),
            "HTTP/1.1",
            "",
            &Policy::default(),
        );
        let m = d.memo.unwrap();
        assert!(m.plaintext);
        assert_eq!(m.authority, "gw:80");
        let d = run(&ws(&[]), "HTTP/1.1", "", &Policy::default());
        assert!(!d.memo.unwrap().plaintext);
        let get = hdrs(&[(":path", "/")]);
        assert!(run(&get, "HTTP/1.1", "", &Policy::default()).memo.is_none());
    }
}
