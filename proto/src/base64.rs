//! Base64 as the Kubernetes apiserver reads it (Go's `RawURLEncoding`) and as WebSocket keys need it.
//!
//! Hand-written rather than a dependency because the exact accept/reject set is the contract:
//! URL-safe alphabet, no padding (`=` is an error, as are `+` and `/`), a length of 4n+1 is an
//! error, non-zero trailing bits are accepted, and CR/LF are skipped (Go's decoder ignores them).

/// Decodes like Go's `base64.RawURLEncoding.DecodeString`; `None` on any error.
pub fn decode_raw_url(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    for b in input.bytes() {
        let v = match b {
            b'\r' | b'\n' => continue,
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone symbol carries 6 bits: not a byte. Go reports it as corrupt input.
    if symbols % 4 == 1 {
        return None;
    }
    Some(out)
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as `Sec-WebSocket-Key` requires.
pub fn encode_std(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(STD[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Encodes like Go's `RawURLEncoding`: what clients put in the subprotocol entry.
pub fn encode_raw_url(input: &[u8]) -> String {
    encode_std(input)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        struct Case {
            name: &'static str,
            input: &'static str,
            want: Option<&'static [u8]>,
        }
        let cases: &[Case] = &[
            Case {
                name: "empty",
                input: "",
                want: Some(b""),
            },
            Case {
                name: "one byte",
                input: "YQ",
                want: Some(b"a"),
            },
            Case {
                name: "two bytes",
                input: "YWI",
                want: Some(b"ab"),
            },
            Case {
                name: "three bytes",
                input: "YWJj",
                want: Some(b"abc"),
            },
            Case {
                name: "url alphabet",
                input: "-_8",
                want: Some(&[0xfb, 0xff]),
            },
            Case {
                name: "padding is an error",
                input: "YQ==",
                want: None,
            },
            Case {
                name: "std alphabet plus is an error",
                input: "+w",
                want: None,
            },
            Case {
                name: "std alphabet slash is an error",
                input: "/w",
                want: None,
            },
            Case {
                name: "4n+1 length is an error",
                input: "YWJjZ",
                want: None,
            },
            Case {
                name: "non-zero trailing bits accepted",
                input: "YR",
                want: Some(b"a"),
            },
            Case {
                name: "non-zero trailing bits accepted (2 bytes)",
                input: "YWJ",
                want: Some(b"ab"),
            },
            Case {
                name: "space is an error",
                input: "YW Jj",
                want: None,
            },
            Case {
                name: "newlines are skipped like Go",
                input: "YW\r\nJj",
                want: Some(b"abc"),
            },
            Case {
                name: "dot is an error",
                input: "YQ.",
                want: None,
            },
        ];
        for Case { name, input, want } in cases {
            assert_eq!(decode_raw_url(input).as_deref(), *want, "{name}");
        }
    }

    #[test]
    fn encode_std_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(encode_std(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn raw_url_round_trips() {
        for len in 0..64usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let enc = encode_raw_url(&data);
            assert!(!enc.contains(['=', '+', '/']), "{enc}");
            assert_eq!(decode_raw_url(&enc).as_deref(), Some(&data[..]));
        }
    }
}
