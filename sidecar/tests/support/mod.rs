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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
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
        let sessions = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Sidecar::start_on(sessions, test, target, tokens, extra).await
    }

    /// The same, on a session listener of the caller's (one whose sockets have small buffers,
    /// say: accepted connections inherit the listener's).
    pub async fn start_on(
        sessions: TcpListener,
        test: &str,
        target: SocketAddr,
        tokens: &str,
        extra: &[&str],
    ) -> Sidecar {
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
        ];
        // A test may want a grace period of its own.
        if !extra.contains(&"--shutdown-grace") {
            argv.extend(["--shutdown-grace", &grace]);
        }
        argv.extend_from_slice(extra);
        let args = Args::load(argv, std::iter::empty()).unwrap();
        let config = Config::from_args(&args).unwrap();
        let listeners = Listeners {
            sessions,
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
    let (ws, _) = open_with(addr, &format!("cluster_name={cluster}"), token, &[]).await?;
    Ok(ws)
}

/// The `101`, as tungstenite returns it.
pub type Answer = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Opens a session on SkyPilot's endpoint with `query`, `token` and more `headers`; the
/// `101`'s headers come back with it.
pub async fn open_with(
    addr: SocketAddr,
    query: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Answer), WsError> {
    let url = format!("ws://{addr}/kubernetes-pod-ssh-proxy?{query}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("the handshake hung")?;
    assert_eq!(resp.status(), 101);
    Ok((ws, resp))
}

/// A refused handshake's status and JSON `reason`.
pub fn refusal(e: WsError) -> (u16, String) {
    match e {
        WsError::Http(resp) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            (
                resp.status().as_u16(),
                body["reason"].as_str().unwrap().to_string(),
            )
        }
        other => panic!("want an HTTP refusal, got {other}"),
    }
}

/// A GET on the admin listener: the status line and the body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// One line's value on `/metrics` (`name{labels}` exactly), 0 if it is not there.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = admin_get(admin, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (within [`PATIENCE`]) until `series` on `/metrics` is `want`.
pub async fn wait_metric(admin: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric(admin, series).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A resumable session's client, speaking docs/resume.md by hand: binary frames are session
/// bytes, text frames control messages. It keeps every byte it sent (it never receives an
/// `ack` it could trust more than the echo) and counts what it received.
pub struct Resumable {
    pub addr: SocketAddr,
    pub token: String,
    /// The query of every leg: the cluster (and worker) the session is for.
    pub query: String,
    /// The live leg; `None` once it is lost.
    pub ws: Option<Ws>,
    pub id: String,
    pub secret: String,
    /// Every session byte sent so far (the session's first byte at 0).
    pub sent: Vec<u8>,
    /// Every session byte received so far.
    pub received: Vec<u8>,
}

impl Resumable {
    /// Opens a session offering resumption; the `101` must accept it and the first message
    /// must be `session <id> <secret>`.
    pub async fn open(addr: SocketAddr, cluster: &str, token: &str) -> Resumable {
        let query = format!("cluster_name={cluster}");
        let (mut ws, resp) = open_with(addr, &query, token, &[("x-wsgate-resume", "new")])
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-wsgate-resume"], "v1");
        let greeting = match next(&mut ws).await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("want the session's id and secret first, got {other:?}"),
        };
        let words: Vec<&str> = greeting.split(' ').collect();
        let [word, id, secret] = words[..] else {
            panic!("{greeting:?}")
        };
        assert_eq!(word, "session");
        for w in [id, secret] {
            assert!(
                w.len() == 32 && w.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{greeting:?}"
            );
        }
        Resumable {
            addr,
            token: token.to_string(),
            query,
            ws: Some(ws),
            id: id.to_string(),
            secret: secret.to_string(),
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    fn ws(&mut self) -> &mut Ws {
        self.ws.as_mut().expect("no live leg")
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.sent.extend_from_slice(data);
        send_frames(self.ws(), data).await;
    }

    /// The next session bytes (one binary frame), checking the control messages on the way.
    pub async fn next_bytes(&mut self) -> Vec<u8> {
        loop {
            match next(self.ws()).await {
                Some(Message::Binary(b)) => return b.to_vec(),
                Some(Message::Text(t)) => self.control(&t),
                Some(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("want session bytes, got {other:?}"),
            }
        }
    }

    /// Reads session bytes until `total` have come in all.
    pub async fn receive_until(&mut self, total: usize) {
        while self.received.len() < total {
            let b = self.next_bytes().await;
            self.received.extend_from_slice(&b);
        }
    }

    /// An `ack <n>` never acknowledges more than was sent.
    fn control(&self, msg: &str) {
        let n: usize = msg
            .strip_prefix("ack ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("an unexpected control message {msg:?}"));
        assert!(n <= self.sent.len(), "{msg:?} of {} sent", self.sent.len());
    }

    /// Drops the live leg without a close frame (its TCP connection closed): a lost leg.
    pub fn lose(&mut self) {
        self.ws = None;
    }

    /// Counts `data` as sent on a leg already lost, as bytes still in the dead connection's
    /// buffers would be: the sidecar never got them, and the resume sends them again.
    pub fn sent_into_the_lost_leg(&mut self, data: &[u8]) {
        assert!(self.ws.is_none(), "only once the leg is lost");
        self.sent.extend_from_slice(data);
    }

    /// The resume request of this session, with another secret, token or query if given.
    pub async fn resume_request(
        &self,
        token: &str,
        query: &str,
        secret: &str,
    ) -> Result<(Ws, Answer), WsError> {
        let value = format!("resume {} {secret}", self.id);
        open_with(self.addr, query, token, &[("x-wsgate-resume", &value)]).await
    }

    /// Resumes the session on a new connection: `resume <received> <sent>` both ways, then
    /// what the sidecar lacks is sent again. Returns the sidecar's received count and the leg
    /// it took over if this client still held one.
    pub async fn resume(&mut self) -> (usize, Option<Ws>) {
        let (mut ws, resp) = self
            .resume_request(&self.token, &self.query, &self.secret)
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-wsgate-resume"], "v1");
        // The replay buffer is stated once, when the session begins.
        assert!(resp.headers().get("x-wsgate-replay-buffer").is_none());
        let mine = format!("resume {} {}", self.received.len(), self.sent.len());
        ws.send(Message::Text(mine.into())).await.unwrap();
        let theirs = match next(&mut ws).await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("want `resume <n> <sent>` first, got {other:?}"),
        };
        let (n, sent): (usize, usize) = theirs
            .strip_prefix("resume ")
            .and_then(|c| c.split_once(' '))
            .and_then(|(n, sent)| Some((n.parse().ok()?, sent.parse().ok()?)))
            .unwrap_or_else(|| panic!("{theirs:?}"));
        assert!(
            n <= self.sent.len(),
            "{theirs:?} of {} sent",
            self.sent.len()
        );
        assert!(
            sent >= self.received.len(),
            "{theirs:?}: {} received",
            self.received.len()
        );
        let old = self.ws.replace(ws);
        let again = self.sent[n..].to_vec();
        send_frames(self.ws(), &again).await;
        (n, old)
    }
}

/// Session bytes as binary frames of at most 32 KiB (the sidecar refuses frames over
/// `--max-frame-size`, 64 KiB by default).
async fn send_frames(ws: &mut Ws, data: &[u8]) {
    for chunk in data.chunks(32 << 10) {
        let frame = Message::Binary(chunk.to_vec().into());
        ws.send(frame).await.unwrap();
    }
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
