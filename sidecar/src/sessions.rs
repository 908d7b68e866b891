//! Live sessions: admission limits (overall and per user) and the read-only `/sessions` listing.
//!
//! Admission happens before the target is connected, so a refused request costs no connection.
//! Both guards release on drop, so no path (error, panic, cancellation) can leak a slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Reject;

/// What `/sessions` shows for one session; byte counters are updated by the bridge.
#[derive(Debug)]
pub struct SessionInfo {
    /// The id of the session's span and audit lines, to find its log.
    pub id: u64,
    pub user: String,
    pub cluster: String,
    pub worker: u32,
    pub target: String,
    /// For the age shown.
    pub started: Instant,
    /// Client → target bytes so far (the bridge's observer adds to it).
    pub bytes_up: AtomicU64,
    /// Target → client bytes so far.
    pub bytes_down: AtomicU64,
    /// Its client's connection was lost, and it waits for the client to resume it.
    pub parked: AtomicBool,
    /// Client connections it has had (1, plus one per resume).
    pub legs: AtomicU32,
}

/// One session as `/sessions` serializes it: a snapshot of [`SessionInfo`].
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: u64,
    pub user: String,
    pub cluster: String,
    pub worker: u32,
    pub target: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub age_seconds: u64,
    /// `live`, or `parked` (waiting for its client to resume it).
    pub state: &'static str,
    /// Client connections so far: 1, plus one per resume.
    pub legs: u32,
}

/// The server's sessions: what limits them, and what lists them.
pub struct Registry {
    /// Caps sessions overall: past it, 503 (the server is full, not the user).
    global: Arc<Semaphore>,
    /// Sessions one user may hold at once.
    max_per_user: usize,
    /// Open (or admitted) sessions per user: past `max_per_user`, 429.
    per_user: Mutex<HashMap<String, usize>>,
    /// What `/sessions` lists, by id.
    live: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    /// The next session id: every WebSocket request takes one ([`Registry::new_id`]).
    next_id: AtomicU64,
}

/// A reserved slot; dropping it frees the slot.
pub struct Admission {
    /// The overall slot, given back on drop.
    _permit: OwnedSemaphorePermit,
    /// Where the user's count is, to lower it on drop.
    registry: Arc<Registry>,
    user: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.per_user.lock() {
            if let Some(n) = m.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.user);
                }
            }
        }
    }
}

/// A listed session; dropping it removes the listing.
pub struct Listed {
    /// Shared with the bridge's observer, which counts the bytes into it.
    pub info: Arc<SessionInfo>,
    /// Where the listing is, to remove it on drop.
    registry: Arc<Registry>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.live.lock() {
            m.remove(&self.info.id);
        }
    }
}

impl Registry {
    pub fn new(max_sessions: usize, max_per_user: usize) -> Arc<Registry> {
        Arc::new(Registry {
            global: Arc::new(Semaphore::new(max_sessions)),
            max_per_user,
            per_user: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn admit(self: &Arc<Self>, user: &str) -> Result<Admission, Reject> {
        let permit = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| Reject::GlobalLimit)?;
        let mut m = self.per_user.lock().map_err(|_| Reject::GlobalLimit)?;
        let n = m.entry(user.to_string()).or_default();
        if *n >= self.max_per_user {
            if *n == 0 {
                m.remove(user);
            }
            return Err(Reject::UserLimit);
        }
        *n += 1;
        Ok(Admission {
            _permit: permit,
            registry: Arc::clone(self),
            user: user.to_string(),
        })
    }

    /// A fresh session id, taken when a request arrives so that its log lines carry it before
    /// it is a session; refused requests leave gaps in the ids of `/sessions`.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn list_session(
        self: &Arc<Self>,
        id: u64,
        user: &str,
        cluster: &str,
        worker: u32,
        target: &str,
    ) -> Listed {
        let info = Arc::new(SessionInfo {
            id,
            user: user.to_string(),
            cluster: cluster.to_string(),
            worker,
            target: target.to_string(),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            legs: AtomicU32::new(1),
        });
        if let Ok(mut m) = self.live.lock() {
            m.insert(info.id, Arc::clone(&info));
        }
        Listed {
            info,
            registry: Arc::clone(self),
        }
    }

    pub fn snapshot(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .live
            .lock()
            .map(|m| {
                m.values()
                    .map(|s| SessionView {
                        id: s.id,
                        user: s.user.clone(),
                        cluster: s.cluster.clone(),
                        worker: s.worker,
                        target: s.target.clone(),
                        bytes_up: s.bytes_up.load(Ordering::Relaxed),
                        bytes_down: s.bytes_down.load(Ordering::Relaxed),
                        age_seconds: s.started.elapsed().as_secs(),
                        state: if s.parked.load(Ordering::Relaxed) {
                            "parked"
                        } else {
                            "live"
                        },
                        legs: s.legs.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| s.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_overall_and_per_user_release_on_drop() {
        let r = Registry::new(3, 2);
        let a1 = r.admit("alice").unwrap();
        let _a2 = r.admit("alice").unwrap();
        assert_eq!(r.admit("alice").err(), Some(Reject::UserLimit));
        let _b1 = r.admit("bob").unwrap();
        assert_eq!(r.admit("carol").err(), Some(Reject::GlobalLimit));
        drop(a1);
        let _a3 = r.admit("alice").unwrap();
        assert_eq!(r.admit("alice").err(), Some(Reject::GlobalLimit));
    }

    #[test]
    fn listing_follows_the_guard() {
        let r = Registry::new(10, 10);
        let l = r.list_session(r.new_id(), "alice", "prod", 0, "127.0.0.1:22");
        l.info.bytes_up.fetch_add(5, Ordering::Relaxed);
        let snap = r.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!((snap[0].user.as_str(), snap[0].bytes_up), ("alice", 5));
        assert_eq!((snap[0].state, snap[0].legs), ("live", 1));
        l.info.parked.store(true, Ordering::Relaxed);
        assert_eq!(r.snapshot()[0].state, "parked");
        drop(l);
        assert!(r.snapshot().is_empty());
    }
}
