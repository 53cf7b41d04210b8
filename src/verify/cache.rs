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
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::authority::Authority;
use crate::domain::cidr::CidrList;
use crate::domain::model::{Owner, TokenRecord, TokenState, state_of};
use crate::domain::resource::ResourceList;
use crate::domain::scope::ScopeSet;
use crate::domain::token::SecretHash;

const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// Tokens kept; 0 disables caching.
    pub capacity: usize,
    /// Unknown secrets remembered as unknown; 0 disables negative caching.
    pub negative_capacity: usize,
    /// How long an entry is trusted at most, even without an invalidation
    /// (whole seconds).
    pub ttl: Duration,
}

/// A stored token as cached: compact, since the cache may hold every token of a
/// large installation (about 200 bytes each, map included). The strings share one
/// allocation; times are microseconds, `i64::MAX` meaning "never".
#[derive(Debug)]
pub struct CachedToken {
    pub seq: i64,
    pub created_at: i64,
    expires_at: i64,
    /// id, name, subject and account, back to back.
    text: Box<str>,
    name_len: u16,
    subject_len: u16,
    pub scopes: ScopeSet,
    revoked: bool,
    suspended: bool,
    /// The IP allowlist, boxed: most tokens have none, and pay one pointer.
    allowed: Option<Box<CidrList>>,
    /// The resources it is restricted to, boxed likewise.
    resources: Option<Box<ResourceList>>,
    /// Seconds since the Unix epoch.
    last_used_secs: AtomicU32,
    /// Seconds since the cache's origin.
    inserted: u32,
    /// Set while the token waits in the write-behind queue.
    queued: AtomicBool,
    /// Found by a secret retired by a rotation (within its grace period).
    retired: bool,
}

const ID_LEN: usize = 22;

impl CachedToken {
    /// A token found by a secret retired by a rotation: answered once, not kept.
    pub fn retired(seq: i64, record: &TokenRecord) -> Arc<CachedToken> {
        Arc::new(CachedToken {
            retired: true,
            ..CachedToken::new(seq, record, 0)
        })
    }

    /// Whether the secret presented was retired by a rotation (and is within its
    /// grace period): good for Introspect and Check, not as a management credential.
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    fn new(seq: i64, record: &TokenRecord, inserted: u32) -> CachedToken {
        let Owner { subject, account } = &record.owner;
        let text = format!("{}{}{subject}{account}", record.id, record.name);
        CachedToken {
            seq,
            created_at: record.created_at,
            expires_at: record.expires_at.unwrap_or(i64::MAX),
            text: text.into_boxed_str(),
            // Names and principals are validated far below 64 KiB.
            name_len: record.name.len() as u16,
            subject_len: subject.len() as u16,
            scopes: record.scopes,
            revoked: record.revoked_at.is_some(),
            suspended: record.suspended_at.is_some(),
            allowed: (!record.allowed_cidrs.is_empty())
                .then(|| Box::new(record.allowed_cidrs.clone())),
            resources: (!record.resources.is_empty()).then(|| Box::new(record.resources.clone())),
            last_used_secs: AtomicU32::new(
                record
                    .last_used_at
                    .map_or(0, |micros| (micros / 1_000_000) as u32),
            ),
            inserted,
            queued: AtomicBool::new(false),
            retired: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.text[..ID_LEN]
    }

    pub fn name(&self) -> &str {
        &self.text[ID_LEN..ID_LEN + usize::from(self.name_len)]
    }

    pub fn subject(&self) -> &str {
        let start = ID_LEN + usize::from(self.name_len);
        &self.text[start..start + usize::from(self.subject_len)]
    }

    pub fn account(&self) -> &str {
        &self.text[ID_LEN + usize::from(self.name_len) + usize::from(self.subject_len)..]
    }

    pub fn owner(&self) -> Owner {
        Owner {
            subject: self.subject().to_owned(),
            account: self.account().to_owned(),
        }
    }

    /// Whether a client at `client` may use the token: always without an
    /// allowlist; with one, only from an address in it (none given: no).
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        match (&self.allowed, client) {
            (None, _) => true,
            (Some(allowed), Some(client)) => allowed.allows(client),
            (Some(_), None) => false,
        }
    }

    /// The resources the token may be used on (empty: every one).
    pub fn resources(&self) -> &ResourceList {
        static EVERY: ResourceList = ResourceList::EVERY;
        self.resources.as_deref().unwrap_or(&EVERY)
    }

    /// What this token may hand out (see [`Authority`]).
    pub fn authority(&self) -> Authority {
        Authority {
            scopes: self.scopes,
            allowed_cidrs: self.allowed.as_deref().cloned().unwrap_or_default(),
            resources: self.resources().clone(),
            expires_at: self.expires_at(),
        }
    }

    pub fn expires_at(&self) -> Option<i64> {
        (self.expires_at != i64::MAX).then_some(self.expires_at)
    }

    /// As [`TokenRecord::state_at`].
    pub fn state_at(&self, now: i64) -> TokenState {
        state_of(self.revoked, self.expires_at(), self.suspended, now)
    }

    /// Records a use at `now` (microseconds), to the second. Returns true when the
    /// token must be queued for the next write-behind flush (it was not queued).
    pub fn touch(&self, now: i64) -> bool {
        let secs = (now / 1_000_000) as u32;
        // Skipping the store when unchanged keeps a hot token's cache line from
        // bouncing between cores on every call.
        if self.last_used_secs.load(Ordering::Relaxed) != secs {
            self.last_used_secs.store(secs, Ordering::Relaxed);
        }
        self.mark_queued()
    }

    /// Marks the token queued; true if it was not (the caller must queue it).
    pub fn mark_queued(&self) -> bool {
        !self.queued.load(Ordering::Relaxed) && !self.queued.swap(true, Ordering::AcqRel)
    }

    /// Takes the token out of the write-behind queue and returns its last use in
    /// microseconds.
    pub fn dequeue(&self) -> i64 {
        self.queued.store(false, Ordering::Release);
        i64::from(self.last_used_secs.load(Ordering::Relaxed)) * 1_000_000
    }
}

/// The cache key: half of a secret hash. 128 bits keep accidental collisions
/// (about 2^-88 among 10^12 tokens) and crafted ones (a 2^128 second preimage)
/// out of reach, at half the memory of the whole hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u8; 16]);

impl Key {
    fn of(hash: &SecretHash) -> Key {
        let mut key = [0u8; 16];
        key.copy_from_slice(&hash.0[..16]);
        Key(key)
    }
}

impl std::hash::Hash for Key {
    /// Eight bytes suffice: they are uniformly random already.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// Passes a [`Key`]'s random bits through: SipHash would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("keys hash with write_u64")
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Map<V> = HashMap<Key, V, BuildHasherDefault<PassThrough>>;

#[derive(Default)]
struct Shard {
    epoch: u64,
    found: Map<Arc<CachedToken>>,
    /// Unknown secrets, with when they were found unknown.
    absent: Map<u32>,
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
    ttl_secs: u32,
    origin: Instant,
    /// Milliseconds since `origin` until which entries may be served; after that
    /// every lookup misses. Kept moving by the change follower: if it stops
    /// confirming, the cache stops answering (`u64::MAX`: no follower, always).
    trusted_until_ms: AtomicU64,
    shards: Box<[RwLock<Shard>]>,
}

/// Inserts into a map bounded at `capacity`, evicting an arbitrary entry (keys are
/// uniformly random, so that is a random eviction) when full.
fn bounded_insert<V>(map: &mut Map<V>, capacity: usize, key: Key, value: V) {
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
            ttl_secs: settings.ttl.as_secs().min(u64::from(u32::MAX)) as u32,
            origin: Instant::now(),
            trusted_until_ms: AtomicU64::new(u64::MAX),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.settings.capacity
    }

    fn shard_index(hash: &SecretHash) -> usize {
        // The last byte, independent of the bytes the maps hash by.
        usize::from(hash.0[31]) % SHARDS
    }

    fn shard(&self, hash: &SecretHash) -> &RwLock<Shard> {
        &self.shards[Self::shard_index(hash)]
    }

    fn per_shard(capacity: usize) -> usize {
        capacity.div_ceil(SHARDS)
    }

    /// Seconds since the cache was made: entry ages need no more.
    fn now(&self) -> u32 {
        self.origin.elapsed().as_secs() as u32
    }

    fn fresh(&self, inserted: u32, now: u32) -> bool {
        now.saturating_sub(inserted) < self.ttl_secs
    }

    /// Entries may be served for `window` from now, and no longer unless this is
    /// called again.
    pub fn trust_for(&self, window: Duration) {
        let until = self.origin.elapsed() + window;
        self.trusted_until_ms
            .store(until.as_millis() as u64, Ordering::Release);
    }

    fn trusted(&self, elapsed: Duration) -> bool {
        let until = self.trusted_until_ms.load(Ordering::Acquire);
        until == u64::MAX || (elapsed.as_millis() as u64) < until
    }

    pub fn get(&self, hash: &SecretHash) -> Cached {
        // One clock read serves both the trust check and the entry ages.
        let elapsed = self.origin.elapsed();
        let (key, now) = (Key::of(hash), elapsed.as_secs() as u32);
        let shard = self.shard(hash).read().expect("cache lock poisoned");
        if !self.trusted(elapsed) {
            return Cached::Miss(shard.epoch);
        }
        if let Some(token) = shard.found.get(&key)
            && self.fresh(token.inserted, now)
        {
            return Cached::Found(token.clone());
        }
        if let Some(&inserted) = shard.absent.get(&key)
            && self.fresh(inserted, now)
        {
            return Cached::Absent;
        }
        Cached::Miss(shard.epoch)
    }

    /// Caches the token stored under `hash` unless its shard was invalidated
    /// since `epoch` was read; returns the token either way.
    pub fn insert_found(
        &self,
        hash: &SecretHash,
        seq: i64,
        record: &TokenRecord,
        epoch: u64,
    ) -> Arc<CachedToken> {
        let token = Arc::new(CachedToken::new(seq, record, self.now()));
        if self.settings.capacity > 0 {
            let mut shard = self.shard(hash).write().expect("cache lock poisoned");
            if shard.epoch == epoch {
                let capacity = Self::per_shard(self.settings.capacity);
                bounded_insert(&mut shard.found, capacity, Key::of(hash), token.clone());
            }
        }
        token
    }

    pub fn insert_absent(&self, hash: &SecretHash, epoch: u64) {
        if self.settings.negative_capacity == 0 {
            return;
        }
        let now = self.now();
        let mut shard = self.shard(hash).write().expect("cache lock poisoned");
        if shard.epoch == epoch {
            let capacity = Self::per_shard(self.settings.negative_capacity);
            bounded_insert(&mut shard.absent, capacity, Key::of(hash), now);
        }
    }

    /// Every shard's epoch, for inserting rows read after this moment with
    /// [`TokenCache::epoch_in`] (bulk loading).
    pub fn epochs(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|shard| shard.read().expect("cache lock poisoned").epoch)
            .collect()
    }

    /// The epoch of `hash`'s shard in a snapshot from [`TokenCache::epochs`].
    pub fn epoch_in(epochs: &[u64], hash: &SecretHash) -> u64 {
        epochs[Self::shard_index(hash)]
    }

    /// Forgets `hash`, and keeps any lookup already under way from caching it.
    pub fn invalidate(&self, hash: &SecretHash) {
        let key = Key::of(hash);
        let mut shard = self.shard(hash).write().expect("cache lock poisoned");
        shard.epoch += 1;
        shard.found.remove(&key);
        shard.absent.remove(&key);
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

    fn settings(capacity: usize) -> CacheSettings {
        CacheSettings {
            capacity,
            negative_capacity: capacity,
            ttl: Duration::from_secs(60),
        }
    }

    fn record(name: &str) -> TokenRecord {
        TokenRecord {
            id: "AbCdEfGhIjKlMnOpQrStUv".to_owned(),
            name: name.to_owned(),
            owner: Owner {
                subject: "alice".to_owned(),
                account: "acme".to_owned(),
            },
            scopes: ScopeSet::parse(["tag:read"]).unwrap(),
            hint: "h".to_owned(),
            created_at: 5,
            expires_at: Some(2_000_000),
            revoked_at: None,
            last_used_at: None,
            last_used_ip: None,
            rotated_at: None,
            allowed_cidrs: Default::default(),
            suspended_at: None,
            description: String::new(),
            labels: Default::default(),
            resources: Default::default(),
        }
    }

    fn miss_epoch(cache: &TokenCache, hash: &SecretHash) -> u64 {
        match cache.get(hash) {
            Cached::Miss(epoch) => epoch,
            _ => panic!("expected a miss"),
        }
    }

    #[test]
    fn compact_token_keeps_every_field() {
        let record = record("deploy bot");
        let token = CachedToken::new(9, &record, 0);
        assert_eq!(token.id(), record.id);
        assert_eq!(token.name(), "deploy bot");
        assert_eq!((token.subject(), token.account()), ("alice", "acme"));
        assert_eq!(token.owner(), record.owner);
        assert_eq!(token.expires_at(), Some(2_000_000));
        assert_eq!(token.scopes, record.scopes);
        for now in [0, 1_999_999, 2_000_000, 3_000_000] {
            assert_eq!(token.state_at(now), record.state_at(now), "at {now}");
        }
        let never = CachedToken::new(
            9,
            &TokenRecord {
                expires_at: None,
                revoked_at: Some(1),
                ..record.clone()
            },
            0,
        );
        assert_eq!(never.expires_at(), None);
        assert_eq!(never.state_at(i64::MAX - 1), TokenState::Revoked);
        // Suspended until it expires; revocation wins over both.
        let suspended = TokenRecord {
            suspended_at: Some(1),
            ..record.clone()
        };
        let cached = CachedToken::new(9, &suspended, 0);
        for (now, state) in [
            (1_999_999, TokenState::Suspended),
            (2_000_000, TokenState::Expired),
        ] {
            assert_eq!(cached.state_at(now), state, "at {now}");
            assert_eq!(suspended.state_at(now), state, "at {now}");
        }
        let both = TokenRecord {
            revoked_at: Some(2),
            ..suspended
        };
        assert_eq!(
            CachedToken::new(9, &both, 0).state_at(0),
            TokenState::Revoked
        );
    }

    #[test]
    fn found_and_absent_entries_are_served_until_invalidated() {
        let cache = TokenCache::new(settings(100));
        let (known, unknown) = (SecretHash::of("known"), SecretHash::of("unknown"));
        cache.insert_found(&known, 1, &record("a"), miss_epoch(&cache, &known));
        cache.insert_absent(&unknown, miss_epoch(&cache, &unknown));
        assert!(matches!(cache.get(&known), Cached::Found(t) if t.seq == 1));
        assert!(matches!(cache.get(&unknown), Cached::Absent));
        cache.invalidate(&known);
        assert!(matches!(cache.get(&known), Cached::Miss(_)));
        assert!(matches!(cache.get(&unknown), Cached::Absent));
        cache.clear();
        assert!(matches!(cache.get(&unknown), Cached::Miss(_)));
    }

    #[test]
    fn a_lookup_racing_an_invalidation_is_not_cached() {
        let cache = TokenCache::new(settings(100));
        let hash = SecretHash::of("racing");
        let epoch = miss_epoch(&cache, &hash);
        let snapshot = cache.epochs();
        // The row is read, then a revoke invalidates, then the stale row arrives.
        cache.invalidate(&hash);
        let token = cache.insert_found(&hash, 1, &record("a"), epoch);
        assert_eq!(token.seq, 1, "the caller still gets what it read");
        assert!(matches!(cache.get(&hash), Cached::Miss(_)));
        cache.insert_found(
            &hash,
            1,
            &record("a"),
            TokenCache::epoch_in(&snapshot, &hash),
        );
        assert!(
            matches!(cache.get(&hash), Cached::Miss(_)),
            "bulk loads obey epochs too"
        );
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TokenCache::new(CacheSettings {
            ttl: Duration::ZERO,
            ..settings(100)
        });
        let hash = SecretHash::of("old");
        cache.insert_found(&hash, 1, &record("a"), miss_epoch(&cache, &hash));
        assert!(matches!(cache.get(&hash), Cached::Miss(_)));
        let cache = TokenCache::new(settings(100));
        assert!(cache.fresh(0, 59) && !cache.fresh(0, 60));
    }

    #[test]
    fn size_stays_within_capacity() {
        let cache = TokenCache::new(settings(1_000));
        for i in 0..20_000 {
            let hash = SecretHash::of(&i.to_string());
            cache.insert_found(&hash, i, &record("a"), miss_epoch(&cache, &hash));
            cache.insert_absent(&SecretHash::of(&format!("u{i}")), 0);
        }
        let (found, absent) = cache.len();
        assert!((900..=1_000 + SHARDS).contains(&found), "{found}");
        assert!(absent <= 1_000 + SHARDS, "{absent}");
    }

    #[test]
    fn an_unconfirmed_cache_stops_answering() {
        let cache = TokenCache::new(settings(100));
        let hash = SecretHash::of("trusted");
        cache.insert_found(&hash, 1, &record("a"), miss_epoch(&cache, &hash));
        cache.trust_for(Duration::from_secs(60));
        assert!(matches!(cache.get(&hash), Cached::Found(_)));
        cache.trust_for(Duration::ZERO);
        assert!(
            matches!(cache.get(&hash), Cached::Miss(_)),
            "the follower stopped confirming"
        );
        cache.trust_for(Duration::from_secs(60));
        assert!(matches!(cache.get(&hash), Cached::Found(_)));
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let cache = TokenCache::new(settings(0));
        let hash = SecretHash::of("x");
        cache.insert_found(&hash, 1, &record("a"), 0);
        cache.insert_absent(&hash, 0);
        assert!(matches!(cache.get(&hash), Cached::Miss(_)));
    }

    #[test]
    fn touch_queues_once_until_dequeued() {
        let token = CachedToken::new(1, &record("a"), 0);
        assert!(token.touch(5_000_000));
        assert!(!token.touch(7_000_000));
        assert_eq!(token.dequeue(), 7_000_000);
        assert!(token.touch(7_500_000), "queued again after a flush");
        assert_eq!(token.dequeue(), 7_000_000, "kept to the second");
    }
}
