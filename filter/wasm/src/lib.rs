//! wsgate-filter: the thin proxy-wasm glue around `wsgate-core`, loaded by Envoy/Istio.
//!
//! It only reads headers and properties, calls the core's pure decisions, and applies them:
//! header operations, route-cache clearing, local replies, counters. No policy lives here, and
//! nothing here may panic, log a token, or log a header value.

use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as WasmAction, ContextType, LogLevel, MetricType};
use wsgate_core::headers::Headers;
use wsgate_core::{
    decide, decide_response, leaves_alone, Action, HeaderOp, LocalReply, Outcome, Policy,
    RequestView, UpgradeMemo,
};
use wsgate_proto::cidr::parse_source_ip;

const GIT_HASH: &str = env!("WSGATE_GIT_HASH");

proxy_wasm::main! {{
    // Until the host tells us its level (at VM start): everything, so nothing is lost.
    proxy_wasm::set_log_level(LogLevel::Trace);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("wsgate-filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// One per plugin instance and worker: holds the compiled policy and the counter ids.
#[derive(Default)]
struct Root {
    /// Shared with every request context; replaced as a whole on reconfiguration.
    policy: Rc<Policy>,
    /// Counter ids indexed by [`Outcome::index`]; defined once per VM.
    metrics: Rc<Vec<u32>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        follow_host_log_level();
        info!(
            "wsgate-filter {} ({GIT_HASH}) starting",
            wsgate_core::VERSION
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        follow_host_log_level();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let policy = match Policy::from_json(&bytes) {
            Ok(p) => p,
            Err(e) => {
                // One line naming the field; Envoy then refuses this configuration.
                error!("wsgate-filter: {e}");
                return false;
            }
        };
        if self.metrics.is_empty() {
            match define_metrics() {
                Ok(ids) => self.metrics = Rc::new(ids),
                Err(name) => warn!("wsgate-filter: could not define metric {name}; counters off"),
            }
        }
        info!("wsgate-filter config loaded: {}", policy.summary());
        self.policy = Rc::new(policy);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            policy: Rc::clone(&self.policy),
            metrics: Rc::clone(&self.metrics),
            memo: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Envoy's `wasm` log level, read at VM start and on every configuration: below it, a per-request
/// debug line costs nothing (not even formatting). A level changed at runtime through Envoy's
/// admin `/logging` applies from the next configuration push.
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

fn define_metrics() -> Result<Vec<u32>, String> {
    Outcome::all()
        .into_iter()
        .map(|o| {
            let name = o.metric_name();
            hostcalls::define_metric(MetricType::Counter, &name).map_err(|_| name)
        })
        .collect()
}

/// One per HTTP stream.
struct Request {
    policy: Rc<Policy>,
    metrics: Rc<Vec<u32>>,
    /// Set for upgrade requests only: the response side guards their redirects.
    memo: Option<UpgradeMemo>,
}

impl Request {
    fn count(&self, outcome: Outcome) {
        if let Some(id) = self.metrics.get(outcome.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.get_property(path.to_vec())
            .and_then(|b| String::from_utf8(b).ok())
    }

    fn reply(&self, r: &LocalReply) {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(r.status, headers, Some(r.body.as_bytes()));
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> WasmAction {
        // Most requests through a gateway are neither upgrades nor routed: a few single-header
        // host calls (`upgrade`, each routing header, `:path` only if a rule could match) settle
        // that without copying every header into the module.
        //
        // Values are read as bytes: Envoy delivers header values that are not UTF-8 (obs-text),
        // and the SDK's `String` getters panic on them, which kills the VM (every later request
        // on that worker gets a 503). Decisions are made on the lossy text. The core is also
        // told which lines were not UTF-8, and never writes one of those back (it refuses the
        // request instead): what is forwarded is the client's own bytes or values the filter
        // made, never a U+FFFD standing for bytes the client sent.
        let path = || self.get_http_request_header_bytes(":path").map(text);
        let has_header = |name: &str| self.get_http_request_header_bytes(name).is_some();
        if leaves_alone(&path, &has_header, &self.policy) {
            return WasmAction::Continue;
        }
        let mut non_utf8: Vec<String> = Vec::new();
        let headers: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| match String::from_utf8(value) {
                Ok(value) => (name, value),
                Err(e) => {
                    non_utf8.push(name.clone());
                    (name, String::from_utf8_lossy(e.as_bytes()).into_owned())
                }
            })
            .collect();
        // Properties are host calls: fetched only if the core asks (upgrade requests).
        let protocol = || self.property(&["request", "protocol"]).unwrap_or_default();
        let source = || {
            self.property(&["source", "address"])
                .and_then(|s| parse_source_ip(&s))
        };
        let view = RequestView {
            headers: Headers(&headers),
            non_utf8: &non_utf8,
            protocol: &protocol,
            source: &source,
        };
        let decision = decide(&view, &self.policy, &mut random_key);
        for o in &decision.outcomes {
            self.count(*o);
        }
        if log::log_enabled!(log::Level::Debug) {
            // Outcomes and header names only: values (tokens, paths with query strings) stay out.
            let op_names: Vec<String> = decision
                .ops
                .iter()
                .map(|op| match op {
                    HeaderOp::Set { name, .. } => format!("set {name}"),
                    HeaderOp::Remove { name } => format!("remove {name}"),
                })
                .collect();
            debug!(
                "wsgate-filter: protocol={} outcomes={:?} ops={op_names:?}",
                protocol(),
                decision.outcomes
            );
        }
        match decision.action {
            Action::Reply(r) => {
                self.reply(&r);
                WasmAction::Pause
            }
            Action::Continue => {
                for op in &decision.ops {
                    match op {
                        HeaderOp::Set { name, value } => {
                            self.set_http_request_header(name, Some(value))
                        }
                        HeaderOp::Remove { name } => self.set_http_request_header(name, None),
                    }
                }
                self.memo = decision.memo;
                WasmAction::Continue
            }
        }
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> WasmAction {
        let Some(memo) = &self.memo else {
            return WasmAction::Continue;
        };
        let Some(status) = self
            .get_http_response_header_bytes(":status")
            .and_then(|s| text(s).parse::<u32>().ok())
        else {
            return WasmAction::Continue;
        };
        // The upstream's `Location` may hold any bytes: read as bytes, like request headers.
        let location = || self.get_http_response_header_bytes("location").map(text);
        match decide_response(memo, status, location, &self.policy) {
            Some(reply) => {
                self.count(Outcome::RedirectGuarded);
                debug!("wsgate-filter: upgrade answered with {status}; replying 426");
                self.memo = None;
                self.reply(&reply);
                WasmAction::Pause
            }
            None => WasmAction::Continue,
        }
    }
}

/// A header value as text: as is when it is UTF-8 (no copy), with U+FFFD for each invalid
/// sequence otherwise. Never panics.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// 16 random bytes for a `Sec-WebSocket-Key` (WASI `random_get`). The key is a nonce, not a
/// secret: if the host has no randomness, the clock still makes it unique enough.
fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        key = nanos.to_le_bytes();
    }
    key
}
