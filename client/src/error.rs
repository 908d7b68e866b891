//! Every way `wsgate proxy` can fail, each with a one-line message a person can act on and a
//! distinct exit code (ssh prints our stderr line and exits 255; scripts can read ours).

/// Exit codes, stable: documented in the README.
pub mod exit {
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REDIRECTED: i32 = 3;
    pub const AUTH: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const BACKEND: i32 = 6;
    pub const TLS: i32 = 7;
    pub const CONNECT: i32 = 8;
    pub const PLAINTEXT: i32 = 9;
    pub const PROTOCOL: i32 = 10;
    pub const TOKEN: i32 = 11;
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
        via: Option<String>,
        /// The server URL (https://...) to pass instead, when it can be worked out.
        use_instead: Option<String>,
    },
    #[error("{status} from {host}: {}; the token came from {source_desc}. {hint}", reason.as_deref().unwrap_or("not authorized"))]
    Auth {
        status: u16,
        host: String,
        reason: Option<String>,
        source_desc: String,
        hint: String,
    },
    #[error("404 from {host}: {}", reason.as_deref().unwrap_or("not found"))]
    NotFound {
        host: String,
        reason: Option<String>,
    },
    #[error("{status} from {host}: {}", reason.as_deref().unwrap_or("the backend is unavailable"))]
    Backend {
        status: u16,
        host: String,
        reason: Option<String>,
    },
    #[error("TLS with {host} failed: {detail}; if the server uses a private CA, pass --ca-file <ca.pem>")]
    Tls { host: String, detail: String },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("refusing to send a token over plaintext ws:// to {host}: use https:// (or --allow-plaintext if a trusted network protects this hop)")]
    PlaintextToken { host: String },
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
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Redirected { .. } => exit::REDIRECTED,
            ClientError::Auth { .. } => exit::AUTH,
            ClientError::NotFound { .. } => exit::NOT_FOUND,
            ClientError::Backend { .. } => exit::BACKEND,
            ClientError::Tls { .. } => exit::TLS,
            ClientError::Connect { .. } => exit::CONNECT,
            ClientError::PlaintextToken { .. } => exit::PLAINTEXT,
            ClientError::Protocol(_) => exit::PROTOCOL,
            ClientError::Token(_) => exit::TOKEN,
            ClientError::Http { .. } => exit::OTHER,
        }
    }
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
            source_desc: "WSGATE_TOKEN".into(),
            hint: "Refresh it.".into(),
        };
        assert_eq!(
            e.to_string(),
            "401 from gw: invalid_credentials; the token came from WSGATE_TOKEN. Refresh it."
        );
        let codes = [
            ClientError::Usage(String::new()).exit_code(),
            e.exit_code(),
            ClientError::NotFound {
                host: String::new(),
                reason: None,
            }
            .exit_code(),
            ClientError::Backend {
                status: 502,
                host: String::new(),
                reason: None,
            }
            .exit_code(),
            ClientError::Tls {
                host: String::new(),
                detail: String::new(),
            }
            .exit_code(),
            ClientError::Connect {
                addr: String::new(),
                detail: String::new(),
            }
            .exit_code(),
            ClientError::PlaintextToken {
                host: String::new(),
            }
            .exit_code(),
            ClientError::Protocol(String::new()).exit_code(),
            ClientError::Token(String::new()).exit_code(),
        ];
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len(), "exit codes must be distinct");
    }
}
