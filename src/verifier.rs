//! The one place a presented secret is checked: format and checksum first (junk
//! never reaches storage), then the cache, then storage, then the token's state.
//! Also the cache's two background duties: following changes made elsewhere and
//! writing `last_used_at` behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::cache::{CacheSettings, Cached, CachedToken, TokenCache};
use crate::clock;
use crate::model::TokenState;
use crate::store::{Store, StoreResult};
use crate::token::{SecretHash, TokenFormat};

/// How far back each poll of `token_changes` looks beyond the newest change it
/// saw: covers commits that land after later-stamped ones and small clock steps.
const CHANGE_OVERLAP_MICROS: i64 = 10_000_000;
/// Changes older than this are pruned: no process can still need them.
const CHANGE_RETENTION_MICROS: i64 = 86_400_000_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRELOAD_BATCH: usize = 10_000;

/// Why a presented token is not active. Never sent to introspection callers
/// (RFC 7662); logged at debug level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    format: TokenFormat,
    store: Store,
    cache: TokenCache,
    lookups: Semaphore,
    /// Tokens used since the last write-behind flush.
    used: Mutex<Vec<Arc<CachedToken>>>,
}

impl Verifier {
    pub fn new(format: TokenFormat, store: Store, cache: CacheSettings) -> Verifier {
        // Cache misses may use all storage connections but one, so that a flood
        // of unknown tokens cannot starve management calls; the rest wait.
        let lookups = (store.max_connections() as usize).saturating_sub(1).max(1);
        Verifier {
            inner: Arc::new(Inner {
                format,
                store,
                cache: TokenCache::new(cache),
                lookups: Semaphore::new(lookups),
                used: Mutex::default(),
            }),
        }
    }

    pub fn format(&self) -> &TokenFormat {
        &self.inner.format
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The token `presented` stands for, if it is active now. A storage failure is
    /// an error, never an answer: the caller must fail closed.
    pub async fn verify(&self, presented: &str) -> StoreResult<Result<Arc<CachedToken>, Inactive>> {
        let inner = &*self.inner;
        let Some(hash) = inner.format.parse(presented) else {
            return Ok(Err(Inactive::Malformed));
        };
        let token = match inner.cache.get(&hash) {
            Cached::Found(token) => token,
            Cached::Absent => return Ok(Err(Inactive::Unknown)),
            Cached::Miss(epoch) => match self.look_up(hash, epoch).await? {
                Some(token) => token,
                None => return Ok(Err(Inactive::Unknown)),
            },
        };
        let now = clock::now_micros();
        match token.state_at(now) {
            TokenState::Active => {
                if token.touch(now) {
                    inner
                        .used
                        .lock()
                        .expect("lock poisoned")
                        .push(token.clone());
                }
                Ok(Ok(token))
            }
            TokenState::Expired => Ok(Err(Inactive::Expired)),
            TokenState::Revoked => Ok(Err(Inactive::Revoked)),
        }
    }

    async fn look_up(&self, hash: SecretHash, epoch: u64) -> StoreResult<Option<Arc<CachedToken>>> {
        let inner = &*self.inner;
        let _permit = inner
            .lookups
            .acquire()
            .await
            .expect("semaphore never closed");
        Ok(match inner.store.find_by_hash(&hash).await? {
            Some(stored) => Some(inner.cache.insert_found(
                &hash,
                stored.seq,
                &stored.record,
                epoch,
            )),
            None => {
                inner.cache.insert_absent(&hash, epoch);
                None
            }
        })
    }

    /// Drops a revoked or deleted token from this process's cache; call after the
    /// change is stored and before answering, so the next call here sees it.
    pub fn forget(&self, hash: &SecretHash) {
        self.inner.cache.invalidate(hash);
    }

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

    /// Writes the last use of every token used since the previous flush, one row
    /// per token. On failure the tokens stay queued for the next flush.
    pub async fn flush_last_used(&self) -> StoreResult<usize> {
        let inner = &*self.inner;
        let used = std::mem::take(&mut *inner.used.lock().expect("lock poisoned"));
        let mut latest: HashMap<i64, i64> = HashMap::with_capacity(used.len());
        for token in &used {
            let at = token.dequeue();
            let entry = latest.entry(token.seq).or_insert(at);
            *entry = (*entry).max(at);
        }
        let uses: Vec<(i64, i64)> = latest.into_iter().collect();
        if uses.is_empty() {
            return Ok(0);
        }
        if let Err(err) = inner.store.record_last_used(&uses).await {
            let mut queue = inner.used.lock().expect("lock poisoned");
            queue.extend(used.into_iter().filter(|token| token.mark_queued()));
            return Err(err);
        }
        Ok(uses.len())
    }

    /// Flushes `last_used_at` every `interval`, forever.
    pub async fn write_behind(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let started = Instant::now();
            match self.flush_last_used().await {
                Ok(0) => {}
                Ok(written) => {
                    tracing::info!(written, elapsed = ?started.elapsed(), "last_used_at flushed")
                }
                Err(err) => tracing::warn!(error = %err, "last_used_at flush failed; will retry"),
            }
        }
    }

    /// Polls `token_changes` every `interval`, forever, and invalidates what other
    /// processes revoked or deleted. If a poll fails the whole cache is dropped:
    /// changes may have been missed, and every answer then comes from storage.
    pub async fn follow_changes(self, interval: Duration) {
        let inner = &*self.inner;
        // The first poll reads the whole (pruned) log: cheap, and independent of
        // any difference between this clock and the database's.
        let mut since = i64::MIN;
        let mut seen: HashMap<i64, i64> = HashMap::new();
        let mut last_prune = Instant::now();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match inner.store.changes_since(since).await {
                Ok(changes) => {
                    for change in changes {
                        if seen.insert(change.seq, change.changed_at).is_none() {
                            inner.cache.invalidate(&change.secret_hash);
                        }
                    }
                    if let Some(newest) = seen.values().copied().max() {
                        since = since.max(newest - CHANGE_OVERLAP_MICROS);
                        seen.retain(|_, changed_at| *changed_at > since);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read token changes; cache dropped");
                    inner.cache.clear();
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                let before = clock::now_micros() - CHANGE_RETENTION_MICROS;
                if let Err(err) = inner.store.prune_changes(before).await {
                    tracing::warn!(error = %err, "pruning token changes failed");
                }
            }
        }
    }
}
