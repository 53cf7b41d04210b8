//! The one place a presented secret is checked: format and checksum first (junk
//! never reaches storage), then the cache, then storage, then the token's state.
//! Also the cache's two background duties: following changes made elsewhere and
//! writing `last_used_at` behind.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::authority::Authority;
use crate::cache::{CacheSettings, Cached, CachedToken, TokenCache};
use crate::clock;
use crate::metrics::{CacheLookup, Metrics};
use crate::model::{Actor, Owner, TokenRecord, TokenState};
use crate::store::{
    ChangeMark, Event, EventKind, HashMatch, Heard, Rotated, Rotation, Store, StoreResult,
    StoredToken,
};
use crate::token::{Secret, SecretHash, TokenFormat};

/// Changes older than this are pruned: no process can still need them.
/// Refusals of callers without a valid credential are kept this long (30 days);
/// every other audit event is kept for good.
const ANONYMOUS_DENIAL_RETENTION_MICROS: i64 = 30 * 24 * 3_600 * 1_000_000;
const CHANGE_RETENTION_MICROS: i64 = 86_400_000_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long past one poll interval the cache may answer without a successful poll.
const CHANGE_POLL_SLACK: Duration = Duration::from_secs(1);
const PRELOAD_BATCH: usize = 10_000;
/// Pause before listening again after the listener failed outright.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// Pause after the listening connection was re-established.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Who is asking: Introspect misses share a bounded number of storage
/// connections; the bearer check of a management call does not queue behind them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Introspect,
    Management,
}

/// Runs `work` on its own task, so that dropping the caller's future does not
/// cancel it half-way.
async fn run_to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(work).await {
        Ok(output) => output,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Why a presented token is not active. Never sent to introspection callers
/// (RFC 7662); logged at debug level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    Unknown,
    Expired,
    Revoked,
    /// The token has an IP allowlist and the client is outside it (or unknown).
    AddressNotAllowed,
}

/// A use waiting for the write-behind flush: the token, and the client address
/// of the first use since the previous flush.
struct QueuedUse {
    token: Arc<CachedToken>,
    client: Option<IpAddr>,
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
    /// Tokens used since the last write-behind flush, by `seq`: bounded by the
    /// number of distinct tokens, whatever the cache holds.
    used: Mutex<HashMap<i64, QueuedUse>>,
    /// Serialises flushes, so that shutdown's final flush runs after (not during)
    /// a periodic one.
    flushing: tokio::sync::Mutex<()>,
    /// Asks the change follower to poll now (notifications were missed).
    catch_up: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl Verifier {
    pub fn new(format: TokenFormat, store: Store, cache: CacheSettings) -> Verifier {
        // Introspect misses may use all storage connections but one, so that a
        // flood of unknown tokens cannot starve management calls; the rest wait.
        let lookups = (store.max_connections() as usize).saturating_sub(1).max(1);
        Verifier {
            inner: Arc::new(Inner {
                format,
                store,
                cache: TokenCache::new(cache),
                lookups: Semaphore::new(lookups),
                used: Mutex::default(),
                flushing: tokio::sync::Mutex::new(()),
                catch_up: tokio::sync::Notify::new(),
                metrics: Arc::default(),
            }),
        }
    }

    pub fn format(&self) -> &TokenFormat {
        &self.inner.format
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The token `presented` stands for, if it is active now. A storage failure is
    /// an error, never an answer: the caller must fail closed.
    /// `client` is the address the token is used from, when known: checked
    /// against the token's allowlist and recorded as its last use.
    pub async fn verify(
        &self,
        presented: &str,
        lane: Lane,
        client: Option<IpAddr>,
    ) -> StoreResult<Result<Arc<CachedToken>, Inactive>> {
        let inner = &*self.inner;
        let Some(hash) = inner.format.parse(presented) else {
            return Ok(Err(Inactive::Malformed));
        };
        let metrics = &inner.metrics;
        let token = match inner.cache.get(&hash) {
            Cached::Found(token) => {
                metrics.record_cache(CacheLookup::Hit);
                token
            }
            Cached::Absent => {
                metrics.record_cache(CacheLookup::NegativeHit);
                return Ok(Err(Inactive::Unknown));
            }
            Cached::Miss(epoch) => {
                metrics.record_cache(CacheLookup::Miss);
                match self.look_up(hash, epoch, lane).await? {
                    Some(token) => token,
                    None => return Ok(Err(Inactive::Unknown)),
                }
            }
        };
        let now = clock::now_micros();
        match token.state_at(now) {
            TokenState::Active => {
                if !token.allows(client) {
                    return Ok(Err(Inactive::AddressNotAllowed));
                }
                if token.touch(now) {
                    let mut used = inner.used.lock().expect("lock poisoned");
                    let queued = QueuedUse {
                        token: token.clone(),
                        client,
                    };
                    // An uncached token is a new entry on every call: keep one per
                    // token, and let a replaced one queue itself again later.
                    if let Some(replaced) = used.insert(token.seq, queued)
                        && !Arc::ptr_eq(&replaced.token, &token)
                    {
                        replaced.token.dequeue();
                    }
                }
                Ok(Ok(token))
            }
            TokenState::Expired => Ok(Err(Inactive::Expired)),
            TokenState::Revoked => Ok(Err(Inactive::Revoked)),
        }
    }

    async fn look_up(
        &self,
        hash: SecretHash,
        epoch: u64,
        lane: Lane,
    ) -> StoreResult<Option<Arc<CachedToken>>> {
        let inner = &*self.inner;
        let _permit = match lane {
            Lane::Introspect => Some(inner.lookups.acquire().await.expect("never closed")),
            Lane::Management => None,
        };
        let Some(found) = inner.store.find_by_hash(&hash).await? else {
            inner.cache.insert_absent(&hash, epoch);
            return Ok(None);
        };
        let HashMatch {
            stored: StoredToken { seq, mut record },
            retired_grace_until,
        } = found;
        let Some(grace_until) = retired_grace_until else {
            return Ok(Some(inner.cache.insert_found(&hash, seq, &record, epoch)));
        };
        // A secret retired by a rotation is never cached: each use is checked
        // against its grace period, and a use after it must be seen.
        let now = clock::now_micros();
        if now < grace_until {
            record.expires_at = Some(
                record
                    .expires_at
                    .map_or(grace_until, |at| at.min(grace_until)),
            );
            return Ok(Some(CachedToken::retired(seq, &record)));
        }
        // A rotated-away secret in use: it leaked. Revoke the token, whatever
        // its current secret, so that neither the thief nor the holder goes on.
        tracing::warn!(token_id = %record.id, "retired secret presented after its grace period: token revoked");
        let revoked = self
            .revoke(
                record.owner.clone(),
                record.id.clone(),
                now,
                Actor::new("patd", None),
                EventKind::ReuseDetected,
            )
            .await?;
        Ok(revoked.map(|record| CachedToken::retired(seq, &record)))
    }

    /// Revokes every token among `presented` that is valid (current or retired
    /// secret), recording `detail` in each one's `leak_reported` event; how many.
    /// Malformed and unknown tokens are skipped alike.
    pub async fn revoke_leaked(
        &self,
        presented: Vec<String>,
        actor: Actor,
        detail: String,
    ) -> StoreResult<usize> {
        let this = self.clone();
        run_to_completion(async move {
            let inner = &*this.inner;
            let hashes: HashSet<SecretHash> = presented
                .iter()
                .filter_map(|token| inner.format.parse(token.trim()))
                .collect();
            let mut revoked = 0;
            for hash in hashes {
                // Known-unknown secrets cost nothing; new ones are remembered as
                // unknown, and lookups share Introspect's share of connections, so
                // anonymous reports cannot crowd out other work.
                let epoch = match inner.cache.get(&hash) {
                    Cached::Absent => continue,
                    Cached::Found(_) => None,
                    Cached::Miss(epoch) => Some(epoch),
                };
                let found = {
                    let _permit = inner.lookups.acquire().await.expect("never closed");
                    inner.store.find_by_hash(&hash).await?
                };
                let Some(found) = found else {
                    if let Some(epoch) = epoch {
                        inner.cache.insert_absent(&hash, epoch);
                    }
                    continue;
                };
                let record = found.stored.record;
                let now = clock::now_micros();
                if record.revoked_at.is_some() {
                    // Still worth knowing: a revoked token is out in public.
                    let detail = format!("{detail} (already revoked)");
                    let event = Event::about(EventKind::LeakReported, &record, &actor, now, detail);
                    inner.store.record_event(&event).await?;
                    continue;
                }
                let done = inner
                    .store
                    .revoke_with_detail(
                        &record.owner,
                        &record.id,
                        now,
                        &actor,
                        EventKind::LeakReported,
                        &detail,
                    )
                    .await?;
                if let Some((_, current)) = done {
                    inner.cache.invalidate(&current);
                    inner.cache.invalidate(&hash);
                    revoked += 1;
                }
            }
            Ok(revoked)
        })
        .await
    }

    /// Gives `owner`'s token `id` a fresh secret (see [`Store::rotate`]) and drops
    /// the old one from this process's cache before returning.
    pub async fn rotate(
        &self,
        owner: Owner,
        authority: Authority,
        id: String,
        expires_at: Option<i64>,
        grace: Duration,
        actor: Actor,
    ) -> StoreResult<Result<(TokenRecord, Secret), Rotated>> {
        let this = self.clone();
        run_to_completion(async move {
            let inner = &*this.inner;
            let secret = inner.format.generate();
            let now = clock::now_micros();
            let rotation = Rotation {
                owner: &owner,
                authority: &authority,
                id: &id,
                new_hash: SecretHash::of(secret.expose()),
                hint: inner.format.hint(&secret),
                now,
                expires_at,
                grace_until: now
                    .saturating_add(i64::try_from(grace.as_micros()).unwrap_or(i64::MAX)),
                actor: &actor,
            };
            Ok(match inner.store.rotate(&rotation).await? {
                Rotated::Done { record, old_hash } => {
                    inner.cache.invalidate(&old_hash);
                    Ok((*record, secret))
                }
                other => Err(other),
            })
        })
        .await
    }

    /// Revokes `owner`'s token (see [`Store::revoke`]) and drops it from this
    /// process's cache before returning, so the next call here sees it. Runs to
    /// completion even if the caller goes away: a committed revoke is never left
    /// cached.
    pub async fn revoke(
        &self,
        owner: Owner,
        id: String,
        now: i64,
        actor: Actor,
        kind: EventKind,
    ) -> StoreResult<Option<TokenRecord>> {
        let this = self.clone();
        run_to_completion(async move {
            let revoked = this
                .inner
                .store
                .revoke(&owner, &id, now, &actor, kind)
                .await?;
            Ok(revoked.map(|(record, hash)| {
                this.inner.cache.invalidate(&hash);
                record
            }))
        })
        .await
    }

    /// Deletes `owner`'s token and drops it from this process's cache, like
    /// [`Verifier::revoke`]. False if there was no such token.
    pub async fn delete(&self, owner: Owner, id: String, actor: Actor) -> StoreResult<bool> {
        let this = self.clone();
        run_to_completion(async move {
            let now = clock::now_micros();
            let deleted = this.inner.store.delete(&owner, &id, &actor, now).await?;
            Ok(deleted
                .map(|hash| this.inner.cache.invalidate(&hash))
                .is_some())
        })
        .await
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
    /// Waits until no flush is running and keeps the next from starting while
    /// the guard lives: the write-behind task can then be stopped without losing
    /// a batch it had taken.
    pub async fn pause_flushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.flushing.lock().await
    }

    pub async fn flush_last_used(&self) -> StoreResult<usize> {
        let inner = &*self.inner;
        let _flushing = inner.flushing.lock().await;
        let used = std::mem::take(&mut *inner.used.lock().expect("lock poisoned"));
        let uses: Vec<(i64, i64, Option<String>)> = used
            .iter()
            .map(|(&seq, queued)| {
                let client = queued.client.map(|ip| ip.to_string());
                (seq, queued.token.dequeue(), client)
            })
            .collect();
        if uses.is_empty() {
            return Ok(0);
        }
        if let Err(err) = inner.store.record_last_used(&uses).await {
            let mut queue = inner.used.lock().expect("lock poisoned");
            for (seq, queued) in used {
                if queued.token.mark_queued() {
                    queue.entry(seq).or_insert(queued);
                }
            }
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
        // The first read covers the whole (pruned) log.
        let mut mark = ChangeMark::default();
        // Changes the latest read returned: a Postgres read may return them again.
        let mut seen: HashSet<i64> = HashSet::new();
        let mut last_prune = Instant::now();
        // The cache answers only while polls keep succeeding: at most one interval
        // plus this slack after the last good one (a hung poll cannot extend it).
        let trust_window = interval + CHANGE_POLL_SLACK;
        inner.cache.trust_for(trust_window);
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
                    for change in changes {
                        if !seen.contains(&change.seq) {
                            inner.cache.invalidate(&change.secret_hash);
                        }
                        returned.insert(change.seq);
                    }
                    seen = returned;
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
                    Ok(Heard::Changed(hash)) => inner.cache.invalidate(&hash),
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
