//! The log: one line per call, and never a secret or an authorization header.

use patd::proto::{
    CreateTokenRequest, GetTokenRequest, IntrospectRequest, ListTokensRequest, RevokeTokenRequest,
};
use tonic::Request;

use crate::backend_tests;
use std::time::Duration;

use patd::serve::ServerSettings;
use patd::store::DatabaseUrl;

use crate::helpers::{Backend, TestApp, authed, logs};

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
                allowed_cidrs: vec![],
                ..Default::default()
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
                client_ip: String::new(),
                ..Default::default()
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
            client_ip: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut raw = Request::new(ListTokensRequest::default());
    raw.metadata_mut()
        .insert("authorization", format!("Token {secret}").parse().unwrap());
    let _ = tokens.list_tokens(raw).await;
    // The HTTP port too: RFC 7662 introspection and forward auth, good and bad.
    for token in [&secret, &never_issued, &manager] {
        let form = format!("token={token}");
        let head =
            "POST /oauth2/introspect HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded";
        crate::oauth::send(app.http_addr, head.to_owned(), form.into_bytes()).await;
        let head = format!("GET /auth?scope=tag:read HTTP/1.1\r\nAuthorization: Bearer {token}");
        crate::oauth::send(app.http_addr, head, Vec::new()).await;
        let head = format!("GET /auth?scope=nope HTTP/1.1\r\nAuthorization: Basic {token}");
        crate::oauth::send(app.http_addr, head, Vec::new()).await;
    }

    let log = logs();
    for secret in [&secret, &never_issued, &manager] {
        // The random part alone, so that no re-encoding or truncation hides it.
        let random = &secret[5..45];
        assert!(!log.contains(random), "a secret reached the log");
    }
    // Not the header's value, and not even its name: no layer logs request headers.
    // (Envoy's service is named Authorization: its call lines do not count.)
    let leaked: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.replace("/envoy.service.auth.v3.Authorization/", "")
                .to_lowercase()
                .contains("authorization")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "the authorization header reached the log: {leaked:#?}"
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

/// Every byte patd keeps at rest, as text: the SQLite files, or every row of every
/// table in the Postgres schema.
async fn everything_stored(backend: Backend, database_url: &DatabaseUrl) -> Vec<u8> {
    match backend {
        Backend::Sqlite => {
            let path = database_url
                .expose()
                .trim_start_matches("sqlite://")
                .to_owned();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(file) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(file);
                }
            }
            bytes
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(database_url.expose()).await.unwrap();
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::TEXT FROM information_schema.tables \
                 WHERE table_schema = current_schema()",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.iter().any(|(name,)| name == "tokens"));
            let mut bytes = Vec::new();
            for (table,) in tables {
                let rows: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT t::TEXT FROM \"{table}\" t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                for (row,) in rows {
                    bytes.extend(row.into_bytes());
                }
            }
            pool.close().await;
            bytes
        }
    }
}

fn quick_flush() -> ServerSettings {
    ServerSettings {
        last_used_interval: Duration::from_millis(200),
        ..TestApp::settings()
    }
}

async fn no_secret_is_stored_anywhere(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let mut secrets = vec![manager.clone()];
    let mut ids = Vec::new();
    for name in ["kept", "revoked", "deleted"] {
        let request = CreateTokenRequest {
            name: name.to_owned(),
            scopes: vec!["tag:read".to_owned()],
            expires_at: None,
            allowed_cidrs: vec![],
            ..Default::default()
        };
        let created = tokens
            .create_token(authed(&manager, request))
            .await
            .unwrap()
            .into_inner();
        assert!(app.is_active(&created.secret).await);
        secrets.push(created.secret);
        ids.push(created.token.unwrap().id);
    }
    tokens
        .revoke_token(authed(&manager, RevokeTokenRequest { id: ids[1].clone() }))
        .await
        .unwrap();
    let delete = patd::proto::DeleteTokenRequest { id: ids[2].clone() };
    tokens.delete_token(authed(&manager, delete)).await.unwrap();
    // Let the write-behind flush, so that every kind of write patd makes happened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = everything_stored(app.backend, &app.database_url).await;
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains(&ids[0]), "the scan sees the stored tokens");
    for secret in &secrets {
        let random = &secret[5..45];
        assert!(!text.contains(random), "a secret is stored in plaintext");
    }
}

backend_tests!(
    no_secret_reaches_the_log,
    no_secret_is_stored_anywhere with quick_flush,
);
