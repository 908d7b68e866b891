//! The Kubernetes subprotocol bearer token, with the apiserver authenticator's exact semantics.
//!
//! Mirrors `k8s.io/apiserver/pkg/authentication/request/websocket/protocol.go`: every
//! `Sec-WebSocket-Protocol` line is split on `,`, entries are trimmed, the prefix match is
//! case-sensitive, the token is Go `RawURLEncoding` base64 and must be UTF-8, two bearer entries
//! are an error (even if one is empty), an empty token leaves the request unchanged, a token needs
//! another subprotocol beside it, and the remaining entries are joined with `,` (Go's
//! `strings.Join`, empty entries included). One addition: a decoded token with control characters
//! is refused, because it would become an injected header line.
//!
//! This module must never log or format a token: [`BearerToken`]'s `Debug` is redacted.

use crate::base64::decode_raw_url;
use crate::names::is_header_value;

/// The subprotocol prefix Kubernetes clients (Headlamp, the dashboard, kubectl) use.
pub const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Why a subprotocol token was refused. `Display` never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("multiple base64url.bearer.authorization.k8s.io tokens specified")]
    MultipleTokens,
    #[error("invalid base64url.bearer.authorization.k8s.io token encoding")]
    InvalidEncoding,
    #[error("invalid base64url.bearer.authorization.k8s.io token: not UTF-8")]
    InvalidUtf8,
    #[error("invalid base64url.bearer.authorization.k8s.io token: contains control characters")]
    ControlCharacters,
    #[error("missing additional subprotocol beside the bearer token")]
    MissingSubprotocol,
}

impl TokenError {
    /// Every variant, for defining one counter each.
    pub const ALL: [TokenError; 5] = [
        TokenError::MultipleTokens,
        TokenError::InvalidEncoding,
        TokenError::InvalidUtf8,
        TokenError::ControlCharacters,
        TokenError::MissingSubprotocol,
    ];

    /// A stable machine-readable code (JSON `reason`, metric names).
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::MultipleTokens => "multiple_tokens",
            TokenError::InvalidEncoding => "invalid_encoding",
            TokenError::InvalidUtf8 => "invalid_utf8",
            TokenError::ControlCharacters => "control_characters",
            TokenError::MissingSubprotocol => "missing_subprotocol",
        }
    }
}

/// A bearer token. Its `Debug` output is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: String) -> Self {
        BearerToken(token)
    }

    /// The secret itself: only for building the `Authorization` header or verifying it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken(<redacted, {} bytes>)", self.0.len())
    }
}

/// A token found in the subprotocol list, and the list without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubprotocolToken {
    pub token: BearerToken,
    /// The other entries, joined with `,` as the apiserver does: the new header value.
    pub remaining: String,
}

/// Scans every `Sec-WebSocket-Protocol` line. `Ok(None)`: no token (or the bare prefix), leave
/// the request unchanged. The caller checks that the request is a WebSocket upgrade first.
pub fn extract<'a>(
    protocol_lines: impl IntoIterator<Item = &'a str>,
) -> Result<Option<SubprotocolToken>, TokenError> {
    let mut token: Option<String> = None;
    let mut saw_token = false;
    let mut filtered: Vec<&str> = Vec::new();
    for line in protocol_lines {
        for entry in line.split(',') {
            let entry = trim_go_space(entry);
            let Some(encoded) = entry.strip_prefix(BEARER_PROTOCOL_PREFIX) else {
                filtered.push(entry);
                continue;
            };
            if saw_token {
                return Err(TokenError::MultipleTokens);
            }
            saw_token = true;
            let decoded = decode_raw_url(encoded).ok_or(TokenError::InvalidEncoding)?;
            let text = String::from_utf8(decoded).map_err(|_| TokenError::InvalidUtf8)?;
            if !is_header_value(&text) {
                return Err(TokenError::ControlCharacters);
            }
            token = Some(text);
        }
    }
    let token = match token {
        Some(t) if !t.is_empty() => t,
        _ => return Ok(None),
    };
    if filtered.is_empty() {
        return Err(TokenError::MissingSubprotocol);
    }
    Ok(Some(SubprotocolToken {
        token: BearerToken(token),
        remaining: filtered.join(","),
    }))
}

/// Go's `strings.TrimSpace` for the ASCII whitespace a header can hold.
fn trim_go_space(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64::encode_raw_url;

    fn entry(token: &str) -> String {
        format!(
            "{BEARER_PROTOCOL_PREFIX}{}",
            encode_raw_url(token.as_bytes())
        )
    }

    type Want = Result<Option<(&'static str, &'static str)>, TokenError>;

    fn check(name: &str, lines: &[&str], want: Want) {
        let got = extract(lines.iter().copied());
        let got = got.map(|o| o.map(|t| (t.token.expose().to_string(), t.remaining)));
        let want = want.map(|o| o.map(|(t, r)| (t.to_string(), r.to_string())));
        assert_eq!(got, want, "case: {name}");
    }

    #[test]
    fn apiserver_semantics_table() {
        let tok = entry("my-token");
        let tok2 = entry("other");
        struct Case {
            name: &'static str,
            lines: Vec<String>,
            want: Want,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "no header lines",
                lines: vec![],
                want: Ok(None),
            },
            Case {
                name: "no bearer entry",
                lines: vec!["v4.channel.k8s.io".into()],
                want: Ok(None),
            },
            Case {
                name: "token beside a protocol, same line",
                lines: vec![format!("{tok}, v5.channel.k8s.io")],
                want: Ok(Some(("my-token", "v5.channel.k8s.io"))),
            },
            Case {
                name: "token first on its own line, protocols on another",
                lines: vec![tok.clone(), "v4.channel.k8s.io, channel.k8s.io".into()],
                want: Ok(Some(("my-token", "v4.channel.k8s.io,channel.k8s.io"))),
            },
            Case {
                name: "remaining entries joined with a bare comma",
                lines: vec![format!(" base64.channel.k8s.io ,{tok},  binary.k8s.io ")],
                want: Ok(Some(("my-token", "base64.channel.k8s.io,binary.k8s.io"))),
            },
            Case {
                name: "token alone is an error",
                lines: vec![tok.clone()],
                want: Err(TokenError::MissingSubprotocol),
            },
            Case {
                name: "empty entry counts as another protocol (apiserver quirk)",
                lines: vec![format!("{tok},")],
                want: Ok(Some(("my-token", ""))),
            },
            Case {
                name: "bare prefix passes unchanged",
                lines: vec![format!("{BEARER_PROTOCOL_PREFIX}, v4.channel.k8s.io")],
                want: Ok(None),
            },
            Case {
                name: "bare prefix alone passes unchanged",
                lines: vec![BEARER_PROTOCOL_PREFIX.into()],
                want: Ok(None),
            },
            Case {
                name: "two tokens on one line",
                lines: vec![format!("{tok}, {tok2}, v4.channel.k8s.io")],
                want: Err(TokenError::MultipleTokens),
            },
            Case {
                name: "two tokens on two lines",
                lines: vec![format!("{tok}, v4.channel.k8s.io"), tok2.clone()],
                want: Err(TokenError::MultipleTokens),
            },
            Case {
                name: "two entries, one empty, is still an error",
                lines: vec![format!(
                    "{BEARER_PROTOCOL_PREFIX}, {tok}, v4.channel.k8s.io"
                )],
                want: Err(TokenError::MultipleTokens),
            },
            Case {
                name: "prefix match is case-sensitive",
                lines: vec![format!(
                    "Base64url.bearer.authorization.k8s.io.{}, v4.channel.k8s.io",
                    encode_raw_url(b"x")
                )],
                want: Ok(None),
            },
            Case {
                name: "padding is an encoding error",
                lines: vec![format!("{BEARER_PROTOCOL_PREFIX}YQ==, v4.channel.k8s.io")],
                want: Err(TokenError::InvalidEncoding),
            },
            Case {
                name: "standard alphabet is an encoding error",
                lines: vec![format!("{BEARER_PROTOCOL_PREFIX}a+b/, v4.channel.k8s.io")],
                want: Err(TokenError::InvalidEncoding),
            },
            Case {
                name: "non-zero trailing bits are accepted",
                lines: vec![format!("{BEARER_PROTOCOL_PREFIX}YR, v4.channel.k8s.io")],
                want: Ok(Some(("a", "v4.channel.k8s.io"))),
            },
            Case {
                name: "non-UTF-8 token",
                lines: vec![format!(
                    "{BEARER_PROTOCOL_PREFIX}{}, v4.channel.k8s.io",
                    encode_raw_url(&[0xff, 0xfe])
                )],
                want: Err(TokenError::InvalidUtf8),
            },
            Case {
                name: "CRLF in the token is header injection",
                lines: vec![format!(
                    "{}, v4.channel.k8s.io",
                    entry("tok\r\nx-admin: true")
                )],
                want: Err(TokenError::ControlCharacters),
            },
            Case {
                name: "NUL in the token",
                lines: vec![format!("{}, v4.channel.k8s.io", entry("a\0b"))],
                want: Err(TokenError::ControlCharacters),
            },
            Case {
                name: "first error wins, like the apiserver's loop",
                lines: vec![format!(
                    "{BEARER_PROTOCOL_PREFIX}!!, {tok}, v4.channel.k8s.io"
                )],
                want: Err(TokenError::InvalidEncoding),
            },
            Case {
                name: "empty lines are entries too",
                lines: vec!["".into(), tok.clone()],
                want: Ok(Some(("my-token", ""))),
            },
            Case {
                name: "tabs around entries are trimmed",
                lines: vec![format!("\t{tok}\t,\tv4.channel.k8s.io\t")],
                want: Ok(Some(("my-token", "v4.channel.k8s.io"))),
            },
        ];
        for Case { name, lines, want } in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            check(name, &lines, want);
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = extract([format!("{}, a", entry("s3cr3t")).as_str()])
            .unwrap()
            .unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        for e in TokenError::ALL {
            assert!(!e.to_string().contains("s3cr3t"));
        }
    }
}
