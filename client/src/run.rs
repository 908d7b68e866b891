//! `wsgate proxy` from start to end: the token, each connection (direct or through a proxy,
//! plaintext only where the rule allows), the session between stdio and the server, SkyPilot's
//! redirect (followed once), ssh's hangup, and (when the server accepts it) reconnecting to
//! resume a session whose connection was lost. It parses no flags (`cli` does), touches no
//! frame (`session` does) and keeps the resumption rules (backoff, refusals) in `resume`.
//!
//! Each session runs in one tracing span, `session` (`id`, `user`, `cluster`), and each
//! connection in a `hop` span inside it (`n`, `target`, `client`; a resumed connection stays in
//! its hop's span): every log line of the session carries them. The spans are at ERROR level so that they are on whenever any line is logged
//! (a span below the filter's level is not recorded, and the lines inside it would lose its
//! fields).

use std::future::Future;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{Fuse, FutureExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{field, Instrument};
use url::Url;

use crate::connect::{self, Conn, Request, Resumption};
use crate::credentials::{self, Sources, Token};
use crate::endpoint::{self, Endpoint};
use crate::error::{notice, ClientError};
use crate::proxy::{self, Proxy, Setting};
use crate::resume;
use crate::session::{self, End, LegEnd, Resumable};
use crate::stdio::{self, Input, Output};
use crate::tls;
use wsgate_proto::text;

/// Connections a session may make: the first, and one for a SkyPilot redirect.
const MAX_HOPS: u32 = 2;

/// Everything `wsgate proxy` was told.
#[derive(Debug)]
pub struct Options {
    /// The server URL as given: `https://host[:port][/prefix]`, `http://...`, or a bare host.
    pub server: String,
    /// The cluster, or a host alias whose first label is one (`prod.wsgate`).
    pub cluster: String,
    /// The worker to reach (0: the head).
    pub worker: u32,
    /// The endpoint path after the server URL, `{cluster}` to be filled in.
    pub endpoint: String,
    /// Where the token may come from.
    pub credentials: Sources,
    /// `--proxy`, or the environment's proxy variables.
    pub proxy: Setting,
    /// A CA to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate (announced with a warning).
    pub insecure_skip_tls_verify: bool,
    /// Send a token over plaintext to a remote host, or through a proxy, anyway.
    pub allow_plaintext: bool,
    /// Send the token as a Kubernetes subprotocol entry instead of `Authorization: Bearer`.
    pub token_in_subprotocol: bool,
    /// Extra request headers (names in lower case), for the origin the user gave only.
    pub headers: Vec<(String, String)>,
    /// How long each handshake may take.
    pub connect_timeout: Duration,
    /// Keepalive and buffer sizes.
    pub session: session::Options,
    /// Offer resumption, and how to resume (`None`: `--no-resume`).
    pub resume: Option<resume::Options>,
}

/// Runs the session over this process's stdin and stdout until it ends, ssh hangs up, or it
/// fails.
pub async fn proxy(opts: &Options) -> Result<(), ClientError> {
    proxy_over(opts, || (stdio::stdin(), stdio::stdout()), hangup).await
}

/// [`proxy`] over other stdio: `stdio` and `hangup` are called once per connection.
pub async fn proxy_over<H>(
    opts: &Options,
    mut stdio: impl FnMut() -> (Input, Output),
    mut hangup: impl FnMut() -> H,
) -> Result<(), ClientError>
where
    H: Future<Output = ()> + Send + 'static,
{
    let span = tracing::error_span!(
        "session",
        id = %session_id(),
        user = field::Empty,
        cluster = field::Empty,
    );
    async {
        let endpoint = endpoint::build(&opts.server, &opts.cluster, opts.worker, &opts.endpoint)?;
        let session = tracing::Span::current();
        session.record("cluster", field::display(&endpoint.cluster));
        let token = credentials::resolve(&opts.credentials).await?;
        let user = token.as_ref().map_or("anonymous", |t| t.user.as_str());
        session.record("user", field::display(text::Shown(user)));
        if opts.insecure_skip_tls_verify {
            tracing::warn!("--insecure-skip-tls-verify: the server's identity is NOT checked; anyone on the path can read this session and take the token");
        }
        let mut flow = Flow {
            opts,
            token,
            origin: endpoint.url.clone(),
            tls: None,
        };
        let mut current = endpoint;
        let mut extra: Vec<(String, String)> = Vec::new();
        for n in 1..=MAX_HOPS {
            let hop = tracing::error_span!(
                "hop",
                n,
                target = %current.target(),
                client = field::Empty,
            );
            let (stdin, stdout) = stdio();
            let end = flow
                .hop(n, &current, &extra, stdin, stdout, hangup())
                .instrument(hop)
                .await?;
            match end {
                End::Done => return Ok(()),
                End::Redirect(_) if n == MAX_HOPS => {
                    return Err(ClientError::Protocol("redirected twice".into()))
                }
                End::Redirect(info) => (current, extra) = flow.follow(&info, &current)?,
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// What the connections of one session share.
struct Flow<'a> {
    opts: &'a Options,
    token: Option<Token>,
    /// The origin the user gave: the token and `--header` values go there only.
    origin: Url,
    /// Built when a `wss://` URL first needs it (possibly only after a redirect): a plaintext
    /// loopback session does not read the system's CA store.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Flow<'_> {
    /// Connection number `n` to `to`, then the session on it.
    async fn hop(
        &mut self,
        n: u32,
        to: &Endpoint,
        extra: &[(String, String)],
        stdin: Input,
        stdout: Output,
        hangup: impl Future<Output = ()> + Send + 'static,
    ) -> Result<End, ClientError> {
        let opts = self.opts;
        let proxy = proxy::choose(&opts.proxy, &to.url, |k| std::env::var(k).ok())?;
        // After a redirect, the headers it names may carry credentials of their own.
        let sends_credentials = n > 1 || self.token.is_some();
        check_plaintext(to, sends_credentials, opts.allow_plaintext, proxy.as_ref())?;
        if !to.plaintext && self.tls.is_none() {
            self.tls = Some(tls::client_config(
                opts.ca_file.as_deref(),
                opts.insecure_skip_tls_verify,
            )?);
        }
        // The user's credentials (token, --header) go to the origin they were given for, and
        // to a redirect that stays on it; never to another origin.
        let same_origin = endpoint::same_origin(&self.origin, &to.url);
        let token = self.token.as_ref().filter(|_| same_origin);
        if let Some(p) = &proxy {
            tracing::info!(proxy = %p.described(), "connecting through a proxy");
        }
        tracing::info!(
            url = %to.shown_url(),
            token_source = token.map_or("none", |t| t.source.as_str()),
            "connecting"
        );
        let req = Request {
            endpoint: to,
            endpoint_path: &opts.endpoint,
            token,
            token_in_subprotocol: opts.token_in_subprotocol,
            headers: if same_origin { &opts.headers } else { &[] },
            tls: if to.plaintext { None } else { self.tls.clone() },
            timeout: opts.connect_timeout,
            extra,
            proxy: proxy.as_ref(),
            cross_origin: !same_origin,
            resumption: match opts.resume {
                Some(_) => Resumption::Offer,
                None => Resumption::Off,
            },
            route_header: opts.resume.as_ref().map(|r| r.route_header.as_str()),
        };
        let conn = connect::open(&req).await?;
        if let Some(local) = conn.local {
            tracing::Span::current().record("client", field::display(local));
        }
        tracing::info!("connected");
        match &opts.resume {
            Some(r) if conn.resume.as_deref() == Some(resume::ACCEPTED) => {
                tracing::info!("the server accepted resumption");
                resumable(&req, r, conn, stdin, stdout, &opts.session, hangup).await
            }
            _ => {
                session::run(
                    conn.io,
                    conn.read_ahead,
                    stdin,
                    stdout,
                    &opts.session,
                    hangup,
                )
                .await
            }
        }
    }

    /// Where a redirect frame sends the session, and the headers it names.
    fn follow(
        &self,
        info: &serde_json::Value,
        from: &Endpoint,
    ) -> Result<(Endpoint, Vec<(String, String)>), ClientError> {
        let url = info["url"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol("redirect frame without url".into()))?;
        let to = endpoint::redirect_target(url, &from.cluster)?;
        let keeps = endpoint::same_origin(&self.origin, &to.url);
        tracing::info!(
            url = %to.shown_url(),
            same_origin = keeps,
            "following the server's redirect{}",
            if keeps { "" } else { " (another origin: the token and --header values stay here)" }
        );
        let headers = info["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok((to, headers))
    }
}

/// A session the server can resume: its legs, and after each lost one a reconnect (the same
/// request as the first, plus the ticket and the route) until it is back, refused, or
/// `--resume-timeout` passes. ssh hanging up ends it normally at any point.
async fn resumable(
    req: &Request<'_>,
    r: &resume::Options,
    conn: Conn,
    stdin: Input,
    stdout: Output,
    opts: &session::Options,
    hangup: impl Future<Output = ()>,
) -> Result<End, ClientError> {
    // One hangup for every leg and every wait; fused, since a wait may poll it after a leg.
    let mut hangup = pin!(hangup.fuse());
    let route = conn.route;
    let mut session = Resumable::new(stdin, stdout, opts, conn.replay_buffer);
    let (mut io, mut ahead, mut resumed) = (conn.io, conn.read_ahead, false);
    loop {
        let why;
        (session, why) = match session.run_leg(io, ahead, resumed, hangup.as_mut()).await {
            LegEnd::Over(end) => return end,
            LegEnd::Lost { session, why } => (*session, why),
        };
        let lost_at = Instant::now();
        let Some(ticket) = session.ticket() else {
            // `run_leg` reports a loss only once the ticket came.
            session.close().await;
            return Err(ClientError::Protocol("the connection was lost".into()));
        };
        tracing::info!(session = ticket.id(), why = %why, "connection lost; resuming");
        notice(&format!("connection lost ({why}); resuming session…"));
        let back = reconnect(
            req,
            r,
            &ticket,
            route.as_deref(),
            &mut session,
            hangup.as_mut(),
            lost_at,
        )
        .await;
        match back {
            Back::Conn(conn) => {
                let gap = lost_at.elapsed();
                tracing::info!(gap_ms = gap.as_millis() as u64, "resumed");
                notice(&format!("resumed after {:.1} s", gap.as_secs_f64()));
                (io, ahead, resumed) = (conn.io, conn.read_ahead, true);
            }
            Back::HungUp => {
                session.close().await;
                return Ok(End::Done);
            }
            Back::Failed(e) => {
                session.close().await;
                return Err(e);
            }
        }
    }
}

/// How the wait for a resumed connection ended.
enum Back {
    /// The server is back and resumes the session.
    Conn(Conn),
    /// ssh hung up meanwhile: a normal end.
    HungUp,
    /// Given up (refused, timed out), or stdout failed.
    Failed(ClientError),
}

/// Reconnects with backoff until the server resumes the session, refuses, or the time is up.
async fn reconnect<I, O, H>(
    req: &Request<'_>,
    r: &resume::Options,
    ticket: &resume::Ticket,
    route: Option<&str>,
    session: &mut Resumable<I, O>,
    mut hangup: Pin<&mut Fuse<H>>,
    lost_at: Instant,
) -> Back
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    H: Future<Output = ()>,
{
    let deadline = lost_at + r.timeout;
    // The system's randomness; without it, no jitter (the middle of the range).
    let mut backoff = resume::Backoff::new(|| getrandom::u32().unwrap_or(u32::MAX / 2));
    let mut flushed = false;
    let mut last: Option<ClientError> = None;
    for attempt in 1u32.. {
        let wait = tokio::time::sleep_until((Instant::now() + backoff.next_delay()).min(deadline));
        if let Err(back) = parked(session, &mut flushed, hangup.as_mut(), wait).await {
            return back;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let attempt_req = Request {
            resumption: Resumption::Resume { ticket, route },
            timeout: req.timeout.min(left),
            ..req.clone()
        };
        let open = connect::open(&attempt_req);
        match parked(session, &mut flushed, hangup.as_mut(), open).await {
            Err(back) => return back,
            Ok(Ok(conn)) if conn.resume.as_deref() == Some(resume::ACCEPTED) => {
                return Back::Conn(conn)
            }
            Ok(Ok(conn)) => {
                // Never replay into a fresh session: close it.
                session::close_unresumed(conn.io).await;
                return Back::Failed(ClientError::Resume {
                    why: format!("the server answered the reconnection with a new session, not this one (its 101 had no {}: {}): it no longer supports resumption, or the request reached another server", resume::HEADER, resume::ACCEPTED),
                });
            }
            Ok(Err(e)) => match resume::verdict(&e) {
                resume::Verdict::Refused => {
                    return Back::Failed(ClientError::Resume {
                        why: resume::refused(&e),
                    })
                }
                resume::Verdict::Retry => {
                    tracing::info!(attempt, error = %e, "reconnecting failed; trying again");
                    last = Some(e);
                }
            },
        }
    }
    Back::Failed(ClientError::Resume {
        why: format!(
            "no working connection within {} (--resume-timeout){}",
            resume::shown(r.timeout),
            last.map(|e| format!("; the last attempt: {e}"))
                .unwrap_or_default()
        ),
    })
}

/// Awaits `fut` while the session is parked: what is still queued for stdout is written
/// meanwhile (once), and ssh hanging up ends the wait.
async fn parked<I, O, H, F>(
    session: &mut Resumable<I, O>,
    flushed: &mut bool,
    mut hangup: Pin<&mut Fuse<H>>,
    fut: F,
) -> Result<F::Output, Back>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    H: Future<Output = ()>,
    F: Future,
{
    let mut fut = pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Ok(v),
            () = &mut hangup => return Err(Back::HungUp),
            r = session.flush_local(), if !*flushed => match r {
                Ok(()) => *flushed = true,
                Err(e) => {
                    return Err(Back::Failed(ClientError::Protocol(format!(
                        "writing to stdout: {e}"
                    ))))
                }
            },
        }
    }
}

/// A short random id for the session's log lines (8 hex digits; the process id if the OS has
/// no randomness to give). The sidecar sends no session id of its own to use instead.
fn session_id() -> String {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        b = std::process::id().to_be_bytes();
    }
    wsgate_proto::hex::encode(&b)
}

/// Resolves on SIGHUP or SIGTERM (ssh hangs up its ProxyCommand when it exits); never if the
/// signals cannot be watched.
async fn hangup() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut hup), Ok(mut term)) => {
            tokio::select! {
                _ = hup.recv() => {},
                _ = term.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}

/// A token goes over plaintext `ws://` only where nothing but this machine sees it (a
/// loopback server, no proxy on the path), or with `--allow-plaintext`.
fn check_plaintext(
    e: &Endpoint,
    has_token: bool,
    allowed: bool,
    proxy: Option<&Proxy>,
) -> Result<(), ClientError> {
    let stays_here = e.loopback && proxy.is_none();
    if e.plaintext && has_token && !stays_here && !allowed {
        return Err(ClientError::PlaintextToken {
            host: e.host.clone(),
            via: proxy.map(Proxy::described),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_rule() {
        let remote = endpoint::build("http://gw.example.com", "a", 0, "x").unwrap();
        let local = endpoint::build("http://127.0.0.1:8080", "a", 0, "x").unwrap();
        let tls = endpoint::build("https://gw.example.com", "a", 0, "x").unwrap();
        assert_eq!(
            check_plaintext(&remote, true, false, None)
                .unwrap_err()
                .exit_code(),
            9
        );
        assert!(check_plaintext(&remote, true, true, None).is_ok());
        assert!(check_plaintext(&remote, false, false, None).is_ok());
        assert!(check_plaintext(&local, true, false, None).is_ok());
        assert!(check_plaintext(&tls, true, false, None).is_ok());
    }

    /// Through a proxy, a loopback server's token would leave the machine in clear (to the
    /// proxy, and to whatever the proxy's loopback is): --allow-plaintext is needed.
    #[test]
    fn a_proxy_voids_the_loopback_exemption() {
        let Setting::Flag(p) =
            proxy::setting_from_flag(Some("http://u:hunter2@proxy.corp:3128")).unwrap()
        else {
            panic!()
        };
        for server in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:80",
        ] {
            let local = endpoint::build(server, "a", 0, "x").unwrap();
            let e = check_plaintext(&local, true, false, Some(&p)).unwrap_err();
            assert_eq!(e.exit_code(), 9, "{server}");
            let m = e.to_string();
            assert!(
                m.contains("through the proxy http://proxy.corp:3128 (from --proxy)")
                    && m.contains("--allow-plaintext")
                    && m.contains("--proxy none")
                    && !m.contains("hunter2"),
                "{m}"
            );
            assert!(check_plaintext(&local, true, true, Some(&p)).is_ok());
            assert!(check_plaintext(&local, false, false, Some(&p)).is_ok());
        }
        let tls = endpoint::build("https://127.0.0.1", "a", 0, "x").unwrap();
        assert!(check_plaintext(&tls, true, false, Some(&p)).is_ok());
    }

    /// End to end through `choose`: the environment's proxy is not used for a loopback
    /// server, so its token over ws:// needs no flag; `--proxy` is, so it does.
    #[test]
    fn the_environment_never_proxies_a_loopback_token() {
        let local = endpoint::build("http://127.0.0.1:8080", "a", 0, "x").unwrap();
        let env = |k: &str| (k == "http_proxy").then(|| "http://proxy.corp:3128".to_string());
        let chosen = proxy::choose(&Setting::FromEnv, &local.url, env).unwrap();
        assert!(chosen.is_none());
        assert!(check_plaintext(&local, true, false, chosen.as_ref()).is_ok());
        let flag = proxy::setting_from_flag(Some("http://proxy.corp:3128")).unwrap();
        let chosen = proxy::choose(&flag, &local.url, env).unwrap();
        assert_eq!(
            check_plaintext(&local, true, false, chosen.as_ref())
                .unwrap_err()
                .exit_code(),
            9
        );
    }

    #[test]
    fn session_ids_are_short_and_differ() {
        let (a, b) = (session_id(), session_id());
        assert!(
            a.len() == 8 && a.chars().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
