//! Resumable sessions (docs/resume.md): the `x-wsgate-resume` header, the sessions this server
//! holds for their clients to come back to, and the checks a resume passes before it takes one
//! over. No I/O: the session task ([`crate::server`]) owns the session and its legs; this
//! module only says who may hand it the next one. Secrets are never logged nor shown by `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wsgate_proto::names::{parse_replay_buffer, REPLAY_BUFFER_HEADER};

use crate::error::Reject;
use crate::metrics::ResumeResult;

/// The request header that offers or asks for resumption, and the `101`'s that accepts it.
pub const HEADER: &str = "x-wsgate-resume";

/// The `101`'s answer to an offer: the protocol version this server speaks.
pub const ACCEPT: &str = "v1";

/// Bytes of an id and of a secret: 128 random bits each.
const LEN: usize = 16;

/// What a request's `x-wsgate-resume` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// `new`: a first connection that offers resumption.
    New,
    /// `resume <id> <secret>`: a connection that takes a session over.
    Resume { id: SessionId, secret: Secret },
}

/// The header was there but is not one of the two forms.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Reads the header. With resumption off, an offer (or anything but a well-formed resume) is
/// ignored as a server that does not know the header would; a resume is still returned, to be
/// refused with 404 (its client waits for a session, not a new one).
pub fn offer(headers: &HeaderMap, enabled: bool) -> Result<Option<Offer>, Malformed> {
    let parsed = match single(headers, HEADER) {
        Ok(None) => return Ok(None),
        Ok(Some(v)) => v.to_str().map_err(|_| Malformed).and_then(parse),
        Err(e) => Err(e),
    };
    match parsed {
        Ok(Offer::New) | Err(_) if !enabled => Ok(None),
        other => other.map(Some),
    }
}

/// The offer's `x-wsgate-replay-buffer`: how many unacknowledged bytes the client keeps (the
/// session acknowledges a quarter of it at a time); `None` if it did not say.
pub fn client_replay_buffer(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let Some(v) = single(headers, REPLAY_BUFFER_HEADER)? else {
        return Ok(None);
    };
    let n = v.to_str().ok().and_then(parse_replay_buffer);
    n.map(Some).ok_or(Malformed)
}

/// A header that may come once: its value, if any; twice is malformed.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a HeaderValue>, Malformed> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (Some(_), Some(_)) => Err(Malformed),
    }
}

fn parse(value: &str) -> Result<Offer, Malformed> {
    let words: Vec<&str> = value.split(' ').collect();
    match words.as_slice() {
        ["new"] => Ok(Offer::New),
        ["resume", id, secret] => Ok(Offer::Resume {
            id: SessionId(hex(id)?),
            secret: Secret(hex(secret)?),
        }),
        _ => Err(Malformed),
    }
}

/// 32 lower-case hex digits.
fn hex(s: &str) -> Result<[u8; LEN], Malformed> {
    wsgate_proto::hex::decode(s).ok_or(Malformed)
}

fn to_hex(b: &[u8; LEN]) -> String {
    wsgate_proto::hex::encode(b)
}

/// A session's id: not a secret (it may be logged), but random, so it tells nothing either.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; LEN]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A session's secret: what proves a resume comes from the session's client. Compared in
/// constant time; its `Debug` does not show it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; LEN]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn matches(&self, other: &Secret) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// A new resumable session's id and secret.
#[derive(Debug)]
pub struct Credentials {
    pub id: SessionId,
    secret: Secret,
}

impl Credentials {
    /// 128 bits each from the operating system's generator.
    pub fn generate() -> Result<Credentials, getrandom::Error> {
        let mut b = [0u8; 2 * LEN];
        getrandom::fill(&mut b)?;
        let (id, secret) = b.split_at(LEN);
        let mut c = Credentials {
            id: SessionId([0; LEN]),
            secret: Secret([0; LEN]),
        };
        c.id.0.copy_from_slice(id);
        c.secret.0.copy_from_slice(secret);
        Ok(c)
    }

    /// The control message that tells the client: `session <id> <secret>`. The one place the
    /// secret is written out; it goes to the client and nowhere else.
    pub fn greeting(&self) -> String {
        format!("session {} {}", self.id, to_hex(&self.secret.0))
    }
}

/// Whose a session is: a resume must come from the same user, for the same cluster and worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub cluster: String,
    pub worker: u32,
}

/// The resumable sessions this server holds, by id. `L` is what a resume hands over (the
/// server's upgraded connection and where it came from).
pub struct Resumable<L> {
    sessions: Mutex<HashMap<SessionId, Arc<Held<L>>>>,
}

/// One session, as resumes see it.
struct Held<L> {
    secret: Secret,
    owner: Owner,
    state: Mutex<State<L>>,
    /// Wakes the session task when its state changed (a leg handed over, a claim given up).
    /// It reads the state after every wake, so a wake that finds nothing new costs nothing.
    changed: Notify,
}

struct State<L> {
    /// A resume was let through and its leg has not started yet: another one gets 409, and
    /// the window does not end under it.
    claimed: bool,
    /// The next leg, handed over by a resume, until the session task takes it.
    next: Option<L>,
    /// The live leg's takeover, cancelled when a resume takes its place; `None` while parked.
    live: Option<CancellationToken>,
    /// Over for good (ended, or its window ran out): resumes get 404.
    ended: bool,
}

impl<L> Held<L> {
    fn state(&self) -> MutexGuard<'_, State<L>> {
        // Every change under it is a few assignments that cannot panic, so a poisoned lock
        // still holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<L> Default for Resumable<L> {
    fn default() -> Self {
        Resumable {
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

impl<L> Resumable<L> {
    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Held<L>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a session resumable; its task keeps the [`Handle`], and the session can be resumed
    /// until the handle ends it or is dropped.
    pub fn register(self: &Arc<Self>, creds: &Credentials, owner: Owner) -> Handle<L> {
        let held = Arc::new(Held {
            secret: creds.secret.clone(),
            owner,
            state: Mutex::new(State {
                claimed: false,
                next: None,
                live: None,
                ended: false,
            }),
            changed: Notify::new(),
        });
        self.sessions().insert(creds.id, Arc::clone(&held));
        Handle {
            id: creds.id,
            held,
            registry: Arc::clone(self),
        }
    }

    /// The checks of docs/resume.md, in its order: the session exists and is not over, the
    /// secret matches, the owner is the same, no other resume is in progress. A refusal changes
    /// nothing; a [`Claim`] holds the session for this resume until it hands its leg over or
    /// is dropped.
    pub fn claim(
        &self,
        id: &SessionId,
        secret: &Secret,
        owner: &Owner,
    ) -> Result<Claim<L>, Reject> {
        let held = self
            .sessions()
            .get(id)
            .cloned()
            .ok_or(Reject::ResumeUnknown)?;
        if !held.secret.matches(secret) {
            return Err(Reject::ResumeBadSecret);
        }
        if held.owner != *owner {
            return Err(Reject::ResumeForbidden);
        }
        let mut state = held.state();
        if state.ended {
            return Err(Reject::ResumeUnknown);
        }
        if state.claimed {
            return Err(Reject::ResumeConflict);
        }
        state.claimed = true;
        drop(state);
        Ok(Claim { held: Some(held) })
    }

    /// Sessions held now (live or parked).
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session task's side of a resumable session: ends it for resumes when dropped.
pub struct Handle<L> {
    id: SessionId,
    held: Arc<Held<L>>,
    registry: Arc<Resumable<L>>,
}

impl<L> Handle<L> {
    /// A leg starts (the first, or the one a resume handed over): the claim that brought it is
    /// over, and this is the leg's takeover, cancelled when a later resume takes its place.
    pub fn start_leg(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = self.held.state();
        state.claimed = false;
        state.live = Some(token.clone());
        token
    }

    /// The leg was lost: a resume now wakes [`Handle::changed`] instead of taking a leg over.
    pub fn park(&self) {
        self.held.state().live = None;
    }

    /// The leg a resume handed over, if one did.
    pub fn take_leg(&self) -> Option<L> {
        self.held.state().next.take()
    }

    /// Resolves when a resume handed a leg over or gave up, or at once if one did since the
    /// last wait. Cancel-safe: whatever it was is in the state, for [`Handle::take_leg`] and
    /// [`Handle::expire`] to find.
    pub async fn changed(&self) {
        self.held.changed.notified().await;
    }

    /// The window ran out: ends the session for resumes, unless one is in progress (`false`:
    /// wait for it; [`Handle::changed`] says when it handed its leg over or gave up).
    pub fn expire(&self) -> bool {
        let mut state = self.held.state();
        if state.claimed {
            return false;
        }
        state.ended = true;
        true
    }

    /// The session is over for good: resumes get 404 from now on. A leg a resume handed over
    /// in the same moment, not started, is given back (to be refused: dropping it closes its
    /// connection).
    #[must_use = "a leg handed over meanwhile is refused and audited by the caller"]
    pub fn end(&self) -> Option<L> {
        let next = {
            let mut state = self.held.state();
            state.ended = true;
            state.next.take()
        };
        let mut sessions = self.registry.sessions();
        if sessions
            .get(&self.id)
            .is_some_and(|h| Arc::ptr_eq(h, &self.held))
        {
            sessions.remove(&self.id);
        }
        next
    }
}

impl<L> Drop for Handle<L> {
    fn drop(&mut self) {
        drop(self.end());
    }
}

/// A resume that passed the checks: the session is held for it until [`Claim::hand_over`]
/// (after its `101`), or released when it is dropped (the upgrade failed).
pub struct Claim<L> {
    /// `None` once handed over.
    held: Option<Arc<Held<L>>>,
}

impl<L> Claim<L> {
    /// Gives the session task its next leg, taking the live one over if there is one (it ends
    /// as lost, and the session task goes on with this one). `Err` gives the leg back if the
    /// session ended meanwhile.
    pub fn hand_over(mut self, leg: L) -> Result<(), L> {
        let Some(held) = self.held.take() else {
            return Err(leg);
        };
        let mut state = held.state();
        if state.ended {
            state.claimed = false;
            return Err(leg);
        }
        // `claimed` stays set until the session task starts the leg: until then, another
        // resume is in progress for it.
        state.next = Some(leg);
        if let Some(live) = state.live.take() {
            live.cancel();
        }
        drop(state);
        held.changed.notify_one();
        Ok(())
    }
}

impl<L> Drop for Claim<L> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.state().claimed = false;
            // Wakes a session task whose window ran out while this claim held it.
            held.changed.notify_one();
        }
    }
}

/// The `wsgate_resumes_total` result of a refusal, if it is a resume's.
pub fn result_of(reject: &Reject) -> Option<ResumeResult> {
    match reject {
        Reject::ResumeUnknown => Some(ResumeResult::Unknown),
        Reject::ResumeBadSecret => Some(ResumeResult::BadSecret),
        Reject::ResumeForbidden => Some(ResumeResult::Forbidden),
        Reject::ResumeConflict => Some(ResumeResult::Conflict),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";
    const SECRET: &str = "fedcba9876543210fedcba9876543210";

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn resume_offer(id: &str, secret: &str) -> Offer {
        Offer::Resume {
            id: SessionId(hex(id).unwrap()),
            secret: Secret(hex(secret).unwrap()),
        }
    }

    #[test]
    fn header_table() {
        struct Case {
            name: &'static str,
            values: Vec<Vec<u8>>,
            /// With resumption on, and off.
            on: Result<Option<Offer>, Malformed>,
            off: Option<Offer>,
        }
        let resume = format!("resume {ID} {SECRET}").into_bytes();
        let malformed = |name, value: String| Case {
            name,
            values: vec![value.into_bytes()],
            on: Err(Malformed),
            off: None,
        };
        let cases = vec![
            Case {
                name: "absent",
                values: vec![],
                on: Ok(None),
                off: None,
            },
            Case {
                name: "new",
                values: vec![b"new".to_vec()],
                on: Ok(Some(Offer::New)),
                off: None,
            },
            Case {
                name: "resume",
                values: vec![resume.clone()],
                on: Ok(Some(resume_offer(ID, SECRET))),
                off: Some(resume_offer(ID, SECRET)),
            },
            malformed("empty", String::new()),
            malformed("NEW", "NEW".into()),
            malformed("new with a version", "new v2".into()),
            malformed("new and a space", "new ".into()),
            malformed("resume without a secret", format!("resume {ID}")),
            malformed("two spaces", format!("resume  {ID} {SECRET}")),
            malformed(
                "upper-case hex",
                format!("resume {} {SECRET}", ID.to_uppercase()),
            ),
            malformed("a short id", format!("resume {} {SECRET}", &ID[1..])),
            malformed("a long secret", format!("resume {ID} {SECRET}0")),
            malformed("not hex", format!("resume {ID} {}", "g".repeat(32))),
            malformed("a fourth word", format!("resume {ID} {SECRET} x")),
            Case {
                name: "twice",
                values: vec![b"new".to_vec(), b"new".to_vec()],
                on: Err(Malformed),
                off: None,
            },
            Case {
                name: "not UTF-8",
                values: vec![b"new\xff".to_vec()],
                on: Err(Malformed),
                off: None,
            },
        ];
        for c in cases {
            let values: Vec<&[u8]> = c.values.iter().map(Vec::as_slice).collect();
            let h = headers(&values);
            assert_eq!(offer(&h, true), c.on, "{} (on)", c.name);
            assert_eq!(offer(&h, false), Ok(c.off), "{} (off)", c.name);
        }
    }

    #[test]
    fn the_clients_replay_buffer() {
        for (values, want) in [
            (vec![], Ok(None)),
            (vec![&b"8388608"[..]], Ok(Some(8 << 20))),
            (vec![&b"0"[..]], Err(Malformed)),
            (vec![&b"8 MiB"[..]], Err(Malformed)),
            (vec![&b"-1"[..]], Err(Malformed)),
            (vec![&b"8388608\xff"[..]], Err(Malformed)),
            (vec![&b"1"[..], &b"1"[..]], Err(Malformed)),
        ] {
            let mut h = HeaderMap::new();
            for v in &values {
                h.append(REPLAY_BUFFER_HEADER, HeaderValue::from_bytes(v).unwrap());
            }
            assert_eq!(client_replay_buffer(&h), want, "{values:?}");
        }
    }

    #[test]
    fn credentials_are_random_and_their_secret_never_shows() {
        let a = Credentials::generate().unwrap();
        let b = Credentials::generate().unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
        let greeting = a.greeting();
        let words: Vec<&str> = greeting.split(' ').collect();
        assert_eq!(words.len(), 3, "{greeting}");
        assert_eq!(words[0], "session");
        assert_eq!(words[1], a.id.to_string());
        for w in &words[1..] {
            assert_eq!(w.len(), 32, "{greeting}");
            assert!(w.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        }
        // What the client would send back parses to the same id and secret.
        let h = headers(&[format!("resume {} {}", words[1], words[2]).as_bytes()]);
        assert_eq!(
            offer(&h, true),
            Ok(Some(Offer::Resume {
                id: a.id,
                secret: a.secret.clone()
            }))
        );
        let shown = format!("{a:?} {:?}", offer(&h, true));
        assert!(!shown.contains(words[2]), "{shown}");
        assert!(shown.contains(words[1]), "the id may show: {shown}");
    }

    fn owner(user: &str, cluster: &str, worker: u32) -> Owner {
        Owner {
            user: user.into(),
            cluster: cluster.into(),
            worker,
        }
    }

    /// A registry holding one session of alice's on prod, worker 0.
    fn one_session() -> (Arc<Resumable<u32>>, Handle<u32>, Credentials) {
        let r = Arc::new(Resumable::default());
        let creds = Credentials::generate().unwrap();
        let h = r.register(&creds, owner("alice", "prod", 0));
        (r, h, creds)
    }

    #[test]
    fn claim_checks_in_order() {
        #[derive(Clone, Copy)]
        enum Before {
            Nothing,
            Claimed,
            Ended,
        }
        struct Case {
            name: &'static str,
            before: Before,
            other_id: bool,
            bad_secret: bool,
            owner: Owner,
            want: Result<(), Reject>,
        }
        let alice = owner("alice", "prod", 0);
        let case = |name, before, other_id, bad_secret, owner: &Owner, want| Case {
            name,
            before,
            other_id,
            bad_secret,
            owner: owner.clone(),
            want,
        };
        use Before::*;
        let cases = [
            case("the owner", Nothing, false, false, &alice, Ok(())),
            case(
                "unknown id",
                Nothing,
                true,
                false,
                &alice,
                Err(Reject::ResumeUnknown),
            ),
            case(
                "bad secret",
                Nothing,
                false,
                true,
                &alice,
                Err(Reject::ResumeBadSecret),
            ),
            case(
                "another user",
                Nothing,
                false,
                false,
                &owner("bob", "prod", 0),
                Err(Reject::ResumeForbidden),
            ),
            case(
                "another cluster",
                Nothing,
                false,
                false,
                &owner("alice", "dev", 0),
                Err(Reject::ResumeForbidden),
            ),
            case(
                "another worker",
                Nothing,
                false,
                false,
                &owner("alice", "prod", 1),
                Err(Reject::ResumeForbidden),
            ),
            // The secret first: without it, nobody learns whose the session is.
            case(
                "another user with a bad secret",
                Nothing,
                false,
                true,
                &owner("bob", "prod", 0),
                Err(Reject::ResumeBadSecret),
            ),
            case(
                "claimed",
                Claimed,
                false,
                false,
                &alice,
                Err(Reject::ResumeConflict),
            ),
            // Only the secret's holder learns another resume is in progress.
            case(
                "claimed, bad secret",
                Claimed,
                false,
                true,
                &alice,
                Err(Reject::ResumeBadSecret),
            ),
            case(
                "claimed, another user",
                Claimed,
                false,
                false,
                &owner("bob", "prod", 0),
                Err(Reject::ResumeForbidden),
            ),
            case(
                "ended",
                Ended,
                false,
                false,
                &alice,
                Err(Reject::ResumeUnknown),
            ),
        ];
        for c in cases {
            let (r, h, creds) = one_session();
            let _first = match c.before {
                Nothing => None,
                Claimed => Some(r.claim(&creds.id, &creds.secret, &alice).unwrap()),
                Ended => {
                    assert!(h.expire());
                    None
                }
            };
            let id = if c.other_id {
                Credentials::generate().unwrap().id
            } else {
                creds.id
            };
            let secret = if c.bad_secret {
                Credentials::generate().unwrap().secret
            } else {
                creds.secret.clone()
            };
            let got = r.claim(&id, &secret, &c.owner).map(|_| ());
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    /// A refusal, or a claim given up, leaves the session as it was.
    #[test]
    fn a_refusal_or_a_released_claim_changes_nothing() {
        let (r, h, creds) = one_session();
        let alice = owner("alice", "prod", 0);
        let live = h.start_leg();
        let wrong = Credentials::generate().unwrap().secret;
        assert_eq!(
            r.claim(&creds.id, &wrong, &alice).err(),
            Some(Reject::ResumeBadSecret)
        );
        let claim = r.claim(&creds.id, &creds.secret, &alice).unwrap();
        assert_eq!(
            r.claim(&creds.id, &creds.secret, &alice).err(),
            Some(Reject::ResumeConflict)
        );
        drop(claim);
        assert!(!live.is_cancelled(), "the live leg goes on");
        assert!(h.take_leg().is_none());
        assert!(r.claim(&creds.id, &creds.secret, &alice).is_ok());
    }

    /// A resume while a leg is live takes it over: the live leg's token is cancelled, the
    /// handed-over leg waits for the session task, and other resumes get 409 until it starts.
    #[tokio::test]
    async fn a_resume_takes_the_live_leg_over() {
        let (r, h, creds) = one_session();
        let alice = owner("alice", "prod", 0);
        let live = h.start_leg();
        let claim = r.claim(&creds.id, &creds.secret, &alice).unwrap();
        assert!(!live.is_cancelled(), "not before the hand-over");
        claim.hand_over(7).unwrap();
        assert!(live.is_cancelled());
        assert_eq!(
            r.claim(&creds.id, &creds.secret, &alice).err(),
            Some(Reject::ResumeConflict)
        );
        h.park();
        assert!(!h.expire(), "the window does not end under a resume");
        h.changed().await;
        assert_eq!(h.take_leg(), Some(7));
        let second = h.start_leg();
        let claim = r.claim(&creds.id, &creds.secret, &alice).unwrap();
        claim.hand_over(8).unwrap();
        assert!(second.is_cancelled());
        assert_eq!(h.take_leg(), Some(8));
    }

    /// The window runs out under a claim: the session waits for it; given up, it expires.
    #[tokio::test]
    async fn the_window_waits_for_a_resume_in_progress() {
        let (r, h, creds) = one_session();
        let alice = owner("alice", "prod", 0);
        h.park();
        let claim = r.claim(&creds.id, &creds.secret, &alice).unwrap();
        assert!(!h.expire());
        drop(claim);
        h.changed().await;
        assert!(h.take_leg().is_none());
        assert!(h.expire());
        assert_eq!(
            r.claim(&creds.id, &creds.secret, &alice).err(),
            Some(Reject::ResumeUnknown)
        );
    }

    /// The session ends in the moment after a resume handed its leg over: the leg comes back
    /// with the end, for its refusal, and later resumes find nothing.
    #[test]
    fn a_leg_handed_over_as_the_session_ends_is_given_back() {
        let (r, h, creds) = one_session();
        let alice = owner("alice", "prod", 0);
        let live = h.start_leg();
        r.claim(&creds.id, &creds.secret, &alice)
            .unwrap()
            .hand_over(7)
            .unwrap();
        assert!(live.is_cancelled());
        assert_eq!(h.end(), Some(7));
        assert_eq!(h.end(), None, "given back once");
        assert_eq!(
            r.claim(&creds.id, &creds.secret, &alice).err(),
            Some(Reject::ResumeUnknown)
        );
    }

    #[test]
    fn an_ended_session_is_gone() {
        let (r, h, creds) = one_session();
        let alice = owner("alice", "prod", 0);
        let claim = r.claim(&creds.id, &creds.secret, &alice).unwrap();
        assert_eq!(r.len(), 1);
        drop(h);
        assert!(r.is_empty());
        assert_eq!(claim.hand_over(1), Err(1), "no one to hand it to");
        assert_eq!(
            r.claim(&creds.id, &creds.secret, &alice).err(),
            Some(Reject::ResumeUnknown)
        );
    }

    #[test]
    fn results_of_refusals() {
        assert_eq!(
            result_of(&Reject::ResumeBadSecret),
            Some(ResumeResult::BadSecret)
        );
        assert_eq!(result_of(&Reject::Forbidden), None);
    }
}
