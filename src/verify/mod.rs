//! The hot path: the one place a presented secret is checked — format and
//! checksum first (junk never reaches storage), then the cache, then storage,
//! then the token's state — and the writes that must reach the cache at once
//! (rotate, revoke, delete). The cache's coherence with changes made elsewhere
//! is in `coherence.rs`, the write-behind of last use in `write_behind.rs`.
//!
//! May use: `domain`, `metrics`, `store`.

pub mod cache;
mod coherence;
pub mod feed;
mod write_behind;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::domain::authority::Authority;
use crate::domain::clock;
use crate::domain::model::{Actor, Owner, TokenRecord, TokenState};
use crate::domain::token::{Secret, SecretHash, TokenFormat};
use crate::metrics::{CacheLookup, IntrospectOutcome, Metrics};
use crate::store::{
    Event, EventKind, HashMatch, Rotated, Rotation, Store, StoreResult, StoredToken, Suspended,
    TokenUpdate, Updated,
};
use crate::verify::cache::{CacheSettings, Cached, CachedToken, TokenCache};

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
    Suspended,
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
    /// Asks the change follower to poll now (notifications were missed, or a
    /// change was just made here or heard of).
    catch_up: tokio::sync::Notify,
    /// What the follower reads, for WatchChanges subscribers.
    feed: feed::ChangeFeed,
    metrics: Arc<Metrics>,
}

impl Inner {
    /// A change to the token with secret `hash` committed here: drop it from
    /// this process's cache now, and let the follower tell the rest.
    fn forget(&self, hash: &SecretHash) {
        self.cache.invalidate(hash);
        self.catch_up.notify_one();
    }
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
                feed: feed::ChangeFeed::default(),
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

    /// The change feed, for WatchChanges.
    pub fn feed(&self) -> &feed::ChangeFeed {
        &self.inner.feed
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
            TokenState::Suspended => Ok(Err(Inactive::Suspended)),
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
            if revoked > 0 {
                inner.catch_up.notify_one();
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
                    inner.forget(&old_hash);
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
                this.inner.forget(&hash);
                record
            }))
        })
        .await
    }

    /// Suspends (`authority` `None`) or resumes (checked against `authority`)
    /// `owner`'s token and drops it from this process's cache, like
    /// [`Verifier::revoke`]; other replicas hear of it through the change log.
    pub async fn set_suspended(
        &self,
        owner: Owner,
        id: String,
        resume_with: Option<Authority>,
        actor: Actor,
    ) -> StoreResult<Suspended> {
        let this = self.clone();
        run_to_completion(async move {
            let store = &this.inner.store;
            let now = clock::now_micros();
            let done = match &resume_with {
                None => store.suspend(&owner, &id, now, &actor).await?,
                Some(authority) => store.resume(&owner, &id, authority, now, &actor).await?,
            };
            if let Suspended::Done {
                hash,
                changed: true,
                ..
            } = &done
            {
                this.inner.forget(hash);
            }
            Ok(done)
        })
        .await
    }

    /// Updates `owner`'s token's name, description or labels (see
    /// [`Store::update`]); a renamed token leaves this process's cache at once
    /// (its answers carry the name), other replicas' through the change log.
    pub async fn update(
        &self,
        owner: Owner,
        id: String,
        update: TokenUpdate,
        actor: Actor,
    ) -> StoreResult<Updated> {
        let this = self.clone();
        run_to_completion(async move {
            let now = clock::now_micros();
            let updated = this
                .inner
                .store
                .update(&owner, &id, &update, now, &actor)
                .await?;
            if let Updated::Done {
                hash,
                renamed: true,
                ..
            } = &updated
            {
                this.inner.forget(hash);
            }
            Ok(updated)
        })
        .await
    }

    /// Offboarding: revokes every token of `owner` (see [`Store::revoke_all`])
    /// and drops each from this process's cache before returning; how many.
    pub async fn revoke_all(&self, owner: Owner, actor: Actor) -> StoreResult<usize> {
        let this = self.clone();
        run_to_completion(async move {
            let now = clock::now_micros();
            let revoked = this.inner.store.revoke_all(&owner, now, &actor).await?;
            for (_, hash) in &revoked {
                this.inner.cache.invalidate(hash);
            }
            if !revoked.is_empty() {
                this.inner.catch_up.notify_one();
            }
            Ok(revoked.len())
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
                .map(|hash| {
                    this.inner.forget(&hash);
                })
                .is_some())
        })
        .await
    }
}
/// Why a token was inactive, as the metrics count it.
impl From<Inactive> for IntrospectOutcome {
    fn from(inactive: Inactive) -> IntrospectOutcome {
        match inactive {
            Inactive::Malformed => IntrospectOutcome::Malformed,
            Inactive::Unknown => IntrospectOutcome::Unknown,
            Inactive::Expired => IntrospectOutcome::Expired,
            Inactive::Revoked => IntrospectOutcome::Revoked,
            Inactive::Suspended => IntrospectOutcome::Suspended,
            Inactive::AddressNotAllowed => IntrospectOutcome::AddressNotAllowed,
        }
    }
}
