//! The server: routes, the handshake (validate, authenticate, authorize, admit, resolve,
//! connect — all before the upgrade; a resume instead finds its session, `crate::resume`),
//! session tasks (a resumable session's legs, parked between them), and graceful shutdown.
//!
//! [`run`]`(listeners, config, shutdown)` is the whole server: `main` only reads the settings,
//! sets up the log and binds; the integration tests (`tests/`) call it on `127.0.0.1:0`.
//!
//! Each WebSocket request is one `session` span, from its first check to its audit line: `id`
//! and `client` from the start, `user`, `cluster` and `target` as the handshake learns them, so
//! every line of a session says whose it is. The span never holds a token.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::{display, Empty};
use tracing::{info, info_span, warn, Instrument, Span};
use wsgate_proto::framing::Framing;
use wsgate_proto::names::{is_dns_label, REPLAY_BUFFER_HEADER};
use wsgate_proto::query::{percent_decode, query_pairs};

use crate::auth::{credential, Identity};
use crate::backends::{BackendError, Backends};
use crate::bridge::{bridge, Bridge, Leg, Observer, Replayed};
use crate::config::{AuthConfig, Config, ServerConfig, SKYPILOT_PATH};
use crate::error::{CloseReason, Reject};
use crate::http::{serve as serve_http, HttpLimits};
use crate::metrics::{add_saturating, Metrics, ResumeResult};
use crate::origin::{Origin, PeerAddr};
use crate::resume::{self, Claim, Credentials, Offer, Owner, Resumable, SessionId};
use crate::sessions::{Admission, Registry, SessionInfo};
use crate::upgrade::{Connection, WsUpgrade};
use wsgate_proto::text::Shown;
use wsgate_tunnel::ResumeConfig;

/// The two listening sockets, bound by the caller: `main` binds them with a deep accept queue,
/// tests on `127.0.0.1:0`.
pub struct Listeners {
    /// WebSocket sessions, and `/healthz` and `/readyz` for the gateway's health checks
    /// (`--listen`).
    pub sessions: TcpListener,
    /// `/metrics`, `/sessions`, `/healthz`, `/readyz` (`--admin-listen`): apart, so the session
    /// listing and the metrics can stay off the network the clients reach.
    pub admin: TcpListener,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error("reading a listener's address: {0}")]
    Listener(std::io::Error),
}

/// What every handler shares.
struct AppState {
    /// Routes, limits and timeouts, as checked at start.
    config: ServerConfig,
    /// Who is asking, may they, and where their session goes.
    backends: Backends,
    /// Admission limits and the `/sessions` listing.
    registry: Arc<Registry>,
    /// The resumable sessions, for resumes to find (empty with `--resume=false`).
    resumable: Arc<Resumable<NewLeg>>,
    /// Counted by handshakes, sessions and the accept loop; rendered on `/metrics`.
    metrics: Arc<Metrics>,
    /// Set on shutdown: `/readyz` turns false and new sessions get 503.
    draining: AtomicBool,
    /// Session tasks, so shutdown can wait for them (upgraded connections are not HTTP
    /// connections any more: the HTTP server's own graceful shutdown does not see them).
    tracker: TaskTracker,
    /// Cancelled when the grace period is over: every session closes with 1001.
    close_all: CancellationToken,
}

/// Builds the backends (reading the token file and the policy, connecting a Kubernetes client
/// if one is needed), then serves until `shutdown` resolves, then drains: stops accepting,
/// waits up to `--shutdown-grace` for sessions, closes the rest with 1001, and returns, at
/// most `3 × CLOSE_WAIT` after the grace period.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let backends = Backends::new(&config).await?;
    if matches!(config.auth, AuthConfig::None) {
        warn!(
            "authentication is OFF (--auth none): anyone who reaches {} can open SSH sessions",
            listeners
                .sessions
                .local_addr()
                .map_err(StartError::Listener)?
        );
    }
    serve(listeners, config.server, backends, shutdown).await
}

async fn serve(
    listeners: Listeners,
    config: ServerConfig,
    backends: Backends,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let Listeners {
        sessions: listener,
        admin,
    } = listeners;
    let registry = Registry::new(config.max_sessions, config.max_sessions_per_user);
    let grace = config.shutdown_grace;
    let reviews = backends.auth.review_metrics();
    let st = Arc::new(AppState {
        config,
        backends,
        registry,
        resumable: Arc::default(),
        metrics: Arc::new(Metrics::with_reviews(reviews)),
        draining: AtomicBool::new(false),
        tracker: TaskTracker::new(),
        close_all: CancellationToken::new(),
    });
    info!(
        listen = %listener.local_addr().map_err(StartError::Listener)?,
        admin = %admin.local_addr().map_err(StartError::Listener)?,
        auth = %st.backends.auth.describe(),
        authz = %st.backends.authz.describe(),
        targets = %st.backends.resolver.describe(),
        "wsgate-sidecar {} serving",
        env!("CARGO_PKG_VERSION"),
    );

    // Both listeners: a deadline on every request head, on keep-alive idle time and on the
    // `101`, and a cap on open connections; the handlers get the peer as
    // `ConnectInfo<PeerAddr>` (the audit trail). After the shutdown signal, requests in
    // progress and sessions share the grace period.
    let limits = HttpLimits {
        header_read_timeout: st.config.header_read_timeout,
        keepalive_timeout: st.config.keepalive_timeout,
        max_connections: st.config.max_connections,
        drain: grace,
    };
    // The admin listener serves probes and scrapes: a few connections, and it is stopped only
    // once the sessions are over, so its requests in progress get a moment, not the grace.
    let admin_limits = HttpLimits {
        max_connections: 64,
        drain: Duration::from_secs(1),
        ..limits
    };
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(serve_http(
        admin,
        admin_router(Arc::clone(&st)),
        admin_limits,
        None,
        admin_stop.clone().cancelled_owned(),
    ));
    let drain_state = Arc::clone(&st);
    let stopped_at = Arc::new(std::sync::OnceLock::new());
    let stopping = Arc::clone(&stopped_at);
    serve_http(
        listener,
        router(Arc::clone(&st)),
        limits,
        Some(Arc::clone(&st.metrics)),
        async move {
            shutdown.await;
            let _ = stopping.set(tokio::time::Instant::now());
            drain_state.draining.store(true, Ordering::SeqCst);
            info!(
                sessions = drain_state.metrics.sessions_open(),
                grace_seconds = grace.as_secs(),
                "shutting down: not accepting, draining sessions"
            );
        },
    )
    .await;

    st.tracker.close();
    let stopped = stopped_at
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now);
    let drained = match stopped.checked_add(grace) {
        Some(over) => tokio::time::timeout_at(over, st.tracker.wait())
            .await
            .is_ok(),
        // A grace period past the end of time: wait for the sessions, however long.
        None => {
            st.tracker.wait().await;
            true
        }
    };
    if !drained {
        warn!(
            sessions = st.metrics.sessions_open(),
            "grace period over: closing the remaining sessions with 1001"
        );
        st.close_all.cancel();
        // Every session ends within 2 × CLOSE_WAIT of its cancel, whatever its peers do.
        let _ = tokio::time::timeout(crate::bridge::CLOSE_WAIT * 3, st.tracker.wait()).await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

fn router(st: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route(SKYPILOT_PATH, get(skypilot_endpoint))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if let Some(t) = &st.config.path_template {
        r = r.route(t, get(path_endpoint));
    }
    r.with_state(st)
}

fn admin_router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions))
        .with_state(st)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn sessions(State(st): State<Arc<AppState>>) -> Response {
    Json(st.registry.snapshot()).into_response()
}

/// What the request asks for, from the query (and the path for the generic endpoint).
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    cluster: String,
    worker: u32,
    client_version: Option<u32>,
}

fn parse_query(query: Option<&str>, path_cluster: Option<String>) -> Result<Ask, Reject> {
    let from_path = path_cluster.is_some();
    let mut cluster = path_cluster;
    let (mut worker, mut client_version) = (None, None);
    for (k, v) in query_pairs(query) {
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            return Err(Reject::BadRequest("malformed query string"));
        };
        let slot = match k.as_str() {
            "cluster_name" if !from_path => &mut cluster,
            "worker" => &mut worker,
            "client_version" => &mut client_version,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(Reject::BadRequest("a query parameter is repeated"));
        }
    }
    let cluster = cluster.ok_or(Reject::MissingCluster)?;
    if !is_dns_label(&cluster) {
        return Err(Reject::InvalidCluster);
    }
    let number = |v: Option<String>, what| match v {
        None => Ok(None),
        Some(s) => s
            .parse::<u32>()
            .map(Some)
            .map_err(|_| Reject::BadRequest(what)),
    };
    Ok(Ask {
        cluster,
        worker: number(worker, "worker must be a number")?.unwrap_or(0),
        client_version: number(client_version, "client_version must be a number")?,
    })
}

type Upgrade = Result<WsUpgrade, Reject>;

async fn skypilot_endpoint(
    State(st): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    handshake(st, peer, query, None, headers, ws).await
}

async fn path_endpoint(
    State(st): State<Arc<AppState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(cluster): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    handshake(st, peer, query, Some(cluster), headers, ws).await
}

/// A session ready to upgrade: every check passed, the target is connected.
struct Ready {
    who: Identity,
    ask: Ask,
    /// The target's `host:port`, for the listing and the audit.
    addr: String,
    /// Connected before the `101`, so an unreachable target is a 502, not a dead session.
    stream: TcpStream,
    /// The session's slot under the limits, held until it ends.
    admission: Admission,
    /// The subprotocol to echo in the `101`, when the token came as one (the client requires
    /// one echoed back).
    echo_protocol: Option<String>,
    /// Set when the session is resumable (the client offered it, and resumption is on).
    resume: Option<ResumeTerms>,
}

/// A new resumable session's terms.
struct ResumeTerms {
    /// Its id and secret.
    creds: Credentials,
    /// The replay buffer the client stated, if it did: its bytes are acknowledged a quarter of
    /// it at a time.
    client_replay_buffer: Option<u64>,
}

/// What the checks let through: a new session, or the next leg of one this server holds.
enum Prepared {
    /// Boxed: a session's worth of state, next to a resume's claim.
    New(Box<Ready>),
    Resume(Resuming),
}

/// A resume that passed every check: the session is held for it until its `101` is through.
struct Resuming {
    claim: Claim<NewLeg>,
    echo_protocol: Option<String>,
}

/// What a resume hands the session's task: the upgraded connection, where it came from, and
/// the resume request's span (for its refusal, should the session end as it is handed over).
struct NewLeg {
    conn: Connection,
    origin: Origin,
    span: Span,
}

/// What is known of a request so far, for its audit line and its span: a refusal says as much
/// as the checks before it had learnt (a user only once authenticated, a target only once
/// resolved).
#[derive(Debug)]
struct Audit {
    /// The session's number, in its span, its audit lines and `/sessions`. Every WebSocket
    /// request takes one, so a refused one's lines can be told apart too.
    id: u64,
    origin: Origin,
    user: Option<String>,
    cluster: Option<String>,
    target: Option<String>,
    /// The request asks to resume a session (its refusals are `resume_refused`).
    resuming: bool,
    /// The `session` span, given each field as it is learnt.
    span: Span,
}

impl Audit {
    fn learn_user(&mut self, user: &str) {
        self.span.record("user", display(Shown(user)));
        self.user = Some(user.to_string());
    }

    fn learn_cluster(&mut self, cluster: &str) {
        self.span.record("cluster", display(Shown(cluster)));
        self.cluster = Some(cluster.to_string());
    }

    /// The resumable session's id (not a secret): a new one's, or the one a resume asks for.
    fn learn_resume_id(&mut self, id: &SessionId) {
        self.span.record("resume_id", display(id));
    }

    fn learn_target(&mut self, target: &str) {
        self.span.record("target", display(Shown(target)));
        self.target = Some(target.to_string());
    }
}

async fn handshake(
    st: Arc<AppState>,
    peer: SocketAddr,
    query: Option<String>,
    path_cluster: Option<String>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let id = st.registry.new_id();
    let origin = Origin::new(peer, &headers, &st.config.trusted_hops);
    let span = info_span!(
        "session",
        id,
        user = Empty,
        cluster = Empty,
        target = Empty,
        client = %origin.client,
        resume_id = Empty,
    );
    let audit = Audit {
        id,
        origin,
        user: None,
        cluster: None,
        target: None,
        resuming: false,
        span: span.clone(),
    };
    checked_handshake(st, query, path_cluster, headers, ws, audit)
        .instrument(span)
        .await
}

async fn checked_handshake(
    st: Arc<AppState>,
    query: Option<String>,
    path_cluster: Option<String>,
    headers: HeaderMap,
    ws: Upgrade,
    mut audit: Audit,
) -> Response {
    let Ok(ws) = ws else {
        return refuse(&st, Reject::NotWebSocket, &audit);
    };
    let limit = st.config.handshake_timeout;
    let prepared = tokio::time::timeout(
        limit,
        prepare(&st, query, path_cluster, &headers, &mut audit),
    )
    .await;
    match prepared {
        Ok(Ok(Prepared::New(ready))) => start_session(st, *ready, ws, audit),
        Ok(Ok(Prepared::Resume(resuming))) => start_resume(st, resuming, ws, audit),
        Ok(Err(reject)) => refuse(&st, reject, &audit),
        Err(_) => refuse(&st, Reject::HandshakeTimeout, &audit),
    }
}

fn refuse(st: &AppState, reject: Reject, audit: &Audit) -> Response {
    st.metrics.handshake_failed(reject.label());
    if let Some(result) = resume::result_of(&reject) {
        st.metrics.resume(result);
    }
    info!(
        target: "wsgate::audit",
        event = if audit.resuming {
            "resume_refused"
        } else {
            "session_refused"
        },
        user = audit.user.as_deref().map(|u| display(Shown(u))),
        cluster = audit.cluster.as_deref().map(display),
        target_addr = audit.target.as_deref().map(|t| display(Shown(t))),
        peer_addr = %audit.origin.peer,
        client_addr = %audit.origin.client,
        status = reject.status().as_u16(),
        reason = reject.label(),
        "refused: {reject}"
    );
    reject.into_response()
}

/// Every check, in an order that reveals nothing before the caller is authenticated: who is
/// asking first (an anonymous caller gets 401 whatever it names, so it cannot tell allowed
/// clusters from others), then what they ask for and whether they may. A resume passes the
/// same checks as a new session, then the session's own (`crate::resume`), instead of the
/// admission and the target connect: its session has both.
async fn prepare(
    st: &AppState,
    query: Option<String>,
    path_cluster: Option<String>,
    headers: &HeaderMap,
    audit: &mut Audit,
) -> Result<Prepared, Reject> {
    let offer = resume::offer(headers, st.config.resume.is_some())
        .map_err(|_| Reject::BadRequest("malformed x-wsgate-resume header"))?;
    // `offered`: resumption offered, with the replay buffer the client stated (if it did).
    let (offered, resuming) = match offer {
        None => (None, None),
        Some(Offer::New) => {
            let b = resume::client_replay_buffer(headers)
                .map_err(|_| Reject::BadRequest("malformed x-wsgate-replay-buffer header"))?;
            (Some(b), None)
        }
        Some(Offer::Resume { id, secret }) => {
            audit.resuming = true;
            audit.learn_resume_id(&id);
            (None, Some((id, secret)))
        }
    };
    // A resume during the drain is let in: its session is here already, and ends with the
    // grace period as the live ones do. (Few come: the listener stops accepting at the
    // signal, so only a request already on its way can be one.)
    if resuming.is_none() && st.draining.load(Ordering::SeqCst) {
        return Err(Reject::Draining);
    }
    let cred = credential(headers)?;
    let who = st
        .backends
        .auth
        .authenticate(cred.as_ref().map(|c| &c.token))
        .await?;
    audit.learn_user(&who.user);
    let ask = parse_query(query.as_deref(), path_cluster)?;
    audit.learn_cluster(&ask.cluster);
    if st
        .config
        .allowed_clusters
        .as_ref()
        .is_some_and(|a| !a.contains(&ask.cluster))
    {
        return Err(Reject::UnknownCluster);
    }
    st.backends.authz.authorize(&who, &ask.cluster).await?;
    let echo_protocol = cred.and_then(|c| c.echo_protocol);
    if let Some((id, secret)) = resuming {
        if st.config.resume.is_none() {
            return Err(Reject::ResumeUnknown);
        }
        let owner = Owner {
            user: who.user,
            cluster: ask.cluster,
            worker: ask.worker,
        };
        let claim = st.resumable.claim(&id, &secret, &owner)?;
        return Ok(Prepared::Resume(Resuming {
            claim,
            echo_protocol,
        }));
    }
    let admission = st.registry.admit(&who.user)?;
    let addr = st
        .backends
        .resolver
        .resolve(&ask.cluster, ask.worker)
        .await?;
    audit.learn_target(&addr);
    let connect = TcpStream::connect(&addr);
    let stream = match tokio::time::timeout(st.config.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            warn!(target_addr = %Shown(&addr), error = %e, "target unreachable");
            return Err(Reject::TargetUnreachable);
        }
        Err(_) => {
            warn!(target_addr = %Shown(&addr), "target connect timed out");
            return Err(Reject::TargetUnreachable);
        }
    };
    let _ = stream.set_nodelay(true);
    let resume = match (offered, &st.config.resume) {
        (Some(client_replay_buffer), Some(_)) => match Credentials::generate() {
            Ok(creds) => {
                audit.learn_resume_id(&creds.id);
                Some(ResumeTerms {
                    creds,
                    client_replay_buffer,
                })
            }
            // Offered, never imposed: without a secret, the session is today's.
            Err(e) => {
                warn!(error = %e, "no random bytes for a resumable session's secret; the session is not resumable");
                None
            }
        },
        _ => None,
    };
    Ok(Prepared::New(Box::new(Ready {
        who,
        ask,
        addr,
        stream,
        admission,
        echo_protocol,
        resume,
    })))
}

/// Reports the bridge's byte counts to the session listing and the metrics, and a resumed
/// leg's replay to the audit trail.
struct SessionObserver {
    /// The session's `/sessions` entry.
    info: Arc<SessionInfo>,
    /// The server's totals.
    metrics: Arc<Metrics>,
    /// A resumed leg not audited yet: its line waits for the replay's size (the client's
    /// `resume` comes first thing), or for the leg's end if it never comes.
    resumed: Mutex<Option<Resumed>>,
    /// Bytes replayed to the client over all legs, for the session's end.
    replayed: AtomicU64,
    /// Bytes the client said it sent again over all legs, for the session's end.
    replayed_by_client: AtomicU64,
}

impl SessionObserver {
    fn expect_resume(&self, r: Resumed) {
        *self.resumed.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    /// A leg ended: a resume it began with is audited, if the replay did not do it.
    fn leg_over(&self) {
        self.audit_resumed(None);
    }

    /// The `session_resumed` line of the leg that is waiting for one, with the bytes
    /// replayed each way when known.
    fn audit_resumed(&self, replayed: Option<Replayed>) {
        let Some(r) = self
            .resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let i = &self.info;
        info!(
            target: "wsgate::audit",
            event = "session_resumed",
            id = i.id,
            user = %Shown(&i.user),
            cluster = %i.cluster,
            worker = i.worker,
            target_addr = %Shown(&i.target),
            peer_addr = %r.origin.peer,
            client_addr = %r.origin.client,
            leg = r.leg,
            gap_ms = r.gap.as_millis() as u64,
            bytes_replayed = replayed.map(|r| r.to_peer),
            bytes_replayed_by_client = replayed.map(|r| r.from_peer),
            "session resumed after {:.1} s",
            r.gap.as_secs_f64()
        );
    }
}

impl Observer for SessionObserver {
    fn up(&self, n: u64) {
        self.info.bytes_up.fetch_add(n, Ordering::Relaxed);
        self.metrics.add_up(n);
    }
    fn down(&self, n: u64) {
        self.info.bytes_down.fetch_add(n, Ordering::Relaxed);
        self.metrics.add_down(n);
    }
    fn latency_ms(&self, ms: u64) {
        self.metrics.observe_latency_ms(ms);
    }
    fn replayed(&self, r: Replayed) {
        self.replayed.fetch_add(r.to_peer, Ordering::Relaxed);
        add_saturating(&self.replayed_by_client, r.from_peer);
        self.metrics.resume_replayed(r);
        self.audit_resumed(Some(r));
    }
}

/// The `101`'s `x-wsgate-resume: v1`, resumption accepted; for a new session, also
/// `x-wsgate-replay-buffer`, the bytes this server keeps for a replay (the client acknowledges
/// a quarter of it at a time; a resumed leg goes on as its session began).
fn accept_resume(resp: &mut Response, replay_buffer: Option<usize>) {
    let h = resp.headers_mut();
    h.insert(
        resume::HEADER,
        axum::http::HeaderValue::from_static(resume::ACCEPT),
    );
    if let Some(n) = replay_buffer {
        h.insert(REPLAY_BUFFER_HEADER, n.into());
    }
}

fn start_session(st: Arc<AppState>, ready: Ready, ws: WsUpgrade, audit: Audit) -> Response {
    let (mut resp, conn) = ws.accept(ready.echo_protocol.as_deref());
    if ready.resume.is_some() {
        let replay_buffer = st.config.resume.as_ref().map(|r| r.replay_buffer);
        accept_resume(&mut resp, replay_buffer);
    }
    // The connection comes once the `101` is written, which the client can delay by not
    // reading (the HTTP server bounds that write too). An upgrade that does not complete in
    // the handshake timeout lets go of the admission and the target connection, audited.
    let limit = st.config.handshake_timeout;
    let tracker = st.tracker.clone();
    // A spawned task does not inherit the span it was spawned in: it is handed over.
    let span = audit.span.clone();
    let task = async move {
        let why = match tokio::time::timeout(limit, conn).await {
            Ok(Ok(conn)) => return session(st, ready, conn, audit).await,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "not complete within the handshake timeout".to_string(),
        };
        st.metrics.handshake_failed("upgrade_failed");
        info!(
            target: "wsgate::audit",
            event = "session_refused",
            user = %Shown(&ready.who.user),
            cluster = %ready.ask.cluster,
            target_addr = %Shown(&ready.addr),
            peer_addr = %audit.origin.peer,
            client_addr = %audit.origin.client,
            status = StatusCode::SWITCHING_PROTOCOLS.as_u16(),
            reason = "upgrade_failed",
            "refused: the WebSocket upgrade did not complete: {why}"
        );
        // `ready` goes here, and the admission and the target connection with it.
    };
    tracker.spawn(task.instrument(span));
    resp
}

/// A resume let through: the `101`, then its connection handed to the session's task (which
/// takes the live leg over, if there is one). If the upgrade does not complete, the claim is
/// let go and the session stays as it was.
fn start_resume(st: Arc<AppState>, resuming: Resuming, ws: WsUpgrade, audit: Audit) -> Response {
    let (mut resp, conn) = ws.accept(resuming.echo_protocol.as_deref());
    accept_resume(&mut resp, None);
    let limit = st.config.handshake_timeout;
    let tracker = st.tracker.clone();
    let span = audit.span.clone();
    let task = async move {
        let (why, reason) = match tokio::time::timeout(limit, conn).await {
            Ok(Ok(conn)) => {
                let leg = NewLeg {
                    conn,
                    origin: audit.origin,
                    span: audit.span.clone(),
                };
                match resuming.claim.hand_over(leg) {
                    Ok(()) => return,
                    // Its connection goes with the leg given back: the client sees it close and
                    // its next resume gets 404.
                    Err(_) => (ENDED_WHY.to_string(), ENDED),
                }
            }
            Ok(Err(e)) => (
                format!("the WebSocket upgrade did not complete: {e}"),
                "upgrade_failed",
            ),
            Err(_) => (
                "the WebSocket upgrade did not complete within the handshake timeout".to_string(),
                "upgrade_failed",
            ),
        };
        let (user, cluster) = (audit.user.as_deref(), audit.cluster.as_deref());
        refused_after_101(&st, user, cluster, &audit.origin, reason, &why);
    };
    tracker.spawn(task.instrument(span));
    resp
}

/// A resume refused after its `101` (the upgrade failed, or the session ended as it came):
/// counted and audited; its connection, if it has one, is closed without a close frame.
fn refused_after_101(
    st: &AppState,
    user: Option<&str>,
    cluster: Option<&str>,
    origin: &Origin,
    reason: &'static str,
    why: &str,
) {
    st.metrics.handshake_failed(reason);
    info!(
        target: "wsgate::audit",
        event = "resume_refused",
        user = user.map(|u| display(Shown(u))),
        cluster = cluster.map(display),
        peer_addr = %origin.peer,
        client_addr = %origin.client,
        status = StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        reason,
        "resume refused: {why}"
    );
}

/// The refusal of a resume whose leg the session could not take, as it ended between the
/// checks and the hand-over or in the moment after it: its reason, and its words.
const ENDED: &str = "session_ended";
const ENDED_WHY: &str = "the session ended while it was being resumed";

async fn session(st: Arc<AppState>, ready: Ready, socket: Connection, audit: Audit) {
    let Ready {
        who,
        ask,
        addr,
        stream,
        admission,
        resume,
        ..
    } = ready;
    let origin = audit.origin;
    let mut cfg = st.config.bridge.clone();
    // A resumable session is raw binary frames plus text control messages, whatever the
    // client's version says (docs/resume.md).
    cfg.framing = match resume {
        Some(_) => Framing::Raw,
        None => Framing::for_client_version(ask.client_version),
    };
    let listed = st
        .registry
        .list_session(audit.id, &who.user, &ask.cluster, ask.worker, &addr);
    st.metrics.session_opened();
    info!(
        target: "wsgate::audit",
        event = "session_start",
        id = audit.id,
        user = %Shown(&who.user),
        cluster = %ask.cluster,
        worker = ask.worker,
        target_addr = %Shown(&addr),
        peer_addr = %origin.peer,
        client_addr = %origin.client,
        framing = ?cfg.framing,
        resumable = resume.is_some(),
        "session started"
    );
    let started = Instant::now();
    let obs = SessionObserver {
        info: Arc::clone(&listed.info),
        metrics: Arc::clone(&st.metrics),
        resumed: Mutex::new(None),
        replayed: AtomicU64::new(0),
        replayed_by_client: AtomicU64::new(0),
    };
    let shutdown = st.close_all.child_token();
    let reason = match (resume, &st.config.resume) {
        (Some(terms), Some(settings)) => {
            let creds = terms.creds;
            let owner = Owner {
                user: who.user.clone(),
                cluster: ask.cluster.clone(),
                worker: ask.worker,
            };
            let legs = Legs {
                st: &st,
                handle: st.resumable.register(&creds, owner),
                obs: &obs,
                window: settings.window,
                shutdown: &shutdown,
            };
            let resume = ResumeConfig {
                replay_buffer: settings.replay_buffer,
                peer_replay_buffer: terms.client_replay_buffer,
            };
            let bridge = Bridge::new(stream, &cfg, Some(resume));
            legs.run(bridge, socket, creds.greeting()).await
        }
        _ => bridge(socket, stream, &cfg, &obs, shutdown).await,
    };
    st.metrics.session_closed(reason.label());
    info!(
        target: "wsgate::audit",
        event = "session_end",
        id = audit.id,
        user = %Shown(&who.user),
        cluster = %ask.cluster,
        worker = ask.worker,
        target_addr = %Shown(&addr),
        peer_addr = %origin.peer,
        client_addr = %origin.client,
        bytes_up = listed.info.bytes_up.load(Ordering::Relaxed),
        bytes_down = listed.info.bytes_down.load(Ordering::Relaxed),
        duration_ms = started.elapsed().as_millis() as u64,
        legs = listed.info.legs.load(Ordering::Relaxed),
        bytes_replayed = obs.replayed.load(Ordering::Relaxed),
        bytes_replayed_by_client = obs.replayed_by_client.load(Ordering::Relaxed),
        close_code = reason.code(),
        close_reason = reason.label(),
        "session ended"
    );
    drop(listed);
    drop(admission);
}

/// A resumable session's legs, run one after the other on its [`Bridge`].
struct Legs<'a> {
    st: &'a AppState,
    /// Where resumes find the session and hand it its next leg.
    handle: resume::Handle<NewLeg>,
    obs: &'a SessionObserver,
    /// How long a lost leg's session waits for its client (`--resume-window`).
    window: Duration,
    /// The end of the grace period at shutdown.
    shutdown: &'a CancellationToken,
}

/// How a parked session's wait ended.
enum Parked {
    Resumed(NewLeg),
    /// For good: the window or a limit of the session ran out, the grace period ended, or the
    /// target failed.
    Over(CloseReason),
}

impl Legs<'_> {
    /// Runs legs until the session ends for good: each lost leg parks the session for the
    /// window, and a leg a resume hands over in time goes on from where the last one stopped.
    /// A resume while a leg is live takes it over (that leg ends as lost, the next one starts
    /// at once).
    async fn run(
        self,
        mut bridge: Bridge<TcpStream>,
        first: Connection,
        greeting: String,
    ) -> CloseReason {
        let (mut conn, mut leg) = (
            first,
            Leg::First {
                greeting: Some(greeting),
            },
        );
        loop {
            let takeover = self.handle.start_leg();
            let end = bridge
                .run_leg(conn, leg, self.obs, self.shutdown, &takeover)
                .await;
            self.obs.leg_over();
            if !end.lost {
                self.end();
                return end.reason;
            }
            self.handle.park();
            let lost = Instant::now();
            self.obs.info.parked.store(true, Ordering::Relaxed);
            self.st.metrics.session_parked();
            info!(
                reason = end.reason.label(),
                window_seconds = self.window.as_secs_f64(),
                "the client's connection was lost; the session waits for it to resume"
            );
            let parked = self.park(&mut bridge).await;
            self.obs.info.parked.store(false, Ordering::Relaxed);
            self.st.metrics.session_unparked();
            let next = match parked {
                Parked::Resumed(next) => next,
                Parked::Over(reason) => {
                    if reason == CloseReason::ResumeExpired {
                        self.st.metrics.resume(ResumeResult::Expired);
                    }
                    self.end();
                    bridge.close(self.obs).await;
                    return reason;
                }
            };
            let gap = lost.elapsed();
            self.st.metrics.resume(ResumeResult::Ok);
            self.st.metrics.observe_resume_gap(gap);
            let number = self.obs.info.legs.fetch_add(1, Ordering::Relaxed) + 1;
            self.obs.expect_resume(Resumed {
                origin: next.origin,
                gap,
                leg: number,
            });
            conn = next.conn;
            leg = Leg::Resumed;
        }
    }

    /// The session is over for good; a resume that handed its leg over in the same moment is
    /// refused.
    fn end(&self) {
        if let Some(leg) = self.handle.end() {
            let i = &self.obs.info;
            let (user, cluster) = (Some(i.user.as_str()), Some(i.cluster.as_str()));
            let refuse =
                || refused_after_101(self.st, user, cluster, &leg.origin, ENDED, ENDED_WHY);
            // Under the resume request's span, as a refusal before the hand-over is.
            leg.span.in_scope(refuse);
        }
    }

    /// Waits for a resume while writing to the target what the lost leg left for it; the
    /// target is not read (its output waits in its socket). The wait ends at the window, or
    /// sooner at the session's own limit (its maximum age, its idle timeout: a client cannot
    /// stretch them by going away). A resume in progress then is waited for.
    async fn park(&self, bridge: &mut Bridge<TcpStream>) -> Parked {
        let window = tokio::time::Instant::now() + self.window;
        let (until, why) = match bridge.limit() {
            Some((at, why)) if at < window => (at, why),
            _ => (window, CloseReason::ResumeExpired),
        };
        let (mut timed_out, mut flushed) = (false, false);
        loop {
            if let Some(next) = self.handle.take_leg() {
                return Parked::Resumed(next);
            }
            if timed_out && self.handle.expire() {
                return Parked::Over(why);
            }
            tokio::select! {
                () = self.handle.changed() => {}
                () = tokio::time::sleep_until(until), if !timed_out => timed_out = true,
                () = self.shutdown.cancelled() => return Parked::Over(CloseReason::Shutdown),
                done = bridge.flush_target(), if !flushed => match done {
                    Ok(()) => flushed = true,
                    Err(e) => {
                        warn!(error = %e, "writing to the target failed while the session was parked");
                        return Parked::Over(CloseReason::TargetError);
                    }
                },
            }
        }
    }
}

/// A resumed leg, for its `session_resumed` audit line.
struct Resumed {
    /// Where the resume came from.
    origin: Origin,
    /// From the last leg's loss to this one's start.
    gap: Duration,
    /// This leg's number (the first is 1).
    leg: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_table() {
        struct Case {
            query: &'static str,
            /// The cluster of the generic endpoint's path, if the request came that way.
            path_cluster: Option<&'static str>,
            want: Result<Ask, Reject>,
        }
        fn ask(cluster: &str, worker: u32, client_version: Option<u32>) -> Result<Ask, Reject> {
            Ok(Ask {
                cluster: cluster.into(),
                worker,
                client_version,
            })
        }
        let cases = [
            Case {
                query: "cluster_name=prod&worker=0&client_version=62",
                path_cluster: None,
                want: ask("prod", 0, Some(62)),
            },
            Case {
                query: "cluster_name=prod",
                path_cluster: None,
                want: ask("prod", 0, None),
            },
            Case {
                query: "cluster_name=prod&worker=2&no_redirect=1",
                path_cluster: None,
                want: ask("prod", 2, None),
            },
            Case {
                query: "worker=1",
                path_cluster: Some("dev"),
                want: ask("dev", 1, None),
            },
            Case {
                query: "cluster_name=evil",
                path_cluster: Some("dev"),
                want: ask("dev", 0, None),
            },
            Case {
                query: "worker=0",
                path_cluster: None,
                want: Err(Reject::MissingCluster),
            },
            Case {
                query: "cluster_name=10.0.0.1:22",
                path_cluster: None,
                want: Err(Reject::InvalidCluster),
            },
            Case {
                query: "cluster_name=a&cluster_name=b",
                path_cluster: None,
                want: Err(Reject::BadRequest("a query parameter is repeated")),
            },
            Case {
                query: "cluster_name=a&worker=x",
                path_cluster: None,
                want: Err(Reject::BadRequest("worker must be a number")),
            },
            Case {
                query: "cluster_name=a&client_version=-1",
                path_cluster: None,
                want: Err(Reject::BadRequest("client_version must be a number")),
            },
            Case {
                query: "cluster_name=%zz",
                path_cluster: None,
                want: Err(Reject::BadRequest("malformed query string")),
            },
        ];
        for c in cases {
            let got = parse_query(Some(c.query), c.path_cluster.map(String::from));
            assert_eq!(got, c.want, "{}", c.query);
        }
    }
}
