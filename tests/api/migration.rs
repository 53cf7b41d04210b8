//! Migrations are forward-only and keep every token working: a database at
//! the schema before the newest migration, with tokens in every state written
//! as that version wrote them, is migrated by a new server, and every token
//! introspects as it did.

use patd::domain::clock;
use patd::domain::token::{SecretHash, TokenFormat, generate_id};
use patd::proto::IntrospectRequest;

use crate::helpers::{Backend, TestApp};

/// The first migration of the newest schema: everything before it is the
/// previous version's.
const NEWEST: &str = "20261203000001";

/// A token as the previous version stored it, and what Introspect must say.
struct OldToken {
    secret: String,
    id: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    allowed_cidrs: &'static str,
    active: bool,
}

async fn previous_schema_with_tokens(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = TestApp::fresh_database(backend, &dir).await else {
        return;
    };
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let previous = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < NEWEST {
            std::fs::copy(entry.path(), previous.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied >= 3, "the previous version's migrations");
    let migrator = sqlx::migrate::Migrator::new(previous.path()).await.unwrap();

    let format = TokenFormat::default();
    let now = clock::now_micros();
    let hour = 3_600_000_000;
    let old: Vec<OldToken> = [
        (None, None, "", true),
        (Some(now + hour), None, "", true),
        (Some(now - hour), None, "", false),
        (None, Some(now - hour), "", false),
        (None, None, "127.0.0.0/8", true),
    ]
    .into_iter()
    .map(|(expires_at, revoked_at, allowed_cidrs, active)| OldToken {
        secret: format.generate().expose().to_owned(),
        id: generate_id(),
        expires_at,
        revoked_at,
        allowed_cidrs,
        active,
    })
    .collect();
    const INSERT: &str = "INSERT INTO tokens (id, secret_hash, name, subject, account, scopes, \
         hint, created_at, expires_at, revoked_at, allowed_cidrs) \
         VALUES ($1, $2, 'old', 'alice', 'acme', 'tag:read license:read', 'h', $3, $4, $5, $6)";
    macro_rules! write_old {
        ($pool:expr) => {{
            let pool = $pool;
            migrator.run(&pool).await.unwrap();
            for token in &old {
                sqlx::query(INSERT)
                    .bind(&token.id)
                    .bind(SecretHash::of(&token.secret).0.to_vec())
                    .bind(now - 2 * hour)
                    .bind(token.expires_at)
                    .bind(token.revoked_at)
                    .bind(token.allowed_cidrs)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }};
    }
    match backend {
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = url.expose().parse().unwrap();
            write_old!(
                sqlx::SqlitePool::connect_with(options.create_if_missing(true))
                    .await
                    .unwrap()
            )
        }
        Backend::Postgres => write_old!(sqlx::PgPool::connect(url.expose()).await.unwrap()),
    }

    // A new server migrates the old database forward and answers as before.
    let store = TestApp::connect_store(&url).await;
    let app = TestApp::spawn_with_store(backend, store, url, TestApp::settings()).await;
    for token in &old {
        let request = IntrospectRequest {
            token: token.secret.clone(),
            required_scopes: vec![],
            client_ip: "127.0.0.1".to_owned(),
            ..Default::default()
        };
        let answer = app
            .introspection()
            .await
            .introspect(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.active, token.active, "{}", token.id);
        if token.active {
            assert_eq!(answer.token_id, token.id);
            assert_eq!(answer.scopes, ["license:read", "tag:read"]);
            assert_eq!(
                (answer.subject.as_str(), answer.name.as_str()),
                ("alice", "old")
            );
            assert_eq!(
                answer.expires_at.map(|at| at.seconds),
                token.expires_at.map(|at| at.div_euclid(1_000_000))
            );
            assert!(answer.resources.is_empty(), "an old token is unrestricted");
        }
    }
    // And the old tokens take part in what the new schema added.
    let (manager, _) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write", "tag:read", "license:read"],
            None,
        )
        .await;
    let mut tokens = app.tokens().await;
    let suspend = patd::proto::SuspendTokenRequest {
        id: old[0].id.clone(),
    };
    tokens
        .suspend_token(crate::helpers::authed(&manager, suspend))
        .await
        .unwrap();
    assert!(!app.is_active(&old[0].secret).await);
    // Labelled after the upgrade, and found by its labels.
    let relabel = patd::proto::UpdateTokenRequest {
        id: old[1].id.clone(),
        token: Some(patd::proto::Token {
            labels: [("era".to_owned(), "old".to_owned())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels".into()],
        }),
    };
    tokens
        .update_token(crate::helpers::authed(&manager, relabel))
        .await
        .unwrap();
    let list = patd::proto::ListTokensRequest {
        label_selector: "era=old".into(),
        ..Default::default()
    };
    let found = tokens
        .list_tokens(crate::helpers::authed(&manager, list))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let ids: Vec<&str> = found.iter().map(|token| token.id.as_str()).collect();
    assert_eq!(ids, [old[1].id.as_str()]);
}

#[tokio::test]
async fn sqlite_tokens_of_the_previous_schema_introspect_as_before() {
    previous_schema_with_tokens(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_tokens_of_the_previous_schema_introspect_as_before() {
    previous_schema_with_tokens(Backend::Postgres).await;
}
