//! Where the settings come from: command-line flags, `WSGATE_*` environment variables and the
//! `--config` file (clap derive: these doc comments are `--help`), read fail-closed into
//! [`Args`]. What the values mean, and whether they fit together, is [`crate::config`]'s
//! business; nothing here opens a socket or reads a file other than the config file.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::kube::ReviewLimits;

/// wsgate-sidecar: a WebSocket ↔ SSH bridge that speaks SkyPilot's framing.
///
/// Serves `GET /kubernetes-pod-ssh-proxy?cluster_name=<c>&worker=<n>&client_version=<v>`
/// (and optionally a generic path), authenticates the caller, and bridges binary WebSocket
/// frames to the target sshd. Never an open proxy: requests name a cluster, not a host.
#[derive(Debug, Parser)]
#[command(name = "wsgate-sidecar", version, after_help = AFTER_HELP)]
pub struct Args {
    /// A file of `WSGATE_NAME=value` lines (`#` comments), naming the environment variables
    /// below; flags and real environment variables win over it. A name that is not a setting
    /// is an error, as is any unknown `WSGATE_*` environment variable.
    #[arg(long, env = "WSGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address for WebSocket sessions (also serves /healthz and /readyz).
    #[arg(long, env = "WSGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address for /metrics, /sessions, /healthz and /readyz. Keep it off the public network.
    #[arg(long, env = "WSGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Pod-side mode: the one SSH target every session goes to (this pod's sshd).
    /// Default 127.0.0.1:22 unless --kube-selector selects central mode.
    #[arg(long, env = "WSGATE_TARGET")]
    pub target: Option<String>,

    /// Central mode: find a cluster's pods by this label selector, `{cluster}` replaced by the
    /// requested (validated) cluster name, e.g. `skypilot-cluster-name={cluster}`.
    #[arg(long, env = "WSGATE_KUBE_SELECTOR")]
    pub kube_selector: Option<String>,

    /// Central mode: the namespace of the pods (default: the client's default namespace).
    #[arg(long, env = "WSGATE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,

    /// The longest one Kubernetes API call (TokenReview, SubjectAccessReview, pod list) may
    /// take; past it the handshake is refused with 503 (fail closed, never a hang).
    #[arg(long, env = "WSGATE_KUBE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,

    /// Central mode: the SSH port on the pods.
    #[arg(long, env = "WSGATE_KUBE_PORT", default_value_t = 22)]
    pub kube_port: u16,

    /// Central mode: the label (`key=value`) of a cluster's head pod, which is worker 0; the
    /// others are workers 1.. in natural name order. Without it, worker n is the n-th pod.
    #[arg(
        long,
        env = "WSGATE_KUBE_HEAD_LABEL",
        default_value = "ray-node-type=head"
    )]
    pub kube_head_label: String,

    /// Pod-side mode: the cluster this pod serves; requests naming another get 404.
    #[arg(long, env = "WSGATE_CLUSTER")]
    pub cluster: Option<String>,

    /// Only these clusters (comma-separated); any other gets 404.
    #[arg(long, env = "WSGATE_ALLOWED_CLUSTERS", value_delimiter = ',')]
    pub allowed_clusters: Vec<String>,

    /// A generic endpoint besides SkyPilot's, with one `{cluster}` segment, e.g. `/ssh/{cluster}`.
    #[arg(long, env = "WSGATE_PATH")]
    pub path: Option<String>,

    /// How callers authenticate: a token file, a Kubernetes TokenReview, or none (needs
    /// --allow-unauthenticated).
    #[arg(long, env = "WSGATE_AUTH", value_enum, default_value = "token-file")]
    pub auth: AuthMode,

    /// Token file for --auth token-file: lines of `<token or sha256:hex> <user> [groups]`;
    /// reloaded when it changes.
    #[arg(long, env = "WSGATE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// --auth token-review: audiences the token must be meant for (comma-separated or
    /// repeated).
    // The old spelling of the flag (singular) stays as a hidden alias.
    #[arg(
        long,
        alias = "token-review-audience",
        env = "WSGATE_TOKEN_REVIEW_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_review_audiences: Vec<String>,

    /// --auth token-review: how long an accepted token is remembered.
    #[arg(long, env = "WSGATE_AUTH_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,

    /// --auth token-review: TokenReviews in flight at once; past it, a token not in the cache
    /// gets 503 with Retry-After (cached tokens are not affected). A healthy API server answers
    /// in milliseconds, so the default carries hundreds a second; more only load a struggling
    /// one.
    #[arg(
        long,
        env = "WSGATE_TOKEN_REVIEW_MAX_CONCURRENCY",
        default_value_t = ReviewLimits::DEFAULT.max_concurrency
    )]
    pub token_review_max_concurrency: usize,

    /// --auth token-review: TokenReviews per second, sustained (a flood of distinct bad tokens
    /// costs the API server at most this); past it, 503 with Retry-After.
    #[arg(long, env = "WSGATE_TOKEN_REVIEW_RATE", default_value_t = ReviewLimits::DEFAULT.rate)]
    pub token_review_rate: f64,

    /// --auth token-review: TokenReviews that may go at once after a quiet spell (a team
    /// reconnecting after a restart, with an empty cache), above --token-review-rate.
    #[arg(long, env = "WSGATE_TOKEN_REVIEW_BURST", default_value_t = ReviewLimits::DEFAULT.burst)]
    pub token_review_burst: u32,

    /// Confirms --auth none: anyone who reaches the port gets a shell prompt from sshd.
    #[arg(long, env = "WSGATE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Static authorization policy (JSON: users/groups → cluster patterns); default: allow all
    /// authenticated users.
    #[arg(long, env = "WSGATE_AUTHZ_POLICY")]
    pub authz_policy: Option<PathBuf>,

    /// Also ask the API server (SubjectAccessReview) whether the user may --authz-sar-verb
    /// the cluster, as a resource named after it.
    #[arg(long, env = "WSGATE_AUTHZ_SAR")]
    pub authz_sar: bool,

    /// SubjectAccessReview verb.
    #[arg(long, env = "WSGATE_AUTHZ_SAR_VERB", default_value = "ssh")]
    pub authz_sar_verb: String,

    /// SubjectAccessReview API group.
    #[arg(long, env = "WSGATE_AUTHZ_SAR_GROUP", default_value = "wsgate.io")]
    pub authz_sar_group: String,

    /// SubjectAccessReview resource.
    #[arg(long, env = "WSGATE_AUTHZ_SAR_RESOURCE", default_value = "clusters")]
    pub authz_sar_resource: String,

    /// SubjectAccessReview namespace (none: cluster-scoped).
    #[arg(long, env = "WSGATE_AUTHZ_SAR_NAMESPACE")]
    pub authz_sar_namespace: Option<String>,

    /// Sessions open at once, overall; past it new ones get 503.
    #[arg(long, env = "WSGATE_MAX_SESSIONS", default_value_t = 1024)]
    pub max_sessions: usize,

    /// Sessions open at once per user; past it new ones get 429.
    #[arg(long, env = "WSGATE_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: usize,

    /// Client connections open at once on --listen, HTTP and upgraded sessions alike (each
    /// holds a file descriptor; a session holds a second one, to its target). Past it, new
    /// connections wait in the kernel's listen queue, unanswered, until one closes; idle and
    /// slow ones are closed by --keepalive-timeout and --header-read-timeout. At least
    /// --max-sessions. The admin listener has its own limit of 64.
    #[arg(long, env = "WSGATE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest WebSocket frame payload, both ways (bytes).
    #[arg(long, env = "WSGATE_MAX_FRAME_SIZE", default_value_t = 65536)]
    pub max_frame_size: usize,

    /// Bytes read from a client per read at most (bytes): fewer syscalls per GiB on a busy
    /// session. Pages are touched only as data arrives, so an idle session does not pay for it.
    /// Keep it a few client frames deep (`wsgate proxy` sends 64 KiB frames): at 64 KiB a
    /// 1 GiB push cost the sidecar 2-3x the CPU it costs at 256 KiB; 1 MiB gained nothing.
    #[arg(long, env = "WSGATE_WS_READ_BUFFER", default_value_t = 256 * 1024)]
    pub ws_read_buffer: usize,

    /// Server WebSocket pings every this long (0 disables).
    #[arg(long, env = "WSGATE_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Unanswered pings before the session is closed (1011).
    #[arg(long, env = "WSGATE_MAX_MISSED_PONGS", default_value_t = 3)]
    pub max_missed_pongs: u32,

    /// Each request head must be complete within this (the first from the connection, a later
    /// one on a kept-alive connection from its first byte); slower clients are disconnected
    /// (slowloris). A `101` answer must be taken by the client within it too.
    #[arg(long, env = "WSGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a kept-alive connection may wait for the first byte of its next request
    /// (then --header-read-timeout applies to that head); 0 turns keep-alive off. Set the
    /// gateway's upstream idle timeout (Istio: DestinationRule
    /// connectionPool.http.idleTimeout) below it, so the gateway never reuses a connection
    /// this side is closing.
    #[arg(long, env = "WSGATE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// From request to upgrade: authentication, target lookup and connect. An upgrade whose
    /// `101` is not delivered within it again is given up (`upgrade_failed`).
    #[arg(long, env = "WSGATE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// TCP connect to the target.
    #[arg(long, env = "WSGATE_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Close sessions with no bytes either way for this long (0: never).
    #[arg(long, env = "WSGATE_IDLE_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Close sessions older than this (0: never).
    #[arg(long, env = "WSGATE_MAX_SESSION_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_session_age: Duration,

    /// After SIGTERM, how long sessions may go on before they are closed with 1001; requests
    /// still in progress then are dropped.
    #[arg(long, env = "WSGATE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Resumable sessions (docs/resume.md): a client that offers them (`x-wsgate-resume: new`,
    /// as `wsgate proxy` does) gets them, and when its connection drops the target connection
    /// is kept for --resume-window so that it can come back. Clients that do not offer them see
    /// no change. On by default: `--resume=false` (`WSGATE_RESUME=false`) turns it off, and
    /// then the offer is ignored and every resume refused (404).
    #[arg(
        long,
        env = "WSGATE_RESUME",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub resume: bool,

    /// How long a session whose client connection dropped waits for the client to resume it;
    /// then its target connection is closed (`resume_expired`). Above 0, at most 24h. While it
    /// waits, the session still counts against --max-sessions and keeps its replay buffer.
    #[arg(long, env = "WSGATE_RESUME_WINDOW", default_value = "3m", value_parser = humantime::parse_duration)]
    pub resume_window: Duration,

    /// Resumable sessions: the target's bytes kept per session until the client acknowledges
    /// them, to replay after a drop (bytes, 262144 to 268435456). The memory bound per session:
    /// when it is full, the target is not read until acknowledgements arrive.
    #[arg(long, env = "WSGATE_REPLAY_BUFFER", default_value_t = 4 << 20)]
    pub replay_buffer: usize,

    /// Proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` and
    /// `x-envoy-external-address` headers name the original client in the audit trail, e.g.
    /// the ingress gateway's pod network. From any other peer the headers are ignored and the
    /// peer is the client. Default: none. Used only for the audit, never to grant access.
    #[arg(long, env = "WSGATE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Log filter (tracing's EnvFilter syntax: `info`, `debug`, `wsgate_sidecar=debug,info`).
    /// Whatever it says, the Kubernetes client's HTTP libraries log at most INFO, and kube-rs
    /// at most ERROR: more verbose, they print request and response bodies, and a TokenReview
    /// carries the caller's token. No level logs a token.
    #[arg(long, env = "WSGATE_LOG", default_value = "info")]
    pub log: String,

    /// Log format on stderr (the audit trail is part of it).
    #[arg(long, env = "WSGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    TokenFile,
    TokenReview,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// What `--help` says after the flags: how the three sources combine.
const AFTER_HELP: &str = "\
Settings: every flag above can also be set by its environment variable, or by a line \
`WSGATE_NAME=value` of the --config file. A flag wins over the environment, the environment \
over the file. A WSGATE_* name that is not a setting, in the environment or in the file, stops \
the sidecar at start, so a typo cannot quietly leave a protection off.";

/// Settings that cannot be read, named by where the value or the name came from.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file cannot be read, or a line of it is not `NAME=value`.
    #[error("--config: {0}")]
    File(String),
    /// Every unknown name, bad value or unreadable file found in the environment and the
    /// config file, one line each, so one start shows all of them.
    #[error("{}", .0.join("\n"))]
    Settings(Vec<String>),
    /// clap's own error about the command line; `--help` and `--version` come this way too
    /// (clap prints them and exits 0: see `clap::Error::exit`).
    #[error(transparent)]
    Clap(clap::Error),
}

/// The program name clap reports in messages when argv has none.
const BIN: &str = "wsgate-sidecar";

/// Every setting's environment variable starts with this.
pub const ENV_PREFIX: &str = "WSGATE_";

/// Names the config file, so the file cannot set it.
const CONFIG_ENV: &str = "WSGATE_CONFIG";

/// `WSGATE_*` variables of wsgate's other programs and of this repository's build and test
/// tooling, with who reads them. A shell or CI job that runs several of them (`make test` sets
/// `WSGATE_WASM` for the suite that starts this sidecar) carries them, and the sidecar must
/// start there. They are ignored in the environment only (the file is the sidecar's alone).
/// They are exact names, each at least three edits away from every setting (a unit test
/// checks), so ignoring them cannot hide a typo of a setting; an end-to-end test fails when
/// the repository uses a `WSGATE_*` name that is neither a setting nor listed here.
const OTHER_PROGRAMS: &[OtherProgram] = &[
    OtherProgram::new("WSGATE_TOKEN", "the wsgate client"),
    OtherProgram::new("WSGATE_CA_FILE", "the wsgate client"),
    OtherProgram::new("WSGATE_CLIENT", "the test bed"),
    OtherProgram::new("WSGATE_SIDECAR", "the test bed"),
    OtherProgram::new("WSGATE_ENVOY", "the test bed"),
    OtherProgram::new("WSGATE_WASM", "the test bed"),
    OtherProgram::new("WSGATE_BENCH", "the benchmarks"),
    OtherProgram::new("WSGATE_VENV", "testenv/setup.sh"),
    OtherProgram::new("WSGATE_SKY_VENV", "testenv/setup.sh"),
    OtherProgram::new("WSGATE_KIND_CLUSTER", "the kind scripts"),
    OtherProgram::new("WSGATE_KIND_WORK", "the kind scripts"),
    OtherProgram::new("WSGATE_CRASH_WASM", "the test bed"),
    OtherProgram::new("WSGATE_REGISTRY_PORT", "the kind scripts"),
    OtherProgram::new("WSGATE_REGISTRY_NAME", "the kind scripts"),
    OtherProgram::new("WSGATE_KIND_HTTP_PORT", "the kind scripts"),
    OtherProgram::new("WSGATE_KIND_HTTPS_PORT", "the kind scripts"),
    OtherProgram::new("WSGATE_E2E_RUN_ID", "the kind scripts"),
    OtherProgram::new("WSGATE_GIT_HASH", "the filter's build"),
];

/// A `WSGATE_*` name that belongs to another program.
struct OtherProgram {
    /// The variable's exact name.
    name: &'static str,
    /// Who reads it, for the message when it shows up in the config file.
    reader: &'static str,
}

impl OtherProgram {
    const fn new(name: &'static str, reader: &'static str) -> OtherProgram {
        OtherProgram { name, reader }
    }
}

fn other_program(name: &str) -> Option<&'static str> {
    OTHER_PROGRAMS
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.reader)
}

/// One `NAME=value` line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLine {
    pub name: String,
    pub value: String,
    /// 1-based, for messages.
    pub line: usize,
}

/// Reads a config file of `NAME=value` lines: blank lines and `#` comments are skipped, spaces
/// around the name and the value and double quotes around the value are dropped. Only the
/// syntax is checked here ([`Args::load`] checks the names). A name given twice is an error:
/// which line wins would be a guess a reader should not have to make.
pub fn read_config_file(path: &Path) -> Result<Vec<FileLine>, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError::File(format!("{}: {e}", path.display())))?;
    let mut out: Vec<FileLine> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| SettingsError::File(format!("{at}: want NAME=value")))?;
        let name = k.trim().to_string();
        if let Some(first) = out.iter().find(|l| l.name == name) {
            return Err(SettingsError::File(format!(
                "{at}: {name} is already set on line {}",
                first.line
            )));
        }
        out.push(FileLine {
            name,
            value: v.trim().trim_matches('"').to_string(),
            line: i + 1,
        });
    }
    Ok(out)
}

/// Where a value or a name came from, for messages that point at it.
#[derive(Debug, Clone)]
enum Origin {
    Env,
    File(PathBuf, usize),
}

impl Origin {
    /// `environment variable NAME`, or `path:line: NAME`.
    fn at(&self, name: &str) -> String {
        match self {
            Origin::Env => format!("environment variable {name}"),
            Origin::File(path, line) => format!("{}:{line}: {name}", path.display()),
        }
    }
}

/// The known name closest to `name` (compared upper-case, with the prefix added if it lacks
/// it), if close enough to be a likely typo: at most 2 edits, or a third of the length after
/// the prefix for longer names.
fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let upper = name.to_ascii_uppercase();
    let name = if upper.starts_with(ENV_PREFIX) {
        upper
    } else {
        format!("{ENV_PREFIX}{upper}")
    };
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(&name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len().saturating_sub(ENV_PREFIX.len()) / 3))
        .min()
        .map(|(_, k)| k)
}

/// If `name` has the shape of a variable Kubernetes sets in a pod for each Service of its
/// namespace (service links: `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<port name>]`,
/// `<SVC>_PORT`, `<SVC>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`), the Service's name. Used only to
/// explain an unknown name: it is refused all the same, since a typo can have these shapes too.
fn service_link(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('_').collect();
    let n = parts.len();
    let at = |i: usize| parts.get(i).copied().unwrap_or("");
    let numbered = |i: usize| {
        at(i) == "PORT"
            && !at(i + 1).is_empty()
            && at(i + 1).bytes().all(|b| b.is_ascii_digit())
            && matches!(at(i + 2), "TCP" | "UDP" | "SCTP")
            && (n == i + 3 || (n == i + 4 && matches!(at(i + 3), "PROTO" | "PORT" | "ADDR")))
    };
    let end = (1..n)
        .find(|&i| numbered(i))
        .or_else(|| {
            n.checked_sub(2)
                .filter(|&i| at(i) == "SERVICE" && at(i + 1) == "HOST")
        })
        .or_else(|| (1..n).find(|&i| at(i) == "SERVICE" && at(i + 1) == "PORT"))
        .or_else(|| n.checked_sub(1).filter(|&i| at(i) == "PORT"))?;
    parts
        .get(..end)
        .filter(|p| !p.is_empty())
        .map(|p| p.join("-").to_ascii_lowercase())
}

/// How to get rid of service-link variables, said once after the names.
fn service_links_note(services: &BTreeSet<String>) -> String {
    let names: Vec<String> = services.iter().map(|s| format!("`{s}`")).collect();
    format!(
        "Kubernetes sets variables named after every Service of a pod's namespace (service \
         links; here of {}): set `enableServiceLinks: false` in the pod spec (the shipped \
         manifests do), or rename the Service",
        names.join(", ")
    )
}

/// One line about a name that is not a setting: where it is, and what it might be instead.
fn unknown_line<'a>(
    origin: &Origin,
    name: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut line = format!("{} is not a setting", origin.at(name));
    if let Some(who) = other_program(name) {
        line.push_str(&format!(" (it is read by {who}, not by the sidecar)"));
    }
    if let (Origin::Env, Some(svc)) = (origin, service_link(name)) {
        line.push_str(&format!(
            " (a Kubernetes service link of a Service named `{svc}`?)"
        ));
    }
    if let Some(k) = closest(name, known) {
        line.push_str(&format!("; did you mean {k}?"));
    }
    line
}

/// clap's message without its `error: ` lead and its usage footer, to fit in one line of ours.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let head: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    head.join(" ").trim_start_matches("error: ").to_string()
}

/// The command-line argument that carries `value` for `arg`: `--long=value`, or for a switch
/// `--long` when the value turns it on and nothing when it leaves it off. The value is checked
/// by clap's own parser for the argument, so a bad one is reported with where it came from.
fn as_flag(parser: &Command, arg: &Arg, value: &OsStr) -> Result<Option<OsString>, String> {
    let long = arg.get_long().ok_or("has no --flag to carry it")?;
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            // What clap accepted for a switch from the environment: its own value parser (for a
            // `bool` field, exactly `true` or `false`).
            let probe = Command::new(BIN).no_binary_name(true).arg(
                Arg::new("value")
                    .required(true)
                    .allow_hyphen_values(true)
                    .value_parser(arg.get_value_parser().clone()),
            );
            let matches = probe
                .try_get_matches_from([value])
                .map_err(|e| clap_reason(&e).replace("'<value>'", &format!("'--{long}'")))?;
            let set = matches
                .try_get_one::<bool>("value")
                .ok()
                .flatten()
                .copied()
                .ok_or("is not a true/false switch")?;
            let on = set == matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(on.then(|| OsString::from(format!("--{long}"))))
        }
        action if action.takes_values() => {
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(value);
            parser
                .clone()
                .try_get_matches_from([OsString::from(BIN), flag.clone()])
                .map_err(|e| clap_reason(&e))?;
            Ok(Some(flag))
        }
        _ => Err("cannot be set from the environment or a file".into()),
    }
}

impl Args {
    /// Reads the settings from the command line `argv` (program name first), the environment
    /// `env` (`std::env::vars_os()` in `main`; tests pass their own) and the `--config` file it
    /// names, without changing the process environment.
    ///
    /// Each setting comes from the first of: its flag, its `WSGATE_*` variable, its file line.
    /// Every value given is checked, even one that is overridden. A `WSGATE_*` name that is
    /// not a setting, in the environment or the file, is an error naming it (and its line) and
    /// the closest setting.
    pub fn load<A, E>(argv: A, env: E) -> Result<Args, SettingsError>
    where
        A: IntoIterator,
        A::Item: Into<OsString>,
        E: IntoIterator<Item = (OsString, OsString)>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        // The settings are clap's own arguments that have an environment name, so a new flag is
        // known here without a list to update.
        let mut defined = Args::command();
        defined.build();
        let settings: BTreeMap<&str, &Arg> = defined
            .get_arguments()
            .filter_map(|a| Some((a.get_env()?.to_str()?, a)))
            .collect();
        let known = || settings.keys().copied();
        // Parsing runs on a copy without clap's environment lookup (which would read the process
        // environment itself): environment and file values are handed to it as flags below, so
        // one place decides precedence, each bad value is reported with where it came from, and
        // tests need not change the process environment.
        let parser = Args::command().mut_args(|a| a.env(None::<&'static str>));
        let cli = match parser.clone().try_get_matches_from(&argv) {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                // The copy's help lacks the `[env: ...]` notes; the full definition's has them.
                let full = Args::command().try_get_matches_from(&argv).err();
                return Err(SettingsError::Clap(full.unwrap_or(e)));
            }
            Err(e) => return Err(SettingsError::Clap(e)),
        };

        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        let mut from_env: BTreeMap<&str, OsString> = BTreeMap::new();
        for (key, value) in env {
            let Some(name) = key.to_str() else {
                // Not UTF-8, so not a setting; refused if it claims the prefix.
                if key.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
                    unknown.push(key.to_string_lossy().into_owned());
                }
                continue;
            };
            match settings.get_key_value(name) {
                Some((setting, _)) => {
                    from_env.insert(setting, value);
                }
                None if !name.starts_with(ENV_PREFIX) || other_program(name).is_some() => {}
                None => unknown.push(name.to_string()),
            }
        }
        unknown.sort();
        for name in &unknown {
            problems.push(unknown_line(&Origin::Env, name, known()));
        }
        let services: BTreeSet<String> = unknown.iter().filter_map(|n| service_link(n)).collect();
        if !services.is_empty() {
            problems.push(service_links_note(&services));
        }

        let config = match cli.value_source("config") {
            Some(ValueSource::CommandLine) => {
                cli.try_get_one::<PathBuf>("config").ok().flatten().cloned()
            }
            _ => from_env.get(CONFIG_ENV).map(PathBuf::from),
        };
        let mut from_file: BTreeMap<&str, (OsString, Origin)> = BTreeMap::new();
        if let Some(path) = &config {
            match read_config_file(path) {
                Err(e) => problems.push(e.to_string()),
                Ok(lines) => {
                    for l in lines {
                        let origin = Origin::File(path.clone(), l.line);
                        match settings.get_key_value(l.name.as_str()) {
                            Some((&CONFIG_ENV, _)) => problems.push(format!(
                                "{} names the config file; it cannot be set in it",
                                origin.at(&l.name)
                            )),
                            Some((setting, _)) => {
                                from_file.insert(setting, (l.value.into(), origin));
                            }
                            None => problems.push(unknown_line(&origin, &l.name, known())),
                        }
                    }
                }
            }
        }

        let mut injected: Vec<OsString> = Vec::new();
        for (name, arg) in &settings {
            let given = from_env
                .get(name)
                .map(|v| (v.as_os_str(), Origin::Env))
                .into_iter()
                .chain(from_file.get(name).map(|(v, o)| (v.as_os_str(), o.clone())));
            let mut carried = Vec::new();
            for (value, origin) in given {
                match as_flag(&parser, arg, value) {
                    Ok(flag) => carried.push(flag),
                    Err(why) => {
                        let hint = if matches!(origin, Origin::Env)
                            && ["tcp://", "udp://", "sctp://"]
                                .iter()
                                .any(|p| value.to_string_lossy().starts_with(p))
                        {
                            " (a Kubernetes service link? set `enableServiceLinks: false` in the pod spec)"
                        } else {
                            ""
                        };
                        problems.push(format!("{}: {why}{hint}", origin.at(name)));
                    }
                }
            }
            // flags > environment > file: the first value given wins, unless the flag is on the
            // command line.
            let on_cli = cli.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
            if let (false, Some(first)) = (on_cli, carried.into_iter().next()) {
                injected.extend(first);
            }
        }
        if !problems.is_empty() {
            return Err(SettingsError::Settings(problems));
        }

        // The carried values never name a setting the real arguments name (those were skipped
        // above), so the order does not matter; before them, no `--` in argv can swallow them.
        let mut full = Vec::with_capacity(argv.len() + injected.len() + 1);
        full.push(argv.first().cloned().unwrap_or_else(|| OsString::from(BIN)));
        full.extend(injected);
        full.extend(argv.iter().skip(1).cloned());
        let matches = parser
            .try_get_matches_from(full)
            .map_err(SettingsError::Clap)?;
        Args::from_arg_matches(&matches).map_err(SettingsError::Clap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["wsgate-sidecar"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    /// A scratch directory of its own for one test (tests run in parallel).
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsgate-cfg-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load(argv: &[&str], env: &[(&str, &str)]) -> Result<Args, SettingsError> {
        Args::load(
            std::iter::once("wsgate-sidecar").chain(argv.iter().copied()),
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    /// A `FileLine`, from string literals.
    fn file_line(name: &str, value: &str, line: usize) -> FileLine {
        FileLine {
            name: name.into(),
            value: value.into(),
            line,
        }
    }

    #[test]
    fn config_file_syntax() {
        struct Case {
            name: &'static str,
            text: &'static str,
            /// The lines read, or a part of the error.
            want: Result<Vec<FileLine>, &'static str>,
        }
        let cases = [
            Case {
                name: "comments, blank lines, spaces and quotes",
                text: "# comment\n\n  # indented comment\nWSGATE_TARGET=127.0.0.1:2222\nWSGATE_AUTH = \"none\"\nWSGATE_KUBE_HEAD_LABEL=\n",
                want: Ok(vec![
                    file_line("WSGATE_TARGET", "127.0.0.1:2222", 4),
                    file_line("WSGATE_AUTH", "none", 5),
                    file_line("WSGATE_KUBE_HEAD_LABEL", "", 6),
                ]),
            },
            Case {
                name: "a value may hold '='",
                text: "WSGATE_KUBE_SELECTOR=skypilot-cluster-name={cluster}\n",
                want: Ok(vec![file_line(
                    "WSGATE_KUBE_SELECTOR",
                    "skypilot-cluster-name={cluster}",
                    1,
                )]),
            },
            Case {
                name: "no '='",
                text: "# x\nWSGATE_AUTHZ_SAR\n",
                want: Err(":2: want NAME=value"),
            },
            Case {
                name: "a name twice",
                text: "WSGATE_TARGET=a:1\n\nWSGATE_TARGET=b:1\n",
                want: Err(":3: WSGATE_TARGET is already set on line 1"),
            },
        ];
        let dir = scratch("syntax");
        for c in cases {
            let path = dir.join("cfg");
            std::fs::write(&path, c.text).unwrap();
            match (read_config_file(&path), c.want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", c.name),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with("--config: ") && e.contains(want),
                        "{}: {e}",
                        c.name
                    );
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every name that is not a setting, and every bad value, stops the start with a line that
    /// says where it is and what was probably meant.
    #[test]
    fn unknown_names_and_bad_values_are_errors() {
        struct Case {
            name: &'static str,
            file: Option<&'static str>,
            env: &'static [(&'static str, &'static str)],
            argv: &'static [&'static str],
            /// Each must appear in the error; `{file}` stands for the config file's path.
            want: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "a misspelt name in the file",
                file: Some("# policy\nWSGATE_AUTH=none\nWSGATE_AUTHZ_POLICIES=/etc/p.json\n"),
                env: &[],
                argv: &[],
                want: &["{file}:3: WSGATE_AUTHZ_POLICIES is not a setting; did you mean WSGATE_AUTHZ_POLICY?"],
            },
            Case {
                name: "a misspelt environment variable",
                file: None,
                env: &[("WSGATE_AUTHZ_POLICIES", "/etc/p.json"), ("HOME", "/root")],
                argv: &[],
                want: &["environment variable WSGATE_AUTHZ_POLICIES is not a setting; did you mean WSGATE_AUTHZ_POLICY?"],
            },
            Case {
                name: "all of them at once, environment first",
                file: Some("WSGATE_TARGT=h:22\nWSGATE_MAX_SESION=3\n"),
                env: &[("WSGATE_LISTN", "0.0.0.0:1")],
                argv: &[],
                want: &[
                    "environment variable WSGATE_LISTN is not a setting; did you mean WSGATE_LISTEN?\n{file}:1: WSGATE_TARGT is not a setting; did you mean WSGATE_TARGET?\n{file}:2: WSGATE_MAX_SESION is not a setting; did you mean WSGATE_MAX_SESSIONS?",
                ],
            },
            Case {
                name: "the prefix missing in the file",
                file: Some("TARGET=h:22\n"),
                env: &[],
                argv: &[],
                want: &["{file}:1: TARGET is not a setting; did you mean WSGATE_TARGET?"],
            },
            Case {
                name: "lower case in the file",
                file: Some("wsgate_target=h:22\n"),
                env: &[],
                argv: &[],
                want: &["{file}:1: wsgate_target is not a setting; did you mean WSGATE_TARGET?"],
            },
            Case {
                name: "nothing close",
                file: Some("WSGATE_FROBNICATE=1\n"),
                env: &[],
                argv: &[],
                want: &["{file}:1: WSGATE_FROBNICATE is not a setting"],
            },
            Case {
                name: "the file cannot name itself",
                file: Some("WSGATE_CONFIG=/etc/other\n"),
                env: &[],
                argv: &[],
                want: &["{file}:1: WSGATE_CONFIG names the config file; it cannot be set in it"],
            },
            Case {
                name: "another program's name is no setting in the file",
                file: Some("WSGATE_TOKEN=secret\n"),
                env: &[],
                argv: &[],
                want: &["{file}:1: WSGATE_TOKEN is not a setting (it is read by the wsgate client, not by the sidecar)"],
            },
            Case {
                name: "service links of a Service named wsgate-sidecar",
                file: None,
                env: &[
                    ("WSGATE_SIDECAR_SERVICE_HOST", "10.96.0.9"),
                    ("WSGATE_SIDECAR_PORT_8080_TCP", "tcp://10.96.0.9:8080"),
                ],
                argv: &[],
                want: &[
                    "environment variable WSGATE_SIDECAR_PORT_8080_TCP is not a setting (a Kubernetes service link of a Service named `wsgate-sidecar`?)\nenvironment variable WSGATE_SIDECAR_SERVICE_HOST is not a setting (a Kubernetes service link of a Service named `wsgate-sidecar`?)\n",
                    "set `enableServiceLinks: false` in the pod spec",
                ],
            },
            Case {
                name: "a service link that takes a setting's name: its value gives it away",
                file: None,
                env: &[("WSGATE_KUBE_PORT", "tcp://10.96.0.7:22")],
                argv: &[],
                want: &["environment variable WSGATE_KUBE_PORT: invalid value 'tcp://10.96.0.7:22'", "`enableServiceLinks: false`"],
            },
            Case {
                name: "a bad value in the file",
                file: Some("WSGATE_AUTH=none\nWSGATE_MAX_SESSIONS=lots\n"),
                env: &[],
                argv: &[],
                want: &["{file}:2: WSGATE_MAX_SESSIONS: invalid value 'lots' for '--max-sessions <MAX_SESSIONS>'"],
            },
            Case {
                name: "a bad switch value in the environment",
                file: None,
                env: &[("WSGATE_AUTHZ_SAR", "yes")],
                argv: &[],
                want: &["environment variable WSGATE_AUTHZ_SAR: invalid value 'yes' for '--authz-sar' [possible values: true, false]"],
            },
            Case {
                name: "a bad value of a switch that is on by default",
                file: None,
                env: &[("WSGATE_RESUME", "off")],
                argv: &[],
                want: &["environment variable WSGATE_RESUME: invalid value 'off' for '--resume[=<RESUME>]' [possible values: true, false]"],
            },
            Case {
                name: "a bad value is reported even when a flag overrides it",
                file: Some("WSGATE_PING_INTERVAL=often\n"),
                env: &[],
                argv: &["--ping-interval=5s"],
                want: &["{file}:1: WSGATE_PING_INTERVAL: invalid value 'often'"],
            },
            Case {
                name: "a file that is not there",
                file: None,
                env: &[("WSGATE_CONFIG", "/nonexistent/wsgate.env")],
                argv: &[],
                want: &["--config: /nonexistent/wsgate.env: "],
            },
        ];
        let dir = scratch("unknown");
        for c in cases {
            let path = dir.join("sidecar.env");
            let mut argv: Vec<String> = c.argv.iter().map(|a| a.to_string()).collect();
            if let Some(text) = c.file {
                std::fs::write(&path, text).unwrap();
                argv.push(format!("--config={}", path.display()));
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let e = match load(&argv, c.env) {
                Err(SettingsError::Settings(lines)) => lines.join("\n"),
                other => panic!("{}: {other:?}", c.name),
            };
            for want in c.want {
                let want = want.replace("{file}", &path.display().to_string());
                assert!(e.contains(&want), "{}:\n{e}\nlacks\n{want}", c.name);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_that_are_not_settings_but_are_not_typos_either() {
        let args = load(
            &["--auth=none", "--allow-unauthenticated"],
            &[
                ("WSGATE_LOG", "debug"),
                ("WSGATE_TOKEN", "sky_x"),
                ("WSGATE_WASM", "/x.wasm"),
                ("WSGATE_SIDECAR", "/bin/x"),
                ("PATH", "/bin"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ],
        )
        .unwrap();
        assert_eq!(args.auth, AuthMode::None);
    }

    /// flags > environment > file, per setting; a list from one source replaces, never merges.
    #[test]
    fn precedence_flags_then_environment_then_file() {
        struct Case {
            name: &'static str,
            argv: &'static [&'static str],
            env: &'static [(&'static str, &'static str)],
            file: &'static str,
            check: fn(&Args) -> bool,
        }
        let cases = [
            Case {
                name: "file only",
                argv: &[],
                env: &[],
                file: "WSGATE_TARGET=file:22\nWSGATE_MAX_SESSIONS=7\n",
                check: |a| a.target.as_deref() == Some("file:22") && a.max_sessions == 7,
            },
            Case {
                name: "environment over file",
                argv: &[],
                env: &[("WSGATE_TARGET", "env:22")],
                file: "WSGATE_TARGET=file:22\nWSGATE_MAX_SESSIONS=7\n",
                check: |a| a.target.as_deref() == Some("env:22") && a.max_sessions == 7,
            },
            Case {
                name: "flag over environment and file",
                argv: &["--target", "flag:22"],
                env: &[("WSGATE_TARGET", "env:22")],
                file: "WSGATE_TARGET=file:22\n",
                check: |a| a.target.as_deref() == Some("flag:22"),
            },
            Case {
                name: "lists are replaced, not merged",
                argv: &[],
                env: &[("WSGATE_ALLOWED_CLUSTERS", "c")],
                file: "WSGATE_ALLOWED_CLUSTERS=a,b\n",
                check: |a| a.allowed_clusters == ["c"],
            },
            Case {
                name: "a repeated flag replaces the file's list",
                argv: &["--allowed-clusters=x", "--allowed-clusters=y"],
                env: &[],
                file: "WSGATE_ALLOWED_CLUSTERS=a,b\n",
                check: |a| a.allowed_clusters == ["x", "y"],
            },
            Case {
                name: "defaults stay where nothing is given",
                argv: &[],
                env: &[],
                file: "# nothing\n",
                check: |a| {
                    a.max_sessions == 1024
                        && a.target.is_none()
                        && a.kube_head_label == "ray-node-type=head"
                },
            },
            Case {
                name: "an empty value is a value",
                argv: &[],
                env: &[],
                file: "WSGATE_KUBE_HEAD_LABEL=\n",
                check: |a| a.kube_head_label.is_empty(),
            },
            Case {
                name: "values may start with '-'",
                argv: &[],
                env: &[],
                file: "WSGATE_AUTHZ_SAR_VERB=-x\n",
                check: |a| a.authz_sar_verb == "-x",
            },
            Case {
                name: "a switch from the file",
                argv: &[],
                env: &[],
                file: "WSGATE_ALLOW_UNAUTHENTICATED=true\nWSGATE_AUTHZ_SAR=false\n",
                check: |a| a.allow_unauthenticated && !a.authz_sar,
            },
            Case {
                name: "the environment turns a file's switch off",
                argv: &[],
                env: &[("WSGATE_ALLOW_UNAUTHENTICATED", "false")],
                file: "WSGATE_ALLOW_UNAUTHENTICATED=true\n",
                check: |a| !a.allow_unauthenticated,
            },
            Case {
                name: "a switch flag beats the environment's false",
                argv: &["--allow-unauthenticated"],
                env: &[("WSGATE_ALLOW_UNAUTHENTICATED", "false")],
                file: "",
                check: |a| a.allow_unauthenticated,
            },
            Case {
                name: "a switch that is on by default, turned off in the file",
                argv: &[],
                env: &[],
                file: "WSGATE_RESUME=false\n",
                check: |a| !a.resume,
            },
            Case {
                name: "the environment turns it back on",
                argv: &[],
                env: &[("WSGATE_RESUME", "true")],
                file: "WSGATE_RESUME=false\n",
                check: |a| a.resume,
            },
            Case {
                name: "the flag turns it off whatever the environment says",
                argv: &["--resume=false"],
                env: &[("WSGATE_RESUME", "true")],
                file: "",
                check: |a| !a.resume,
            },
            Case {
                name: "the old spelling of --token-review-audiences",
                argv: &["--token-review-audience=a", "--token-review-audience=b"],
                env: &[],
                file: "WSGATE_TOKEN_REVIEW_AUDIENCES=file\n",
                check: |a| a.token_review_audiences == ["a", "b"],
            },
        ];
        let dir = scratch("precedence");
        for c in cases {
            let path = dir.join("sidecar.env");
            std::fs::write(&path, c.file).unwrap();
            let config = format!("--config={}", path.display());
            let argv: Vec<&str> = c.argv.iter().copied().chain([config.as_str()]).collect();
            let args = load(&argv, c.env).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!((c.check)(&args), "{}: {args:?}", c.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_config_file_is_named_by_flag_or_environment() {
        let dir = scratch("which-file");
        let (a, b) = (dir.join("a.env"), dir.join("b.env"));
        std::fs::write(&a, "WSGATE_TARGET=a:22\n").unwrap();
        std::fs::write(&b, "WSGATE_TARGET=b:22\n").unwrap();
        let by_env = load(&[], &[("WSGATE_CONFIG", a.to_str().unwrap())]).unwrap();
        assert_eq!(by_env.target.as_deref(), Some("a:22"));
        assert_eq!(by_env.config.as_deref(), Some(a.as_path()));
        let by_flag = load(
            &["--config", b.to_str().unwrap()],
            &[("WSGATE_CONFIG", a.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(by_flag.target.as_deref(), Some("b:22"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn help_and_usage_errors_are_clap_s() {
        let help = match load(&["--help"], &[]) {
            Err(SettingsError::Clap(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
                e.to_string()
            }
            other => panic!("{other:?}"),
        };
        // The full definition's help, with the environment names and how the sources combine.
        assert!(help.contains("[env: WSGATE_TARGET"), "{help}");
        assert!(help.contains("A flag wins over the environment"), "{help}");
        match load(&["--no-such-flag"], &[]) {
            Err(SettingsError::Clap(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument)
            }
            other => panic!("{other:?}"),
        }
    }

    /// `WSGATE_LOG` itself, not just the `WSGATE_LOG_FORMAT` it is a prefix of.
    #[test]
    fn log_filter_is_in_help() {
        let names = |help: String| {
            help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == "WSGATE_LOG")
        };
        assert!(names(Args::command().render_long_help().to_string()));
        assert!(names(Args::command().render_help().to_string()));
    }

    /// One spelling: every environment variable is its flag in capitals, so neither can be
    /// guessed wrong from the other.
    #[test]
    fn every_environment_name_is_its_flag_in_capitals() {
        for a in Args::command().get_arguments() {
            let Some(env) = a.get_env() else { continue };
            let long = a.get_long().unwrap_or_default();
            let want = format!(
                "{ENV_PREFIX}{}",
                long.to_ascii_uppercase().replace('-', "_")
            );
            assert_eq!(env.to_str(), Some(want.as_str()), "--{long}");
        }
    }

    #[test]
    fn other_programs_names_are_not_settings_nor_near_one() {
        let cmd = Args::command();
        let settings: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env()?.to_str())
            .collect();
        for p in OTHER_PROGRAMS {
            for s in &settings {
                let d = strsim::levenshtein(p.name, s);
                assert!(d >= 3, "{} is {d} edits from the setting {s}", p.name);
            }
        }
    }

    #[test]
    fn service_link_shapes() {
        struct Case {
            name: &'static str,
            service: Option<&'static str>,
        }
        for c in [
            Case {
                name: "WSGATE_SIDECAR_SERVICE_HOST",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_SERVICE_PORT",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_SERVICE_PORT_HTTP_WS",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_PORT",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_PORT_8080_TCP",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_PORT_8080_TCP_PROTO",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_PORT_8080_TCP_PORT",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_SIDECAR_PORT_8080_TCP_ADDR",
                service: Some("wsgate-sidecar"),
            },
            Case {
                name: "WSGATE_PORT_53_UDP_ADDR",
                service: Some("wsgate"),
            },
            Case {
                name: "WSGATE_SERVICE_HOST",
                service: Some("wsgate"),
            },
            Case {
                name: "WSGATE_MY_SSH_PORT",
                service: Some("wsgate-my-ssh"),
            },
            Case {
                name: "WSGATE_AUTHZ_POLICIES",
                service: None,
            },
            Case {
                name: "WSGATE_SIDECAR_PORT_X_TCP",
                service: None,
            },
            Case {
                name: "PORT",
                service: None,
            },
        ] {
            assert_eq!(service_link(c.name).as_deref(), c.service, "{}", c.name);
        }
    }

    /// docs/sidecar-config.md carries the table of every setting, generated from the flags so
    /// it cannot drift: `UPDATE_DOCS=1 cargo test -p wsgate-sidecar --lib settings_table`
    /// rewrites it after a flag changes.
    #[test]
    fn settings_table_in_the_docs_is_current() {
        const BEGIN: &str = "<!-- settings table: generated from the flags by `UPDATE_DOCS=1 cargo test -p wsgate-sidecar --lib settings_table` -->\n";
        const END: &str = "<!-- end of settings table -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sidecar-config.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = doc.split_once(BEGIN).expect("the table's start marker");
        let (table, tail) = rest.split_once(END).expect("the table's end marker");
        let want = settings_table();
        if table != want {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::write(&path, format!("{head}{BEGIN}{want}{END}{tail}")).unwrap();
            } else {
                panic!(
                    "{} is out of date; run `UPDATE_DOCS=1 cargo test -p wsgate-sidecar --lib settings_table`.\nwant:\n{want}",
                    path.display()
                );
            }
        }
    }

    /// Markdown: one row per setting (flag, variable, default, meaning), from clap's definition.
    fn settings_table() -> String {
        let cell = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "\\|")
        };
        let mut cmd = Args::command();
        cmd.build();
        let mut out = String::from(
            "| flag | environment variable | default | meaning |\n|---|---|---|---|\n",
        );
        for a in cmd.get_arguments() {
            let (Some(env), Some(long)) = (a.get_env(), a.get_long()) else {
                continue;
            };
            let switch = !a.get_action().takes_values();
            let default = if switch {
                "off".to_string()
            } else {
                let d: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| format!("`{}`", v.to_string_lossy()))
                    .collect();
                if d.is_empty() {
                    "none".to_string()
                } else {
                    d.join(",")
                }
            };
            let mut meaning = cell(
                &a.get_long_help()
                    .or(a.get_help())
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            );
            // clap drops a one-paragraph help's final full stop; the table is prose.
            if !meaning.is_empty() && !meaning.ends_with('.') {
                meaning.push('.');
            }
            let choices: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|_| !switch)
                .map(|v| format!("`{}`", v.get_name()))
                .collect();
            if !choices.is_empty() {
                meaning.push_str(&format!(" One of {}.", choices.join(", ")));
            }
            if switch {
                meaning.push_str(" (A switch: `true` or `false` in the environment or the file.)");
            }
            out.push_str(&format!(
                "| `--{long}` | `{}` | {default} | {meaning} |\n",
                env.to_string_lossy()
            ));
        }
        out
    }

    /// The TokenReview bounds have one set of defaults, the flags' and the backend's.
    #[test]
    fn token_review_defaults_are_the_backend_s() {
        let a = args(&[]);
        let flags = ReviewLimits {
            max_concurrency: a.token_review_max_concurrency,
            rate: a.token_review_rate,
            burst: a.token_review_burst,
        };
        assert_eq!(flags, ReviewLimits::default());
    }
}
