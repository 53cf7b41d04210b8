//! The log: one line per call, and never a secret or an authorization header.

use patd::proto::{
    CreateTokenRequest, GetTokenRequest, IntrospectRequest, ListTokensRequest, RevokeTokenRequest,
};
use tonic::Request;

use crate::backend_tests;
use crate::helpers::{TestApp, authed, logs};

async fn no_secret_reaches_the_log(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let mut introspection = app.introspection().await;
    let created = tokens
        .create_token(authed(
            &manager,
            CreateTokenRequest {
                name: "log probe".to_owned(),
                scopes: vec!["tag:read".to_owned()],
                expires_at: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.unwrap().id;
    let secret = created.secret;
    let never_issued = app.format.generate().expose().to_owned();

    tokens
        .get_token(authed(&manager, GetTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    tokens
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap();
    for token in [&secret, &never_issued, &manager] {
        introspection
            .introspect(IntrospectRequest {
                token: token.clone(),
                required_scopes: vec!["tag:read".to_owned()],
            })
            .await
            .unwrap();
    }
    // Failed authentications, including with a token that is not ours and a
    // token used as the wrong credential.
    let _ = tokens
        .list_tokens(authed(&never_issued, ListTokensRequest::default()))
        .await;
    let _ = tokens
        .list_tokens(authed(&secret, ListTokensRequest::default()))
        .await;
    tokens
        .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    introspection
        .introspect(IntrospectRequest {
            token: secret.clone(),
            required_scopes: vec![],
        })
        .await
        .unwrap();
    let mut raw = Request::new(ListTokensRequest::default());
    raw.metadata_mut()
        .insert("authorization", format!("Token {secret}").parse().unwrap());
    let _ = tokens.list_tokens(raw).await;

    let log = logs();
    for secret in [&secret, &never_issued, &manager] {
        // The random part alone, so that no re-encoding or truncation hides it.
        let random = &secret[5..45];
        assert!(!log.contains(random), "a secret reached the log");
    }
    // Not the header's value, and not even its name: no layer logs request headers.
    assert!(
        !log.to_lowercase().contains("authorization"),
        "the authorization header reached the log"
    );
    assert!(!log.contains("Bearer patd_"));

    // One line per call, with method, status code and latency.
    let line = log
        .lines()
        .find(|line| {
            line.contains("method=\"/pat.v1.TokenService/RevokeToken\"")
                || line.contains("method=/pat.v1.TokenService/RevokeToken")
        })
        .expect("a call line for RevokeToken");
    assert!(
        line.contains("code=Ok") && line.contains("latency_us="),
        "{line}"
    );
    assert!(log.lines().any(
        |l| l.contains("/pat.v1.TokenService/ListTokens") && l.contains("code=Unauthenticated")
    ));
    assert!(log.lines().any(|l| l.contains("/pat.v1.IntrospectionService/Introspect") && l.contains("code=Ok")));
}

backend_tests!(no_secret_reaches_the_log);
