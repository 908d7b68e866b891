//! Every way a session can be refused or end, mapped in one place to HTTP statuses, WebSocket
//! close codes, and the labels used by metrics and the audit trail.
//!
//! Refusals happen before the upgrade (the target is connected first), so clients get a plain
//! HTTP answer with a JSON reason they can print. Messages never contain a token.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wsgate_proto::token::TokenError;

use wsgate_proto::framing::FrameError;
use wsgate_proto::wsframe::HeaderError;
use wsgate_tunnel::{CloseFrame, Reason, Violation};

/// Why a request was refused before the WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not a WebSocket upgrade request")]
    NotWebSocket,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the request names no cluster")]
    MissingCluster,
    #[error("the cluster name is not a valid RFC 1123 label")]
    InvalidCluster,
    #[error("unknown cluster")]
    UnknownCluster,
    #[error("unknown worker {0}")]
    UnknownWorker(u32),
    #[error("missing credentials: send Authorization: Bearer <token>")]
    MissingCredentials,
    #[error("invalid or expired credentials")]
    InvalidCredentials,
    #[error("ambiguous credentials: both an Authorization header and a subprotocol token")]
    AmbiguousCredentials,
    #[error("malformed subprotocol token: {0}")]
    Token(TokenError),
    #[error("authentication is unavailable; try again")]
    AuthUnavailable,
    /// Too many token lookups at once or per second (a flood of unknown tokens): the lookup was
    /// not sent. The value is the `Retry-After`, in seconds.
    #[error("authentication is busy; retry in {0} s")]
    AuthThrottled(u32),
    #[error("this user may not reach this cluster")]
    Forbidden,
    #[error("too many sessions for this user")]
    UserLimit,
    #[error("too many sessions on this server")]
    GlobalLimit,
    #[error("the server is shutting down")]
    Draining,
    #[error("target lookup is unavailable; try again")]
    ResolverUnavailable,
    #[error("the SSH target is unreachable")]
    TargetUnreachable,
    #[error("the SSH target is not ready yet")]
    TargetNotReady,
    #[error("the handshake took too long")]
    HandshakeTimeout,
    /// A resume of a session this server does not hold (never did, ended, or its window is
    /// over), or with resumption off.
    #[error("no such session to resume (unknown, ended, or its resume window is over)")]
    ResumeUnknown,
    /// A resume with the wrong secret: answered exactly as [`Reject::ResumeUnknown`], so a
    /// guesser learns nothing, but audited and counted apart.
    #[error("no such session to resume (unknown, ended, or its resume window is over)")]
    ResumeBadSecret,
    /// A resume by another user, or for another cluster or worker, than the session's.
    #[error("the session belongs to another user, cluster or worker")]
    ResumeForbidden,
    /// Another resume of the session is in progress (its `101` not yet through).
    #[error("another connection is resuming this session")]
    ResumeConflict,
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        use Reject::*;
        match self {
            NotWebSocket => StatusCode::UPGRADE_REQUIRED,
            BadRequest(_) | MissingCluster | InvalidCluster | Token(_) | AmbiguousCredentials => {
                StatusCode::BAD_REQUEST
            }
            UnknownCluster | UnknownWorker(_) => StatusCode::NOT_FOUND,
            MissingCredentials | InvalidCredentials => StatusCode::UNAUTHORIZED,
            Forbidden | ResumeForbidden => StatusCode::FORBIDDEN,
            ResumeUnknown | ResumeBadSecret => StatusCode::NOT_FOUND,
            ResumeConflict => StatusCode::CONFLICT,
            UserLimit => StatusCode::TOO_MANY_REQUESTS,
            AuthUnavailable | AuthThrottled(_) | GlobalLimit | Draining | ResolverUnavailable
            | TargetNotReady => StatusCode::SERVICE_UNAVAILABLE,
            TargetUnreachable => StatusCode::BAD_GATEWAY,
            HandshakeTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable code for the JSON body: what the client is told.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::ResumeBadSecret => "resume_unknown",
            other => other.label(),
        }
    }

    /// Stable code for the metric label and the audit line: [`Reject::reason`], except that a
    /// wrong resume secret is told apart here (`resume_bad_secret`: someone guessing, or a
    /// client with a mangled secret).
    pub fn label(&self) -> &'static str {
        use Reject::*;
        match self {
            NotWebSocket => "not_websocket",
            BadRequest(_) => "bad_request",
            MissingCluster => "missing_cluster",
            InvalidCluster => "invalid_cluster",
            UnknownCluster => "unknown_cluster",
            UnknownWorker(_) => "unknown_worker",
            MissingCredentials => "missing_credentials",
            InvalidCredentials => "invalid_credentials",
            AmbiguousCredentials => "ambiguous_credentials",
            Token(e) => e.reason(),
            AuthUnavailable => "auth_unavailable",
            AuthThrottled(_) => "auth_throttled",
            Forbidden => "forbidden",
            UserLimit => "user_limit",
            GlobalLimit => "global_limit",
            Draining => "draining",
            ResolverUnavailable => "resolver_unavailable",
            TargetUnreachable => "target_unreachable",
            TargetNotReady => "target_not_ready",
            HandshakeTimeout => "handshake_timeout",
            ResumeUnknown => "resume_unknown",
            ResumeBadSecret => "resume_bad_secret",
            ResumeForbidden => "resume_forbidden",
            ResumeConflict => "resume_conflict",
        }
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string(), "reason": self.reason() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Reject::AuthThrottled(secs) = self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

/// Why an established session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The target closed its side (e.g. `exit` in the shell).
    TargetClosed,
    /// The client sent a close frame.
    ClientClosed,
    /// The client's connection dropped without a close frame.
    ClientGone,
    /// Reading from or writing to the target failed.
    TargetError,
    /// The server is shutting down and the grace period is over.
    Shutdown,
    /// A frame broke the framing.
    Frame(FrameError),
    /// A text frame: SSH streams are binary.
    TextFrame,
    /// A frame that breaks RFC 6455 (unmasked, reserved bits, bad opcode or fragmentation).
    Protocol(String),
    /// A frame larger than the configured limit.
    TooBig,
    IdleTimeout,
    MaxAge,
    KeepaliveTimeout,
    /// Another connection resumed the session: this leg ends, the session goes on (never a
    /// session's end).
    Superseded,
    /// The client's connection was lost and it did not resume the session within
    /// `--resume-window`.
    ResumeExpired,
}

impl CloseReason {
    /// The WebSocket close code sent to the client.
    pub fn code(&self) -> u16 {
        use CloseReason::*;
        match self {
            TargetClosed | ClientClosed => 1000,
            // Never sent (the client is gone); RFC 6455's code for "closed without a close
            // frame", for the audit trail and metrics.
            ClientGone | ResumeExpired => 1006,
            Shutdown => 1001,
            // Deliberate, so that whoever still holds the old connection does not resume it
            // back: one connection per session.
            Frame(_) | TextFrame | IdleTimeout | MaxAge | Superseded => 1008,
            Protocol(_) => 1002,
            TooBig => 1009,
            TargetError | KeepaliveTimeout => 1011,
        }
    }

    /// Stable label for metrics and the audit trail.
    pub fn label(&self) -> &'static str {
        use CloseReason::*;
        match self {
            TargetClosed => "target_closed",
            ClientClosed => "client_closed",
            ClientGone => "client_gone",
            TargetError => "target_error",
            Shutdown => "shutdown",
            Frame(_) => "bad_frame",
            TextFrame => "text_frame",
            Protocol(_) => "protocol_error",
            TooBig => "frame_too_big",
            IdleTimeout => "idle_timeout",
            MaxAge => "max_session_age",
            KeepaliveTimeout => "keepalive_timeout",
            Superseded => "superseded",
            ResumeExpired => "resume_expired",
        }
    }

    /// The close frame's reason text (at most 123 bytes, as RFC 6455 allows).
    pub fn message(&self) -> String {
        use CloseReason::*;
        let m = match self {
            TargetClosed => "target closed the connection".to_string(),
            ClientClosed | ClientGone => "client closed the connection".to_string(),
            TargetError => "target connection failed".to_string(),
            Shutdown => "server shutting down".to_string(),
            Frame(e) => e.to_string(),
            TextFrame => "text frames are not accepted on SSH sessions".to_string(),
            Protocol(m) => format!("protocol error: {m}"),
            TooBig => "frame too big".to_string(),
            IdleTimeout => "idle timeout".to_string(),
            MaxAge => "maximum session age reached".to_string(),
            KeepaliveTimeout => "keepalive timeout: no pong".to_string(),
            Superseded => "another connection resumed the session".to_string(),
            ResumeExpired => "the session was not resumed in time".to_string(),
        };
        let mut end = m.len().min(123);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m[..end].to_string()
    }

    /// The close frame sent to the client: none when it is gone.
    pub fn close_frame(&self) -> Option<CloseFrame> {
        let gone = matches!(self, CloseReason::ClientGone | CloseReason::ResumeExpired);
        (!gone).then(|| CloseFrame {
            code: self.code(),
            reason: self.message(),
        })
    }

    /// The close frame of a resumable session. A client resumes after a 1001 (a proxy on the
    /// way going away), but a sidecar shutting down takes its sessions with it: it says 1012
    /// (service restart), which its clients take as the end, not as a drop to resume from. A
    /// leg the keepalive gave up on is parked, not ended: if its client still reads, it is told
    /// 1001, to resume.
    pub fn resumable_close_frame(&self) -> Option<CloseFrame> {
        match self {
            CloseReason::Shutdown => Some(CloseFrame {
                code: 1012,
                reason: format!("{}; the session cannot be resumed", self.message()),
            }),
            CloseReason::KeepaliveTimeout => Some(CloseFrame {
                code: 1001,
                reason: format!("{}; resume the session", self.message()),
            }),
            other => other.close_frame(),
        }
    }
}

/// Every way the tunnel engine ends a session, as the sidecar (the server role) reports it.
impl From<&Reason> for CloseReason {
    fn from(why: &Reason) -> Self {
        match why {
            Reason::PeerClosed(_) => CloseReason::ClientClosed,
            Reason::PeerEof | Reason::PeerReadFailed(_) | Reason::PeerWriteFailed(_) => {
                CloseReason::ClientGone
            }
            Reason::Violation(v) => match v {
                Violation::Header(HeaderError::TooBig(_)) | Violation::MessageTooBig(_) => {
                    CloseReason::TooBig
                }
                Violation::Text => CloseReason::TextFrame,
                Violation::Framing(e) => CloseReason::Frame(*e),
                other => CloseReason::Protocol(other.to_string()),
            },
            // Only a client is redirected; from a client, a redirect breaks the framing.
            Reason::Redirected(_) => CloseReason::Frame(FrameError::UnexpectedRedirect),
            // The engine lingers only in the client role; either way the target ended it.
            Reason::LocalClosed | Reason::Lingered => CloseReason::TargetClosed,
            Reason::LocalReadFailed(_) | Reason::LocalWriteFailed(_) => CloseReason::TargetError,
            Reason::Shutdown => CloseReason::Shutdown,
            Reason::IdleTimeout => CloseReason::IdleTimeout,
            Reason::MaxAge => CloseReason::MaxAge,
            Reason::KeepaliveTimeout => CloseReason::KeepaliveTimeout,
            Reason::Superseded => CloseReason::Superseded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (Reject::MissingCredentials, 401),
            (Reject::Forbidden, 403),
            (Reject::UnknownCluster, 404),
            (Reject::UnknownWorker(3), 404),
            (Reject::UserLimit, 429),
            (Reject::GlobalLimit, 503),
            (Reject::TargetUnreachable, 502),
            (Reject::AuthUnavailable, 503),
            (Reject::AuthThrottled(1), 503),
            (Reject::Token(TokenError::MultipleTokens), 400),
            (Reject::ResumeUnknown, 404),
            (Reject::ResumeBadSecret, 404),
            (Reject::ResumeForbidden, 403),
            (Reject::ResumeConflict, 409),
        ];
        for (r, s) in cases {
            assert_eq!(r.status().as_u16(), s, "{r:?}");
        }
    }

    /// A wrong secret is answered exactly as an unknown session (status, body), so the answer
    /// does not say a session exists; only the audit and the metrics tell them apart.
    #[tokio::test]
    async fn a_bad_secret_is_answered_as_an_unknown_session() {
        async fn answer(r: Reject) -> (StatusCode, Vec<u8>) {
            let resp = r.into_response();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, body.to_vec())
        }
        assert_eq!(
            answer(Reject::ResumeBadSecret).await,
            answer(Reject::ResumeUnknown).await
        );
        assert_eq!(Reject::ResumeBadSecret.reason(), "resume_unknown");
        assert_eq!(Reject::ResumeBadSecret.label(), "resume_bad_secret");
        assert_eq!(Reject::ResumeUnknown.label(), "resume_unknown");
        assert_eq!(Reject::ResumeConflict.reason(), "resume_conflict");
    }

    #[test]
    fn throttled_says_when_to_retry() {
        let resp = Reject::AuthThrottled(2).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[axum::http::header::RETRY_AFTER], "2");
        let resp = Reject::AuthUnavailable.into_response();
        assert!(resp
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .is_none());
    }

    #[test]
    fn every_engine_end_maps_to_one_close_reason() {
        struct Case {
            why: Reason,
            code: u16,
            label: &'static str,
            sent: bool,
        }
        let io = || std::io::Error::other("x");
        let case = |why, code, label| Case {
            why,
            code,
            label,
            sent: true,
        };
        let cases = [
            case(Reason::PeerClosed(None), 1000, "client_closed"),
            case(Reason::LocalClosed, 1000, "target_closed"),
            case(Reason::Shutdown, 1001, "shutdown"),
            case(
                Reason::Violation(Violation::Unmasked),
                1002,
                "protocol_error",
            ),
            case(
                Reason::Violation(Violation::Header(HeaderError::Reserved)),
                1002,
                "protocol_error",
            ),
            case(
                Reason::Violation(Violation::Header(HeaderError::TooBig(1 << 20))),
                1009,
                "frame_too_big",
            ),
            case(
                Reason::Violation(Violation::MessageTooBig(1040)),
                1009,
                "frame_too_big",
            ),
            case(Reason::Violation(Violation::Text), 1008, "text_frame"),
            case(
                Reason::Violation(Violation::Framing(FrameError::Empty)),
                1008,
                "bad_frame",
            ),
            case(Reason::IdleTimeout, 1008, "idle_timeout"),
            case(Reason::MaxAge, 1008, "max_session_age"),
            case(Reason::KeepaliveTimeout, 1011, "keepalive_timeout"),
            case(Reason::Superseded, 1008, "superseded"),
            case(
                Reason::Violation(Violation::Control("ack 9".into())),
                1002,
                "protocol_error",
            ),
            case(Reason::LocalReadFailed(io()), 1011, "target_error"),
            case(Reason::LocalWriteFailed(io()), 1011, "target_error"),
            Case {
                why: Reason::PeerEof,
                code: 1006,
                label: "client_gone",
                sent: false,
            },
            Case {
                why: Reason::PeerWriteFailed(io()),
                code: 1006,
                label: "client_gone",
                sent: false,
            },
        ];
        for c in cases {
            let r = CloseReason::from(&c.why);
            assert_eq!((r.code(), r.label()), (c.code, c.label), "{:?}", c.why);
            assert_eq!(
                r.close_frame().map(|f| (f.code, f.reason)),
                c.sent.then(|| (c.code, r.message())),
                "{:?}",
                c.why
            );
        }
        assert_eq!(
            CloseReason::from(&Reason::Violation(Violation::StrayContinuation)).message(),
            "protocol error: continuation frame outside a message"
        );
    }

    #[test]
    fn close_codes() {
        assert_eq!(CloseReason::TargetClosed.code(), 1000);
        assert_eq!(CloseReason::Shutdown.code(), 1001);
        // A resumable session is told the sidecar's shutdown is its end; everything else is
        // closed the same way as any session.
        let told = |r: CloseReason| r.resumable_close_frame().map(|f| f.code);
        assert_eq!(told(CloseReason::Shutdown), Some(1012));
        assert_eq!(told(CloseReason::KeepaliveTimeout), Some(1001));
        assert_eq!(told(CloseReason::TargetClosed), Some(1000));
        assert_eq!(told(CloseReason::ClientGone), None);
        assert_eq!(CloseReason::Frame(FrameError::UnknownType(7)).code(), 1008);
        assert_eq!(CloseReason::TargetError.code(), 1011);
        assert!(CloseReason::Frame(FrameError::UnknownType(7))
            .message()
            .contains("unknown frame type 7"));
    }
}
