//! Server-side token policies: lifetimes and active tokens per subject, with
//! per-account overrides.

use patd::domain::clock;
use patd::domain::policy::{Policy, PolicyConfig};
use patd::proto::{CreateTokenRequest, RevokeTokenRequest, RotateTokenRequest};
use patd::serve::ServerSettings;
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed};

const DAY: i64 = 86_400_000_000;

fn strict_acme() -> ServerSettings {
    let config: PolicyConfig = toml::from_str(
        "max_lifetime = \"365d\"\n\
         [accounts.acme]\nmax_lifetime = \"7d\"\ndefault_lifetime = \"1d\"\n\
         max_active_tokens_per_subject = 4\n",
    )
    .unwrap();
    ServerSettings {
        policy: Policy::new(&config).unwrap(),
        ..TestApp::settings()
    }
}

fn create(name: &str, expires_at: Option<i64>) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.to_owned(),
        scopes: vec!["tag:read".to_owned()],
        expires_at: expires_at.map(clock::to_timestamp),
        ..Default::default()
    }
}

async fn lifetimes_and_counts_follow_the_accounts_policy(app: TestApp) {
    // The manager's own token counts: it is active (minted without the API).
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let now = clock::now_micros();

    let defaulted = tokens
        .create_token(authed(&manager, create("default", None)))
        .await
        .unwrap()
        .into_inner();
    let expires = clock::from_timestamp(&defaulted.token.unwrap().expires_at.unwrap()).unwrap();
    assert!(
        (expires - (now + DAY)).abs() < 60_000_000,
        "the default lifetime, one day"
    );

    let err = tokens
        .create_token(authed(&manager, create("too long", Some(now + 8 * DAY))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("maximum lifetime of 7days"),
        "{}",
        err.message()
    );

    let second = tokens
        .create_token(authed(&manager, create("second", Some(now + 2 * DAY))))
        .await
        .unwrap()
        .into_inner();
    tokens
        .create_token(authed(&manager, create("third", None)))
        .await
        .unwrap();
    let err = tokens
        .create_token(authed(&manager, create("fifth", None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("already holds 4 active tokens"),
        "{}",
        err.message()
    );

    // A rotation may not stretch a token past the maximum either.
    let second_id = second.token.unwrap().id;
    let err = tokens
        .rotate_token(authed(
            &manager,
            RotateTokenRequest {
                id: second_id.clone(),
                expires_at: Some(clock::to_timestamp(now + 30 * DAY)),
                grace_period: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Revoking one makes room.
    tokens
        .revoke_token(authed(&manager, RevokeTokenRequest { id: second_id }))
        .await
        .unwrap();
    tokens
        .create_token(authed(&manager, create("fourth", None)))
        .await
        .unwrap();

    // Another account gets the global maximum (365 days) and no count limit.
    let other = app
        .mint(
            ("bob", "globex"),
            &["personalAccessToken:write", "tag:read"],
            None,
        )
        .await
        .0;
    let err = tokens
        .create_token(authed(&other, create("forever", None)))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("must expire within 11months 30days"),
        "{}",
        err.message()
    );
    for i in 0..6 {
        tokens
            .create_token(authed(
                &other,
                create(&format!("g{i}"), Some(now + 300 * DAY)),
            ))
            .await
            .unwrap();
    }
}

async fn concurrent_creates_never_exceed_the_count(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut tokens = app.tokens().await;
        let manager = manager.clone();
        calls.push(tokio::spawn(async move {
            tokens
                .create_token(authed(&manager, create(&format!("race {i}"), None)))
                .await
                .map(drop)
                .map_err(|status| status.code())
        }));
    }
    let mut created = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => created += 1,
            Err(code) => assert_eq!(code, Code::FailedPrecondition),
        }
    }
    assert_eq!(
        created, 3,
        "four active tokens at most, the manager's included"
    );
}

backend_tests!(
    lifetimes_and_counts_follow_the_accounts_policy with strict_acme,
    concurrent_creates_never_exceed_the_count with strict_acme,
);
