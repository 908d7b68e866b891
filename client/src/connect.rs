//! Opening the WebSocket: TCP, TLS, the request (token as `Authorization` or as a Kubernetes
//! subprotocol entry, extra headers), and every failure turned into a [`ClientError`] worth
//! reading.
//!
//! tungstenite does the HTTP handshake (request, `Sec-WebSocket-Accept`, error responses with
//! their bodies); the session then works on the connection itself (see `session`). tungstenite
//! keeps what it read past the `101` (the server's first frame can come with it), so the
//! handshake runs over a [`Recorder`] that keeps a copy of every byte it hands over, and those
//! bytes after the head are given to the session.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Response};
use tokio_tungstenite::tungstenite::Error as WsError;
use wsgate_core::base64::encode_raw_url;
use wsgate_core::reply::WEBSOCKET_URL_HEADER;
use wsgate_core::token::BEARER_PROTOCOL_PREFIX;

use crate::credentials::Token;
use crate::endpoint::{server_url_for, Endpoint};
use crate::error::ClientError;

/// A connection to the server, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket: the connection after the handshake, and what the server sent past its
/// `101` (the start of its first frames, or nothing).
pub struct Conn {
    pub io: Box<dyn Io>,
    pub read_ahead: Vec<u8>,
}

/// The subprotocol offered beside a subprotocol token (a token needs another entry beside it).
pub const SUBPROTOCOL: &str = "wsgate.ssh.v1";

pub struct Request<'a> {
    pub endpoint: &'a Endpoint,
    /// The path segment after the server URL, for turning hints back into server URLs.
    pub endpoint_path: &'a str,
    pub token: Option<&'a Token>,
    pub token_in_subprotocol: bool,
    pub headers: &'a [(String, String)],
    /// `None` for `ws://`: no TLS, and no reading of the system's CA store (milliseconds of
    /// start-up a plaintext loopback session does not need).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    /// Headers from a redirect frame (SkyPilot's redirect protocol), used as given.
    pub extra: &'a [(String, String)],
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
    for (k, v) in r.headers.iter().chain(r.extra) {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ClientError::Usage(format!("--header {k:?}: not a header name")))?;
        h.append(name, header_value(v)?);
    }
    let handshake = async {
        let io = connect(r).await?;
        let recorder = Recorder {
            io: Some(io),
            seen: Vec::new(),
        };
        // Frame limits are the session's (16 MiB): tungstenite reads no frame here.
        let (mut ws, _) = tokio_tungstenite::client_async(req, recorder)
            .await
            .map_err(|e| classify(r, e))?;
        let rec = ws.get_mut();
        let io = rec.io.take().ok_or_else(|| {
            ClientError::Protocol("the connection was lost during the handshake".into())
        })?;
        let read_ahead = after_head(&rec.seen).to_vec();
        Ok(Conn { io, read_ahead })
    };
    match tokio::time::timeout(r.timeout, handshake).await {
        Err(_) => Err(ClientError::Connect {
            addr: r.endpoint.host.clone(),
            detail: format!("no answer within {}s", r.timeout.as_secs()),
        }),
        Ok(res) => res,
    }
}

/// TCP (no Nagle: ssh's keystrokes are small), then TLS for `wss://`.
async fn connect(r: &Request<'_>) -> Result<Box<dyn Io>, ClientError> {
    let url = &r.endpoint.url;
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Usage(format!("{url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let failed = |e: io::Error| ClientError::Connect {
        addr: r.endpoint.host.clone(),
        detail: e.to_string(),
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(failed)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &r.tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(host).map_err(|e| ClientError::Tls {
        host: r.endpoint.host.clone(),
        detail: e.to_string(),
    })?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| io_error(r, e))?;
    Ok(Box::new(stream))
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

fn header_value(v: &str) -> Result<HeaderValue, ClientError> {
    // The value may hold a token: the error never shows it.
    HeaderValue::from_str(v)
        .map_err(|_| ClientError::Usage("a header value has invalid characters".into()))
}

fn classify(r: &Request<'_>, e: WsError) -> ClientError {
    let host = r.endpoint.host.clone();
    match e {
        WsError::Http(resp) => http_error(r, &resp),
        WsError::Tls(e) => ClientError::Tls {
            host,
            detail: e.to_string(),
        },
        WsError::Io(e) => io_error(r, e),
        other => ClientError::Protocol(format!("WebSocket handshake with {host} failed: {other}")),
    }
}

/// An I/O error while connecting: a TLS failure (rustls wraps its errors in I/O errors) or a
/// connection one.
fn io_error(r: &Request<'_>, e: io::Error) -> ClientError {
    let host = r.endpoint.host.clone();
    let tls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if tls {
        ClientError::Tls {
            host,
            detail: e.to_string(),
        }
    } else {
        ClientError::Connect {
            addr: host,
            detail: e.to_string(),
        }
    }
}

fn http_error(r: &Request<'_>, resp: &Response<Option<Vec<u8>>>) -> ClientError {
    let host = r.endpoint.host.clone();
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let body: Option<serde_json::Value> = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok());
    let reason = body.as_ref().and_then(|b| {
        let code = b["reason"].as_str();
        let text = b["error"].as_str();
        match (text, code) {
            (Some(t), Some(c)) => Some(format!("{t} ({c})")),
            (Some(t), None) => Some(t.to_string()),
            (None, Some(c)) => Some(c.to_string()),
            (None, None) => None,
        }
    });
    match status {
        301 | 302 | 303 | 307 | 308 | 426 => {
            let via = header(WEBSOCKET_URL_HEADER).or_else(|| header("location"));
            let use_instead = via
                .as_deref()
                .and_then(|u| server_url_for(u, r.endpoint_path));
            ClientError::Redirected {
                status,
                via,
                use_instead,
            }
        }
        401 | 403 => {
            let (source_desc, hint) = match r.token {
                Some(t) => (t.source.clone(), t.hint.clone()),
                None => (
                    "nowhere: no token was sent".to_string(),
                    "Pass one with --token, WSGATE_TOKEN, --token-file or --kubeconfig."
                        .to_string(),
                ),
            };
            ClientError::Auth {
                status,
                host,
                reason,
                source_desc,
                hint,
            }
        }
        404 => ClientError::NotFound { host, reason },
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

    /// Reads the request head and answers with `answer(key)` in one write.
    async fn serve_once(answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> String {
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
            s.write_all(&answer(&key)).await.unwrap();
            // Keep the socket open while the client reads.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        format!("http://{addr}")
    }

    async fn open_at(server: &str) -> Result<Conn, ClientError> {
        let endpoint = crate::endpoint::build(server, "prod", 0, "/ssh").unwrap();
        let req = Request {
            endpoint: &endpoint,
            endpoint_path: "/ssh",
            token: None,
            token_in_subprotocol: false,
            headers: &[],
            tls: None,
            timeout: Duration::from_secs(5),
            extra: &[],
        };
        open(&req).await
    }

    /// The server's first frame can arrive in the same segment as its `101`: the session gets
    /// it, not tungstenite's buffer.
    #[tokio::test]
    async fn a_frame_sent_with_the_101_reaches_the_session() {
        let server = serve_once(|key| {
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
    }

    /// Error answers keep their body (the reason shown to the user).
    #[tokio::test]
    async fn an_error_answer_keeps_its_reason() {
        let server = serve_once(|_| {
            let body = r#"{"error": "no such cluster", "reason": "unknown_cluster"}"#;
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .await;
        let e = open_at(&server).await.err().unwrap();
        assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");
        assert!(
            e.to_string().contains("no such cluster (unknown_cluster)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = open_at(&format!("http://{addr}")).await.err().unwrap();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("cannot connect to 127.0.0.1:"),
            "{e}"
        );
    }
}
