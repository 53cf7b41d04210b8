//! A bounded, sharded, in-memory cache of token lookups, so that Introspect does
//! not touch storage for tokens it has seen recently.
//!
//! Coherence rules:
//! - Entries hold the stored record; the token's state (expired, revoked) is
//!   evaluated at every lookup, so an expiry takes effect at its exact instant.
//! - A revoke or delete on this process invalidates the entry before the call
//!   returns; changes made elsewhere (another replica, the operator CLI) arrive
//!   through [`TokenCache::invalidate`] from the change poller.
//! - A lookup that raced with an invalidation of its shard is not cached (each shard
//!   has an epoch, bumped by every invalidation), so a stale row read just before a
//!   revoke can never be re-inserted after it.
//! - Negative entries (well-formed but unknown secrets) need no invalidation: a new
//!   token's secret has 256 fresh random bits and cannot have been looked up before.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::model::TokenRecord;
use crate::token::SecretHash;

const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// Tokens kept; 0 disables caching.
    pub capacity: usize,
    /// Unknown secrets remembered as unknown; 0 disables negative caching.
    pub negative_capacity: usize,
    /// How long an entry is trusted at most, even without an invalidation.
    pub ttl: Duration,
}

/// A stored token as cached, with what the write-behind of `last_used_at` needs.
#[derive(Debug)]
pub struct CachedToken {
    pub seq: i64,
    pub record: TokenRecord,
    last_used: AtomicI64,
    /// Set while the token waits in the write-behind queue.
    queued: AtomicBool,
}

impl CachedToken {
    pub fn new(seq: i64, record: TokenRecord) -> CachedToken {
        let last_used = record.last_used_at.unwrap_or(0);
        CachedToken {
            seq,
            record,
            last_used: AtomicI64::new(last_used),
            queued: AtomicBool::new(false),
        }
    }

    /// Records a use at `now` (microseconds). Returns true when the token must be
    /// queued for the next write-behind flush (it was not queued yet).
    pub fn touch(&self, now: i64) -> bool {
        // Second resolution is plenty, and skipping the store keeps a hot token's
        // cache line from bouncing between cores on every call.
        if now - self.last_used.load(Ordering::Relaxed) >= 1_000_000 {
            self.last_used.store(now, Ordering::Relaxed);
        }
        self.mark_queued()
    }

    /// Marks the token queued; true if it was not (the caller must queue it).
    pub fn mark_queued(&self) -> bool {
        !self.queued.load(Ordering::Relaxed) && !self.queued.swap(true, Ordering::AcqRel)
    }

    /// Takes the token out of the write-behind queue and returns its last use.
    pub fn dequeue(&self) -> i64 {
        self.queued.store(false, Ordering::Release);
        self.last_used.load(Ordering::Relaxed)
    }
}

/// Hashes a [`SecretHash`] by its first eight bytes: they are already uniformly
/// random, so SipHash would only cost time.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `SecretHash` (which writes a u64).
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Map<V> = HashMap<SecretHash, V, BuildHasherDefault<PrefixHasher>>;

#[derive(Default)]
struct Shard {
    epoch: u64,
    found: Map<(Arc<CachedToken>, Instant)>,
    absent: Map<Instant>,
}

/// What the cache knows of a secret hash.
pub enum Cached {
    Found(Arc<CachedToken>),
    /// Looked up recently and not stored.
    Absent,
    /// Not known: look it up, then report with [`TokenCache::insert_found`] or
    /// [`TokenCache::insert_absent`] passing this epoch.
    Miss(u64),
}

pub struct TokenCache {
    settings: CacheSettings,
    shards: Box<[RwLock<Shard>]>,
}

/// Inserts into a map bounded at `capacity`, evicting an arbitrary entry (keys are
/// uniformly random, so that is a random eviction) when full.
fn bounded_insert<V>(map: &mut Map<V>, capacity: usize, key: SecretHash, value: V) {
    if map.len() >= capacity && !map.contains_key(&key) {
        let victim = map.keys().next().copied();
        if let Some(victim) = victim {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

impl TokenCache {
    pub fn new(settings: CacheSettings) -> TokenCache {
        TokenCache {
            settings,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }

    fn shard(&self, hash: &SecretHash) -> &RwLock<Shard> {
        // The last byte, independent of the bytes the maps hash by.
        &self.shards[usize::from(hash.0[31]) % SHARDS]
    }

    fn per_shard(capacity: usize) -> usize {
        capacity.div_ceil(SHARDS)
    }

    pub fn get(&self, hash: &SecretHash, now: Instant) -> Cached {
        let shard = self.shard(hash).read().expect("cache lock poisoned");
        if let Some((token, inserted)) = shard.found.get(hash)
            && now.duration_since(*inserted) < self.settings.ttl
        {
            return Cached::Found(token.clone());
        }
        if let Some(inserted) = shard.absent.get(hash)
            && now.duration_since(*inserted) < self.settings.ttl
        {
            return Cached::Absent;
        }
        Cached::Miss(shard.epoch)
    }

    pub fn insert_found(
        &self,
        hash: SecretHash,
        token: Arc<CachedToken>,
        epoch: u64,
        now: Instant,
    ) {
        if self.settings.capacity == 0 {
            return;
        }
        let mut shard = self.shard(&hash).write().expect("cache lock poisoned");
        if shard.epoch == epoch {
            let capacity = Self::per_shard(self.settings.capacity);
            bounded_insert(&mut shard.found, capacity, hash, (token, now));
        }
    }

    pub fn insert_absent(&self, hash: SecretHash, epoch: u64, now: Instant) {
        if self.settings.negative_capacity == 0 {
            return;
        }
        let mut shard = self.shard(&hash).write().expect("cache lock poisoned");
        if shard.epoch == epoch {
            let capacity = Self::per_shard(self.settings.negative_capacity);
            bounded_insert(&mut shard.absent, capacity, hash, now);
        }
    }

    /// Forgets `hash`, and keeps any lookup already under way from caching it.
    pub fn invalidate(&self, hash: &SecretHash) {
        let mut shard = self.shard(hash).write().expect("cache lock poisoned");
        shard.epoch += 1;
        shard.found.remove(hash);
        shard.absent.remove(hash);
    }

    /// Forgets everything (when changes may have been missed).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().expect("cache lock poisoned");
            shard.epoch += 1;
            shard.found.clear();
            shard.absent.clear();
        }
    }

    /// (tokens, unknown secrets) cached now, expired entries included.
    pub fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(found, absent), shard| {
            let shard = shard.read().expect("cache lock poisoned");
            (found + shard.found.len(), absent + shard.absent.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;
    use crate::scope::ScopeSet;

    fn settings(capacity: usize) -> CacheSettings {
        CacheSettings {
            capacity,
            negative_capacity: capacity,
            ttl: Duration::from_secs(60),
        }
    }

    fn token(seq: i64) -> Arc<CachedToken> {
        let record = TokenRecord {
            id: format!("id{seq}"),
            name: "n".to_owned(),
            owner: Owner {
                subject: "s".to_owned(),
                account: "a".to_owned(),
            },
            scopes: ScopeSet::EMPTY,
            hint: "h".to_owned(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        Arc::new(CachedToken::new(seq, record))
    }

    fn miss_epoch(cache: &TokenCache, hash: &SecretHash) -> u64 {
        match cache.get(hash, Instant::now()) {
            Cached::Miss(epoch) => epoch,
            _ => panic!("expected a miss"),
        }
    }

    #[test]
    fn found_and_absent_entries_are_served_until_invalidated() {
        let cache = TokenCache::new(settings(100));
        let (known, unknown) = (SecretHash::of("known"), SecretHash::of("unknown"));
        let now = Instant::now();
        cache.insert_found(known, token(1), miss_epoch(&cache, &known), now);
        cache.insert_absent(unknown, miss_epoch(&cache, &unknown), now);
        assert!(matches!(cache.get(&known, now), Cached::Found(t) if t.seq == 1));
        assert!(matches!(cache.get(&unknown, now), Cached::Absent));
        cache.invalidate(&known);
        assert!(matches!(cache.get(&known, now), Cached::Miss(_)));
        assert!(matches!(cache.get(&unknown, now), Cached::Absent));
        cache.clear();
        assert!(matches!(cache.get(&unknown, now), Cached::Miss(_)));
    }

    #[test]
    fn a_lookup_racing_an_invalidation_is_not_cached() {
        let cache = TokenCache::new(settings(100));
        let hash = SecretHash::of("racing");
        let epoch = miss_epoch(&cache, &hash);
        // The row is read, then a revoke invalidates, then the stale row arrives.
        cache.invalidate(&hash);
        cache.insert_found(hash, token(1), epoch, Instant::now());
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss(_)));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TokenCache::new(settings(100));
        let hash = SecretHash::of("old");
        let then = Instant::now();
        cache.insert_found(hash, token(1), miss_epoch(&cache, &hash), then);
        assert!(matches!(
            cache.get(&hash, then + Duration::from_secs(59)),
            Cached::Found(_)
        ));
        assert!(matches!(
            cache.get(&hash, then + Duration::from_secs(60)),
            Cached::Miss(_)
        ));
    }

    #[test]
    fn size_stays_within_capacity() {
        let cache = TokenCache::new(settings(1_000));
        let now = Instant::now();
        for i in 0..20_000 {
            let hash = SecretHash::of(&i.to_string());
            cache.insert_found(hash, token(i), miss_epoch(&cache, &hash), now);
            cache.insert_absent(SecretHash::of(&format!("u{i}")), 0, now);
        }
        let (found, absent) = cache.len();
        assert!((900..=1_000 + SHARDS).contains(&found), "{found}");
        assert!(absent <= 1_000 + SHARDS, "{absent}");
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let cache = TokenCache::new(settings(0));
        let hash = SecretHash::of("x");
        cache.insert_found(hash, token(1), 0, Instant::now());
        cache.insert_absent(hash, 0, Instant::now());
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss(_)));
    }

    #[test]
    fn touch_queues_once_until_dequeued() {
        let token = token(1);
        assert!(token.touch(5_000_000));
        assert!(!token.touch(7_000_000));
        assert_eq!(token.dequeue(), 7_000_000);
        assert!(token.touch(7_500_000), "queued again after a flush");
        assert_eq!(token.dequeue(), 7_000_000, "sub-second updates are skipped");
    }
}
