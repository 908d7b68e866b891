//! SSH-proxy routing: find the cluster a request names, validate it, and say where it goes.
//!
//! A cluster comes from a query parameter (SkyPilot's `cluster_name`) or a `{cluster}` path
//! segment (`/c/{cluster}/...`). It must be an RFC 1123 label and, when an allow-list is set, on
//! it. A request that matches a rule but names a bad cluster is refused, never forwarded: an
//! unvalidated value must not pick a backend.

use std::collections::BTreeSet;

use wsgate_proto::names::is_dns_label;
use wsgate_proto::query::{percent_decode, query_pairs, split_query};

/// How a rule matches a request path (query excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A path prefix (segment-aware); the cluster is the query parameter `query_param`.
    Prefix { prefix: String, query_param: String },
    /// Leading path segments, one of which is `{cluster}`.
    Pattern { segments: Vec<Segment> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Cluster,
}

/// A compiled routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Shown in logs and config errors.
    pub name: String,
    pub matcher: Matcher,
    /// `None`: any valid label; `Some`: only these.
    pub allowed_clusters: Option<BTreeSet<String>>,
    /// The header the VirtualService matches on (default `x-wsgate-cluster`).
    pub header: String,
    /// Remove the matched prefix from `:path` before forwarding.
    pub strip_prefix: bool,
    /// A new `:authority`, for backends that check it.
    pub authority: Option<String>,
    /// Headers removed from matched requests (e.g. `user-agent`, `origin`).
    pub remove_headers: Vec<String>,
    /// Headers set on matched requests.
    pub set_headers: Vec<(String, String)>,
}

/// Why a request that matched a rule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the request names no cluster")]
    MissingCluster,
    #[error("the request names the cluster more than once")]
    AmbiguousCluster,
    #[error("the cluster name is not a valid RFC 1123 label")]
    InvalidCluster,
    #[error("the cluster is not served by this gateway")]
    UnknownCluster,
}

impl RouteError {
    pub const ALL: [RouteError; 4] = [
        RouteError::MissingCluster,
        RouteError::AmbiguousCluster,
        RouteError::InvalidCluster,
        RouteError::UnknownCluster,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            RouteError::MissingCluster => "missing_cluster",
            RouteError::AmbiguousCluster => "ambiguous_cluster",
            RouteError::InvalidCluster => "invalid_cluster",
            RouteError::UnknownCluster => "unknown_cluster",
        }
    }
}

/// A successful match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'r> {
    pub route: &'r Route,
    pub cluster: String,
    /// The new `:path` when `strip_prefix` is set.
    pub new_path: Option<String>,
}

/// A refused match: which rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused<'r> {
    pub route: &'r Route,
    pub error: RouteError,
}

/// The first rule matching `path` (with query), if any, and its outcome.
pub fn route<'r>(routes: &'r [Route], path: &str) -> Option<Result<Routed<'r>, Refused<'r>>> {
    let (path_only, query) = split_query(path);
    routes.iter().find_map(|r| {
        let (raw_cluster, consumed) = match &r.matcher {
            Matcher::Prefix {
                prefix,
                query_param,
            } => {
                if !path_has_prefix(path_only, prefix) {
                    return None;
                }
                (query_cluster(query, query_param), prefix.len())
            }
            Matcher::Pattern { segments } => {
                let (cluster, consumed) = match_pattern(segments, path_only)?;
                (Ok(cluster.to_string()), consumed)
            }
        };
        let result = raw_cluster
            .and_then(|c| validate_cluster(c, r.allowed_clusters.as_ref()))
            .map(|cluster| Routed {
                route: r,
                cluster,
                new_path: r
                    .strip_prefix
                    .then(|| rebuild_path(&path_only[consumed..], query)),
            })
            .map_err(|error| Refused { route: r, error });
        Some(result)
    })
}

fn validate_cluster(c: String, allowed: Option<&BTreeSet<String>>) -> Result<String, RouteError> {
    if !is_dns_label(&c) {
        return Err(RouteError::InvalidCluster);
    }
    match allowed {
        Some(set) if !set.contains(&c) => Err(RouteError::UnknownCluster),
        _ => Ok(c),
    }
}

/// Segment-aware prefix: `/ssh` matches `/ssh` and `/ssh/x`, not `/sshx`. `path` has no query.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn query_cluster(query: Option<&str>, param: &str) -> Result<String, RouteError> {
    let mut found: Option<String> = None;
    for (k, v) in query_pairs(query) {
        // A name that does not decode cannot be ours; a value that does not decode is invalid.
        if percent_decode(k).as_deref() != Some(param) {
            continue;
        }
        if found.is_some() {
            return Err(RouteError::AmbiguousCluster);
        }
        found = Some(percent_decode(v).ok_or(RouteError::InvalidCluster)?);
    }
    match found {
        Some(c) if c.is_empty() => Err(RouteError::InvalidCluster),
        Some(c) => Ok(c),
        None => Err(RouteError::MissingCluster),
    }
}

/// Matches leading segments; returns the raw cluster segment and the bytes of path consumed.
fn match_pattern<'p>(segments: &[Segment], path: &'p str) -> Option<(&'p str, usize)> {
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let mut consumed = 0usize;
    let mut cluster = None;
    for seg in segments {
        let part = parts.next()?;
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Literal(_) => return None,
            Segment::Cluster => cluster = Some(part),
        }
        consumed += 1 + part.len();
    }
    Some((cluster?, consumed))
}

fn rebuild_path(rest: &str, query: Option<&str>) -> String {
    let mut p = String::with_capacity(rest.len() + 1);
    if !rest.starts_with('/') {
        p.push('/');
    }
    p.push_str(rest);
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    p
}

/// Parses a `pattern` such as `/c/{cluster}/`: literal segments and exactly one `{cluster}`.
pub fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, &'static str> {
    let body = pattern
        .strip_prefix('/')
        .ok_or("must start with '/'")?
        .trim_end_matches('/');
    let mut segments = Vec::new();
    for part in body.split('/') {
        if part == "{cluster}" {
            segments.push(Segment::Cluster);
        } else if part.is_empty() {
            return Err("has an empty segment ('//')");
        } else if part.contains(['{', '}', '?', '#', '%']) {
            return Err("segments are literals or exactly '{cluster}'");
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    match segments.iter().filter(|s| **s == Segment::Cluster).count() {
        1 => Ok(segments),
        0 => Err("has no '{cluster}' segment"),
        _ => Err("has more than one '{cluster}' segment"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_rule(allowed: Option<&[&str]>, strip: bool) -> Route {
        Route {
            name: "ssh".into(),
            matcher: Matcher::Prefix {
                prefix: "/kubernetes-pod-ssh-proxy".into(),
                query_param: "cluster_name".into(),
            },
            allowed_clusters: allowed.map(|a| a.iter().map(|s| s.to_string()).collect()),
            header: "x-wsgate-cluster".into(),
            strip_prefix: strip,
            authority: None,
            remove_headers: vec![],
            set_headers: vec![],
        }
    }

    fn pattern_rule(p: &str, strip: bool) -> Route {
        Route {
            name: "ui".into(),
            matcher: Matcher::Pattern {
                segments: parse_pattern(p).unwrap(),
            },
            strip_prefix: strip,
            ..prefix_rule(None, false)
        }
    }

    type Want = Option<Result<(&'static str, Option<&'static str>), RouteError>>;

    fn run(routes: &[Route], path: &str) -> Option<Result<(String, Option<String>), RouteError>> {
        route(routes, path).map(|r| r.map(|ok| (ok.cluster, ok.new_path)).map_err(|e| e.error))
    }

    #[test]
    fn routing_table() {
        use RouteError::*;
        let sky = [prefix_rule(None, false)];
        let sky_allow = [prefix_rule(Some(&["prod", "dev"]), false)];
        let sky_strip = [prefix_rule(None, true)];
        let ui = [pattern_rule("/c/{cluster}/", true)];
        let ui_keep = [pattern_rule("/c/{cluster}", false)];
        struct Case<'a> {
            name: &'static str,
            routes: &'a [Route],
            path: &'static str,
            want: Want,
        }
        let cases: Vec<Case> = vec![
            Case {
                name: "skypilot query",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=mycluster&worker=0&client_version=62",
                want: Some(Ok(("mycluster", None))),
            },
            Case {
                name: "other path is not routed",
                routes: &sky,
                path: "/api/v1/status?cluster_name=x",
                want: None,
            },
            Case {
                name: "prefix is segment-aware",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxyx?cluster_name=a",
                want: None,
            },
            Case {
                name: "missing cluster",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?worker=0",
                want: Some(Err(MissingCluster)),
            },
            Case {
                name: "no query",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy",
                want: Some(Err(MissingCluster)),
            },
            Case {
                name: "empty cluster",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "repeated cluster",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=a&cluster_name=b",
                want: Some(Err(AmbiguousCluster)),
            },
            Case {
                name: "encoded repeated name",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=a&cluster%5Fname=b",
                want: Some(Err(AmbiguousCluster)),
            },
            Case {
                name: "encoded dots",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=%2e%2e",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "dotted name",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=a.b",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "host:port",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=10.0.0.1:22",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "uppercase",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=Prod",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "bad percent",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=%zz",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "percent-encoded valid",
                routes: &sky,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=my%2Dcluster",
                want: Some(Ok(("my-cluster", None))),
            },
            Case {
                name: "allow-listed",
                routes: &sky_allow,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=prod",
                want: Some(Ok(("prod", None))),
            },
            Case {
                name: "not allow-listed",
                routes: &sky_allow,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=staging",
                want: Some(Err(UnknownCluster)),
            },
            Case {
                name: "strip prefix keeps query",
                routes: &sky_strip,
                path: "/kubernetes-pod-ssh-proxy?cluster_name=a",
                want: Some(Ok(("a", Some("/?cluster_name=a")))),
            },
            Case {
                name: "path pattern",
                routes: &ui,
                path: "/c/prod/api/v1/pods",
                want: Some(Ok(("prod", Some("/api/v1/pods")))),
            },
            Case {
                name: "path pattern, nothing after",
                routes: &ui,
                path: "/c/prod",
                want: Some(Ok(("prod", Some("/")))),
            },
            Case {
                name: "path pattern keeps query",
                routes: &ui,
                path: "/c/prod/x?watch=1",
                want: Some(Ok(("prod", Some("/x?watch=1")))),
            },
            Case {
                name: "pattern without strip",
                routes: &ui_keep,
                path: "/c/prod/x",
                want: Some(Ok(("prod", None))),
            },
            Case {
                name: "dot-dot segment",
                routes: &ui,
                path: "/c/../etc",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "empty segment",
                routes: &ui,
                path: "/c//x",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "encoded slash",
                routes: &ui,
                path: "/c/a%2Fb/x",
                want: Some(Err(InvalidCluster)),
            },
            Case {
                name: "literal must match",
                routes: &ui,
                path: "/d/prod/x",
                want: None,
            },
            Case {
                name: "too short",
                routes: &ui,
                path: "/c",
                want: None,
            },
            Case {
                name: "double slash before literal",
                routes: &ui,
                path: "//c/prod",
                want: None,
            },
        ];
        for Case {
            name,
            routes,
            path,
            want,
        } in cases
        {
            let want = want.map(|w| w.map(|(c, p)| (c.to_string(), p.map(String::from))));
            assert_eq!(run(routes, path), want, "{name}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let routes = [
            pattern_rule("/c/{cluster}", false),
            prefix_rule(None, false),
        ];
        let r = route(&routes, "/c/a").unwrap().unwrap();
        assert_eq!(r.route.name, "ui");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("/c/{cluster}/"),
            Ok(vec![Segment::Literal("c".into()), Segment::Cluster])
        );
        assert!(parse_pattern("c/{cluster}").is_err());
        assert!(parse_pattern("/c/x").is_err());
        assert!(parse_pattern("/{cluster}/{cluster}").is_err());
        assert!(parse_pattern("/c//{cluster}").is_err());
        assert!(parse_pattern("/c/{name}").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(path_has_prefix("/ssh", "/ssh"));
        assert!(path_has_prefix("/ssh/x", "/ssh"));
        assert!(!path_has_prefix("/sshx", "/ssh"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
