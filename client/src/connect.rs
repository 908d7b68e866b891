//! Opening the WebSocket: the request (token as `Authorization` or as a Kubernetes subprotocol
//! entry, extra headers), TLS, and every failure turned into a [`ClientError`] worth reading.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use wsgate_core::base64::encode_raw_url;
use wsgate_core::reply::WEBSOCKET_URL_HEADER;
use wsgate_core::token::BEARER_PROTOCOL_PREFIX;

use crate::credentials::Token;
use crate::endpoint::{server_url_for, Endpoint};
use crate::error::ClientError;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

pub async fn open(r: &Request<'_>) -> Result<Ws, ClientError> {
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
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(16 << 20);
    config.max_frame_size = Some(16 << 20);
    let connector = match &r.tls {
        Some(tls) => Connector::Rustls(Arc::clone(tls)),
        None => Connector::Plain,
    };
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(connector));
    match tokio::time::timeout(r.timeout, fut).await {
        Err(_) => Err(ClientError::Connect {
            addr: r.endpoint.host.clone(),
            detail: format!("no answer within {}s", r.timeout.as_secs()),
        }),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(classify(r, e)),
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
        WsError::Io(e) => {
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
        other => ClientError::Protocol(format!("WebSocket handshake with {host} failed: {other}")),
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
