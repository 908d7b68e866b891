//! The sidecar's configuration as the server uses it: plain data, each value checked and each
//! combination of flags that cannot work refused, before anything is bound, read or connected.
//!
//! [`Config::from_args`] makes one from the [`Args`] read by [`crate::settings`];
//! [`crate::backends`] turns its backend parts into running backends (reading the token file and
//! the policy, connecting a Kubernetes client). Nothing here does I/O, so every mistake a flag
//! can make is found by a unit test, and by `main` before the first log line.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::bridge::BridgeConfig;
use crate::kube::ReviewLimits;
use crate::origin::TrustedHops;
use crate::settings::{Args, AuthMode};
use wsgate_proto::framing::Framing;
use wsgate_proto::names::is_dns_label;

/// SkyPilot's endpoint, unchanged, so its client works as is.
pub const SKYPILOT_PATH: &str = "/kubernetes-pod-ssh-proxy";

/// The largest `--max-connections`: far above any file descriptor limit, and what a counter
/// of places can hold everywhere.
const MAX_CONNECTIONS: usize = 1 << 20;

/// `--replay-buffer`'s bounds: below 256 KiB a session could not keep two of `wsgate proxy`'s
/// 64 KiB frames in flight beside what a client holds before it acknowledges (a quarter of the
/// buffer, one pass over its read buffer more; 256 KiB for a client that does not read the
/// stated size), and would stall on every round trip; above 256 MiB, a few hundred parked
/// sessions would hold the node's memory.
const REPLAY_BUFFER: std::ops::RangeInclusive<usize> = (256 << 10)..=(256 << 20);

/// The longest `--resume-window`: a parked session holds a target connection, an admission
/// slot and up to its replay buffer; a day covers a laptop closed overnight.
const MAX_RESUME_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A flag whose value cannot be used, or a combination of flags that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {why}")]
pub struct ConfigError {
    /// The flag to change (its long name), so the message says where to look.
    pub flag: &'static str,
    pub why: String,
}

fn flag(flag: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        why: why.into(),
    }
}

/// Everything [`crate::run`] needs besides its listeners and its shutdown signal.
#[derive(Debug, Clone)]
pub struct Config {
    /// Routes, limits and timeouts of the HTTP side and of its sessions.
    pub server: ServerConfig,
    /// Who callers are.
    pub auth: AuthConfig,
    /// Whether a caller may reach the cluster it asks for.
    pub authz: AuthzConfig,
    /// Where a cluster's sessions go.
    pub targets: TargetConfig,
    /// The longest one Kubernetes API call may take (used only by the backends that call it).
    pub kube_timeout: Duration,
}

/// Everything of the server that is not a pluggable backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A generic endpoint such as `/ssh/{cluster}`, besides SkyPilot's.
    pub path_template: Option<String>,
    /// When set, only these clusters (404 otherwise).
    pub allowed_clusters: Option<BTreeSet<String>>,
    /// Sessions open at once, overall: past it, 503 (the server is full).
    pub max_sessions: usize,
    /// Sessions open at once per user: past it, 429 (one user cannot take every slot).
    pub max_sessions_per_user: usize,
    /// Client connections open at once on the session listener (`crate::http`), upgraded ones
    /// included: each holds a file descriptor.
    pub max_connections: usize,
    /// Framing is decided per session (from the client's version); the rest applies to all.
    pub bridge: BridgeConfig,
    /// Each request head's deadline (`crate::http`).
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request; zero: no keep-alive.
    pub keepalive_timeout: Duration,
    /// From request to upgrade (authentication, lookup, connect).
    pub handshake_timeout: Duration,
    /// The TCP connect to the target, so a black-holed target costs a refusal, not a hang.
    pub connect_timeout: Duration,
    /// From the shutdown signal, how long sessions (and requests in progress) may go on; then
    /// sessions are closed with 1001 and unfinished requests dropped.
    pub shutdown_grace: Duration,
    /// Proxies whose `X-Forwarded-For` / `x-envoy-external-address` the audit trail believes.
    pub trusted_hops: TrustedHops,
    /// Resumable sessions (`--resume`), `None` when off: the offer is ignored.
    pub resume: Option<ResumeSettings>,
}

/// How resumable sessions are kept (docs/resume.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeSettings {
    /// How long a session whose leg was lost waits for its client (`--resume-window`).
    pub window: Duration,
    /// Unacknowledged target bytes kept per session, to replay (`--replay-buffer`).
    pub replay_buffer: usize,
}

/// How callers authenticate.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// `--auth none`, confirmed by `--allow-unauthenticated`: every caller is `anonymous`.
    None,
    /// `--auth token-file`: the file of tokens, reloaded when it changes.
    TokenFile(PathBuf),
    /// `--auth token-review`: the API server says who a token belongs to.
    TokenReview(TokenReviewConfig),
}

/// The `--auth token-review` settings.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// The audiences a token must be meant for (none: the API server's own).
    pub audiences: Vec<String>,
    /// How long an answer is remembered, so a reconnecting client costs no API call.
    pub cache_ttl: Duration,
    /// How many reviews may be in flight and sent a second.
    pub limits: ReviewLimits,
}

/// Who may reach which cluster; with neither part, every authenticated user reaches all.
#[derive(Debug, Clone, Default)]
pub struct AuthzConfig {
    /// `--authz-policy`: a static policy file (users and groups → cluster patterns).
    pub policy: Option<PathBuf>,
    /// `--authz-sar`: a SubjectAccessReview as well, so Kubernetes RBAC has a say.
    pub access_review: Option<AccessReviewConfig>,
}

/// What a SubjectAccessReview asks: may the user `verb` the cluster, as a resource named after
/// it.
#[derive(Debug, Clone)]
pub struct AccessReviewConfig {
    pub verb: String,
    pub group: String,
    pub resource: String,
    /// None: cluster-scoped.
    pub namespace: Option<String>,
}

/// Where sessions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    /// Pod-side mode: every session to this pod's sshd.
    Fixed {
        /// `host:port`.
        addr: String,
        /// The cluster this pod serves; requests naming another get 404.
        cluster: Option<String>,
    },
    /// Central mode: a cluster's pods, found through the Kubernetes API.
    Pods(PodsConfig),
}

/// How central mode finds a cluster's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodsConfig {
    /// A label selector with `{cluster}` in it, replaced by the (validated) cluster name.
    pub selector: String,
    /// None: the Kubernetes client's default namespace.
    pub namespace: Option<String>,
    /// The head pod's label, `(key, value)`: it is worker 0. None: worker n is the n-th pod.
    pub head_label: Option<(String, String)>,
    /// The SSH port on the pods.
    pub port: u16,
}

impl Config {
    /// Checks the settings and says what they mean; the first mistake is returned, named by
    /// its flag.
    pub fn from_args(a: &Args) -> Result<Config, ConfigError> {
        for (name, clusters) in [
            ("allowed-clusters", a.allowed_clusters.as_slice()),
            ("cluster", a.cluster.as_slice()),
        ] {
            if let Some(c) = clusters.iter().find(|c| !is_dns_label(c)) {
                return Err(flag(name, format!("{c:?} is not an RFC 1123 label")));
            }
        }
        if let Some(p) = &a.path {
            let segments: Vec<&str> = p.split('/').collect();
            let ok = p.starts_with('/')
                && segments.iter().filter(|s| **s == "{cluster}").count() == 1
                && p.matches('{').count() == 1
                && p != SKYPILOT_PATH;
            if !ok {
                return Err(flag(
                    "path",
                    "must start with '/' and have exactly one '{cluster}' segment",
                ));
            }
        }
        if a.max_frame_size < 1024 || a.max_frame_size > 16 << 20 {
            return Err(flag("max-frame-size", "must be between 1024 and 16777216"));
        }
        if a.ws_read_buffer < 4096 || a.ws_read_buffer > 16 << 20 {
            return Err(flag("ws-read-buffer", "must be between 4096 and 16777216"));
        }
        if a.token_review_max_concurrency == 0 || a.token_review_max_concurrency > 10_000 {
            return Err(flag(
                "token-review-max-concurrency",
                "must be between 1 and 10000",
            ));
        }
        if !(a.token_review_rate.is_finite() && a.token_review_rate > 0.0) {
            return Err(flag("token-review-rate", "must be a number above 0"));
        }
        if a.token_review_burst == 0 {
            return Err(flag("token-review-burst", "must be at least 1"));
        }
        if a.max_sessions == 0 || a.max_sessions_per_user == 0 {
            return Err(flag("max-sessions", "must be at least 1"));
        }
        if a.max_connections < a.max_sessions || a.max_connections > MAX_CONNECTIONS {
            return Err(flag(
                "max-connections",
                format!(
                    "must be between --max-sessions ({}) and {MAX_CONNECTIONS}: every session holds a connection",
                    a.max_sessions
                ),
            ));
        }
        if a.resume_window.is_zero() || a.resume_window > MAX_RESUME_WINDOW {
            return Err(flag("resume-window", "must be above 0 and at most 24h"));
        }
        if !REPLAY_BUFFER.contains(&a.replay_buffer) {
            return Err(flag(
                "replay-buffer",
                format!(
                    "must be between {} (256 KiB) and {} (256 MiB)",
                    REPLAY_BUFFER.start(),
                    REPLAY_BUFFER.end()
                ),
            ));
        }
        let trusted_hops = a
            .trusted_proxies
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse()
                    .map_err(|e| flag("trusted-proxies", format!("{c:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let allowed: BTreeSet<String> = a.allowed_clusters.iter().cloned().collect();
        Ok(Config {
            server: ServerConfig {
                path_template: a.path.clone(),
                allowed_clusters: (!allowed.is_empty()).then_some(allowed),
                max_sessions: a.max_sessions,
                max_sessions_per_user: a.max_sessions_per_user,
                max_connections: a.max_connections,
                bridge: BridgeConfig {
                    framing: Framing::Raw,
                    max_frame: a.max_frame_size,
                    read_size: a.ws_read_buffer,
                    ping_interval: nonzero(a.ping_interval),
                    max_missed_pongs: a.max_missed_pongs,
                    idle_timeout: nonzero(a.idle_timeout),
                    max_age: nonzero(a.max_session_age),
                },
                header_read_timeout: a.header_read_timeout,
                keepalive_timeout: a.keepalive_timeout,
                handshake_timeout: a.handshake_timeout,
                connect_timeout: a.connect_timeout,
                shutdown_grace: a.shutdown_grace,
                trusted_hops: TrustedHops(trusted_hops),
                resume: a.resume.then_some(ResumeSettings {
                    window: a.resume_window,
                    replay_buffer: a.replay_buffer,
                }),
            },
            auth: auth(a)?,
            authz: AuthzConfig {
                policy: a.authz_policy.clone(),
                access_review: a.authz_sar.then(|| AccessReviewConfig {
                    verb: a.authz_sar_verb.clone(),
                    group: a.authz_sar_group.clone(),
                    resource: a.authz_sar_resource.clone(),
                    namespace: a.authz_sar_namespace.clone(),
                }),
            },
            targets: targets(a)?,
            kube_timeout: a.kube_timeout,
        })
    }
}

fn auth(a: &Args) -> Result<AuthConfig, ConfigError> {
    match a.auth {
        AuthMode::None if !a.allow_unauthenticated => Err(flag(
            "auth",
            "'none' lets anyone who reaches the port open SSH sessions; add --allow-unauthenticated to confirm",
        )),
        AuthMode::None => Ok(AuthConfig::None),
        AuthMode::TokenFile => a
            .token_file
            .clone()
            .map(AuthConfig::TokenFile)
            .ok_or_else(|| flag("token-file", "required with --auth token-file")),
        AuthMode::TokenReview => Ok(AuthConfig::TokenReview(TokenReviewConfig {
                audiences: a
                    .token_review_audiences
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect(),
                cache_ttl: a.auth_cache_ttl,
                limits: ReviewLimits {
                    max_concurrency: a.token_review_max_concurrency,
                    rate: a.token_review_rate,
                    burst: a.token_review_burst,
                },
        })),
    }
}

/// Pod-side or central mode. Every central-mode flag is checked in either mode, so a mistake
/// shows before the mode is switched.
fn targets(a: &Args) -> Result<TargetConfig, ConfigError> {
    if a.target.is_some() && a.kube_selector.is_some() {
        return Err(flag(
            "target",
            "pod-side (--target) and central mode (--kube-selector) exclude each other",
        ));
    }
    if a.kube_selector
        .as_ref()
        .is_some_and(|s| !s.contains("{cluster}"))
    {
        return Err(flag("kube-selector", "must contain {cluster}"));
    }
    let head_label = match a.kube_head_label.as_str() {
        "" => None,
        l => {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| flag("kube-head-label", "must be key=value (or empty)"))?;
            Some((k.to_string(), v.to_string()))
        }
    };
    let Some(selector) = &a.kube_selector else {
        return Ok(TargetConfig::Fixed {
            addr: a.target.clone().unwrap_or_else(|| "127.0.0.1:22".into()),
            cluster: a.cluster.clone(),
        });
    };
    Ok(TargetConfig::Pods(PodsConfig {
        selector: selector.clone(),
        namespace: a.kube_namespace.clone(),
        head_label,
        port: a.kube_port,
    }))
}

/// A duration flag where 0 means "never".
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("wsgate-sidecar").chain(extra.iter().copied()))
            .unwrap()
    }

    /// Flags that make every other check pass, so a case shows one mistake.
    const OPEN: &[&str] = &["--auth", "none", "--allow-unauthenticated"];

    #[test]
    fn flag_errors_name_the_flag() {
        struct Case {
            /// Given after [`OPEN`], unless it picks its own `--auth`.
            argv: &'static [&'static str],
            /// The start of the error.
            want: &'static str,
        }
        let cases = [
            Case {
                argv: &["--auth", "token-file"],
                want: "--token-file: required",
            },
            Case {
                argv: &["--allowed-clusters", "Prod"],
                want: "--allowed-clusters: \"Prod\"",
            },
            Case {
                argv: &["--cluster", "a.b"],
                want: "--cluster: \"a.b\"",
            },
            Case {
                argv: &["--path", "/ssh"],
                want: "--path:",
            },
            Case {
                argv: &["--path", "/kubernetes-pod-ssh-proxy"],
                want: "--path:",
            },
            Case {
                argv: &["--max-frame-size", "10"],
                want: "--max-frame-size:",
            },
            Case {
                argv: &["--ws-read-buffer", "10"],
                want: "--ws-read-buffer:",
            },
            Case {
                argv: &["--target", "h:22", "--kube-selector", "a={cluster}"],
                want: "--target:",
            },
            Case {
                argv: &["--kube-selector", "app=x"],
                want: "--kube-selector:",
            },
            Case {
                argv: &["--kube-head-label", "head"],
                want: "--kube-head-label:",
            },
            Case {
                argv: &["--max-sessions", "100", "--max-connections", "99"],
                want: "--max-connections: must be between --max-sessions (100) and",
            },
            Case {
                argv: &["--max-sessions", "5000"],
                want: "--max-connections:",
            },
            Case {
                argv: &["--max-sessions-per-user", "0"],
                want: "--max-sessions:",
            },
            Case {
                argv: &["--trusted-proxies", "10.0.0.0/8,gateway"],
                want: "--trusted-proxies: \"gateway\"",
            },
            Case {
                argv: &["--auth", "token-review", "--token-review-rate", "0"],
                want: "--token-review-rate:",
            },
            Case {
                argv: &["--resume-window", "0s"],
                want: "--resume-window: must be above 0 and at most 24h",
            },
            Case {
                argv: &["--resume-window", "25h"],
                want: "--resume-window:",
            },
            // Checked when resumption is off too, so turning it on cannot reveal a mistake.
            Case {
                argv: &["--resume=false", "--resume-window", "0s"],
                want: "--resume-window:",
            },
            Case {
                argv: &["--replay-buffer", "262143"],
                want: "--replay-buffer: must be between 262144 (256 KiB) and 268435456 (256 MiB)",
            },
            Case {
                argv: &["--replay-buffer", "268435457"],
                want: "--replay-buffer:",
            },
        ];
        for c in cases {
            let open = if c.argv.contains(&"--auth") {
                &[]
            } else {
                OPEN
            };
            let argv: Vec<&str> = open.iter().chain(c.argv).copied().collect();
            let e = Config::from_args(&args(&argv))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(c.want), "{:?}: {e}", c.argv);
        }
        // `--auth none` alone: the confirmation is missing.
        let e = Config::from_args(&args(&["--auth", "none"])).unwrap_err();
        assert_eq!(e.flag, "auth");
        assert!(e.why.contains("--allow-unauthenticated"), "{e}");
    }

    #[test]
    fn defaults_are_sane() {
        let c = Config::from_args(&args(&[
            "--auth",
            "none",
            "--allow-unauthenticated",
            "--path",
            "/ssh/{cluster}",
        ]))
        .unwrap();
        let s = &c.server;
        assert_eq!(s.bridge.max_frame, 65536);
        assert_eq!(s.bridge.ping_interval, Some(Duration::from_secs(20)));
        assert_eq!(s.bridge.idle_timeout, None);
        assert!(s.allowed_clusters.is_none());
        assert_eq!(
            c.targets,
            TargetConfig::Fixed {
                addr: "127.0.0.1:22".into(),
                cluster: None
            }
        );
        assert_eq!(s.max_connections, 4096);
        assert!(s.max_connections >= s.max_sessions);
        assert_eq!(
            s.resume,
            Some(ResumeSettings {
                window: Duration::from_secs(180),
                replay_buffer: 4 << 20,
            })
        );
    }

    #[test]
    fn resume_switch_and_bounds() {
        struct Case {
            argv: &'static [&'static str],
            want: Option<ResumeSettings>,
        }
        let on = |secs, replay_buffer| {
            Some(ResumeSettings {
                window: Duration::from_secs(secs),
                replay_buffer,
            })
        };
        let cases = [
            Case {
                argv: &["--resume"],
                want: on(180, 4 << 20),
            },
            Case {
                argv: &["--resume=true"],
                want: on(180, 4 << 20),
            },
            Case {
                argv: &["--resume=false", "--resume-window=1s"],
                want: None,
            },
            Case {
                argv: &["--resume-window=1s", "--replay-buffer=262144"],
                want: on(1, 256 << 10),
            },
            Case {
                argv: &["--resume-window=24h", "--replay-buffer=268435456"],
                want: on(24 * 3600, 256 << 20),
            },
        ];
        for c in cases {
            let argv: Vec<&str> = OPEN.iter().chain(c.argv).copied().collect();
            let got = Config::from_args(&args(&argv)).unwrap().server.resume;
            assert_eq!(got, c.want, "{:?}", c.argv);
        }
        // `=` is required, so a value cannot be taken for the next argument by mistake.
        let argv = ["wsgate-sidecar", "--resume", "false"];
        assert!(Args::try_parse_from(argv).is_err());
    }

    #[test]
    fn central_mode_and_reviews() {
        let c = Config::from_args(&args(&[
            "--auth",
            "token-review",
            "--kube-selector",
            "skypilot-cluster-name={cluster}",
            "--token-review-audiences",
            ",wsgate,",
        ]))
        .unwrap();
        let AuthConfig::TokenReview(review) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(review.audiences, ["wsgate"]);
        assert_eq!(
            c.targets,
            TargetConfig::Pods(PodsConfig {
                selector: "skypilot-cluster-name={cluster}".into(),
                namespace: None,
                head_label: Some(("ray-node-type".into(), "head".into())),
                port: 22,
            })
        );
        let sar = Config::from_args(&args(&["--token-file", "/t", "--authz-sar"])).unwrap();
        let review = sar.authz.access_review.unwrap();
        assert_eq!(review.verb, "ssh");
        assert_eq!(review.group, "wsgate.io");
    }
}
