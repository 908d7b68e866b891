//! The server role (the sidecar): a client's masked frames in, the target's bytes out.

use std::future::pending;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::framing::{FrameError, Framing, TYPE_DATA};
use wsgate_proto::wsframe::{HeaderError, Opcode};

use super::*;

#[tokio::test]
async fn typed_framing_both_ways_then_target_eof_closes_1000() {
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, mut sshd) = tokio::io::duplex(4096);
    let seen = Seen::default();
    let c = server_config(Framing::Typed);
    let session = serve(server, target, &c, &seen, pending());
    let peer = async {
        client.send(bin(b"\x00hello")).await.unwrap();
        let mut got = [0u8; 5];
        sshd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // A ping is echoed unchanged; a latency report is recorded.
        client.send(bin(&[1, 0, 0, 0, 42])).await.unwrap();
        assert_eq!(next(&mut client).await, bin(&[1, 0, 0, 0, 42]));
        let mut lat = vec![2u8];
        lat.extend_from_slice(&17u64.to_be_bytes());
        client.send(bin(&lat)).await.unwrap();
        sshd.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        assert_eq!(next(&mut client).await, bin(b"\x00SSH-2.0-test\r\n"));
        sshd.shutdown().await.unwrap();
        drop(sshd);
        next(&mut client).await
    };
    let (reason, last) = tokio::join!(session, peer);
    assert!(matches!(reason, Reason::LocalClosed), "{reason:?}");
    assert_eq!(close_code(&last).map(|c| c.0), Some(1000));
    assert_eq!(seen.up(), 5);
    assert_eq!(seen.down(), 14);
    assert_eq!(*seen.latency.lock().unwrap(), vec![17]);
}

#[tokio::test]
async fn raw_framing_passes_bytes_untouched() {
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, mut sshd) = tokio::io::duplex(4096);
    let seen = Seen::default();
    let c = server_config(Framing::Raw);
    let session = serve(server, target, &c, &seen, pending());
    let peer = async {
        client.send(bin(&[1, 0, 0, 0, 42])).await.unwrap();
        let mut got = [0u8; 5];
        sshd.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1, 0, 0, 0, 42]);
        sshd.write_all(&[0, 1, 2]).await.unwrap();
        assert_eq!(next(&mut client).await, bin(&[0, 1, 2]));
        // Client close: the target sees EOF (shutdown of its write side), the client gets a
        // close back.
        client.send(Message::Close(None)).await.unwrap();
        let mut rest = Vec::new();
        sshd.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        next(&mut client).await
    };
    let (reason, last) = tokio::join!(session, peer);
    assert!(matches!(reason, Reason::PeerClosed(None)), "{reason:?}");
    assert_eq!(close_code(&last).map(|c| c.0), Some(1000));
}

#[tokio::test]
async fn many_frames_in_one_read_arrive_in_order() {
    // 600 small frames flushed at once: more than one writev's worth (MAX_SLICES) in one read;
    // then 40 larger ones through 4 KiB reads, which end mid-frame.
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, mut sshd) = tokio::io::duplex(1 << 20);
    let frames: Vec<Vec<u8>> = (1..=600usize)
        .map(|i| i % 13 + 1)
        .chain((1..=40).map(|i| i * 25))
        .enumerate()
        .map(|(i, n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
        .collect();
    let want = frames.concat();
    let send = async {
        for f in &frames[..600] {
            client.feed(bin(f)).await.unwrap();
        }
        client.flush().await.unwrap();
        for f in &frames[600..] {
            client.send(bin(f)).await.unwrap();
        }
        client
    };
    let seen = Seen::default();
    let c = server_config(Framing::Raw);
    let session = serve(server, target, &c, &seen, pending());
    let check = async {
        let mut got = vec![0u8; want.len()];
        sshd.read_exact(&mut got).await.unwrap();
        assert!(got == want, "bytes differ");
        drop(sshd);
    };
    let (reason, _, _) = tokio::join!(session, send, check);
    assert!(matches!(reason, Reason::LocalClosed), "{reason:?}");
    assert_eq!(seen.up(), want.len() as u64);
}

#[tokio::test]
async fn fragmented_messages_are_joined() {
    // Data split over frames (the type byte only in the first), and a SkyPilot ping split
    // after its type byte, with a WebSocket ping between fragments (allowed by RFC 6455).
    let (server, mut peer) = tokio::io::duplex(1 << 16);
    let (target, mut sshd) = tokio::io::duplex(4096);
    let mut bytes = masked(Opcode::Binary as u8, b"\x00ab");
    bytes.extend(masked(0x80 | Opcode::Ping as u8, b"p"));
    bytes.extend(masked(Opcode::Continuation as u8, b"cd"));
    bytes.extend(masked(0x80 | Opcode::Continuation as u8, b"ef"));
    bytes.extend(masked(Opcode::Binary as u8, &[1, 0]));
    bytes.extend(masked(0x80 | Opcode::Continuation as u8, &[0, 0, 9]));
    bytes.extend(masked(0x80 | Opcode::Close as u8, &[]));
    peer.write_all(&bytes).await.unwrap();
    let c = server_config(Framing::Typed);
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(matches!(reason, Reason::PeerClosed(None)), "{reason:?}");
    let mut got = Vec::new();
    sshd.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abcdef");
    let frames = frames_of(peer).await;
    assert_eq!(frames[0], (Opcode::Pong, b"p".to_vec()));
    assert_eq!(frames[1], (Opcode::Binary, vec![1, 0, 0, 0, 9]));
    assert_eq!(close_of(&frames), 1000);
}

#[tokio::test]
async fn a_typed_message_may_start_with_empty_fragments() {
    // RFC 6455 allows empty fragments: the type byte then comes in a later frame.
    let (server, mut peer) = tokio::io::duplex(1 << 16);
    let (target, mut sshd) = tokio::io::duplex(4096);
    let mut bytes = masked(Opcode::Binary as u8, b"");
    bytes.extend(masked(Opcode::Continuation as u8, b""));
    bytes.extend(masked(0x80 | Opcode::Continuation as u8, b"\x00ab"));
    bytes.extend(masked(Opcode::Binary as u8, b""));
    bytes.extend(masked(0x80 | Opcode::Continuation as u8, &[1, 0, 0, 0, 9]));
    bytes.extend(masked(0x80 | Opcode::Close as u8, &[]));
    peer.write_all(&bytes).await.unwrap();
    let c = server_config(Framing::Typed);
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(matches!(reason, Reason::PeerClosed(None)), "{reason:?}");
    let mut got = Vec::new();
    sshd.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ab");
    let frames = frames_of(peer).await;
    assert_eq!(frames[0], (Opcode::Binary, vec![1, 0, 0, 0, 9]));
    assert_eq!(close_of(&frames), 1000);

    // A typed message that is empty as a whole still has no type: refused.
    let (server, mut peer) = tokio::io::duplex(1 << 16);
    let (target, _sshd) = tokio::io::duplex(64);
    let mut bytes = masked(Opcode::Binary as u8, b"");
    bytes.extend(masked(0x80 | Opcode::Continuation as u8, b""));
    peer.write_all(&bytes).await.unwrap();
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(
        matches!(
            reason,
            Reason::Violation(Violation::Framing(FrameError::Empty))
        ),
        "{reason:?}"
    );
}

#[tokio::test]
async fn bad_messages_end_the_session_with_their_reason() {
    struct Case {
        what: &'static str,
        framing: Framing,
        message: Message,
        want: Violation,
    }
    let cases = [
        Case {
            what: "unknown type",
            framing: Framing::Typed,
            message: bin(&[7, 1]),
            want: Violation::Framing(FrameError::UnknownType(7)),
        },
        Case {
            what: "short ping",
            framing: Framing::Typed,
            message: bin(&[1, 0]),
            want: Violation::Framing(FrameError::BadPing(2)),
        },
        Case {
            what: "redirect from a client",
            framing: Framing::Typed,
            message: bin(&[3, b'{', b'}']),
            want: Violation::Framing(FrameError::UnexpectedRedirect),
        },
        Case {
            what: "text",
            framing: Framing::Raw,
            message: Message::Text("hi".into()),
            want: Violation::Text,
        },
    ];
    for case in cases {
        let (server, mut client) = ws(WsRole::Client).await;
        let (target, _sshd) = tokio::io::duplex(64);
        client.send(case.message).await.unwrap();
        let c = server_config(case.framing);
        let reason = serve(server, target, &c, &Seen::default(), pending()).await;
        match &reason {
            Reason::Violation(v) => assert_eq!(*v, case.want, "{}", case.what),
            other => panic!("{}: {other:?}", case.what),
        }
        assert_eq!(
            close_code(&next(&mut client).await),
            Some((1008, reason.to_string())),
            "{}",
            case.what
        );
    }
}

/// One data frame larger than a read, sent in pieces cut inside the header, right after it,
/// after the type byte and at odd offsets: each piece's payload reaches the local side before
/// the next piece is sent (nothing waits for the whole frame), the mask's 4-byte cycle carries
/// across pieces (server role), and typed framing keeps the type byte out. Both roles.
#[tokio::test]
async fn a_data_frame_larger_than_a_read_goes_on_as_it_arrives() {
    for role in [Role::Server, Role::Client] {
        for framing in [Framing::Raw, Framing::Typed] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let skip = usize::from(framing == Framing::Typed);
            let msg = [&[TYPE_DATA][..skip], &payload].concat();
            let (frame, header) = match role {
                // 2 bytes, a 16-bit length, the mask.
                Role::Server => (masked(0x82, &msg), 8),
                Role::Client => (unmasked(0x82, &msg), 4),
            };
            let (ours, mut peer) = tokio::io::duplex(1 << 16);
            let (local, mut far) = tokio::io::duplex(1 << 16);
            let c = Config {
                role,
                framing: Some(framing),
                max_message: 1 << 16,
                ..server_config(framing)
            };
            let seen = Seen::default();
            let (rd, wr) = tokio::io::split(local);
            let session = run(ours, BytesMut::new(), rd, wr, &c, &seen, pending());
            let driver = async {
                let mut got = Vec::new();
                let mut sent = 0;
                for cut in [2, header, header + 1, 1003, 4100, 9001, frame.len()] {
                    peer.write_all(&frame[sent..cut]).await.unwrap();
                    sent = cut;
                    let want = sent.saturating_sub(header + skip);
                    let arrived = async {
                        while got.len() < want {
                            let mut b = [0u8; 8192];
                            let n = far.read(&mut b).await.unwrap();
                            got.extend_from_slice(&b[..n]);
                        }
                    };
                    tokio::time::timeout(Duration::from_secs(5), arrived)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("{role:?} {framing:?}: {want} bytes by byte {cut}")
                        });
                    assert_eq!(
                        got.len(),
                        want,
                        "{role:?} {framing:?}: nothing ahead of the peer"
                    );
                }
                assert!(got == payload, "{role:?} {framing:?}: the bytes, unmasked");
                drop(peer);
            };
            let (ended, ()) = tokio::join!(session, driver);
            assert!(
                matches!(ended.reason, Reason::PeerEof),
                "{:?}",
                ended.reason
            );
            assert_eq!(seen.up(), 10_000);
        }
    }
}

#[tokio::test]
async fn a_typed_message_split_across_reads_is_taken_whole() {
    // A SkyPilot ping whose frame arrives in two reads is echoed whole, not streamed.
    let ping = [1u8, 0, 0, 0, 42];
    let frame = masked(0x82, &ping);
    let (server, peer) = tokio::io::duplex(1 << 16);
    let (mut rd, mut wr) = tokio::io::split(peer);
    let (target, mut sshd) = tokio::io::duplex(4096);
    let c = server_config(Framing::Typed);
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, pending());
    let driver = async {
        wr.write_all(&frame[..8]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        wr.write_all(&frame[8..]).await.unwrap();
        wr.write_all(&masked(0x88, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let frames = frames_of(&mut rd).await;
        let mut to_target = Vec::new();
        sshd.read_to_end(&mut to_target).await.unwrap();
        (frames, to_target)
    };
    let (reason, (frames, to_target)) = tokio::join!(session, driver);
    assert!(matches!(reason, Reason::PeerClosed(Some(_))), "{reason:?}");
    assert_eq!(frames[0], (Opcode::Binary, ping.to_vec()));
    assert_eq!(close_of(&frames), 1000);
    assert!(to_target.is_empty(), "a ping is not session data");
}

/// What a peer must not send, in either role, ends the session with its violation; nothing
/// past the last complete frame before it reaches the local side.
#[tokio::test]
async fn rfc_6455_violations_are_refused() {
    struct Case {
        what: &'static str,
        role: Role,
        bytes: Vec<u8>,
        want: Violation,
    }
    let mut big = vec![0x82, 0x80 | 126];
    big.extend_from_slice(&1100u16.to_be_bytes());
    let server = |what, bytes, want| Case {
        what,
        role: Role::Server,
        bytes,
        want,
    };
    let client = |what, bytes, want| Case {
        what,
        role: Role::Client,
        bytes,
        want,
    };
    let cases = [
        server("unmasked", unmasked(0x82, b"x"), Violation::Unmasked),
        server(
            "rsv1",
            masked(0xC2, b"x"),
            Violation::Header(HeaderError::Reserved),
        ),
        server(
            "opcode 3",
            masked(0x83, b"x"),
            Violation::Header(HeaderError::Opcode(3)),
        ),
        server(
            "stray continuation",
            masked(0x80, b"x"),
            Violation::StrayContinuation,
        ),
        server(
            "binary inside a message",
            [masked(0x02, b"x"), masked(0x82, b"y")].concat(),
            Violation::Interleaved,
        ),
        server(
            "fragmented ping",
            masked(0x09, b""),
            Violation::Header(HeaderError::BadControl),
        ),
        server(
            "oversized, refused from its header",
            big,
            Violation::Header(HeaderError::TooBig(1100)),
        ),
        server(
            "a typed ping over the limit, gathered",
            [masked(0x02, &[1; 1000]), masked(0x80, &[0; 100])].concat(),
            Violation::MessageTooBig(1040),
        ),
        client("masked", masked(0x82, b"x"), Violation::Masked),
        client(
            "stray continuation",
            unmasked(0x80, b"x"),
            Violation::StrayContinuation,
        ),
        client(
            "text inside a message",
            [unmasked(0x02, b"\x00x"), unmasked(0x81, b"y")].concat(),
            Violation::Interleaved,
        ),
        client(
            "a redirect mid-session",
            unmasked(0x82, b"\x03{}"),
            Violation::LateRedirect,
        ),
    ];
    for case in cases {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let (local, mut far) = tokio::io::duplex(4096);
        peer.write_all(&case.bytes).await.unwrap();
        let c = Config {
            role: case.role,
            ..server_config(Framing::Typed)
        };
        let (rd, wr) = tokio::io::split(local);
        let reason = run(
            ours,
            BytesMut::new(),
            rd,
            wr,
            &c,
            &Seen::default(),
            pending(),
        )
        .await
        .reason;
        match &reason {
            Reason::Violation(v) => assert_eq!(*v, case.want, "{}", case.what),
            other => panic!("{}: {other:?}", case.what),
        }
        let want_code = close_for(&reason).map(|c| c.code);
        assert_eq!(
            Some(close_of(&frames_of(peer).await)),
            want_code,
            "{}",
            case.what
        );
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(
            got.len() <= 1,
            "{}: only a complete earlier frame reaches the local side",
            case.what
        );
    }
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_and_max_age() {
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, _sshd) = tokio::io::duplex(64);
    let c = Config {
        idle_timeout: Some(Duration::from_secs(30)),
        ..server_config(Framing::Raw)
    };
    let t0 = Instant::now();
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(matches!(reason, Reason::IdleTimeout), "{reason:?}");
    assert!(t0.elapsed() >= Duration::from_secs(30) && t0.elapsed() < Duration::from_secs(31));
    assert_eq!(
        close_code(&next(&mut client).await).map(|c| c.0),
        Some(1008)
    );

    let (server, _client) = ws(WsRole::Client).await;
    let (target, _sshd) = tokio::io::duplex(64);
    let c = Config {
        max_age: Some(Duration::from_secs(60)),
        ..server_config(Framing::Raw)
    };
    let t0 = Instant::now();
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(matches!(reason, Reason::MaxAge), "{reason:?}");
    assert!(t0.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn bytes_either_way_put_the_idle_timeout_off() {
    // Bytes every 20 s (each way in turn) keep a 30 s idle timeout away; then silence ends it.
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, mut sshd) = tokio::io::duplex(4096);
    let c = Config {
        idle_timeout: Some(Duration::from_secs(30)),
        ..server_config(Framing::Raw)
    };
    let t0 = Instant::now();
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, pending());
    let peer = async {
        for i in 0..4 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            if i % 2 == 0 {
                client.send(bin(b"up")).await.unwrap();
                sshd.read_exact(&mut [0u8; 2]).await.unwrap();
            } else {
                sshd.write_all(b"down").await.unwrap();
                assert_eq!(next(&mut client).await, bin(b"down"));
            }
        }
        (client, sshd)
    };
    let (reason, _ends) = tokio::join!(session, peer);
    assert!(matches!(reason, Reason::IdleTimeout), "{reason:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(110) && took < Duration::from_secs(111),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings_and_gives_up_without_pongs() {
    // A raw peer that never answers.
    let (server, peer) = tokio::io::duplex(1 << 16);
    let (target, _sshd) = tokio::io::duplex(64);
    let c = Config {
        ping_interval: Some(Duration::from_secs(10)),
        max_missed_pongs: Some(2),
        ..server_config(Framing::Raw)
    };
    let reason = serve(server, target, &c, &Seen::default(), pending()).await;
    assert!(matches!(reason, Reason::KeepaliveTimeout), "{reason:?}");
    let frames = frames_of(peer).await;
    let pings = frames.iter().filter(|(op, _)| *op == Opcode::Ping).count();
    assert_eq!(pings, 2);
    assert_eq!(close_of(&frames), 1011);
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_the_session_alive() {
    // tungstenite answers pings by itself while it reads.
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, _sshd) = tokio::io::duplex(64);
    let c = Config {
        ping_interval: Some(Duration::from_secs(10)),
        max_missed_pongs: Some(1),
        max_age: Some(Duration::from_secs(100)),
        ..server_config(Framing::Raw)
    };
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, pending());
    let answer = async {
        loop {
            let m = next(&mut client).await;
            if !matches!(m, Message::Ping(_)) {
                return m;
            }
        }
    };
    let (reason, last) = tokio::join!(session, answer);
    assert!(matches!(reason, Reason::MaxAge), "{reason:?}");
    assert_eq!(close_code(&last).map(|c| c.0), Some(1008));
}

#[tokio::test]
async fn shutdown_closes_1001() {
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, _sshd) = tokio::io::duplex(64);
    let c = server_config(Framing::Raw);
    let reason = serve(server, target, &c, &Seen::default(), async {}).await;
    assert!(matches!(reason, Reason::Shutdown), "{reason:?}");
    assert_eq!(
        close_code(&next(&mut client).await),
        Some((1001, "shut down".into()))
    );
}

#[tokio::test]
async fn large_target_output_is_split_into_bounded_frames() {
    let (server, mut client) = ws(WsRole::Client).await;
    let (target, mut sshd) = tokio::io::duplex(1 << 16);
    let c = server_config(Framing::Typed);
    let seen = Seen::default();
    let session = serve(server, target, &c, &seen, pending());
    let peer = async {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        sshd.write_all(&data).await.unwrap();
        drop(sshd);
        let mut got = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            if let Message::Binary(b) = m {
                assert!(b.len() <= 1 + 1024);
                assert_eq!(b[0], 0);
                got.extend_from_slice(&b[1..]);
            }
        }
        assert!(got == data, "bytes differ");
    };
    tokio::join!(session, peer);
    assert_eq!(seen.down(), 100_000);
}
