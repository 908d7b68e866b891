//! Resumable sessions, the client's rules (docs/resume.md): the headers, the sidecar's
//! `session <id> <secret>` ticket, the reconnect schedule (jittered exponential backoff) and
//! which refusals end the attempts. No I/O here: `run` connects, `session` runs the legs.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use wsgate_proto::names::is_header_name;

use crate::error::ClientError;

/// The request header that offers (`new`) or asks for (`resume <id> <secret>`) resumption, and
/// the `101`'s header that accepts it (`v1`).
pub const HEADER: &str = "x-wsgate-resume";
/// The offer a first connection makes.
pub const OFFER: &str = "new";
/// The `101`'s answer that accepts the offer (or a resume): the protocol's version.
pub const ACCEPTED: &str = "v1";
/// The response header echoed on resumes by default: Envoy's stateful session (header mode)
/// names the replica holding the session in it.
pub const DEFAULT_ROUTE_HEADER: &str = "x-wsgate-route";
/// Unacknowledged bytes sent to the server kept at most for a replay. ssh's window is 2 MiB
/// per channel; 8 MiB keeps a few channels' worth in flight without stopping stdin early, and
/// bounds what one session holds.
pub const REPLAY_BUFFER: usize = 8 << 20;
/// The first reconnect's delay at most (see [`Backoff`]); each next base doubles it, up to
/// [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Headers a route header must not be: the handshake's own and the credentials. Echoing the
/// server's value into one of these would let a response rewrite the next request's
/// credentials or break its upgrade.
const RESERVED: &[&str] = &[
    HEADER,
    wsgate_proto::names::REPLAY_BUFFER_HEADER,
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "host",
    "proxy-authorization",
    "sec-websocket-extensions",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "transfer-encoding",
    "upgrade",
];

/// How `wsgate proxy` resumes (absent with `--no-resume`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Give up after this long without a working connection.
    pub timeout: Duration,
    /// The first `101`'s header echoed on resumes (lower case).
    pub route_header: String,
}

/// `--route-header`: a header name, lower-cased (HTTP names are case-insensitive), not one the
/// handshake or the credentials use.
pub fn route_header(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_ascii_lowercase();
    if !is_header_name(&name) {
        return Err(format!(
            "{raw:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    if RESERVED.contains(&name.as_str()) || name.starts_with("sec-websocket-") {
        return Err(format!(
            "{name:?} is used by the handshake or the credentials: pick the header your gateway's stateful session uses (x-wsgate-route by default)"
        ));
    }
    Ok(name)
}

/// What resumes a session: the sidecar's id and secret for it. The secret is a credential (it
/// takes the session over): it is never logged, printed or shown by `Debug`.
#[derive(Clone)]
pub struct Ticket {
    id: String,
    secret: SecretString,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// 32 lower-case hex digits (128 bits), as the sidecar makes ids and secrets.
fn is_hex128(s: &str) -> bool {
    wsgate_proto::hex::decode::<16>(s).is_some()
}

impl Ticket {
    /// The sidecar's `session <id> <secret>` control message; `None` if `msg` is not exactly
    /// that (one space between words, 32 lower-case hex digits each).
    pub fn from_control(msg: &str) -> Option<Ticket> {
        let mut words = msg.split(' ');
        let (Some("session"), Some(id), Some(secret), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return None;
        };
        (is_hex128(id) && is_hex128(secret)).then(|| Ticket {
            id: id.to_string(),
            secret: SecretString::from(secret),
        })
    }

    /// The session's id (not a secret: it names the session in logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The resume request's header value, `resume <id> <secret>` (sent marked sensitive).
    pub fn header_value(&self) -> String {
        format!("resume {} {}", self.id, self.secret.expose_secret())
    }
}

/// The reconnect delays, jittered so that the clients a gateway rollout cut at once do not
/// come back in step: the first anywhere in [0, [`FIRST_DELAY`]] (most drops are over by then,
/// and a session should pause no longer than it must: half the wait, on average, of a factor
/// in [0.5, 1.5], over as wide a spread), then bases doubling from twice that to
/// [`MAX_DELAY`], each scaled by a random factor in [0.5, 1.5]. `rng` gives uniform `u32`s
/// (the system's randomness; a fixed sequence in tests).
pub struct Backoff<R> {
    /// The next delay before jitter.
    base: Duration,
    /// No delay drawn yet: the next is the first.
    first: bool,
    rng: R,
}

impl<R: FnMut() -> u32> Backoff<R> {
    pub fn new(rng: R) -> Self {
        Backoff {
            base: FIRST_DELAY,
            first: true,
            rng,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (base * 2).min(MAX_DELAY);
        let uniform = f64::from((self.rng)()) / f64::from(u32::MAX);
        let first = std::mem::replace(&mut self.first, false);
        base.mul_f64(if first { uniform } else { 0.5 + uniform })
    }
}

/// What a failed resume attempt means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt (the network, the gateway or the sidecar may come back; a
    /// conflicting resume may finish).
    Retry,
    /// The answer will not change: give up now.
    Refused,
}

/// Sorts a failed resume request. The sidecar's 404 (the session is unknown or its window
/// passed) and 403 (not the same user, cluster or worker), which name their reason
/// (`resume_unknown`, `resume_forbidden`), are definitive; a 404 or 403 without it comes from
/// something else on the way (a gateway whose routes are still being pushed during a rollout)
/// and may pass, as may 409 (another resume in progress), 5xx, connection failures and
/// timeouts. Answers that would have failed the first connection too (credentials, redirects,
/// configuration) are refused: retrying them only delays the message.
pub fn verdict(e: &ClientError) -> Verdict {
    match e {
        ClientError::NotFound { reason, .. } | ClientError::Forbidden { reason, .. } => {
            if reason.as_deref().is_some_and(is_sidecar_refusal) {
                Verdict::Refused
            } else {
                Verdict::Retry
            }
        }
        ClientError::Http { status, .. } if *status == 409 || *status >= 500 => Verdict::Retry,
        ClientError::Backend { .. }
        | ClientError::Connect { .. }
        | ClientError::Proxy { .. }
        // A connection reset while the gateway drains shows up as a TLS failure, or as a
        // request closed unanswered (a protocol error).
        | ClientError::Tls { .. }
        | ClientError::Protocol(_)
        | ClientError::GoingAway { .. } => Verdict::Retry,
        ClientError::Usage(_)
        | ClientError::Redirected { .. }
        | ClientError::Auth { .. }
        | ClientError::NotTls { .. }
        | ClientError::SpeaksTls { .. }
        | ClientError::PlaintextToken { .. }
        | ClientError::Token(_)
        | ClientError::Http { .. }
        | ClientError::Resume { .. } => Verdict::Refused,
    }
}

/// The sidecar's refusal of a resume, as the connection shows its reason (`text (code)`).
fn is_sidecar_refusal(reason: &str) -> bool {
    ["(resume_unknown)", "(resume_forbidden)"]
        .iter()
        .any(|code| reason.ends_with(code))
}

/// Why a refused resume ended the session, for [`ClientError::Resume`]: the sidecar's 404 and
/// 403 in the words of resumption (the generic 404 message is about wrong paths).
pub fn refused(e: &ClientError) -> String {
    let reason = |r: &Option<String>| r.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match e {
        ClientError::NotFound { host, reason: r, .. } => format!(
            "the server no longer holds the session (404 from {host}{}): its resume window passed, or the replica that held it is gone",
            reason(r)
        ),
        ClientError::Forbidden { host, reason: r, .. } => format!(
            "the server refused to resume it for this identity (403 from {host}{})",
            reason(r)
        ),
        other => format!("the server refused the reconnection: {other}"),
    }
}

/// A duration as the command line writes it (`3m`, `90s`, `1500ms`).
pub fn shown(d: Duration) -> String {
    match (d.subsec_millis(), d.as_secs()) {
        (0, s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TokenUse;

    #[test]
    fn tickets_are_exactly_two_hex128_words() {
        let id = "0123456789abcdef0123456789abcdef";
        let secret = "fedcba9876543210fedcba9876543210";
        let t = Ticket::from_control(&format!("session {id} {secret}")).unwrap();
        assert_eq!(t.id(), id);
        assert_eq!(t.header_value(), format!("resume {id} {secret}"));
        let shown = format!("{t:?}");
        assert!(shown.contains(id) && !shown.contains(secret), "{shown}");
        let upper = "0123456789ABCDEF0123456789ABCDEF";
        for bad in [
            format!("session {id}"),
            format!("session {id} {secret} x"),
            format!("session  {id} {secret}"),
            format!("session {id} {secret} "),
            format!("Session {id} {secret}"),
            format!("ack {id} {secret}"),
            format!("session {upper} {secret}"),
            format!("session {id} {}", &secret[1..]),
            format!("session {id} {secret}0"),
            format!("session {id} {}g", &secret[1..]),
            String::new(),
        ] {
            assert!(Ticket::from_control(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn route_header_names() {
        assert_eq!(route_header("x-wsgate-route").unwrap(), "x-wsgate-route");
        assert_eq!(route_header("X-Sticky").unwrap(), "x-sticky");
        for bad in ["", "a b", "x:y", "ü", "a\r\nb"] {
            let e = route_header(bad).unwrap_err();
            assert!(e.contains("is not a header name"), "{bad:?}: {e}");
        }
        for reserved in [
            "Authorization",
            "cookie",
            "x-wsgate-resume",
            "X-Wsgate-Replay-Buffer",
            "sec-websocket-accept",
        ] {
            let e = route_header(reserved).unwrap_err();
            assert!(e.contains("used by the handshake"), "{reserved}: {e}");
        }
    }

    /// The first delay is anywhere in [0, 250 ms]; each later one within ±50 % of its base, the
    /// bases doubling from 500 ms and stopping at 5 s.
    #[test]
    fn the_backoff_schedule_and_its_bounds() {
        let bases_ms: [u32; 8] = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000];
        // (rng value, the first delay's factor, the later ones').
        let ends = [
            (0u32, 0.0, 0.5),
            (u32::MAX, 1.0, 1.5),
            (u32::MAX / 2, 0.5, 1.0),
        ];
        for (r, first, later) in ends {
            let mut b = Backoff::new(|| r);
            for (i, base) in bases_ms.into_iter().enumerate() {
                let got = b.next_delay().as_secs_f64();
                let want = f64::from(base) / 1000.0 * if i == 0 { first } else { later };
                assert!((got - want).abs() < 1e-3, "r={r} base={base}: {got}");
            }
        }
        // Whatever the rng says, the delays stay within the bounds.
        let mut seq = [7u32, u32::MAX, 0, 1 << 31, 12345, u32::MAX - 1, 3, 99].into_iter();
        let mut b = Backoff::new(move || seq.next().unwrap_or(0));
        assert!(b.next_delay() <= FIRST_DELAY);
        for base in &bases_ms[1..] {
            let d = b.next_delay();
            let base = Duration::from_millis((*base).into());
            assert!(d >= base / 2 && d <= base * 3 / 2, "{d:?} for {base:?}");
        }
    }

    #[test]
    fn which_failures_are_worth_another_attempt() {
        let http = |status| ClientError::Http {
            status,
            host: "gw".into(),
            reason: None,
        };
        let s = String::new;
        let not_found = |reason: Option<&str>| ClientError::NotFound {
            host: s(),
            reason: reason.map(String::from),
            tried: s(),
            expected: s(),
        };
        let forbidden = |reason: Option<&str>| ClientError::Forbidden {
            host: s(),
            cluster: s(),
            reason: reason.map(String::from),
            token: TokenUse::NoneGiven,
        };
        let cases: Vec<(&str, ClientError, Verdict)> = vec![
            (
                "404 from the sidecar: unknown session or window passed",
                not_found(Some("no such session to resume (resume_unknown)")),
                Verdict::Refused,
            ),
            (
                "403 from the sidecar: another user or cluster",
                forbidden(Some("not yours to resume (resume_forbidden)")),
                Verdict::Refused,
            ),
            (
                "404 from a gateway with no route yet",
                not_found(None),
                Verdict::Retry,
            ),
            (
                "403 from something else on the way",
                forbidden(Some("RBAC: access denied")),
                Verdict::Retry,
            ),
            (
                "401: the credentials no longer pass",
                ClientError::Auth {
                    status: 401,
                    host: s(),
                    reason: None,
                    token: TokenUse::NoneGiven,
                },
                Verdict::Refused,
            ),
            ("409: another resume in progress", http(409), Verdict::Retry),
            ("500", http(500), Verdict::Retry),
            ("400", http(400), Verdict::Refused),
            (
                "503: the backend is unavailable",
                ClientError::Backend {
                    status: 503,
                    host: s(),
                    reason: None,
                },
                Verdict::Retry,
            ),
            (
                "cannot connect, or no answer in time",
                ClientError::Connect {
                    addr: s(),
                    detail: "no answer within 30s".into(),
                },
                Verdict::Retry,
            ),
            (
                "the proxy failed",
                ClientError::Proxy {
                    proxy: s(),
                    detail: s(),
                },
                Verdict::Retry,
            ),
            (
                "TLS reset mid-handshake",
                ClientError::Tls {
                    host: s(),
                    detail: s(),
                    hint: s(),
                },
                Verdict::Retry,
            ),
            (
                "closed unanswered",
                ClientError::Protocol("closed without answering".into()),
                Verdict::Retry,
            ),
            (
                "a redirect",
                ClientError::Redirected {
                    status: 302,
                    via: None,
                    use_instead: None,
                },
                Verdict::Refused,
            ),
        ];
        for (what, e, want) in cases {
            assert_eq!(verdict(&e), want, "{what}");
        }
    }

    #[test]
    fn refusals_say_what_became_of_the_session() {
        let m = refused(&ClientError::NotFound {
            host: "gw".into(),
            reason: Some("resume_unknown".into()),
            tried: "/x".into(),
            expected: "/x".into(),
        });
        assert_eq!(m, "the server no longer holds the session (404 from gw: resume_unknown): its resume window passed, or the replica that held it is gone");
        let m = refused(&ClientError::Forbidden {
            host: "gw".into(),
            cluster: "prod".into(),
            reason: None,
            token: TokenUse::NoneGiven,
        });
        assert_eq!(
            m,
            "the server refused to resume it for this identity (403 from gw)"
        );
    }

    #[test]
    fn durations_as_written() {
        assert_eq!(shown(Duration::from_secs(180)), "3m");
        assert_eq!(shown(Duration::from_secs(90)), "90s");
        assert_eq!(shown(Duration::from_millis(1500)), "1500ms");
    }
}
