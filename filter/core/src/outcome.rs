//! What the filter did with a request: one counter (`wsgate_*_total`) per outcome.
//!
//! The glue defines every counter at configure time from [`Outcome::all`], so `/stats` shows
//! zeros before the first request and dashboards need no special cases.
//!
//! Per-reason counters (token errors, route rejections) form one Prometheus family each, with
//! the reason as a `reason` label, as the sidecar's metrics do. Proxy-Wasm has no labels: a
//! metric is a flat name, and Envoy extracts labels ("tags") from names with the regexes of its
//! bootstrap `stats_config`. So the reason is embedded in the name the way Istio's
//! `extraStatTags` regex reads it, `reason=.=<reason>;.;` (Istio writes
//! `{"regex": "(reason=\\.=(.*?);\\.;)", "tag_name": "reason"}` into the gateway's bootstrap
//! for `extraStatTags: ["reason"]`), placed so that removing it leaves the family name:
//! `wsgate_token_errors_reason=.=multiple_tokens;.;total` is reported as
//! `wsgate_token_errors_total{reason="multiple_tokens"}`. Without that setting Envoy shows the
//! name sanitised, `wsgate_token_errors_reason___multiple_tokens___total`
//! (docs/filter-metrics.md).

use crate::route::RouteError;
use wsgate_proto::token::TokenError;

/// The label of every per-reason counter (and the Istio `extraStatTags` entry that extracts it).
pub const REASON_LABEL: &str = "reason";

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
    /// A header the filter had to rewrite was not UTF-8: refused rather than altered.
    NonUtf8Header,
}

impl Outcome {
    /// The counter name, as `define_metric` takes it: the family name, or for per-reason
    /// counters the family name with `reason=.=<reason>;.;` before its `total`.
    pub fn metric_name(self) -> String {
        match self.family() {
            (family, None) => family.to_string(),
            (family, Some(reason)) => {
                // Every family name ends in `total` (the tests check each one reduces back).
                let head = family.strip_suffix("total").unwrap_or(family);
                format!("{head}{REASON_LABEL}=.={reason};.;total")
            }
        }
    }

    /// The Prometheus family this outcome counts in, and its `reason` label (per-reason
    /// counters only): what `/stats/prometheus` shows once the `reason` tag is extracted.
    fn family(self) -> (&'static str, Option<&'static str>) {
        match self {
            Outcome::Upgrade => ("wsgate_upgrades_total", None),
            Outcome::TokenRewritten => ("wsgate_tokens_rewritten_total", None),
            Outcome::TokenError(e) => ("wsgate_token_errors_total", Some(e.reason())),
            Outcome::AuthorizationConflict => ("wsgate_authorization_conflicts_total", None),
            Outcome::AuthorizationKept => ("wsgate_authorization_kept_total", None),
            Outcome::RedirectGuarded => ("wsgate_redirects_guarded_total", None),
            Outcome::PlaintextAllowed => ("wsgate_plaintext_allowed_total", None),
            Outcome::Routed => ("wsgate_routed_total", None),
            Outcome::RouteRejected(e) => ("wsgate_route_rejections_total", Some(e.reason())),
            Outcome::H2KeyAdded => ("wsgate_h2_keys_added_total", None),
            Outcome::ForgedHeaderRemoved => ("wsgate_forged_headers_removed_total", None),
            Outcome::NonUtf8Header => ("wsgate_non_utf8_headers_total", None),
        }
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
            Outcome::NonUtf8Header,
        ];
        v.extend(TokenError::ALL.map(Outcome::TokenError));
        v.extend(RouteError::ALL.map(Outcome::RouteRejected));
        v
    }

    /// A dense index into [`Outcome::all`], for the glue's metric-id table.
    pub fn index(self) -> usize {
        const FIXED: usize = 10;
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
            Outcome::NonUtf8Header => 9,
            // Declaration order, as in `TokenError::ALL` and `RouteError::ALL`.
            Outcome::TokenError(e) => FIXED + e as usize,
            Outcome::RouteRejected(e) => FIXED + TokenError::ALL.len() + e as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy does with a stat name under Istio's `extraStatTags: ["reason"]`: the regex
    /// `(reason=\.=(.*?);\.;)`, unanchored, removes its first group from the name and takes the
    /// second as the tag value.
    fn extract_reason(name: &str) -> (String, Option<String>) {
        let open = format!("{REASON_LABEL}=.=");
        let Some(start) = name.find(&open) else {
            return (name.to_string(), None);
        };
        let rest = &name[start + open.len()..];
        let Some(len) = rest.find(";.;") else {
            return (name.to_string(), None);
        };
        let value = rest[..len].to_string();
        let end = start + open.len() + len + 3;
        (format!("{}{}", &name[..start], &name[end..]), Some(value))
    }

    /// What `/stats/prometheus` shows for a name no tag regex matched: every character outside
    /// `[a-zA-Z0-9_]` becomes `_`.
    fn sanitised(name: &str) -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }

    #[test]
    fn names_are_unique_prefixed_and_indexed() {
        let all = Outcome::all();
        for (i, o) in all.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        let mut names: Vec<String> = all.iter().map(|o| o.metric_name()).collect();
        // `wsgate_` first, so a `wasmcustom.wsgate_` stats matcher prefix keeps them all.
        assert!(names
            .iter()
            .all(|n| n.starts_with("wsgate_") && n.ends_with("total")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        // Without the tag regex, still one distinct Prometheus name each.
        let mut plain: Vec<String> = names.iter().map(|n| sanitised(n)).collect();
        plain.sort();
        plain.dedup();
        assert_eq!(plain.len(), all.len());
    }

    /// Each counter, as Envoy reports it with the `reason` tag extracted: the family name and
    /// the label, exactly the JSON `reason` of the refusal.
    #[test]
    fn reason_tags_extract_to_one_family_per_kind() {
        struct Case {
            outcome: Outcome,
            family: &'static str,
            reason: Option<&'static str>,
        }
        let mut cases = vec![
            Case {
                outcome: Outcome::Upgrade,
                family: "wsgate_upgrades_total",
                reason: None,
            },
            Case {
                outcome: Outcome::ForgedHeaderRemoved,
                family: "wsgate_forged_headers_removed_total",
                reason: None,
            },
            Case {
                outcome: Outcome::AuthorizationConflict,
                family: "wsgate_authorization_conflicts_total",
                reason: None,
            },
            Case {
                outcome: Outcome::NonUtf8Header,
                family: "wsgate_non_utf8_headers_total",
                reason: None,
            },
        ];
        cases.extend(TokenError::ALL.map(|e| Case {
            outcome: Outcome::TokenError(e),
            family: "wsgate_token_errors_total",
            reason: Some(e.reason()),
        }));
        cases.extend(RouteError::ALL.map(|e| Case {
            outcome: Outcome::RouteRejected(e),
            family: "wsgate_route_rejections_total",
            reason: Some(e.reason()),
        }));
        for c in cases {
            let name = c.outcome.metric_name();
            let (family, reason) = extract_reason(&name);
            assert_eq!(family, c.family, "{name}");
            assert_eq!(reason.as_deref(), c.reason, "{name}");
            if let Some(r) = c.reason {
                // A label value Prometheus shows as is, and that cannot end the tag early.
                assert!(
                    r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{r}"
                );
            }
        }
    }

    #[test]
    fn names_as_envoy_shows_them_untagged() {
        let e = Outcome::TokenError(TokenError::MultipleTokens);
        assert_eq!(
            e.metric_name(),
            "wsgate_token_errors_reason=.=multiple_tokens;.;total"
        );
        assert_eq!(
            sanitised(&e.metric_name()),
            "wsgate_token_errors_reason___multiple_tokens___total"
        );
        assert_eq!(Outcome::Routed.metric_name(), "wsgate_routed_total");
    }
}
