//! The session span in the log, with the sidecar in-process (see `support`) and the log
//! captured through the subscriber `main` installs.
//!
//! The tests here take turns ([`ONE_AT_A_TIME`]): each makes its subscriber the default of its
//! own thread, and tracing caches whether an event's callsite is wanted when the callsite is
//! first hit; a test starting its subscriber while another thread hits a callsite for the
//! first time can find that callsite cached as unwanted, and its line missing.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::Error as WsError;
use wsgate_sidecar::settings::LogFormat;

use support::{echo_one_byte, echo_server, next, open, wait_metric, Resumable, Sidecar, ALICE};

/// Held by each test for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything the log writer was given, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A session, a refusal before authentication and one after it, then a drain, with the log
/// captured in `format` through the subscriber `main` installs. On a current-thread runtime
/// every task of the sidecar runs on this thread, where the subscriber is the default.
async fn logged_sessions(format: LogFormat, user: &str) -> (String, SocketAddr) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let log = Captured::default();
    let writer = log.clone();
    let subscriber =
        wsgate_sidecar::logs::subscriber("info", format, false, move || writer.clone()).unwrap();
    let _default = tracing::subscriber::set_default(subscriber);
    let target = echo_server().await;
    let name = format!("logs-{format:?}");
    let tokens = format!("{ALICE} {user}\n");
    let sc = Sidecar::start(&name, target, &tokens, &["--allowed-clusters", "prod"]).await;
    let mut ws = open(sc.addr, "prod", ALICE).await.unwrap();
    echo_one_byte(&mut ws).await;
    ws.close(None).await.unwrap();
    while next(&mut ws).await.is_some() {}
    assert!(matches!(
        open(sc.addr, "prod", "sky_wrong").await,
        Err(WsError::Http(r)) if r.status() == 401
    ));
    assert!(matches!(
        open(sc.addr, "staging", ALICE).await,
        Err(WsError::Http(r)) if r.status() == 404
    ));
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();
    let text = log.text();
    assert!(!text.contains(ALICE), "a token in the log:\n{text}");
    (text, target)
}

/// One JSON log line's field, as a string.
fn field<'a>(line: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(line, |v, key| v.get(key))
        .and_then(|v| v.as_str())
}

/// Every line of a session carries the `session` span with what was known when it was
/// written; the audit lines keep their own fields at the top, as before.
#[tokio::test]
async fn every_json_line_of_a_session_carries_its_span() {
    let (text, target) = logged_sessions(LogFormat::Json, "alice").await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let audit: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| field(l, &["target"]) == Some("wsgate::audit"))
        .collect();
    let event = |name: &str, status: Option<u64>| {
        audit
            .iter()
            .copied()
            .find(|l| {
                field(l, &["event"]) == Some(name)
                    && (status.is_none() || l["status"].as_u64() == status)
            })
            .unwrap_or_else(|| panic!("no {name} {status:?} line in\n{text}"))
    };
    let start = event("session_start", None);
    let end = event("session_end", None);
    let unauthenticated = event("session_refused", Some(401));
    let unknown_cluster = event("session_refused", Some(404));
    let target = target.to_string();
    for line in [start, end] {
        assert_eq!(field(line, &["span", "name"]), Some("session"), "{line}");
        assert_eq!(field(line, &["span", "user"]), Some("alice"), "{line}");
        assert_eq!(field(line, &["span", "cluster"]), Some("prod"), "{line}");
        assert_eq!(
            field(line, &["span", "target"]),
            Some(&target[..]),
            "{line}"
        );
        assert_eq!(
            field(line, &["span", "client"]),
            Some("127.0.0.1"),
            "{line}"
        );
        assert_eq!(line["span"]["id"], line["id"], "{line}");
        // The audit fields, unchanged.
        assert_eq!(field(line, &["user"]), Some("alice"), "{line}");
        assert_eq!(field(line, &["cluster"]), Some("prod"), "{line}");
        assert_eq!(field(line, &["target_addr"]), Some(&target[..]), "{line}");
        assert!(field(line, &["peer_addr"]).is_some_and(|p| p.starts_with("127.0.0.1:")));
        assert_eq!(field(line, &["client_addr"]), Some("127.0.0.1"), "{line}");
    }
    assert_eq!(end["close_reason"], "client_closed");
    assert_eq!(end["bytes_up"], 1);
    // Refused before authentication: an id and a client, no user.
    assert!(unauthenticated["span"]["id"].is_u64(), "{unauthenticated}");
    assert_eq!(
        field(unauthenticated, &["span", "client"]),
        Some("127.0.0.1")
    );
    assert!(unauthenticated["span"].get("user").is_none());
    assert!(unauthenticated.get("user").is_none());
    // Refused after it: the user and the cluster asked for, each request its own id.
    assert_eq!(field(unknown_cluster, &["span", "user"]), Some("alice"));
    assert_eq!(
        field(unknown_cluster, &["span", "cluster"]),
        Some("staging")
    );
    let ids: Vec<&serde_json::Value> = [start, unauthenticated, unknown_cluster]
        .iter()
        .map(|l| &l["span"]["id"])
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    // Lines outside a session have no span.
    assert!(lines
        .iter()
        .filter(|l| field(l, &["message"]).is_some_and(|m| m.contains("serving")))
        .all(|l| l.get("span").is_none()));
}

/// In the text format the span leads each line of the session, and a user name from the token
/// file with control characters in it is escaped, so it cannot forge or colour a line.
#[tokio::test]
async fn text_lines_lead_with_the_span_and_escape_what_came_from_outside() {
    let (text, target) = logged_sessions(LogFormat::Text, "\u{1b}[31meve\u{202e}").await;
    let shown = "\\x1b[31meve\\u{202e}";
    let start = text
        .lines()
        .find(|l| l.contains("session started"))
        .unwrap_or_else(|| panic!("no session start in\n{text}"));
    let span = format!("user={shown} cluster=prod target={target}");
    assert!(start.contains("session{id="), "{start}");
    assert!(start.contains(&span), "{start}\nlacks {span}");
    assert!(start.contains(&format!("user={shown} ")), "{start}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
}

/// A resumable session's secret never reaches the log, at any level: not when it is given
/// out, not when a resume brings it back (right or wrong), not when the session ends. Its
/// resume and its refusals are audited, and its one `session_end` counts its legs.
#[tokio::test]
async fn a_resume_secret_is_never_logged() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let log = Captured::default();
    let writer = log.clone();
    let subscriber =
        wsgate_sidecar::logs::subscriber("trace", LogFormat::Json, false, move || writer.clone())
            .unwrap();
    let _default = tracing::subscriber::set_default(subscriber);
    let target = echo_server().await;
    let sc = Sidecar::start("logs-resume", target, &format!("{ALICE} alice\n"), &[]).await;
    let mut c = Resumable::open(sc.addr, "prod", ALICE).await;
    c.send(b"hello").await;
    c.receive_until(5).await;
    // A wrong secret: the right one with its last digit changed, so a log of a prefix of it
    // would show too.
    let last = if c.secret.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &c.secret[..31]);
    let refused = c.resume_request(ALICE, "cluster_name=prod", &wrong).await;
    assert!(matches!(refused, Err(WsError::Http(r)) if r.status() == 404));
    c.send(b"world").await;
    assert_eq!(c.next_bytes().await, b"world");
    c.lose();
    c.sent_into_the_lost_leg(b"!!");
    wait_metric(sc.admin, "wsgate_sessions_parked", 1.0).await;
    c.resume().await;
    c.receive_until(c.sent.len()).await;
    let mut ws = c.ws.take().unwrap();
    ws.close(None).await.unwrap();
    while next(&mut ws).await.is_some() {}
    let (run, _) = sc.shut_down();
    run.await.unwrap().unwrap();

    let text = log.text();
    for (what, secret) in [("the secret", &c.secret), ("the wrong one", &wrong)] {
        assert!(!text.contains(&secret[..]), "{what} in the log:\n{text}");
        assert!(
            !text.contains(&secret[..16]),
            "half of {what} in the log:\n{text}"
        );
    }
    assert!(!text.contains(ALICE), "a token in the log:\n{text}");
    let audit: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l: &serde_json::Value| field(l, &["target"]) == Some("wsgate::audit"))
        .collect();
    let event = |name: &str| {
        audit
            .iter()
            .find(|l| field(l, &["event"]) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in\n{text}"))
    };
    let start = event("session_start");
    assert_eq!(start["resumable"], true);
    assert_eq!(field(start, &["span", "resume_id"]), Some(&c.id[..]));
    let refused = event("resume_refused");
    assert_eq!(refused["reason"], "resume_bad_secret");
    assert_eq!(refused["status"], 404);
    assert_eq!(field(refused, &["user"]), Some("alice"));
    assert_eq!(field(refused, &["span", "resume_id"]), Some(&c.id[..]));
    let resumed = event("session_resumed");
    assert_eq!(resumed["id"], start["id"]);
    assert_eq!(field(resumed, &["user"]), Some("alice"));
    assert_eq!(field(resumed, &["client_addr"]), Some("127.0.0.1"));
    assert_eq!(resumed["leg"], 2);
    // The client let the echo of "world" go: it is sent again; and the client sends "!!"
    // again, lost with the leg.
    assert_eq!(resumed["bytes_replayed"], 5);
    assert_eq!(resumed["bytes_replayed_by_client"], 2);
    assert!(resumed["gap_ms"].is_u64(), "{resumed}");
    let ends: Vec<_> = audit
        .iter()
        .filter(|l| field(l, &["event"]) == Some("session_end"))
        .collect();
    assert_eq!(ends.len(), 1, "one session_end for all legs:\n{text}");
    assert_eq!(ends[0]["legs"], 2);
    assert_eq!(ends[0]["bytes_replayed"], 5);
    assert_eq!(ends[0]["bytes_replayed_by_client"], 2);
    assert_eq!(ends[0]["close_reason"], "client_closed");
}
