//! The filter's `pluginConfig` (JSON): read strictly with serde, then compiled into a [`Policy`].
//!
//! Two phases, so that every mistake is found at `on_configure` with the field it concerns:
//! unknown fields and wrong types fail deserialisation (with their JSON path); bad CIDRs,
//! patterns, header names and conflicting rules fail compilation. `{}` is a useful, safe default:
//! token rewrite on every WebSocket upgrade, the response-side redirect guard, HTTP/2 key repair,
//! the default routing header removed from every request, nothing routed, nothing let through in
//! plaintext.
//!
//! Every place that holds an object accepts only a JSON object: serde's derived struct visitors
//! also accept an array (the fields in declaration order), so `[]` would load as `{}` and
//! `{"tokenRewrite": [false]}` would turn the rewrite off. `objects_only!` gives every
//! config struct a `Deserialize` that accepts only a map and names anything else in JSON terms.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::route::{parse_pattern, path_has_prefix, Matcher, Route};
use wsgate_proto::cidr::Cidr;
use wsgate_proto::names::{is_dns_label, is_header_name, is_header_value};

/// The routing header when a rule names none: what the VirtualService matches on.
pub const DEFAULT_ROUTING_HEADER: &str = "x-wsgate-cluster";

/// A configuration error: the JSON path of the field and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pluginConfig: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Objects only.

/// How a JSON object becomes a value once its map is in hand (a config struct's derived,
/// `remote = "Self"` deserializer, or a plain map's).
trait FromObject<'de>: Sized {
    fn from_object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

impl<'de> FromObject<'de> for BTreeMap<String, String> {
    fn from_object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        Deserialize::deserialize(MapAccessDeserializer::new(map))
    }
}

/// Accepts a JSON object and nothing else. It asks for `deserialize_any` so that it sees what
/// the input really holds and can name it in JSON's terms: `expected an object, found an array`.
struct ObjectVisitor<T>(PhantomData<T>);

fn not_an_object<E: de::Error>(found: &str) -> E {
    E::custom(format_args!("expected an object, found {found}"))
}

impl<'de, T: FromObject<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_object(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<T, A::Error> {
        Err(not_an_object("an array"))
    }

    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<T, E> {
        Err(not_an_object("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<T, E> {
        Err(not_an_object("a number"))
    }

    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<T, E> {
        Err(not_an_object("a number"))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<T, E> {
        Err(not_an_object("a number"))
    }

    fn visit_str<E: de::Error>(self, _v: &str) -> Result<T, E> {
        Err(not_an_object("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Err(not_an_object("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Err(not_an_object("null"))
    }
}

/// `deserialize_with` for map-valued fields (`setHeaders`): an object, or an error in JSON's
/// terms like the config structs give.
fn object<'de, D: Deserializer<'de>, T: FromObject<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(ObjectVisitor(PhantomData))
}

/// For each config struct (derived with `#[serde(remote = "Self")]`, which makes the derived
/// deserializer an inherent function instead of the trait impl): the `Deserialize` impl that
/// accepts only an object and then hands its map to the derived code. Every struct of the
/// config is listed here, so no level of it can be given as an array.
macro_rules! objects_only {
    ($($t:ident),+ $(,)?) => {$(
        impl<'de> FromObject<'de> for $t {
            fn from_object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
                $t::deserialize(MapAccessDeserializer::new(map))
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                object(d)
            }
        }
    )+};
}

objects_only!(
    RawConfig,
    RawTokenRewrite,
    RawRedirectGuard,
    RawAllowPlaintext,
    RawRoute
);

// ---------------------------------------------------------------------------------------------
// Phase 1: the JSON as written (camelCase, unknown fields refused).

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    token_rewrite: RawTokenRewrite,
    #[serde(default)]
    redirect_guard: RawRedirectGuard,
    #[serde(default = "yes", rename = "h2WebSocketKey")]
    h2_websocket_key: bool,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
struct RawTokenRewrite {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    existing_authorization: ExistingAuthorization,
}

impl Default for RawTokenRewrite {
    fn default() -> Self {
        RawTokenRewrite {
            enabled: true,
            path_prefixes: Vec::new(),
            existing_authorization: ExistingAuthorization::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
struct RawRedirectGuard {
    #[serde(default)]
    https_port: Option<u16>,
    #[serde(default)]
    allow_plaintext: Option<RawAllowPlaintext>,
}

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
struct RawAllowPlaintext {
    trusted_cidrs: Vec<String>,
    path_prefixes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    cluster_query_param: Option<String>,
    #[serde(default)]
    allowed_clusters: Option<Vec<String>>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default, deserialize_with = "object")]
    set_headers: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Phase 2: what the filter runs.

/// What to do when a request carries both a subprotocol token and an `Authorization` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExistingAuthorization {
    /// Refuse the request (400): two credentials are ambiguous. The safe default.
    #[default]
    Reject,
    /// Keep the existing header; the subprotocol entry is still removed.
    KeepExisting,
    /// Replace the existing header with the subprotocol token.
    Replace,
}

/// Where and how subprotocol tokens become `Authorization` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    pub enabled: bool,
    /// Empty: every path.
    pub path_prefixes: Vec<String>,
    pub existing_authorization: ExistingAuthorization,
}

/// The opt-in request-side allowance: plaintext upgrades that are let through to their route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaintextPolicy {
    pub trusted_cidrs: Vec<Cidr>,
    pub path_prefixes: Vec<String>,
}

/// The redirect guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardPolicy {
    /// The TLS port named in the `wss://` hint; `None` means the default 443.
    pub https_port: Option<u16>,
    pub allow_plaintext: Option<PlaintextPolicy>,
}

/// The compiled configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub token: TokenPolicy,
    pub guard: GuardPolicy,
    pub h2_websocket_key: bool,
    pub routes: Vec<Route>,
    /// The default routing header and every rule's routing header, whatever the config (even
    /// `{}`): removed from every incoming request, so a client can never forge the header a
    /// VirtualService routes on. A rule that matches then sets its own value.
    pub routing_headers: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        // `{}` is valid by construction; compiling it cannot fail.
        Policy::compile(RawConfig {
            h2_websocket_key: true,
            ..RawConfig::default()
        })
        .unwrap_or_else(|_| unreachable_default())
    }
}

#[cold]
fn unreachable_default() -> Policy {
    Policy {
        token: TokenPolicy {
            enabled: true,
            path_prefixes: Vec::new(),
            existing_authorization: ExistingAuthorization::Reject,
        },
        guard: GuardPolicy::default(),
        h2_websocket_key: true,
        routes: Vec::new(),
        routing_headers: vec![DEFAULT_ROUTING_HEADER.to_string()],
    }
}

impl Policy {
    /// Parses and validates a `pluginConfig`. Empty input means `{}`.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Policy::default());
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path == "?" {
                "pluginConfig".to_string()
            } else {
                path
            };
            err(field, e.into_inner().to_string())
        })?;
        Policy::compile(raw)
    }

    fn compile(raw: RawConfig) -> Result<Policy, ConfigError> {
        let t = raw.token_rewrite;
        check_prefixes("tokenRewrite.pathPrefixes", &t.path_prefixes)?;
        let token = TokenPolicy {
            enabled: t.enabled,
            path_prefixes: t.path_prefixes,
            existing_authorization: t.existing_authorization,
        };

        let g = raw.redirect_guard;
        if g.https_port == Some(0) {
            return Err(err("redirectGuard.httpsPort", "must be 1-65535"));
        }
        let allow_plaintext = g.allow_plaintext.map(compile_plaintext).transpose()?;
        let guard = GuardPolicy {
            https_port: g.https_port,
            allow_plaintext,
        };

        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let route = compile_route(i, r)?;
            check_conflicts(i, &route, &routes)?;
            routes.push(route);
        }
        // The default header is stripped even when no rule uses it: the VirtualService in
        // `istio/base` routes on it whatever this config says.
        let routing_headers: BTreeSet<String> = routes
            .iter()
            .map(|r| r.header.clone())
            .chain([DEFAULT_ROUTING_HEADER.to_string()])
            .collect();
        Ok(Policy {
            token,
            guard,
            h2_websocket_key: raw.h2_websocket_key,
            routes,
            routing_headers: routing_headers.into_iter().collect(),
        })
    }

    /// One line for the start-up log: what is on, with no secrets (the config holds none).
    pub fn summary(&self) -> String {
        let token = if !self.token.enabled {
            "off".to_string()
        } else if self.token.path_prefixes.is_empty() {
            format!(
                "all paths, existing Authorization: {:?}",
                self.token.existing_authorization
            )
        } else {
            format!(
                "{:?}, existing Authorization: {:?}",
                self.token.path_prefixes, self.token.existing_authorization
            )
        };
        let plaintext = match &self.guard.allow_plaintext {
            None => "never".to_string(),
            Some(p) => {
                let cidrs: Vec<String> = p.trusted_cidrs.iter().map(ToString::to_string).collect();
                format!("from {cidrs:?} on {:?}", p.path_prefixes)
            }
        };
        let routes: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        format!(
            "token rewrite: {token}; redirect guard: on; plaintext upgrades: {plaintext}; \
             h2 key repair: {}; routes: {routes:?}",
            if self.h2_websocket_key { "on" } else { "off" }
        )
    }
}

fn check_prefixes(field: &str, prefixes: &[String]) -> Result<(), ConfigError> {
    for (i, p) in prefixes.iter().enumerate() {
        if !p.starts_with('/') || p.contains(['?', '#']) {
            return Err(err(
                format!("{field}[{i}]"),
                "must be a path starting with '/' and without '?' or '#'",
            ));
        }
    }
    Ok(())
}

fn compile_plaintext(p: RawAllowPlaintext) -> Result<PlaintextPolicy, ConfigError> {
    let field = "redirectGuard.allowPlaintext";
    if p.trusted_cidrs.is_empty() {
        return Err(err(
            format!("{field}.trustedCidrs"),
            "must list at least one network: plaintext is allowed only from trusted sources",
        ));
    }
    if p.path_prefixes.is_empty() {
        return Err(err(
            format!("{field}.pathPrefixes"),
            "must list at least one path: plaintext is allowed only on named paths",
        ));
    }
    check_prefixes(&format!("{field}.pathPrefixes"), &p.path_prefixes)?;
    let mut cidrs = Vec::with_capacity(p.trusted_cidrs.len());
    for (i, c) in p.trusted_cidrs.iter().enumerate() {
        let f = format!("{field}.trustedCidrs[{i}]");
        let cidr: Cidr = c.parse().map_err(|e| err(&f, format!("{c:?}: {e}")))?;
        if cidr.prefix_len() == 0 {
            return Err(err(f, format!("{c:?} would allow plaintext from anywhere")));
        }
        cidrs.push(cidr);
    }
    Ok(PlaintextPolicy {
        trusted_cidrs: cidrs,
        path_prefixes: p.path_prefixes,
    })
}

/// Headers a rule may not remove or set: they carry routing, credentials or TLS state that the
/// filter itself decides.
const RESERVED_HEADERS: [&str; 5] = [
    "authorization",
    "x-forwarded-proto",
    "host",
    "sec-websocket-protocol",
    "sec-websocket-key",
];

fn compile_route(i: usize, r: RawRoute) -> Result<Route, ConfigError> {
    let f = |name: &str| format!("routes[{i}].{name}");
    let name = match r.name {
        Some(n) if n.trim().is_empty() => return Err(err(f("name"), "must not be empty")),
        Some(n) => n,
        None => format!("routes[{i}]"),
    };
    let matcher = match (r.prefix, r.pattern) {
        (Some(_), Some(_)) => {
            return Err(err(
                f("pattern"),
                "set either 'prefix' or 'pattern', not both",
            ))
        }
        (None, None) => return Err(err(f("prefix"), "set 'prefix' or 'pattern'")),
        (Some(prefix), None) => {
            check_prefixes(&f("prefix"), std::slice::from_ref(&prefix))?;
            let query_param = r.cluster_query_param.ok_or_else(|| {
                err(
                    f("clusterQueryParam"),
                    "a 'prefix' rule takes the cluster from a query parameter: name it \
                     (SkyPilot: \"cluster_name\")",
                )
            })?;
            if query_param.is_empty() {
                return Err(err(f("clusterQueryParam"), "must not be empty"));
            }
            Matcher::Prefix {
                prefix,
                query_param,
            }
        }
        (None, Some(pattern)) => {
            if r.cluster_query_param.is_some() {
                return Err(err(
                    f("clusterQueryParam"),
                    "a 'pattern' rule takes the cluster from its '{cluster}' segment",
                ));
            }
            let segments = parse_pattern(&pattern).map_err(|why| err(f("pattern"), why))?;
            Matcher::Pattern { segments }
        }
    };
    let allowed_clusters = match r.allowed_clusters {
        None => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for (j, c) in list.into_iter().enumerate() {
                if !is_dns_label(&c) {
                    return Err(err(
                        format!("{}[{j}]", f("allowedClusters")),
                        format!("{c:?} is not an RFC 1123 label"),
                    ));
                }
                set.insert(c);
            }
            if set.is_empty() {
                return Err(err(
                    f("allowedClusters"),
                    "is empty: no cluster could match; omit it to allow any valid name",
                ));
            }
            Some(set)
        }
    };
    let header = r
        .header
        .unwrap_or_else(|| DEFAULT_ROUTING_HEADER.to_string());
    check_header_name(&f("header"), &header)?;
    for (j, h) in r.remove_headers.iter().enumerate() {
        let field = format!("{}[{j}]", f("removeHeaders"));
        check_header_name(&field, h)?;
        if *h == header {
            return Err(err(field, "is this rule's routing header"));
        }
    }
    let mut set_headers = Vec::with_capacity(r.set_headers.len());
    for (h, v) in r.set_headers {
        let field = format!("{}.{h}", f("setHeaders"));
        check_header_name(&field, &h)?;
        if h == header {
            return Err(err(field, "is this rule's routing header"));
        }
        if !is_header_value(&v) {
            return Err(err(field, "value contains control characters"));
        }
        set_headers.push((h, v));
    }
    if let Some(a) = &r.authority {
        let ok = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !ok {
            return Err(err(f("authority"), "must be host or host:port"));
        }
    }
    Ok(Route {
        name,
        matcher,
        allowed_clusters,
        header,
        strip_prefix: r.strip_prefix,
        authority: r.authority,
        remove_headers: r.remove_headers,
        set_headers,
    })
}

fn check_header_name(field: &str, h: &str) -> Result<(), ConfigError> {
    if !is_header_name(h) {
        return Err(err(field, format!("{h:?} is not a lowercase header name")));
    }
    if RESERVED_HEADERS.contains(&h) {
        return Err(err(field, format!("{h:?} is managed by the filter itself")));
    }
    Ok(())
}

/// Refuses a rule that an earlier rule always matches first: it would silently never apply.
fn check_conflicts(i: usize, route: &Route, earlier: &[Route]) -> Result<(), ConfigError> {
    for (j, e) in earlier.iter().enumerate() {
        if e.name == route.name {
            return Err(err(
                format!("routes[{i}].name"),
                format!("{:?} is already used by routes[{j}]", route.name),
            ));
        }
        let shadowed = match (&e.matcher, &route.matcher) {
            (Matcher::Prefix { prefix: a, .. }, Matcher::Prefix { prefix: b, .. }) => {
                path_has_prefix(b, a)
            }
            (Matcher::Pattern { segments: a }, Matcher::Pattern { segments: b }) => a == b,
            _ => false,
        };
        if shadowed {
            return Err(err(
                format!("routes[{i}]"),
                format!(
                    "never matches: routes[{j}] ({:?}) matches the same requests first",
                    e.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_safe_default() {
        for input in ["", "  ", "{}"] {
            let p = Policy::from_json(input.as_bytes()).unwrap();
            assert!(p.token.enabled);
            assert!(p.token.path_prefixes.is_empty());
            assert_eq!(
                p.token.existing_authorization,
                ExistingAuthorization::Reject
            );
            assert!(p.guard.allow_plaintext.is_none());
            assert!(p.h2_websocket_key);
            assert!(p.routes.is_empty());
        }
    }

    #[test]
    fn the_default_routing_header_is_always_stripped() {
        struct Case {
            name: &'static str,
            config: &'static str,
            routing_headers: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "empty input",
                config: "",
                routing_headers: &["x-wsgate-cluster"],
            },
            Case {
                name: "{}",
                config: "{}",
                routing_headers: &["x-wsgate-cluster"],
            },
            Case {
                name: "no routes, token rewrite off",
                config: r#"{"tokenRewrite": {"enabled": false}, "routes": []}"#,
                routing_headers: &["x-wsgate-cluster"],
            },
            Case {
                name: "one rule with a custom header",
                config: r#"{"routes": [{"pattern": "/c/{cluster}", "header": "x-ui-cluster"}]}"#,
                routing_headers: &["x-ui-cluster", "x-wsgate-cluster"],
            },
            Case {
                name: "two custom headers, the default named too",
                config: r#"{"routes": [
                  {"pattern": "/c/{cluster}", "header": "x-b"},
                  {"pattern": "/d/{cluster}", "header": "x-a"},
                  {"pattern": "/e/{cluster}", "header": "x-wsgate-cluster"}]}"#,
                routing_headers: &["x-a", "x-b", "x-wsgate-cluster"],
            },
        ];
        for c in cases {
            let p = Policy::from_json(c.config.as_bytes()).unwrap();
            assert_eq!(p.routing_headers, c.routing_headers, "{}", c.name);
        }
        assert_eq!(
            Policy::default().routing_headers,
            [DEFAULT_ROUTING_HEADER],
            "Policy::default"
        );
    }

    /// Where the config holds an object, nothing else is accepted: not an array (which serde's
    /// derived struct visitors would read as the fields in order), not a scalar, not null.
    #[test]
    fn only_an_object_is_accepted_where_an_object_belongs() {
        struct Case {
            name: &'static str,
            json: &'static str,
            field: &'static str,
            found: &'static str,
        }
        let cases = [
            Case {
                name: "top level: empty array",
                json: "[]",
                field: "pluginConfig",
                found: "an array",
            },
            Case {
                name: "top level: array of the fields in order",
                json: r#"[{"enabled": false}, {}, true, []]"#,
                field: "pluginConfig",
                found: "an array",
            },
            Case {
                name: "top level: string",
                json: r#""{}""#,
                field: "pluginConfig",
                found: "a string",
            },
            Case {
                name: "top level: number",
                json: "7",
                field: "pluginConfig",
                found: "a number",
            },
            Case {
                name: "top level: boolean",
                json: "true",
                field: "pluginConfig",
                found: "a boolean",
            },
            Case {
                name: "top level: null",
                json: "null",
                field: "pluginConfig",
                found: "null",
            },
            Case {
                name: "tokenRewrite as [false] (would turn the rewrite off)",
                json: r#"{"tokenRewrite": [false]}"#,
                field: "tokenRewrite",
                found: "an array",
            },
            Case {
                name: "tokenRewrite as []",
                json: r#"{"tokenRewrite": []}"#,
                field: "tokenRewrite",
                found: "an array",
            },
            Case {
                name: "tokenRewrite as false",
                json: r#"{"tokenRewrite": false}"#,
                field: "tokenRewrite",
                found: "a boolean",
            },
            Case {
                name: "tokenRewrite as null",
                json: r#"{"tokenRewrite": null}"#,
                field: "tokenRewrite",
                found: "null",
            },
            Case {
                name: "redirectGuard as array",
                json: r#"{"redirectGuard": [8443]}"#,
                field: "redirectGuard",
                found: "an array",
            },
            Case {
                name: "allowPlaintext as array of its fields",
                json: r#"{"redirectGuard": {"allowPlaintext": [["10.0.0.0/8"], ["/ssh"]]}}"#,
                field: "redirectGuard.allowPlaintext",
                found: "an array",
            },
            Case {
                name: "a rule as array",
                json: r#"{"routes": [{"pattern": "/c/{cluster}"}, ["r", "/a"]]}"#,
                field: "routes[1]",
                found: "an array",
            },
            Case {
                name: "a rule as string",
                json: r#"{"routes": ["/c/{cluster}"]}"#,
                field: "routes[0]",
                found: "a string",
            },
            Case {
                name: "setHeaders as array",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "setHeaders": [["x-a", "b"]]}]}"#,
                field: "routes[0].setHeaders",
                found: "an array",
            },
        ];
        for c in cases {
            let e =
                Policy::from_json(c.json.as_bytes()).expect_err(&format!("{}: accepted", c.name));
            assert_eq!(e.field, c.field, "{}: {e}", c.name);
            let want = format!("expected an object, found {}", c.found);
            assert!(e.reason.starts_with(&want), "{}: {e}", c.name);
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid pluginConfig: {}: {want}", c.field)),
                "{}: {e}",
                c.name
            );
        }
    }

    /// Objects still load as before, and an absent optional object may be written as null.
    #[test]
    fn objects_load_as_before() {
        let p = Policy::from_json(
            br#"{"tokenRewrite": {}, "redirectGuard": {"allowPlaintext": null},
                 "routes": [{"pattern": "/c/{cluster}", "setHeaders": {}}]}"#,
        )
        .unwrap();
        assert!(p.token.enabled);
        assert!(p.guard.allow_plaintext.is_none());
        assert!(p.routes[0].set_headers.is_empty());
        let e = Policy::from_json(br#"{"routes": [{"pattern": "/c/{cluster}", "bogus": 1}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "routes[0].bogus", "{e}");
    }

    #[test]
    fn full_config_compiles() {
        let p = Policy::from_json(
            br#"{
              "tokenRewrite": {"pathPrefixes": ["/api"], "existingAuthorization": "replace"},
              "redirectGuard": {"httpsPort": 8443,
                "allowPlaintext": {"trustedCidrs": ["10.0.0.0/8", "::1"], "pathPrefixes": ["/ssh"]}},
              "h2WebSocketKey": false,
              "routes": [
                {"name": "skypilot", "prefix": "/kubernetes-pod-ssh-proxy",
                 "clusterQueryParam": "cluster_name", "allowedClusters": ["a", "b"]},
                {"name": "ui", "pattern": "/c/{cluster}/", "stripPrefix": true,
                 "header": "x-ui-cluster", "authority": "backend.local:8080",
                 "removeHeaders": ["user-agent", "origin"], "setHeaders": {"x-from": "wsgate"}}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(
            p.token.existing_authorization,
            ExistingAuthorization::Replace
        );
        assert_eq!(p.guard.https_port, Some(8443));
        assert_eq!(
            p.guard
                .allow_plaintext
                .as_ref()
                .unwrap()
                .trusted_cidrs
                .len(),
            2
        );
        assert!(!p.h2_websocket_key);
        assert_eq!(p.routes.len(), 2);
        assert_eq!(p.routing_headers, ["x-ui-cluster", "x-wsgate-cluster"]);
        assert!(p.summary().contains("skypilot"));
    }

    /// Each bad config names the field at fault.
    #[test]
    fn errors_name_the_field() {
        struct Case {
            name: &'static str,
            json: &'static str,
            field: &'static str,
        }
        let cases: &[Case] = &[
            Case {
                name: "unknown top-level field",
                json: r#"{"tokenRewrites": {}}"#,
                field: "tokenRewrites",
            },
            Case {
                name: "unknown nested field",
                json: r#"{"tokenRewrite": {"enable": true}}"#,
                field: "tokenRewrite.enable",
            },
            Case {
                name: "wrong type",
                json: r#"{"h2WebSocketKey": "yes"}"#,
                field: "h2WebSocketKey",
            },
            Case {
                name: "bad enum",
                json: r#"{"tokenRewrite": {"existingAuthorization": "merge"}}"#,
                field: "tokenRewrite.existingAuthorization",
            },
            Case {
                name: "not JSON",
                json: "{",
                field: "pluginConfig",
            },
            Case {
                name: "relative prefix",
                json: r#"{"tokenRewrite": {"pathPrefixes": ["api"]}}"#,
                field: "tokenRewrite.pathPrefixes[0]",
            },
            Case {
                name: "zero port",
                json: r#"{"redirectGuard": {"httpsPort": 0}}"#,
                field: "redirectGuard.httpsPort",
            },
            Case {
                name: "port out of range",
                json: r#"{"redirectGuard": {"httpsPort": 70000}}"#,
                field: "redirectGuard.httpsPort",
            },
            Case {
                name: "bad cidr",
                json: r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["10.0.0/8"], "pathPrefixes": ["/"]}}}"#,
                field: "redirectGuard.allowPlaintext.trustedCidrs[0]",
            },
            Case {
                name: "host bits",
                json: r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["10.1.0.0/8"], "pathPrefixes": ["/"]}}}"#,
                field: "redirectGuard.allowPlaintext.trustedCidrs[0]",
            },
            Case {
                name: "anywhere",
                json: r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["0.0.0.0/0"], "pathPrefixes": ["/"]}}}"#,
                field: "redirectGuard.allowPlaintext.trustedCidrs[0]",
            },
            Case {
                name: "no cidrs",
                json: r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": [], "pathPrefixes": ["/"]}}}"#,
                field: "redirectGuard.allowPlaintext.trustedCidrs",
            },
            Case {
                name: "no paths",
                json: r#"{"redirectGuard": {"allowPlaintext": {"trustedCidrs": ["10.0.0.0/8"], "pathPrefixes": []}}}"#,
                field: "redirectGuard.allowPlaintext.pathPrefixes",
            },
            Case {
                name: "missing cidrs",
                json: r#"{"redirectGuard": {"allowPlaintext": {"pathPrefixes": ["/"]}}}"#,
                field: "redirectGuard.allowPlaintext",
            },
            Case {
                name: "prefix and pattern",
                json: r#"{"routes": [{"prefix": "/a", "pattern": "/c/{cluster}"}]}"#,
                field: "routes[0].pattern",
            },
            Case {
                name: "neither",
                json: r#"{"routes": [{"name": "x"}]}"#,
                field: "routes[0].prefix",
            },
            Case {
                name: "prefix without param",
                json: r#"{"routes": [{"prefix": "/a"}]}"#,
                field: "routes[0].clusterQueryParam",
            },
            Case {
                name: "pattern with param",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "clusterQueryParam": "c"}]}"#,
                field: "routes[0].clusterQueryParam",
            },
            Case {
                name: "bad pattern",
                json: r#"{"routes": [{"pattern": "/c/{name}"}]}"#,
                field: "routes[0].pattern",
            },
            Case {
                name: "bad allowed cluster",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "allowedClusters": ["Prod"]}]}"#,
                field: "routes[0].allowedClusters[0]",
            },
            Case {
                name: "empty allow-list",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "allowedClusters": []}]}"#,
                field: "routes[0].allowedClusters",
            },
            Case {
                name: "bad header",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "header": "X-Cluster"}]}"#,
                field: "routes[0].header",
            },
            Case {
                name: "reserved header",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "setHeaders": {"authorization": "x"}}]}"#,
                field: "routes[0].setHeaders.authorization",
            },
            Case {
                name: "pseudo header",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "removeHeaders": [":path"]}]}"#,
                field: "routes[0].removeHeaders[0]",
            },
            Case {
                name: "control chars",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "setHeaders": {"x-a": "a\r\nb"}}]}"#,
                field: "routes[0].setHeaders.x-a",
            },
            Case {
                name: "bad authority",
                json: r#"{"routes": [{"pattern": "/c/{cluster}", "authority": "a/b"}]}"#,
                field: "routes[0].authority",
            },
            Case {
                name: "shadowed prefix",
                json: r#"{"routes": [{"prefix": "/a", "clusterQueryParam": "c"}, {"prefix": "/a/b", "clusterQueryParam": "c"}]}"#,
                field: "routes[1]",
            },
            Case {
                name: "duplicate pattern",
                json: r#"{"routes": [{"pattern": "/c/{cluster}"}, {"pattern": "/c/{cluster}/"}]}"#,
                field: "routes[1]",
            },
            Case {
                name: "duplicate name",
                json: r#"{"routes": [{"name": "x", "pattern": "/c/{cluster}"}, {"name": "x", "pattern": "/d/{cluster}"}]}"#,
                field: "routes[1].name",
            },
        ];
        for Case { name, json, field } in cases {
            let e = Policy::from_json(json.as_bytes()).expect_err(name);
            assert_eq!(e.field, *field, "{name}: {e}");
            assert!(e.to_string().contains(field), "{name}: {e}");
        }
    }
}
