//! From what the user types (`https://gw.example.com/prefix`, `gw.example.com`, `prod.wsgate`) to
//! the WebSocket URL: scheme mapping (no scheme means `https://`), path prefix kept, cluster
//! validated, `{cluster}` in the endpoint path filled in, SkyPilot's query. Also what a
//! redirect frame's URL becomes, and whether it keeps the origin (credentials go only there).

use std::borrow::Cow;
use std::net::IpAddr;

use url::Url;
use wsgate_proto::names::is_dns_label;

use crate::error::ClientError;

/// What `client_version` we announce: above 21, so servers use SkyPilot's typed framing (the
/// value SkyPilot's own client sends today).
pub const CLIENT_VERSION: u32 = 62;

/// The endpoint path when `--endpoint` is not given: SkyPilot's.
pub const DEFAULT_ENDPOINT: &str = "kubernetes-pod-ssh-proxy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The `ws://` or `wss://` URL to open.
    pub url: Url,
    /// `host[:port]`, for messages.
    pub host: String,
    pub plaintext: bool,
    /// `localhost` or a loopback address ([`is_loopback_host`]): it may get a token over
    /// plaintext when no proxy is on the path (nothing leaves the machine), and the
    /// environment's proxy is not used for it.
    pub loopback: bool,
    pub cluster: String,
}

impl Endpoint {
    /// `host[:port]/path`, escaped: where this session goes, for logs (no query, and never the
    /// URL's user name or password).
    pub fn target(&self) -> String {
        wsgate_proto::text::escape(&format!("{}{}", self.host, self.url.path())).into_owned()
    }

    /// The URL without its user name and password, escaped, for logs.
    pub fn shown_url(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        wsgate_proto::text::escape(url.as_str()).into_owned()
    }
}

/// Builds the session URL. `cluster` may be a host alias (`prod.wsgate`): a cluster is one
/// DNS label, so everything from the first dot on is dropped (what `ssh-config` relies on).
pub fn build(
    server: &str,
    cluster: &str,
    worker: u32,
    endpoint: &str,
) -> Result<Endpoint, ClientError> {
    let given = server;
    let server = with_default_scheme(given, "https");
    if matches!(server, Cow::Owned(_)) {
        tracing::info!(
            "no scheme in the server URL {given:?}: assuming https:// (wss://); write http://{given} for a plaintext port"
        );
    }
    let server = server.as_ref();
    let mut url = Url::parse(server)
        .map_err(|e| ClientError::Usage(format!("server URL {server:?}: {e}")))?;
    let scheme = websocket_scheme(url.scheme()).ok_or_else(|| {
        ClientError::Usage(format!(
            "server URL scheme {:?}: use https:// (or http:// on a trusted network)",
            url.scheme()
        ))
    })?;
    url.set_scheme(scheme)
        .map_err(|_| ClientError::Usage(format!("cannot use scheme {scheme} with {server:?}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Usage(format!("server URL {server:?} has no host")))?
        .to_string();
    let cluster = cluster.split('.').next().unwrap_or_default().to_string();
    if !is_dns_label(&cluster) {
        return Err(ClientError::Usage(format!(
            "{cluster:?} is not a cluster name (lowercase letters, digits and '-', at most 63)"
        )));
    }
    let prefix = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{prefix}/{}", endpoint_path(endpoint, &cluster)));
    url.set_fragment(None);
    url.query_pairs_mut()
        .clear()
        .append_pair("cluster_name", &cluster)
        .append_pair("worker", &worker.to_string())
        .append_pair("client_version", &CLIENT_VERSION.to_string());
    Ok(from_url(url, host, cluster))
}

/// The endpoint path (no leading or trailing `/`) with `{cluster}` filled in (a DNS label,
/// nothing to escape): `--endpoint 'ssh/{cluster}'` reaches wsgate-sidecar's generic path.
pub fn endpoint_path(endpoint: &str, cluster: &str) -> String {
    endpoint.trim_matches('/').replace("{cluster}", cluster)
}

/// `raw` with `default://` in front when it names no scheme (a bare `host[:port]`); borrowed
/// when it has one.
pub fn with_default_scheme<'a>(raw: &'a str, default: &str) -> Cow<'a, str> {
    if raw.contains("://") {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(format!("{default}://{raw}"))
    }
}

/// The WebSocket scheme for a URL scheme the user or a redirect may give: `https`/`wss` →
/// `wss`, `http`/`ws` → `ws`; `None` for anything else.
pub fn websocket_scheme(scheme: &str) -> Option<&'static str> {
    match scheme {
        "https" | "wss" => Some("wss"),
        "http" | "ws" => Some("ws"),
        _ => None,
    }
}

/// Whether a URL's host (`host_str()`, IPv6 in brackets or not) is this machine by itself:
/// `localhost` or a loopback address (`127.0.0.0/8`, `::1`, and `::ffff:127.x.y.z`). Names are
/// not resolved: `localhost` is the only name trusted. A token may go to such a host over
/// plaintext when nothing else is on the path, and the environment's proxy is never used for
/// it (it could not reach our loopback anyway).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn from_url(url: Url, host: String, cluster: String) -> Endpoint {
    let loopback = is_loopback_host(&host);
    let shown = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    Endpoint {
        plaintext: url.scheme() == "ws",
        loopback,
        host: shown,
        cluster,
        url,
    }
}

/// The endpoint a SkyPilot redirect frame's `url` names (`wss://`/`ws://`, or `https://`/
/// `http://` mapped to them), used as given. Errors escape what the server sent.
pub fn redirect_target(raw: &str, cluster: &str) -> Result<Endpoint, ClientError> {
    let bad = |why: String| {
        ClientError::Protocol(format!(
            "the server redirected to \"{}\": {why}",
            wsgate_proto::text::escape(raw)
        ))
    };
    let mut url = Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let scheme = websocket_scheme(url.scheme())
        .ok_or_else(|| bad("not a ws://, wss://, http:// or https:// URL".into()))?;
    url.set_scheme(scheme)
        .map_err(|_| bad("cannot use it as a WebSocket URL".into()))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host".into()))?
        .to_string();
    url.set_fragment(None);
    Ok(from_url(url, host, cluster.to_string()))
}

/// Same origin (scheme, host and port, as browsers and curl judge a redirect): the token and
/// `--header` values go to a redirect target only if this holds.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

/// The server URL (`https://host[:port]/prefix`) a user should pass for a `ws(s)://` session
/// URL: what a 426 hint or a redirect becomes in the error message.
pub fn server_url_for(session_url: &str, endpoint: &str) -> Option<String> {
    let mut u = Url::parse(session_url).ok()?;
    let scheme = match u.scheme() {
        "wss" | "https" => "https",
        "ws" | "http" => "http",
        _ => return None,
    };
    let path = u.path().to_string();
    let suffix = format!("/{}", endpoint.trim_matches('/'));
    let prefix = path
        .strip_suffix(&suffix)
        .unwrap_or(&path)
        .trim_end_matches('/')
        .to_string();
    u.set_query(None);
    u.set_path(&prefix);
    let mut s = u.to_string();
    s = s.replacen(u.scheme(), scheme, 1);
    Some(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_table() {
        struct Case {
            server: &'static str,
            cluster: &'static str,
            want: &'static str,
            plaintext: bool,
            loopback: bool,
        }
        let cases = [
            Case {
                server: "https://gw.example.com",
                cluster: "prod",
                want: "wss://gw.example.com/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62",
                plaintext: false,
                loopback: false,
            },
            Case {
                server: "http://gw.example.com:8080/",
                cluster: "prod",
                want: "ws://gw.example.com:8080/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62",
                plaintext: true,
                loopback: false,
            },
            Case {
                server: "https://gw.example.com/sky/",
                cluster: "prod.wsgate",
                want: "wss://gw.example.com/sky/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62",
                plaintext: false,
                loopback: false,
            },
            Case {
                server: "wss://127.0.0.1:9443/a/b",
                cluster: "dev",
                want: "wss://127.0.0.1:9443/a/b/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62",
                plaintext: false,
                loopback: true,
            },
            Case {
                server: "ws://localhost",
                cluster: "dev",
                want: "ws://localhost/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62",
                plaintext: true,
                loopback: true,
            },
            Case {
                server: "http://[::1]:80/",
                cluster: "dev",
                want: "ws://[::1]/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62",
                plaintext: true,
                loopback: true,
            },
        ];
        for c in cases {
            let e = build(c.server, c.cluster, 0, DEFAULT_ENDPOINT).unwrap();
            assert_eq!(e.url.as_str(), c.want, "{}", c.server);
            assert_eq!(
                (e.plaintext, e.loopback),
                (c.plaintext, c.loopback),
                "{}",
                c.server
            );
        }
        let e = build("https://gw.example.com?x=1", "prod", 3, "/ssh/").unwrap();
        assert_eq!(
            e.url.as_str(),
            "wss://gw.example.com/ssh?cluster_name=prod&worker=3&client_version=62"
        );
    }

    /// What logs show of a session URL: no user name or password, no query in the target,
    /// nothing from a redirect unescaped.
    #[test]
    fn what_logs_show() {
        let e = build(
            "https://me:hunter2@gw.example.com:8443/sky",
            "prod",
            0,
            "ssh",
        )
        .unwrap();
        assert_eq!(e.target(), "gw.example.com:8443/sky/ssh");
        assert_eq!(
            e.shown_url(),
            "wss://gw.example.com:8443/sky/ssh?cluster_name=prod&worker=0&client_version=62"
        );
        let e = build("http://[::1]", "prod", 0, DEFAULT_ENDPOINT).unwrap();
        assert_eq!(e.target(), "[::1]/kubernetes-pod-ssh-proxy");
        let e = redirect_target("ws://u:p@127.0.0.1:9/a\x1b[31m?t=1", "prod").unwrap();
        assert_eq!(e.target(), "127.0.0.1:9/a%1B[31m");
        assert_eq!(e.shown_url(), "ws://127.0.0.1:9/a%1B[31m?t=1");
    }

    #[test]
    fn a_bare_host_means_https_and_the_cluster_fills_the_path() {
        let e = build("gw.example.com:8443", "prod", 0, DEFAULT_ENDPOINT).unwrap();
        assert_eq!(
            e.url.as_str(),
            "wss://gw.example.com:8443/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62"
        );
        let e = build("127.0.0.1:9", "prod", 0, "x").unwrap();
        assert_eq!((e.url.scheme(), e.host.as_str()), ("wss", "127.0.0.1:9"));
        let e = build("http://gw/sky", "prod.wsgate", 1, "/ssh/{cluster}/").unwrap();
        assert_eq!(
            e.url.as_str(),
            "ws://gw/sky/ssh/prod?cluster_name=prod&worker=1&client_version=62"
        );
    }

    #[test]
    fn redirect_targets_and_origins() {
        struct Case {
            from: &'static str,
            to: &'static str,
            same: bool,
        }
        let cases = [
            Case {
                from: "wss://gw.example.com/kubernetes-pod-ssh-proxy?cluster_name=a",
                to: "wss://gw.example.com:443/other?x=1",
                same: true,
            },
            Case {
                from: "wss://gw.example.com/a",
                to: "https://gw.example.com/b",
                same: true,
            },
            Case {
                from: "wss://gw.example.com/a",
                to: "wss://gw.example.com:8443/a",
                same: false,
            },
            Case {
                from: "wss://gw.example.com/a",
                to: "ws://gw.example.com/a",
                same: false,
            },
            Case {
                from: "wss://gw.example.com/a",
                to: "wss://evil.example.net/a",
                same: false,
            },
            Case {
                from: "ws://127.0.0.1:8080/a",
                to: "ws://localhost:8080/a",
                same: false,
            },
        ];
        for c in cases {
            let from = Url::parse(c.from).unwrap();
            let to = redirect_target(c.to, "a").unwrap();
            assert_eq!(
                same_origin(&from, &to.url),
                c.same,
                "{} -> {}",
                c.from,
                c.to
            );
        }
        let e = redirect_target("ws://127.0.0.1:9/x", "a").unwrap();
        assert!(e.plaintext && e.loopback && e.host == "127.0.0.1:9");
        for bad in ["gopher://x/", "not a url", "wss://"] {
            let e = redirect_target(bad, "a").unwrap_err();
            assert_eq!(e.exit_code(), 10, "{bad}: {e}");
        }
        let e = redirect_target("\x1b[31m", "a").unwrap_err().to_string();
        assert!(e.contains("\\x1b[31m") && !e.contains('\x1b'), "{e}");
    }

    #[test]
    fn loopback_hosts() {
        let loopback = [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
        ];
        let elsewhere = [
            "localhost.",
            "a.localhost",
            "0.0.0.0",
            "[::]",
            "[::ffff:10.0.0.1]",
            "10.0.0.1",
            "gw.example.com",
        ];
        for host in loopback {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in elsewhere {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn schemes() {
        assert_eq!(with_default_scheme("gw:8443", "https"), "https://gw:8443");
        assert!(matches!(
            with_default_scheme("http://gw", "https"),
            Cow::Borrowed("http://gw")
        ));
        assert_eq!(
            with_default_scheme("proxy:3128", "http"),
            "http://proxy:3128"
        );
        struct Case {
            given: &'static str,
            websocket: Option<&'static str>,
        }
        let cases = [
            Case {
                given: "https",
                websocket: Some("wss"),
            },
            Case {
                given: "wss",
                websocket: Some("wss"),
            },
            Case {
                given: "http",
                websocket: Some("ws"),
            },
            Case {
                given: "ws",
                websocket: Some("ws"),
            },
            Case {
                given: "ftp",
                websocket: None,
            },
            Case {
                given: "HTTPS",
                websocket: None,
            },
        ];
        for c in cases {
            assert_eq!(websocket_scheme(c.given), c.websocket, "{}", c.given);
        }
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        struct Case {
            server: &'static str,
            cluster: &'static str,
        }
        let cases = [
            Case {
                server: "ftp://x",
                cluster: "a",
            },
            Case {
                server: "not a url",
                cluster: "a",
            },
            Case {
                server: "https://gw",
                cluster: "Prod",
            },
            Case {
                server: "https://gw",
                cluster: "a_b",
            },
            Case {
                server: "https://gw",
                cluster: "",
            },
        ];
        for c in cases {
            let e = build(c.server, c.cluster, 0, DEFAULT_ENDPOINT).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{} {}: {e}", c.server, c.cluster);
        }
    }

    #[test]
    fn hints_become_server_urls() {
        assert_eq!(
            server_url_for(
                "wss://127.0.0.1:9443/kubernetes-pod-ssh-proxy?cluster_name=a",
                "kubernetes-pod-ssh-proxy"
            )
            .as_deref(),
            Some("https://127.0.0.1:9443")
        );
        assert_eq!(
            server_url_for(
                "wss://gw.example.com/sky/kubernetes-pod-ssh-proxy?x",
                "kubernetes-pod-ssh-proxy"
            )
            .as_deref(),
            Some("https://gw.example.com/sky")
        );
        assert_eq!(
            server_url_for("https://gw.example.com/", "x").as_deref(),
            Some("https://gw.example.com")
        );
        assert_eq!(server_url_for("gopher://x", "x"), None);
    }
}
