//! The change feed: what the change follower reads from the log, fanned out to
//! every `WatchChanges` subscriber of this process. One storage read serves
//! them all; a subscriber that falls behind the bounded buffer is told so (it
//! resumes from its cursor) and never slows the follower or anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::store::{Change, ChangeMark};

/// Reads buffered per subscriber before it counts as too slow.
pub const FEED_BUFFER: usize = 1024;

/// The changes one read of the log found new, and the mark after it: once they
/// are delivered, the mark is a cursor that misses none of them.
#[derive(Debug)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub to: ChangeMark,
}

/// How far the follower has read the log, and when it last did.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    /// Every change before this mark has been sent to the feed.
    pub mark: ChangeMark,
    /// When the read that got there succeeded.
    pub read_at: Instant,
}

#[derive(Clone)]
pub struct ChangeFeed {
    changes: broadcast::Sender<Arc<Batch>>,
    position: Arc<watch::Sender<Option<Position>>>,
    /// How long after a good read the feed still counts as following the log.
    trust_window: Arc<std::sync::Mutex<Duration>>,
    closed: Arc<AtomicBool>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            changes: broadcast::channel(FEED_BUFFER).0,
            position: Arc::new(watch::channel(None).0),
            trust_window: Arc::new(std::sync::Mutex::new(Duration::ZERO)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ChangeFeed {
    /// What each read of the log finds new, from here on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.changes.subscribe()
    }

    /// Updates of how far the log has been read.
    pub fn positions(&self) -> watch::Receiver<Option<Position>> {
        self.position.subscribe()
    }

    /// Whether the follower read the log recently enough for a heartbeat to be
    /// honest: a stuck follower must not make subscribers trust their caches.
    pub fn is_fresh(&self, position: &Position) -> bool {
        position.read_at.elapsed() < *self.trust_window.lock().expect("lock poisoned")
    }

    /// Whether the server is shutting down (subscribers should resume elsewhere).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends every subscription (the server is shutting down).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.position.send_modify(|_| {});
    }

    pub(super) fn set_trust_window(&self, window: Duration) {
        *self.trust_window.lock().expect("lock poisoned") = window;
    }

    /// Sends what a read found new (`changes`, which may be none) and the
    /// position it reached.
    pub(super) fn publish(&self, changes: Vec<Change>, to: ChangeMark, read_at: Instant) {
        if !changes.is_empty() {
            // No subscriber: nothing to do.
            let _ = self.changes.send(Arc::new(Batch { changes, to }));
        }
        self.position
            .send_replace(Some(Position { mark: to, read_at }));
    }
}
