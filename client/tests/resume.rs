//! Resumable sessions as ssh sees them: the `wsgate` binary runs as ssh would run it (stdio
//! pipes), against a scripted sidecar on a loopback port that speaks docs/resume.md with raw
//! RFC 6455 frames. Pinned here: the bytes through a dropped and resumed connection are exact
//! both ways; the two stderr lines come once each; a refused resume exits 16 saying why; the
//! resume request carries the ticket, the echoed route and the first connection's
//! credentials; `--no-resume` offers nothing; a server that does not accept the offer, or a
//! loss before the ticket, ends the session as before; ssh hanging up while waiting is a
//! normal end; a reconnection answered as a new session is closed, never replayed into.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsgate_proto::wsframe::{self, apply_mask, close_payload, server_frame, Opcode};

const TOKEN: &str = "tok-resume-7c1e";
const ID: &str = "00112233445566778899aabbccddeeff";
const SECRET: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";
const ROUTE: &str = "cmVwbGljYS0xOjIyMjI=";

/// One accepted connection of the scripted sidecar: its request head, and the bytes read past
/// it.
struct Leg {
    s: TcpStream,
    head: String,
    buf: Vec<u8>,
}

impl Leg {
    async fn accept(l: &TcpListener) -> Leg {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its request ended");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        buf.drain(..end);
        Leg { s, head, buf }
    }

    /// The request's header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Answers `101`, with `extra` header lines (each ending in CRLF).
    async fn switch(&mut self, extra: &str) {
        let key = self.header("sec-websocket-key").unwrap();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            derive_accept_key(key.as_bytes())
        );
        self.s.write_all(answer.as_bytes()).await.unwrap();
    }

    async fn send(&mut self, opcode: Opcode, payload: &[u8]) {
        self.s
            .write_all(&server_frame(opcode, payload))
            .await
            .unwrap();
    }

    /// The client's next frame, unmasked; `None` when the connection ends.
    async fn frame(&mut self) -> Option<(Opcode, Vec<u8>)> {
        loop {
            if let Some(h) = wsframe::parse(&self.buf, 1 << 24).unwrap() {
                let len = h.frame_len() as usize;
                if self.buf.len() >= len {
                    let mut payload = self.buf[h.header_len..len].to_vec();
                    apply_mask(&mut payload, h.mask.expect("client frames are masked"));
                    self.buf.drain(..len);
                    return Some((h.opcode, payload));
                }
            }
            // On the heap: a 64 KiB array would live in every future awaiting this one.
            let mut chunk = vec![0u8; 65536];
            match self.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads the client's frames until `until(received, acked)` holds: session bytes into
    /// `received`, the highest `ack` into `acked`. Panics on a close or the connection's end.
    async fn read_until(
        &mut self,
        received: &mut Vec<u8>,
        acked: &mut u64,
        until: impl Fn(usize, u64) -> bool,
    ) {
        while !until(received.len(), *acked) {
            let (op, payload) = self.frame().await.expect("the connection ended");
            match op {
                Opcode::Binary | Opcode::Continuation => received.extend_from_slice(&payload),
                Opcode::Text => {
                    let msg = String::from_utf8(payload).unwrap();
                    let n = msg.strip_prefix("ack ").expect(&msg);
                    *acked = (*acked).max(n.parse().unwrap());
                }
                Opcode::Ping => self.send(Opcode::Pong, &payload).await,
                other => panic!("unexpected {other:?} frame"),
            }
        }
    }

    /// Answers the client's close (after stdin closed) with ours.
    async fn close_when_asked(&mut self) {
        loop {
            match self.frame().await {
                Some((Opcode::Close, p)) => {
                    assert_eq!(&p[..2], &1000u16.to_be_bytes());
                    self.send(Opcode::Close, &close_payload(1000, "")).await;
                    return;
                }
                Some((Opcode::Binary, p)) => panic!("{} more bytes", p.len()),
                Some(_) => {}
                None => panic!("the connection ended without a close"),
            }
        }
    }
}

/// A first connection that accepts resumption and gives the client its ticket, then sends
/// `data` and waits until the client has acknowledged it (so the ticket, which came first, is
/// surely the client's). ssh sends nothing meanwhile.
async fn resumable_first_leg(l: &TcpListener, data: &[u8]) -> Leg {
    let mut leg = Leg::accept(l).await;
    assert_eq!(leg.header("x-wsgate-resume"), Some("new"), "{}", leg.head);
    assert_eq!(
        leg.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    leg.switch(&format!(
        "x-wsgate-resume: v1\r\nx-wsgate-route: {ROUTE}\r\n"
    ))
    .await;
    leg.send(Opcode::Text, format!("session {ID} {SECRET}").as_bytes())
        .await;
    leg.send(Opcode::Binary, data).await;
    let (mut got, mut acked) = (Vec::new(), 0);
    let want = data.len() as u64;
    leg.read_until(&mut got, &mut acked, |_, a| a >= want).await;
    assert!(got.is_empty(), "ssh's bytes before ssh sent any");
    leg
}

/// `wsgate proxy` against the scripted server, as ssh runs it; every log line on (trace, the
/// libraries' too) so that the test sees whether any of them shows the secret or the token.
fn spawn(port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["-vv", "proxy", &format!("http://127.0.0.1:{port}"), "prod"])
        .args(["--endpoint", "ssh/{cluster}", "--ping-interval", "3600s"])
        .args(args)
        .env("WSGATE_TOKEN", TOKEN)
        .env("WSGATE_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What a finished `wsgate` left: its exit code, stdout, and stderr's lines.
struct Exited {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<String>,
}

impl Exited {
    /// stderr's own lines (`wsgate: …`), without the log lines.
    fn said(&self) -> Vec<&str> {
        self.stderr
            .iter()
            .filter(|l| l.starts_with("wsgate: "))
            .map(String::as_str)
            .collect()
    }

    fn assert_no_secrets(&self) {
        for line in &self.stderr {
            assert!(
                !line.contains(SECRET) && !line.contains(TOKEN),
                "a secret in: {line}"
            );
        }
    }
}

/// Waits for `wsgate` to exit, reading its output meanwhile; stdin is closed first (ssh is
/// done) unless `hold_stdin` (ssh still running: the client must end on its own).
async fn finish(mut child: Child, hold_stdin: bool) -> Exited {
    let stdin = child.stdin.take();
    if !hold_stdin {
        drop(stdin);
    }
    let mut stdout = Vec::new();
    let mut stderr = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let run = async {
        let (a, b) = tokio::join!(
            out.read_to_end(&mut stdout),
            err.read_to_string(&mut stderr)
        );
        a.unwrap();
        b.unwrap();
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("wsgate did not exit");
    Exited {
        code: status.code(),
        stdout,
        stderr: stderr.lines().map(String::from).collect(),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A connection dropped mid-stream both ways (the client's bytes half read, a frame of the
/// server's cut in the middle) is resumed: each side replays what the other lacks, and ssh
/// gets exactly the server's bytes and the server exactly ssh's.
#[tokio::test]
async fn a_dropped_connection_is_resumed_with_every_byte_once() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let from_ssh = pattern(300_000, 1);
    let (s1a, s1b, s2) = (pattern(10_000, 2), pattern(5_000, 3), pattern(7_000, 4));
    let from_server: Vec<u8> = [&s1a[..], &s1b, &s2].concat();

    // ssh starts sending once the ticket is the client's: all of it, in the client's buffers
    // or the sockets' when the connection breaks.
    let (ticketed, ssh_may_send) = futures_channel::oneshot::channel::<()>();
    let server = {
        let (from_ssh, s1a, s1b, s2) = (from_ssh.clone(), s1a.clone(), s1b.clone(), s2.clone());
        async move {
            // Leg 1: ticket, 10 kB, an ack after 20 kB of ssh's bytes; lost after 50 kB, in
            // the middle of a 5 kB frame.
            let mut leg = resumable_first_leg(&l, &s1a).await;
            ticketed.send(()).unwrap();
            let (mut received, mut acked) = (Vec::new(), 0);
            leg.read_until(&mut received, &mut acked, |n, _| n >= 20_000)
                .await;
            leg.send(Opcode::Text, format!("ack {}", received.len()).as_bytes())
                .await;
            leg.read_until(&mut received, &mut acked, |n, _| n >= 50_000)
                .await;
            let whole = server_frame(Opcode::Binary, &s1b);
            leg.s
                .write_all(&whole[..whole.len() - 3_000])
                .await
                .unwrap();
            drop(leg);
            let sent = [&s1a[..], &s1b].concat();

            // Leg 2: the resume, with the ticket, the route and the same credentials.
            let mut leg = Leg::accept(&l).await;
            assert_eq!(
                leg.header("x-wsgate-resume"),
                Some(format!("resume {ID} {SECRET}").as_str())
            );
            assert_eq!(leg.header("x-wsgate-route"), Some(ROUTE));
            assert_eq!(
                leg.header("authorization"),
                Some(format!("Bearer {TOKEN}").as_str())
            );
            leg.switch("x-wsgate-resume: v1\r\n").await;
            leg.send(
                Opcode::Text,
                format!("resume {} {}", received.len(), sent.len()).as_bytes(),
            )
            .await;
            let (op, msg) = leg.frame().await.unwrap();
            assert_eq!(op, Opcode::Text);
            let msg = String::from_utf8(msg).unwrap();
            let (m, client_sent) = msg
                .strip_prefix("resume ")
                .and_then(|c| c.split_once(' '))
                .expect(&msg);
            let (m, client_sent): (usize, usize) =
                (m.parse().unwrap(), client_sent.parse().unwrap());
            // The cut frame cannot have reached ssh whole: the server replays part of leg 1.
            assert!(m >= s1a.len() && m < sent.len(), "{msg}");
            // The client states what it sent in all: at least what arrived, at most ssh's bytes.
            assert!(
                client_sent >= received.len() && client_sent <= from_ssh.len(),
                "{msg}"
            );
            leg.send(Opcode::Binary, &sent[m..]).await;
            leg.send(Opcode::Binary, &s2).await;
            let total = from_ssh.len();
            leg.read_until(&mut received, &mut acked, |n, _| n >= total)
                .await;
            leg.close_when_asked().await;
            assert!(received == from_ssh, "ssh's bytes differ at the server");
        }
    };
    let client = async {
        let mut child = spawn(port, &[]);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let feed = from_ssh.clone();
        let writer = tokio::spawn(async move {
            ssh_may_send.await.unwrap();
            stdin.write_all(&feed).await.unwrap();
            stdin
        });
        let mut got = vec![0u8; from_server.len()];
        stdout.read_exact(&mut got).await.unwrap();
        assert!(got == from_server, "the server's bytes differ at ssh");
        child.stdout = Some(stdout);
        drop(writer.await.unwrap());
        finish(child, false).await
    };
    let (exited, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(client, server)
    })
    .await
    .expect("the session did not finish");

    exited.assert_no_secrets();
    assert_eq!(exited.code, Some(0), "{:#?}", exited.stderr);
    assert!(exited.stdout.is_empty(), "more bytes after the session");
    let said = exited.said();
    assert_eq!(said.len(), 2, "{said:#?}");
    assert!(
        said[0].starts_with("wsgate: connection lost (")
            && said[0].ends_with("); resuming session…"),
        "{said:#?}"
    );
    let gap = said[1]
        .strip_prefix("wsgate: resumed after ")
        .and_then(|g| g.strip_suffix(" s"))
        .expect(said[1]);
    assert!(
        gap.split_once('.').is_some_and(|(_, d)| d.len() == 1) && gap.parse::<f64>().is_ok(),
        "{gap}"
    );
}

/// A session the server no longer holds: 404 on the resume ends the attempts at once, with
/// exit 16 and a message that says so; what the server had sent reached ssh.
#[tokio::test]
async fn a_resume_refused_with_404_exits_16() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let data = pattern(3_000, 5);
    let server = async {
        drop(resumable_first_leg(&l, &data).await);
        let mut leg = Leg::accept(&l).await;
        assert!(leg
            .header("x-wsgate-resume")
            .unwrap()
            .starts_with("resume "));
        let body = r#"{"error": "no such session", "reason": "resume_unknown"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        leg.s.write_all(answer.as_bytes()).await.unwrap();
        // No further attempt comes.
        tokio::time::timeout(Duration::from_secs(2), l.accept())
            .await
            .expect_err("the client tried again after a 404");
    };
    let (exited, ()) = tokio::join!(finish_later(spawn(port, &[])), server);
    exited.assert_no_secrets();
    assert_eq!(exited.code, Some(16), "{:#?}", exited.stderr);
    assert_eq!(exited.stdout, data);
    let said = exited.said();
    assert_eq!(said.len(), 2, "{said:#?}");
    assert!(
        said[0].starts_with("wsgate: connection lost ("),
        "{said:#?}"
    );
    assert_eq!(
        said[1],
        format!("wsgate: the connection was lost and the session could not be resumed: the server no longer holds the session (404 from 127.0.0.1:{port}: no such session (resume_unknown)): its resume window passed, or the replica that held it is gone; run ssh again for a new session")
    );
}

/// Waits for the client to exit on its own, stdin held open (ssh still running).
async fn finish_later(child: Child) -> Exited {
    finish(child, true).await
}

/// Nothing answers within --resume-timeout: exit 16, naming the timeout and the last failure.
#[tokio::test]
async fn no_server_within_the_resume_timeout_exits_16() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let child = spawn(port, &["--resume-timeout", "2s"]);
    let leg = resumable_first_leg(&l, b"x").await;
    drop(l);
    drop(leg);
    let exited = finish_later(child).await;
    assert_eq!(exited.code, Some(16), "{:#?}", exited.stderr);
    let said = exited.said();
    assert!(
        said[1].starts_with("wsgate: the connection was lost and the session could not be resumed: no working connection within 2s (--resume-timeout); the last attempt: cannot connect to 127.0.0.1:"),
        "{said:#?}"
    );
}

/// ssh hanging up while the client waits to reconnect is a normal end.
#[tokio::test]
async fn a_hangup_while_resuming_is_a_normal_end() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut child = spawn(port, &[]);
    let leg = resumable_first_leg(&l, b"x").await;
    drop(l);
    drop(leg);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap().expect("stderr ended");
        if line.starts_with("wsgate: connection lost") {
            break;
        }
    }
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: a signal to the child this test spawned (and has not reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("wsgate did not exit on SIGHUP")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A reconnection answered as a new session (no `x-wsgate-resume: v1`) is closed, not used:
/// exit 16.
#[tokio::test]
async fn a_fresh_session_on_resume_is_closed_not_replayed_into() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = async {
        drop(resumable_first_leg(&l, b"x").await);
        let mut leg = Leg::accept(&l).await;
        leg.switch("").await;
        match leg.frame().await {
            Some((Opcode::Close, p)) => assert_eq!(&p[..2], &1000u16.to_be_bytes()),
            other => panic!("{other:?}"),
        }
    };
    let (exited, ()) = tokio::join!(finish_later(spawn(port, &[])), server);
    assert_eq!(exited.code, Some(16), "{:#?}", exited.stderr);
    let said = exited.said();
    assert!(
        said[1].contains("the server answered the reconnection with a new session, not this one"),
        "{said:#?}"
    );
}

/// --no-resume sends no offer, and the session is today's.
#[tokio::test]
async fn no_resume_offers_nothing() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = async {
        let mut leg = Leg::accept(&l).await;
        assert_eq!(leg.header("x-wsgate-resume"), None, "{}", leg.head);
        leg.switch("").await;
        leg.send(Opcode::Binary, b"\x00SSH-2.0-x\r\n").await;
        leg.send(Opcode::Close, &close_payload(1000, "")).await;
        while leg.frame().await.is_some() {}
    };
    let (exited, ()) = tokio::join!(finish_later(spawn(port, &["--no-resume"])), server);
    assert_eq!(exited.code, Some(0), "{:#?}", exited.stderr);
    assert_eq!(exited.stdout, b"SSH-2.0-x\r\n");
}

/// A server that ignores the offer runs today's session: a connection lost mid-session is
/// the same error as before (exit 10), with no attempt to resume.
#[tokio::test]
async fn an_offer_not_taken_is_todays_session() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = async {
        let mut leg = Leg::accept(&l).await;
        assert_eq!(leg.header("x-wsgate-resume"), Some("new"));
        leg.switch("").await;
        leg.send(Opcode::Binary, b"\x00SSH-2.0-x\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(leg);
        tokio::time::timeout(Duration::from_secs(2), l.accept())
            .await
            .expect_err("the client reconnected");
    };
    let (exited, ()) = tokio::join!(finish_later(spawn(port, &[])), server);
    assert_eq!(exited.code, Some(10), "{:#?}", exited.stderr);
    assert_eq!(exited.stdout, b"SSH-2.0-x\r\n");
    let said = exited.said();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].starts_with("wsgate: the server connection failed"),
        "{said:#?}"
    );
}
