//! Command-line flags and environment variables (clap derive: these doc comments are `--help`),
//! validated into a [`Sidecar`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::auth::{Authenticator, NoAuth, StaticTokens};
use crate::authz::{All, AllowAll, Authorizer, StaticPolicy};
use crate::bridge::BridgeConfig;
use crate::kube::{AccessReviewer, KubeApi, PodResolver, TokenReviewer};
use crate::server::{Settings, Sidecar};
use crate::target::{FixedTarget, TargetResolver};
use wsgate_core::framing::Framing;
use wsgate_core::route::is_dns_label;

/// wsgate-sidecar: a WebSocket ↔ SSH bridge that speaks SkyPilot's framing.
///
/// Serves `GET /kubernetes-pod-ssh-proxy?cluster_name=<c>&worker=<n>&client_version=<v>`
/// (and optionally a generic path), authenticates the caller, and bridges binary WebSocket
/// frames to the target sshd. Never an open proxy: requests name a cluster, not a host.
#[derive(Debug, Parser)]
#[command(name = "wsgate-sidecar", version)]
pub struct Args {
    /// A file of `WSGATE_*=value` lines (the environment variables below), read before the
    /// flags; flags and real environment variables win over it.
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

    /// --auth token-review: audiences the token must be meant for (repeatable).
    #[arg(long, env = "WSGATE_TOKEN_REVIEW_AUDIENCES", value_delimiter = ',')]
    pub token_review_audience: Vec<String>,

    /// --auth token-review: how long an accepted token is remembered.
    #[arg(long, env = "WSGATE_AUTH_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,

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

    /// From connection to a complete request head; slower clients are disconnected (slowloris).
    #[arg(long, env = "WSGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// From request to upgrade: authentication, target lookup and connect.
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

    /// After SIGTERM, how long sessions may go on before they are closed with 1001.
    #[arg(long, env = "WSGATE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

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

/// A flag combination that cannot work, named by flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0}: {1}")]
    Flag(&'static str, String),
    #[error(
        "Kubernetes client (needed by --auth token-review, --authz-sar or --kube-selector): {0}"
    )]
    Kube(String),
}

fn flag(name: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Flag(name, why.into())
}

/// Reads a config file of `WSGATE_NAME=value` lines (comments with `#`) into pairs, refusing
/// names that are not `WSGATE_*` so a typo cannot silently set something else.
pub fn read_config_file(path: &std::path::Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| flag("config", format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            flag(
                "config",
                format!("{}:{}: want NAME=value", path.display(), i + 1),
            )
        })?;
        let k = k.trim();
        if !k.starts_with("WSGATE_") || k == "WSGATE_CONFIG" {
            return Err(flag(
                "config",
                format!(
                    "{}:{}: {k} is not a WSGATE_* setting",
                    path.display(),
                    i + 1
                ),
            ));
        }
        out.push((k.to_string(), v.trim().trim_matches('"').to_string()));
    }
    Ok(out)
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Args {
    /// Validates the flags and builds the backends (connecting a Kubernetes client only when a
    /// backend needs one).
    pub async fn build(&self) -> Result<Sidecar, ConfigError> {
        for c in self.allowed_clusters.iter().chain(self.cluster.iter()) {
            if !is_dns_label(c) {
                return Err(flag(
                    "allowed-clusters",
                    format!("{c:?} is not an RFC 1123 label"),
                ));
            }
        }
        if let Some(p) = &self.path {
            let segments: Vec<&str> = p.split('/').collect();
            let ok = p.starts_with('/')
                && segments.iter().filter(|s| **s == "{cluster}").count() == 1
                && p.matches('{').count() == 1
                && p != crate::server::SKYPILOT_PATH;
            if !ok {
                return Err(flag(
                    "path",
                    "must start with '/' and have exactly one '{cluster}' segment",
                ));
            }
        }
        if self.max_frame_size < 1024 || self.max_frame_size > 16 << 20 {
            return Err(flag("max-frame-size", "must be between 1024 and 16777216"));
        }
        if self.ws_read_buffer < 4096 || self.ws_read_buffer > 16 << 20 {
            return Err(flag("ws-read-buffer", "must be between 4096 and 16777216"));
        }
        if self.max_sessions == 0 || self.max_sessions_per_user == 0 {
            return Err(flag("max-sessions", "must be at least 1"));
        }
        if self.target.is_some() && self.kube_selector.is_some() {
            return Err(flag(
                "target",
                "pod-side (--target) and central mode (--kube-selector) exclude each other",
            ));
        }
        if let Some(sel) = &self.kube_selector {
            if !sel.contains("{cluster}") {
                return Err(flag("kube-selector", "must contain {cluster}"));
            }
        }
        let head_label = match self.kube_head_label.as_str() {
            "" => None,
            l => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| flag("kube-head-label", "must be key=value (or empty)"))?;
                Some((k.to_string(), v.to_string()))
            }
        };
        let needs_kube =
            self.auth == AuthMode::TokenReview || self.authz_sar || self.kube_selector.is_some();
        let kube = if needs_kube {
            Some(KubeApi {
                client: ::kube::Client::try_default()
                    .await
                    .map_err(|e| ConfigError::Kube(e.to_string()))?,
                timeout: self.kube_timeout,
            })
        } else {
            None
        };
        let auth: Arc<dyn Authenticator> = match self.auth {
            AuthMode::None if !self.allow_unauthenticated => {
                return Err(flag(
                    "auth",
                    "'none' lets anyone who reaches the port open SSH sessions; add --allow-unauthenticated to confirm",
                ))
            }
            AuthMode::None => Arc::new(NoAuth),
            AuthMode::TokenReview => Arc::new(TokenReviewer::new(
                kube.clone().ok_or_else(|| ConfigError::Kube("not created".into()))?,
                self.token_review_audience
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect(),
                self.auth_cache_ttl,
            )),
            AuthMode::TokenFile => {
                let path = self
                    .token_file
                    .clone()
                    .ok_or_else(|| flag("token-file", "required with --auth token-file"))?;
                Arc::new(StaticTokens::load(path).map_err(|e| flag("token-file", e.to_string()))?)
            }
        };
        let mut authorizers: Vec<Box<dyn Authorizer>> = Vec::new();
        if let Some(p) = &self.authz_policy {
            authorizers.push(Box::new(
                StaticPolicy::load(p).map_err(|e| flag("authz-policy", e.to_string()))?,
            ));
        }
        if self.authz_sar {
            authorizers.push(Box::new(AccessReviewer {
                api: kube
                    .clone()
                    .ok_or_else(|| ConfigError::Kube("not created".into()))?,
                verb: self.authz_sar_verb.clone(),
                group: self.authz_sar_group.clone(),
                resource: self.authz_sar_resource.clone(),
                namespace: self.authz_sar_namespace.clone(),
            }));
        }
        let authz: Arc<dyn Authorizer> = match authorizers.len() {
            0 => Arc::new(AllowAll),
            _ => Arc::new(All(authorizers)),
        };
        let resolver: Arc<dyn TargetResolver> = match (&self.kube_selector, kube) {
            (Some(selector), Some(api)) => Arc::new(PodResolver {
                namespace: self
                    .kube_namespace
                    .clone()
                    .unwrap_or_else(|| api.client.default_namespace().to_string()),
                api,
                selector_template: selector.clone(),
                head_label,
                port: self.kube_port,
            }),
            _ => Arc::new(FixedTarget {
                addr: self
                    .target
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:22".to_string()),
                cluster: self.cluster.clone(),
            }),
        };
        let allowed: BTreeSet<String> = self.allowed_clusters.iter().cloned().collect();
        Ok(Sidecar {
            settings: Settings {
                path_template: self.path.clone(),
                allowed_clusters: (!allowed.is_empty()).then_some(allowed),
                max_sessions: self.max_sessions,
                max_sessions_per_user: self.max_sessions_per_user,
                bridge: BridgeConfig {
                    framing: Framing::Raw,
                    max_frame: self.max_frame_size,
                    read_size: self.ws_read_buffer,
                    ping_interval: nonzero(self.ping_interval),
                    max_missed_pongs: self.max_missed_pongs,
                    idle_timeout: nonzero(self.idle_timeout),
                    max_age: nonzero(self.max_session_age),
                },
                header_read_timeout: self.header_read_timeout,
                handshake_timeout: self.handshake_timeout,
                connect_timeout: self.connect_timeout,
                shutdown_grace: self.shutdown_grace,
            },
            auth,
            authz,
            resolver,
        })
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

    #[tokio::test]
    async fn flag_errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--auth", "none"], "--auth:"),
            (&["--auth", "token-file"], "--token-file: required"),
            (
                &["--auth", "token-file", "--token-file", "/nonexistent/x"],
                "--token-file:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--allowed-clusters",
                    "Prod",
                ],
                "--allowed-clusters:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--path",
                    "/ssh",
                ],
                "--path:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--max-frame-size",
                    "10",
                ],
                "--max-frame-size:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--authz-policy",
                    "/nonexistent",
                ],
                "--authz-policy:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--target",
                    "h:22",
                    "--kube-selector",
                    "a={cluster}",
                ],
                "--target:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--kube-selector",
                    "app=x",
                ],
                "--kube-selector:",
            ),
            (
                &[
                    "--auth",
                    "none",
                    "--allow-unauthenticated",
                    "--kube-head-label",
                    "head",
                ],
                "--kube-head-label:",
            ),
        ];
        for (a, want) in cases {
            let e = args(a)
                .build()
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn config_file_lines() {
        let dir = std::env::temp_dir().join(format!("wsgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(
            &good,
            "# comment\nWSGATE_TARGET=127.0.0.1:2222\nWSGATE_AUTH = \"none\"\n",
        )
        .unwrap();
        assert_eq!(
            read_config_file(&good).unwrap(),
            vec![
                ("WSGATE_TARGET".to_string(), "127.0.0.1:2222".to_string()),
                ("WSGATE_AUTH".to_string(), "none".to_string())
            ]
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "TARGET=x\n").unwrap();
        assert!(read_config_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad:1: TARGET is not"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn defaults_are_sane() {
        let s = args(&[
            "--auth",
            "none",
            "--allow-unauthenticated",
            "--path",
            "/ssh/{cluster}",
        ])
        .build()
        .await
        .unwrap();
        assert_eq!(s.settings.bridge.max_frame, 65536);
        assert_eq!(
            s.settings.bridge.ping_interval,
            Some(Duration::from_secs(20))
        );
        assert_eq!(s.settings.bridge.idle_timeout, None);
        assert!(s.settings.allowed_clusters.is_none());
        assert_eq!(s.resolver.describe(), "fixed target 127.0.0.1:22");
    }
}
