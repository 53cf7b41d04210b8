//! Token lifecycle beyond create and revoke: rotation with a grace period and reuse
//! detection, self-service (GetSelf, RotateSelf), IP allowlists and the last
//! client address.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use patd::domain::clock;
use patd::proto::{
    CreateTokenRequest, GetSelfRequest, GetTokenRequest, IntrospectRequest,
    ListExpiringTokensRequest, ListTokensRequest, RotateSelfRequest, RotateTokenRequest,
    TokenOrder,
};
use patd::serve::ServerSettings;
use tonic::Code;

use crate::backend_tests;
use crate::ext_authz::check_request;
use crate::helpers::{TestApp, authed};
use crate::tls::portal_trusted_settings;

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
        .rotate_token(authed(&manager, rotate(&record.id, grace(2_000))))
        .await
        .unwrap()
        .into_inner();
    let rotated_at = Instant::now();
    assert!(app.is_active(&old).await, "within the grace period");
    assert!(app.is_active(&rotated.secret).await);

    tokio::time::sleep(Duration::from_millis(2_300).saturating_sub(rotated_at.elapsed())).await;
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
                grace_period: grace(1_500),
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

    // Within its grace the old secret still introspects, but manages nothing: it
    // may be the leaked one.
    assert!(app.is_active(&secret).await);
    let err = tokens
        .get_self(authed(&secret, GetSelfRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("rotated"), "{}", err.message());

    // The rotated-away secret cannot rotate again once its grace is over: that
    // is reuse, and the whole token goes.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
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

async fn a_token_cannot_extend_its_own_life(app: TestApp) {
    let hour = 3_600_000_000;
    let expires_at = clock::now_micros() + hour;
    let (reader, _) = app
        .mint(("carol", "acme"), &["tag:read"], Some(expires_at))
        .await;
    let mut tokens = app.tokens().await;
    let longer = RotateSelfRequest {
        expires_at: Some(clock::to_timestamp(expires_at + hour)),
        grace_period: None,
    };
    let err = tokens
        .rotate_self(authed(&reader, longer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let shorter = RotateSelfRequest {
        expires_at: Some(clock::to_timestamp(expires_at - hour / 2)),
        grace_period: None,
    };
    assert!(tokens.rotate_self(authed(&reader, shorter)).await.is_ok());

    // Nor may a token that manages tokens: it cannot mint a longer-lived one
    // either (the subset rule, tests/api/escalation.rs).
    let (manager, _) = app
        .mint(
            ("dave", "acme"),
            &["personalAccessToken:write"],
            Some(expires_at),
        )
        .await;
    let err = tokens
        .rotate_self(authed(&manager, longer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("must expire no later"),
        "{}",
        err.message()
    );
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
    a_token_cannot_extend_its_own_life,
    a_token_keeps_its_last_hundred_retired_secrets,
    an_allowlisted_token_works_only_from_its_networks,
    the_last_client_address_is_recorded with quick_last_used,
    list_filters_and_orders_page_through_exactly with quick_last_used,
    a_trusted_mailer_lists_tokens_expiring_soon_across_subjects with portal_trusted_settings,
);

/// Every page of ListTokens for `request`, names in order.
async fn all_names(app: &TestApp, manager: &str, request: ListTokensRequest) -> Vec<String> {
    let mut tokens = app.tokens().await;
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = tokens
            .list_tokens(authed(
                manager,
                ListTokensRequest {
                    page_token,
                    ..request.clone()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.tokens.into_iter().map(|token| token.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

async fn list_filters_and_orders_page_through_exactly(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let now = clock::now_micros();
    let hour = 3_600_000_000;
    let mut tokens = app.tokens().await;
    let create = |name: &str, expires_at: Option<i64>| CreateTokenRequest {
        name: name.to_owned(),
        scopes: vec!["tag:read".to_owned()],
        expires_at: expires_at.map(clock::to_timestamp),
        ..Default::default()
    };
    let mut secrets = std::collections::HashMap::new();
    for (name, expires_at) in [
        ("ci-deploy", Some(now + 5 * hour)),
        ("CI backup", Some(now + hour)),
        ("laptop", None),
        ("50%_off", Some(now + 3 * hour)),
        ("zeta", Some(now + 2 * hour)),
    ] {
        let created = tokens
            .create_token(authed(&manager, create(name, expires_at)))
            .await
            .unwrap()
            .into_inner();
        secrets.insert(name, (created.secret, created.token.unwrap()));
    }
    tokens
        .revoke_token(authed(
            &manager,
            patd::proto::RevokeTokenRequest {
                id: secrets["zeta"].1.id.clone(),
            },
        ))
        .await
        .unwrap();
    // Used, most recent last: laptop, then ci-deploy (flushed within 100 ms).
    for name in ["laptop", "ci-deploy"] {
        assert!(app.is_active(&secrets[name].0).await);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let base = ListTokensRequest {
        page_size: 2,
        ..Default::default()
    };
    let by = |order: TokenOrder| ListTokensRequest {
        order_by: order.into(),
        ..base.clone()
    };
    assert_eq!(
        all_names(&app, &manager, by(TokenOrder::NameAsc)).await,
        [
            "50%_off",
            "CI backup",
            "ci-deploy",
            "laptop",
            "minted",
            "zeta"
        ],
        "byte order, every page once"
    );
    assert_eq!(
        all_names(&app, &manager, by(TokenOrder::ExpiresAsc)).await,
        [
            "CI backup",
            "zeta",
            "50%_off",
            "ci-deploy",
            "minted",
            "laptop"
        ],
        "soonest first, never-expiring last (by creation)"
    );
    // The manager's own token is used by every call here: leave it out.
    let mut used = all_names(&app, &manager, by(TokenOrder::LastUsedDesc)).await;
    used.retain(|name| name != "minted");
    assert_eq!(
        used,
        ["ci-deploy", "laptop", "zeta", "50%_off", "CI backup"],
        "most recent first, then never used (by creation, newest first)"
    );
    let newest = all_names(&app, &manager, by(TokenOrder::CreatedDesc)).await;
    let mut oldest = all_names(&app, &manager, by(TokenOrder::CreatedAsc)).await;
    oldest.reverse();
    assert_eq!(newest, oldest);

    let filtered = |filter: ListTokensRequest| all_names(&app, &manager, filter);
    assert_eq!(
        filtered(ListTokensRequest {
            name_contains: "ci".to_owned(),
            order_by: TokenOrder::NameAsc.into(),
            ..base.clone()
        })
        .await,
        ["CI backup", "ci-deploy"],
        "case-insensitive"
    );
    assert_eq!(
        filtered(ListTokensRequest {
            name_contains: "%_".to_owned(),
            ..base.clone()
        })
        .await,
        ["50%_off"],
        "% and _ match themselves"
    );
    assert_eq!(
        filtered(ListTokensRequest {
            state: patd::proto::TokenState::Revoked.into(),
            ..base.clone()
        })
        .await,
        ["zeta"]
    );
    assert_eq!(
        filtered(ListTokensRequest {
            state: patd::proto::TokenState::Active.into(),
            expires_before: Some(clock::to_timestamp(now + 4 * hour)),
            order_by: TokenOrder::ExpiresAsc.into(),
            ..base.clone()
        })
        .await,
        ["CI backup", "50%_off"]
    );
    let laptop_created =
        clock::from_timestamp(secrets["laptop"].1.created_at.as_ref().unwrap()).unwrap();
    let mut after_laptop = filtered(ListTokensRequest {
        created_after: Some(clock::to_timestamp(laptop_created)),
        ..base.clone()
    })
    .await;
    after_laptop.sort();
    assert_eq!(after_laptop, ["50%_off", "zeta"]);
    assert_eq!(
        filtered(ListTokensRequest {
            // Uses are kept to the second: any time before the test began.
            last_used_after: Some(clock::to_timestamp(now - 2_000_000)),
            order_by: TokenOrder::NameAsc.into(),
            ..base.clone()
        })
        .await,
        ["ci-deploy", "laptop", "minted"]
    );

    // A page token continues only the query that issued it.
    let first = tokens
        .list_tokens(authed(&manager, by(TokenOrder::NameAsc)))
        .await
        .unwrap()
        .into_inner();
    let err = tokens
        .list_tokens(authed(
            &manager,
            ListTokensRequest {
                page_token: first.next_page_token,
                ..by(TokenOrder::ExpiresAsc)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn a_trusted_mailer_lists_tokens_expiring_soon_across_subjects(app: TestApp) {
    let now = clock::now_micros();
    let hour = 3_600_000_000;
    let (_, soon) = app
        .mint(("alice", "acme"), &["tag:read"], Some(now + hour))
        .await;
    let (_, later) = app
        .mint(("bob", "globex"), &["tag:read"], Some(now + 20 * hour))
        .await;
    app.mint(("carol", "acme"), &["tag:read"], Some(now + 200 * hour))
        .await;
    app.mint(("dave", "acme"), &["tag:read"], None).await;
    app.mint_revoked(("erin", "acme"), &["tag:read"]).await;
    let request = || ListExpiringTokensRequest {
        expires_before: Some(clock::to_timestamp(now + 7 * 24 * hour)),
        page_size: 1,
        page_token: String::new(),
    };
    let mut tokens = app.tokens().await;
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = tokens
            .list_expiring_tokens(authed(
                crate::tls::portal_credential(),
                ListExpiringTokensRequest {
                    page_token,
                    ..request()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for token in page.tokens {
            ids.push((token.id, token.subject));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        ids,
        [(soon.id, "alice".to_owned()), (later.id, "bob".to_owned())],
        "active tokens expiring within the week, soonest first, every subject"
    );

    let (user, _) = app
        .mint(("alice", "acme"), &["personalAccessToken:write"], None)
        .await;
    let err = tokens
        .list_expiring_tokens(authed(&user, request()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = tokens
        .list_expiring_tokens(authed(
            crate::tls::portal_credential(),
            ListExpiringTokensRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn a_token_keeps_its_last_hundred_retired_secrets(app: TestApp) {
    let (first, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    let mut secrets = vec![first];
    for _ in 0..(patd::store::MAX_RETIRED_SECRETS + 1) {
        let rotated = tokens
            .rotate_self(authed(
                secrets.last().unwrap(),
                RotateSelfRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner();
        secrets.push(rotated.secret);
    }
    let current = secrets.last().unwrap().clone();
    // The oldest retired secret was forgotten: now merely unknown, no reuse alarm.
    assert!(!app.is_active(&secrets[0]).await);
    assert!(
        app.is_active(&current).await,
        "forgotten secrets trigger nothing"
    );
    // One still remembered is reuse, and revokes the token.
    assert!(!app.is_active(&secrets[1]).await);
    assert!(!app.is_active(&current).await);
}
