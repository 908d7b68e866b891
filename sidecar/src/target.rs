//! Where a session goes: a cluster and worker resolved to an address, never named by the client.
//!
//! Pod-side mode has one fixed target (`--target 127.0.0.1:22`); central mode resolves through
//! the Kubernetes API (`kube.rs`). Either way the request supplies only a validated cluster name
//! and a worker index, so the sidecar cannot be used as an open proxy.

use async_trait::async_trait;

use crate::error::Reject;

#[async_trait]
pub trait TargetResolver: Send + Sync + 'static {
    /// The `host:port` to connect to for this cluster's worker.
    async fn resolve(&self, cluster: &str, worker: u32) -> Result<String, Reject>;
    fn describe(&self) -> String;
}

/// Pod-side mode: this pod's own sshd. Worker 0 only; an optional cluster name to insist on.
pub struct FixedTarget {
    pub addr: String,
    /// When set, requests naming another cluster get 404 (they reached the wrong pod).
    pub cluster: Option<String>,
}

#[async_trait]
impl TargetResolver for FixedTarget {
    async fn resolve(&self, cluster: &str, worker: u32) -> Result<String, Reject> {
        if self.cluster.as_deref().is_some_and(|c| c != cluster) {
            return Err(Reject::UnknownCluster);
        }
        if worker != 0 {
            return Err(Reject::UnknownWorker(worker));
        }
        Ok(self.addr.clone())
    }

    fn describe(&self) -> String {
        match &self.cluster {
            Some(c) => format!("fixed target {} for cluster {c}", self.addr),
            None => format!("fixed target {}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_target() {
        let t = FixedTarget {
            addr: "127.0.0.1:22".into(),
            cluster: Some("prod".into()),
        };
        assert_eq!(t.resolve("prod", 0).await.unwrap(), "127.0.0.1:22");
        assert_eq!(t.resolve("dev", 0).await, Err(Reject::UnknownCluster));
        assert_eq!(t.resolve("prod", 1).await, Err(Reject::UnknownWorker(1)));
        let any = FixedTarget {
            addr: "127.0.0.1:22".into(),
            cluster: None,
        };
        assert!(any.resolve("whatever", 0).await.is_ok());
    }
}
