//! The audit trail: every change and every refused management call, per account,
//! readable with `eventLog:read`, never holding a secret.

use patd::proto::{
    CreateTokenRequest, DeleteTokenRequest, ListTokenEventsRequest, ListTokensRequest,
    RevokeTokenRequest, RotateTokenRequest, TokenEvent,
};
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed};

async fn events(app: &TestApp, reader: &str, page_size: i32) -> Vec<TokenEvent> {
    let mut tokens = app.tokens().await;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = tokens
            .list_token_events(authed(
                reader,
                ListTokenEventsRequest {
                    page_size,
                    page_token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

async fn every_change_and_refusal_is_recorded_for_the_account(app: TestApp) {
    let manager = app.manager("alice", &["eventLog:read", "tag:read"]).await;
    let mut tokens = app.tokens().await;
    let created = tokens
        .create_token(authed(
            &manager,
            CreateTokenRequest {
                name: "ci".to_owned(),
                scopes: vec!["tag:read".to_owned()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.unwrap().id;
    let rotated = tokens
        .rotate_token(authed(
            &manager,
            RotateTokenRequest {
                id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokens
        .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    // Revoking again changes nothing, and records nothing.
    tokens
        .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    tokens
        .delete_token(authed(&manager, DeleteTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    // A token of the account without the management scope is refused, and that
    // is recorded; so is a token nobody issued (under no account).
    let (reader, _) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    let refused = tokens
        .list_tokens(authed(&reader, ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let stranger = app.format.generate().expose().to_owned();
    let _ = tokens
        .list_tokens(authed(&stranger, ListTokensRequest::default()))
        .await;

    let trail = events(&app, &manager, 2).await;
    let kinds: Vec<&str> = trail.iter().map(|event| event.kind.as_str()).collect();
    // The manager's and bob's tokens were minted by the operator (created too).
    assert_eq!(
        kinds,
        ["denied", "created", "deleted", "revoked", "rotated", "created", "created"],
        "newest first, every page"
    );
    assert_eq!(trail[1].actor, "operator");
    let manager_id = app.introspect(&manager, &[]).await.token_id;
    for event in &trail[2..6] {
        assert_eq!(event.token_id, id);
        assert_eq!(
            (event.subject.as_str(), event.account.as_str()),
            ("alice", "acme")
        );
        assert_eq!(event.actor, format!("token:{manager_id}"));
        assert!(event.peer.starts_with("127.0.0.1:"), "{}", event.peer);
        assert!(event.time.is_some());
    }
    let denied = &trail[0];
    assert_eq!(denied.subject, "bob");
    assert!(
        denied.detail.contains("ListTokens") && denied.detail.contains("personalAccessToken:write")
    );
    assert!(trail[5].detail.contains("tag:read"), "what was granted");
    for event in &trail {
        let text = format!("{event:?}");
        for secret in [
            &manager,
            &created.secret,
            &rotated.secret,
            &reader,
            &stranger,
        ] {
            assert!(
                !text.contains(&secret[5..]),
                "a secret in the trail: {text}"
            );
        }
    }

    // Another account sees none of it; reading needs eventLog:read.
    let other = app
        .mint(("carol", "globex"), &["eventLog:read"], None)
        .await
        .0;
    let theirs = events(&app, &other, 50).await;
    assert_eq!(theirs.len(), 1, "only their own token's creation");
    assert!(theirs.iter().all(|event| event.account == "globex"));
    let err = tokens
        .list_token_events(authed(&reader, ListTokenEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("eventLog:read"));
}

async fn reuse_and_operator_actions_are_attributed(app: TestApp) {
    let reader = app.manager("alice", &["eventLog:read"]).await;
    // Operator commands write through the store as `operator`.
    let (_, revoked) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let (old, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    app.tokens()
        .await
        .rotate_token(authed(
            &reader,
            RotateTokenRequest {
                id: record.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(!app.is_active(&old).await);

    let trail = events(&app, &reader, 50).await;
    let reuse = trail
        .iter()
        .find(|event| event.kind == "reuse_detected")
        .expect("reuse is recorded");
    assert_eq!(
        (reuse.token_id.as_str(), reuse.actor.as_str()),
        (record.id.as_str(), "patd")
    );
    let operator = trail
        .iter()
        .find(|event| event.kind == "revoked" && event.token_id == revoked.id)
        .expect("the operator's revoke is recorded");
    assert_eq!(operator.actor, "operator");
}

backend_tests!(
    every_change_and_refusal_is_recorded_for_the_account,
    reuse_and_operator_actions_are_attributed,
);
