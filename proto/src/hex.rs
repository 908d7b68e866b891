//! Lower-case hexadecimal, as resumable sessions write their ids and secrets (and the client
//! its log session id): one codec, so what one end writes the other reads exactly.

/// `bytes` as lower-case hex digits, two per byte.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Exactly `2 × N` lower-case hex digits, as `N` bytes; anything else (upper case, a sign,
/// another length) is `None`.
pub fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_lower_case_hex_of_the_length() {
        let b = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(encode(&b), "007fa5ff");
        assert_eq!(decode::<4>("007fa5ff"), Some(b));
        for bad in [
            "007FA5FF",
            "007fa5f",
            "007fa5fff",
            "+07fa5ff",
            "007fa5fg",
            "",
        ] {
            assert_eq!(decode::<4>(bad), None, "{bad:?}");
        }
    }
}
