//! The client role (`wsgate proxy`): the server's frames in (the framing learnt from its first
//! message), stdin's bytes out as masked frames.

use std::future::pending;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsgate_proto::framing::{latency_frame, ping_frame, redirect_frame, Framing, TYPE_DATA};
use wsgate_proto::wsframe::{self, close_payload, Opcode};

use super::*;

/// The session's end of a raw server connection whose server has sent a typed banner, then
/// `more` bytes; the server's end, to read frames from and write more to.
async fn server_after_banner(more: &[u8]) -> (DuplexStream, DuplexStream) {
    let (conn, mut peer) = tokio::io::duplex(1 << 16);
    let mut first = unmasked(0x82, b"\x00SSH-2.0-x\r\n");
    first.extend_from_slice(more);
    peer.write_all(&first).await.unwrap();
    (conn, peer)
}

/// Runs a client session on `conn` to its end, stdin held open with nothing typed; what it
/// wrote to stdout, read once it has ended (for sessions that write less than the pipe holds).
async fn run_to_end(conn: DuplexStream) -> (Ended, Vec<u8>) {
    let (stdin, _feed) = tokio::io::duplex(64);
    let (mut read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let ended = connect(conn, b"", stdin, stdout, &c, &Seen::default(), pending()).await;
    let mut got = Vec::new();
    read_out.read_to_end(&mut got).await.unwrap();
    (ended, got)
}

#[tokio::test]
async fn typed_server_gets_typed_frames_and_stdin_eof_closes() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
    let (stdin, mut feed) = tokio::io::duplex(1024);
    let (mut read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let peer = async {
        let mut got = vec![0u8; 11];
        read_out.read_exact(&mut got).await.unwrap();
        feed.write_all(b"SSH-2.0-client\r\n").await.unwrap();
        assert_eq!(next(&mut srv).await, bin(b"\x00SSH-2.0-client\r\n"));
        drop(feed);
        match next(&mut srv).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
        // tungstenite answers the close; the session then ends.
        let _ = srv.next().await;
        got
    };
    let (ended, got) = tokio::join!(session, peer);
    assert!(matches!(ended.reason, Reason::PeerClosed(_)), "{ended:?}");
    assert!(ended.input_ended);
    assert_eq!(ended.framing, Some(Framing::Typed));
    assert_eq!(got, b"SSH-2.0-x\r\n");
    assert_eq!((seen.up(), seen.down()), (11, 16));
}

#[tokio::test]
async fn old_server_gets_raw_frames() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    srv.send(bin(b"SSH-2.0-old\r\n")).await.unwrap();
    let (stdin, mut feed) = tokio::io::duplex(1024);
    let (_read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let peer = async {
        feed.write_all(b"hello").await.unwrap();
        assert_eq!(next(&mut srv).await, bin(b"hello"));
        srv.close(None).await.unwrap();
    };
    let (ended, ()) = tokio::join!(session, peer);
    assert!(
        matches!(ended.reason, Reason::PeerClosed(None)),
        "{ended:?}"
    );
    assert!(!ended.input_ended);
    assert_eq!(ended.framing, Some(Framing::Raw));
}

/// The server's first message tells the framing (it is gathered whole, even if fragmented).
#[tokio::test]
async fn the_first_message_tells_the_framing() {
    struct Case {
        what: &'static str,
        frames: Vec<Vec<u8>>,
        framing: Option<Framing>,
        stdout: &'static [u8],
    }
    let cases = [
        Case {
            what: "typed banner",
            frames: vec![unmasked(0x82, b"\x00SSH-2.0-x\r\n")],
            framing: Some(Framing::Typed),
            stdout: b"SSH-2.0-x\r\n",
        },
        Case {
            what: "raw banner",
            frames: vec![unmasked(0x82, b"SSH-2.0-x\r\n")],
            framing: Some(Framing::Raw),
            stdout: b"SSH-2.0-x\r\n",
        },
        Case {
            what: "typed banner in fragments, the first empty",
            frames: vec![
                unmasked(0x02, b""),
                unmasked(0x00, b"\x00SSH-"),
                unmasked(0x80, b"2.0-x\r\n"),
            ],
            framing: Some(Framing::Typed),
            stdout: b"SSH-2.0-x\r\n",
        },
        Case {
            what: "anything else is raw",
            frames: vec![unmasked(0x82, b"\x01\x02")],
            framing: Some(Framing::Raw),
            stdout: b"\x01\x02",
        },
        Case {
            what: "text is skipped, then a typed banner",
            frames: vec![unmasked(0x81, b"hi"), unmasked(0x82, b"\x00SSH-")],
            framing: Some(Framing::Typed),
            stdout: b"SSH-",
        },
        Case {
            what: "nothing but text",
            frames: vec![unmasked(0x81, b"hi")],
            framing: None,
            stdout: b"",
        },
    ];
    for case in cases {
        let (conn, mut srv) = tokio::io::duplex(1 << 16);
        srv.write_all(&case.frames.concat()).await.unwrap();
        srv.write_all(&unmasked(0x88, &close_payload(1000, "")))
            .await
            .unwrap();
        let (ended, got) = run_to_end(conn).await;
        assert!(
            matches!(ended.reason, Reason::PeerClosed(Some(_))),
            "{}: {ended:?}",
            case.what
        );
        assert_eq!(ended.framing, case.framing, "{}", case.what);
        assert_eq!(got, case.stdout, "{}", case.what);
    }
}

#[tokio::test]
async fn a_redirect_first_ends_the_session_with_its_json() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    let info = serde_json::json!({"url": "wss://x/y"});
    srv.send(bin(&redirect_frame(&info))).await.unwrap();
    let (ended, _) = run_to_end(conn).await;
    match ended.reason {
        Reason::Redirected(json) => assert_eq!(json, info.to_string().as_bytes()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut srv).await, Message::Close(Some(_))));
}

/// Frames that came with the `101` (the handshake read them) are the session's first.
#[tokio::test]
async fn read_ahead_bytes_are_the_first_frames() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    let mut ahead = unmasked(0x82, b"\x00SSH-2.0-x\r\n");
    ahead.extend(unmasked(0x02, b"\x00more "));
    let (stdin, _feed) = tokio::io::duplex(1024);
    let (mut read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, &ahead, stdin, stdout, &c, &seen, pending());
    let peer = async {
        // The rest of the fragmented message comes over the connection.
        srv.get_mut()
            .write_all(&unmasked(0x80, b"bytes"))
            .await
            .unwrap();
        let mut got = vec![0u8; 21];
        read_out.read_exact(&mut got).await.unwrap();
        srv.close(None).await.unwrap();
        got
    };
    let (ended, got) = tokio::join!(session, peer);
    assert!(
        matches!(ended.reason, Reason::PeerClosed(None)),
        "{ended:?}"
    );
    assert_eq!(got, b"SSH-2.0-x\r\nmore bytes");
}

/// A bulk transfer both ways: stdin in reads larger than a frame (several frames per write),
/// the server's frames many per read; every byte arrives, in order.
#[tokio::test]
async fn bulk_both_ways_in_order() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
    let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let (stdin, mut feed) = tokio::io::duplex(1 << 16);
    let (mut read_out, stdout) = tokio::io::duplex(1 << 16);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let (srv_tx, mut srv_rx) = srv.split();
    let feeder = async {
        feed.write_all(&up).await.unwrap();
        feed
    };
    let reader = async {
        let mut got = Vec::new();
        let mut frames = 0;
        while got.len() < up.len() {
            match srv_rx.next().await.unwrap().unwrap() {
                Message::Binary(b) => {
                    assert_eq!(b[0], TYPE_DATA);
                    assert!(b.len() <= 1 + 1024, "a frame over the chunk size");
                    got.extend_from_slice(&b[1..]);
                    frames += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        (got, frames, srv_rx)
    };
    let sender = async {
        let mut srv_tx = srv_tx;
        for piece in down.chunks(700) {
            let mut f = vec![TYPE_DATA];
            f.extend_from_slice(piece);
            srv_tx.feed(Message::Binary(f.into())).await.unwrap();
        }
        srv_tx.flush().await.unwrap();
        srv_tx
    };
    let drain = async {
        let mut got = vec![0u8; 11 + down.len()];
        read_out.read_exact(&mut got).await.unwrap();
        got
    };
    let all = async {
        let (feed, (got_up, frames, srv_rx), srv_tx, got_down) =
            tokio::join!(feeder, reader, sender, drain);
        drop(feed);
        let mut srv = srv_tx.reunite(srv_rx).unwrap();
        assert!(matches!(next(&mut srv).await, Message::Close(_)));
        let _ = srv.next().await;
        (got_up, frames, got_down)
    };
    let (ended, (got_up, frames, got_down)) = tokio::join!(session, all);
    assert!(matches!(ended.reason, Reason::PeerClosed(_)), "{ended:?}");
    assert_eq!(got_up, up);
    assert!(frames >= up.len() / 1024);
    assert_eq!(&got_down[..11], b"SSH-2.0-x\r\n");
    assert_eq!(&got_down[11..], &down[..]);
    assert_eq!(seen.up(), 11 + down.len() as u64);
    assert_eq!(seen.down(), up.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn pings_every_interval_and_reports_latency() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    srv.send(bin(b"\x00SSH-2.0-x\r\n")).await.unwrap();
    let (stdin, _feed) = tokio::io::duplex(1024);
    let (_read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let peer = async {
        let ping = next(&mut srv).await;
        assert_eq!(ping, bin(&ping_frame(1)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        srv.send(ping).await.unwrap();
        assert_eq!(next(&mut srv).await, bin(&latency_frame(30)));
        // Raw framing would ping with WebSocket pings; a second typed ping comes 10 s later.
        assert_eq!(next(&mut srv).await, bin(&ping_frame(2)));
        srv.close(None).await.unwrap();
    };
    let (ended, ()) = tokio::join!(session, peer);
    assert!(
        matches!(ended.reason, Reason::PeerClosed(None)),
        "{ended:?}"
    );
    assert_eq!(*seen.latency.lock().unwrap(), vec![30]);
}

/// A WebSocket ping is answered with its payload (tungstenite's server shows the pong); an old
/// server's keepalive is a WebSocket ping.
#[tokio::test(start_paused = true)]
async fn websocket_pings_are_answered_and_sent_to_old_servers() {
    let (conn, mut srv) = ws(WsRole::Server).await;
    srv.send(bin(b"SSH-2.0-old\r\n")).await.unwrap();
    srv.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let (stdin, _feed) = tokio::io::duplex(1024);
    let (_read_out, stdout) = tokio::io::duplex(1024);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let peer = async {
        assert_eq!(
            next(&mut srv).await,
            Message::Pong(Bytes::from_static(b"are you there"))
        );
        assert_eq!(next(&mut srv).await, Message::Ping(Bytes::new()));
        srv.close(None).await.unwrap();
    };
    let (ended, ()) = tokio::join!(session, peer);
    assert!(
        matches!(ended.reason, Reason::PeerClosed(None)),
        "{ended:?}"
    );
}

/// Our close after stdin's end crosses nothing: the server's close that answers it gets no
/// second close frame (RFC 6455: nothing after a close).
#[tokio::test]
async fn one_close_frame_only() {
    let (conn, mut peer) = server_after_banner(&[]).await;
    let (stdin, feed) = tokio::io::duplex(64);
    let (_o, stdout) = tokio::io::duplex(64);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let server = async {
        drop(feed);
        let mut got = [0u8; 64];
        let n = peer.read(&mut got).await.unwrap();
        let h = wsframe::parse(&got[..n], 125).unwrap().unwrap();
        assert_eq!((h.opcode, h.frame_len() as usize), (Opcode::Close, n));
        peer.write_all(&unmasked(0x88, &close_payload(1000, "")))
            .await
            .unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        rest
    };
    let (ended, rest) = tokio::join!(session, server);
    assert!(
        matches!(ended.reason, Reason::PeerClosed(Some(_))),
        "{ended:?}"
    );
    assert!(ended.input_ended);
    assert_eq!(rest, b"", "bytes after our close frame");
}

/// Data frames and a close in one read: the data reaches stdout before the session ends.
#[tokio::test]
async fn data_before_the_close_reaches_stdout() {
    let mut more = unmasked(0x82, b"\x00one ");
    more.extend(unmasked(0x82, b"\x00two"));
    more.extend(unmasked(
        0x88,
        &close_payload(1011, "target connection failed"),
    ));
    let (conn, _peer) = server_after_banner(&more).await;
    let (ended, got) = run_to_end(conn).await;
    match ended.reason {
        Reason::PeerClosed(Some(f)) => assert_eq!(
            (f.code, f.reason.as_str()),
            (1011, "target connection failed")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(got, b"SSH-2.0-x\r\none two");
}

#[tokio::test]
async fn a_connection_lost_mid_session_ends_it() {
    let (conn, peer) = server_after_banner(&[]).await;
    let (stdin, _f) = tokio::io::duplex(64);
    let (_o, stdout) = tokio::io::duplex(64);
    let c = client_config();
    let seen = Seen::default();
    let session = connect(conn, b"", stdin, stdout, &c, &seen, pending());
    let lose = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(peer);
    };
    let (ended, ()) = tokio::join!(session, lose);
    assert!(matches!(ended.reason, Reason::PeerEof), "{ended:?}");
    assert!(!ended.input_ended);
}
