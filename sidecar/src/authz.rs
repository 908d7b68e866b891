//! May this user reach this cluster? A static policy file and/or (central mode) a Kubernetes
//! `SubjectAccessReview`, behind one trait.
//!
//! Without any policy every authenticated user may reach every cluster the resolver knows; with
//! one, only what a rule grants (default deny).

use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;

use crate::auth::Identity;
use crate::error::Reject;

#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    async fn authorize(&self, who: &Identity, cluster: &str) -> Result<(), Reject>;
    fn describe(&self) -> String;
}

/// Everyone authenticated may reach every cluster.
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _who: &Identity, _cluster: &str) -> Result<(), Reject> {
        Ok(())
    }

    fn describe(&self) -> String {
        "every authenticated user, every cluster".to_string()
    }
}

/// `{"rules": [{"users": ["alice"], "groups": ["sre"], "clusters": ["prod", "dev-*"]}]}`:
/// a rule grants its clusters to its users and to members of its groups. A cluster pattern is
/// a name, `*`, or a name with one `*` at the start or the end.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPolicy {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    clusters: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, serde_json::Error),
    #[error("{0}: rules[{1}]: {2}")]
    Invalid(String, usize, &'static str),
}

fn pattern_matches(pattern: &str, cluster: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return cluster.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return cluster.ends_with(suffix);
    }
    pattern == cluster
}

impl StaticPolicy {
    pub fn load(path: &Path) -> Result<StaticPolicy, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io(shown.clone(), e))?;
        Self::parse(&shown, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<StaticPolicy, PolicyError> {
        let p: StaticPolicy =
            serde_json::from_str(text).map_err(|e| PolicyError::Parse(name.to_string(), e))?;
        for (i, r) in p.rules.iter().enumerate() {
            if r.users.is_empty() && r.groups.is_empty() {
                return Err(PolicyError::Invalid(
                    name.into(),
                    i,
                    "names no users or groups",
                ));
            }
            if r.clusters.is_empty() {
                return Err(PolicyError::Invalid(name.into(), i, "names no clusters"));
            }
            if r.clusters.iter().any(|c| {
                c.matches('*').count() > 1
                    || (c.len() > 1 && c.contains('*') && !c.starts_with('*') && !c.ends_with('*'))
            }) {
                return Err(PolicyError::Invalid(
                    name.into(),
                    i,
                    "a pattern has one '*', at the start or the end",
                ));
            }
        }
        Ok(p)
    }

    pub fn allows(&self, who: &Identity, cluster: &str) -> bool {
        self.rules.iter().any(|r| {
            let subject =
                r.users.contains(&who.user) || r.groups.iter().any(|g| who.groups.contains(g));
            subject && r.clusters.iter().any(|p| pattern_matches(p, cluster))
        })
    }
}

#[async_trait]
impl Authorizer for StaticPolicy {
    async fn authorize(&self, who: &Identity, cluster: &str) -> Result<(), Reject> {
        if self.allows(who, cluster) {
            Ok(())
        } else {
            Err(Reject::Forbidden)
        }
    }

    fn describe(&self) -> String {
        format!("static policy ({} rules)", self.rules.len())
    }
}

/// Every authorizer must agree (e.g. the static policy and a SubjectAccessReview).
pub struct All(pub Vec<Box<dyn Authorizer>>);

#[async_trait]
impl Authorizer for All {
    async fn authorize(&self, who: &Identity, cluster: &str) -> Result<(), Reject> {
        for a in &self.0 {
            a.authorize(who, cluster).await?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|a| a.describe()).collect();
        parts.join(" and ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn policy_table() {
        let p = StaticPolicy::parse(
            "p",
            r#"{"rules": [
                {"users": ["alice"], "clusters": ["prod"]},
                {"groups": ["dev"], "clusters": ["dev-*", "*-sandbox"]},
                {"users": ["root"], "clusters": ["*"]}
            ]}"#,
        )
        .unwrap();
        struct Case {
            identity: Identity,
            cluster: &'static str,
            allowed: bool,
        }
        let cases = [
            Case {
                identity: who("alice", &[]),
                cluster: "prod",
                allowed: true,
            },
            Case {
                identity: who("alice", &[]),
                cluster: "dev-1",
                allowed: false,
            },
            Case {
                identity: who("bob", &["dev"]),
                cluster: "dev-1",
                allowed: true,
            },
            Case {
                identity: who("bob", &["dev"]),
                cluster: "team-sandbox",
                allowed: true,
            },
            Case {
                identity: who("bob", &["dev"]),
                cluster: "prod",
                allowed: false,
            },
            Case {
                identity: who("root", &[]),
                cluster: "anything",
                allowed: true,
            },
            Case {
                identity: who("mallory", &["alice"]),
                cluster: "prod",
                allowed: false,
            },
        ];
        for Case {
            identity,
            cluster,
            allowed,
        } in cases
        {
            assert_eq!(
                p.allows(&identity, cluster),
                allowed,
                "{identity:?} → {cluster}"
            );
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, want) in [
            (
                r#"{"rules": [{"clusters": ["a"]}]}"#,
                "rules[0]: names no users or groups",
            ),
            (
                r#"{"rules": [{"users": ["a"], "clusters": []}]}"#,
                "rules[0]: names no clusters",
            ),
            (
                r#"{"rules": [{"users": ["a"], "clusters": ["a*b"]}]}"#,
                "rules[0]: a pattern",
            ),
            (
                r#"{"rules": [{"user": ["a"], "clusters": ["a"]}]}"#,
                "unknown field",
            ),
        ] {
            let e = StaticPolicy::parse("p", text).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
