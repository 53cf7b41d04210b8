//! The in-process verifier: a bounded cache of Introspect answers, keyed by a
//! keyed hash of the presented secret (never the secret), trusted only while
//! patd's change stream is heard from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tonic::Status;

use crate::client::Client;
use crate::format::TokenShape;
use crate::watch;

/// How an [`Authenticator`] caches and when it stops trusting its cache.
#[derive(Clone, Debug)]
pub struct AuthenticatorSettings {
    /// Active tokens kept (default 100,000).
    pub capacity: usize,
    /// Longest an active answer is reused, even with the stream healthy
    /// (default 5 minutes).
    pub ttl: Duration,
    /// Inactive answers kept (default 10,000).
    pub negative_capacity: usize,
    /// Longest an inactive answer is reused (default 5 s).
    pub negative_ttl: Duration,
    /// The change stream silent (no change, no heartbeat) for longer than this:
    /// the cache is not trusted, every verify asks patd (default 2 s).
    pub max_staleness: Duration,
    /// The installation's token format (prefix `patd_` by default).
    pub shape: TokenShape,
}

impl Default for AuthenticatorSettings {
    fn default() -> Self {
        AuthenticatorSettings {
            capacity: 100_000,
            ttl: Duration::from_secs(300),
            negative_capacity: 10_000,
            negative_ttl: Duration::from_secs(5),
            max_staleness: Duration::from_secs(2),
            shape: TokenShape::default(),
        }
    }
}

/// Who presented a verified token, and what it grants. A handle: cloning it
/// copies a pointer, so the cache, the request's extensions and a handler can
/// all hold it for free; read it like a struct (`principal.subject`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal(Arc<Claims>);

/// What a [`Principal`] says: patd's `Introspect` answer for the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub token_id: String,
    pub name: String,
    pub subject: String,
    pub account: String,
    pub scopes: Vec<String>,
    pub issued_at: Option<SystemTime>,
    /// `None`: never expires.
    pub expires_at: Option<SystemTime>,
    /// The resources (`type:id`) the token is restricted to; empty: every one.
    pub resources: Vec<String>,
}

impl Principal {
    pub fn new(claims: Claims) -> Principal {
        Principal(Arc::new(claims))
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|held| held == scope)
    }

    /// Whether the token may be used on `resource` (`type:id`, exactly as
    /// patd stores it): always for an unrestricted token.
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resources.is_empty() || self.resources.iter().any(|held| held == resource)
    }
}

impl std::ops::Deref for Principal {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.0
    }
}

/// Why a token was not accepted.
#[derive(Clone, Debug)]
pub enum VerifyError {
    /// Malformed, unknown, expired, revoked, deleted, or not for this address
    /// (patd says no more, and neither does this).
    Inactive,
    /// Active, but without every required scope.
    MissingScopes {
        principal: Principal,
        missing: Vec<String>,
    },
    /// Active with every required scope, but restricted to other resources
    /// (refuse it like a missing scope: 403).
    ResourceDenied {
        principal: Principal,
        resource: String,
    },
    /// patd could not be asked: fail closed.
    Unavailable(Status),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Inactive => f.write_str("the bearer token is not active"),
            VerifyError::MissingScopes { missing, .. } => {
                write!(f, "the bearer token lacks {}", missing.join(", "))
            }
            VerifyError::ResourceDenied { resource, .. } => {
                write!(f, "the bearer token is not allowed on {resource}")
            }
            VerifyError::Unavailable(status) => {
                write!(f, "patd cannot be reached: {}", status.message())
            }
        }
    }
}

impl std::error::Error for VerifyError {}

/// A cache key: BLAKE3 keyed with a per-process random key, of the secret and
/// the client address (an allowlisted token's answer depends on it). Not the
/// secret, and not patd's stored hash either.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<keyed hash>)")
    }
}

struct Entry {
    /// `None`: patd said inactive.
    principal: Option<Principal>,
    inserted: Instant,
}

impl Entry {
    /// An active answer past its `expires_at` is not answered from the cache,
    /// not even as inactive: patd must see the use. A rotated-out secret is
    /// answered with its grace period as `expires_at`, and patd revokes the
    /// token when that secret is used after it (the thief's reuse); a local
    /// "inactive" would hide exactly that use.
    fn is_past_expiry(&self) -> bool {
        self.principal
            .as_ref()
            .and_then(|principal| principal.expires_at)
            .is_some_and(|at| at <= SystemTime::now())
    }
}

#[derive(Default)]
struct Cache {
    active: HashMap<Key, Entry>,
    inactive: HashMap<Key, Entry>,
    /// Keys by token id, for invalidation by the change stream.
    by_id: HashMap<String, Vec<Key>>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    settings: AuthenticatorSettings,
    key: [u8; 32],
    /// Read-locked on the hot path: verifies on every thread proceed together.
    cache: RwLock<Cache>,
    /// When the change stream last delivered anything (micros since `origin`;
    /// 0: never).
    heard: AtomicU64,
    origin: Instant,
    /// Bumped by every invalidation: a lookup that raced with one is not cached.
    generation: AtomicU64,
}

/// Verifies bearer tokens in-process (see the crate docs). Cheap to clone; the
/// change-stream task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    _watch: Arc<watch::Task>,
}

impl Authenticator {
    /// An authenticator asking patd through `client` (whose credential must be
    /// admitted to Introspect and WatchChanges), following its change stream.
    /// Must be created inside a tokio runtime.
    pub fn new(client: Client, settings: AuthenticatorSettings) -> Authenticator {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source works");
        let inner = Arc::new(Inner {
            client,
            settings,
            key,
            cache: RwLock::default(),
            heard: AtomicU64::new(0),
            origin: Instant::now(),
            generation: AtomicU64::new(0),
        });
        let task = watch::spawn(Arc::downgrade(&inner));
        Authenticator {
            inner,
            _watch: Arc::new(task),
        }
    }

    /// Whether the change stream has been heard from within `max_staleness`
    /// (only then are cached answers used).
    pub fn is_coherent(&self) -> bool {
        self.inner.is_coherent()
    }

    /// Verifies `bearer` (the token as presented) for `required_scopes`, for a
    /// client at `client_ip` (needed by allowlisted tokens).
    pub async fn verify(
        &self,
        bearer: &str,
        required_scopes: &[&str],
        client_ip: Option<IpAddr>,
    ) -> Result<Principal, VerifyError> {
        if let Some(answer) = self.verify_cached(bearer, required_scopes, client_ip) {
            return answer;
        }
        let inner = &*self.inner;
        let bearer = bearer.trim();
        let key = inner.key_of(bearer, client_ip);
        let coherent = inner.is_coherent();
        // Asked before the call: an invalidation meanwhile keeps the answer
        // out of the cache.
        let generation = inner.generation.load(Ordering::Acquire);
        let answer = inner
            .client
            .introspect(bearer, &[], client_ip)
            .await
            .map_err(VerifyError::Unavailable)?;
        let principal = answer.active.then(|| principal_of(answer));
        // Only while coherent, and since: an answer cached while the stream is
        // silent could miss a revocation the stream will not replay.
        if coherent && inner.is_coherent() {
            inner.insert(key, principal.clone(), &generation);
        }
        check(principal, required_scopes)
    }

    /// [`verify`](Authenticator::verify), for a request acting on `resource`
    /// (`type:id`): a token restricted to other resources is
    /// [`VerifyError::ResourceDenied`]. Decided here from the cached answer's
    /// `resources`, so it costs what `verify` does.
    pub async fn verify_resource(
        &self,
        bearer: &str,
        required_scopes: &[&str],
        client_ip: Option<IpAddr>,
        resource: &str,
    ) -> Result<Principal, VerifyError> {
        let principal = self.verify(bearer, required_scopes, client_ip).await?;
        if principal.allows_resource(resource) {
            Ok(principal)
        } else {
            Err(VerifyError::ResourceDenied {
                principal,
                resource: resource.to_owned(),
            })
        }
    }

    /// [`verify`](Authenticator::verify)'s answer if it needs no call: the
    /// token is malformed, or its answer is cached and the cache is trusted.
    /// `None`: only `verify` can tell.
    pub fn verify_cached(
        &self,
        bearer: &str,
        required_scopes: &[&str],
        client_ip: Option<IpAddr>,
    ) -> Option<Result<Principal, VerifyError>> {
        let inner = &*self.inner;
        let bearer = bearer.trim();
        let key = inner.key_of(bearer, client_ip);
        // Only well-formed tokens are ever cached, so a hit needs no shape check.
        if inner.is_coherent()
            && let Some(found) = inner.cached(&key)
        {
            return Some(check(found, required_scopes));
        }
        if !inner.settings.shape.is_well_formed(bearer) {
            return Some(Err(VerifyError::Inactive));
        }
        None
    }

    #[cfg(test)]
    fn cached_keys(&self) -> Vec<Key> {
        let cache = self.inner.cache.read().unwrap();
        cache
            .active
            .keys()
            .chain(cache.inactive.keys())
            .copied()
            .collect()
    }
}

fn principal_of(answer: crate::proto::IntrospectResponse) -> Principal {
    let time = |timestamp: Option<prost_types::Timestamp>| {
        timestamp.and_then(|t| SystemTime::try_from(t).ok())
    };
    Principal::new(Claims {
        token_id: answer.token_id,
        name: answer.name,
        subject: answer.subject,
        account: answer.account,
        scopes: answer.scopes,
        issued_at: time(answer.issued_at),
        expires_at: time(answer.expires_at),
        resources: answer.resources,
    })
}

fn check(principal: Option<Principal>, required: &[&str]) -> Result<Principal, VerifyError> {
    let Some(principal) = principal else {
        return Err(VerifyError::Inactive);
    };
    // Expiry at its instant, whatever the cache holds.
    if principal
        .expires_at
        .is_some_and(|at| at <= SystemTime::now())
    {
        return Err(VerifyError::Inactive);
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|scope| !principal.has_scope(scope))
        .map(|scope| (*scope).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(principal)
    } else {
        Err(VerifyError::MissingScopes { principal, missing })
    }
}

impl Inner {
    fn key_of(&self, bearer: &str, client_ip: Option<IpAddr>) -> Key {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(bearer.as_bytes());
        // 0xFF never occurs in UTF-8: the secret ends here.
        hasher.update(&[0xFF]);
        // Then the address's family and octets (an IPv4-mapped IPv6 address is
        // its IPv4 address, as patd sees it).
        match client_ip.map(|ip| ip.to_canonical()) {
            None => hasher.update(&[0]),
            Some(IpAddr::V4(v4)) => hasher.update(&[4]).update(&v4.octets()),
            Some(IpAddr::V6(v6)) => hasher.update(&[6]).update(&v6.octets()),
        };
        Key(*hasher.finalize().as_bytes())
    }

    pub(crate) fn is_coherent(&self) -> bool {
        let heard = self.heard.load(Ordering::Acquire);
        heard != 0
            && self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_micros(heard))
                < self.settings.max_staleness
    }

    /// The change stream delivered something.
    pub(crate) fn heard(&self) {
        let now = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.heard.store(now.max(1), Ordering::Release);
    }

    /// The active (`Some`) or inactive (`None` inside) answer cached for `key`.
    fn cached(&self, key: &Key) -> Option<Option<Principal>> {
        let cache = self.cache.read().expect("lock poisoned");
        if let Some(entry) = cache.active.get(key)
            && entry.inserted.elapsed() < self.settings.ttl
            && !entry.is_past_expiry()
        {
            return Some(entry.principal.clone());
        }
        if let Some(entry) = cache.inactive.get(key)
            && entry.inserted.elapsed() < self.settings.negative_ttl
        {
            return Some(None);
        }
        None
    }

    fn insert(&self, key: Key, principal: Option<Principal>, generation: &u64) {
        let mut cache = self.cache.write().expect("lock poisoned");
        if self.generation.load(Ordering::Acquire) != *generation {
            return;
        }
        let entry = Entry {
            principal: principal.clone(),
            inserted: Instant::now(),
        };
        match &principal {
            Some(principal) => {
                if cache.active.len() >= self.settings.capacity && !cache.active.contains_key(&key)
                {
                    evict_one(&mut cache);
                }
                // Indexed once per key: a refreshed answer replaces its entry.
                if cache.active.insert(key, entry).is_none() {
                    cache
                        .by_id
                        .entry(principal.token_id.clone())
                        .or_default()
                        .push(key);
                }
            }
            None => {
                if cache.inactive.len() >= self.settings.negative_capacity {
                    // Inactive answers are short-lived anyway: start afresh.
                    cache.inactive.clear();
                }
                cache.inactive.insert(key, entry);
            }
        }
    }

    /// Forgets every answer about token `id` (revoked, deleted or rotated).
    pub(crate) fn invalidate(&self, id: &str) {
        let mut cache = self.cache.write().expect("lock poisoned");
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(keys) = cache.by_id.remove(id) {
            for key in keys {
                cache.active.remove(&key);
            }
        }
    }

    /// Forgets everything (the stream could not resume without a gap), and
    /// trusts nothing until the stream is heard from again: an answer cached
    /// before the new subscription starts could miss a change made meanwhile.
    pub(crate) fn clear(&self) {
        let mut cache = self.cache.write().expect("lock poisoned");
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.heard.store(0, Ordering::Release);
        *cache = Cache::default();
    }

    pub(crate) fn max_staleness(&self) -> Duration {
        self.settings.max_staleness
    }
}

/// Makes room: drops one active entry (and its index), the oldest of a few.
fn evict_one(cache: &mut Cache) {
    let oldest = cache
        .active
        .iter()
        .take(8)
        .min_by_key(|(_, entry)| entry.inserted)
        .map(|(key, entry)| (*key, entry.principal.as_ref().map(|p| p.token_id.clone())));
    if let Some((key, id)) = oldest {
        cache.active.remove(&key);
        if let Some(id) = id
            && let Some(keys) = cache.by_id.get_mut(&id)
        {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                cache.by_id.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_is_keyed_by_a_keyed_hash_never_the_secret() {
        let client = Client::builder("127.0.0.1:9").build().unwrap();
        let auth = Authenticator::new(client, AuthenticatorSettings::default());
        let secret = "patd_DZhsW6sA9cWBUSfpcfShwPYjqCTy2guQVdgt6mF9aPj4BxweA";
        let key = auth.inner.key_of(secret, None);
        assert_eq!(std::mem::size_of::<Key>(), 32);
        assert!(
            !key.0
                .windows(8)
                .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
        );
        assert_ne!(
            key,
            auth.inner.key_of(secret, Some("10.0.0.1".parse().unwrap()))
        );
        // Another process (another key) keys the same secret differently.
        let other = Authenticator::new(
            Client::builder("127.0.0.1:9").build().unwrap(),
            AuthenticatorSettings::default(),
        );
        assert_ne!(key, other.inner.key_of(secret, None));
        assert!(format!("{key:?}").contains("keyed hash"));
        assert!(auth.cached_keys().is_empty());
    }

    fn principal(id: &str, expires_at: Option<SystemTime>) -> Principal {
        Principal::new(Claims {
            token_id: id.to_owned(),
            name: "n".to_owned(),
            subject: "alice".to_owned(),
            account: "acme".to_owned(),
            scopes: vec!["license:read".to_owned()],
            issued_at: None,
            expires_at,
            resources: Vec::new(),
        })
    }

    #[tokio::test]
    async fn refreshing_an_answer_does_not_grow_the_index() {
        let auth = Authenticator::new(
            Client::builder("127.0.0.1:9").build().unwrap(),
            AuthenticatorSettings::default(),
        );
        let inner = &auth.inner;
        let key = inner.key_of("a secret", None);
        for _ in 0..1_000 {
            let generation = inner.generation.load(Ordering::Acquire);
            inner.insert(key, Some(principal("t1", None)), &generation);
        }
        let cache = inner.cache.read().unwrap();
        assert_eq!(cache.by_id["t1"], vec![key]);
        assert_eq!(cache.active.len(), 1);
    }

    #[tokio::test]
    async fn an_expired_answer_is_asked_again_and_clearing_stops_trust() {
        let auth = Authenticator::new(
            Client::builder("127.0.0.1:9").build().unwrap(),
            AuthenticatorSettings::default(),
        );
        let inner = &auth.inner;
        inner.heard();
        assert!(auth.is_coherent());
        let (live, past) = (inner.key_of("live", None), inner.key_of("past", None));
        let generation = inner.generation.load(Ordering::Acquire);
        let later = SystemTime::now() + Duration::from_secs(60);
        let earlier = SystemTime::now() - Duration::from_secs(1);
        inner.insert(live, Some(principal("t1", Some(later))), &generation);
        inner.insert(past, Some(principal("t2", Some(earlier))), &generation);
        assert!(matches!(inner.cached(&live), Some(Some(_))));
        // Past its expiry: a miss (patd decides, and sees the use), not "inactive".
        assert!(inner.cached(&past).is_none());
        inner.clear();
        assert!(
            !auth.is_coherent(),
            "nothing is trusted until the stream is heard"
        );
        assert!(inner.cached(&live).is_none());
    }

    #[tokio::test]
    async fn junk_is_refused_without_a_call_and_patd_unreachable_fails_closed() {
        // Nothing listens on port 9: a call would fail as unavailable.
        let client = Client::builder("127.0.0.1:9").retries(0).build().unwrap();
        let auth = Authenticator::new(client, AuthenticatorSettings::default());
        for junk in ["", "hello", "patd_short", "Basic abc"] {
            assert!(matches!(
                auth.verify(junk, &[], None).await,
                Err(VerifyError::Inactive)
            ));
        }
        let well_formed = "patd_DZhsW6sA9cWBUSfpcfShwPYjqCTy2guQVdgt6mF9aPj4BxweA";
        if TokenShape::default().is_well_formed(well_formed) {
            assert!(matches!(
                auth.verify(well_formed, &[], None).await,
                Err(VerifyError::Unavailable(_))
            ));
        }
        assert!(!auth.is_coherent());
    }
}
