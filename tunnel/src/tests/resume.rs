//! Resumption: a server-role and a client-role [`Session`] talk through a relay that cuts the
//! connection (both directions at once, mid-frame) after a chosen number of bytes; each side
//! runs the next leg over a new connection, and the bytes that come out at both local sides are
//! exactly the bytes that went in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;
use wsgate_proto::framing::Framing;

use super::{client_config, close_for, masked, server_config, Seen};
use crate::{CloseFrame, Config, Hooks, Leg, Reason, Replayed, ResumeConfig, Session, Violation};
use wsgate_proto::wsframe::Opcode;

fn resumable(mut c: Config, replay_buffer: usize) -> Config {
    c.framing = Some(Framing::Raw);
    c.resume = Some(ResumeConfig {
        replay_buffer,
        peer_replay_buffer: None,
    });
    c
}

/// A stream of `n` bytes that differ along it, so a byte lost, doubled or moved shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// The hooks of a side that also keeps the control messages it is handed (the client's
/// `session` greeting) and what its resumes replayed, by leg.
#[derive(Default)]
struct Side {
    seen: Seen,
    controls: Mutex<Vec<String>>,
    /// The leg running (set by [`legs`]).
    leg: AtomicUsize,
    replayed: Mutex<Vec<(usize, Replayed)>>,
}

impl Hooks for Side {
    fn peer_to_local(&self, n: u64) {
        self.seen.peer_to_local(n)
    }
    fn local_to_peer(&self, n: u64) {
        self.seen.local_to_peer(n)
    }
    fn close_frame(&self, why: &Reason) -> Option<CloseFrame> {
        close_for(why)
    }
    fn control(&self, msg: &str) -> bool {
        let known = msg.starts_with("session ");
        if known {
            self.controls.lock().unwrap().push(msg.to_string());
        }
        known
    }
    fn replayed(&self, r: Replayed) {
        let leg = self.leg.load(Ordering::Relaxed);
        self.replayed.lock().unwrap().push((leg, r));
    }
}

/// Copies between `a` and `b` both ways until `cut` bytes went through in all, then drops both:
/// each side sees its connection end in the middle of whatever it was reading.
async fn relay(mut a: DuplexStream, mut b: DuplexStream, cut: usize) {
    let (mut ab, mut ba) = ([0u8; 1500], [0u8; 1500]);
    let mut moved = 0;
    while moved < cut {
        let room = (cut - moved).min(1500);
        tokio::select! {
            r = a.read(&mut ab[..room]) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => { if b.write_all(&ab[..n]).await.is_err() { return } moved += n }
            },
            r = b.read(&mut ba[..room]) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => { if a.write_all(&ba[..n]).await.is_err() { return } moved += n }
            },
        }
    }
}

/// A local side: its input is fed `data` (and then held open), and its output read until
/// `expect` bytes came.
struct Local {
    input: DuplexStream,
    output: DuplexStream,
    feed: tokio::task::JoinHandle<DuplexStream>,
    drain: tokio::task::JoinHandle<Vec<u8>>,
}

fn local(data: Vec<u8>, expect: usize) -> Local {
    let (input, mut feeder) = tokio::io::duplex(64 << 10);
    let (output, mut drainer) = tokio::io::duplex(64 << 10);
    let feed = tokio::spawn(async move {
        feeder.write_all(&data).await.unwrap();
        feeder
    });
    let drain = tokio::spawn(async move {
        let mut got = vec![0; expect];
        drainer.read_exact(&mut got).await.unwrap();
        got
    });
    Local {
        input,
        output,
        feed,
        drain,
    }
}

type Pair = (
    Session<DuplexStream, DuplexStream>,
    Session<DuplexStream, DuplexStream>,
);

/// Runs legs between the two sessions, each through a relay cut after the next of `cuts`
/// bytes, until a leg ends other than lost on both sides (`done` ends the last one). Returns
/// the sessions and the number of legs.
async fn legs(
    (mut server, mut client): Pair,
    configs: (Config, Config),
    hooks: (std::sync::Arc<Side>, std::sync::Arc<Side>),
    cuts: Vec<usize>,
    done: CancellationToken,
) -> (Pair, usize) {
    let (server_cfg, client_cfg) = configs;
    let (sh, ch) = hooks;
    let mut cuts = cuts.into_iter();
    let mut n = 0;
    loop {
        let (s_conn, s_net) = tokio::io::duplex(16 << 10);
        let (c_conn, c_net) = tokio::io::duplex(16 << 10);
        let relay = tokio::spawn(relay(s_net, c_net, cuts.next().unwrap_or(usize::MAX)));
        let (s_leg, c_leg) = if n == 0 {
            let greeting = format!("session {} {}", "a".repeat(32), "b".repeat(32));
            let greeting = Some(greeting);
            (Leg::First { greeting }, Leg::First { greeting: None })
        } else {
            (Leg::Resumed, Leg::Resumed)
        };
        n += 1;
        sh.leg.store(n, Ordering::Relaxed);
        ch.leg.store(n, Ordering::Relaxed);
        let never = std::future::pending::<()>;
        let (se, ce) = tokio::join!(
            server.run_leg(
                s_conn,
                BytesMut::new(),
                s_leg,
                &server_cfg,
                &*sh,
                done.cancelled(),
                never()
            ),
            client.run_leg(
                c_conn,
                BytesMut::new(),
                c_leg,
                &client_cfg,
                &*ch,
                done.cancelled(),
                never()
            ),
        );
        relay.abort();
        assert_eq!(se.lost, ce.lost, "{:?} / {:?}", se.reason, ce.reason);
        if !se.lost {
            assert!(matches!(se.reason, Reason::Shutdown), "{:?}", se.reason);
            return ((server, client), n);
        }
        assert!(n < 1000, "legs never end");
    }
}

/// Both ways at once, `size` bytes each, through connections cut after each of `cuts` bytes
/// in turn: both local sides get exactly what the other sent, the client was told the
/// session's id and secret once, and both sides of every resume exchange agree on what each
/// sends again. Returns the number of legs, and of exchanges complete on both sides.
async fn through_cuts(size: usize, cuts: Vec<usize>, replay_buffer: usize) -> (usize, usize) {
    let configs = (
        resumable(server_config(Framing::Raw), replay_buffer),
        resumable(client_config(), replay_buffer),
    );
    let (up, down) = (pattern(size, 1), pattern(size, 2));
    let (target, stdio) = (local(down.clone(), size), local(up.clone(), size));
    let sessions = (
        Session::new(target.input, target.output, &configs.0),
        Session::new(stdio.input, stdio.output, &configs.1),
    );
    let (sh, ch) = (
        std::sync::Arc::new(Side::default()),
        std::sync::Arc::new(Side::default()),
    );
    let done = CancellationToken::new();
    let run = tokio::spawn(legs(
        sessions,
        configs,
        (sh.clone(), ch.clone()),
        cuts,
        done.clone(),
    ));
    let got_up = target.drain.await.unwrap();
    let got_down = stdio.drain.await.unwrap();
    done.cancel();
    let ((server, client), n) = run.await.unwrap();
    assert!(got_up == up, "the target got what stdin sent");
    assert!(got_down == down, "stdout got what the target sent");
    assert_eq!(
        (server.received(), client.received()),
        (size as u64, size as u64)
    );
    assert_eq!((server.sent(), client.sent()), (size as u64, size as u64));
    assert_eq!(
        ch.controls.lock().unwrap().as_slice(),
        [format!("session {} {}", "a".repeat(32), "b".repeat(32))]
    );
    // Where both sides' `resume` got through, each knows what the other sends again.
    let (sr, cr) = (sh.replayed.lock().unwrap(), ch.replayed.lock().unwrap());
    let both: Vec<_> = sr
        .iter()
        .filter_map(|(leg, s)| cr.iter().find(|(l, _)| l == leg).map(|(_, c)| (*s, *c)))
        .collect();
    for (s, c) in &both {
        assert_eq!((s.to_peer, s.from_peer), (c.from_peer, c.to_peer));
    }
    assert!(
        both.iter().any(|(s, _)| s.to_peer > 0) && both.iter().any(|(s, _)| s.from_peer > 0),
        "bytes in flight both ways were sent again: {both:?}"
    );
    let _ = (target.feed, stdio.feed);
    (n, both.len())
}

#[tokio::test]
async fn bytes_survive_cuts_in_both_directions() {
    // The first leg lasts past the greeting (a client without it has nothing to resume);
    // later legs are cut in their `resume` exchange, mid-frame, and after a lot.
    let cuts = vec![100_000, 3, 17, 5000, 40_000, 123_457, 300_001, 2, 777_777];
    let (n, exchanges) = through_cuts(1 << 20, cuts, 256 << 10).await;
    assert!(n >= 8, "{n} legs");
    assert!(
        exchanges >= 5,
        "{exchanges} resume exchanges complete on both sides"
    );
}

#[tokio::test]
async fn a_small_replay_buffer_slows_a_transfer_but_loses_nothing() {
    let cuts = std::iter::once(100_000)
        .chain((1..40).map(|i| i * 997))
        .collect();
    through_cuts(256 << 10, cuts, 4096).await;
}

/// A server-role session whose peer is raw bytes (`peer`), the target fed `target_data`.
struct Raw {
    peer: DuplexStream,
    run: tokio::task::JoinHandle<(crate::Ended, Session<DuplexStream, DuplexStream>)>,
    feed: tokio::task::JoinHandle<DuplexStream>,
    /// What the target got (as many bytes as its [`local`] expects).
    drain: tokio::task::JoinHandle<Vec<u8>>,
    done: CancellationToken,
    takeover: CancellationToken,
}

fn raw_server(replay_buffer: usize, target_data: Vec<u8>, leg: Leg) -> Raw {
    let cfg = resumable(server_config(Framing::Raw), replay_buffer);
    raw_server_with(cfg, local(target_data, 0), leg)
}

fn raw_server_with(cfg: Config, target: Local, leg: Leg) -> Raw {
    let (conn, peer) = tokio::io::duplex(1 << 20);
    let (done, takeover) = (CancellationToken::new(), CancellationToken::new());
    let (d, t) = (done.clone(), takeover.clone());
    let run = tokio::spawn(async move {
        let mut s = Session::new(target.input, target.output, &cfg);
        // The sidecar's hooks: no control message is theirs.
        let side = Seen::default();
        let e = s
            .run_leg(
                conn,
                BytesMut::new(),
                leg,
                &cfg,
                &side,
                d.cancelled(),
                t.cancelled(),
            )
            .await;
        (e, s)
    });
    Raw {
        peer,
        run,
        feed: target.feed,
        drain: target.drain,
        done,
        takeover,
    }
}

/// A client's text frame (a control message).
fn text(payload: &str) -> Vec<u8> {
    masked(0x81, payload.as_bytes())
}

/// Reads what the peer got until nothing more comes for a while: the session bytes in binary
/// frames, and the text messages.
async fn read_quiet(peer: &mut DuplexStream) -> (usize, Vec<String>) {
    let mut bytes = Vec::new();
    let mut buf = vec![0; 1 << 16];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), peer.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let (mut data, mut texts, mut at) = (0, Vec::new(), 0);
    while let Some(h) = wsgate_proto::wsframe::parse(&bytes[at..], u64::MAX).unwrap() {
        let p = at + h.header_len..at + h.frame_len() as usize;
        match h.opcode {
            Opcode::Binary => data += p.len(),
            Opcode::Text => texts.push(String::from_utf8(bytes[p.clone()].to_vec()).unwrap()),
            _ => {}
        }
        at = p.end;
    }
    (data, texts)
}

#[tokio::test]
async fn a_peer_that_never_acknowledges_gets_no_more_than_the_replay_buffer() {
    let cap = 16 << 10;
    let mut r = raw_server(cap, pattern(1 << 20, 3), Leg::First { greeting: None });
    let (got, _) = read_quiet(&mut r.peer).await;
    // One target read (1 KiB here) may go over the bound, no more.
    assert!(got >= cap && got <= cap + 1024, "{got}");
    assert!(
        !r.feed.is_finished(),
        "the target is not read past the bound"
    );
    // An acknowledgement lets the next bytes go.
    r.peer
        .write_all(&text(&format!("ack {got}")))
        .await
        .unwrap();
    let (more, _) = read_quiet(&mut r.peer).await;
    assert!(more >= cap - 1024 && more <= cap + 1024, "{more}");
    r.done.cancel();
    let (e, _) = r.run.await.unwrap();
    assert!(!e.lost);
}

#[test]
fn acknowledgements_come_every_quarter_of_the_peers_replay_buffer_within_bounds() {
    for (peer, want) in [
        (None, 256 << 10),
        (Some(8 << 20), 2 << 20),
        (Some(4 << 20), 1 << 20),
        (Some(1 << 20), 256 << 10),
        (Some(256 << 10), 64 << 10),
        (Some(1), 64 << 10),
        (Some(1 << 40), 2 << 20),
    ] {
        assert_eq!(crate::engine::ack_every(peer), want, "{peer:?}");
    }
}

/// The receiving end acknowledges as often as the peer's stated replay buffer asks: a peer
/// that keeps 8 MiB gets one acknowledgement per 2 MiB, one that keeps 256 KiB one per 64 KiB,
/// one that said nothing one per 256 KiB (each after the pass over the read buffer that
/// reaches the figure, so up to a pass's worth more); the last bytes, short of a figure, are
/// acknowledged after a moment in every case. (Paused time: the 20 ms timer's acknowledgements
/// would otherwise depend on how fast the test runs.)
#[tokio::test(start_paused = true)]
async fn acknowledgements_follow_the_peers_replay_buffer() {
    // Not a multiple of any figure: the last acknowledgement is the timer's.
    let total = (8 << 20) + 1000;
    let pass: usize = 64 << 10;
    for (peer, every) in [
        (Some(8 << 20), 2 << 20),
        (Some(256 << 10), 64 << 10),
        (None, 256 << 10),
    ] {
        let mut cfg = resumable(server_config(Framing::Raw), 1 << 20);
        cfg.resume = Some(ResumeConfig {
            replay_buffer: 1 << 20,
            peer_replay_buffer: peer,
        });
        (cfg.max_message, cfg.peer_read_size) = (64 << 10, pass);
        let mut r = raw_server_with(cfg, local(Vec::new(), total), Leg::First { greeting: None });
        let data = pattern(total, 9);
        for chunk in data.chunks(16 << 10) {
            r.peer.write_all(&masked(0x82, chunk)).await.unwrap();
        }
        let (_, texts) = read_quiet(&mut r.peer).await;
        let acks: Vec<u64> = texts
            .iter()
            .map(|t| t.strip_prefix("ack ").unwrap().parse().unwrap())
            .collect();
        assert_eq!(acks.last(), Some(&(total as u64)), "{peer:?}: {acks:?}");
        // Each acknowledgement but the timer's last covers `every` new bytes, or up to two
        // passes more (a pass may start just short of the figure), never fewer.
        let mut before = 0;
        for &n in &acks[..acks.len() - 1] {
            let gap = n - before;
            assert!(
                gap >= every && gap < every + 2 * pass as u64,
                "{peer:?}: {gap} after {before}: {acks:?}"
            );
            before = n;
        }
        assert!(
            acks.len() as u64 > total as u64 / (every + 2 * pass as u64),
            "{peer:?}: {} acknowledgements, {acks:?}",
            acks.len()
        );
        assert_eq!(r.drain.await.unwrap(), data, "{peer:?}");
        r.done.cancel();
        r.run.await.unwrap();
    }
}

#[tokio::test]
async fn bad_control_messages_end_the_session() {
    struct Case {
        msg: &'static str,
        leg: Leg,
    }
    let cases = [
        // Acknowledges bytes never sent.
        Case {
            msg: "ack 999999",
            leg: Leg::First { greeting: None },
        },
        Case {
            msg: "ack -1",
            leg: Leg::First { greeting: None },
        },
        Case {
            msg: "hello there",
            leg: Leg::First { greeting: None },
        },
        // `resume` outside a resumed leg's start.
        Case {
            msg: "resume 0 0",
            leg: Leg::First { greeting: None },
        },
        // A client may not claim a session (only the sidecar greets).
        Case {
            msg: "session 0123 s3cr3t",
            leg: Leg::First { greeting: None },
        },
        // Before the `resume` exchange, no `ack`.
        Case {
            msg: "ack 0",
            leg: Leg::Resumed,
        },
        // A `resume` without the count of bytes sent, or with a third.
        Case {
            msg: "resume 0",
            leg: Leg::Resumed,
        },
        Case {
            msg: "resume 0 0 0",
            leg: Leg::Resumed,
        },
    ];
    for c in cases {
        let mut r = raw_server(1 << 16, Vec::new(), c.leg);
        r.peer.write_all(&text(c.msg)).await.unwrap();
        let (e, _) = r.run.await.unwrap();
        let Reason::Violation(Violation::Control(why)) = &e.reason else {
            panic!("{}: {:?}", c.msg, e.reason);
        };
        assert!(!e.lost && !why.contains("s3cr3t"), "{}: {why}", c.msg);
    }
}

#[tokio::test]
async fn a_takeover_or_a_1001_loses_the_leg_any_other_close_ends_the_session() {
    struct Case {
        close: Option<u16>,
        lost: bool,
    }
    for c in [
        Case {
            close: Some(1001),
            lost: true,
        },
        Case {
            close: Some(1000),
            lost: false,
        },
        Case {
            close: None,
            lost: true,
        },
    ] {
        let mut r = raw_server(1 << 16, b"x".to_vec(), Leg::First { greeting: None });
        // The target's byte, in its frame, before the leg ends.
        let mut frame = [0u8; 3];
        r.peer.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame[2], b'x');
        match c.close {
            Some(code) => {
                let f = masked(0x88, &code.to_be_bytes());
                r.peer.write_all(&f).await.unwrap();
            }
            None => r.takeover.cancel(),
        }
        let (e, mut s) = r.run.await.unwrap();
        assert_eq!(e.lost, c.lost, "{:?}", e.reason);
        if e.lost {
            // The target was read and is still there for the next leg.
            assert_eq!(s.sent(), 1);
            s.flush_local().await.unwrap();
        }
    }
}

/// The target's last bytes (a command's output, its exit status) reach the client even when
/// the leg dies between the target closing and the client receiving them: the session waits
/// for their acknowledgement, is parked when the leg is lost, and ends (1000) only once the
/// resumed client has them.
#[tokio::test]
async fn a_target_that_closes_is_waited_for_until_the_client_has_its_last_bytes() {
    let cfg = resumable(server_config(Framing::Raw), 1 << 16);
    let (input, mut feeder) = tokio::io::duplex(1024);
    let (output, _drain) = tokio::io::duplex(1024);
    feeder.write_all(b"exit 0").await.unwrap();
    drop(feeder);
    let mut s = Session::new(input, output, &cfg);
    let hooks = Seen::default();
    let never = std::future::pending::<()>;
    // First leg: the bytes go out, the target closes, and the leg dies unacknowledged.
    let (conn, mut peer) = tokio::io::duplex(1 << 16);
    let leg = s.run_leg(
        conn,
        BytesMut::new(),
        Leg::First { greeting: None },
        &cfg,
        &hooks,
        never(),
        async {
            let mut frame = [0u8; 8];
            peer.read_exact(&mut frame).await.unwrap();
            assert_eq!(&frame[2..], b"exit 0");
            drop(peer);
            std::future::pending::<()>().await
        },
    );
    let e = leg.await;
    assert!(e.lost, "{:?}", e.reason);
    // Resumed: the client has none of it; it is replayed, and acknowledged, then the end.
    let (conn, mut peer) = tokio::io::duplex(1 << 16);
    peer.write_all(&text("resume 0 0")).await.unwrap();
    let client = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(6).any(|w| w == b"exit 0") {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0, "the session ended before replaying");
            got.extend_from_slice(&buf[..n]);
        }
        peer.write_all(&text("ack 6")).await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        rest
    };
    let (e, rest) = tokio::join!(
        s.run_leg(
            conn,
            BytesMut::new(),
            Leg::Resumed,
            &cfg,
            &hooks,
            never(),
            never()
        ),
        client
    );
    assert!(
        matches!(e.reason, Reason::LocalClosed) && !e.lost,
        "{:?}",
        e.reason
    );
    let frames = super::frames_of(&rest[..]).await;
    assert_eq!(super::close_of(&frames), 1000);
}

/// A server-role session for the spare read buffers' tests: its target sends `n` bytes, in
/// reads large enough for the replay buffer to keep them where they were read, and then stays
/// open as long as the returned task is held.
fn spare_session(
    n: usize,
    seed: u8,
) -> (
    Config,
    Session<DuplexStream, DuplexStream>,
    tokio::task::JoinHandle<DuplexStream>,
) {
    let mut cfg = resumable(server_config(Framing::Raw), 1 << 20);
    (cfg.local_read_size, cfg.max_frame, cfg.max_message) = (32 << 10, 32 << 10, 64 << 10);
    let target = local(pattern(n, seed), 0);
    let s = Session::new(target.input, target.output, &cfg);
    (cfg, s, target.feed)
}

/// One leg over `conn` that nothing shuts down or takes over.
async fn leg(
    s: &mut Session<DuplexStream, DuplexStream>,
    conn: DuplexStream,
    leg: Leg,
    cfg: &Config,
) -> crate::Ended {
    let never = std::future::pending::<()>;
    s.run_leg(
        conn,
        BytesMut::new(),
        leg,
        cfg,
        &Seen::default(),
        never(),
        never(),
    )
    .await
}

/// A session with everything acknowledged keeps its spare read buffers while it may read on (a
/// push whose source pauses for a moment reuses them rather than faulting new ones in), and
/// frees them once it has read nothing for a second (an idle session keeps none).
#[tokio::test(start_paused = true)]
async fn spare_read_buffers_outlast_a_pause_and_go_after_a_quiet_second() {
    for (quiet, kept) in [(500, true), (1500, false)] {
        let (cfg, mut s, _feed) = spare_session(256 << 10, 5);
        let (conn, mut peer) = tokio::io::duplex(1 << 20);
        let client = async {
            let (got, _) = read_quiet(&mut peer).await;
            assert_eq!(got, 256 << 10);
            peer.write_all(&text(&format!("ack {got}"))).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(quiet)).await;
        };
        tokio::select! {
            e = leg(&mut s, conn, Leg::First { greeting: None }, &cfg) => {
                panic!("the leg ended: {:?}", e.reason)
            }
            () = client => {}
        }
        assert_eq!(s.spare_buffers() > 0, kept, "after {quiet} ms quiet");
    }
}

/// A resume whose `resume` acknowledges everything sent (the peer had it all before the
/// leg died) leaves nothing to acknowledge later: the spare read buffers still go after a quiet
/// second.
#[tokio::test(start_paused = true)]
async fn spare_read_buffers_go_after_a_resume_that_acknowledges_everything() {
    let (cfg, mut s, _feed) = spare_session(256 << 10, 6);
    // First leg: everything arrives, nothing is acknowledged, the connection drops.
    let (conn, mut peer) = tokio::io::duplex(1 << 20);
    let first = async move {
        let (got, _) = read_quiet(&mut peer).await;
        assert_eq!(got, 256 << 10);
    };
    let (e, ()) = tokio::join!(
        leg(&mut s, conn, Leg::First { greeting: None }, &cfg),
        first
    );
    assert!(e.lost, "{:?}", e.reason);
    assert!(s.spare_buffers() > 0, "the replay buffer still holds them");
    // Resumed: the peer says it has all of it, then stays quiet.
    let (conn, mut peer) = tokio::io::duplex(1 << 20);
    peer.write_all(&text(&format!("resume {} 0", 256 << 10)))
        .await
        .unwrap();
    tokio::select! {
        e = leg(&mut s, conn, Leg::Resumed, &cfg) => panic!("the leg ended: {:?}", e.reason),
        () = tokio::time::sleep(std::time::Duration::from_millis(1500)) => {}
    }
    drop(peer);
    assert_eq!(s.spare_buffers(), 0);
}

/// What the peer sends again is its `resume`'s count of bytes sent less the count our own
/// `resume` stated, even when bytes it sends behind its `resume` come in the same read (they
/// are not taken for bytes it had sent before); a peer that says it sent fewer bytes than
/// arrived is refused.
#[tokio::test]
async fn what_the_peer_sends_again_counts_from_our_own_resume() {
    let cfg = resumable(server_config(Framing::Raw), 1 << 20);
    for (peer_sent, behind, refused) in [(12, &b"!!"[..], false), (9, &b""[..], true)] {
        let target = local(Vec::new(), 10 + behind.len());
        let mut s = Session::new(target.input, target.output, &cfg);
        let side = Side::default();
        let never = std::future::pending::<()>;
        // First leg: ten bytes arrive, then the connection drops.
        let (conn, mut peer) = tokio::io::duplex(1 << 16);
        peer.write_all(&masked(0x82, b"0123456789")).await.unwrap();
        drop(peer);
        let first = Leg::First { greeting: None };
        let e = s
            .run_leg(conn, BytesMut::new(), first, &cfg, &side, never(), never())
            .await;
        assert!(e.lost, "{:?}", e.reason);
        // Resumed: the peer's `resume` and, in the same write, the bytes it sends again.
        let (conn, mut peer) = tokio::io::duplex(1 << 16);
        let mut first_words = text(&format!("resume 0 {peer_sent}"));
        first_words.extend_from_slice(&masked(0x82, behind));
        peer.write_all(&first_words).await.unwrap();
        let resumed = s.run_leg(
            conn,
            BytesMut::new(),
            Leg::Resumed,
            &cfg,
            &side,
            never(),
            never(),
        );
        let e = tokio::select! {
            e = resumed => e,
            got = target.drain, if !refused => {
                assert_eq!(got.unwrap(), [&b"0123456789"[..], behind].concat());
                let replayed = Replayed { to_peer: 0, from_peer: 2 };
                assert_eq!(side.replayed.lock().unwrap().as_slice(), [(0, replayed)]);
                drop(peer);
                continue;
            }
        };
        assert!(refused, "{:?}", e.reason);
        let Reason::Violation(Violation::Control(why)) = &e.reason else {
            panic!("{:?}", e.reason);
        };
        assert!(
            why.contains("9 bytes sent, fewer than the 10 received"),
            "{why}"
        );
        assert!(side.replayed.lock().unwrap().is_empty());
    }
}
