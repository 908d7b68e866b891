//! The log on stderr: its two formats, and text from outside made safe to put in it.
//!
//! JSON (the default) is for log pipelines: one object per line, the event's fields at the top
//! (the audit trail's among them) and the session's span as `span`. Text is for people: the
//! session's span leads each line, `session{id=3 client=10.0.0.9 user=alice ...}:`.
//!
//! tracing-subscriber's text format writes field values as they are (only the message is
//! guarded against escape sequences), so a user name holding a newline could forge a line.
//! `wsgate_proto::text::Shown` escapes text that came from outside the sidecar before it becomes a
//! field (the client's rule for what it prints).

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
