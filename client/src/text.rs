//! Text from the network made safe to print: every control character escaped, so a server's
//! words (error bodies, close reasons, header values, redirect URLs) cannot drive the user's
//! terminal (ssh passes our stderr straight to it).
//!
//! Escaped: C0 (U+0000–U+001F), DEL, C1 (U+0080–U+009F), the Unicode bidirectional controls
//! (which can make a line read differently from what it holds) and the line/paragraph
//! separators. `\n`, `\r`, `\t` become those two-character forms; other ASCII controls `\xNN`;
//! the rest `\u{NNNN}`. Escaped text holds no control character, so escaping twice changes
//! nothing.

use std::borrow::Cow;
use std::fmt::Write;

/// The most characters of a server's body shown in one message.
pub const MAX_SHOWN: usize = 200;

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every control character escaped (borrowed when there is none).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bytes from the network as one printable line: invalid UTF-8 replaced, whitespace runs
/// (newlines included) folded into one space, controls escaped, at most `max` characters.
pub fn shown_bytes(b: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(b);
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = folded.chars().take(max).collect();
    if folded.chars().nth(max).is_some() {
        out.push('…');
    }
    escape(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_drives_a_terminal() {
        struct Case {
            input: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                input: "plain text, unchanged: é ü ✓",
                want: "plain text, unchanged: é ü ✓",
            },
            Case {
                input: "\x1b[31mred\x1b[0m",
                want: "\\x1b[31mred\\x1b[0m",
            },
            Case {
                input: "bell\x07 cr\r lf\n tab\t nul\0 del\x7f",
                want: "bell\\x07 cr\\r lf\\n tab\\t nul\\x00 del\\x7f",
            },
            Case {
                input: "c1 csi \u{9b}31m",
                want: "c1 csi \\u{009b}31m",
            },
            Case {
                input: "bidi \u{202e}txet\u{202c} \u{2066}x\u{2069} \u{200f}",
                want: "bidi \\u{202e}txet\\u{202c} \\u{2066}x\\u{2069} \\u{200f}",
            },
            Case {
                input: "already \\x1b escaped",
                want: "already \\x1b escaped",
            },
        ];
        for c in cases {
            assert_eq!(escape(c.input), c.want, "{:?}", c.input);
            assert_eq!(escape(&escape(c.input)), c.want, "twice: {:?}", c.input);
        }
        assert!(matches!(escape("fine"), Cow::Borrowed(_)));
    }

    #[test]
    fn bodies_become_one_short_line() {
        assert_eq!(
            shown_bytes(b"RBAC: access denied\n", MAX_SHOWN),
            "RBAC: access denied"
        );
        assert_eq!(
            shown_bytes(b"a\r\n\r\nb \x1b[2J\xff", MAX_SHOWN),
            "a b \\x1b[2J\u{fffd}"
        );
        assert_eq!(shown_bytes(b"abcdef", 3), "abc…");
    }
}
