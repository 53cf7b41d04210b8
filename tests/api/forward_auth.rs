//! Forward auth (`/auth` on the HTTP port), as nginx `auth_request`, Caddy
//! `forward_auth` and Traefik `ForwardAuth` call it: the original request's
//! headers, patd's answer by status.

use patd::domain::cidr::CidrList;
use patd::serve::ServerSettings;

use crate::backend_tests;
use crate::helpers::{TestApp, with_wrong_checksum};
use crate::oauth::{Answer, send};

async fn ask(app: &TestApp, request_line: &str, headers: &[String]) -> Answer {
    let mut head = request_line.to_owned();
    for line in headers {
        head.push_str("\r\n");
        head.push_str(line);
    }
    send(app.http_addr, head, Vec::new()).await
}

fn bearer(secret: &str) -> String {
    format!("Authorization: Bearer {secret}")
}

/// Settings where the tests' own address, 127.0.0.1, is a trusted proxy.
pub fn behind_trusted_proxy() -> ServerSettings {
    ServerSettings {
        trusted_proxies: CidrList::parse(&["127.0.0.0/8"]).unwrap(),
        ..TestApp::settings()
    }
}

async fn valid_tokens_pass_with_their_identity(app: TestApp) {
    let (secret, record) = app
        .mint(("alice", "acme"), &["license:read", "tag:read"], None)
        .await;
    for line in [
        "GET /auth?scope=license:read HTTP/1.1",
        "POST /auth?scope=license:read+tag:read HTTP/1.1",
        "PUT /auth/any/sub/path HTTP/1.1",
        "HEAD /auth HTTP/1.1",
    ] {
        let answer = ask(&app, line, &[bearer(&secret)]).await;
        assert_eq!(answer.status, 200, "{line}: {}", answer.body);
        assert_eq!(answer.header("x-patd-subject"), Some("alice"));
        assert_eq!(answer.header("x-patd-account"), Some("acme"));
        assert_eq!(answer.header("x-patd-token-id"), Some(record.id.as_str()));
        assert_eq!(
            answer.header("x-patd-scopes"),
            Some("license:read tag:read")
        );
        assert_eq!(answer.body, "");
    }
}

async fn refusals_say_why_in_the_challenge_only(app: TestApp) {
    let (valid, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let soon = patd::domain::clock::now_micros() + 100_000;
    let (expired, _) = app.mint(("alice", "acme"), &["tag:read"], Some(soon)).await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let line = "GET /auth?scope=tag:read HTTP/1.1";
    let invalid_token = r#"Bearer realm="patd", error="invalid_token""#;
    let invalid_request = r#"Bearer realm="patd", error="invalid_request""#;
    let mut bodies = Vec::new();
    for (headers, challenge) in [
        (vec![bearer(&with_wrong_checksum(&valid))], invalid_token),
        (vec![bearer(&revoked)], invalid_token),
        (vec![bearer(&expired)], invalid_token),
        (vec![bearer("patd_short")], invalid_token),
        (vec![], invalid_request),
        (
            vec![format!("Authorization: Basic {valid}")],
            invalid_request,
        ),
        (vec![bearer(&valid), bearer(&valid)], invalid_request),
    ] {
        let answer = ask(&app, line, &headers).await;
        assert_eq!(answer.status, 401, "{headers:?}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(challenge),
            "{headers:?}"
        );
        assert!(answer.header("x-patd-subject").is_none());
        bodies.push(answer.body);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "one body for every 401: {bodies:?}");

    let (under, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let answer = ask(
        &app,
        "GET /auth?scope=license:read+tag:read HTTP/1.1",
        &[bearer(&under)],
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer realm="patd", error="insufficient_scope", scope="license:read tag:read""#)
    );
    assert!(answer.body.contains("license:read"));
    let unknown = ask(
        &app,
        "GET /auth?scope=licence:reed HTTP/1.1",
        &[bearer(&valid)],
    )
    .await;
    assert_eq!(
        unknown.status, 400,
        "a misspelt required scope fails closed, loudly"
    );
    assert!(unknown.body.contains("licence:reed"));
}

/// Not a trusted proxy (the default): what the request says about its
/// address changes nothing, and a scope header fails closed.
async fn an_untrusted_peer_cannot_pick_its_address_or_scopes(app: TestApp) {
    let (office, _) = app
        .mint_limited(("alice", "acme"), &["tag:read"], None, &["10.0.0.0/8"])
        .await;
    for forged in ["X-Forwarded-For: 10.1.2.3", "X-Real-IP: 10.1.2.3"] {
        let answer = ask(
            &app,
            "GET /auth HTTP/1.1",
            &[bearer(&office), forged.to_owned()],
        )
        .await;
        assert_eq!(answer.status, 401, "{forged}: the peer is 127.0.0.1");
    }
    let (reader, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let header = "X-Patd-Required-Scopes: license:write".to_owned();
    let answer = ask(
        &app,
        "GET /auth?scope=tag:read HTTP/1.1",
        &[bearer(&reader), header],
    )
    .await;
    assert_eq!(
        answer.status, 400,
        "a scope header from an untrusted peer fails closed, never ignored"
    );
    assert!(answer.body.contains("trusted_proxies"), "{}", answer.body);
}

async fn a_trusted_proxy_names_the_client_and_the_scopes(app: TestApp) {
    let (office, _) = app
        .mint_limited(("alice", "acme"), &["tag:read"], None, &["10.0.0.0/8"])
        .await;
    for (forwarded, status) in [
        ("X-Forwarded-For: 10.1.2.3", 200),
        // The rightmost address that is not a trusted proxy is the client.
        ("X-Forwarded-For: 192.0.2.9, 10.1.2.3, 127.0.0.2", 200),
        ("X-Forwarded-For: 10.1.2.3, 192.0.2.9", 401),
        ("X-Real-IP: 10.4.4.4", 200),
        ("X-Forwarded-For: not-an-address", 401),
    ] {
        let answer = ask(
            &app,
            "GET /auth HTTP/1.1",
            &[bearer(&office), forwarded.to_owned()],
        )
        .await;
        assert_eq!(answer.status, status, "{forwarded}");
    }
    let (reader, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let header = "X-Patd-Required-Scopes: license:write".to_owned();
    let answer = ask(
        &app,
        "GET /auth?scope=tag:read HTTP/1.1",
        &[bearer(&reader), header],
    )
    .await;
    assert_eq!(
        answer.status, 403,
        "a trusted proxy's scope header adds to the query's"
    );
}

backend_tests!(
    valid_tokens_pass_with_their_identity,
    refusals_say_why_in_the_challenge_only,
    an_untrusted_peer_cannot_pick_its_address_or_scopes,
    a_trusted_proxy_names_the_client_and_the_scopes with behind_trusted_proxy,
);
