//! What the filter did with a request: one counter (`wsgate_*_total`) per outcome.
//!
//! The glue defines every counter at configure time from [`Outcome::all`], so `/stats` shows
//! zeros before the first request and dashboards need no special cases.

use crate::route::RouteError;
use crate::token::TokenError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A WebSocket or SPDY upgrade request was seen.
    Upgrade,
    /// A subprotocol token became an `Authorization` header.
    TokenRewritten,
    /// A subprotocol token was refused.
    TokenError(TokenError),
    /// Token plus `Authorization` refused (`existingAuthorization: reject`).
    AuthorizationConflict,
    /// Token entry dropped, existing `Authorization` kept (`keepExisting`).
    AuthorizationKept,
    /// An upgrade's redirect answer was replaced by a 426.
    RedirectGuarded,
    /// A plaintext upgrade from a trusted source was let through to its route.
    PlaintextAllowed,
    /// A routing rule set the routing header.
    Routed,
    /// A routing rule refused the request.
    RouteRejected(RouteError),
    /// An HTTP/2 WebSocket got a `Sec-WebSocket-Key`.
    H2KeyAdded,
    /// A client-sent routing header was removed.
    ForgedHeaderRemoved,
}

impl Outcome {
    /// The counter name, as `define_metric` takes it (Prometheus shows it as is).
    pub fn metric_name(self) -> String {
        let name = match self {
            Outcome::Upgrade => "upgrades",
            Outcome::TokenRewritten => "tokens_rewritten",
            Outcome::TokenError(e) => return format!("wsgate_token_errors_{}_total", e.reason()),
            Outcome::AuthorizationConflict => "authorization_conflicts",
            Outcome::AuthorizationKept => "authorization_kept",
            Outcome::RedirectGuarded => "redirects_guarded",
            Outcome::PlaintextAllowed => "plaintext_allowed",
            Outcome::Routed => "routed",
            Outcome::RouteRejected(e) => {
                return format!("wsgate_route_rejections_{}_total", e.reason())
            }
            Outcome::H2KeyAdded => "h2_keys_added",
            Outcome::ForgedHeaderRemoved => "forged_headers_removed",
        };
        format!("wsgate_{name}_total")
    }

    /// Every outcome, each once.
    pub fn all() -> Vec<Outcome> {
        let mut v = vec![
            Outcome::Upgrade,
            Outcome::TokenRewritten,
            Outcome::AuthorizationConflict,
            Outcome::AuthorizationKept,
            Outcome::RedirectGuarded,
            Outcome::PlaintextAllowed,
            Outcome::Routed,
            Outcome::H2KeyAdded,
            Outcome::ForgedHeaderRemoved,
        ];
        v.extend(TokenError::ALL.map(Outcome::TokenError));
        v.extend(RouteError::ALL.map(Outcome::RouteRejected));
        v
    }

    /// A dense index into [`Outcome::all`], for the glue's metric-id table.
    pub fn index(self) -> usize {
        const FIXED: usize = 9;
        match self {
            Outcome::Upgrade => 0,
            Outcome::TokenRewritten => 1,
            Outcome::AuthorizationConflict => 2,
            Outcome::AuthorizationKept => 3,
            Outcome::RedirectGuarded => 4,
            Outcome::PlaintextAllowed => 5,
            Outcome::Routed => 6,
            Outcome::H2KeyAdded => 7,
            Outcome::ForgedHeaderRemoved => 8,
            // Declaration order, as in `TokenError::ALL` and `RouteError::ALL`.
            Outcome::TokenError(e) => FIXED + e as usize,
            Outcome::RouteRejected(e) => FIXED + TokenError::ALL.len() + e as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_indexed() {
        let all = Outcome::all();
        let mut names: Vec<String> = all.iter().map(|o| o.metric_name()).collect();
        for (i, o) in all.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        assert!(names
            .iter()
            .all(|n| n.starts_with("wsgate_") && n.ends_with("_total")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
