//! Logs follow a session: every line `wsgate proxy` logs, across a SkyPilot redirect, names the
//! session (`id`, `user`, `cluster`) and, from the first connection on, the connection (`n`,
//! `target`, `client`), at the default level as at `-vv`; the token never shows.
//!
//! The server is tungstenite's, on a loopback port: the first connection answers with a
//! redirect frame to a second path, the second sends sshd's banner and closes normally.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use wsgate_client::credentials::Sources;
use wsgate_client::endpoint::DEFAULT_ENDPOINT;
use wsgate_client::proxy::Setting;
use wsgate_client::run::{self, Options};
use wsgate_client::session;
use wsgate_client::stdio::{Input, Output};
use wsgate_proto::framing::redirect_frame;

const TOKEN: &str = "tok-3f1c-secret";

/// What the log lines were written to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Serves the two connections; returns the ticket header the second one carried.
async fn redirecting_server(l: TcpListener) -> Option<String> {
    let port = l.local_addr().unwrap().port();
    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let info = serde_json::json!({
        "url": format!("ws://127.0.0.1:{port}/second"),
        "headers": {"x-ticket": "t-1"},
    });
    let frame = Bytes::from(redirect_frame(&info));
    ws.send(Message::Binary(frame)).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let (tcp, _) = l.accept().await.unwrap();
    let ticket = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&ticket);
    // The callback's type is tungstenite's, large error and all.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| {
        *seen.lock().unwrap() = req
            .headers()
            .get("x-ticket")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .unwrap();
    let banner = Bytes::from_static(b"\x00SSH-2.0-test\r\n");
    ws.send(Message::Binary(banner)).await.unwrap();
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.send(Message::Close(Some(close))).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let ticket = ticket.lock().unwrap().clone();
    ticket
}

fn options(port: u16) -> Options {
    Options {
        server: format!("http://127.0.0.1:{port}"),
        cluster: "prod.wsgate".into(),
        worker: 0,
        endpoint: DEFAULT_ENDPOINT.into(),
        credentials: Sources {
            flag: Some(TOKEN.into()),
            ..Sources::default()
        },
        proxy: Setting::Off,
        ca_file: None,
        // Only for its warning: a line at the default level, before any connection.
        insecure_skip_tls_verify: true,
        allow_plaintext: false,
        token_in_subprotocol: false,
        headers: Vec::new(),
        connect_timeout: Duration::from_secs(5),
        session: session::Options {
            ping_interval: Duration::from_secs(3600),
            chunk: 1024,
            read_size: 4096,
        },
        resume: None,
    }
}

/// What one session logged, and what reached its stdout.
struct Logged {
    lines: Vec<String>,
    stdout: Vec<u8>,
    /// The server's port.
    port: u16,
}

/// Runs one session under `filter`.
async fn session_logged(filter: &str) -> Logged {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = tokio::spawn(redirecting_server(l));
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_target(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // The other ends of each connection's stdin and stdout, kept open until the end.
    let mut ends: Vec<(DuplexStream, DuplexStream)> = Vec::new();
    let stdio = || {
        let (stdin, feed) = tokio::io::duplex(1 << 16);
        let (read_out, stdout) = tokio::io::duplex(1 << 16);
        ends.push((feed, read_out));
        (Box::new(stdin) as Input, Box::new(stdout) as Output)
    };
    let opts = options(port);
    let result = run::proxy_over(&opts, stdio, std::future::pending::<()>).await;
    assert!(result.is_ok(), "{result:?}\n{:#?}", logs.lines());
    assert_eq!(server.await.unwrap().as_deref(), Some("t-1"));
    // The session is over, and with it the writing end of each stdout: read what it wrote.
    let mut stdout = Vec::new();
    for (_feed, mut read_out) in ends {
        let read = read_out.read_to_end(&mut stdout);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
    }
    Logged {
        lines: logs.lines(),
        stdout,
        port,
    }
}

/// The value of `name=` in a line (up to the next space or `}`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    let end = rest.find([' ', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[tokio::test(flavor = "current_thread")]
async fn every_line_names_the_session_and_its_connection() {
    let Logged {
        lines,
        stdout,
        port,
    } = session_logged("wsgate_client=debug,wsgate_tunnel=debug").await;
    assert_eq!(stdout, b"SSH-2.0-test\r\n");
    assert!(lines.len() >= 6, "{lines:#?}");
    let id = field(&lines[0], "id").unwrap();
    assert!(
        id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(!line.contains(TOKEN), "{line}");
        assert!(
            line.contains(&format!("session{{id={id}")),
            "not in the session's span: {line}"
        );
    }
    // From the token on, the session's span names the user and the cluster.
    let warned = lines
        .iter()
        .position(|l| l.contains("--insecure-skip-tls-verify"))
        .unwrap();
    for line in &lines[warned..] {
        assert!(
            line.contains("user=--token") && line.contains("cluster=prod"),
            "{line}"
        );
    }
    // Each connection's lines name it: its number, where it goes and, once connected, from
    // which local address.
    let connected: Vec<&String> = lines.iter().filter(|l| l.ends_with("connected")).collect();
    assert_eq!(connected.len(), 2, "{lines:#?}");
    for (n, path) in [(1, "/kubernetes-pod-ssh-proxy"), (2, "/second")] {
        let line = connected[n - 1];
        assert!(line.contains(&format!("hop{{n={n} ")), "{line}");
        assert_eq!(
            field(line, "target"),
            Some(format!("127.0.0.1:{port}{path}").as_str()),
            "{line}"
        );
        let client = field(line, "client").unwrap();
        assert!(client.starts_with("127.0.0.1:"), "{line}");
    }
    let framing = lines.iter().find(|l| l.contains("framing chosen")).unwrap();
    assert!(
        framing.contains("hop{n=2 ") && framing.contains("client=127.0.0.1:"),
        "{framing}"
    );
}

/// At the default level (warnings only), the spans are still recorded: a warning names the
/// session too.
#[tokio::test(flavor = "current_thread")]
async fn a_warning_at_the_default_level_names_the_session() {
    let lines = session_logged("warn").await.lines;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert!(
        line.contains("WARN session{id=")
            && line.contains(" cluster=prod ")
            && line.contains(" user=--token}: --insecure-skip-tls-verify"),
        "{line}"
    );
}
