//! A peer or local side that stops reading, in either role: every such session must still end,
//! with its reason, and not much later than asked. Time is paused: the runtime jumps to each
//! timer, and a session that hangs shows as the one-hour guard firing.

use std::future::{pending, Future};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wsgate_proto::framing::Framing;
use wsgate_proto::wsframe::Opcode;

use super::*;
use crate::CLOSE_WAIT;

/// Runs `session` beside `flood` (which never ends) under a one-hour guard; the session's
/// result and how long it took.
async fn guarded<T>(
    session: impl Future<Output = T>,
    flood: impl Future<Output = ()>,
) -> (T, Duration) {
    let t0 = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::select! {
            r = session => r,
            () = flood => unreachable!("the flood never ends"),
        }
    })
    .await
    .expect("the session outlived its limits");
    (out, t0.elapsed())
}

/// A server-role session whose client (or target) never reads while the other side floods it.
async fn server_stuck(
    target_stuck: bool,
    c: Config,
    shutdown: impl Future<Output = ()>,
) -> (Reason, Duration) {
    // Small pipes, so the writer blocks soon.
    let (server, mut peer) = tokio::io::duplex(1024);
    let (target, mut sshd) = tokio::io::duplex(1024);
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, shutdown);
    let flood = async {
        if target_stuck {
            // The client sends data frames without end; the target reads nothing.
            let frame = masked(0x80 | Opcode::Binary as u8, &[7u8; 1000]);
            while peer.write_all(&frame).await.is_ok() {}
        } else {
            // The target sends without end; the client reads nothing.
            while sshd.write_all(&[7u8; 1000]).await.is_ok() {}
        }
        pending::<()>().await
    };
    guarded(session, flood).await
}

#[tokio::test(start_paused = true)]
async fn server_limits_hold_when_a_side_stops_reading() {
    struct Case {
        what: &'static str,
        config: Config,
        /// When the shutdown future resolves, if it does.
        shutdown_at: Option<Duration>,
        /// When the reason comes (the session may take `2 × CLOSE_WAIT` more).
        due: Duration,
        want: fn(&Reason) -> bool,
    }
    let raw = server_config(Framing::Raw);
    let cases = [
        Case {
            what: "max age",
            config: Config {
                max_age: Some(Duration::from_secs(60)),
                ..raw.clone()
            },
            shutdown_at: None,
            due: Duration::from_secs(60),
            want: |r| matches!(r, Reason::MaxAge),
        },
        Case {
            what: "idle timeout",
            config: Config {
                idle_timeout: Some(Duration::from_secs(30)),
                ..raw.clone()
            },
            shutdown_at: None,
            due: Duration::from_secs(30),
            want: |r| matches!(r, Reason::IdleTimeout),
        },
        Case {
            what: "shutdown",
            config: raw.clone(),
            shutdown_at: Some(Duration::from_secs(5)),
            due: Duration::from_secs(5),
            want: |r| matches!(r, Reason::Shutdown),
        },
    ];
    for case in cases {
        for target_stuck in [false, true] {
            let shutdown = async {
                match case.shutdown_at {
                    Some(at) => tokio::time::sleep(at).await,
                    None => pending().await,
                }
            };
            let (reason, took) = server_stuck(target_stuck, case.config.clone(), shutdown).await;
            assert!(
                (case.want)(&reason),
                "{}, target stuck: {target_stuck}: {reason:?}",
                case.what
            );
            assert!(
                took >= case.due && took <= case.due + CLOSE_WAIT * 2,
                "{}, target stuck: {target_stuck}: {took:?}",
                case.what
            );
        }
    }
    // A client that reads nothing answers no ping either: the keepalive ends it.
    let c = Config {
        ping_interval: Some(Duration::from_secs(10)),
        max_missed_pongs: Some(2),
        ..raw
    };
    let (reason, took) = server_stuck(false, c, pending()).await;
    assert!(matches!(reason, Reason::KeepaliveTimeout), "{reason:?}");
    assert!(took <= Duration::from_secs(40) + CLOSE_WAIT * 2, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn blind_pongs_do_not_keep_a_client_that_reads_nothing() {
    // The target floods; the client reads nothing but sends a pong every 3 s: pings cannot
    // reach it, none is queued, and the stalled intervals end the session.
    let (server, mut peer) = tokio::io::duplex(1024);
    let (target, mut sshd) = tokio::io::duplex(1024);
    let c = Config {
        ping_interval: Some(Duration::from_secs(10)),
        max_missed_pongs: Some(2),
        ..server_config(Framing::Raw)
    };
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, pending());
    let flood = async {
        let pongs = async {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if peer
                    .write_all(&masked(0x80 | Opcode::Pong as u8, b""))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let data = async { while sshd.write_all(&[7u8; 1000]).await.is_ok() {} };
        tokio::join!(pongs, data);
        pending::<()>().await
    };
    let (reason, _) = guarded(session, flood).await;
    assert!(matches!(reason, Reason::KeepaliveTimeout), "{reason:?}");
}

/// A client-role session with a server that sent its banner and then reads nothing: stdin
/// floods, the server's side of the connection fills, and ssh hanging up must still end the
/// session (before the engine, the client awaited that write inside its loop and never saw the
/// hangup).
#[tokio::test(start_paused = true)]
async fn a_server_that_never_reads_cannot_hold_the_client_past_hangup() {
    let (conn, mut srv) = tokio::io::duplex(1024);
    srv.write_all(&unmasked(0x82, b"\x00SSH-2.0-x\r\n"))
        .await
        .unwrap();
    let (stdin, mut feed) = tokio::io::duplex(1 << 16);
    let (mut read_out, stdout) = tokio::io::duplex(1 << 16);
    let c = client_config();
    let seen = Seen::default();
    let hangup = tokio::time::sleep(Duration::from_secs(60));
    let session = connect(conn, b"", stdin, stdout, &c, &seen, hangup);
    let flood = async {
        let input = async { while feed.write_all(&[7u8; 4096]).await.is_ok() {} };
        let output = async { while read_out.read(&mut [0u8; 4096]).await.is_ok_and(|n| n > 0) {} };
        tokio::join!(input, output);
        pending::<()>().await
    };
    let (ended, took) = guarded(session, flood).await;
    assert!(matches!(ended.reason, Reason::Shutdown), "{ended:?}");
    assert!(
        took >= Duration::from_secs(60) && took <= Duration::from_secs(60) + CLOSE_WAIT * 2,
        "{took:?}"
    );
    assert!(
        seen.down() > 0,
        "stdin was read until the server's side filled"
    );
    drop(srv);
}

/// ssh stops reading the client's stdout while the server floods: the hangup still ends it.
#[tokio::test(start_paused = true)]
async fn stdout_not_read_cannot_hold_the_client_past_hangup() {
    let (conn, mut srv) = tokio::io::duplex(1024);
    let (stdin, _feed) = tokio::io::duplex(64);
    let (_read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let hangup = tokio::time::sleep(Duration::from_secs(60));
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, hangup);
    let flood = async {
        let frame = unmasked(0x82, &[0u8; 1000]);
        while srv.write_all(&frame).await.is_ok() {}
        pending::<()>().await
    };
    let (ended, took) = guarded(session, flood).await;
    assert!(matches!(ended.reason, Reason::Shutdown), "{ended:?}");
    assert!(took <= Duration::from_secs(60) + CLOSE_WAIT * 2, "{took:?}");
}

/// stdin closes and our close goes out, but the server never answers it: the client waits
/// `LINGER`, then ends.
#[tokio::test(start_paused = true)]
async fn a_close_the_server_never_answers_is_waited_for_briefly() {
    let (conn, mut srv) = tokio::io::duplex(1 << 16);
    srv.write_all(&unmasked(0x82, b"\x00SSH-2.0-x\r\n"))
        .await
        .unwrap();
    let (stdin, feed) = tokio::io::duplex(64);
    drop(feed);
    let (_read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let (ended, took) = guarded(session, pending()).await;
    assert!(matches!(ended.reason, Reason::Lingered), "{ended:?}");
    assert!(ended.input_ended);
    assert!(
        took >= crate::LINGER && took <= crate::LINGER + CLOSE_WAIT * 2,
        "{took:?}"
    );
    let frames = frames_of(&mut srv).await;
    assert_eq!(close_of(&frames), 1000);
}
