//! Prometheus metrics, rendered as text on the admin listener's `/metrics`.
//!
//! Hand-written (a few atomics and one histogram) so that the hot path costs one relaxed atomic
//! add per chunk and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets in seconds (the client's type-2 reports are milliseconds).
const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    sessions_open: AtomicI64,
    sessions_total: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Refusals before the upgrade, by reason.
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Session ends, by close reason.
    closes: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

impl Metrics {
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

    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe_latency_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn sessions_open(&self) -> i64 {
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
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
        let _ = writeln!(out, "# HELP {name} Round trip reported by SkyPilot-framed clients (type 2).\n# TYPE {name} histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(r)
            );
        }
        let count = self.latency_count.load(r);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency_sum_ms.load(r) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count {count}");
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
    }
}
