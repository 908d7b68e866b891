//! Reaching the server through a proxy: the settings users already have (`wss_proxy`/`ws_proxy`,
//! `https_proxy`/`http_proxy`, `all_proxy`, bypassed by `no_proxy`), or `--proxy`, and the two
//! ways through one: HTTP `CONNECT` (Basic credentials from the proxy URL's userinfo) and SOCKS5
//! (`socks5h://`: the proxy resolves the name; `socks5://`: we do), with RFC 1929 credentials.
//!
//! The environment's proxy is never used for a loopback server (`localhost`, `127.0.0.0/8`,
//! `::1`), as with Go's `httpproxy` (kubectl): a remote proxy cannot reach our loopback, and a
//! plaintext token meant to stay on this machine would go to it in clear. `--proxy` still
//! applies; the caller then refuses a plaintext token without `--allow-plaintext`.
//!
//! Only how the TCP connection is opened changes: once through, the connection is the same
//! `TcpStream` as without a proxy (nothing is read past the proxy's answer), so the session's
//! data path is untouched. Everything up to the open tunnel (connecting to the proxy, its
//! answer) is the proxy's part: a failure or a timeout there is a proxy error. Proxy
//! credentials are never logged or printed: messages name the proxy as `scheme://host:port`
//! and where the setting came from.

use std::fmt;
use std::net::IpAddr;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use url::Url;
use wsgate_proto::base64::encode_std;

use crate::connect::Deadline;
use crate::endpoint::{is_loopback_host, with_default_scheme};
use crate::error::ClientError;
use wsgate_proto::text;

/// The longest proxy answer head accepted.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP `CONNECT`.
    Http,
    /// SOCKS5; `remote_dns`: the proxy resolves the server's name (`socks5h://`).
    Socks5 { remote_dns: bool },
}

/// A proxy to go through. `Debug` leaves the credentials out.
#[derive(Clone)]
pub struct Proxy {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    /// User name and password, percent-decoded.
    credentials: Option<(String, String)>,
    /// Where the setting came from (`--proxy`, `https_proxy`, ...), for messages.
    pub source: String,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.shown())
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<hidden>"),
            )
            .field("source", &self.source)
            .finish()
    }
}

impl Proxy {
    /// `scheme://host:port`: never the credentials.
    pub fn shown(&self) -> String {
        let scheme = match self.kind {
            Kind::Http => "http",
            Kind::Socks5 { remote_dns: true } => "socks5h",
            Kind::Socks5 { remote_dns: false } => "socks5",
        };
        format!("{scheme}://{}", authority(&self.host, self.port))
    }

    /// The name messages use: the URL and where it came from.
    pub fn described(&self) -> String {
        format!("{} (from {})", self.shown(), self.source)
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    fn error(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Proxy {
            proxy: self.described(),
            detail: detail.into(),
        }
    }
}

/// What `--proxy` said.
#[derive(Clone, Debug)]
pub enum Setting {
    /// No flag: the environment decides.
    FromEnv,
    /// `--proxy none`: connect directly whatever the environment says.
    Off,
    /// `--proxy URL`: this proxy for every connection (`no_proxy` does not apply).
    Flag(Proxy),
}

/// `--proxy`'s value. Errors never repeat the value (it may hold a password).
pub fn setting_from_flag(raw: Option<&str>) -> Result<Setting, ClientError> {
    match raw {
        None => Ok(Setting::FromEnv),
        Some(v) if v.eq_ignore_ascii_case("none") => Ok(Setting::Off),
        Some(v) => parse(v, "--proxy")
            .map(Setting::Flag)
            .map_err(|why| ClientError::Usage(format!("--proxy: {why}"))),
    }
}

/// A proxy URL: `http://[user:password@]host[:port]` (the scheme may be left out, as curl
/// allows), `socks5h://...` or `socks5://...`. The error says why, without the value.
pub fn parse(raw: &str, source: &str) -> Result<Proxy, String> {
    let raw = with_default_scheme(raw.trim(), "http");
    let url = Url::parse(&raw).map_err(|e| format!("not a proxy URL ({e})"))?;
    let (kind, default_port) = match url.scheme() {
        "http" => (Kind::Http, 80),
        "socks5h" => (Kind::Socks5 { remote_dns: true }, 1080),
        "socks5" => (Kind::Socks5 { remote_dns: false }, 1080),
        "https" => {
            return Err(
                "https:// proxies (TLS to the proxy) are not supported: use http:// (a wss:// session stays encrypted end to end inside the tunnel)".into(),
            )
        }
        other => {
            return Err(format!(
                "proxy scheme \"{}\" is not supported: use http://, socks5h:// or socks5://",
                text::escape(other)
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the proxy URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // The URL parser leaves the userinfo percent-encoded; a `%` not followed by two hex digits
    // stays as it is.
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        (user, pass) => Some((decode(user), decode(pass.unwrap_or_default()))),
    };
    Ok(Proxy {
        kind,
        host,
        port: url.port().unwrap_or(default_port),
        credentials,
        source: source.to_string(),
    })
}

/// The variables consulted for a `ws`/`wss` URL, in order (lowercase first, as curl does).
fn env_names(secure: bool) -> [&'static str; 6] {
    if secure {
        [
            "wss_proxy",
            "WSS_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ]
    } else {
        [
            "ws_proxy",
            "WS_PROXY",
            "http_proxy",
            "HTTP_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ]
    }
}

/// The proxy for a connection to `target` (a `ws://` or `wss://` URL); `env` reads a variable
/// (empty values count as unset). A loopback target never gets the environment's proxy.
pub fn choose(
    setting: &Setting,
    target: &Url,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ClientError> {
    match setting {
        Setting::Off => return Ok(None),
        Setting::Flag(p) => return Ok(Some(p.clone())),
        Setting::FromEnv => {}
    }
    let host = target.host_str().unwrap_or_default();
    if is_loopback_host(host) {
        tracing::debug!(
            host,
            "a loopback server: connecting directly (the environment's proxy is not used for loopback)"
        );
        return Ok(None);
    }
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let secure = target.scheme() == "wss";
    let Some((name, value)) = env_names(secure)
        .into_iter()
        .find_map(|n| get(n).map(|v| (n, v)))
    else {
        return Ok(None);
    };
    let port = target.port_or_known_default().unwrap_or(80);
    if let Some((no_name, list)) = ["no_proxy", "NO_PROXY"]
        .into_iter()
        .find_map(|n| get(n).map(|v| (n, v)))
    {
        if bypassed(&list, host, port) {
            tracing::debug!(host, "{no_name} matches: connecting directly");
            return Ok(None);
        }
    }
    parse(&value, name)
        .map(Some)
        .map_err(|why| ClientError::Proxy {
            proxy: format!("setting {name}"),
            detail: why,
        })
}

/// Whether `no_proxy` exempts `host:port`: a comma (or space) list of `*`, domains (`example.com`
/// and `.example.com` both match the domain and every name under it), IP addresses, CIDR
/// ranges (`10.0.0.0/8`), any of them with `:port` to exempt that port only. No implicit
/// entries here: loopback servers are left out of the proxy before this is asked (`choose`).
pub fn bypassed(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_port(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.to_ascii_lowercase();
            if let Some((net, bits)) = name.split_once('/') {
                return match (net.parse::<IpAddr>(), bits.parse::<u8>(), host_ip) {
                    (Ok(net), Ok(bits), Some(ip)) => in_network(ip, net, bits),
                    _ => false,
                };
            }
            if let Ok(ip) = name.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            // An address is matched by address entries only (`.0.0.1` is no domain of it).
            if host_ip.is_some() {
                return false;
            }
            let domain = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.');
            !domain.is_empty()
                && (host == domain
                    || (host.len() > domain.len()
                        && host.ends_with(domain)
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'))
        })
}

/// `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 address, or a name.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((name, p)) if !name.contains(':') => match p.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A TCP connection to `host:port` through `proxy`, ready for TLS or the WebSocket request.
/// The tunnel must be open by `deadline`: a proxy that does not accept the connection, or
/// accepts it and does not answer, is a proxy error naming it.
pub async fn dial(
    proxy: &Proxy,
    host: &str,
    port: u16,
    deadline: Deadline,
) -> Result<TcpStream, ClientError> {
    // With socks5:// the name is resolved here, before the proxy is involved; with socks5h://
    // (and CONNECT) the proxy resolves it.
    let ip = match (proxy.kind, host.parse::<IpAddr>()) {
        (_, Ok(ip)) => Some(ip),
        (Kind::Socks5 { remote_dns: false }, Err(_)) => Some(resolve(host, port, deadline).await?),
        _ => None,
    };
    let connected = timeout_at(
        deadline.at,
        TcpStream::connect((proxy.host.as_str(), proxy.port)),
    )
    .await;
    let mut tcp = match connected {
        Ok(tcp) => tcp.map_err(|e| proxy.error(format!("cannot connect to the proxy: {e}")))?,
        Err(_) => {
            return Err(proxy.error(format!(
                "the proxy did not accept the connection within {} (--connect-timeout): check its host and port, and that it can be reached from here",
                deadline.shown()
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    let tunnel = async {
        match proxy.kind {
            Kind::Http => connect_tunnel(proxy, &mut tcp, host, port).await,
            Kind::Socks5 { .. } => socks5(proxy, &mut tcp, host, ip, port).await,
        }
    };
    match timeout_at(deadline.at, tunnel).await {
        Ok(opened) => opened?,
        Err(_) => {
            return Err(proxy.error(match proxy.kind {
                Kind::Http => format!(
                    "the proxy accepted the connection but did not answer CONNECT {} within {} (--connect-timeout): check that it is an HTTP proxy (socks5h:// for a SOCKS one) and that it is working",
                    authority(host, port),
                    deadline.shown()
                ),
                Kind::Socks5 { .. } => format!(
                    "the proxy accepted the connection but did not complete the SOCKS5 exchange within {} (--connect-timeout): check that it is a SOCKS5 proxy (http:// for an HTTP one) and that it is working",
                    deadline.shown()
                ),
            }))
        }
    }
    tracing::debug!(proxy = %proxy.shown(), "tunnel open");
    Ok(tcp)
}

/// The address `host` resolves to here (for socks5://), by `deadline`.
async fn resolve(host: &str, port: u16, deadline: Deadline) -> Result<IpAddr, ClientError> {
    let failed = |detail: String| ClientError::Connect {
        addr: authority(host, port),
        detail: format!("{detail} (with socks5h:// the proxy resolves it)"),
    };
    match timeout_at(deadline.at, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(failed(format!(
            "the name did not resolve within {}",
            deadline.shown()
        ))),
        Ok(addrs) => addrs
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|a| a.ip())
            .ok_or_else(|| failed("the name does not resolve here".into())),
    }
}

/// `host:port`, an IPv6 host in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// HTTP `CONNECT host:port`; a 2xx opens the tunnel.
async fn connect_tunnel(
    proxy: &Proxy,
    tcp: &mut TcpStream,
    host: &str,
    port: u16,
) -> Result<(), ClientError> {
    let target = authority(host, port);
    let mut req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: wsgate/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, pass)) = &proxy.credentials {
        let basic = encode_std(format!("{user}:{pass}").as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    req.push_str("\r\n");
    let lost = |e: std::io::Error| proxy.error(format!("the connection to the proxy failed: {e}"));
    tcp.write_all(req.as_bytes()).await.map_err(lost)?;
    let head = read_head(tcp).await.map_err(|e| match e {
        HeadError::Io(e) => lost(e),
        HeadError::Closed => proxy.error(format!(
            "the proxy closed the connection instead of answering CONNECT {target}"
        )),
        HeadError::TooLong => proxy.error("the proxy's answer to CONNECT is too long"),
    })?;
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: Option<u16> = parts.next().and_then(|s| s.parse().ok());
    let reason = text::escape(parts.next().unwrap_or_default().trim()).into_owned();
    let Some(status) = status.filter(|_| version.starts_with("HTTP/")) else {
        return Err(proxy.error(format!(
            "the proxy's answer to CONNECT is not HTTP (\"{}\"): is it an HTTP proxy?",
            text::shown_bytes(status_line.as_bytes(), 60)
        )));
    };
    match status {
        200..=299 => Ok(()),
        // 407 is the standard answer; some proxies (tinyproxy) answer bad credentials with 401.
        407 | 401 => {
            let schemes: Vec<String> = lines
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| {
                    let k = k.trim();
                    k.eq_ignore_ascii_case("proxy-authenticate")
                        || k.eq_ignore_ascii_case("www-authenticate")
                })
                .filter_map(|(_, v)| {
                    v.split_whitespace()
                        .next()
                        .map(|s| text::escape(s).into_owned())
                })
                .collect();
            let basic =
                schemes.is_empty() || schemes.iter().any(|s| s.eq_ignore_ascii_case("basic"));
            Err(proxy.error(if !basic {
                format!(
                    "{status} {reason}: the proxy wants {} authentication, which wsgate does not speak (Basic only): ask for Basic credentials or another proxy",
                    schemes.join("/")
                )
            } else if proxy.has_credentials() {
                format!(
                    "{status} {reason}: the proxy refused the user name and password in its URL"
                )
            } else {
                format!(
                    "{status} {reason}: the proxy wants a user name and password: put them in the proxy URL (http://USER:PASSWORD@host:port; percent-encode special characters)"
                )
            }))
        }
        403 => Err(proxy.error(format!(
            "the proxy refused to connect to {target}: 403 {reason} (its rules do not allow it: ask the proxy's admins, or skip the proxy for this server with no_proxy or --proxy none)"
        ))),
        _ => Err(proxy.error(format!(
            "the proxy could not open a tunnel to {target}: {status} {reason}"
        ))),
    }
}

enum HeadError {
    Io(std::io::Error),
    Closed,
    TooLong,
}

/// The proxy's answer head, read without taking a byte past its end (what follows belongs to
/// TLS or the WebSocket handshake): peek, then read only what belongs to the head.
async fn read_head(tcp: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = tcp.peek(&mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let start = head.len();
        head.extend_from_slice(&buf[..n]);
        let from = start.saturating_sub(3);
        let end = head[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4);
        let take = end.map_or(n, |e| e - start);
        tcp.read_exact(&mut buf[..take])
            .await
            .map_err(HeadError::Io)?;
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

/// SOCKS5 (RFC 1928) `CONNECT` to `ip` if given, else to the name `host` (the proxy resolves
/// it), with user name and password (RFC 1929) when the URL has them.
async fn socks5(
    proxy: &Proxy,
    tcp: &mut TcpStream,
    host: &str,
    ip: Option<IpAddr>,
    port: u16,
) -> Result<(), ClientError> {
    let lost = |e: std::io::Error| {
        proxy.error(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the SOCKS proxy closed the connection (is it a SOCKS5 proxy?)".to_string()
        } else {
            format!("the connection to the SOCKS proxy failed: {e}")
        })
    };
    let greeting: &[u8] = if proxy.has_credentials() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    tcp.write_all(greeting).await.map_err(lost)?;
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.map_err(lost)?;
    if choice[0] != 5 {
        return Err(proxy.error("the proxy does not speak SOCKS5"));
    }
    match (choice[1], &proxy.credentials) {
        (0, _) => {}
        (2, Some((user, pass))) => {
            let (u, p) = (user.as_bytes(), pass.as_bytes());
            if u.len() > 255 || p.len() > 255 {
                return Err(proxy.error("SOCKS5 user names and passwords are at most 255 bytes"));
            }
            let mut auth = vec![1, u.len() as u8];
            auth.extend_from_slice(u);
            auth.push(p.len() as u8);
            auth.extend_from_slice(p);
            tcp.write_all(&auth).await.map_err(lost)?;
            let mut status = [0u8; 2];
            tcp.read_exact(&mut status).await.map_err(lost)?;
            if status[1] != 0 {
                return Err(proxy.error(
                    "the SOCKS proxy refused the user name and password in its URL",
                ));
            }
        }
        (0xFF, None) | (2, None) => {
            return Err(proxy.error(
                "the SOCKS proxy wants a user name and password: put them in the proxy URL (socks5h://USER:PASSWORD@host:port)",
            ))
        }
        (0xFF, Some(_)) => {
            return Err(proxy.error(
                "the SOCKS proxy accepts neither no authentication nor a user name and password",
            ))
        }
        (m, _) => {
            return Err(proxy.error(format!(
                "the SOCKS proxy chose an authentication method wsgate does not speak ({m})"
            )))
        }
    }
    let mut req = vec![5, 1, 0];
    match ip {
        Some(IpAddr::V4(v4)) => {
            req.push(1);
            req.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            req.push(4);
            req.extend_from_slice(&v6.octets());
        }
        None => {
            if host.len() > 255 {
                return Err(proxy.error("the server's name is too long for SOCKS5"));
            }
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&req).await.map_err(lost)?;
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).await.map_err(lost)?;
    if reply[1] != 0 {
        let why = match reply[1] {
            1 => "general failure",
            2 => "not allowed by its rules",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused by the server",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(proxy.error(format!(
            "the SOCKS proxy could not connect to {}: {why} (reply {})",
            authority(host, port),
            reply[1]
        )));
    }
    // The bound address, read whole so nothing of it is left for TLS or the handshake.
    let rest = match reply[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            tcp.read_exact(&mut len).await.map_err(lost)?;
            usize::from(len[0])
        }
        _ => return Err(proxy.error("the SOCKS proxy's reply has an unknown address type")),
    };
    let mut bound = vec![0u8; rest + 2];
    tcp.read_exact(&mut bound).await.map_err(lost)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(5))
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn urls_and_what_is_shown() {
        struct Case {
            raw: &'static str,
            shown: &'static str,
            credentials: Option<(&'static str, &'static str)>,
        }
        let cases = [
            Case {
                raw: "http://proxy.corp:3128",
                shown: "http://proxy.corp:3128",
                credentials: None,
            },
            Case {
                raw: "proxy.corp:3128",
                shown: "http://proxy.corp:3128",
                credentials: None,
            },
            Case {
                raw: "http://us%40er:p%3Ass%20w@proxy.corp",
                shown: "http://proxy.corp:80",
                credentials: Some(("us@er", "p:ss w")),
            },
            Case {
                raw: "socks5h://u:p@127.0.0.1",
                shown: "socks5h://127.0.0.1:1080",
                credentials: Some(("u", "p")),
            },
            Case {
                raw: "socks5://[::1]:9050",
                shown: "socks5://[::1]:9050",
                credentials: None,
            },
        ];
        for c in cases {
            let p = parse(c.raw, "test").unwrap();
            assert_eq!(p.shown(), c.shown, "{}", c.raw);
            assert_eq!(
                p.credentials
                    .as_ref()
                    .map(|(u, p)| (u.as_str(), p.as_str())),
                c.credentials,
                "{}",
                c.raw
            );
            let debug = format!("{p:?}");
            assert!(
                !debug.contains("p%3Ass") && !debug.contains("p:ss"),
                "{debug}"
            );
        }
        let p = parse("http://a%20b:%3a%zz%@proxy", "test").unwrap();
        assert_eq!(p.credentials, Some(("a b".into(), ":%zz%".into())));
        for bad in ["https://proxy:443", "socks4://proxy", "http://"] {
            assert!(parse(bad, "test").is_err(), "{bad}");
        }
        let e = setting_from_flag(Some("ftp://user:secret@proxy")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(matches!(setting_from_flag(Some("NONE")), Ok(Setting::Off)));
    }

    #[test]
    fn which_variable_wins() {
        struct Case {
            target: &'static str,
            vars: &'static [(&'static str, &'static str)],
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                target: "wss://gw.example.com/x",
                vars: &[
                    ("https_proxy", "http://https:1"),
                    ("wss_proxy", "http://wss:1"),
                    ("all_proxy", "http://all:1"),
                ],
                want: Some("http://wss:1 (from wss_proxy)"),
            },
            Case {
                target: "wss://gw.example.com/x",
                vars: &[
                    ("HTTPS_PROXY", "http://https:1"),
                    ("ALL_PROXY", "http://all:1"),
                ],
                want: Some("http://https:1 (from HTTPS_PROXY)"),
            },
            Case {
                target: "wss://gw.example.com/x",
                vars: &[("http_proxy", "http://plain:1")],
                want: None,
            },
            Case {
                target: "ws://gw.example.com/x",
                vars: &[
                    ("http_proxy", "http://plain:1"),
                    ("https_proxy", "http://https:1"),
                ],
                want: Some("http://plain:1 (from http_proxy)"),
            },
            Case {
                target: "ws://gw.example.com/x",
                vars: &[("ws_proxy", ""), ("ALL_PROXY", "socks5h://s:1")],
                want: Some("socks5h://s:1 (from ALL_PROXY)"),
            },
            Case {
                target: "wss://gw.example.com/x",
                vars: &[("https_proxy", "http://p:1"), ("no_proxy", ".example.com")],
                want: None,
            },
            Case {
                target: "wss://gw.example.com/x",
                vars: &[("https_proxy", "http://p:1"), ("NO_PROXY", "other.com")],
                want: Some("http://p:1 (from https_proxy)"),
            },
        ];
        for c in cases {
            let target = Url::parse(c.target).unwrap();
            let got = choose(&Setting::FromEnv, &target, env(c.vars)).unwrap();
            assert_eq!(
                got.map(|p| p.described()).as_deref(),
                c.want,
                "{:?}",
                c.vars
            );
        }
        // A loopback server never gets the environment's proxy, whatever no_proxy says (it
        // could not reach our loopback, and a token meant to stay here would go to it).
        let everything = [
            ("http_proxy", "http://p:1"),
            ("https_proxy", "http://p:1"),
            ("ws_proxy", "http://p:1"),
            ("wss_proxy", "http://p:1"),
            ("ALL_PROXY", "socks5h://s:1"),
            ("no_proxy", "other.com"),
        ];
        for target in [
            "ws://127.0.0.1:8080/x",
            "wss://127.0.0.1/x",
            "ws://127.9.9.9/x",
            "ws://localhost:8080/x",
            "wss://LOCALHOST/x",
            "ws://[::1]:8080/x",
            "ws://[::ffff:127.0.0.1]/x",
        ] {
            let target = Url::parse(target).unwrap();
            assert!(
                choose(&Setting::FromEnv, &target, env(&everything))
                    .unwrap()
                    .is_none(),
                "{target}"
            );
            // --proxy applies to every server, loopback included (the caller then wants
            // --allow-plaintext before a token goes over ws://).
            let flag = setting_from_flag(Some("http://f:2")).unwrap();
            assert_eq!(
                choose(&flag, &target, env(&everything))
                    .unwrap()
                    .map(|p| p.described())
                    .as_deref(),
                Some("http://f:2 (from --proxy)"),
                "{target}"
            );
        }
        for target in [
            "ws://0.0.0.0:8080/x",
            "ws://localhost.example.com/x",
            "ws://10.0.0.1/x",
        ] {
            let target = Url::parse(target).unwrap();
            assert!(
                choose(&Setting::FromEnv, &target, env(&everything))
                    .unwrap()
                    .is_some(),
                "{target}"
            );
        }
        let target = Url::parse("wss://gw.example.com").unwrap();
        let vars = env(&[("https_proxy", "http://p:1")]);
        assert!(choose(&Setting::Off, &target, &vars).unwrap().is_none());
        let flag = setting_from_flag(Some("socks5h://f:2")).unwrap();
        let vars = env(&[("https_proxy", "http://p:1"), ("no_proxy", "*")]);
        assert_eq!(
            choose(&flag, &target, vars).unwrap().unwrap().described(),
            "socks5h://f:2 (from --proxy)"
        );
        let e = choose(
            &Setting::FromEnv,
            &target,
            env(&[("https_proxy", "gopher://u:secret@p")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("https_proxy") && !e.to_string().contains("secret"));
    }

    #[test]
    fn no_proxy_entries() {
        struct Case {
            list: &'static str,
            host: &'static str,
            port: u16,
            want: bool,
        }
        let cases = [
            Case {
                list: "*",
                host: "anything",
                port: 443,
                want: true,
            },
            Case {
                list: "example.com",
                host: "example.com",
                port: 443,
                want: true,
            },
            Case {
                list: "example.com",
                host: "gw.example.com",
                port: 443,
                want: true,
            },
            Case {
                list: "example.com",
                host: "gwexample.com",
                port: 443,
                want: false,
            },
            Case {
                list: ".example.com",
                host: "example.com",
                port: 443,
                want: true,
            },
            Case {
                list: "*.example.com",
                host: "a.b.example.com",
                port: 443,
                want: true,
            },
            Case {
                list: "Example.COM.",
                host: "GW.example.com.",
                port: 443,
                want: true,
            },
            Case {
                list: "a.com, b.com",
                host: "b.com",
                port: 443,
                want: true,
            },
            Case {
                list: "a.com b.com",
                host: "b.com",
                port: 443,
                want: true,
            },
            Case {
                list: "127.0.0.1",
                host: "127.0.0.1",
                port: 8080,
                want: true,
            },
            Case {
                list: ".0.0.1",
                host: "127.0.0.1",
                port: 8080,
                want: false,
            },
            Case {
                list: "127.0.0.1",
                host: "localhost",
                port: 8080,
                want: false,
            },
            Case {
                list: "localhost",
                host: "127.0.0.1",
                port: 8080,
                want: false,
            },
            Case {
                list: "10.0.0.0/8",
                host: "10.1.2.3",
                port: 443,
                want: true,
            },
            Case {
                list: "10.0.0.0/8",
                host: "11.1.2.3",
                port: 443,
                want: false,
            },
            Case {
                list: "::1",
                host: "[::1]",
                port: 443,
                want: true,
            },
            Case {
                list: "[::1]:443",
                host: "[::1]",
                port: 443,
                want: true,
            },
            Case {
                list: "fd00::/8",
                host: "[fd12::1]",
                port: 443,
                want: true,
            },
            Case {
                list: "gw.example.com:8443",
                host: "gw.example.com",
                port: 8443,
                want: true,
            },
            Case {
                list: "gw.example.com:8443",
                host: "gw.example.com",
                port: 443,
                want: false,
            },
            Case {
                list: "127.0.0.1:9000",
                host: "127.0.0.1",
                port: 9001,
                want: false,
            },
            Case {
                list: "",
                host: "example.com",
                port: 443,
                want: false,
            },
            Case {
                list: ".",
                host: "example.com",
                port: 443,
                want: false,
            },
        ];
        for c in cases {
            assert_eq!(
                bypassed(c.list, c.host, c.port),
                c.want,
                "{:?} vs {}:{}",
                c.list,
                c.host,
                c.port
            );
        }
    }

    /// A proxy that answers CONNECT with `answer` and then sends `after` (the first bytes of
    /// the tunnel): the head is read to its end and not a byte further.
    async fn http_proxy(
        answer: &'static str,
        after: &'static [u8],
    ) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                req.push(b[0]);
            }
            let mut all = answer.as_bytes().to_vec();
            all.extend_from_slice(after);
            s.write_all(&all).await.unwrap();
            let _ = s.read(&mut [0u8; 1]).await;
            String::from_utf8(req).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn connect_sends_basic_credentials_and_keeps_the_tunnel_bytes() {
        let (port, task) = http_proxy(
            "HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n",
            b"tunnel",
        )
        .await;
        let p = parse(
            &format!("http://al%20ice:s%3Acret@127.0.0.1:{port}"),
            "test",
        )
        .unwrap();
        let mut tcp = dial(&p, "gw.example.com", 443, soon()).await.unwrap();
        let mut first = [0u8; 6];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"tunnel");
        drop(tcp);
        let req = task.await.unwrap();
        assert!(
            req.starts_with("CONNECT gw.example.com:443 HTTP/1.1\r\nHost: gw.example.com:443\r\n"),
            "{req}"
        );
        let basic = encode_std(b"al ice:s:cret");
        assert!(
            req.contains(&format!("Proxy-Authorization: Basic {basic}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn connect_refusals_say_what_to_do() {
        struct Case {
            answer: &'static str,
            url: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                answer: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
                url: "http://127.0.0.1",
                want: "wants a user name and password: put them in the proxy URL",
            },
            Case {
                answer: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
                url: "http://u:hunter2@127.0.0.1",
                want: "refused the user name and password",
            },
            Case {
                answer: "HTTP/1.1 401 Unauthorized\r\n\r\n",
                url: "http://u:hunter2@127.0.0.1",
                want: "401 Unauthorized: the proxy refused the user name and password",
            },
            Case {
                answer: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n\r\n",
                url: "http://127.0.0.1",
                want: "wants Negotiate authentication",
            },
            Case {
                answer: "HTTP/1.1 403 Access violation\x1b[31m\r\n\r\n",
                url: "http://127.0.0.1",
                want: "refused to connect to gw:443: 403 Access violation\\x1b[31m",
            },
        ];
        for c in cases {
            let (port, _task) = http_proxy(c.answer, b"").await;
            let p = parse(&format!("{}:{port}", c.url), "https_proxy").unwrap();
            let e = dial(&p, "gw", 443, soon()).await.unwrap_err();
            let m = e.to_string();
            assert!(m.contains(c.want), "{m}");
            assert!(
                m.starts_with(&format!(
                    "proxy http://127.0.0.1:{port} (from https_proxy): "
                )),
                "{m}"
            );
            assert!(!m.contains("hunter2"), "{m}");
            assert_eq!(e.exit_code(), 12);
        }
    }

    #[tokio::test]
    async fn nothing_listening_names_the_proxy() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let p = parse(&format!("http://u:hunter2@127.0.0.1:{port}"), "--proxy").unwrap();
        let m = dial(&p, "gw", 443, soon()).await.unwrap_err().to_string();
        assert!(
            m.starts_with(&format!(
                "proxy http://127.0.0.1:{port} (from --proxy): cannot connect to the proxy"
            )),
            "{m}"
        );
        assert!(!m.contains("hunter2"), "{m}");
    }

    /// A proxy that accepts the connection and never answers (CONNECT or SOCKS greeting): a
    /// proxy failure (exit 12) that names the proxy, not a connection failure to the server.
    #[tokio::test]
    async fn a_proxy_that_never_answers_is_a_proxy_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                conns.push(s);
            }
        });
        struct Case {
            url: String,
            want: String,
        }
        let cases = [
            Case {
                url: format!("http://u:hunter2@127.0.0.1:{port}"),
                want: format!("proxy http://127.0.0.1:{port} (from --proxy): the proxy accepted the connection but did not answer CONNECT gw:443 within 300ms (--connect-timeout)"),
            },
            Case {
                url: format!("socks5h://u:hunter2@127.0.0.1:{port}"),
                want: format!("proxy socks5h://127.0.0.1:{port} (from --proxy): the proxy accepted the connection but did not complete the SOCKS5 exchange within 300ms (--connect-timeout)"),
            },
        ];
        for Case { url, want } in cases {
            let p = parse(&url, "--proxy").unwrap();
            let dialled = dial(&p, "gw", 443, Deadline::after(Duration::from_millis(300)));
            let e = tokio::time::timeout(Duration::from_secs(5), dialled)
                .await
                .expect("dial gave up by itself")
                .unwrap_err();
            assert_eq!(e.exit_code(), 12, "{e}");
            let m = e.to_string();
            assert!(m.starts_with(&want), "{m}");
            assert!(!m.contains("hunter2"), "{m}");
        }
        held.abort();
    }

    /// A scripted SOCKS5 server: checks the greeting, credentials and request, then answers.
    #[tokio::test]
    async fn socks5h_sends_the_name_and_credentials() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).await.unwrap();
            s.write_all(&[5, 2]).await.unwrap();
            let mut auth = [0u8; 1 + 1 + 1 + 1 + 2];
            s.read_exact(&mut auth).await.unwrap();
            s.write_all(&[1, 0]).await.unwrap();
            let mut req = [0u8; 4 + 1 + 14 + 2];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80, b'x'])
                .await
                .unwrap();
            let _ = s.read(&mut [0u8; 1]).await;
            (greeting, auth, req)
        });
        let p = parse(&format!("socks5h://u:pw@127.0.0.1:{port}"), "test").unwrap();
        let mut tcp = dial(&p, "gw.example.com", 443, soon()).await.unwrap();
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"x", "the bound address was read whole");
        drop(tcp);
        let (greeting, auth, req) = server.await.unwrap();
        assert_eq!(greeting, [5, 2, 0, 2]);
        assert_eq!(&auth, b"\x01\x01u\x02pw");
        assert_eq!(&req[..5], &[5, 1, 0, 3, 14]);
        assert_eq!(&req[5..19], b"gw.example.com");
        assert_eq!(&req[19..], &443u16.to_be_bytes());
    }
}
