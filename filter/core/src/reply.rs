//! Every refusal the filter answers itself, mapped in one place to an HTTP status and JSON body.
//!
//! Bodies are `{"error": "<sentence>", "reason": "<code>"}` (plus `url` for the redirect guard,
//! and the header's name, `header`, for `non_utf8_header`).
//! Nothing the client sent is echoed except the authority and path in the `wss://` hint, and
//! never a token.

use serde::Serialize;

use crate::route::RouteError;
use wsgate_proto::names::WEBSOCKET_URL_HEADER;
use wsgate_proto::token::TokenError;

/// Why the filter answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The subprotocol token broke a Kubernetes rule.
    Token(TokenError),
    /// A subprotocol token and an `Authorization` header, with `existingAuthorization: reject`.
    AuthorizationConflict,
    /// A routing rule matched but the cluster was missing, invalid or not allowed.
    Route(RouteError),
    /// An upgrade was answered with a redirect (`status`), which no WebSocket client can follow.
    UpgradeRedirected { status: u32, url: Option<String> },
    /// A header the filter would have to rewrite (named here) is not UTF-8: its text has U+FFFD
    /// in place of the client's bytes, and forwarding that would alter what the client sent.
    NonUtf8Header(&'static str),
}

/// A response the filter sends instead of forwarding (or instead of the upstream's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Rejection {
    pub fn status(&self) -> u32 {
        match self {
            Rejection::Token(_)
            | Rejection::AuthorizationConflict
            | Rejection::NonUtf8Header(_) => 400,
            Rejection::Route(RouteError::UnknownCluster) => 404,
            Rejection::Route(_) => 400,
            Rejection::UpgradeRedirected { .. } => 426,
        }
    }

    /// The stable code in the JSON body (clients and tests match on it).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Token(e) => e.reason(),
            Rejection::AuthorizationConflict => "authorization_conflict",
            Rejection::Route(e) => e.reason(),
            Rejection::UpgradeRedirected { .. } => "upgrade_redirected",
            Rejection::NonUtf8Header(_) => "non_utf8_header",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::Token(e) => e.to_string(),
            Rejection::AuthorizationConflict => "the request carries both an Authorization header \
                 and a subprotocol bearer token; send only one"
                .to_string(),
            Rejection::Route(e) => e.to_string(),
            Rejection::UpgradeRedirected { status, url } => {
                let mut m = format!(
                    "the upgrade was answered with a redirect ({status}), which WebSocket \
                     clients cannot follow"
                );
                if let Some(url) = url {
                    m.push_str("; connect to ");
                    m.push_str(url);
                }
                m
            }
            Rejection::NonUtf8Header(":path") => "the request path has bytes that are not UTF-8 \
                 and this route rewrites it; percent-encode them"
                .to_string(),
            Rejection::NonUtf8Header(name) => format!(
                "the {name} header has bytes that are not UTF-8 and the gateway must rewrite it; \
                 send it as ASCII"
            ),
        }
    }

    pub fn to_reply(&self) -> LocalReply {
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        let url = match self {
            Rejection::UpgradeRedirected { url: Some(url), .. } => Some(url.as_str()),
            _ => None,
        };
        if let Some(url) = url {
            headers.push((WEBSOCKET_URL_HEADER.to_string(), url.to_string()));
        }
        let header = match self {
            Rejection::NonUtf8Header(name) => Some(*name),
            _ => None,
        };
        let body = Body {
            error: self.message(),
            reason: self.reason(),
            url,
            header,
        };
        LocalReply {
            status: self.status(),
            headers,
            // Strings only: serialising cannot fail; an empty body would still be a refusal.
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// The JSON body of a refusal. A struct rather than `serde_json::Value`: the filter then carries
/// no number formatting or map code (the `.wasm` size budget).
#[derive(Serialize)]
struct Body<'a> {
    error: String,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    /// The header's name (never its value), for `non_utf8_header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        struct Case {
            rejection: Rejection,
            status: u32,
            reason: &'static str,
        }
        let cases = [
            Case {
                rejection: Rejection::Token(TokenError::MultipleTokens),
                status: 400,
                reason: "multiple_tokens",
            },
            Case {
                rejection: Rejection::AuthorizationConflict,
                status: 400,
                reason: "authorization_conflict",
            },
            Case {
                rejection: Rejection::Route(RouteError::InvalidCluster),
                status: 400,
                reason: "invalid_cluster",
            },
            Case {
                rejection: Rejection::Route(RouteError::UnknownCluster),
                status: 404,
                reason: "unknown_cluster",
            },
            Case {
                rejection: Rejection::UpgradeRedirected {
                    status: 301,
                    url: None,
                },
                status: 426,
                reason: "upgrade_redirected",
            },
            Case {
                rejection: Rejection::NonUtf8Header("sec-websocket-protocol"),
                status: 400,
                reason: "non_utf8_header",
            },
            Case {
                rejection: Rejection::NonUtf8Header(":path"),
                status: 400,
                reason: "non_utf8_header",
            },
        ];
        for Case {
            rejection,
            status,
            reason,
        } in cases
        {
            let reply = rejection.to_reply();
            assert_eq!(reply.status, status, "{rejection:?}");
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(body["reason"], reason);
            assert!(body["error"].as_str().is_some_and(|s| !s.is_empty()));
            match &rejection {
                Rejection::NonUtf8Header(name) => assert_eq!(body["header"], *name),
                _ => assert!(body.get("header").is_none(), "{rejection:?}"),
            }
        }
    }

    #[test]
    fn redirect_reply_names_the_url() {
        let r = Rejection::UpgradeRedirected {
            status: 301,
            url: Some("wss://gw.example.com/ssh".into()),
        };
        let reply = r.to_reply();
        assert!(reply.headers.contains(&(
            WEBSOCKET_URL_HEADER.into(),
            "wss://gw.example.com/ssh".into()
        )));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["url"], "wss://gw.example.com/ssh");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("wss://gw.example.com/ssh"));
    }
}
