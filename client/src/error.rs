//! Every way `wsgate proxy` can fail, each with a one-line message that says the cause and
//! what to do, and an exit code per class (ssh prints our stderr line and exits 255; scripts
//! can read ours). Text that came from the network is escaped (see [`wsgate_proto::text`]) before it
//! is put in a message, and the whole line is escaped again when it is printed.

use std::io::{IsTerminal, Write};

use wsgate_proto::text;

/// Exit codes, stable: documented in docs/client.md and in `wsgate proxy --help`.
pub mod exit {
    /// An HTTP answer with no class of its own (e.g. 400).
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REDIRECTED: i32 = 3;
    /// 401 (the token) or 403 (the identity's access to the cluster).
    pub const AUTH: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const BACKEND: i32 = 6;
    /// TLS failed, or the URL's scheme does not match what the port speaks.
    pub const TLS: i32 = 7;
    pub const CONNECT: i32 = 8;
    pub const PLAINTEXT: i32 = 9;
    pub const PROTOCOL: i32 = 10;
    pub const TOKEN: i32 = 11;
    pub const PROXY: i32 = 12;
    /// The server closed the session with 1001: it is shutting down; connect again.
    pub const GOING_AWAY: i32 = 13;
    /// The connection was lost and the session could not be resumed (the sidecar refused, or
    /// `--resume-timeout` passed without a working connection).
    pub const RESUME: i32 = 16;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("the server answered with {status}{}: WebSocket clients cannot follow redirects; {}",
        via.as_deref().map(|l| format!(" → {l}")).unwrap_or_default(),
        match use_instead { Some(u) => format!("use `wsgate proxy {u} ...` instead"), None => "check the server URL".to_string() })]
    Redirected {
        status: u16,
        /// Where the server pointed (escaped).
        via: Option<String>,
        /// The server URL (https://...) to pass instead, when it can be worked out.
        use_instead: Option<String>,
    },
    #[error("{status} from {host}: {}; {}", reason.as_deref().unwrap_or("not authorized"), match token {
        TokenUse::Sent { source, hint } => format!("the token came from {source}. {hint}"),
        TokenUse::NoneGiven => "no token was sent: pass one with --token, WSGATE_TOKEN, --token-file or --kubeconfig".to_string(),
        TokenUse::Withheld(w) => w.advice(),
    })]
    Auth {
        status: u16,
        host: String,
        reason: Option<String>,
        token: TokenUse,
    },
    #[error("403 from {host}: {}; {}", reason.as_deref().unwrap_or("forbidden"), match token {
        TokenUse::Sent { source, .. } => format!("the token (from {source}) was accepted, but its identity has no access to cluster {cluster:?}: ask the cluster's owner for access or check the cluster name (getting a new token will not help)"),
        TokenUse::NoneGiven => format!("no token was sent, so the server does not know who you are: pass one with --token, WSGATE_TOKEN, --token-file or --kubeconfig (cluster {cluster:?})"),
        TokenUse::Withheld(w) => w.advice(),
    })]
    Forbidden {
        host: String,
        cluster: String,
        reason: Option<String>,
        token: TokenUse,
    },
    #[error("404 from {host}: {}", match reason {
        Some(r) => r.clone(),
        None => format!("nothing is served at {tried}; the server should serve {expected} under the server URL (SkyPilot's /kubernetes-pod-ssh-proxy by default): check the server URL's path prefix, or pass --endpoint for a server that uses another path (e.g. --endpoint 'ssh/{{cluster}}' for wsgate-sidecar's generic one)"),
    })]
    NotFound {
        host: String,
        /// The server's reason (escaped), when it gave one (e.g. an unknown cluster).
        reason: Option<String>,
        /// The path asked for.
        tried: String,
        /// The endpoint path wsgate was told to use (`--endpoint`).
        expected: String,
    },
    #[error("{status} from {host}: {}", reason.as_deref().unwrap_or("the backend is unavailable"))]
    Backend {
        status: u16,
        host: String,
        reason: Option<String>,
    },
    #[error("TLS with {host} failed: {detail}{hint}")]
    Tls {
        host: String,
        detail: String,
        /// What to do, with its leading "; " (empty when there is nothing to suggest).
        hint: String,
    },
    #[error("{host} does not speak TLS on this port (its answer to the TLS handshake was \"{reply}\"){}",
        if reply.starts_with("HTTP/") { "; the server speaks plain HTTP: use http:// (ws://) for this port, or the port that serves TLS with https://" } else { "; check the port, or use http:// if it is a plain-HTTP port" })]
    NotTls {
        host: String,
        /// The start of what the server sent (escaped).
        reply: String,
    },
    #[error(
        "{host} speaks TLS on this port ({evidence}): use https:// (wss://) instead of http://"
    )]
    SpeaksTls { host: String, evidence: String },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("refusing to send a token over plaintext ws:// to {host}{}", match via {
        None => ": use https:// (or --allow-plaintext if a trusted network protects this hop)".to_string(),
        Some(p) => format!(" through the proxy {p} (the proxy, and the network to it, would read it): use https://, --proxy none to connect directly, or --allow-plaintext if a trusted network protects this hop"),
    })]
    PlaintextToken {
        host: String,
        /// The proxy the request would go through (without credentials), if any: with one,
        /// even a loopback server's token would leave the machine in clear.
        via: Option<String>,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("token: {0}")]
    Token(String),
    #[error("{status} from {host}: {}", reason.as_deref().unwrap_or("unexpected answer"))]
    Http {
        status: u16,
        host: String,
        reason: Option<String>,
    },
    /// `proxy` is the proxy's URL without credentials and where the setting came from.
    #[error("proxy {proxy}: {detail}")]
    Proxy { proxy: String, detail: String },
    #[error("the server is shutting down (it closed the session with {code}{}): connect again (run ssh again) to reach it or another replica once it is back",
        if reason.is_empty() { String::new() } else { format!(" \"{reason}\"") })]
    GoingAway {
        /// 1001, or 1012 (a sidecar shutting down, to a resumable session).
        code: u16,
        /// The close reason (escaped).
        reason: String,
    },
    #[error("the connection was lost and the session could not be resumed: {why}; run ssh again for a new session")]
    Resume {
        /// What ended the attempts (network text in it escaped).
        why: String,
    },
}

/// What became of the user's token on a request the server answered with 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// Sent: where it came from, and what to do if it is refused.
    Sent { source: String, hint: String },
    /// The user gave none.
    NoneGiven,
    /// Not sent, on purpose: a SkyPilot redirect sent the session to another origin (boxed:
    /// errors stay small).
    Withheld(Box<Withheld>),
}

/// The user's token and `--header` values were left out on purpose: a SkyPilot redirect sent
/// the session to another origin, and credentials stay with the origin they were given for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The redirect target's origin (escaped).
    pub origin: String,
    /// The headers the redirect frame named, which were sent (escaped).
    pub named: Vec<String>,
    /// The server URL that would reach the target directly, when it can be worked out.
    pub use_instead: Option<String>,
}

impl Withheld {
    /// Why nothing of the user's went to the redirect target, and what can be done.
    fn advice(&self) -> String {
        let origin = &self.origin;
        let sent = if self.named.is_empty() {
            "the redirect named no headers to send".to_string()
        } else {
            format!(
                "only the headers the redirect named were sent: {}",
                self.named.join(", ")
            )
        };
        let direct = match &self.use_instead {
            Some(u) => format!(
                ", or, if you trust {origin} with your token, connect to it directly: `wsgate proxy {u} ...`"
            ),
            None => String::new(),
        };
        format!(
            "no token was sent, on purpose: the server redirected this session to another origin ({origin}), and the token and --header values stay with the origin they were given for ({sent}); the redirecting server must name what {origin} needs in its redirect{direct}"
        )
    }
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Redirected { .. } => exit::REDIRECTED,
            ClientError::Auth { .. } | ClientError::Forbidden { .. } => exit::AUTH,
            ClientError::NotFound { .. } => exit::NOT_FOUND,
            ClientError::Backend { .. } => exit::BACKEND,
            ClientError::Tls { .. }
            | ClientError::NotTls { .. }
            | ClientError::SpeaksTls { .. } => exit::TLS,
            ClientError::Connect { .. } => exit::CONNECT,
            ClientError::PlaintextToken { .. } => exit::PLAINTEXT,
            ClientError::Protocol(_) => exit::PROTOCOL,
            ClientError::Token(_) => exit::TOKEN,
            ClientError::Http { .. } => exit::OTHER,
            ClientError::Proxy { .. } => exit::PROXY,
            ClientError::GoingAway { .. } => exit::GOING_AWAY,
            ClientError::Resume { .. } => exit::RESUME,
        }
    }

    /// The line `wsgate` prints for this error: `wsgate: <message>`, escaped once more (nothing
    /// from the network reaches the terminal raw), the prefix in bold red when `colour`.
    pub fn report(&self, colour: bool) -> String {
        let message = self.to_string();
        let message = text::escape(&message);
        if colour {
            format!("\x1b[1;31mwsgate:\x1b[0m {message}")
        } else {
            format!("wsgate: {message}")
        }
    }
}

/// Prints a line on stderr that is not an error (a resumption's progress): `wsgate: <message>`,
/// escaped. On a terminal it ends with CR LF: during an ssh session the terminal is in raw
/// mode, where a bare LF would not bring the cursor back to the left.
pub fn notice(message: &str) {
    let line = notice_line(message, std::io::stderr().is_terminal());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn notice_line(message: &str, terminal: bool) -> String {
    let end = if terminal { "\r\n" } else { "\n" };
    format!("wsgate: {}{end}", text::escape(message))
}

/// Whether stderr gets colour: only a terminal, and never with `NO_COLOR` set (no-color.org:
/// any non-empty value).
pub fn colour_on_stderr() -> bool {
    colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_actionable() {
        let e = ClientError::Redirected {
            status: 426,
            via: Some("wss://gw.example.com/kubernetes-pod-ssh-proxy?cluster_name=a".into()),
            use_instead: Some("https://gw.example.com".into()),
        };
        assert_eq!(e.exit_code(), 3);
        let m = e.to_string();
        assert!(
            m.contains("426") && m.contains("use `wsgate proxy https://gw.example.com ...`"),
            "{m}"
        );
        let e = ClientError::Auth {
            status: 401,
            host: "gw".into(),
            reason: Some("invalid_credentials".into()),
            token: TokenUse::Sent {
                source: "WSGATE_TOKEN".into(),
                hint: "Refresh it.".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "401 from gw: invalid_credentials; the token came from WSGATE_TOKEN. Refresh it."
        );
        let m = ClientError::Forbidden {
            host: "gw".into(),
            cluster: "prod".into(),
            reason: Some("forbidden".into()),
            token: TokenUse::Sent {
                source: "WSGATE_TOKEN".into(),
                hint: String::new(),
            },
        }
        .to_string();
        assert!(
            m.contains("no access to cluster \"prod\"") && m.contains("new token will not help"),
            "{m}"
        );
        let m = ClientError::NotFound {
            host: "gw".into(),
            reason: None,
            tried: "/x/kubernetes-pod-ssh-proxy".into(),
            expected: "/kubernetes-pod-ssh-proxy".into(),
        }
        .to_string();
        assert!(
            m.contains("nothing is served at /x/kubernetes-pod-ssh-proxy")
                && m.contains("--endpoint 'ssh/{cluster}'"),
            "{m}"
        );
        let m = ClientError::NotTls {
            host: "gw:8080".into(),
            reply: "HTTP/1.1 400 Bad Request".into(),
        }
        .to_string();
        assert!(m.contains("use http:// (ws://)"), "{m}");
        let m = ClientError::GoingAway {
            code: 1001,
            reason: "server shutting down".into(),
        }
        .to_string();
        assert!(
            m.contains("shutting down") && m.contains("connect again"),
            "{m}"
        );
    }

    /// A redirect to another origin got no token on purpose: a 401 or 403 from there says so,
    /// instead of telling the user to pass a token (which would not be sent either).
    #[test]
    fn a_withheld_token_is_not_a_missing_one() {
        let withheld = TokenUse::Withheld(Box::new(Withheld {
            origin: "wss://other.example.com:8443".into(),
            named: vec!["x-redirect-ticket".into()],
            use_instead: Some("https://other.example.com:8443".into()),
        }));
        let unauthorized = ClientError::Auth {
            status: 401,
            host: "other.example.com:8443".into(),
            reason: None,
            token: withheld.clone(),
        }
        .to_string();
        let forbidden = ClientError::Forbidden {
            host: "other.example.com:8443".into(),
            cluster: "prod".into(),
            reason: None,
            token: withheld,
        }
        .to_string();
        for m in [&unauthorized, &forbidden] {
            assert!(
                m.contains("no token was sent, on purpose: the server redirected this session to another origin (wss://other.example.com:8443)")
                    && m.contains("stay with the origin they were given for")
                    && m.contains("only the headers the redirect named were sent: x-redirect-ticket")
                    && m.contains("`wsgate proxy https://other.example.com:8443 ...`"),
                "{m}"
            );
            assert!(!m.contains("pass one with"), "{m}");
        }
        assert!(unauthorized.starts_with("401 from other.example.com:8443: not authorized; "));
        assert!(forbidden.starts_with("403 from other.example.com:8443: forbidden; "));
        let m = ClientError::Auth {
            status: 401,
            host: "gw".into(),
            reason: None,
            token: TokenUse::Withheld(Box::new(Withheld {
                origin: "ws://10.0.0.2:80".into(),
                named: Vec::new(),
                use_instead: None,
            })),
        }
        .to_string();
        assert!(
            m.contains("the redirect named no headers to send")
                && m.ends_with("must name what ws://10.0.0.2:80 needs in its redirect"),
            "{m}"
        );
        let m = ClientError::Auth {
            status: 401,
            host: "gw".into(),
            reason: None,
            token: TokenUse::NoneGiven,
        }
        .to_string();
        assert!(
            m.contains("no token was sent: pass one with --token"),
            "{m}"
        );
    }

    #[test]
    fn a_token_through_a_proxy_is_refused_naming_the_proxy() {
        let m = ClientError::PlaintextToken {
            host: "127.0.0.1:8080".into(),
            via: Some("http://proxy.corp:3128 (from --proxy)".into()),
        }
        .to_string();
        assert_eq!(
            m,
            "refusing to send a token over plaintext ws:// to 127.0.0.1:8080 through the proxy http://proxy.corp:3128 (from --proxy) (the proxy, and the network to it, would read it): use https://, --proxy none to connect directly, or --allow-plaintext if a trusted network protects this hop"
        );
    }

    /// One class, one code; the classes that share a code are listed.
    #[test]
    fn exit_codes_are_distinct_per_class() {
        let one_per_class = [
            ClientError::Usage(String::new()),
            ClientError::Redirected {
                status: 301,
                via: None,
                use_instead: None,
            },
            ClientError::Auth {
                status: 401,
                host: String::new(),
                reason: None,
                token: TokenUse::NoneGiven,
            },
            ClientError::NotFound {
                host: String::new(),
                reason: None,
                tried: String::new(),
                expected: String::new(),
            },
            ClientError::Backend {
                status: 502,
                host: String::new(),
                reason: None,
            },
            ClientError::Tls {
                host: String::new(),
                detail: String::new(),
                hint: String::new(),
            },
            ClientError::Connect {
                addr: String::new(),
                detail: String::new(),
            },
            ClientError::PlaintextToken {
                host: String::new(),
                via: None,
            },
            ClientError::Protocol(String::new()),
            ClientError::Token(String::new()),
            ClientError::Http {
                status: 400,
                host: String::new(),
                reason: None,
            },
            ClientError::Proxy {
                proxy: String::new(),
                detail: String::new(),
            },
            ClientError::GoingAway {
                code: 1001,
                reason: String::new(),
            },
            ClientError::Resume { why: String::new() },
        ];
        let mut codes: Vec<i32> = one_per_class.iter().map(|e| e.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(
            codes.len(),
            one_per_class.len(),
            "exit codes must be distinct"
        );
        struct Case {
            error: ClientError,
            code: i32,
        }
        let same_class = [
            Case {
                error: ClientError::Forbidden {
                    host: String::new(),
                    cluster: String::new(),
                    reason: None,
                    token: TokenUse::NoneGiven,
                },
                code: exit::AUTH,
            },
            Case {
                error: ClientError::NotTls {
                    host: String::new(),
                    reply: String::new(),
                },
                code: exit::TLS,
            },
            Case {
                error: ClientError::SpeaksTls {
                    host: String::new(),
                    evidence: String::new(),
                },
                code: exit::TLS,
            },
        ];
        for c in same_class {
            assert_eq!(c.error.exit_code(), c.code, "{:?}", c.error);
        }
    }

    #[test]
    fn the_printed_line() {
        let e = ClientError::Protocol("closed: \x1b[31mred\x07".into());
        assert_eq!(e.report(false), "wsgate: closed: \\x1b[31mred\\x07");
        assert_eq!(
            e.report(true),
            "\x1b[1;31mwsgate:\x1b[0m closed: \\x1b[31mred\\x07"
        );
    }

    #[test]
    fn notices_are_escaped_lines() {
        assert_eq!(
            notice_line("connection lost (\x1b[2J); resuming session…", false),
            "wsgate: connection lost (\\x1b[2J); resuming session…\n"
        );
        assert_eq!(
            notice_line("resumed after 1.2 s", true),
            "wsgate: resumed after 1.2 s\r\n"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        struct Case {
            terminal: bool,
            no_color: Option<&'static str>,
            want: bool,
        }
        let cases = [
            Case {
                terminal: true,
                no_color: None,
                want: true,
            },
            Case {
                terminal: true,
                no_color: Some(""),
                want: true,
            },
            Case {
                terminal: true,
                no_color: Some("1"),
                want: false,
            },
            Case {
                terminal: false,
                no_color: None,
                want: false,
            },
        ];
        for c in cases {
            let v = c.no_color.map(std::ffi::OsStr::new);
            assert_eq!(colour_allowed(c.terminal, v), c.want);
        }
    }
}
