//! Text from the network made safe to print or log: every control character escaped, so a
//! peer's words (error bodies, close reasons, header values, redirect URLs, user names) cannot
//! drive a terminal (ssh passes the client's stderr straight to it) or forge a log line. One
//! rule for the client's messages and the sidecar's log fields.
//!
//! Escaped: C0 (U+0000–U+001F), DEL, C1 (U+0080–U+009F), the Unicode bidirectional controls
//! (which can make a line read differently from what it holds) and the line/paragraph
//! separators. `\n`, `\r`, `\t` become those two-character forms; other ASCII controls `\xNN`;
//! the rest `\u{NNNN}`. Escaped text holds no control character, so escaping twice changes
//! nothing.

use std::borrow::Cow;
use std::fmt::{self, Write};

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
    let _ = write_escaped(&mut out, s);
    Cow::Owned(out)
}

/// `s` as a `Display` value with every control character escaped, written straight into the
/// formatter (a log field costs no allocation). Quotes and backslashes are shown as they are.
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

/// The one escaping rule, for [`escape`] and [`Shown`].
fn write_escaped<W: Write>(out: &mut W, s: &str) -> fmt::Result {
    for c in s.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if needs_escape(c) && c.is_ascii() => write!(out, "\\x{:02x}", c as u32)?,
            c if needs_escape(c) => write!(out, "\\u{{{:04x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
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

    #[test]
    fn shown_escapes_what_could_forge_a_line() {
        struct Case {
            input: &'static str,
            want: &'static str,
        }
        for c in [
            Case {
                input: "alice",
                want: "alice",
            },
            Case {
                input: "system:serviceaccount:ns:sa",
                want: "system:serviceaccount:ns:sa",
            },
            Case {
                input: "o'brien \"x\" a\\b",
                want: "o'brien \"x\" a\\b",
            },
            Case {
                input: "eve\n2025-01-01T00:00:00Z INFO session started user=root",
                want: "eve\\n2025-01-01T00:00:00Z INFO session started user=root",
            },
            Case {
                input: "\u{1b}[31mred\u{7}\u{7f}\r\t",
                want: "\\x1b[31mred\\x07\\x7f\\r\\t",
            },
            Case {
                input: "\u{9b}31m \u{202e}txt.exe \u{2028}",
                want: "\\u{009b}31m \\u{202e}txt.exe \\u{2028}",
            },
            Case {
                input: "ünïcødé ✓",
                want: "ünïcødé ✓",
            },
        ] {
            assert_eq!(Shown(c.input).to_string(), c.want, "{:?}", c.input);
        }
    }
}
