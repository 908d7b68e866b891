//! A session's life in the sidecar in-process (see `support`): a handshake, a byte there and
//! back, the drain at shutdown; and a handshake that is refused.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_sidecar::bridge::CLOSE_WAIT;
use wsgate_sidecar::error::CloseReason;

use support::{echo_one_byte, echo_server, next, open, Sidecar, ALICE, GRACE, PATIENCE};

/// A GET on the admin listener: the status line.
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

/// The whole life of a session: a handshake, a byte there and back, then the shutdown: the
/// sidecar stops being ready, gives the session its grace period, closes it with the
/// shutdown's close code (1001), and `run` returns within its drain bound.
#[tokio::test]
async fn a_session_echoes_a_byte_then_the_shutdown_drains_it_with_1001() {
    let target = echo_server().await;
    let sc = Sidecar::start("drain", target, &format!("{ALICE} alice\n"), &[]).await;
    let admin = sc.admin;
    let mut ws = open(sc.addr, "prod", ALICE).await.unwrap();
    echo_one_byte(&mut ws).await;
    assert_eq!(admin_get(admin, "/readyz").await, "HTTP/1.1 200 OK");

    let (run, stopped) = sc.shut_down();
    // Draining: the probe says so at once, while the session goes on for its grace.
    let deadline = Instant::now() + PATIENCE;
    while admin_get(admin, "/readyz").await != "HTTP/1.1 503 Service Unavailable" {
        assert!(Instant::now() < deadline, "/readyz never said draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    echo_one_byte(&mut ws).await;

    let close = match next(&mut ws).await {
        Some(Message::Close(Some(frame))) => frame,
        other => panic!("want a close frame, got {other:?}"),
    };
    assert!(
        stopped.elapsed() >= GRACE,
        "closed before the grace period was over"
    );
    assert_eq!(u16::from(close.code), CloseReason::Shutdown.code());
    assert_eq!(close.code, CloseCode::Away);
    // The client answers the close (tungstenite does as it reads on) and the connection ends.
    while next(&mut ws).await.is_some() {}

    let bound = GRACE + CLOSE_WAIT * 3;
    let result = tokio::time::timeout(bound + Duration::from_secs(1), run)
        .await
        .expect("run did not return")
        .unwrap();
    result.unwrap();
    assert!(
        stopped.elapsed() <= bound,
        "run returned {:?} after the signal; its bound is {bound:?}",
        stopped.elapsed()
    );
}

/// A wrong token gets 401 and a `WWW-Authenticate` challenge, and no upgrade.
#[tokio::test]
async fn a_wrong_token_gets_401_and_no_upgrade() {
    let target = echo_server().await;
    let sc = Sidecar::start("401", target, &format!("{ALICE} alice\n"), &[]).await;
    match open(sc.addr, "prod", "sky_not_a_token").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert!(resp.headers().get("upgrade").is_none(), "{resp:?}");
            assert!(resp.headers().get("sec-websocket-accept").is_none());
        }
        Err(e) => panic!("want a 401 answer, got {e}"),
        Ok(_) => panic!("a wrong token was upgraded"),
    }
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
}
