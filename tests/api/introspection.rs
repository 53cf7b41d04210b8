//! IntrospectionService through the real server (RFC 7662 semantics).

use std::time::Duration;

use patd::domain::clock;
use patd::domain::model::Actor;
use patd::proto::{IntrospectRequest, IntrospectResponse};
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, with_wrong_checksum};

fn request(token: &str, required: &[&str]) -> IntrospectRequest {
    IntrospectRequest {
        token: token.to_owned(),
        required_scopes: required.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn active_token_says_whose_it_is_and_what_it_grants(app: TestApp) {
    let expires_at = clock::now_micros() + 3_600_000_000;
    let (secret, record) = app
        .mint(
            ("alice", "acme"),
            &["license:read", "user:read"],
            Some(expires_at),
        )
        .await;
    let answer = app.introspect(&secret, &[]).await;
    assert_eq!(
        answer,
        IntrospectResponse {
            active: true,
            token_id: record.id.clone(),
            name: "minted".to_owned(),
            subject: "alice".to_owned(),
            account: "acme".to_owned(),
            scopes: vec!["license:read".to_owned(), "user:read".to_owned()],
            issued_at: Some(clock::to_timestamp(record.created_at)),
            expires_at: Some(clock::to_timestamp(expires_at)),
            token_type: "Bearer".to_owned(),
            missing_scopes: vec![],
            ..Default::default()
        }
    );
}

async fn missing_scopes_lists_what_the_token_lacks(app: TestApp) {
    let (secret, _) = app
        .mint(
            ("alice", "acme"),
            &["license:read", "licenseTemplate:write"],
            None,
        )
        .await;
    let answer = app
        .introspect(&secret, &["license:read", "license:write", "webhook:read"])
        .await;
    assert!(
        answer.active,
        "lacking scopes leaves the token active; the caller decides"
    );
    assert_eq!(answer.missing_scopes, vec!["license:write", "webhook:read"]);
    let held = app
        .introspect(&secret, &["licenseTemaplate:write", "license:read"])
        .await;
    assert!(
        held.missing_scopes.is_empty(),
        "the alias names a scope the token holds"
    );
}

async fn unknown_required_scope_is_invalid_argument(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let status = app
        .introspection()
        .await
        .introspect(request(&secret, &["license:read", "licence:read"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"licence:read\""),
        "{}",
        status.message()
    );
}

async fn bad_tokens_are_inactive_with_nothing_else_said(app: TestApp) {
    let (valid, record) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let wrong_checksum = with_wrong_checksum(&valid);
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let (deleted, deleted_record) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let deleted_hash = app
        .store
        .delete(
            &deleted_record.owner,
            &deleted_record.id,
            &Actor::operator(),
            clock::now_micros(),
        )
        .await;
    assert!(deleted_hash.unwrap().is_some());
    let (expired, _) = app
        .mint(
            ("alice", "acme"),
            &["license:read"],
            Some(clock::now_micros() + 200_000),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let junk = [
        String::new(),
        "x".repeat(100 * 1024),
        format!("patd_{}", "é".repeat(49)),
        "パスワード".to_owned(),
        wrong_checksum,
        valid.replacen("patd_", "ghp_", 1),
        format!("Bearer {valid}"),
        app.format.generate().expose().to_owned(),
        revoked,
        deleted,
        expired,
        record.id.clone(),
    ];
    for token in &junk {
        let answer = app.introspect(token, &["license:read"]).await;
        assert_eq!(answer, IntrospectResponse::default(), "{:.40}", token);
    }
    assert!(
        app.introspect(&valid, &[]).await.active,
        "the valid token is untouched"
    );
}

async fn token_turns_inactive_when_it_expires(app: TestApp) {
    let expires_at = clock::now_micros() + 1_500_000;
    let (secret, _) = app
        .mint(("alice", "acme"), &["license:read"], Some(expires_at))
        .await;
    assert!(app.introspect(&secret, &[]).await.active);
    let until_expiry = Duration::from_micros((expires_at - clock::now_micros()).max(0) as u64);
    tokio::time::sleep(until_expiry + Duration::from_millis(50)).await;
    assert_eq!(
        app.introspect(&secret, &[]).await,
        IntrospectResponse::default()
    );
}

backend_tests!(
    active_token_says_whose_it_is_and_what_it_grants,
    missing_scopes_lists_what_the_token_lacks,
    unknown_required_scope_is_invalid_argument,
    bad_tokens_are_inactive_with_nothing_else_said,
    token_turns_inactive_when_it_expires,
);
