//! From what the user types (`https://gw.example.com/prefix`, `prod.wsgate`) to the WebSocket
//! URL: scheme mapping, path prefix kept, cluster validated, SkyPilot's query.

use url::Url;
use wsgate_core::route::is_dns_label;

use crate::error::ClientError;

/// What `client_version` we announce: above 21, so servers use SkyPilot's typed framing (the
/// value SkyPilot's own client sends today).
pub const CLIENT_VERSION: u32 = 62;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The `ws://` or `wss://` URL to open.
    pub url: Url,
    /// `host[:port]`, for messages.
    pub host: String,
    pub plaintext: bool,
    /// Loopback hosts may get a token over plaintext (nothing leaves the machine).
    pub loopback: bool,
    pub cluster: String,
}

/// Builds the session URL. `cluster` may be a host alias (`prod.wsgate`): a cluster is one
/// DNS label, so everything from the first dot on is dropped (what `ssh-config` relies on).
pub fn build(
    server: &str,
    cluster: &str,
    worker: u32,
    endpoint: &str,
) -> Result<Endpoint, ClientError> {
    let mut url = Url::parse(server)
        .map_err(|e| ClientError::Usage(format!("server URL {server:?}: {e}")))?;
    let scheme = match url.scheme() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        other => {
            return Err(ClientError::Usage(format!(
                "server URL scheme {other:?}: use https:// (or http:// on a trusted network)"
            )))
        }
    };
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
    url.set_path(&format!("{prefix}/{}", endpoint.trim_matches('/')));
    url.set_fragment(None);
    url.query_pairs_mut()
        .clear()
        .append_pair("cluster_name", &cluster)
        .append_pair("worker", &worker.to_string())
        .append_pair("client_version", &CLIENT_VERSION.to_string());
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let shown = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    Ok(Endpoint {
        plaintext: scheme == "ws",
        loopback,
        host: shown,
        cluster,
        url,
    })
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
        let cases = [
            ("https://gw.example.com", "prod", "wss://gw.example.com/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62", false, false),
            ("http://gw.example.com:8080/", "prod", "ws://gw.example.com:8080/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62", true, false),
            ("https://gw.example.com/sky/", "prod.wsgate", "wss://gw.example.com/sky/kubernetes-pod-ssh-proxy?cluster_name=prod&worker=0&client_version=62", false, false),
            ("wss://127.0.0.1:9443/a/b", "dev", "wss://127.0.0.1:9443/a/b/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62", false, true),
            ("ws://localhost", "dev", "ws://localhost/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62", true, true),
            ("http://[::1]:80/", "dev", "ws://[::1]/kubernetes-pod-ssh-proxy?cluster_name=dev&worker=0&client_version=62", true, true),
        ];
        for (server, cluster, want, plaintext, loopback) in cases {
            let e = build(server, cluster, 0, "kubernetes-pod-ssh-proxy").unwrap();
            assert_eq!(e.url.as_str(), want, "{server}");
            assert_eq!((e.plaintext, e.loopback), (plaintext, loopback), "{server}");
        }
        let e = build("https://gw.example.com?x=1", "prod", 3, "/ssh/").unwrap();
        assert_eq!(
            e.url.as_str(),
            "wss://gw.example.com/ssh?cluster_name=prod&worker=3&client_version=62"
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for (server, cluster) in [
            ("ftp://x", "a"),
            ("not a url", "a"),
            ("https://gw", "Prod"),
            ("https://gw", "a_b"),
            ("https://gw", ""),
        ] {
            let e = build(server, cluster, 0, "kubernetes-pod-ssh-proxy").unwrap_err();
            assert_eq!(e.exit_code(), 2, "{server} {cluster}: {e}");
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
