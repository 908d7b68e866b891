//! The log on stderr and its two formats: JSON (the default) for log pipelines, one object per
//! line with the event's fields at the top (the audit trail's among them); text for people.

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
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish().with(guard)),
        LogFormat::Text => Box::new(builder.finish().with(guard)),
    })
}
