//! What the integration tests share: the sidecar in-process, started the way `main` starts it
//! (settings → `Config` → `run`) on `127.0.0.1:0` in front of a TCP echo server standing in for
//! sshd, and a real WebSocket client.
//!
//! Raw framing throughout (no `client_version` in the URL): a binary frame's payload is the
//! session's bytes as they are, so what the echo server sends back is what was sent.
// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate_sidecar::settings::Args;
use wsgate_sidecar::{Config, Listeners, StartError};

pub const ALICE: &str = "sky_alice_0123456789";

/// How long sessions may go on after the shutdown signal: short, so the test waits little.
pub const GRACE: Duration = Duration::from_millis(300);

/// A bound on anything the test waits for, so a hang fails instead of stalling the suite.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A TCP server that sends back whatever it receives, on every connection: the session's
/// target.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// A sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Sent to stop it: `run`'s shutdown future.
    stop: oneshot::Sender<()>,
    /// `run` itself, to see it return.
    task: JoinHandle<Result<(), StartError>>,
    /// The token file's directory, removed at the end.
    dir: PathBuf,
}

impl Sidecar {
    /// Starts one in front of `target` with a token file of `tokens` lines and `extra` flags,
    /// its settings read as `main` reads them (no environment).
    pub async fn start(test: &str, target: SocketAddr, tokens: &str, extra: &[&str]) -> Sidecar {
        let dir = std::env::temp_dir().join(format!("wsgate-it-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("tokens");
        std::fs::write(&token_file, tokens).unwrap();
        let (target, token_file) = (target.to_string(), token_file.display().to_string());
        let grace = format!("{}ms", GRACE.as_millis());
        let mut argv = vec![
            "wsgate-sidecar",
            "--target",
            &target,
            "--auth",
            "token-file",
            "--token-file",
            &token_file,
            "--shutdown-grace",
            &grace,
        ];
        argv.extend_from_slice(extra);
        let args = Args::load(argv, std::iter::empty()).unwrap();
        let config = Config::from_args(&args).unwrap();
        let listeners = Listeners {
            sessions: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.sessions.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wsgate_sidecar::run(listeners, config, async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            admin,
            stop,
            task,
            dir,
        }
    }

    /// Sends the shutdown signal; returns `run`'s handle and when the signal went.
    pub fn shut_down(self) -> (JoinHandle<Result<(), StartError>>, Instant) {
        std::fs::remove_dir_all(&self.dir).unwrap();
        let _ = self.stop.send(());
        (self.task, Instant::now())
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a session on SkyPilot's endpoint for `cluster` with `token`.
pub async fn open(addr: SocketAddr, cluster: &str, token: &str) -> Result<Ws, WsError> {
    let url = format!("ws://{addr}/kubernetes-pod-ssh-proxy?cluster_name={cluster}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("the handshake hung")?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// The next message, within [`PATIENCE`].
pub async fn next(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("nothing came")
        .map(|m| m.unwrap())
}

/// Sends one byte and expects it back.
pub async fn echo_one_byte(ws: &mut Ws) {
    ws.send(Message::Binary(vec![0x42].into())).await.unwrap();
    match next(ws).await {
        Some(Message::Binary(b)) => assert_eq!(&b[..], [0x42]),
        other => panic!("want the byte echoed, got {other:?}"),
    }
}
