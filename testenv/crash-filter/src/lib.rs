//! A filter that exists only to test Envoy's Wasm failure policies (`failure_policy` /
//! Istio's `failStrategy`): `testenv/e2e/test_wasm_failure_policy.py` runs it in a real Envoy.
//!
//! A request with `x-crash: 1` traps the VM (a Wasm `unreachable`, as any panic in a
//! `panic = "abort"` module ends), which is what a crashing wsgate filter would do. Every other
//! request passes, and its response carries `x-crash-filter: alive`, so a test can tell a
//! response the filter saw from one that bypassed it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request;

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-crash").as_deref() == Some("1") {
            trap();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-crash-filter", "alive");
        Action::Continue
    }
}

/// Ends the VM with a trap: the `unreachable` instruction on Wasm (the host compiles this crate
/// too, for `cargo clippy --workspace`, where it aborts the process instead).
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}
