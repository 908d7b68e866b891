//! The log on stderr: its two formats, and text from outside made safe to put in it.
//!
//! JSON (the default) is for log pipelines: one object per line, the event's fields at the top
//! (the audit trail's among them) and the session's span as `span`. Text is for people: the
//! session's span leads each line, `session{id=3 client=10.0.0.9 user=alice ...}:`.
//!
//! tracing-subscriber's text format writes field values as they are (only the message is
//! guarded against escape sequences), so a user name holding a newline could forge a line.
//! [`Shown`] escapes text that came from outside the sidecar before it becomes a field.

use std::fmt::{self, Write as _};

use tracing::Subscriber;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// The sidecar's subscriber: `filter` (tracing's `EnvFilter` syntax, `--log`) in `format`, to
/// `writer` (stderr in `main`, a buffer in tests), the text format in colour only if `colour`
/// (a terminal: escape sequences in a log file are noise). Whatever the filter says, the
/// Kubernetes client's HTTP stack cannot log bodies, which carry tokens
/// ([`crate::kube::log_guard`]).
pub fn subscriber<W>(
    filter: &str,
    format: LogFormat,
    colour: bool,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, ParseError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter)?)
        .with_ansi(colour)
        .with_writer(writer);
    let guard = crate::kube::log_guard();
    Ok(match format {
        // Sessions are the only spans, never nested: the current one says it all, and a list
        // of spans beside it would repeat it on every line.
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish()
                .with(guard),
        ),
        LogFormat::Text => Box::new(builder.finish().with(guard)),
    })
}

/// Text from outside the sidecar (a user name from the API server or the token file, an
/// address from a pod's status) as a log field: every control character escaped, so it cannot
/// break a line, drive a terminal or read differently from what it holds. The rule is the
/// client's for what it prints (`client/src/text.rs`): C0, DEL, C1, the bidirectional controls
/// and the line/paragraph separators; `\n`, `\r`, `\t` as such, other ASCII controls as `\xNN`,
/// the rest as `\u{NNNN}`. Anything else, quotes and backslashes included, is shown as is.
pub struct Shown<'a>(pub &'a str);

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

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.chars().any(needs_escape) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) && c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
                c if needs_escape(c) => write!(f, "\\u{{{:04x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
