//! Opening the WebSocket: TCP (directly or through a proxy), TLS, the request (token as
//! `Authorization` or as a Kubernetes subprotocol entry, extra headers), and every failure
//! turned into a [`ClientError`] worth reading.
//!
//! tungstenite does the HTTP handshake (request, `Sec-WebSocket-Accept`, error responses with
//! their bodies); the session then works on the connection itself (see `session`). tungstenite
//! keeps what it read past the `101` (the server's first frame can come with it), so the
//! handshake runs over a [`Recorder`] that keeps a copy of every byte it hands over, and those
//! bytes after the head are given to the session. The same copy tells a TLS server's answer to
//! a plaintext request apart from other failures; a peek at the server's first bytes during
//! the TLS handshake tells a plain-HTTP server's answer apart from other TLS failures. Neither
//! stays on the connection once it is open.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue, Response};
use tokio_tungstenite::tungstenite::Error as WsError;
use wsgate_proto::base64::encode_raw_url;
use wsgate_proto::names::{
    is_header_value, parse_replay_buffer, REPLAY_BUFFER_HEADER, WEBSOCKET_URL_HEADER,
};
use wsgate_proto::token::BEARER_PROTOCOL_PREFIX;

use crate::credentials::Token;
use crate::endpoint::{server_url_for, Endpoint};
use crate::error::{ClientError, TokenUse, Withheld};
use crate::proxy::{self, Proxy};
use crate::resume::{self, Ticket};
use wsgate_proto::text;

/// A connection to the server, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket: the connection after the handshake, and what the server sent past its
/// `101` (the start of its first frames, or nothing).
pub struct Conn {
    pub io: Box<dyn Io>,
    pub read_ahead: Vec<u8>,
    /// This end's socket address (to the proxy, when there is one), for the session's logs.
    pub local: Option<SocketAddr>,
    /// The `101`'s `x-wsgate-resume` (`v1`: the server accepted resumption), if any.
    pub resume: Option<String>,
    /// The `101`'s [`Request::route_header`], to echo on resumes (if it is a sendable value).
    pub route: Option<String>,
    /// The `101`'s `x-wsgate-replay-buffer`: the bytes the server keeps for a replay, if it
    /// said (well-formed); its bytes are acknowledged a quarter of that at a time.
    pub replay_buffer: Option<u64>,
}

/// What a request says about resumption (docs/resume.md).
#[derive(Clone, Copy, Debug)]
pub enum Resumption<'a> {
    /// Nothing (`--no-resume`): the server runs today's session.
    Off,
    /// `x-wsgate-resume: new` (a first connection).
    Offer,
    /// `x-wsgate-resume: resume <id> <secret>`, and the first `101`'s route header echoed.
    Resume {
        ticket: &'a Ticket,
        route: Option<&'a str>,
    },
}

/// The subprotocol offered beside a subprotocol token (a token needs another entry beside it).
pub const SUBPROTOCOL: &str = "wsgate.ssh.v1";

#[derive(Clone)]
pub struct Request<'a> {
    pub endpoint: &'a Endpoint,
    /// The endpoint path as given (`--endpoint`), for turning hints back into server URLs and
    /// for the 404 message.
    pub endpoint_path: &'a str,
    pub token: Option<&'a Token>,
    pub token_in_subprotocol: bool,
    pub headers: &'a [(String, String)],
    /// `None` for `ws://`: no TLS, and no reading of the system's CA store (milliseconds of
    /// start-up a plaintext loopback session does not need).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    /// Headers from a redirect frame (SkyPilot's redirect protocol), used as given: each
    /// replaces a header of the same name (the token's included).
    pub extra: &'a [(String, String)],
    /// The proxy to go through, if any.
    pub proxy: Option<&'a Proxy>,
    /// This is a SkyPilot redirect's target on another origin: the user's token and headers
    /// were left out on purpose (`token` is `None`, `headers` empty), and a 401 or 403 says so.
    pub cross_origin: bool,
    /// Offer resumption, ask to resume a session, or neither.
    pub resumption: Resumption<'a>,
    /// The `101`'s header read into [`Conn::route`], and sent back on a resume.
    pub route_header: Option<&'a str>,
}

/// When the handshake must be done by: `--connect-timeout` from its start. The proxy's part
/// (up to the open tunnel) and the rest share it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    /// The whole allowance, for messages.
    pub limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Self {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// The allowance as the command line writes it (`30s`, `500ms`).
    pub fn shown(&self) -> String {
        if self.limit.subsec_millis() == 0 {
            format!("{}s", self.limit.as_secs())
        } else {
            format!("{}ms", self.limit.as_millis())
        }
    }
}

/// What messages add when the connection goes through a proxy: ` (through the proxy …)`.
fn through(proxy: Option<&Proxy>) -> String {
    proxy
        .map(|p| format!(" (through the proxy {})", p.described()))
        .unwrap_or_default()
}

/// Whether `first` starts like a TLS server's first record: an alert (21) or a handshake
/// (22), record version 3.x. (A server's first record is never change-cipher-spec,
/// application data or heartbeat.)
fn is_tls_record(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 3, ..])
}

/// Connects and upgrades, all within `r.timeout`.
pub async fn open(r: &Request<'_>) -> Result<Conn, ClientError> {
    let mut req = r
        .endpoint
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Usage(format!("request: {e}")))?;
    let h = req.headers_mut();
    if let Some(t) = r.token {
        if r.token_in_subprotocol {
            let entry = format!(
                "{BEARER_PROTOCOL_PREFIX}{}, {SUBPROTOCOL}",
                encode_raw_url(t.value.expose().as_bytes())
            );
            h.insert("sec-websocket-protocol", header_value(&entry)?);
        } else {
            h.insert(
                "authorization",
                header_value(&format!("Bearer {}", t.value.expose()))?,
            );
        }
    }
    for (k, v) in r.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ClientError::Usage(format!("--header {k:?}: not a header name")))?;
        h.append(name, header_value(v)?);
    }
    for (k, v) in r.extra {
        let bad = || {
            ClientError::Protocol(format!(
                "the server's redirect asks for a header \"{}\" that cannot be sent",
                text::escape(k)
            ))
        };
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
        h.insert(name, HeaderValue::from_str(v).map_err(|_| bad())?);
    }
    resumption_headers(r, h)?;
    let deadline = Deadline::after(r.timeout);
    let handshake = async {
        let (io, local) = connect(r, deadline).await?;
        let mut recorder = Recorder {
            io: Some(io),
            seen: Vec::new(),
        };
        // Frame limits are the session's (16 MiB): tungstenite reads no frame here.
        let result = tokio_tungstenite::client_async(req, &mut recorder).await;
        let (resume, route, replay_buffer) = match result {
            Err(e) => return Err(classify(r, e, &recorder.seen, deadline).await),
            Ok((_, resp)) => {
                let value = |name: &str| {
                    let v = resp.headers().get(name)?.to_str().ok()?;
                    is_header_value(v).then(|| v.to_string())
                };
                // Stated once or not taken: two values are no statement.
                let mut stated = resp.headers().get_all(REPLAY_BUFFER_HEADER).iter();
                let replay_buffer = match (stated.next(), stated.next()) {
                    (Some(v), None) => v.to_str().ok().and_then(parse_replay_buffer),
                    _ => None,
                };
                (
                    value(resume::HEADER),
                    r.route_header.and_then(value),
                    replay_buffer,
                )
            }
        };
        let io = recorder.io.take().ok_or_else(|| {
            ClientError::Protocol("the connection was lost during the handshake".into())
        })?;
        let read_ahead = after_head(&recorder.seen).to_vec();
        Ok(Conn {
            io,
            read_ahead,
            local,
            resume,
            route,
            replay_buffer,
        })
    };
    // A timeout while the proxy opens the tunnel is the proxy's error, from `proxy::dial` (its
    // timer has the same deadline and is polled first); what is left is the server's.
    match tokio::time::timeout_at(deadline.at, handshake).await {
        Err(_) => Err(ClientError::Connect {
            addr: r.endpoint.host.clone(),
            detail: format!("no answer within {}{}", deadline.shown(), through(r.proxy)),
        }),
        Ok(res) => res,
    }
}

/// The server's host (no brackets) and port.
fn host_port(r: &Request<'_>) -> Result<(String, u16), ClientError> {
    let url = &r.endpoint.url;
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Usage(format!("{url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, url.port_or_known_default().unwrap_or(80)))
}

/// TCP to the server, directly or through the proxy (no Nagle: ssh's keystrokes are small).
async fn dial(r: &Request<'_>, deadline: Deadline) -> Result<TcpStream, ClientError> {
    let (host, port) = host_port(r)?;
    if let Some(p) = r.proxy {
        return proxy::dial(p, &host, port, deadline).await;
    }
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Connect {
            addr: r.endpoint.host.clone(),
            detail: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TCP, then TLS for `wss://`; also this end's socket address.
async fn connect(
    r: &Request<'_>,
    deadline: Deadline,
) -> Result<(Box<dyn Io>, Option<SocketAddr>), ClientError> {
    let tcp = dial(r, deadline).await?;
    let local = tcp.local_addr().ok();
    let Some(tls) = &r.tls else {
        return Ok((Box::new(tcp), local));
    };
    let (host, _) = host_port(r)?;
    match tls_handshake(Arc::clone(tls), &host, tcp).await {
        Ok(stream) => Ok((Box::new(stream), local)),
        Err((e, first)) => Err(tls_error(r, e, &first)),
    }
}

/// The TLS handshake; on failure, also the first bytes the server sent (peeked before rustls
/// took them), which tell a plain-HTTP answer apart. The stream returned is tokio-rustls's
/// over the bare `TcpStream`: the peek is not part of it.
async fn tls_handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, (io::Error, Vec<u8>)> {
    let name = match ServerName::try_from(host.to_string()) {
        Ok(n) => n,
        Err(e) => return Err((io::Error::new(io::ErrorKind::InvalidInput, e), Vec::new())),
    };
    let mut connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let mut first = [0u8; 64];
    let mut seen = 0;
    let result = std::future::poll_fn(|cx| {
        if seen == 0 {
            if let Some(tcp) = connect.get_mut() {
                let mut buf = ReadBuf::new(&mut first);
                if let Poll::Ready(Ok(n)) = tcp.poll_peek(cx, &mut buf) {
                    seen = n;
                }
            }
        }
        Pin::new(&mut connect).poll(cx)
    })
    .await;
    result.map_err(|e| (e, first[..seen].to_vec()))
}

/// A TLS handshake failure: a server that answered in plain text, or TLS's own failure with
/// what to do about it.
fn tls_error(r: &Request<'_>, e: io::Error, first: &[u8]) -> ClientError {
    let host = r.endpoint.host.clone();
    if !first.is_empty() && !is_tls_record(first) {
        let line = first
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(first);
        return ClientError::NotTls {
            host,
            reply: text::shown_bytes(line, 40),
        };
    }
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match rustls_error {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::UnknownIssuer
            | rustls::CertificateError::BadSignature
            | rustls::CertificateError::UnknownRevocationStatus => {
                "; if the server uses a private CA, pass --ca-file <ca.pem>"
            }
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                "; the certificate does not name this host: use the name it was issued for"
            }
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "; the server's certificate has expired (or this machine's clock is wrong)"
            }
            _ => "; if the server uses a private CA, pass --ca-file <ca.pem>",
        },
        Some(_) => "",
        None if first.is_empty() => {
            "; the server closed the connection during the TLS handshake: check that this port serves TLS (else use http://)"
        }
        None => "",
    };
    ClientError::Tls {
        host,
        detail: text::escape(&e.to_string()).into_owned(),
        hint: hint.to_string(),
    }
}

/// The bytes after the end of the HTTP head (`\r\n\r\n`) in what the handshake read.
fn after_head(seen: &[u8]) -> &[u8] {
    match seen.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => &seen[at + 4..],
        None => &[],
    }
}

/// The connection during the handshake, keeping a copy of every byte read (a few hundred:
/// the response head and what came with it). Taken out of tungstenite's hands afterwards.
struct Recorder {
    io: Option<Box<dyn Io>>,
    seen: Vec<u8>,
}

impl Recorder {
    fn io(&mut self) -> io::Result<&mut Box<dyn Io>> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let io = match this.io() {
            Ok(io) => io,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let r = Pin::new(io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.seen.extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, b),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The resumption headers: the offer and the replay buffer this end keeps, or the ticket
/// (marked sensitive: it is a credential) and the route to echo. They replace a `--header` of
/// the same name.
fn resumption_headers(r: &Request<'_>, h: &mut HeaderMap) -> Result<(), ClientError> {
    match r.resumption {
        Resumption::Off => {}
        Resumption::Offer => {
            h.insert(resume::HEADER, HeaderValue::from_static(resume::OFFER));
            h.insert(REPLAY_BUFFER_HEADER, resume::REPLAY_BUFFER.into());
        }
        Resumption::Resume { ticket, route } => {
            let mut v = header_value(&ticket.header_value())?;
            v.set_sensitive(true);
            h.insert(resume::HEADER, v);
            if let (Some(name), Some(value)) = (r.route_header, route) {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ClientError::Usage(format!("--route-header {name:?}: not a header name"))
                })?;
                h.insert(name, header_value(value)?);
            }
        }
    }
    Ok(())
}

fn header_value(v: &str) -> Result<HeaderValue, ClientError> {
    // The value may hold a token: the error never shows it.
    HeaderValue::from_str(v)
        .map_err(|_| ClientError::Usage("a header value has invalid characters".into()))
}

/// A failed WebSocket handshake; `seen` is what the server sent.
async fn classify(r: &Request<'_>, e: WsError, seen: &[u8], deadline: Deadline) -> ClientError {
    let host = r.endpoint.host.clone();
    if let WsError::Http(resp) = &e {
        return http_error(r, resp);
    }
    // A TLS server's answer to our plaintext request: an alert or a handshake record.
    if r.tls.is_none() && is_tls_record(seen) {
        return ClientError::SpeaksTls {
            host,
            evidence: "it answered the plaintext request with a TLS record".into(),
        };
    }
    let closed = matches!(e, WsError::Protocol(ProtocolError::HandshakeIncomplete))
        || matches!(&e, WsError::Io(io) if matches!(io.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe));
    if r.tls.is_none() && seen.is_empty() && closed && speaks_tls(r, deadline).await {
        return ClientError::SpeaksTls {
            host,
            evidence: "it closed the plaintext request unanswered and answers a TLS handshake"
                .into(),
        };
    }
    match e {
        WsError::Tls(e) => ClientError::Tls {
            host,
            detail: text::escape(&e.to_string()).into_owned(),
            hint: String::new(),
        },
        WsError::Io(e) => ClientError::Connect {
            addr: host,
            detail: text::escape(&e.to_string()).into_owned(),
        },
        WsError::Protocol(ProtocolError::HandshakeIncomplete) => ClientError::Protocol(format!(
            "{host} closed the connection without answering the WebSocket request{}",
            through(r.proxy)
        )),
        other => ClientError::Protocol(format!(
            "WebSocket handshake with {host} failed: {}",
            text::escape(&other.to_string())
        )),
    }
}

/// Whether the server answers a TLS handshake (certificate not checked: nothing is sent over
/// it). Asked only to explain a plaintext request closed without an answer.
async fn speaks_tls(r: &Request<'_>, deadline: Deadline) -> bool {
    let Ok(tcp) = dial(r, deadline).await else {
        return false;
    };
    let Ok((host, _)) = host_port(r) else {
        return false;
    };
    let Ok(config) = crate::tls::client_config(None, true) else {
        return false;
    };
    let probe = tls_handshake(config, &host, tcp);
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(_)) => true,
        Ok(Err((_, first))) => is_tls_record(&first),
        Err(_) => false,
    }
}

/// What became of the user's token on this request, for a 401 or 403. `path` is the endpoint
/// path, for the server URL that would reach a redirect target directly.
fn token_use(r: &Request<'_>, path: &str) -> TokenUse {
    if r.cross_origin {
        return TokenUse::Withheld(Box::new(Withheld {
            origin: text::escape(&r.endpoint.url.origin().ascii_serialization()).into_owned(),
            named: r
                .extra
                .iter()
                .map(|(k, _)| text::escape(&k.to_ascii_lowercase()).into_owned())
                .collect(),
            use_instead: server_url_for(r.endpoint.url.as_str(), path)
                .map(|u| text::escape(&u).into_owned()),
        }));
    }
    match r.token {
        Some(t) => TokenUse::Sent {
            source: t.source.clone(),
            hint: t.hint.clone(),
        },
        None => TokenUse::NoneGiven,
    }
}

fn http_error(r: &Request<'_>, resp: &Response<Option<Vec<u8>>>) -> ClientError {
    let host = r.endpoint.host.clone();
    let status = resp.status().as_u16();
    let path = crate::endpoint::endpoint_path(r.endpoint_path, &r.endpoint.cluster);
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| text::escape(v).into_owned())
    };
    let raw_body = resp.body().as_deref().unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(raw_body).ok();
    let reason = match &json {
        Some(b) => {
            let code = b["reason"].as_str().map(text::escape);
            let text = b["error"].as_str().map(text::escape);
            match (text, code) {
                (Some(t), Some(c)) => Some(format!("{t} ({c})")),
                (Some(t), None) => Some(t.into_owned()),
                (None, Some(c)) => Some(c.into_owned()),
                (None, None) => None,
            }
        }
        // A plain-text body (e.g. Istio's "RBAC: access denied"); not HTML pages.
        None if !raw_body.is_empty()
            && header("content-type")
                .is_none_or(|t| t.to_ascii_lowercase().starts_with("text/plain")) =>
        {
            Some(text::shown_bytes(raw_body, text::MAX_SHOWN))
        }
        None => None,
    };
    match status {
        301 | 302 | 303 | 307 | 308 | 426 => {
            let via = header(WEBSOCKET_URL_HEADER).or_else(|| header("location"));
            let use_instead = via.as_deref().and_then(|u| server_url_for(u, &path));
            ClientError::Redirected {
                status,
                via,
                use_instead,
            }
        }
        401 => ClientError::Auth {
            status,
            host,
            reason,
            token: token_use(r, &path),
        },
        403 => ClientError::Forbidden {
            host,
            cluster: r.endpoint.cluster.clone(),
            reason,
            token: token_use(r, &path),
        },
        404 => ClientError::NotFound {
            host,
            reason,
            tried: text::escape(r.endpoint.url.path()).into_owned(),
            expected: format!("/{path}"),
        },
        // nginx's answer to plain HTTP on its TLS port.
        400 if String::from_utf8_lossy(raw_body)
            .contains("HTTP request was sent to HTTPS port") =>
        {
            ClientError::SpeaksTls {
                host,
                evidence: "it says: the plain HTTP request was sent to an HTTPS port".into(),
            }
        }
        429 | 502 | 503 | 504 => ClientError::Backend {
            status,
            host,
            reason,
        },
        _ => ClientError::Http {
            status,
            host,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    //! The server here is a few lines over a real loopback socket: the tests need answers a
    //! WebSocket library would not give (a frame in the same write as the `101`).
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    #[test]
    fn bytes_after_the_head() {
        assert_eq!(after_head(b"HTTP/1.1 101 x\r\n"), b"");
        assert_eq!(after_head(b"HTTP/1.1 101 x\r\n\r\n"), b"");
        assert_eq!(
            after_head(b"HTTP/1.1 101 x\r\n\r\n\x82\x01\x00"),
            b"\x82\x01\x00"
        );
    }

    /// Reads the request head and answers with `answer(head, key)` in one write.
    async fn serve_once(answer: impl FnOnce(&str, &str) -> Vec<u8> + Send + 'static) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Sec-WebSocket-Key: ")
                        .or(l.strip_prefix("sec-websocket-key: "))
                })
                .unwrap()
                .to_string();
            s.write_all(&answer(&head, &key)).await.unwrap();
            // Keep the socket open while the client reads.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        format!("http://{addr}")
    }

    async fn open_at(server: &str) -> Result<Conn, ClientError> {
        open_with(server, None, false, Duration::from_secs(5)).await
    }

    async fn open_with(
        server: &str,
        proxy: Option<&Proxy>,
        cross_origin: bool,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let endpoint = crate::endpoint::build(server, "prod", 0, "/ssh").unwrap();
        let extra = [("X-Redirect-Ticket".to_string(), "t-1".to_string())];
        let req = Request {
            endpoint: &endpoint,
            endpoint_path: "/ssh",
            token: None,
            token_in_subprotocol: false,
            headers: &[],
            tls: None,
            timeout,
            extra: if cross_origin { &extra } else { &[] },
            proxy,
            cross_origin,
            resumption: Resumption::Off,
            route_header: None,
        };
        open(&req).await
    }

    /// Answers the first request with a `101` carrying `headers` (each line ending in CRLF);
    /// hands over the request's head.
    async fn serve_101(
        headers: &'static str,
    ) -> (String, futures_channel::oneshot::Receiver<String>) {
        let (tx, rx) = futures_channel::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let url = serve_once(move |head, key| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(head.to_string());
            }
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n{headers}\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes()
        })
        .await;
        (url, rx)
    }

    /// The value of header `name` in a request head (names compared case-insensitively).
    fn header_in<'h>(head: &'h str, name: &str) -> Option<&'h str> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Opens `base` at `url`.
    async fn offer_to(base: &Request<'_>, url: &str) -> Conn {
        let e = crate::endpoint::build(url, "prod", 0, "/ssh").unwrap();
        open(&Request {
            endpoint: &e,
            ..base.clone()
        })
        .await
        .unwrap()
    }

    /// A first connection offers resumption with its replay buffer, and reads the acceptance,
    /// the route and the server's replay buffer from the `101`; with resumption off, no header
    /// is sent and none is read.
    #[tokio::test]
    async fn resumption_offered_and_accepted() {
        let endpoint = crate::endpoint::build("http://127.0.0.1:1", "prod", 0, "/ssh").unwrap();
        let base = Request {
            endpoint: &endpoint,
            endpoint_path: "/ssh",
            token: None,
            token_in_subprotocol: false,
            headers: &[],
            tls: None,
            timeout: Duration::from_secs(5),
            extra: &[],
            proxy: None,
            cross_origin: false,
            resumption: Resumption::Offer,
            route_header: Some("x-wsgate-route"),
        };
        let at = |url: &str| crate::endpoint::build(url, "prod", 0, "/ssh").unwrap();

        let (url, head) = serve_101(
            "x-wsgate-resume: v1\r\nX-Wsgate-Route: cmVwbGljYS0x\r\nx-wsgate-replay-buffer: 4194304\r\n",
        )
        .await;
        let conn = offer_to(&base, &url).await;
        assert_eq!(conn.resume.as_deref(), Some("v1"));
        assert_eq!(conn.route.as_deref(), Some("cmVwbGljYS0x"));
        assert_eq!(conn.replay_buffer, Some(4 << 20));
        let head = head.await.unwrap();
        assert_eq!(header_in(&head, "x-wsgate-resume"), Some("new"), "{head}");
        assert_eq!(
            header_in(&head, "x-wsgate-replay-buffer"),
            Some("8388608"),
            "{head}"
        );

        // A replay buffer that is no count, or stated twice, is not taken (acknowledgements as
        // for one unsaid).
        for stated in [
            "x-wsgate-resume: v1\r\nx-wsgate-replay-buffer: 4 MiB\r\n",
            "x-wsgate-resume: v1\r\nx-wsgate-replay-buffer: 4194304\r\nx-wsgate-replay-buffer: 4194304\r\n",
        ] {
            let (url, _) = serve_101(stated).await;
            let conn = offer_to(&base, &url).await;
            assert_eq!(conn.replay_buffer, None, "{stated}");
        }

        let (url, head) = serve_101("").await;
        let e = at(&url);
        let off = Request {
            endpoint: &e,
            resumption: Resumption::Off,
            ..base.clone()
        };
        let conn = open(&off).await.unwrap();
        assert!(conn.resume.is_none() && conn.route.is_none());
        let head = head.await.unwrap();
        assert_eq!(header_in(&head, "x-wsgate-resume"), None, "{head}");
        assert_eq!(header_in(&head, "x-wsgate-replay-buffer"), None, "{head}");

        // A resume: the ticket and the route echoed, the user's headers as on the first.
        let (url, head) = serve_101("x-wsgate-resume: v1\r\n").await;
        let e = at(&url);
        let id = "0123456789abcdef0123456789abcdef";
        let secret = "fedcba9876543210fedcba9876543210";
        let ticket = Ticket::from_control(&format!("session {id} {secret}")).unwrap();
        let headers = [("cookie".to_string(), "a=b".to_string())];
        let resume = Request {
            endpoint: &e,
            headers: &headers,
            resumption: Resumption::Resume {
                ticket: &ticket,
                route: Some("cmVwbGljYS0x"),
            },
            ..base.clone()
        };
        open(&resume).await.unwrap();
        let head = head.await.unwrap();
        assert_eq!(
            header_in(&head, "x-wsgate-resume"),
            Some(format!("resume {id} {secret}").as_str())
        );
        assert_eq!(header_in(&head, "x-wsgate-route"), Some("cmVwbGljYS0x"));
        assert_eq!(header_in(&head, "cookie"), Some("a=b"));
        // Stated with the offer only: the session already knows it.
        assert_eq!(header_in(&head, "x-wsgate-replay-buffer"), None, "{head}");
    }

    #[test]
    fn what_counts_as_a_tls_record() {
        let tls_records: [&[u8]; 3] = [
            b"\x16\x03\x01\x00\x2a",
            b"\x15\x03\x03\x00\x02\x02\x28",
            b"\x16\x03",
        ];
        let others: [&[u8]; 7] = [
            b"\x14\x03\x03",
            b"\x17\x03\x03",
            b"\x18\x03\x03",
            b"\x16\x02\x00",
            b"\x16",
            b"",
            b"HTTP/1.1 400 Bad Request",
        ];
        for first in tls_records {
            assert!(is_tls_record(first), "{first:?}");
        }
        for first in others {
            assert!(!is_tls_record(first), "{first:?}");
        }
    }

    #[test]
    fn deadlines_are_shown_as_written() {
        assert_eq!(Deadline::after(Duration::from_secs(30)).shown(), "30s");
        assert_eq!(Deadline::after(Duration::from_millis(500)).shown(), "500ms");
        assert_eq!(
            Deadline::after(Duration::from_millis(1500)).shown(),
            "1500ms"
        );
    }

    /// A 401 from a redirect target on another origin: no token went there, on purpose, and
    /// the message says so rather than asking for a token (which would be left out again).
    #[tokio::test]
    async fn a_401_after_a_cross_origin_redirect_says_the_token_was_withheld() {
        let answer =
            |_: &str, _: &str| b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec();
        let server = serve_once(answer).await;
        let e = open_with(&server, None, true, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), 4);
        let m = e.to_string();
        let origin = server.replace("http://", "ws://");
        assert!(
            m.contains(&format!("no token was sent, on purpose: the server redirected this session to another origin ({origin})"))
                && m.contains("only the headers the redirect named were sent: x-redirect-ticket")
                && m.contains(&format!("`wsgate proxy {server} ...`"))
                && !m.contains("pass one with"),
            "{m}"
        );
        // The same answer on the user's own origin asks for a token.
        let server = serve_once(answer).await;
        let m = open_at(&server).await.err().unwrap().to_string();
        assert!(
            m.contains("no token was sent: pass one with --token"),
            "{m}"
        );
    }

    /// Accepts connections and says nothing; `answer` is written to each first if given.
    async fn silent(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(answer).await;
                held.push(s);
            }
        });
        (port, task)
    }

    /// Up to the open tunnel, a timeout is the proxy's (exit 12, naming it without its
    /// credentials); once the tunnel is open, a silent server is a connection failure (exit 8).
    #[tokio::test]
    async fn a_timeout_is_the_proxys_until_the_tunnel_is_open() {
        let (proxy_port, proxy_task) = silent(b"").await;
        let p = proxy::parse(
            &format!("http://u:hunter2@127.0.0.1:{proxy_port}"),
            "https_proxy",
        )
        .unwrap();
        let e = open_with(
            "http://gw.example.com:8080",
            Some(&p),
            false,
            Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 12, "{e}");
        let m = e.to_string();
        assert!(
            m.starts_with(&format!("proxy http://127.0.0.1:{proxy_port} (from https_proxy): the proxy accepted the connection but did not answer CONNECT gw.example.com:8080 within 300ms")),
            "{m}"
        );
        assert!(!m.contains("hunter2"), "{m}");
        proxy_task.abort();

        let (proxy_port, proxy_task) = silent(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let p = proxy::parse(&format!("http://127.0.0.1:{proxy_port}"), "--proxy").unwrap();
        let e = open_with(
            "http://gw.example.com:8080",
            Some(&p),
            false,
            Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 8, "{e}");
        assert_eq!(
            e.to_string(),
            format!("cannot connect to gw.example.com:8080: no answer within 300ms (through the proxy http://127.0.0.1:{proxy_port} (from --proxy))")
        );
        proxy_task.abort();
    }

    /// The server's first frame can arrive in the same segment as its `101`: the session gets
    /// it, not tungstenite's buffer.
    #[tokio::test]
    async fn a_frame_sent_with_the_101_reaches_the_session() {
        let server = serve_once(|_, key| {
            let mut a = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes();
            a.extend_from_slice(b"\x82\x0c\x00SSH-2.0-x\r\n");
            a
        })
        .await;
        let conn = open_at(&server).await.unwrap();
        assert_eq!(conn.read_ahead, b"\x82\x0c\x00SSH-2.0-x\r\n");
        let local = conn.local.unwrap();
        assert!(local.ip().is_loopback() && local.port() != 0, "{local}");
    }

    /// An error answer with the sidecar's JSON body.
    fn json_answer(status: u16, error: &str, reason: &str) -> Vec<u8> {
        let body = format!(r#"{{"error": "{error}", "reason": "{reason}"}}"#);
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A URL on a loopback port nothing listens on.
    fn nothing_listening() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}")
    }

    /// Error answers keep their body (the reason shown to the user).
    #[tokio::test]
    async fn an_error_answer_keeps_its_reason() {
        let server =
            serve_once(|_, _| json_answer(404, "no such cluster", "unknown_cluster")).await;
        let e = open_at(&server).await.err().unwrap();
        assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");
        assert!(
            e.to_string().contains("no such cluster (unknown_cluster)"),
            "{e}"
        );
    }

    /// A resume's refusals, as answered over the wire, sort into final ones and ones worth
    /// another attempt.
    #[tokio::test]
    async fn resume_answers_sort_into_final_and_retry() {
        use crate::resume::{verdict, Verdict};
        let cases = [
            (404, "resume_unknown", Verdict::Refused),
            (403, "resume_forbidden", Verdict::Refused),
            // Not the sidecar's refusal: a gateway answering before its routes are in.
            (404, "route_not_found", Verdict::Retry),
            (409, "resume_conflict", Verdict::Retry),
            (500, "resume_x", Verdict::Retry),
            (503, "resume_x", Verdict::Retry),
        ];
        for (status, code, want) in cases {
            let server = serve_once(move |_, _| json_answer(status, "resume refused", code)).await;
            let e = open_at(&server).await.err().unwrap();
            assert_eq!(verdict(&e), want, "{status}: {e:?}");
        }
        let e = open_at(&nothing_listening()).await.err().unwrap();
        assert_eq!(verdict(&e), Verdict::Retry, "{e:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let e = open_at(&nothing_listening()).await.err().unwrap();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("cannot connect to 127.0.0.1:"),
            "{e}"
        );
    }
}
