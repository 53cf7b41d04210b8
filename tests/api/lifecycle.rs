//! Token lifecycle beyond create and revoke: rotation with a grace period and reuse
//! detection, self-service (GetSelf, RotateSelf), IP allowlists and the last
//! client address.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use patd::clock;
use patd::proto::{
    CreateTokenRequest, GetSelfRequest, GetTokenRequest, IntrospectRequest, RotateSelfRequest,
    RotateTokenRequest,
};
use patd::server::ServerSettings;
use tonic::Code;

use crate::backend_tests;
use crate::ext_authz::check_request;
use crate::helpers::{TestApp, authed};

fn grace(millis: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(Duration::from_millis(millis)).unwrap())
}

fn rotate(id: &str, grace_period: Option<prost_types::Duration>) -> RotateTokenRequest {
    RotateTokenRequest {
        id: id.to_owned(),
        expires_at: None,
        grace_period,
    }
}

async fn rotation_replaces_the_secret_and_keeps_the_identity(app: TestApp) {
    let manager = app.manager("alice", &["license:read"]).await;
    let (old, record) = app.mint(("alice", "acme"), &["license:read"], None).await;
    assert!(app.is_active(&old).await, "cached before the rotation");
    let mut tokens = app.tokens().await;

    let rotated = tokens
        .rotate_token(authed(&manager, rotate(&record.id, None)))
        .await
        .unwrap()
        .into_inner();
    let token = rotated.token.unwrap();
    assert_eq!(token.id, record.id, "same identity");
    assert_eq!(token.name, record.name);
    assert_eq!(token.scopes, ["license:read"]);
    assert_ne!(token.hint, record.hint);
    assert!(token.rotated_at.is_some());
    assert_ne!(rotated.secret, old);

    let answer = app.introspect(&rotated.secret, &[]).await;
    assert!(answer.active);
    assert_eq!(answer.token_id, record.id);

    // A new expiry can come with the rotation; one in the past cannot.
    let expires_at = clock::to_timestamp(clock::now_micros() + 3_600_000_000);
    let renewed = tokens
        .rotate_token(authed(
            &manager,
            RotateTokenRequest {
                expires_at: Some(expires_at),
                ..rotate(&record.id, None)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.token.as_ref().unwrap().expires_at, Some(expires_at));
    let past = RotateTokenRequest {
        expires_at: Some(clock::to_timestamp(clock::now_micros() - 1_000_000)),
        ..rotate(&record.id, None)
    };
    let err = tokens
        .rotate_token(authed(&manager, past))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let too_long = rotate(&record.id, grace(25 * 3600 * 1000));
    let err = tokens
        .rotate_token(authed(&manager, too_long))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("grace_period"), "{}", err.message());

    // Without a grace period the old secret stops at once (it was cached), and
    // presenting it is reuse: the token is revoked, current secret included.
    assert!(!app.is_active(&old).await);
    assert!(!app.is_active(&renewed.secret).await);

    let (_, revoked) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let err = tokens
        .rotate_token(authed(&manager, rotate(&revoked.id, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let (_, bobs) = app.mint(("bob", "acme"), &["license:read"], None).await;
    let err = tokens
        .rotate_token(authed(&manager, rotate(&bobs.id, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "another owner's token");
}

async fn an_old_secret_used_after_its_grace_revokes_the_token(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let (old, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    let rotated = tokens
        .rotate_token(authed(&manager, rotate(&record.id, grace(600))))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    assert!(app.is_active(&old).await, "within the grace period");
    assert!(app.is_active(&rotated.secret).await);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "test too slow to mean anything"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!app.is_active(&old).await, "after the grace period");
    assert!(
        !app.is_active(&rotated.secret).await,
        "reuse of a retired secret revokes the token, new secret included"
    );
    let token = tokens
        .get_token(authed(&manager, GetTokenRequest { id: record.id }))
        .await
        .unwrap()
        .into_inner();
    assert!(token.revoked_at.is_some());
}

async fn a_token_reads_and_rotates_itself_without_the_management_scope(app: TestApp) {
    let (secret, record) = app.mint(("carol", "acme"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    let me = tokens
        .get_self(authed(&secret, GetSelfRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, record.id);
    assert_eq!(me.subject, "carol");

    let rotated = tokens
        .rotate_self(authed(
            &secret,
            RotateSelfRequest {
                expires_at: None,
                grace_period: grace(300),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.token.unwrap().id, record.id);
    let me = tokens
        .get_self(authed(&rotated.secret, GetSelfRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(me.rotated_at.is_some());

    // The rotated-away secret cannot rotate again once its grace is over: that
    // is reuse, and the whole token goes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reused = tokens
        .rotate_self(authed(&secret, RotateSelfRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert!(!app.is_active(&rotated.secret).await);

    let err = tokens
        .get_self(authed("patd_nonsense", GetSelfRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

async fn a_rotation_through_one_server_retires_the_secret_on_another(app: TestApp) {
    let other = TestApp::spawn_with_store(
        app.backend,
        app.store.clone(),
        app.database_url.clone(),
        TestApp::settings(),
    )
    .await;
    let manager = app.manager("alice", &["tag:read"]).await;
    let (old, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(other.is_active(&old).await, "cached on the other server");
    app.tokens()
        .await
        .rotate_token(authed(&manager, rotate(&record.id, None)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while other.is_active(&old).await {
        assert!(
            Instant::now() < deadline,
            "the other server kept the old secret"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn create_limited(cidrs: &[&str]) -> CreateTokenRequest {
    CreateTokenRequest {
        name: "office only".to_owned(),
        scopes: vec!["tag:read".to_owned()],
        allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

fn introspect_from(token: &str, client_ip: &str) -> IntrospectRequest {
    IntrospectRequest {
        token: token.to_owned(),
        client_ip: client_ip.to_owned(),
        ..Default::default()
    }
}

async fn an_allowlisted_token_works_only_from_its_networks(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let created = tokens
        .create_token(authed(
            &manager,
            create_limited(&["10.0.0.0/8", "2001:db8::/32"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.token.unwrap().allowed_cidrs,
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    let secret = created.secret;
    let mut introspection = app.introspection().await;
    for (client, active) in [
        ("10.20.30.40", true),
        ("2001:db8:5::1", true),
        ("192.168.1.1", false),
        ("2001:db9::1", false),
        ("", false),
    ] {
        let answer = introspection
            .introspect(introspect_from(&secret, client))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.active, active, "from {client:?}");
    }
    let err = introspection
        .introspect(introspect_from(&secret, "10.0.0.300"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Envoy's Check takes the address from the request's source peer
    // (203.0.113.7 in these CheckRequests): outside the list.
    let check = AuthorizationClient::new(app.channel().await)
        .check(check_request(Some(&format!("Bearer {secret}")), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status.unwrap().code, 16);

    // As a bearer credential, the peer's address counts: these calls come from
    // 127.0.0.1.
    let local = tokens
        .create_token(authed(&manager, {
            let mut request = create_limited(&["127.0.0.0/8"]);
            request.scopes.push("personalAccessToken:write".to_owned());
            request.scopes.retain(|s| s != "tag:read");
            request
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokens
            .get_self(authed(&local.secret, GetSelfRequest {}))
            .await
            .is_ok()
    );
    let remote_only = tokens
        .create_token(authed(&manager, {
            let mut request = create_limited(&["10.0.0.0/8"]);
            request.scopes = vec!["personalAccessToken:write".to_owned()];
            request
        }))
        .await
        .unwrap()
        .into_inner();
    let err = tokens
        .get_self(authed(&remote_only.secret, GetSelfRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("address"), "{}", err.message());

    let err = tokens
        .create_token(authed(&manager, create_limited(&["10.0.0.0/33"])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("allowed_cidrs"), "{}", err.message());
}

fn quick_last_used() -> ServerSettings {
    ServerSettings {
        last_used_interval: Duration::from_millis(100),
        ..TestApp::settings()
    }
}

async fn the_last_client_address_is_recorded(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let (secret, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let answer = app
        .introspection()
        .await
        .introspect(introspect_from(&secret, "2001:db8::7"))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let token = app
            .tokens()
            .await
            .get_token(authed(
                &manager,
                GetTokenRequest {
                    id: record.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if !token.last_used_ip.is_empty() {
            assert_eq!(token.last_used_ip, "2001:db8::7");
            assert!(token.last_used_at.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "last_used_ip never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

backend_tests!(
    rotation_replaces_the_secret_and_keeps_the_identity,
    an_old_secret_used_after_its_grace_revokes_the_token,
    a_token_reads_and_rotates_itself_without_the_management_scope,
    a_rotation_through_one_server_retires_the_secret_on_another,
    an_allowlisted_token_works_only_from_its_networks,
    the_last_client_address_is_recorded with quick_last_used,
);
