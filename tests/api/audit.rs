//! The audit trail: every change and every refused management call, per account,
//! readable with `eventLog:read`, never holding a secret.

use patd::proto::{
    CreateTokenRequest, DeleteTokenRequest, ListTokenEventsRequest, ListTokensRequest,
    ReportLeakedTokensRequest, RevokeTokenRequest, RotateTokenRequest, TokenEvent,
};
use patd::store::EventKind;
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed};

/// Every refused call recorded, of any account or none, newest first.
async fn refusals(app: &TestApp) -> Vec<patd::store::Event> {
    let page = app.store.list_events(None, None, 1000).await.unwrap();
    page.events
        .into_iter()
        .filter(|event| event.kind == EventKind::Denied)
        .collect()
}

pub async fn events(app: &TestApp, reader: &str, page_size: i32) -> Vec<TokenEvent> {
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
        [
            "denied", "created", "deleted", "revoked", "rotated", "created", "created"
        ],
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
    let reader_id = app.introspect(&reader, &[]).await.token_id;
    assert_eq!(
        denied.actor,
        format!("token:{reader_id}"),
        "the refused token, by id"
    );
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
    // Holding tag:read: rotating hands out the rotated token's scopes.
    let reader = app.manager("alice", &["eventLog:read", "tag:read"]).await;
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

async fn reported_leaks_are_revoked_and_the_answer_reveals_nothing(app: TestApp) {
    let reader = app.manager("alice", &["eventLog:read"]).await;
    let (leaked, leaked_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (kept, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(app.is_active(&leaked).await, "cached before the report");
    let unknown = app.format.generate().expose().to_owned();
    let mut tokens = app.tokens().await;

    // No credential; junk, unknown and valid tokens side by side, as found.
    let report = |tokens: Vec<String>| ReportLeakedTokensRequest {
        tokens,
        source: "https://github.com/example/repo/blob/main/.env".to_owned(),
    };
    let with_valid = tokens
        .report_leaked_tokens(report(vec![
            format!("  {leaked}\n"),
            unknown.clone(),
            "AKIAIOSFODNN7EXAMPLE".to_owned(),
        ]))
        .await
        .unwrap()
        .into_inner();
    let without_valid = tokens
        .report_leaked_tokens(report(vec![
            unknown.clone(),
            "x".to_owned(),
            "y".to_owned(),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        with_valid, without_valid,
        "the same answer whatever was valid"
    );
    assert_eq!(with_valid.received, 3);

    assert!(
        !app.is_active(&leaked).await,
        "revoked at once, cache included"
    );
    assert!(app.is_active(&kept).await, "other tokens untouched");
    let trail = events(&app, &reader, 50).await;
    let event = trail
        .iter()
        .find(|event| event.kind == "leak_reported")
        .expect("the revocation is recorded");
    assert_eq!(event.token_id, leaked_record.id);
    assert_eq!(event.actor, "anonymous");
    assert!(
        event.detail.contains("github.com/example/repo"),
        "{}",
        event.detail
    );

    // Reporting it again records that a revoked token is public, revokes nothing.
    tokens
        .report_leaked_tokens(report(vec![leaked.clone()]))
        .await
        .unwrap();
    let trail = events(&app, &reader, 50).await;
    let again = &trail[0];
    assert_eq!(
        (again.kind.as_str(), again.token_id.as_str()),
        ("leak_reported", leaked_record.id.as_str())
    );
    assert!(
        again.detail.ends_with("(already revoked)"),
        "{}",
        again.detail
    );

    let too_many = tokens
        .report_leaked_tokens(report(vec!["x".to_owned(); 1001]))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
}

async fn leak_reports_are_rate_limited_per_peer(app: TestApp) {
    let mut tokens = app.tokens().await;
    let request = || ReportLeakedTokensRequest {
        tokens: vec!["patd_nothing".to_owned()],
        source: String::new(),
    };
    let mut refused = None;
    for sent in 0..100 {
        if let Err(status) = tokens.report_leaked_tokens(request()).await {
            refused = Some((sent, status));
            break;
        }
    }
    let (sent, status) = refused.expect("a flood is refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(sent, 30, "the documented limit, 30 a minute");
}

backend_tests!(
    every_change_and_refusal_is_recorded_for_the_account,
    reuse_and_operator_actions_are_attributed,
    reported_leaks_are_revoked_and_the_answer_reveals_nothing,
    leak_reports_are_rate_limited_per_peer,
    anonymous_refusals_cannot_flood_the_trail,
    one_flooding_token_cannot_starve_the_trail,
);

/// The flood: one low-privilege token's refusals fill only its own
/// budget, so another token's refusal is still recorded; what was skipped is
/// counted in the metrics.
async fn one_flooding_token_cannot_starve_the_trail(app: TestApp) {
    let (flooder, flooder_record) = app.mint(("mallory", "acme"), &["tag:read"], None).await;
    let (victim, victim_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    for _ in 0..200 {
        let err = tokens
            .list_tokens(authed(&flooder, ListTokensRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let err = tokens
        .list_tokens(authed(&victim, ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let refused = refusals(&app).await;
    let denied = |id: &str| {
        let principal = format!("token:{id}");
        refused
            .iter()
            .filter(|event| event.actor.principal == principal)
            .count()
    };
    assert_eq!(
        denied(&flooder_record.id),
        patd::api::refusals::PER_CREDENTIAL_PER_MINUTE as usize
    );
    assert_eq!(
        denied(&victim_record.id),
        1,
        "the other token's refusal is recorded"
    );
    let (scrape, _) = crate::metrics::scrape(&app).await;
    assert_eq!(
        crate::metrics::value(&scrape, "patd_audit_refusals_unrecorded_total", &[]),
        190.0
    );
}

async fn anonymous_refusals_cannot_flood_the_trail(app: TestApp) {
    let mut tokens = app.tokens().await;
    for _ in 0..25 {
        let junk = app.format.generate().expose().to_owned();
        let _ = tokens
            .list_tokens(authed(&junk, ListTokensRequest::default()))
            .await;
    }
    // A refused valid token is still recorded: its budget is not the anonymous one.
    let (reader, _) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    let _ = tokens
        .list_tokens(authed(&reader, ListTokensRequest::default()))
        .await;
    let refused = refusals(&app).await;
    let denied = |actor: &str| {
        refused
            .iter()
            .filter(|event| event.actor.principal.starts_with(actor))
            .count()
    };
    assert_eq!(denied("anonymous"), 10, "10 a minute from one network");
    assert_eq!(denied("token:"), 1);

    // Anonymous refusals age out; nothing else does.
    let before = app
        .store
        .list_events(None, None, 1000)
        .await
        .unwrap()
        .events;
    let pruned = app
        .store
        .prune_anonymous_denials(patd::domain::clock::now_micros() + 1)
        .await
        .unwrap();
    assert_eq!(pruned, 10);
    let left = app
        .store
        .list_events(None, None, 1000)
        .await
        .unwrap()
        .events;
    assert_eq!(left.len(), before.len() - 10);
}
