//! Names the wire formats share: RFC 1123 labels (clusters), HTTP header names and values, and
//! the header the gateway names a WebSocket URL in.

/// The header naming the URL a client should use instead of the redirected one.
pub const WEBSOCKET_URL_HEADER: &str = "x-wsgate-websocket-url";

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
}
