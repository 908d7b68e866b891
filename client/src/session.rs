//! One session: stdin → WebSocket → stdout, with SkyPilot's framing when the server speaks it.
//!
//! The server talks first (sshd sends its banner), so the first frame decides the framing: a
//! `0` type byte means typed frames; a frame that starts with `SSH-` means an old server that
//! sends raw bytes; a `3` is a redirect to follow. Generic over the streams, so it is tested
//! with channels.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use wsgate_core::framing::{
    decode_from_server, latency_frame, ping_frame, Framing, FromServer, TYPE_DATA,
};

use crate::error::ClientError;

/// What ended a session that did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Normal end (stdin closed or the server closed).
    Done,
    /// The server sent SkyPilot's redirect frame: reconnect with this JSON.
    Redirect(serde_json::Value),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// SkyPilot pings (typed) or WebSocket pings (raw), for keepalive and latency.
    pub ping_interval: Duration,
    /// The largest frame we send (servers limit frame sizes; the sidecar's default is 64 KiB).
    pub chunk: usize,
    /// Read size from stdin: what one read returns is sent as frames of `chunk` bytes with one
    /// flush, so a busy stream costs fewer syscalls and wake-ups on both sides.
    pub read_size: usize,
}

/// Unanswered pings remembered at most (SkyPilot's client uses the same bound).
const MAX_PENDING_PINGS: usize = 100;

/// Runs until the session ends. `hangup` resolving (ssh sends SIGHUP to its ProxyCommand when
/// it exits) ends the session like stdin EOF: with a close frame, not a vanished connection.
pub async fn run<W, I, O, H>(
    ws: &mut W,
    mut stdin: I,
    mut stdout: O,
    opts: &Options,
    hangup: H,
) -> Result<End, ClientError>
where
    W: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    H: std::future::Future<Output = ()>,
{
    let mut hangup = std::pin::pin!(hangup);
    // The first frame: framing (or a redirect), and the server's first bytes.
    let framing = loop {
        match ws.next().await {
            None => {
                return Err(ClientError::Protocol(
                    "the server closed before sending anything".into(),
                ))
            }
            Some(Err(e)) => {
                return Err(ClientError::Protocol(format!(
                    "the server connection failed: {e}"
                )))
            }
            Some(Ok(Message::Binary(b))) => {
                if b.starts_with(b"SSH-") {
                    write_out(&mut stdout, &b).await?;
                    break Framing::Raw;
                }
                match decode_from_server(&b) {
                    Ok(FromServer::Data(d)) => {
                        write_out(&mut stdout, d).await?;
                        break Framing::Typed;
                    }
                    Ok(FromServer::Redirect(json)) => {
                        let v = serde_json::from_slice(json).map_err(|e| {
                            ClientError::Protocol(format!("bad redirect frame: {e}"))
                        })?;
                        let _ = ws.close().await;
                        return Ok(End::Redirect(v));
                    }
                    _ => {
                        write_out(&mut stdout, &b).await?;
                        break Framing::Raw;
                    }
                }
            }
            Some(Ok(Message::Close(f))) => return Err(closed_early(f)),
            Some(Ok(_)) => continue,
        }
    };
    tracing::debug!(?framing, "framing chosen from the server's first frame");

    let hdr = framing.header_len();
    let mut buf = vec![0u8; opts.read_size.max(1)];
    let start = Instant::now();
    let mut ticker = tokio::time::interval_at(start + opts.ping_interval, opts.ping_interval);
    let mut next_id: u32 = 0;
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut stdin_done = false;
    // After stdin ends we send a close and wait briefly for the server's.
    let mut linger = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));

    loop {
        tokio::select! {
            r = stdin.read(&mut buf), if !stdin_done => match r {
                Ok(0) | Err(_) => {
                    stdin_done = true;
                    let _ = ws.send(done_frame()).await;
                    linger.as_mut().reset(Instant::now() + Duration::from_secs(2));
                }
                Ok(n) => {
                    for piece in buf[..n].chunks(opts.chunk.max(1)) {
                        let mut frame = Vec::with_capacity(hdr + piece.len());
                        if hdr == 1 {
                            frame.push(TYPE_DATA);
                        }
                        frame.extend_from_slice(piece);
                        if let Err(e) = ws.feed(Message::Binary(Bytes::from(frame))).await {
                            return Err(ClientError::Protocol(format!("sending to the server failed: {e}")));
                        }
                    }
                    if let Err(e) = ws.flush().await {
                        return Err(ClientError::Protocol(format!("sending to the server failed: {e}")));
                    }
                }
            },
            m = ws.next() => match m {
                None => return Ok(End::Done),
                Some(Err(_)) if stdin_done => return Ok(End::Done),
                Some(Err(e)) => return Err(ClientError::Protocol(format!("the server connection failed: {e}"))),
                Some(Ok(Message::Binary(b))) => {
                    if framing == Framing::Raw {
                        write_out(&mut stdout, &b).await?;
                        continue;
                    }
                    match decode_from_server(&b) {
                        Ok(FromServer::Data(d)) => write_out(&mut stdout, d).await?,
                        Ok(FromServer::Pong(id)) => {
                            if let Some(sent) = pending.remove(&id) {
                                let ms = sent.elapsed().as_millis() as u64;
                                tracing::info!(latency_ms = ms, "round trip to the server");
                                let _ = ws.send(Message::Binary(Bytes::copy_from_slice(&latency_frame(ms)))).await;
                            }
                        }
                        Ok(FromServer::Redirect(_)) => {
                            return Err(ClientError::Protocol("redirect frame in the middle of a session".into()))
                        }
                        Err(e) => return Err(ClientError::Protocol(format!("bad frame from the server: {e}"))),
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let _ = stdout.flush().await;
                    return match f {
                        Some(f) if !matches!(f.code, CloseCode::Normal | CloseCode::Away) && !stdin_done => {
                            Err(ClientError::Protocol(format!("the server closed the session: {} {}", u16::from(f.code), f.reason)))
                        }
                        _ => Ok(End::Done),
                    };
                }
                Some(Ok(_)) => {}
            },
            _ = ticker.tick() => {
                let msg = match framing {
                    Framing::Typed => {
                        next_id = next_id.wrapping_add(1);
                        if pending.len() >= MAX_PENDING_PINGS {
                            pending.clear();
                        }
                        pending.insert(next_id, Instant::now());
                        Message::Binary(Bytes::copy_from_slice(&ping_frame(next_id)))
                    }
                    Framing::Raw => Message::Ping(Bytes::new()),
                };
                if ws.send(msg).await.is_err() && stdin_done {
                    return Ok(End::Done);
                }
            },
            _ = &mut linger, if stdin_done => return Ok(End::Done),
            _ = &mut hangup, if !stdin_done => {
                let _ = ws.send(done_frame()).await;
                return Ok(End::Done);
            },
        }
    }
}

/// The close frame the client sends when it is done (stdin ended or ssh hung up).
fn done_frame() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "client done".into(),
    }))
}

async fn write_out<O: AsyncWrite + Unpin>(out: &mut O, data: &[u8]) -> Result<(), ClientError> {
    if data.is_empty() {
        return Ok(());
    }
    out.write_all(data)
        .await
        .map_err(|e| ClientError::Protocol(format!("writing to stdout: {e}")))?;
    out.flush()
        .await
        .map_err(|e| ClientError::Protocol(format!("writing to stdout: {e}")))
}

fn closed_early(f: Option<CloseFrame>) -> ClientError {
    match f {
        Some(f) => ClientError::Protocol(format!(
            "the server closed the session: {} {}",
            u16::from(f.code),
            f.reason
        )),
        None => ClientError::Protocol("the server closed the session".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A WebSocket made of two channels (what the session sends, what it receives).
    struct ChannelWs {
        tx: mpsc::UnboundedSender<Message>,
        rx: mpsc::UnboundedReceiver<Result<Message, WsError>>,
    }

    impl Sink<Message> for ChannelWs {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), WsError> {
            self.tx
                .unbounded_send(m)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Stream for ChannelWs {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.rx).poll_next(cx)
        }
    }

    fn pair() -> (
        ChannelWs,
        mpsc::UnboundedSender<Result<Message, WsError>>,
        mpsc::UnboundedReceiver<Message>,
    ) {
        let (to_client, rx) = mpsc::unbounded();
        let (tx, from_client) = mpsc::unbounded();
        (ChannelWs { tx, rx }, to_client, from_client)
    }

    fn bin(b: &[u8]) -> Result<Message, WsError> {
        Ok(Message::Binary(Bytes::copy_from_slice(b)))
    }

    fn opts() -> Options {
        Options {
            ping_interval: Duration::from_secs(10),
            chunk: 1024,
            read_size: 4096,
        }
    }

    #[tokio::test]
    async fn typed_server_gets_typed_frames_and_stdin_eof_closes() {
        let (mut ws, to_client, mut from_client) = pair();
        to_client.unbounded_send(bin(b"\x00SSH-2.0-x\r\n")).unwrap();
        let (stdin, mut feed) = tokio::io::duplex(1024);
        let (mut read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(&mut ws, stdin, stdout, &o, std::future::pending());
        let peer = async {
            feed.write_all(b"SSH-2.0-client\r\n").await.unwrap();
            assert_eq!(
                from_client.next().await.unwrap(),
                Message::Binary(Bytes::from_static(b"\x00SSH-2.0-client\r\n"))
            );
            drop(feed);
            match from_client.next().await.unwrap() {
                Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
                other => panic!("{other:?}"),
            }
            to_client.unbounded_send(Ok(Message::Close(None))).unwrap();
            let mut got = vec![0u8; 11];
            read_out.read_exact(&mut got).await.unwrap();
            got
        };
        let (end, got) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
        assert_eq!(got, b"SSH-2.0-x\r\n");
    }

    #[tokio::test]
    async fn old_server_gets_raw_frames() {
        let (mut ws, to_client, mut from_client) = pair();
        to_client.unbounded_send(bin(b"SSH-2.0-old\r\n")).unwrap();
        let (stdin, mut feed) = tokio::io::duplex(1024);
        let (_read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(&mut ws, stdin, stdout, &o, std::future::pending());
        let peer = async {
            feed.write_all(b"hello").await.unwrap();
            assert_eq!(
                from_client.next().await.unwrap(),
                Message::Binary(Bytes::from_static(b"hello"))
            );
            to_client.unbounded_send(Ok(Message::Close(None))).unwrap();
        };
        let (end, ()) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_and_reports_latency() {
        let (mut ws, to_client, mut from_client) = pair();
        to_client.unbounded_send(bin(b"\x00SSH-2.0-x\r\n")).unwrap();
        let (stdin, _feed) = tokio::io::duplex(1024);
        let (_read_out, stdout) = tokio::io::duplex(1024);
        let o = opts();
        let session = run(&mut ws, stdin, stdout, &o, std::future::pending());
        let peer = async {
            let ping = from_client.next().await.unwrap();
            assert_eq!(
                ping,
                Message::Binary(Bytes::copy_from_slice(&ping_frame(1)))
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
            to_client.unbounded_send(Ok(ping)).unwrap();
            match from_client.next().await.unwrap() {
                Message::Binary(b) => assert_eq!(&b[..], &latency_frame(30)[..]),
                other => panic!("{other:?}"),
            }
            to_client.unbounded_send(Ok(Message::Close(None))).unwrap();
        };
        let (end, ()) = tokio::join!(session, peer);
        assert_eq!(end.unwrap(), End::Done);
    }

    #[tokio::test]
    async fn hangup_sends_a_close_frame() {
        let (mut ws, to_client, mut from_client) = pair();
        to_client.unbounded_send(bin(b"\x00SSH-2.0-x\r\n")).unwrap();
        let (stdin, _feed) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let end = run(&mut ws, stdin, stdout, &opts(), async {})
            .await
            .unwrap();
        assert_eq!(end, End::Done);
        match from_client.next().await.unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn redirect_frame_and_error_closes() {
        let (mut ws, to_client, _from) = pair();
        to_client
            .unbounded_send(bin(b"\x03{\"url\": \"wss://x/y\"}"))
            .unwrap();
        let (stdin, _f) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let end = run(&mut ws, stdin, stdout, &opts(), std::future::pending())
            .await
            .unwrap();
        assert_eq!(end, End::Redirect(serde_json::json!({"url": "wss://x/y"})));

        let (mut ws, to_client, _from) = pair();
        to_client.unbounded_send(bin(b"\x00SSH-2.0-x\r\n")).unwrap();
        to_client
            .unbounded_send(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::Error,
                reason: "target connection failed".into(),
            }))))
            .unwrap();
        let (stdin, _f) = tokio::io::duplex(64);
        let (_o, stdout) = tokio::io::duplex(64);
        let e = run(&mut ws, stdin, stdout, &opts(), std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server closed the session: 1011 target connection failed"
        );
    }
}
