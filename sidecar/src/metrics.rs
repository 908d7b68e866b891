//! Prometheus metrics, rendered as text on the admin listener's `/metrics`.
//!
//! Hand-written (a few atomics and histograms) so that the hot path costs one relaxed atomic
//! add per chunk and nothing else; histograms are observed per handshake or per report, never
//! per chunk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bridge::Replayed;

/// Buckets (seconds) of the clients' latency reports. The reports (SkyPilot's type 2 frame,
/// `!BQ`) are whole milliseconds, so no bound below 1 ms could ever split them: a LAN round
/// trip arrives as 0 or 1 and lands in the first bucket. Durations the sidecar measures itself
/// (below) have nanosecond resolution and get sub-millisecond buckets.
const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets (seconds) of durations the sidecar measures itself: from 100 µs (a handshake with
/// a token file and a local sshd takes a few hundred µs; a TokenReview on a LAN about 1 ms) to
/// 10 s (the default handshake timeout).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets (seconds) of the time from a leg's loss to its resume: a gateway rollout or a Wi-Fi
/// change costs a fraction of a second or a few (the client's first attempt comes within
/// 0.25 s), a closed laptop minutes, up to `--resume-window` (3 minutes by default).
const GAP_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 600.0, 3600.0,
];

/// How a resume ended, for `wsgate_resumes_total`: one count per resume request that reached
/// the session checks, and one per parked session whose window ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeResult {
    /// The session was resumed.
    Ok,
    /// No such session (or resumption off).
    Unknown,
    /// The secret did not match.
    BadSecret,
    /// Another user, cluster or worker.
    Forbidden,
    /// Another resume of it was in progress.
    Conflict,
    /// A parked session's window ran out with no resume.
    Expired,
}

impl ResumeResult {
    const ALL: [ResumeResult; 6] = [
        ResumeResult::Ok,
        ResumeResult::Unknown,
        ResumeResult::BadSecret,
        ResumeResult::Forbidden,
        ResumeResult::Conflict,
        ResumeResult::Expired,
    ];

    fn label(self) -> &'static str {
        match self {
            ResumeResult::Ok => "ok",
            ResumeResult::Unknown => "unknown",
            ResumeResult::BadSecret => "bad_secret",
            ResumeResult::Forbidden => "forbidden",
            ResumeResult::Conflict => "conflict",
            ResumeResult::Expired => "expired",
        }
    }
}

/// A histogram of durations over fixed bucket bounds (seconds).
pub struct Histogram {
    /// The buckets' upper bounds, in seconds, ascending.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative: rendering adds them up), one per bound.
    buckets: Box<[AtomicU64]>,
    /// Observations above the last bound (they only count in `+Inf`).
    over: AtomicU64,
    /// Sum of all observations, in nanoseconds (u64: 584 years of them).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// An empty histogram over [`DURATION_BUCKETS`].
    pub fn durations() -> Histogram {
        Histogram::new(&DURATION_BUCKETS)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        self.bounds
            .iter()
            .position(|le| secs <= *le)
            .and_then(|i| self.buckets.get(i))
            .unwrap_or(&self.over)
            .fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Saturating: values can come from clients (latency reports), and a few absurd ones
        // must not wrap the sum back to something plausible.
        let _ = self
            .sum_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(ns))
            });
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (e.g. `result="accepted",`,
    /// ending in a comma, or empty) before `le`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let r = Ordering::Relaxed;
        let mut seen = 0;
        for (le, n) in self.bounds.iter().zip(self.buckets.iter()) {
            seen += n.load(r);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {seen}");
        }
        seen += self.over.load(r);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {seen}");
        let sum = self.sum_ns.load(r) as f64 / 1e9;
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {seen}");
    }
}

/// How one `TokenReview` lookup ended (cache hits are not lookups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewResult {
    /// The API server accepted the token (for our audience).
    Authenticated,
    /// The API server did not.
    Rejected,
    /// No usable answer: unreachable, timed out, an error status, or a reply that did not
    /// parse. The handshake got 503.
    Failed,
    /// Not sent: past `--token-review-max-concurrency` or `--token-review-rate`. The
    /// handshake got 503 with `Retry-After`.
    Throttled,
}

impl ReviewResult {
    const ALL: [ReviewResult; 4] = [
        ReviewResult::Authenticated,
        ReviewResult::Rejected,
        ReviewResult::Failed,
        ReviewResult::Throttled,
    ];

    fn label(self) -> &'static str {
        match self {
            ReviewResult::Authenticated => "authenticated",
            ReviewResult::Rejected => "rejected",
            ReviewResult::Failed => "failed",
            ReviewResult::Throttled => "throttled",
        }
    }
}

/// The `TokenReview` backend's counters, owned by it (`crate::kube::TokenReviewer`) and
/// rendered with the rest when it is the authenticator.
pub struct ReviewMetrics {
    /// Lookups by result, in [`ReviewResult::ALL`] order.
    results: [AtomicU64; 4],
    /// Round trips of the reviews actually sent (throttled ones are not).
    duration: Histogram,
}

impl Default for ReviewMetrics {
    fn default() -> Self {
        ReviewMetrics {
            results: Default::default(),
            duration: Histogram::durations(),
        }
    }
}

impl ReviewMetrics {
    pub fn count(&self, result: ReviewResult) {
        let i = ReviewResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.results[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, d: Duration) {
        self.duration.observe(d);
    }

    fn render(&self, out: &mut String) {
        let name = "wsgate_token_reviews_total";
        let _ = writeln!(
            out,
            "# HELP {name} TokenReview lookups (cache misses), by result.\n# TYPE {name} counter"
        );
        for (i, r) in ReviewResult::ALL.iter().enumerate() {
            let v = self.results[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{result=\"{}\"}} {v}", r.label());
        }
        let name = "wsgate_token_review_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} TokenReview round trips to the API server.\n# TYPE {name} histogram"
        );
        self.duration.render(out, name, "");
    }
}

pub struct Metrics {
    /// Sessions bridging now (`wsgate_sessions_open`).
    sessions_open: AtomicI64,
    /// Sessions bridged since start.
    sessions_total: AtomicU64,
    /// Session bytes from clients to targets.
    bytes_up: AtomicU64,
    /// Session bytes from targets to clients.
    bytes_down: AtomicU64,
    /// Connections open on the session listener, HTTP and upgraded (`--max-connections`
    /// bounds them): how close the cap is.
    connections_open: AtomicI64,
    /// Refusals before the upgrade, by reason.
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Session ends, by close reason.
    closes: Mutex<BTreeMap<&'static str, u64>>,
    /// The round trips SkyPilot-framed clients report (type 2 frames), over
    /// [`LATENCY_BUCKETS`].
    latency: Histogram,
    /// WebSocket handshakes (request head in → `101`), the ones that became sessions: how long
    /// authentication, lookup and the target connect took.
    handshakes_accepted: Histogram,
    /// The same for refused handshakes (a slow refusal is a slow backend or a timeout).
    handshakes_refused: Histogram,
    /// The TokenReview backend's counters, when it is the authenticator.
    reviews: Option<Arc<ReviewMetrics>>,
    /// Sessions whose client connection was lost, waiting for it to resume them (a part of
    /// `sessions_open`).
    sessions_parked: AtomicI64,
    /// Resumes by result, in [`ResumeResult::ALL`] order.
    resumes: [AtomicU64; 6],
    /// Session bytes the sidecar sent its clients again after a resume.
    resume_replayed: AtomicU64,
    /// Session bytes clients said they send again after a resume (their own figures).
    resume_replayed_by_clients: AtomicU64,
    /// From a leg's loss to its resume, over [`GAP_BUCKETS`].
    resume_gap: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions_open: AtomicI64::new(0),
            sessions_total: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections_open: AtomicI64::new(0),
            handshake_failures: Mutex::default(),
            closes: Mutex::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            handshakes_accepted: Histogram::durations(),
            handshakes_refused: Histogram::durations(),
            reviews: None,
            sessions_parked: AtomicI64::new(0),
            resumes: Default::default(),
            resume_replayed: AtomicU64::new(0),
            resume_replayed_by_clients: AtomicU64::new(0),
            resume_gap: Histogram::new(&GAP_BUCKETS),
        }
    }
}

/// Adds `n` to `sum`, stopping at `u64::MAX` rather than wrapping: for figures a peer states
/// (a client's own count of what it sends again), whatever it says.
pub fn add_saturating(sum: &AtomicU64, n: u64) {
    let add = |s: u64| Some(s.saturating_add(n));
    let _ = sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

impl Metrics {
    /// Metrics that also render the authenticator's `TokenReview` counters, if it has some.
    pub fn with_reviews(reviews: Option<Arc<ReviewMetrics>>) -> Metrics {
        Metrics {
            reviews,
            ..Metrics::default()
        }
    }

    pub fn session_opened(&self) {
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self, reason: &'static str) {
        self.sessions_open.fetch_sub(1, Ordering::Relaxed);
        bump(&self.closes, reason);
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        bump(&self.handshake_failures, reason);
    }

    /// One WebSocket handshake, from complete request head to the answer.
    pub fn observe_handshake(&self, took: Duration, accepted: bool) {
        if accepted {
            self.handshakes_accepted.observe(took);
        } else {
            self.handshakes_refused.observe(took);
        }
    }

    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe_latency_ms(&self, ms: u64) {
        self.latency.observe(Duration::from_millis(ms));
    }

    /// A connection was accepted on the session listener.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of the session listener was closed (its socket, whether it was upgraded or
    /// not).
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A session's leg was lost and it waits for its client.
    pub fn session_parked(&self) {
        self.sessions_parked.fetch_add(1, Ordering::Relaxed);
    }

    /// A parked session was resumed, or ended.
    pub fn session_unparked(&self) {
        self.sessions_parked.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn resume(&self, result: ResumeResult) {
        let i = ResumeResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.resumes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A resumed leg's exchange: what the sidecar sent its client again, and what the client
    /// says it sends again (its claim: summed without wrapping, whatever it says).
    pub fn resume_replayed(&self, r: Replayed) {
        self.resume_replayed.fetch_add(r.to_peer, Ordering::Relaxed);
        add_saturating(&self.resume_replayed_by_clients, r.from_peer);
    }

    /// A session was resumed `gap` after its leg was lost.
    pub fn observe_resume_gap(&self, gap: Duration) {
        self.resume_gap.observe(gap);
    }

    pub fn sessions_open(&self) -> i64 {
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let r = Ordering::Relaxed;
        let mut simple = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        simple(
            "wsgate_sessions_open",
            "gauge",
            "Bridged sessions open now.",
            self.sessions_open.load(r).to_string(),
        );
        simple(
            "wsgate_sessions_parked",
            "gauge",
            "Sessions whose client connection was lost, waiting for it to resume them (counted in wsgate_sessions_open too).",
            self.sessions_parked.load(r).to_string(),
        );
        simple(
            "wsgate_resume_replayed_bytes_total",
            "counter",
            "Session bytes sent to clients again after they resumed (what they had not received).",
            self.resume_replayed.load(r).to_string(),
        );
        simple(
            "wsgate_resume_replayed_by_client_bytes_total",
            "counter",
            "Session bytes clients said they sent again after they resumed (what the sidecar had not received).",
            self.resume_replayed_by_clients.load(r).to_string(),
        );
        simple(
            "wsgate_sessions_total",
            "counter",
            "Sessions bridged since start.",
            self.sessions_total.load(r).to_string(),
        );
        simple(
            "wsgate_bytes_up_total",
            "counter",
            "Session bytes from clients to targets.",
            self.bytes_up.load(r).to_string(),
        );
        simple(
            "wsgate_bytes_down_total",
            "counter",
            "Session bytes from targets to clients.",
            self.bytes_down.load(r).to_string(),
        );
        simple(
            "wsgate_connections_open",
            "gauge",
            "Client connections open on the session listener now, HTTP and upgraded (at most --max-connections).",
            self.connections_open.load(r).to_string(),
        );
        let mut labeled =
            |name: &str, help: &str, label: &str, map: &Mutex<BTreeMap<&'static str, u64>>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                if let Ok(m) = map.lock() {
                    for (k, v) in m.iter() {
                        let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                    }
                }
            };
        labeled(
            "wsgate_handshake_failures_total",
            "Requests refused before the upgrade.",
            "reason",
            &self.handshake_failures,
        );
        labeled(
            "wsgate_session_closes_total",
            "Sessions ended, by close reason.",
            "reason",
            &self.closes,
        );
        let name = "wsgate_client_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Round trip reported by SkyPilot-framed clients (type 2), in whole milliseconds.\n# TYPE {name} histogram");
        self.latency.render(&mut out, name, "");
        let name = "wsgate_handshake_duration_seconds";
        let _ = writeln!(out, "# HELP {name} WebSocket handshakes, from complete request head to the answer (authentication, lookup, target connect), by result.\n# TYPE {name} histogram");
        self.handshakes_accepted
            .render(&mut out, name, "result=\"accepted\",");
        self.handshakes_refused
            .render(&mut out, name, "result=\"refused\",");
        let name = "wsgate_resumes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Resumes of sessions, by result (expired: a parked session's window ran out).\n# TYPE {name} counter"
        );
        for (i, result) in ResumeResult::ALL.iter().enumerate() {
            let v = self.resumes[i].load(r);
            let _ = writeln!(out, "{name}{{result=\"{}\"}} {v}", result.label());
        }
        let name = "wsgate_resume_gap_seconds";
        let _ = writeln!(out, "# HELP {name} From the loss of a session's client connection to its resume.\n# TYPE {name} histogram");
        self.resume_gap.render(&mut out, name, "");
        if let Some(reviews) = &self.reviews {
            reviews.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let m = Metrics::default();
        m.session_opened();
        m.session_opened();
        m.session_closed("target_closed");
        m.handshake_failed("invalid_credentials");
        m.add_up(10);
        m.add_down(20);
        m.observe_latency_ms(30);
        let text = m.render();
        for want in [
            "wsgate_sessions_open 1",
            "wsgate_sessions_total 2",
            "wsgate_bytes_up_total 10",
            "wsgate_bytes_down_total 20",
            "wsgate_handshake_failures_total{reason=\"invalid_credentials\"} 1",
            "wsgate_session_closes_total{reason=\"target_closed\"} 1",
            "wsgate_client_latency_seconds_bucket{le=\"0.025\"} 0",
            "wsgate_client_latency_seconds_bucket{le=\"0.05\"} 1",
            "wsgate_client_latency_seconds_bucket{le=\"+Inf\"} 1",
            "wsgate_client_latency_seconds_sum 0.03",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("wsgate_token_reviews_total"),
            "no TokenReview backend"
        );
    }

    /// The clients' latency histogram, line for line: its buckets are cumulative, a report
    /// on a bound counts in that bucket, one above the last only in `+Inf`, and the sum is in
    /// seconds.
    #[test]
    fn client_latency_histogram_text() {
        let m = Metrics::default();
        for ms in [0, 1, 30, 2500, 7000] {
            m.observe_latency_ms(ms);
        }
        let text = m.render();
        let want = "\
# HELP wsgate_client_latency_seconds Round trip reported by SkyPilot-framed clients (type 2), in whole milliseconds.
# TYPE wsgate_client_latency_seconds histogram
wsgate_client_latency_seconds_bucket{le=\"0.001\"} 2
wsgate_client_latency_seconds_bucket{le=\"0.005\"} 2
wsgate_client_latency_seconds_bucket{le=\"0.01\"} 2
wsgate_client_latency_seconds_bucket{le=\"0.025\"} 2
wsgate_client_latency_seconds_bucket{le=\"0.05\"} 3
wsgate_client_latency_seconds_bucket{le=\"0.1\"} 3
wsgate_client_latency_seconds_bucket{le=\"0.25\"} 3
wsgate_client_latency_seconds_bucket{le=\"0.5\"} 3
wsgate_client_latency_seconds_bucket{le=\"1\"} 3
wsgate_client_latency_seconds_bucket{le=\"2.5\"} 4
wsgate_client_latency_seconds_bucket{le=\"5\"} 4
wsgate_client_latency_seconds_bucket{le=\"+Inf\"} 5
wsgate_client_latency_seconds_sum 9.531
wsgate_client_latency_seconds_count 5
";
        assert!(text.contains(want), "want\n{want}\nin\n{text}");
    }

    #[test]
    fn sub_millisecond_durations_land_in_sub_millisecond_buckets() {
        /// One observation and the cumulative bucket lines it must produce.
        struct Case {
            took: Duration,
            accepted: bool,
            want: &'static [&'static str],
        }
        let cases = [
            Case {
                took: Duration::from_micros(80),
                accepted: true,
                want: &[
                    "wsgate_handshake_duration_seconds_bucket{result=\"accepted\",le=\"0.0001\"} 1",
                    "wsgate_handshake_duration_seconds_bucket{result=\"accepted\",le=\"+Inf\"} 1",
                    "wsgate_handshake_duration_seconds_sum{result=\"accepted\"} 0.00008",
                    "wsgate_handshake_duration_seconds_count{result=\"accepted\"} 1",
                    "wsgate_handshake_duration_seconds_count{result=\"refused\"} 0",
                ],
            },
            Case {
                took: Duration::from_micros(300),
                accepted: true,
                want: &[
                    "wsgate_handshake_duration_seconds_bucket{result=\"accepted\",le=\"0.00025\"} 0",
                    "wsgate_handshake_duration_seconds_bucket{result=\"accepted\",le=\"0.0005\"} 1",
                    "wsgate_handshake_duration_seconds_bucket{result=\"accepted\",le=\"0.001\"} 1",
                ],
            },
            Case {
                took: Duration::from_secs(30),
                accepted: false,
                want: &[
                    "wsgate_handshake_duration_seconds_bucket{result=\"refused\",le=\"10\"} 0",
                    "wsgate_handshake_duration_seconds_bucket{result=\"refused\",le=\"+Inf\"} 1",
                    "wsgate_handshake_duration_seconds_sum{result=\"refused\"} 30",
                ],
            },
        ];
        for c in cases {
            let m = Metrics::default();
            m.observe_handshake(c.took, c.accepted);
            let text = m.render();
            for want in c.want {
                assert!(
                    text.contains(want),
                    "{:?}: missing {want:?} in\n{text}",
                    c.took
                );
            }
        }
    }

    #[test]
    fn resume_metrics() {
        let m = Metrics::default();
        m.session_parked();
        m.session_parked();
        m.session_unparked();
        m.resume(ResumeResult::Ok);
        m.resume(ResumeResult::BadSecret);
        m.resume(ResumeResult::BadSecret);
        m.resume_replayed(Replayed {
            to_peer: 1500,
            from_peer: 20,
        });
        m.resume_replayed(Replayed {
            to_peer: 0,
            from_peer: u64::MAX,
        });
        m.observe_resume_gap(Duration::from_millis(4200));
        let text = m.render();
        for want in [
            "# TYPE wsgate_sessions_parked gauge\nwsgate_sessions_parked 1\n",
            "wsgate_resumes_total{result=\"ok\"} 1\n",
            "wsgate_resumes_total{result=\"unknown\"} 0\n",
            "wsgate_resumes_total{result=\"bad_secret\"} 2\n",
            "wsgate_resumes_total{result=\"forbidden\"} 0\n",
            "wsgate_resumes_total{result=\"conflict\"} 0\n",
            "wsgate_resumes_total{result=\"expired\"} 0\n",
            "wsgate_resume_replayed_bytes_total 1500\n",
            // A client's absurd figure saturates rather than wrapping the sum.
            "wsgate_resume_replayed_by_client_bytes_total 18446744073709551615\n",
            "# TYPE wsgate_resume_gap_seconds histogram",
            "wsgate_resume_gap_seconds_bucket{le=\"2.5\"} 0\n",
            "wsgate_resume_gap_seconds_bucket{le=\"5\"} 1\n",
            "wsgate_resume_gap_seconds_sum 4.2\n",
            "wsgate_resume_gap_seconds_count 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn token_review_counters_render_when_attached() {
        let reviews = Arc::new(ReviewMetrics::default());
        let m = Metrics::with_reviews(Some(Arc::clone(&reviews)));
        reviews.count(ReviewResult::Throttled);
        reviews.count(ReviewResult::Throttled);
        reviews.count(ReviewResult::Rejected);
        reviews.observe(Duration::from_micros(700));
        let text = m.render();
        for want in [
            "# TYPE wsgate_token_reviews_total counter",
            "wsgate_token_reviews_total{result=\"throttled\"} 2",
            "wsgate_token_reviews_total{result=\"rejected\"} 1",
            "wsgate_token_reviews_total{result=\"authenticated\"} 0",
            "# TYPE wsgate_token_review_duration_seconds histogram",
            "wsgate_token_review_duration_seconds_bucket{le=\"0.0005\"} 0",
            "wsgate_token_review_duration_seconds_bucket{le=\"0.001\"} 1",
            "wsgate_token_review_duration_seconds_sum 0.0007",
            "wsgate_token_review_duration_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
