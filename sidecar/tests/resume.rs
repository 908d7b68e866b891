//! Resumable sessions in the sidecar in-process (see `support`), with a client that speaks
//! docs/resume.md by hand: the negotiation, a lost leg resumed byte-exact, the refusals that
//! leave the session alone, the window running out, a parked session's own limits, a second
//! resume in progress, and a resume that takes a live leg over.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wsgate_sidecar::bridge::CLOSE_WAIT;

use support::{
    admin_get, echo_one_byte, echo_server, metric, next, open_with, refusal, wait_metric,
    Resumable, Sidecar, ALICE, PATIENCE,
};

const BOB: &str = "sky_bob_0123456789";

fn tokens() -> String {
    format!("{ALICE} alice\n{BOB} bob\n")
}

/// Sends `data`, and expects it back from the echo target.
async fn echo(c: &mut Resumable, data: &[u8]) {
    c.send(data).await;
    c.receive_until(c.sent.len()).await;
    assert!(c.received == c.sent, "the echo differs from what was sent");
}

/// Bytes that are not all alike, so a byte out of place shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// `/sessions`, parsed.
async fn sessions(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (_, body) = admin_get(admin, "/sessions").await;
    serde_json::from_str(&body).unwrap()
}

/// Waits until the one session `/sessions` lists is in `state`.
async fn wait_state(admin: SocketAddr, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = sessions(admin).await;
        if let [one] = &list[..] {
            if one["state"] == state {
                return one.clone();
            }
        }
        assert!(Instant::now() < deadline, "never {state}: {list:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `101` carries `x-wsgate-resume: v1` only when the client offers resumption and the
/// sidecar has it on; a client that does not offer it gets today's session (no header, no
/// text message, its bytes echoed from the first frame), and so does one whose offer the
/// sidecar ignores. The acceptance states the sidecar's replay buffer. A malformed header (or
/// replay buffer, with the offer) is 400; a resume with resumption off is 404.
#[tokio::test]
async fn negotiation_on_off_and_absent() {
    let target = echo_server().await;
    let on = Sidecar::start("negotiate-on", target, &tokens(), &[]).await;
    let off = Sidecar::start("negotiate-off", target, &tokens(), &["--resume=false"]).await;
    let query = "cluster_name=prod";

    let mut offered = Resumable::open(on.addr, "prod", ALICE).await;
    echo(&mut offered, b"x").await;

    // The acceptance states the sidecar's replay buffer (`--replay-buffer`, 4 MiB by default).
    let offer = [
        ("x-wsgate-resume", "new"),
        ("x-wsgate-replay-buffer", "8388608"),
    ];
    let (ws, resp) = open_with(on.addr, query, ALICE, &offer).await.unwrap();
    assert_eq!(resp.headers()["x-wsgate-resume"], "v1");
    assert_eq!(resp.headers()["x-wsgate-replay-buffer"], "4194304");
    drop(ws);

    for (sc, headers) in [
        (&on, &[][..]),
        (&off, &[("x-wsgate-resume", "new")][..]),
        // Resumption off: what it does not know, it ignores, as a sidecar without it would.
        (&off, &[("x-wsgate-resume", "new v2")][..]),
        (
            &off,
            &[("x-wsgate-resume", "new"), ("x-wsgate-replay-buffer", "0")][..],
        ),
    ] {
        let (mut ws, resp) = open_with(sc.addr, query, ALICE, headers).await.unwrap();
        for h in ["x-wsgate-resume", "x-wsgate-replay-buffer"] {
            assert!(resp.headers().get(h).is_none(), "{h}: {headers:?}");
        }
        echo_one_byte(&mut ws).await;
    }

    for value in ["0", "4 MiB", "-1", "99999999999999"] {
        let headers = [
            ("x-wsgate-resume", "new"),
            ("x-wsgate-replay-buffer", value),
        ];
        let e = open_with(on.addr, query, ALICE, &headers)
            .await
            .err()
            .unwrap_or_else(|| panic!("replay buffer {value:?} was upgraded"));
        assert_eq!(refusal(e), (400, "bad_request".into()), "{value:?}");
    }

    for value in ["resume", "new v2", "resume 0123 4567", ""] {
        let e = open_with(on.addr, query, ALICE, &[("x-wsgate-resume", value)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{value:?} was upgraded"));
        assert_eq!(refusal(e), (400, "bad_request".into()), "{value:?}");
    }

    let value = format!("resume {} {}", offered.id, offered.secret);
    let e = open_with(off.addr, query, ALICE, &[("x-wsgate-resume", &value)])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal(e), (404, "resume_unknown".into()));

    for sc in [on, off] {
        let (run, _) = sc.shut_down();
        run.await.unwrap().unwrap();
    }
}

/// A leg lost without a close handshake (the client's TCP connection closed) parks the
/// session; the client reconnects with its id and secret, each side says how much it has
/// received, each sends again what the other lacks, and the byte stream goes on, exact,
/// through the echo target: twice over, then a clean end. The sidecar replays what it had
/// sent into the lost leg, and takes the bytes the client sends again.
#[tokio::test]
async fn a_lost_leg_is_resumed_byte_exact() {
    let target = echo_server().await;
    let sc = Sidecar::start("resume", target, &tokens(), &[]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"hello").await;

    // "world" goes out and comes back, but this client lets its echo go (as if it had been
    // lost with the connection); then the leg is lost.
    c.send(b"world").await;
    assert_eq!(c.next_bytes().await, b"world");
    c.lose();
    let parked = wait_state(sc.admin, "parked").await;
    assert_eq!(parked["legs"], 1);
    assert_eq!(metric(sc.admin, "wsgate_sessions_parked").await, 1.0);
    assert_eq!(metric(sc.admin, "wsgate_sessions_open").await, 1.0);

    // And "lost!" never reached the sidecar: the client sends it again after the resume.
    c.sent.extend_from_slice(b"lost!");
    let (theirs, _) = c.resume().await;
    assert_eq!(theirs, 10, "the sidecar had received hello and world");
    c.receive_until(c.sent.len()).await;
    assert!(
        c.received == c.sent,
        "{:?}",
        String::from_utf8_lossy(&c.received)
    );
    let live = wait_state(sc.admin, "live").await;
    assert_eq!(live["legs"], 2);
    assert_eq!(
        metric(sc.admin, "wsgate_resume_replayed_bytes_total").await,
        5.0,
        "the sidecar sends the echo of world again"
    );

    // A bigger stream, over a second lost leg.
    let big = pattern(300_000, 7);
    c.send(&big).await;
    c.lose();
    wait_state(sc.admin, "parked").await;
    let (theirs, _) = c.resume().await;
    assert!(theirs <= c.sent.len());
    c.receive_until(c.sent.len()).await;
    assert!(
        c.received == c.sent,
        "the stream differs after the second resume"
    );
    echo(&mut c, &pattern(70_000, 9)).await;

    assert_eq!(
        metric(sc.admin, "wsgate_resumes_total{result=\"ok\"}").await,
        2.0
    );
    assert!(metric(sc.admin, "wsgate_resume_replayed_bytes_total").await >= 5.0);
    assert_eq!(
        metric(sc.admin, "wsgate_resume_gap_seconds_count").await,
        2.0
    );
    assert_eq!(metric(sc.admin, "wsgate_sessions_parked").await, 0.0);
    assert_eq!(sessions(sc.admin).await[0]["legs"], 3);

    let mut ws = c.ws.take().unwrap();
    ws.close(None).await.unwrap();
    while next(&mut ws).await.is_some() {}
    wait_metric(sc.admin, "wsgate_sessions_open", 0.0).await;
    assert_eq!(
        metric(
            sc.admin,
            "wsgate_session_closes_total{reason=\"client_closed\"}"
        )
        .await,
        1.0
    );
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}

/// Resumes that fail a check are refused, each with its status and reason, and change
/// nothing: the live leg goes on. A wrong secret is answered as an unknown session, and only
/// the metric tells it apart; another user, cluster or worker is 403 (even with the secret).
#[tokio::test]
async fn refused_resumes_leave_the_live_session_alone() {
    let target = echo_server().await;
    let sc = Sidecar::start("refused", target, &tokens(), &[]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"before").await;
    let wrong = "0".repeat(32);
    struct Case {
        token: &'static str,
        query: &'static str,
        wrong_secret: bool,
        want: (u16, &'static str),
    }
    let cases = [
        Case {
            token: ALICE,
            query: "cluster_name=prod",
            wrong_secret: true,
            want: (404, "resume_unknown"),
        },
        Case {
            token: BOB,
            query: "cluster_name=prod",
            wrong_secret: false,
            want: (403, "resume_forbidden"),
        },
        Case {
            token: ALICE,
            query: "cluster_name=dev",
            wrong_secret: false,
            want: (403, "resume_forbidden"),
        },
        Case {
            token: ALICE,
            query: "cluster_name=prod&worker=1",
            wrong_secret: false,
            want: (403, "resume_forbidden"),
        },
        // Authenticated first, as a new session is.
        Case {
            token: "sky_wrong",
            query: "cluster_name=prod",
            wrong_secret: false,
            want: (401, "invalid_credentials"),
        },
    ];
    for case in &cases {
        let secret = if case.wrong_secret { &wrong } else { &c.secret };
        let e = c
            .resume_request(case.token, case.query, secret)
            .await
            .err()
            .unwrap_or_else(|| panic!("{} {} was upgraded", case.token, case.query));
        assert_eq!(
            refusal(e),
            (case.want.0, case.want.1.to_string()),
            "{} {}",
            case.token,
            case.query
        );
        echo(&mut c, case.query.as_bytes()).await;
    }
    // An id this sidecar never gave out.
    let e = open_with(
        sc.addr,
        "cluster_name=prod",
        ALICE,
        &[("x-wsgate-resume", &format!("resume {wrong} {}", c.secret))],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refusal(e), (404, "resume_unknown".into()));
    echo(&mut c, b"after").await;
    let resumes = |r: &str| format!("wsgate_resumes_total{{result=\"{r}\"}}");
    for (result, n) in [
        ("bad_secret", 1.0),
        ("forbidden", 3.0),
        ("unknown", 1.0),
        ("ok", 0.0),
    ] {
        assert_eq!(metric(sc.admin, &resumes(result)).await, n, "{result}");
    }
    assert_eq!(
        metric(
            sc.admin,
            "wsgate_handshake_failures_total{reason=\"resume_bad_secret\"}"
        )
        .await,
        1.0
    );
    assert_eq!(sessions(sc.admin).await[0]["legs"], 1);
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}

/// A TCP echo server that says when each of its connections has closed.
async fn watched_echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

/// After `c` lost its connection (at `lost`): waits for the parked session's target connection
/// to be closed, checks that a resume then gets 404, and says how long after the loss it closed.
async fn closed_for_good(
    c: &Resumable,
    closed: &mut mpsc::UnboundedReceiver<()>,
    lost: Instant,
) -> Duration {
    tokio::time::timeout(PATIENCE, closed.recv())
        .await
        .expect("the target connection was never closed")
        .unwrap();
    let after = lost.elapsed();
    let e = c
        .resume_request(ALICE, "cluster_name=prod", &c.secret)
        .await
        .err()
        .unwrap();
    assert_eq!(refusal(e), (404, "resume_unknown".into()));
    after
}

/// Past `--resume-window`, a parked session ends for good: its target connection is closed,
/// it ends as `resume_expired`, and a resume gets 404.
#[tokio::test]
async fn past_the_window_the_target_is_closed_and_the_resume_is_404() {
    let (target, mut closed) = watched_echo_server().await;
    let sc = Sidecar::start("expired", target, &tokens(), &["--resume-window", "1s"]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"hello").await;
    c.lose();
    let after = closed_for_good(&c, &mut closed, Instant::now()).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed {after:?} after the loss, within the window"
    );
    wait_metric(sc.admin, "wsgate_sessions_open", 0.0).await;
    for (series, n) in [
        ("wsgate_resumes_total{result=\"expired\"}", 1.0),
        ("wsgate_resumes_total{result=\"unknown\"}", 1.0),
        (
            "wsgate_session_closes_total{reason=\"resume_expired\"}",
            1.0,
        ),
        ("wsgate_sessions_parked", 0.0),
    ] {
        assert_eq!(metric(sc.admin, series).await, n, "{series}");
    }
    assert!(sessions(sc.admin).await.is_empty());
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}

/// A parked session still ends at its own limits (`--max-session-age`, `--idle-timeout`), long
/// before a resume window that would outlast them: a client cannot stretch a limit by going
/// away. It ends with the limit's reason, not `resume_expired`, and a resume then gets 404.
#[tokio::test]
async fn a_parked_session_ends_at_its_own_limits_not_the_window() {
    for (flag, reason) in [
        ("--max-session-age", "max_session_age"),
        ("--idle-timeout", "idle_timeout"),
    ] {
        let (target, mut closed) = watched_echo_server().await;
        let args = [flag, "2s", "--resume-window", "60s"];
        let sc = Sidecar::start(reason, target, &tokens(), &args).await;
        let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
        echo(&mut c, b"hello").await;
        c.lose();
        let lost = Instant::now();
        wait_state(sc.admin, "parked").await;
        let after = closed_for_good(&c, &mut closed, lost).await;
        assert!(
            after < Duration::from_secs(10),
            "{flag}: closed {after:?} after the loss"
        );
        wait_metric(sc.admin, "wsgate_sessions_open", 0.0).await;
        for (series, n) in [
            (
                format!("wsgate_session_closes_total{{reason=\"{reason}\"}}"),
                1.0,
            ),
            ("wsgate_resumes_total{result=\"expired\"}".to_string(), 0.0),
            ("wsgate_sessions_parked".to_string(), 0.0),
        ] {
            assert_eq!(metric(sc.admin, &series).await, n, "{flag}: {series}");
        }
        let (run, _) = sc.shut_down();
        run.await.unwrap().unwrap();
    }
}

/// A resume while the old leg is still open (the sidecar has not noticed it break) takes the
/// session over: the old leg is closed, the new one goes on from where the old one was.
#[tokio::test]
async fn a_resume_takes_a_live_leg_over() {
    let target = echo_server().await;
    let sc = Sidecar::start("takeover", target, &tokens(), &[]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"first leg").await;
    let (theirs, old) = c.resume().await;
    assert_eq!(theirs, 9);
    let mut old = old.expect("the old leg was still held");
    // The old leg ends with a close frame, a deliberate one, so that whoever holds it does not
    // resume the session back.
    let close = loop {
        match next(&mut old).await {
            Some(Message::Close(frame)) => break frame.expect("a close frame with a code"),
            Some(Message::Text(t)) if t.starts_with("ack ") => {}
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("want the old leg closed, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert_eq!(close.reason, "another connection resumed the session");
    while next(&mut old).await.is_some() {}
    echo(&mut c, b"second leg").await;
    let live = wait_state(sc.admin, "live").await;
    assert_eq!(live["legs"], 2);
    assert_eq!(
        metric(sc.admin, "wsgate_resumes_total{result=\"ok\"}").await,
        1.0
    );
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}

/// A session listener whose connections have a small send buffer (accepted sockets inherit
/// the listener's), so that a long `101` can be kept from being written.
fn small_send_buffer_listener() -> TcpListener {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    sock.listen(128).unwrap()
}

/// A resume that passes every check but whose `101` cannot be written: it offers a 60 kB
/// subprotocol (which the `101` echoes) from a tiny receive window and reads nothing. Its
/// claim on the session is held until the upgrade fails.
async fn stalled_resume(c: &Resumable) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(1024).unwrap();
    let mut s = sock.connect(c.addr).await.unwrap();
    let req = format!(
        "GET /kubernetes-pod-ssh-proxy?{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n\
         Authorization: Bearer {}\r\nx-wsgate-resume: resume {} {}\r\n\r\n",
        c.query,
        "p".repeat(60_000),
        c.token,
        c.id,
        c.secret
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// While one resume is in progress (past its checks, its `101` not through), another gets
/// 409 and the live leg goes on; once the first one fails, the session can be resumed.
#[tokio::test]
async fn a_second_resume_in_progress_gets_409() {
    let target = echo_server().await;
    let sessions_listener = small_send_buffer_listener();
    let sc = Sidecar::start_on(sessions_listener, "conflict", target, &tokens(), &[]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"live").await;
    let accepted = "wsgate_handshake_duration_seconds_count{result=\"accepted\"}";
    let before = metric(sc.admin, accepted).await;
    let stalled = stalled_resume(&c).await;
    wait_metric(sc.admin, accepted, before + 1.0).await;

    let e = c
        .resume_request(ALICE, "cluster_name=prod", &c.secret)
        .await
        .err()
        .unwrap_or_else(|| panic!("a second resume was let through"));
    assert_eq!(refusal(e), (409, "resume_conflict".into()));
    assert_eq!(
        metric(sc.admin, "wsgate_resumes_total{result=\"conflict\"}").await,
        1.0
    );
    echo(&mut c, b"still live").await;

    // The stalled one gives up (its connection reset): the claim goes, the session stays.
    drop(stalled);
    wait_metric(
        sc.admin,
        "wsgate_handshake_failures_total{reason=\"upgrade_failed\"}",
        1.0,
    )
    .await;
    echo(&mut c, b"live after it").await;
    let (theirs, _) = c.resume().await;
    assert_eq!(theirs, c.sent.len());
    echo(&mut c, b"resumed").await;
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}

/// At shutdown, a parked session is kept for the grace period, as live ones are, and ends
/// with them when it is over: its target connection closed, `run` back within its bound.
#[tokio::test]
async fn a_parked_session_ends_with_the_grace_period() {
    let (target, mut closed) = watched_echo_server().await;
    let grace = Duration::from_secs(1);
    let sc = Sidecar::start(
        "drain-parked",
        target,
        &tokens(),
        &["--shutdown-grace", "1s"],
    )
    .await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    echo(&mut c, b"a").await;
    c.lose();
    wait_metric(sc.admin, "wsgate_sessions_parked", 1.0).await;
    let (run, stopped) = sc.shut_down();
    tokio::time::timeout(PATIENCE, closed.recv())
        .await
        .expect("the target connection was never closed")
        .unwrap();
    assert!(
        stopped.elapsed() >= grace,
        "closed {:?} after the signal, within the grace period",
        stopped.elapsed()
    );
    let result = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run hung")
        .unwrap();
    result.unwrap();
    assert!(stopped.elapsed() <= grace + CLOSE_WAIT * 3);
}
