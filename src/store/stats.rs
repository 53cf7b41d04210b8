//! What the store counts about itself, and snapshots of the pool and tokens.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Histogram;

/// Statements issued, by kind: for tests that prove what does and does not reach
/// storage, and for operators.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Lookups of a token by its secret's hash (the Introspect path).
    pub hash_lookups: AtomicU64,
    /// Statements that modify `tokens`.
    pub writes: AtomicU64,
    /// Latency of storage calls, including any wait for a pooled connection.
    pub call_latency: Histogram,
    /// Calls that found no idle connection in a full pool.
    pub calls_waited: AtomicU64,
}

/// Stored tokens by state at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub active: i64,
    pub expired: i64,
    pub revoked: i64,
    pub suspended: i64,
}

/// The connection pool at one moment.
#[derive(Clone, Copy, Debug)]
pub struct PoolStatus {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

impl StoreStats {
    pub(super) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
