//! Introspect from memory without ever answering from stale state: what reaches
//! storage, how changes invalidate, and last_used_at written behind.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use patd::domain::clock;
use patd::domain::model::Actor;
use patd::proto::introspection_service_client::IntrospectionServiceClient;
use patd::proto::{
    DeleteTokenRequest, GetTokenRequest, IntrospectRequest, IntrospectResponse, ListTokensRequest,
    RevokeTokenRequest,
};
use patd::serve::ServerSettings;
use patd::verify::cache::CacheSettings;
use patd::verify::{Inactive, Lane, Verifier};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, authed, revoke_as_operator};

fn lookups(app: &TestApp) -> u64 {
    app.store.stats().hash_lookups.load(Ordering::Relaxed)
}

fn writes(app: &TestApp) -> u64 {
    app.store.stats().writes.load(Ordering::Relaxed)
}

async fn repeated_introspection_reads_storage_once_and_writes_nothing(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let unknown = app.format.generate().expose().to_owned();
    let (lookups_before, writes_before) = (lookups(&app), writes(&app));
    for _ in 0..50 {
        assert!(app.introspect(&secret, &[]).await.active);
        assert!(!app.introspect(&unknown, &[]).await.active);
        assert!(!app.introspect("patd_junk", &[]).await.active);
    }
    assert_eq!(
        lookups(&app) - lookups_before,
        2,
        "one lookup for the token, one for the unknown secret, none for junk"
    );
    assert_eq!(writes(&app), writes_before, "no write per Introspect");
}

async fn preload_fills_the_cache_newest_first_up_to_capacity(app: TestApp) {
    let mut minted = Vec::new();
    for _ in 0..5 {
        minted.push(app.mint(("alice", "acme"), &["tag:read"], None).await.0);
    }
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let verifier = |capacity| {
        let cache = CacheSettings {
            capacity,
            ..TestApp::settings().cache
        };
        Verifier::new(app.format.clone(), app.store.clone(), cache)
    };

    let everything = verifier(1_000);
    assert_eq!(everything.preload().await.unwrap(), 6);
    let before = lookups(&app);
    assert_eq!(
        everything
            .verify(&revoked, Lane::Introspect, None)
            .await
            .unwrap()
            .unwrap_err(),
        Inactive::Revoked
    );
    for secret in &minted {
        assert!(
            everything
                .verify(secret, Lane::Introspect, None)
                .await
                .unwrap()
                .is_ok()
        );
    }
    assert_eq!(
        lookups(&app),
        before,
        "every answer came from the preloaded cache"
    );

    // With room for three, the newest three are loaded: the oldest is not.
    let newest = verifier(3);
    assert_eq!(newest.preload().await.unwrap(), 3);
    let before = lookups(&app);
    assert!(
        newest
            .verify(&minted[0], Lane::Introspect, None)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        lookups(&app),
        before + 1,
        "the oldest token is looked up on first use"
    );
}

async fn a_flood_of_unknown_tokens_leaves_room_for_management_calls(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let channel = app.channel().await;
    let unknown: Vec<String> = (0..300)
        .map(|_| app.format.generate().expose().to_owned())
        .collect();
    let flood: Vec<_> = unknown
        .iter()
        .map(|token| {
            let mut client = IntrospectionServiceClient::new(channel.clone());
            let request = IntrospectRequest {
                token: token.clone(),
                required_scopes: vec![],
                client_ip: String::new(),
                ..Default::default()
            };
            tokio::spawn(async move { client.introspect(request).await })
        })
        .collect();
    // The test pool has 4 connections; misses may use 3 of them at once.
    let started = Instant::now();
    let listed = app
        .tokens()
        .await
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    for call in flood {
        assert!(!call.await.unwrap().unwrap().into_inner().active);
    }
    // Each unknown secret reached storage once; again within the TTL, never.
    let before = lookups(&app);
    for token in &unknown[..50] {
        assert!(!app.introspect(token, &[]).await.active);
    }
    assert_eq!(lookups(&app), before);
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let status = health.check(check).await.unwrap().into_inner().status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

async fn revoke_and_delete_take_effect_on_the_next_call_with_a_warm_cache(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let (revoked, revoked_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (deleted, deleted_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(app.introspect(&revoked, &[]).await.active);
    assert!(app.introspect(&deleted, &[]).await.active);
    let mut tokens = app.tokens().await;
    tokens
        .revoke_token(authed(
            &manager,
            RevokeTokenRequest {
                id: revoked_record.id,
            },
        ))
        .await
        .unwrap();
    tokens
        .delete_token(authed(
            &manager,
            DeleteTokenRequest {
                id: deleted_record.id,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        app.introspect(&revoked, &[]).await,
        IntrospectResponse::default()
    );
    assert_eq!(
        app.introspect(&deleted, &[]).await,
        IntrospectResponse::default()
    );
}

async fn changes_by_other_processes_arrive_within_the_poll_interval(app: TestApp) {
    let (revoked, revoked_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (deleted, deleted_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(app.introspect(&revoked, &[]).await.active);
    assert!(app.introspect(&deleted, &[]).await.active);
    // Another process (the operator CLI, another replica) on the same database.
    let other = TestApp::connect_store(&app.database_url).await;
    let changed = Instant::now();
    revoke_as_operator(&other, &revoked_record).await;
    other
        .delete(
            &deleted_record.owner,
            &deleted_record.id,
            &Actor::operator(),
            clock::now_micros(),
        )
        .await
        .unwrap()
        .unwrap();
    for secret in [&revoked, &deleted] {
        app.wait_until_inactive(secret).await;
    }
    // Poll interval is 100 ms in tests; allow for a loaded machine.
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        changed.elapsed()
    );
}

async fn expiry_takes_effect_at_its_instant_whatever_the_cache_holds(app: TestApp) {
    let expires_at = clock::now_micros() + 700_000;
    let (secret, _) = app
        .mint(("alice", "acme"), &["tag:read"], Some(expires_at))
        .await;
    assert!(
        app.introspect(&secret, &[]).await.active,
        "cached while active"
    );
    while clock::now_micros() < expires_at - 50_000 {
        assert!(app.introspect(&secret, &[]).await.active);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_micros(
        (expires_at - clock::now_micros()).max(0) as u64,
    ))
    .await;
    assert!(
        !app.introspect(&secret, &[]).await.active,
        "inactive from expires_at on"
    );
}

fn short_flush_interval() -> ServerSettings {
    ServerSettings {
        last_used_interval: Duration::from_millis(300),
        ..TestApp::settings()
    }
}

fn long_flush_interval() -> ServerSettings {
    ServerSettings {
        last_used_interval: Duration::from_secs(3600),
        ..TestApp::settings()
    }
}

async fn last_used_at_is_written_behind_once_per_interval(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let (secret, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let get = |id: String| authed(&manager, GetTokenRequest { id });
    let mut tokens = app.tokens().await;
    let before = tokens
        .get_token(get(record.id.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(before.last_used_at.is_none(), "never used yet");

    let used_at = clock::now_micros();
    let writes_before = writes(&app);
    for _ in 0..20 {
        app.introspect(&secret, &[]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let last_used = loop {
        let token = tokens
            .get_token(get(record.id.clone()))
            .await
            .unwrap()
            .into_inner();
        if let Some(at) = token.last_used_at {
            break clock::from_timestamp(&at).unwrap();
        }
        assert!(Instant::now() < deadline, "last_used_at never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (last_used - used_at).abs() < 2_000_000,
        "last used {last_used}, used at {used_at}"
    );
    // 20 uses of this token and the manager's own calls: one flush statement per
    // interval, not one write per call.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let flushes = writes(&app) - writes_before;
    assert!((1..=3).contains(&flushes), "{flushes} writes for 20+ uses");
}

async fn last_used_at_is_flushed_on_graceful_shutdown(app: TestApp) {
    let (secret, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    app.introspect(&secret, &[]).await;
    let reader = TestApp::connect_store(&app.database_url).await;
    assert!(
        reader
            .find_by_id(&record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_none()
    );
    app.stop().await.unwrap();
    let stored = reader.find_by_id(&record.id).await.unwrap().unwrap();
    assert!(stored.last_used_at.is_some(), "flushed before exit");
}

backend_tests!(
    repeated_introspection_reads_storage_once_and_writes_nothing,
    preload_fills_the_cache_newest_first_up_to_capacity,
    a_flood_of_unknown_tokens_leaves_room_for_management_calls,
    revoke_and_delete_take_effect_on_the_next_call_with_a_warm_cache,
    changes_by_other_processes_arrive_within_the_poll_interval,
    expiry_takes_effect_at_its_instant_whatever_the_cache_holds,
    last_used_at_is_written_behind_once_per_interval with short_flush_interval,
    last_used_at_is_flushed_on_graceful_shutdown with long_flush_interval,
);

/// Postgres commits transactions in any order: a revoke whose transaction started
/// first but commits after later changes were read must still arrive. (SQLite has
/// one writer at a time, so the situation cannot arise there.)
#[tokio::test]
async fn postgres_a_revoke_committed_late_still_arrives() {
    use sqlx::{ConnectOptions, Executor};
    let Some(app) = TestApp::spawn_with(Backend::Postgres, TestApp::settings()).await else {
        return;
    };
    let (late, late_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (early, early_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(app.is_active(&late).await && app.is_active(&early).await);

    let options: sqlx::postgres::PgConnectOptions = app.database_url.expose().parse().unwrap();
    let mut slow = options.connect().await.unwrap();
    slow.execute("BEGIN").await.unwrap();
    let revoke = format!(
        "UPDATE tokens SET revoked_at = 1 WHERE id = '{}'",
        late_record.id
    );
    slow.execute(revoke.as_str()).await.unwrap();

    // A later transaction commits first, and the server reads it.
    let other = TestApp::connect_store(&app.database_url).await;
    revoke_as_operator(&other, &early_record).await;
    app.wait_until_inactive(&early).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.is_active(&late).await, "not committed yet");

    slow.execute("COMMIT").await.unwrap();
    app.wait_until_inactive(&late).await;
}
