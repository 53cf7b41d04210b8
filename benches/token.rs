//! Micro-benchmarks of the Introspect hot path's pure parts: token parsing
//! (prefix, alphabet, CRC32 checksum, BLAKE3) and a cache hit.
//! Run: `cargo bench --bench token`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use patd::domain::model::{Owner, TokenRecord};
use patd::domain::scope::ScopeSet;
use patd::domain::token::{SecretHash, TokenFormat};
use patd::verify::cache::{CacheSettings, Cached, TokenCache};

fn token_parsing(c: &mut Criterion) {
    let format = TokenFormat::default();
    let valid = format.generate().expose().to_owned();
    let last = if valid.ends_with('a') { "b" } else { "a" };
    let wrong_checksum = format!("{}{last}", &valid[..valid.len() - 1]);
    let junk = "x".repeat(1_024);

    c.bench_function("parse valid token (checksum + BLAKE3)", |b| {
        b.iter(|| format.parse(black_box(&valid)))
    });
    c.bench_function("parse wrong checksum (rejected before hashing)", |b| {
        b.iter(|| format.parse(black_box(&wrong_checksum)))
    });
    c.bench_function("parse 1 KiB junk", |b| {
        b.iter(|| format.parse(black_box(&junk)))
    });
    c.bench_function("BLAKE3 derive_key hash of a token", |b| {
        b.iter(|| SecretHash::of(black_box(&valid)))
    });
    c.bench_function("generate a token (OS CSPRNG)", |b| {
        b.iter(|| format.generate())
    });
}

fn cache_lookup(c: &mut Criterion) {
    const TOKENS: usize = 1_000_000;
    let cache = TokenCache::new(CacheSettings {
        capacity: TOKENS,
        negative_capacity: 1_000,
        ttl: Duration::from_secs(600),
    });
    let record = TokenRecord {
        id: "AbCdEfGhIjKlMnOpQrStUv".to_owned(),
        name: "bench".to_owned(),
        owner: Owner {
            subject: "alice".to_owned(),
            account: "acme".to_owned(),
        },
        scopes: ScopeSet::parse(["license:read"]).unwrap(),
        hint: String::new(),
        created_at: 0,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
        rotated_at: None,
        allowed_cidrs: Default::default(),
        suspended_at: None,
        description: String::new(),
        labels: Default::default(),
        resources: Default::default(),
    };
    let hashes: Vec<SecretHash> = (0..TOKENS)
        .map(|i| SecretHash::of(&i.to_string()))
        .collect();
    for (seq, hash) in hashes.iter().enumerate() {
        if let Cached::Miss(epoch) = cache.get(hash) {
            cache.insert_found(hash, seq as i64, &record, epoch);
        }
    }
    let mut next = 0;
    c.bench_function("cache hit among 1M tokens", |b| {
        b.iter(|| {
            next = (next + 7_919) % TOKENS;
            matches!(cache.get(black_box(&hashes[next])), Cached::Found(_))
        })
    });
}

criterion_group!(benches, token_parsing, cache_lookup);
criterion_main!(benches);
