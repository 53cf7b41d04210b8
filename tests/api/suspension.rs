//! Suspend and resume, and offboarding (RevokeAllTokens), through the real
//! server on both backends: a suspended token is inactive on every path at
//! once, resuming never hands back more than the caller holds, and
//! offboarding revokes every token of one owner and nobody else's.

use patd::proto::{
    ListTokensRequest, ResumeTokenRequest, RevokeAllTokensRequest, SuspendTokenRequest, Token,
    TokenState,
};
use tonic::Code;

use crate::audit::events;
use crate::backend_tests;
use crate::ext_authz::{check, check_request, denied};
use crate::helpers::{TestApp, authed};
use crate::oauth::send;
use crate::tls::{portal_credential, portal_trusted_settings};

async fn suspend(app: &TestApp, caller: &str, id: &str) -> Result<Token, tonic::Status> {
    let request = authed(caller, SuspendTokenRequest { id: id.to_owned() });
    let answer = app.tokens().await.suspend_token(request).await;
    answer.map(tonic::Response::into_inner)
}

async fn resume(app: &TestApp, caller: &str, id: &str) -> Result<Token, tonic::Status> {
    let request = authed(caller, ResumeTokenRequest { id: id.to_owned() });
    let answer = app.tokens().await.resume_token(request).await;
    answer.map(tonic::Response::into_inner)
}

async fn revoke_all(
    app: &TestApp,
    caller: &str,
    (subject, account): (&str, &str),
) -> Result<i32, tonic::Status> {
    let request = RevokeAllTokensRequest {
        subject: subject.to_owned(),
        account: account.to_owned(),
    };
    let answer = app
        .tokens()
        .await
        .revoke_all_tokens(authed(caller, request))
        .await;
    answer.map(|answer| answer.into_inner().revoked_count)
}

/// What every path says of `secret`: Introspect, Check, HTTP introspection,
/// forward auth. All four must agree.
async fn active_everywhere(app: &TestApp, secret: &str) -> bool {
    let introspect = app.is_active(secret).await;
    let bearer = format!("Bearer {secret}");
    let checked = check(app, check_request(Some(&bearer), None)).await;
    let check_allows = checked.status.as_ref().unwrap().code == 0;
    if !check_allows {
        assert_eq!(denied(&checked).1, 401, "an inactive token is a 401");
    }
    let form = format!("token={secret}");
    let http = send(
        app.http_addr,
        "POST /oauth2/introspect HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded"
            .into(),
        form.into_bytes(),
    )
    .await;
    let http_active = http.body.contains(r#""active":true"#);
    let forward = send(
        app.http_addr,
        format!("GET /auth HTTP/1.1\r\nAuthorization: Bearer {secret}"),
        vec![],
    )
    .await;
    let forward_allows = forward.status == 200;
    assert_eq!(
        [check_allows, http_active, forward_allows],
        [introspect; 3],
        "every path agrees with Introspect ({}; {})",
        http.body,
        forward.status
    );
    introspect
}

async fn a_suspended_token_is_inactive_everywhere_until_resumed(app: TestApp) {
    let manager = app.manager("alice", &["tag:read", "eventLog:read"]).await;
    let (secret, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert!(active_everywhere(&app, &secret).await, "cached as active");

    let suspended = suspend(&app, &manager, &record.id).await.unwrap();
    assert_eq!(suspended.state(), TokenState::Suspended);
    let since = suspended.suspended_at.expect("suspended_at is set");
    // At once, on every path: no wait for a poll.
    assert!(!active_everywhere(&app, &secret).await);
    let again = suspend(&app, &manager, &record.id).await.unwrap();
    assert_eq!(
        again.suspended_at,
        Some(since),
        "idempotent: the first time stands"
    );

    let listed = app
        .tokens()
        .await
        .list_tokens(authed(
            &manager,
            ListTokensRequest {
                state: TokenState::Suspended.into(),
                ..ListTokensRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [record.id.as_str()], "only the suspended token");

    let (scrape, _) = crate::metrics::scrape(&app).await;
    let counted = |metric, label, value| crate::metrics::value(&scrape, metric, &[(label, value)]);
    assert_eq!(counted("patd_tokens", "state", "suspended"), 1.0);
    assert!(counted("patd_introspect_total", "outcome", "suspended") >= 2.0);
    assert!(counted("patd_ext_authz_checks_total", "decision", "suspended") >= 2.0);

    let resumed = resume(&app, &manager, &record.id).await.unwrap();
    assert_eq!(resumed.state(), TokenState::Active);
    assert_eq!(resumed.suspended_at, None);
    assert!(active_everywhere(&app, &secret).await);
    resume(&app, &manager, &record.id).await.unwrap();

    let kinds: Vec<String> = events(&app, &manager, 100)
        .await
        .into_iter()
        .filter(|event| event.token_id == record.id)
        .map(|event| format!("{} by {}", event.kind, event.actor))
        .collect();
    let actor = kinds[0].split(" by ").nth(1).unwrap().to_owned();
    assert!(actor.starts_with("token:"), "{kinds:?}");
    assert_eq!(
        kinds,
        [
            format!("resumed by {actor}"),
            format!("suspended by {actor}"),
            "created by operator".to_owned()
        ],
        "one event per change, none for repeats"
    );
}

async fn a_suspended_token_cannot_manage_or_resume_itself(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    // A token may suspend itself (to stop a leak at once)...
    let own_id = {
        let mut tokens = app.tokens().await;
        let me = tokens
            .get_self(authed(&manager, patd::proto::GetSelfRequest {}))
            .await
            .unwrap()
            .into_inner();
        me.id
    };
    suspend(&app, &manager, &own_id).await.unwrap();
    // ...and is then no credential at all, not even to resume itself.
    let refused = resume(&app, &manager, &own_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("suspended"), "{refused:?}");
    let refused = app.create_tag_reader(&manager, "after").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

async fn resuming_never_hands_back_more_than_the_caller_holds(app: TestApp) {
    // May manage tokens, holds no tag:read.
    let narrow = app.manager("alice", &[]).await;
    let wide = app.manager("alice", &["tag:read", "license:read"]).await;
    let (secret, record) = app
        .mint(("alice", "acme"), &["tag:read", "license:read"], None)
        .await;
    // Stopping a credential is always allowed to its owner's managers.
    suspend(&app, &narrow, &record.id).await.unwrap();
    let refused = resume(&app, &narrow, &record.id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains("lacks scopes: license:read, tag:read"),
        "{}",
        refused.message()
    );
    assert!(!app.is_active(&secret).await, "still suspended");
    // A caller that expires cannot revive a token that never does.
    let (expiring, _) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write", "tag:read", "license:read"],
            Some(patd::domain::clock::now_micros() + 3_600_000_000),
        )
        .await;
    let refused = resume(&app, &expiring, &record.id).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("expire no later"), "{refused:?}");
    resume(&app, &wide, &record.id).await.unwrap();
    assert!(app.is_active(&secret).await);

    // Another owner's token reads as missing.
    let (_, bobs) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    for refused in [
        suspend(&app, &wide, &bobs.id).await.unwrap_err(),
        resume(&app, &wide, &bobs.id).await.unwrap_err(),
        suspend(&app, &wide, "").await.unwrap_err(),
    ] {
        assert!(
            matches!(refused.code(), Code::NotFound | Code::InvalidArgument),
            "{refused:?}"
        );
    }
}

async fn resuming_does_not_revive_a_revoked_or_expired_token(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let (revoked, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    suspend(&app, &manager, &record.id).await.unwrap();
    let mut tokens = app.tokens().await;
    let revoke = patd::proto::RevokeTokenRequest {
        id: record.id.clone(),
    };
    tokens.revoke_token(authed(&manager, revoke)).await.unwrap();
    let after = resume(&app, &manager, &record.id).await.unwrap();
    assert_eq!(after.state(), TokenState::Revoked);
    assert!(!app.is_active(&revoked).await);

    let soon = patd::domain::clock::now_micros() + 1_500_000;
    let (expiring, record) = app.mint(("alice", "acme"), &["tag:read"], Some(soon)).await;
    suspend(&app, &manager, &record.id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
    let after = resume(&app, &manager, &record.id).await.unwrap();
    assert_eq!(after.state(), TokenState::Expired, "expiry ran on");
    assert!(!app.is_active(&expiring).await);
}

async fn offboarding_revokes_every_token_of_one_owner_only(app: TestApp) {
    let alice = app.manager("alice", &["tag:read", "eventLog:read"]).await;
    let mut hers = Vec::new();
    for _ in 0..20 {
        hers.push(app.mint(("alice", "acme"), &["tag:read"], None).await.0);
    }
    let (bobs, _) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    let (other_account, _) = app.mint(("alice", "globex"), &["tag:read"], None).await;
    for secret in &hers {
        assert!(app.is_active(secret).await, "cached");
    }

    // A user token names its own owner only.
    let refused = revoke_all(&app, &alice, ("bob", "acme")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(app.is_active(&bobs).await);
    let refused = revoke_all(&app, &alice, ("", "acme")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let count = revoke_all(&app, &alice, ("alice", "acme")).await.unwrap();
    assert_eq!(count, 21, "her 20 tokens and the caller itself");
    for secret in hers.iter().chain([&alice]) {
        assert!(!active_everywhere(&app, secret).await, "at once");
    }
    assert!(app.is_active(&bobs).await, "nobody else's");
    assert!(app.is_active(&other_account).await, "not the same owner");

    // The caller revoked itself: the trail is read by someone still active.
    let reader = app.manager("alice", &["eventLog:read"]).await;
    let trail = events(&app, &reader, 1000).await;
    let revoked = trail
        .iter()
        .filter(|event| event.kind == "revoked" && event.detail == "offboarding")
        .count();
    assert_eq!(revoked, 21, "one event per token");
    let summary: Vec<_> = trail.iter().filter(|e| e.kind == "revoked_all").collect();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (summary[0].subject.as_str(), summary[0].detail.as_str()),
        ("alice", "revoked 21 tokens")
    );
    // Again: nothing left to revoke (the reader is the one active token).
    assert_eq!(
        revoke_all(&app, &reader, ("alice", "acme")).await.unwrap(),
        1
    );
}

async fn trusted_callers_offboard_anyone(app: TestApp) {
    let (bobs, _) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    let (carols, _) = app.mint(("carol", "acme"), &["tag:read"], None).await;
    let count = revoke_all(&app, portal_credential(), ("bob", "acme"))
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert!(!app.is_active(&bobs).await);
    assert!(app.is_active(&carols).await);
    let nobody = revoke_all(&app, portal_credential(), ("nobody", "acme"))
        .await
        .unwrap();
    assert_eq!(nobody, 0);
    let refused = revoke_all(&app, "patd_junk", ("carol", "acme"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(app.is_active(&carols).await);
}

backend_tests!(
    a_suspended_token_is_inactive_everywhere_until_resumed,
    a_suspended_token_cannot_manage_or_resume_itself,
    resuming_never_hands_back_more_than_the_caller_holds,
    resuming_does_not_revive_a_revoked_or_expired_token,
    offboarding_revokes_every_token_of_one_owner_only,
    trusted_callers_offboard_anyone with portal_trusted_settings,
);
