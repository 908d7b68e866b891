//! Names the wire formats share: RFC 1123 labels (clusters), HTTP header names and values, the
//! header the gateway names a WebSocket URL in, and the one a resumable session's ends state
//! their replay buffers in.

/// The header naming the URL a client should use instead of the redirected one.
pub const WEBSOCKET_URL_HEADER: &str = "x-wsgate-websocket-url";

/// The header in which each end of a resumable session states its replay buffer, in bytes: the
/// offer's is the client's, the accepting `101`'s the server's. The peer sizes its
/// acknowledgements to it (docs/resume.md).
pub const REPLAY_BUFFER_HEADER: &str = "x-wsgate-replay-buffer";

/// A [`REPLAY_BUFFER_HEADER`] value: a positive count of bytes in decimal digits, at most 2^40
/// (anything larger is no buffer a session holds).
pub fn parse_replay_buffer(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 13 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| (1..=1 << 40).contains(n))
}

/// RFC 1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends (Kubernetes' `IsDNS1123Label`).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a valid lowercase header name (an RFC 9110 token, lowercase as HTTP/2 needs).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// Whether `s` may be sent as a header value: no control characters (CR, LF, NUL, ...) at all.
pub fn is_header_value(s: &str) -> bool {
    !s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "a-b", "0", "abc123", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64), "ä"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn header_name_and_value_validation() {
        assert!(is_header_name("x-wsgate-cluster"));
        assert!(!is_header_name("X-Upper"));
        assert!(!is_header_name(":path"));
        assert!(!is_header_name("a b"));
        assert!(!is_header_name(""));
        assert!(is_header_value("Bearer abc.def"));
        assert!(is_header_value("ünïcode"));
        for bad in ["a\r\nb", "a\nb", "a\0b", "a\tb", "a\x7fb"] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn replay_buffer_values() {
        for (v, want) in [
            ("8388608", Some(8 << 20)),
            ("1", Some(1)),
            ("1099511627776", Some(1 << 40)),
            ("1099511627777", None),
            ("0", None),
            ("", None),
            ("+5", None),
            ("-5", None),
            (" 5", None),
            ("5 ", None),
            ("4MiB", None),
            ("0x10", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse_replay_buffer(v), want, "{v:?}");
        }
    }
}
