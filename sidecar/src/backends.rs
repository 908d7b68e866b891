//! The three pluggable backends (who is asking, may they, where do they go), built from a
//! [`Config`]. The one place that reads the token file and the policy and connects a
//! Kubernetes client, and only when a backend calls the API; it decides nothing about requests.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Authenticator, NoAuth, StaticTokens, TokenFileError};
use crate::authz::{All, AllowAll, Authorizer, PolicyError, StaticPolicy};
use crate::config::{AuthConfig, Config, TargetConfig};
use crate::kube::{AccessReviewer, KubeApi, PodResolver, TokenReviewer};
use crate::target::{FixedTarget, TargetResolver};

/// A backend that cannot be built, named by the flag behind it. Each message ends with its
/// cause's, which is not also given as `source()`: these causes already repeat their own
/// sources in their messages, so a printed chain would say everything twice.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("--token-file: {0}")]
    TokenFile(TokenFileError),
    #[error("--authz-policy: {0}")]
    AuthzPolicy(PolicyError),
    #[error(
        "Kubernetes client (needed by --auth token-review, --authz-sar or --kube-selector): {0}"
    )]
    Kube(::kube::Error),
}

/// The backends a handshake consults, in this order.
pub struct Backends {
    /// Turns the request's credential into a user, or refuses it (401).
    pub auth: Arc<dyn Authenticator>,
    /// Says whether that user may reach the cluster asked for (403).
    pub authz: Arc<dyn Authorizer>,
    /// Turns the cluster and worker into the address to connect to; never the client's choice.
    pub resolver: Arc<dyn TargetResolver>,
}

impl Backends {
    /// Reads the files the configuration names, and connects a Kubernetes client if a backend
    /// calls the API (one client, shared by all of them).
    pub async fn new(config: &Config) -> Result<Backends, BackendError> {
        let mut kube = LazyKube {
            api: None,
            timeout: config.kube_timeout,
        };
        let auth: Arc<dyn Authenticator> = match &config.auth {
            AuthConfig::None => Arc::new(NoAuth),
            AuthConfig::TokenFile(path) => {
                Arc::new(StaticTokens::load(path.clone()).map_err(BackendError::TokenFile)?)
            }
            AuthConfig::TokenReview(review) => Arc::new(
                TokenReviewer::new(
                    kube.api().await?,
                    review.audiences.clone(),
                    review.cache_ttl,
                )
                .limited(review.limits),
            ),
        };
        let mut authorizers: Vec<Box<dyn Authorizer>> = Vec::new();
        if let Some(path) = &config.authz.policy {
            authorizers.push(Box::new(
                StaticPolicy::load(path).map_err(BackendError::AuthzPolicy)?,
            ));
        }
        if let Some(review) = &config.authz.access_review {
            authorizers.push(Box::new(AccessReviewer {
                api: kube.api().await?,
                verb: review.verb.clone(),
                group: review.group.clone(),
                resource: review.resource.clone(),
                namespace: review.namespace.clone(),
            }));
        }
        let authz: Arc<dyn Authorizer> = match authorizers.len() {
            0 => Arc::new(AllowAll),
            _ => Arc::new(All(authorizers)),
        };
        let resolver: Arc<dyn TargetResolver> = match &config.targets {
            TargetConfig::Fixed { addr, cluster } => Arc::new(FixedTarget {
                addr: addr.clone(),
                cluster: cluster.clone(),
            }),
            TargetConfig::Pods(pods) => {
                let api = kube.api().await?;
                Arc::new(PodResolver {
                    namespace: pods
                        .namespace
                        .clone()
                        .unwrap_or_else(|| api.client.default_namespace().to_string()),
                    api,
                    selector_template: pods.selector.clone(),
                    head_label: pods.head_label.clone(),
                    port: pods.port,
                })
            }
        };
        Ok(Backends {
            auth,
            authz,
            resolver,
        })
    }
}

/// The Kubernetes client, connected when the first backend asks for it.
struct LazyKube {
    api: Option<KubeApi>,
    /// Each API call's bound.
    timeout: Duration,
}

impl LazyKube {
    async fn api(&mut self) -> Result<KubeApi, BackendError> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        let client = ::kube::Client::try_default()
            .await
            .map_err(BackendError::Kube)?;
        let api = KubeApi {
            client,
            timeout: self.timeout,
        };
        self.api = Some(api.clone());
        Ok(api)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Args;
    use clap::Parser;

    async fn backends(argv: &[&str]) -> Result<Backends, BackendError> {
        let args =
            Args::try_parse_from(std::iter::once("wsgate-sidecar").chain(argv.iter().copied()))
                .unwrap();
        Backends::new(&Config::from_args(&args).unwrap()).await
    }

    /// A file named by a flag that cannot be read: the error names the flag, then the file.
    #[tokio::test]
    async fn unreadable_files_name_their_flag() {
        struct Case {
            argv: &'static [&'static str],
            want: &'static str,
        }
        let cases = [
            Case {
                argv: &["--auth", "token-file", "--token-file", "/nonexistent/x"],
                want: "--token-file: /nonexistent/x: ",
            },
            Case {
                argv: &[
                    "--auth=none",
                    "--allow-unauthenticated",
                    "--authz-policy",
                    "/nonexistent/p",
                ],
                want: "--authz-policy: /nonexistent/p: ",
            },
        ];
        for c in cases {
            let e = match backends(c.argv).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{:?}: built", c.argv),
            };
            assert!(e.starts_with(c.want), "{:?}: {e}", c.argv);
        }
    }

    #[tokio::test]
    async fn pod_side_defaults() {
        let b = backends(&["--auth=none", "--allow-unauthenticated"])
            .await
            .unwrap();
        assert_eq!(b.resolver.describe(), "fixed target 127.0.0.1:22");
        assert_eq!(
            b.authz.describe(),
            "every authenticated user, every cluster"
        );
    }
}
