//! Coherence: how this process's cache learns of changes made elsewhere (other
//! replicas, the operator's commands, manual SQL) — by polling the change log,
//! and on Postgres by `LISTEN` as they commit — and stops trusting itself when
//! it cannot tell; also the preload that fills the cache at start.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::domain::clock;
use crate::store::{ChangeMark, Heard, StoreResult};

use super::Verifier;
use super::cache::TokenCache;

/// Changes older than this are pruned: no process can still need them.
const CHANGE_RETENTION_MICROS: i64 = 86_400_000_000;
/// Refusals of callers without a valid credential are kept this long (30 days);
/// every other audit event is kept for good.
const ANONYMOUS_DENIAL_RETENTION_MICROS: i64 = 30 * 24 * 3_600 * 1_000_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long past one poll interval the cache may answer without a successful poll.
const CHANGE_POLL_SLACK: Duration = Duration::from_secs(1);
const PRELOAD_BATCH: usize = 10_000;
/// Pause before listening again after the listener failed outright.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// Pause after the listening connection was re-established.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

impl Verifier {
    /// Loads stored tokens, newest first, until the cache is full, so that even
    /// the first call for any of them is answered from memory. Runs beside
    /// serving: lookups meanwhile go to storage as usual.
    pub async fn preload(&self) -> StoreResult<usize> {
        let inner = &*self.inner;
        let capacity = inner.cache.capacity();
        let started = Instant::now();
        let mut cursor = None;
        let mut loaded = 0;
        while loaded < capacity {
            // Rows read after this snapshot are cached only if their shard saw no
            // invalidation meanwhile, exactly as for single lookups.
            let epochs = inner.cache.epochs();
            let batch = (capacity - loaded).min(PRELOAD_BATCH);
            let page = inner.store.scan_with_hashes(cursor, batch as u32).await?;
            for (hash, stored) in &page.tokens {
                let epoch = TokenCache::epoch_in(&epochs, hash);
                inner
                    .cache
                    .insert_found(hash, stored.seq, &stored.record, epoch);
            }
            loaded += page.tokens.len();
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        tracing::info!(loaded, elapsed = ?started.elapsed(), "token cache preloaded");
        Ok(loaded)
    }

    /// Polls `token_changes` every `interval`, forever, and invalidates what other
    /// processes revoked or deleted. If a poll fails the whole cache is dropped:
    /// changes may have been missed, and every answer then comes from storage.
    pub async fn follow_changes(self, interval: Duration) {
        let inner = &*self.inner;
        // The first read covers the whole (pruned) log.
        let mut mark = ChangeMark::default();
        // Changes the latest read returned: a Postgres read may return them again.
        let mut seen: HashSet<i64> = HashSet::new();
        let mut last_prune = Instant::now();
        // The cache answers only while polls keep succeeding: at most one interval
        // plus this slack after the last good one (a hung poll cannot extend it).
        let trust_window = interval + CHANGE_POLL_SLACK;
        inner.cache.trust_for(trust_window);
        inner.feed.set_trust_window(trust_window);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = inner.catch_up.notified() => {}
            }
            let polled = Instant::now();
            match inner.store.changes_since(mark).await {
                Ok((changes, next)) => {
                    let mut returned = HashSet::with_capacity(changes.len());
                    let mut new = Vec::new();
                    for change in changes {
                        returned.insert(change.seq);
                        if !seen.contains(&change.seq) {
                            inner.cache.invalidate(&change.secret_hash);
                            new.push(change);
                        }
                    }
                    seen = returned;
                    inner.feed.publish(new, next, polled);
                    mark = next;
                    inner
                        .cache
                        .trust_for(trust_window.saturating_sub(polled.elapsed()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read token changes; cache dropped");
                    inner.cache.clear();
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                // On a task of its own: a slow prune must not delay the next poll.
                let store = inner.store.clone();
                tokio::spawn(async move {
                    let before = clock::now_micros() - CHANGE_RETENTION_MICROS;
                    if let Err(err) = store.prune_changes(before).await {
                        tracing::warn!(error = %err, "pruning token changes failed");
                    }
                    let before = clock::now_micros() - ANONYMOUS_DENIAL_RETENTION_MICROS;
                    if let Err(err) = store.prune_anonymous_denials(before).await {
                        tracing::warn!(error = %err, "pruning anonymous refusals failed");
                    }
                });
            }
        }
    }

    /// Notifications may have been missed: drop the cache, answer from storage
    /// until the change log has been read again (the poll restores trust).
    fn distrust_until_caught_up(&self) {
        let inner = &*self.inner;
        inner.cache.trust_for(Duration::ZERO);
        inner.cache.clear();
        inner.catch_up.notify_one();
    }

    /// Drops tokens from the cache as their revokes and deletes commit anywhere
    /// (Postgres LISTEN/NOTIFY), forever; returns at once on SQLite. When the
    /// listening connection is lost the cache is dropped (answers come from
    /// storage) and, once listening again, the change log is polled at once to
    /// catch up on what was missed.
    pub async fn follow_notifications(self) {
        let inner = &*self.inner;
        loop {
            let mut listener = match inner.store.listen_for_changes().await {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for token changes; retrying");
                    tokio::time::sleep(LISTEN_RETRY).await;
                    continue;
                }
            };
            inner.catch_up.notify_one();
            loop {
                match listener.next().await {
                    Ok(Heard::Changed(hash)) => {
                        inner.cache.invalidate(&hash);
                        // Subscribers hear of it from the log, read now.
                        inner.catch_up.notify_one();
                    }
                    Ok(Heard::Reconnected) => {
                        tracing::warn!(
                            "token change notifications were interrupted; cache dropped"
                        );
                        self.distrust_until_caught_up();
                        // A connection that keeps dying must not spin this loop.
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "token change notifications failed; cache dropped");
                        self.distrust_until_caught_up();
                        break;
                    }
                }
            }
            tokio::time::sleep(LISTEN_RETRY).await;
        }
    }
}
