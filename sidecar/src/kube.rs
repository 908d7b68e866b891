//! Kubernetes backends (kube-rs): `TokenReview` authentication, `SubjectAccessReview`
//! authorization, and central mode's pod lookup — implementations of the sidecar's traits.
//!
//! All three fail closed: an unreachable, failing or silent API server is a 503, never a pass,
//! and never a wait longer than `--kube-timeout`. Tests script the API server's replies with
//! `tower-test` (no cluster here) and check each request sent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tracing::{warn, Level, Metadata};
use tracing_subscriber::filter::FilterFn;
use wsgate_proto::token::BearerToken;

use crate::auth::{Authenticator, Identity};
use crate::authz::Authorizer;
use crate::error::Reject;
use crate::metrics::{ReviewMetrics, ReviewResult};
use crate::target::TargetResolver;

/// Failed reviews are remembered this long, so a flood of bad tokens does not become a flood
/// of API calls.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Cache entries at most; past it expired entries go, then everything (never unbounded).
const CACHE_MAX: usize = 10_000;

/// The API server's client and how long one call may take. kube-rs sets no response timeout:
/// without this, an API server that accepts connections but never answers held each handshake
/// until `--handshake-timeout` cut it as a 504 that named nothing; now it is the documented 503
/// (`auth_unavailable` / `resolver_unavailable`) with a log line naming the call.
#[derive(Clone)]
pub struct KubeApi {
    pub client: Client,
    pub timeout: Duration,
}

impl KubeApi {
    /// One API call, bounded by `timeout`. A failure is logged (the error never holds a token)
    /// and becomes `unavailable`: a 503, never a pass.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
        unavailable: Reject,
    ) -> Result<T, Reject> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                warn!(error = %e, "{what} failed");
                Err(unavailable)
            }
            Err(_) => {
                warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "{what} timed out"
                );
                Err(unavailable)
            }
        }
    }

    /// Creates a (cluster-scoped) review object.
    async fn create_review<K>(&self, review: &K, what: &str) -> Result<K, Reject>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let api = Api::<K>::all(self.client.clone());
        self.call(
            what,
            api.create(&PostParams::default(), review),
            Reject::AuthUnavailable,
        )
        .await
    }
}

/// sha256(token) → (identity, or `None` for a rejected token; when it was cached).
type ReviewCache = HashMap<[u8; 32], (Option<Identity>, Instant)>;

/// How many `TokenReview`s may be in flight, and how many a second (`--token-review-*`).
///
/// Every token not in the cache costs one API call, and a flood of distinct bad tokens defeats
/// any cache; past these bounds a lookup is refused with 503 and `Retry-After` instead of
/// being sent. Cached tokens are looked up before the bounds, so they keep working in a flood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReviewLimits {
    /// Reviews in flight at once. A healthy API server answers in milliseconds, so the default
    /// carries hundreds a second; more only pile onto an API server that is already slow.
    pub max_concurrency: usize,
    /// Reviews a second, sustained (the token bucket's refill).
    pub rate: f64,
    /// Reviews that may go at once after a quiet spell (the bucket's size): a whole team
    /// reconnecting after a restart, when the cache is empty.
    pub burst: u32,
}

impl ReviewLimits {
    /// The defaults, also those of `--token-review-max-concurrency`, `--token-review-rate` and
    /// `--token-review-burst`.
    pub const DEFAULT: ReviewLimits = ReviewLimits {
        max_concurrency: 8,
        rate: 20.0,
        burst: 40,
    };
}

impl Default for ReviewLimits {
    fn default() -> Self {
        ReviewLimits::DEFAULT
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    /// Tokens now (fractional: refilled continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// The two bounds of [`ReviewLimits`], enforced.
struct Throttle {
    /// One permit per review in flight; taken without waiting (waiting callers would hold
    /// connections and handshake slots, and the flood would queue ahead of real users).
    in_flight: tokio::sync::Semaphore,
    /// The rate bound (a lock held for a few arithmetic operations, once per cache miss).
    bucket: Mutex<Bucket>,
    /// As configured, for the bucket's arithmetic and the start-up log.
    limits: ReviewLimits,
    /// `Retry-After` for a throttled caller: the time one token takes to come back, at least 1 s.
    retry_after: u32,
}

impl Throttle {
    fn new(limits: ReviewLimits) -> Throttle {
        let refill = (1.0 / limits.rate).ceil();
        Throttle {
            in_flight: tokio::sync::Semaphore::new(limits.max_concurrency),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limits.burst),
                at: Instant::now(),
            }),
            limits,
            retry_after: if refill.is_finite() {
                refill.clamp(1.0, 3600.0) as u32
            } else {
                1
            },
        }
    }

    /// A permit to send one review, or the refusal.
    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Reject> {
        let throttled = Reject::AuthThrottled(self.retry_after);
        let permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| throttled.clone())?;
        let mut b = self.bucket.lock().map_err(|_| throttled.clone())?;
        let now = Instant::now();
        let refilled = b.tokens + now.duration_since(b.at).as_secs_f64() * self.limits.rate;
        b.tokens = refilled.min(f64::from(self.limits.burst));
        b.at = now;
        if b.tokens < 1.0 {
            return Err(throttled);
        }
        b.tokens -= 1.0;
        Ok(permit)
    }
}

/// Authenticates bearer tokens with a `TokenReview`, caching results briefly.
pub struct TokenReviewer {
    /// The API server that reviews tokens.
    api: KubeApi,
    /// When set, the review must say the token was meant for one of these.
    audiences: Vec<String>,
    /// How long an accepted token is remembered (`--auth-cache-ttl`).
    ttl: Duration,
    /// Keyed by hash so no token is kept in memory past its review.
    cache: Mutex<ReviewCache>,
    /// Bounds the reviews a flood of uncached tokens can send.
    throttle: Throttle,
    /// Lookup results and round trips, rendered on `/metrics`.
    metrics: Arc<ReviewMetrics>,
}

/// Where a `TokenReview` is created (cluster-scoped).
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The `reason` of an API error reply (`Status`), if it is one short word such as
/// `Unauthorized`: never the message or the rest of the body, which may echo the request.
fn status_reason(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let reason = v.get("reason")?.as_str()?;
    (reason.len() <= 64 && reason.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| reason.to_string())
}

impl TokenReviewer {
    pub fn new(api: KubeApi, audiences: Vec<String>, ttl: Duration) -> TokenReviewer {
        TokenReviewer {
            api,
            audiences,
            ttl,
            cache: Mutex::new(HashMap::new()),
            throttle: Throttle::new(ReviewLimits::default()),
            metrics: Arc::new(ReviewMetrics::default()),
        }
    }

    /// The same with other bounds on the reviews sent.
    pub fn limited(mut self, limits: ReviewLimits) -> TokenReviewer {
        self.throttle = Throttle::new(limits);
        self
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Option<Identity>> {
        let cache = self.cache.lock().ok()?;
        let (who, at) = cache.get(key)?;
        let ttl = if who.is_some() {
            self.ttl
        } else {
            NEGATIVE_TTL
        };
        (at.elapsed() < ttl).then(|| who.clone())
    }

    fn remember(&self, key: [u8; 32], who: Option<Identity>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                let ttl = self.ttl.max(NEGATIVE_TTL);
                cache.retain(|_, (_, at)| at.elapsed() < ttl);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(key, (who, Instant::now()));
        }
    }

    /// Sends the review and reads the reply itself rather than through `Api::create`: kube-rs
    /// logs the raw body of a reply it cannot parse (at WARN) and puts error bodies into its
    /// error messages, and a `TokenReview` reply echoes the token. Here no body is ever
    /// logged; a reply that is not a well-formed review fails closed (503).
    async fn review(&self, token: &BearerToken) -> Result<Option<Identity>, Reject> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.expose().to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let body = serde_json::to_vec(&review).map_err(|_| Reject::AuthUnavailable)?;
        let request = kube::core::Request::new(TOKEN_REVIEWS)
            .create(&PostParams::default(), body)
            .map_err(|e| {
                warn!(error = %e, "TokenReview request not built");
                Reject::AuthUnavailable
            })?;
        let client = &self.api.client;
        let call = async {
            let reply = client.send(request.map(kube::client::Body::from)).await?;
            let status = reply.status();
            let body = reply.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        let (status, body) = self
            .api
            .call("TokenReview", call, Reject::AuthUnavailable)
            .await?;
        if !status.is_success() {
            warn!(
                status = status.as_u16(),
                reason = status_reason(&body).as_deref(),
                "TokenReview failed"
            );
            return Err(Reject::AuthUnavailable);
        }
        let reply: TokenReview = serde_json::from_slice(&body).map_err(|e| {
            // Where, not what: serde's message quotes the offending value.
            warn!(
                category = ?e.classify(),
                line = e.line(),
                column = e.column(),
                "TokenReview reply is not a valid TokenReview (its body is not logged: it echoes the token)"
            );
            Reject::AuthUnavailable
        })?;
        let Some(status) = reply.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Ok(None);
            }
        }
        let user = status.user.unwrap_or_default();
        Ok(user.username.filter(|u| !u.is_empty()).map(|u| Identity {
            user: u,
            groups: user.groups.unwrap_or_default(),
        }))
    }
}

#[async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: Option<&BearerToken>) -> Result<Identity, Reject> {
        let token = token.ok_or(Reject::MissingCredentials)?;
        let key: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let who = match self.cached(&key) {
            Some(who) => who,
            None => {
                let _permit = self.throttle.admit().inspect_err(|_| {
                    self.metrics.count(ReviewResult::Throttled);
                })?;
                let started = Instant::now();
                let reviewed = self.review(token).await;
                self.metrics.observe(started.elapsed());
                self.metrics.count(match &reviewed {
                    Ok(Some(_)) => ReviewResult::Authenticated,
                    Ok(None) => ReviewResult::Rejected,
                    Err(_) => ReviewResult::Failed,
                });
                let who = reviewed?;
                self.remember(key, who.clone());
                who
            }
        };
        who.ok_or(Reject::InvalidCredentials)
    }

    fn describe(&self) -> String {
        let l = &self.throttle.limits;
        format!(
            "Kubernetes TokenReview (audiences {:?}, cache {}s, at most {} in flight and {}/s, burst {})",
            self.audiences,
            self.ttl.as_secs(),
            l.max_concurrency,
            l.rate,
            l.burst
        )
    }

    fn review_metrics(&self) -> Option<Arc<ReviewMetrics>> {
        Some(Arc::clone(&self.metrics))
    }
}

/// Asks the API server whether the user may `verb` the cluster (as a resource name).
pub struct AccessReviewer {
    pub api: KubeApi,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
}

#[async_trait]
impl Authorizer for AccessReviewer {
    async fn authorize(&self, who: &Identity, cluster: &str) -> Result<(), Reject> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(self.verb.clone()),
                    group: Some(self.group.clone()),
                    resource: Some(self.resource.clone()),
                    name: Some(cluster.to_string()),
                    namespace: self.namespace.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reply = self
            .api
            .create_review(&review, "SubjectAccessReview")
            .await?;
        match reply.status {
            Some(s) if s.allowed && s.denied != Some(true) => Ok(()),
            _ => Err(Reject::Forbidden),
        }
    }

    fn describe(&self) -> String {
        format!(
            "SubjectAccessReview ({} {}/{})",
            self.verb, self.group, self.resource
        )
    }
}

/// Central mode: a cluster is the set of pods matching a label selector template; worker 0 is
/// the head, worker n the n-th of the others in a stable (natural name) order.
pub struct PodResolver {
    pub api: KubeApi,
    pub namespace: String,
    /// e.g. `skypilot-cluster-name={cluster}`; the cluster is a validated RFC 1123 label, so
    /// it cannot change the selector's meaning.
    pub selector_template: String,
    /// e.g. `ray-node-type=head` (SkyPilot); without it, worker n is the n-th pod.
    pub head_label: Option<(String, String)>,
    pub port: u16,
}

/// Sort key: `x-worker2` before `x-worker10`.
fn natural_key(name: &str) -> (String, u64, String) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0), name.to_string())
}

fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

impl PodResolver {
    fn pick<'p>(&self, pods: &'p [Pod], worker: u32) -> Option<&'p Pod> {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        let is_head = |p: &Pod| {
            self.head_label
                .as_ref()
                .is_some_and(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        };
        let mut others: Vec<&Pod> = pods.iter().filter(|p| !is_head(p)).collect();
        others.sort_by_key(|p| natural_key(&name(p)));
        if self.head_label.is_none() {
            return others.get(worker as usize).copied();
        }
        if worker == 0 {
            let mut heads: Vec<&Pod> = pods.iter().filter(|p| is_head(p)).collect();
            heads.sort_by_key(|p| natural_key(&name(p)));
            return heads.first().copied();
        }
        others.get(worker as usize - 1).copied()
    }
}

#[async_trait]
impl TargetResolver for PodResolver {
    async fn resolve(&self, cluster: &str, worker: u32) -> Result<String, Reject> {
        let selector = self.selector_template.replace("{cluster}", cluster);
        let pods: Api<Pod> = Api::namespaced(self.api.client.clone(), &self.namespace);
        let pods = self
            .api
            .call(
                &format!("pod lookup ({selector})"),
                pods.list(&ListParams::default().labels(&selector)),
                Reject::ResolverUnavailable,
            )
            .await?
            .items;
        if pods.is_empty() {
            return Err(Reject::UnknownCluster);
        }
        let pod = self
            .pick(&pods, worker)
            .ok_or(Reject::UnknownWorker(worker))?;
        if !is_ready(pod) {
            return Err(Reject::TargetNotReady);
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .ok_or(Reject::TargetNotReady)?;
        Ok(match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{ip}:{}", self.port),
        })
    }

    fn describe(&self) -> String {
        format!(
            "pods in {} matching {:?}, port {}",
            self.namespace, self.selector_template, self.port
        )
    }
}

/// Libraries of the Kubernetes client's HTTP stack that print request or response bodies or
/// headers at some level, and the most verbose level each may log at. A `TokenReview` request
/// carries the caller's token and its reply echoes it; every request carries the sidecar's own
/// service-account token. kube-rs logs a reply it cannot parse at WARN, error bodies at DEBUG
/// and more at TRACE; the HTTP, HTTP/2 and TLS libraries below it dump messages at DEBUG and
/// TRACE. kube-rs's own ERROR lines (a failed call's status) carry no body.
const QUIET_TARGETS: [(&str, Level); 10] = [
    ("kube_client", Level::ERROR),
    ("kube", Level::ERROR),
    ("hyper", Level::INFO),
    ("hyper_util", Level::INFO),
    ("h2", Level::INFO),
    ("tower", Level::INFO),
    ("tower_http", Level::INFO),
    ("reqwest", Level::INFO),
    ("rustls", Level::INFO),
    ("http_body_util", Level::INFO),
];

/// Whether an event or span may be logged at all: false for [`QUIET_TARGETS`] above their
/// level, whatever `WSGATE_LOG` asks for.
pub fn may_log(meta: &Metadata<'_>) -> bool {
    allowed(meta.target(), *meta.level())
}

fn allowed(target: &str, level: Level) -> bool {
    for (name, most) in QUIET_TARGETS {
        let inside = target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        if inside {
            return level <= most;
        }
    }
    true
}

/// [`may_log`] as a global filter, layered over the subscriber beside `WSGATE_LOG`'s
/// `EnvFilter` (which cannot be relied on for this: a more specific directive, or a span
/// directive, would re-enable a target that a general one turned down).
pub fn log_guard() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    FilterFn::new(may_log as fn(&Metadata<'_>) -> bool)
}

#[cfg(test)]
mod tests {
    //! The Kubernetes API server cannot run here: these tests script its replies with
    //! `tower-test` and assert every request the kube-rs client sends (method, path, body).
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (KubeApi, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = KubeApi {
            client: Client::new(svc, "default"),
            timeout: Duration::from_secs(5),
        };
        (api, handle)
    }

    /// Answers the next request after checking it; returns its JSON body.
    async fn answer(
        handle: &mut Handle,
        method: &str,
        path: &str,
        status: u16,
        reply: Value,
    ) -> Value {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method().as_str(), method);
        assert_eq!(req.uri().path(), path);
        let query = req.uri().query().map(String::from);
        let body = req.into_body().collect_bytes().await.unwrap();
        let sent: Value = if body.is_empty() {
            json!({"query": query})
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        sent
    }

    fn token(t: &str) -> BearerToken {
        BearerToken::new(t.to_string())
    }

    #[tokio::test]
    async fn token_review_accepts_caches_and_checks_audiences() {
        let (api, mut h) = mock();
        let tr = TokenReviewer::new(api, vec!["wsgate".into()], Duration::from_secs(60));
        let server = async {
            let sent = answer(
                &mut h,
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                201,
                json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "status": {"authenticated": true, "audiences": ["wsgate"],
                               "user": {"username": "alice", "groups": ["sre"]}}
                }),
            )
            .await;
            assert_eq!(sent["spec"]["token"], "t1");
            assert_eq!(sent["spec"]["audiences"], json!(["wsgate"]));
            // An authenticated token for another audience is refused.
            answer(&mut h, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", 201, json!({
                "status": {"authenticated": true, "audiences": ["other"], "user": {"username": "bob"}}
            })).await;
            answer(
                &mut h,
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                201,
                json!({
                    "status": {"authenticated": false, "error": "token expired"}
                }),
            )
            .await;
        };
        let client = async {
            let who = tr.authenticate(Some(&token("t1"))).await.unwrap();
            assert_eq!(
                who,
                Identity {
                    user: "alice".into(),
                    groups: vec!["sre".into()]
                }
            );
            // Cached: no second request for t1 (the mock would hang on an unanswered one).
            assert_eq!(
                tr.authenticate(Some(&token("t1"))).await.unwrap().user,
                "alice"
            );
            assert_eq!(
                tr.authenticate(Some(&token("t2"))).await,
                Err(Reject::InvalidCredentials)
            );
            assert_eq!(
                tr.authenticate(Some(&token("t3"))).await,
                Err(Reject::InvalidCredentials)
            );
            assert_eq!(tr.authenticate(None).await, Err(Reject::MissingCredentials));
        };
        tokio::join!(server, client);
    }

    #[tokio::test]
    async fn token_review_fails_closed_and_positive_cache_expires() {
        let (api, mut h) = mock();
        let tr = TokenReviewer::new(api, vec![], Duration::from_millis(50));
        let server = async {
            let ok = json!({"status": {"authenticated": true, "user": {"username": "alice"}}});
            let sent = answer(
                &mut h,
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                201,
                ok.clone(),
            )
            .await;
            assert!(sent["spec"].get("audiences").is_none());
            // After expiry the token is reviewed again; this time the API server is failing.
            answer(&mut h, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", 500, json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd down", "code": 500
            })).await;
        };
        let client = async {
            assert!(tr.authenticate(Some(&token("t"))).await.is_ok());
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert_eq!(
                tr.authenticate(Some(&token("t"))).await,
                Err(Reject::AuthUnavailable)
            );
        };
        tokio::join!(server, client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_api_server_is_a_503_after_the_timeout_not_a_hang() {
        let (mut api, mut h) = mock();
        api.timeout = Duration::from_secs(3);
        let tr = TokenReviewer::new(api.clone(), vec![], Duration::from_secs(60));
        let pods = PodResolver {
            api,
            namespace: "ns".into(),
            selector_template: "c={cluster}".into(),
            head_label: None,
            port: 22,
        };
        // The API server takes each request and never answers (held until the test ends).
        let server = async {
            let first = h.next_request().await.expect("a review");
            let second = h.next_request().await.expect("a pod list");
            (first, second)
        };
        let client = async {
            let started = tokio::time::Instant::now();
            assert_eq!(
                tr.authenticate(Some(&token("t"))).await,
                Err(Reject::AuthUnavailable)
            );
            assert_eq!(
                pods.resolve("prod", 0).await,
                Err(Reject::ResolverUnavailable)
            );
            assert_eq!(started.elapsed(), Duration::from_secs(6));
        };
        let (_held, ()) = tokio::join!(server, client);
    }

    #[tokio::test]
    async fn subject_access_review_asks_for_the_cluster() {
        let (api, mut h) = mock();
        let sar = AccessReviewer {
            api,
            verb: "ssh".into(),
            group: "wsgate.io".into(),
            resource: "clusters".into(),
            namespace: None,
        };
        let who = Identity {
            user: "alice".into(),
            groups: vec!["sre".into()],
        };
        let server = async {
            let sent = answer(
                &mut h,
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                201,
                json!({"status": {"allowed": true}}),
            )
            .await;
            assert_eq!(sent["spec"]["user"], "alice");
            assert_eq!(sent["spec"]["groups"], json!(["sre"]));
            assert_eq!(
                sent["spec"]["resourceAttributes"],
                json!({
                    "verb": "ssh", "group": "wsgate.io", "resource": "clusters", "name": "prod"
                })
            );
            answer(
                &mut h,
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                201,
                json!({"status": {"allowed": false, "reason": "no RBAC"}}),
            )
            .await;
            answer(
                &mut h,
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                503,
                json!({"kind": "Status", "status": "Failure", "code": 503}),
            )
            .await;
        };
        let client = async {
            assert_eq!(sar.authorize(&who, "prod").await, Ok(()));
            assert_eq!(sar.authorize(&who, "prod").await, Err(Reject::Forbidden));
            assert_eq!(
                sar.authorize(&who, "prod").await,
                Err(Reject::AuthUnavailable)
            );
        };
        tokio::join!(server, client);
    }

    fn pod(name: &str, head: bool, ready: bool, ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {
                "skypilot-cluster-name": "prod",
                "ray-node-type": if head { "head" } else { "worker" }}},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        })
    }

    #[tokio::test]
    async fn pods_resolve_head_and_workers_in_natural_order() {
        let (api, mut h) = mock();
        let r = PodResolver {
            api,
            namespace: "skypilot".into(),
            selector_template: "skypilot-cluster-name={cluster}".into(),
            head_label: Some(("ray-node-type".into(), "head".into())),
            port: 22,
        };
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod("prod-worker10", false, true, "10.0.0.10"),
            pod("prod-worker2", false, false, "10.0.0.2"),
            pod("prod-head", true, true, "10.0.0.1"),
            pod("prod-worker1", false, true, "fd00::1"),
        ]});
        let server = async {
            for _ in 0..5 {
                let sent = answer(
                    &mut h,
                    "GET",
                    "/api/v1/namespaces/skypilot/pods",
                    200,
                    list.clone(),
                )
                .await;
                let q = sent["query"].as_str().unwrap().to_string();
                assert!(
                    q.contains("labelSelector=skypilot-cluster-name%3Dprod"),
                    "{q}"
                );
            }
            answer(
                &mut h,
                "GET",
                "/api/v1/namespaces/skypilot/pods",
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            )
            .await;
            answer(
                &mut h,
                "GET",
                "/api/v1/namespaces/skypilot/pods",
                500,
                json!({"kind": "Status", "status": "Failure", "code": 500}),
            )
            .await;
        };
        let client = async {
            assert_eq!(r.resolve("prod", 0).await.unwrap(), "10.0.0.1:22");
            assert_eq!(r.resolve("prod", 1).await.unwrap(), "[fd00::1]:22");
            assert_eq!(r.resolve("prod", 2).await, Err(Reject::TargetNotReady));
            assert_eq!(r.resolve("prod", 3).await.unwrap(), "10.0.0.10:22");
            assert_eq!(r.resolve("prod", 4).await, Err(Reject::UnknownWorker(4)));
            assert_eq!(r.resolve("prod", 0).await, Err(Reject::UnknownCluster));
            assert_eq!(r.resolve("prod", 0).await, Err(Reject::ResolverUnavailable));
        };
        tokio::join!(server, client);
    }

    #[test]
    fn body_printing_targets_are_held_down_whatever_the_filter() {
        /// A target and level, and whether the guard lets it through.
        struct Case {
            target: &'static str,
            level: Level,
            logged: bool,
        }
        let cases = [
            // kube-rs logs an unparsable reply's raw body here, at WARN.
            Case {
                target: "kube_client::client",
                level: Level::WARN,
                logged: false,
            },
            Case {
                target: "kube_client::client",
                level: Level::DEBUG,
                logged: false,
            },
            Case {
                target: "kube_client::client::builder",
                level: Level::ERROR,
                logged: true,
            },
            Case {
                target: "hyper_util::client::legacy",
                level: Level::DEBUG,
                logged: false,
            },
            Case {
                target: "h2::codec",
                level: Level::TRACE,
                logged: false,
            },
            Case {
                target: "rustls::client",
                level: Level::INFO,
                logged: true,
            },
            Case {
                target: "hyper",
                level: Level::WARN,
                logged: true,
            },
            // Prefixes only count at a path boundary.
            Case {
                target: "hyperion",
                level: Level::TRACE,
                logged: true,
            },
            Case {
                target: "kubectl_like",
                level: Level::DEBUG,
                logged: true,
            },
            Case {
                target: "wsgate_sidecar::server",
                level: Level::TRACE,
                logged: true,
            },
            Case {
                target: "wsgate::audit",
                level: Level::INFO,
                logged: true,
            },
        ];
        for c in cases {
            assert_eq!(
                allowed(c.target, c.level),
                c.logged,
                "{} at {}",
                c.target,
                c.level
            );
        }
    }

    #[tokio::test]
    async fn token_review_bounds_concurrency_and_rate_before_the_api() {
        let (api, mut h) = mock();
        let limits = ReviewLimits {
            max_concurrency: 2,
            rate: 1.0,
            burst: 3,
        };
        let tr = TokenReviewer::new(api, vec![], Duration::from_secs(60)).limited(limits);
        let metrics = crate::metrics::Metrics::with_reviews(tr.review_metrics());
        let rejected = json!({"status": {"authenticated": false}});
        // Three reviews reach the API server, no more: two at once, then the bucket's last.
        let server = async {
            for _ in 0..3 {
                answer(&mut h, "POST", TOKEN_REVIEWS, 201, rejected.clone()).await;
            }
        };
        let client = async {
            let tr = &tr;
            let auth = |t: &'static str| async move { tr.authenticate(Some(&token(t))).await };
            // `a` and `b` are in flight (unanswered) when `c` asks: past the concurrency.
            let (a, b, c) = tokio::join!(auth("a"), auth("b"), auth("c"));
            assert_eq!(a, Err(Reject::InvalidCredentials));
            assert_eq!(b, Err(Reject::InvalidCredentials));
            assert_eq!(c, Err(Reject::AuthThrottled(1)));
            // The bucket (3) has one review left, then none.
            assert_eq!(auth("d").await, Err(Reject::InvalidCredentials));
            assert_eq!(auth("e").await, Err(Reject::AuthThrottled(1)));
            // A token already reviewed is answered from the cache, bucket or not.
            assert_eq!(auth("a").await, Err(Reject::InvalidCredentials));
        };
        tokio::join!(server, client);
        let text = metrics.render();
        for want in [
            "wsgate_token_reviews_total{result=\"rejected\"} 3",
            "wsgate_token_reviews_total{result=\"throttled\"} 2",
            "wsgate_token_review_duration_seconds_count 3",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn a_malformed_review_reply_fails_closed() {
        let (api, mut h) = mock();
        let tr = TokenReviewer::new(api, vec![], Duration::from_secs(60));
        /// A reply the API server (or something posing as it) might send.
        struct Case {
            name: &'static str,
            status: u16,
            reply: Value,
            want: Result<&'static str, Reject>,
        }
        let cases = [
            Case {
                name: "authenticated as a string, token echoed",
                status: 201,
                reply: json!({"spec": {"token": "t"}, "status": {"authenticated": "true",
                              "user": {"username": "mallory"}}}),
                want: Err(Reject::AuthUnavailable),
            },
            Case {
                name: "not JSON",
                status: 201,
                reply: json!("<html>t</html>"),
                want: Err(Reject::AuthUnavailable),
            },
            Case {
                name: "an error status with the token in a non-Status body",
                status: 400,
                reply: json!({"spec": {"token": "t"}}),
                want: Err(Reject::AuthUnavailable),
            },
            Case {
                name: "authenticated without a user name",
                status: 201,
                reply: json!({"status": {"authenticated": true, "user": {}}}),
                want: Err(Reject::InvalidCredentials),
            },
            Case {
                name: "well-formed",
                status: 201,
                reply: json!({"status": {"authenticated": true, "user": {"username": "alice"}}}),
                want: Ok("alice"),
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            // A fresh token each time: nothing comes from the cache.
            let t = token(&format!("t{i}"));
            let server = answer(&mut h, "POST", TOKEN_REVIEWS, c.status, c.reply.clone());
            let (got, _) = tokio::join!(tr.authenticate(Some(&t)), server);
            assert_eq!(
                got.map(|w| w.user).as_deref().map_err(Clone::clone),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["w10", "w2", "w1", "a"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v, ["a", "w1", "w2", "w10"]);
    }
}
