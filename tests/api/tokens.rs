//! TokenService through the real server: create, get, list, revoke, delete,
//! scopes, and who may do what.

use std::collections::HashSet;

use patd::domain::clock;
use patd::proto::{
    self, CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, ListScopesRequest,
    ListTokensRequest, ListTokensResponse, RevokeTokenRequest, TokenState,
};
use prost::Message;
use tonic::{Code, Request};

use crate::backend_tests;
use crate::helpers::{TestApp, authed, create, with_wrong_checksum};

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
}

async fn create_returns_the_secret_once_and_the_token(app: TestApp) {
    let manager = app
        .manager("alice", &["license:read", "license:write"])
        .await;
    let mut client = app.tokens().await;
    let in_a_day = clock::now_micros() + 86_400_000_000;
    let request = CreateTokenRequest {
        expires_at: Some(clock::to_timestamp(in_a_day)),
        ..create("  deploy bot  ", &["license:write", "license:read"])
    };
    let created = client
        .create_token(authed(&manager, request))
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone().unwrap();
    assert!(
        app.format.parse(&created.secret).is_some(),
        "secret has the documented format"
    );
    assert_eq!(token.name, "deploy bot");
    assert_eq!(
        (token.subject.as_str(), token.account.as_str()),
        ("alice", "acme")
    );
    assert_eq!(token.scopes, vec!["license:read", "license:write"]);
    assert_eq!(token.state(), TokenState::Active);
    assert_eq!(token.expires_at, Some(clock::to_timestamp(in_a_day)));
    assert!(token.revoked_at.is_none());
    assert_eq!(
        token.hint,
        format!("patd_...{}", &created.secret[created.secret.len() - 4..])
    );
    let created_at = clock::from_timestamp(&token.created_at.unwrap()).unwrap();
    assert!((clock::now_micros() - created_at).abs() < 60_000_000);

    // The secret is never returned again: not by Get, not by List.
    let fetched = client
        .get_token(authed(
            &manager,
            GetTokenRequest {
                id: token.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, token);
    let listed = client
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens.contains(&token));
    for bytes in [fetched.encode_to_vec(), listed.encode_to_vec()] {
        let random_part = &created.secret.as_bytes()[5..40];
        assert!(!bytes.windows(random_part.len()).any(|w| w == random_part));
    }

    // And it works: the new token may introspect as what it is.
    let introspected = app.introspect(&created.secret, &[]).await;
    assert!(introspected.active);
    assert_eq!(introspected.token_id, token.id);
}

async fn no_expiry_means_expires_at_unset(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let created = app
        .tokens()
        .await
        .create_token(authed(&manager, create("forever", &["tag:read"])))
        .await
        .unwrap()
        .into_inner();
    assert!(created.token.unwrap().expires_at.is_none());
}

async fn invalid_create_requests_are_invalid_argument(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut client = app.tokens().await;
    let ts = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let cases = [
        (create("", &["tag:read"]), "name is required"),
        (create("   ", &["tag:read"]), "name is required"),
        (create(&"n".repeat(101), &["tag:read"]), "at most 100"),
        (create(&"n".repeat(10_000), &["tag:read"]), "at most 100"),
        (
            create("line\nbreak", &["tag:read"]),
            "must not contain control",
        ),
        // Trojan Source: a right-to-left override reverses what follows it.
        (create("invoice\u{202e}fdp.exe", &["tag:read"]), "U+202E"),
        (create("a\u{2028}b", &["tag:read"]), "U+2028"),
        (create("\u{200b}\u{200b}", &["tag:read"]), "U+200B"),
        (create("\u{3164}", &["tag:read"]), "blank"),
        (create("nul\0", &["tag:read"]), "U+0000"),
        (create("ci", &[]), "at least one scope"),
        (
            create("ci", &["tag:read", "tag:reed", "nope"]),
            "unknown scope \"tag:reed\", (a name without ':')",
        ),
        (
            CreateTokenRequest {
                expires_at: ts(1_000),
                ..create("ci", &["tag:read"])
            },
            "not in the future",
        ),
        (
            CreateTokenRequest {
                expires_at: ts(-5),
                ..create("ci", &["tag:read"])
            },
            "expires_at must be between",
        ),
        (
            CreateTokenRequest {
                expires_at: ts(i64::MAX),
                ..create("ci", &["tag:read"])
            },
            "expires_at must be between",
        ),
    ];
    for (request, needle) in cases {
        assert_status(
            client.create_token(authed(&manager, request)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let listed = client
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap();
    assert_eq!(
        listed.into_inner().tokens.len(),
        1,
        "nothing was stored by a refused create"
    );
}

async fn new_tokens_cannot_exceed_the_callers_scopes(app: TestApp) {
    let manager = app.manager("alice", &["license:read"]).await;
    let mut client = app.tokens().await;
    assert_status(
        client
            .create_token(authed(
                &manager,
                create("ci", &["license:read", "license:write", "user:write"]),
            ))
            .await,
        Code::PermissionDenied,
        "license:write, user:write",
    );
    let subset = client
        .create_token(authed(&manager, create("ci", &["license:read"])))
        .await
        .unwrap();
    assert_eq!(
        subset.into_inner().token.unwrap().scopes,
        vec!["license:read"]
    );
    // A token may hand on the token-management scope it holds itself.
    client
        .create_token(authed(
            &manager,
            create("ci", &["personalAccessToken:write"]),
        ))
        .await
        .unwrap();
}

async fn misspelt_alias_is_stored_as_the_canonical_scope(app: TestApp) {
    let manager = app.manager("alice", &["licenseTemplate:write"]).await;
    let created = app
        .tokens()
        .await
        .create_token(authed(&manager, create("ci", &["licenseTemaplate:write"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.token.unwrap().scopes, vec!["licenseTemplate:write"]);
    // A caller holding only the alias's scope may grant it under either name.
    let alias_holder = app.manager("bob", &["licenseTemaplate:write"]).await;
    app.tokens()
        .await
        .create_token(authed(
            &alias_holder,
            create("ci", &["licenseTemplate:write"]),
        ))
        .await
        .unwrap();
}

async fn list_scopes_is_the_catalog_and_needs_no_credential(app: TestApp) {
    let scopes = app
        .tokens()
        .await
        .list_scopes(Request::new(ListScopesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .scopes;
    assert_eq!(scopes.len(), 29);
    let names: HashSet<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains("licenseTemplate:write"));
    assert!(!names.contains("licenseTemaplate:write"));
    let pat = scopes
        .iter()
        .find(|s| s.name == "personalAccessToken:write")
        .unwrap();
    assert_eq!(
        pat.description,
        "Create, revoke and delete personal access tokens."
    );
}

/// Get, Revoke and Delete of `id` as the holder of `secret`, each expected to fail
/// with `code` and a message containing `needle`.
async fn assert_id_rpcs_fail(app: &TestApp, secret: &str, id: &str, code: Code, needle: &str) {
    let mut client = app.tokens().await;
    let id = id.to_owned();
    let get = client
        .get_token(authed(secret, GetTokenRequest { id: id.clone() }))
        .await;
    assert_status(get, code, needle);
    let revoke = client
        .revoke_token(authed(secret, RevokeTokenRequest { id: id.clone() }))
        .await;
    assert_status(revoke, code, needle);
    let delete = client
        .delete_token(authed(secret, DeleteTokenRequest { id }))
        .await;
    assert_status(delete, code, needle);
}

/// Every authenticated RPC with the given metadata value (None: no header).
async fn each_rpc_status(app: &TestApp, authorization: Option<&str>) -> Vec<tonic::Status> {
    let mut client = app.tokens().await;
    fn with<T>(authorization: Option<&str>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }
    let id = patd::domain::token::generate_id();
    vec![
        client
            .create_token(with(authorization, create("ci", &["tag:read"])))
            .await
            .unwrap_err(),
        client
            .get_token(with(authorization, GetTokenRequest { id: id.clone() }))
            .await
            .unwrap_err(),
        client
            .list_tokens(with(authorization, ListTokensRequest::default()))
            .await
            .unwrap_err(),
        client
            .revoke_token(with(authorization, RevokeTokenRequest { id: id.clone() }))
            .await
            .unwrap_err(),
        client
            .delete_token(with(authorization, DeleteTokenRequest { id }))
            .await
            .unwrap_err(),
    ]
}

async fn bad_credentials_are_unauthenticated_on_every_rpc(app: TestApp) {
    let (expiring, _) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write"],
            Some(clock::now_micros() + 1_000_000),
        )
        .await;
    let (revoked, _) = app
        .mint_revoked(("alice", "acme"), &["personalAccessToken:write"])
        .await;
    let unknown = app.format.generate().expose().to_owned();
    let valid = app.manager("alice", &[]).await;
    let wrong_checksum = with_wrong_checksum(&valid);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing authorization"),
        (Some(format!("Basic {valid}")), "Bearer scheme"),
        (Some(valid.clone()), "Bearer scheme"),
        (Some("Bearer ".to_owned()), "empty"),
        (Some(format!("Bearer {wrong_checksum}")), "malformed"),
        (Some("Bearer not-a-token".to_owned()), "malformed"),
        (Some(format!("Bearer {unknown}")), "not recognised"),
        (Some(format!("Bearer {expiring}")), "expired"),
        (Some(format!("Bearer {revoked}")), "revoked"),
    ];
    for (authorization, needle) in cases {
        for status in each_rpc_status(&app, authorization.as_deref()).await {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{authorization:?}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{authorization:?}: {}",
                status.message()
            );
            for secret in [&valid, &expiring, &revoked, &unknown] {
                assert!(
                    !status.message().contains(secret.as_str()),
                    "message echoes a secret"
                );
            }
        }
    }
    // The lower-case scheme is accepted (RFC 6750 schemes are case-insensitive).
    let listed = app
        .tokens()
        .await
        .list_tokens({
            let mut request = Request::new(ListTokensRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("bearer {valid}").parse().unwrap());
            request
        })
        .await;
    assert!(listed.is_ok(), "{listed:?}");
}

async fn managing_tokens_needs_the_management_scope(app: TestApp) {
    let (reader, _) = app
        .mint(("alice", "acme"), &["license:read", "license:write"], None)
        .await;
    for status in each_rpc_status(&app, Some(&format!("Bearer {reader}"))).await {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("personalAccessToken:write"),
            "{}",
            status.message()
        );
    }
}

async fn callers_see_only_their_own_tokens(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let bob = app.manager("bob", &["tag:read"]).await;
    let (alice_elsewhere, _) = app
        .mint(
            ("alice", "globex"),
            &["personalAccessToken:write", "tag:read"],
            None,
        )
        .await;
    let mut client = app.tokens().await;
    let alices = client
        .create_token(authed(&alice, create("alice's", &["tag:read"])))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();

    for intruder in [&bob, &alice_elsewhere] {
        let id = alices.id.clone();
        assert_id_rpcs_fail(&app, intruder, &id, Code::NotFound, &id).await;
        let listed = client
            .list_tokens(authed(intruder, ListTokensRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.tokens.iter().all(|t| t.id != id));
        assert_eq!(listed.tokens.len(), 1, "only the intruder's own token");
    }
    // An unknown id reads exactly like someone else's: nothing is revealed.
    let unknown = patd::domain::token::generate_id();
    let status = client
        .get_token(authed(
            &bob,
            GetTokenRequest {
                id: unknown.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.message(), format!("no token with id {unknown}"));

    let still = client
        .get_token(authed(
            &alice,
            GetTokenRequest {
                id: alices.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(still.into_inner().state(), TokenState::Active);
}

async fn revoke_is_idempotent_and_ends_the_token(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut client = app.tokens().await;
    let created = client
        .create_token(authed(
            &manager,
            create("to revoke", &["tag:read", "personalAccessToken:write"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.unwrap().id;
    let first = client
        .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.state(), TokenState::Revoked);
    assert!(first.revoked_at.is_some());
    let second = client
        .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second, first, "a second revoke changes nothing");

    let introspected = app.introspect(&created.secret, &[]).await;
    assert!(!introspected.active);
    assert_status(
        client
            .list_tokens(authed(&created.secret, ListTokensRequest::default()))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    // A caller may revoke its own token; it stops working at once.
    let own_id = client
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .last()
        .unwrap()
        .id
        .clone();
    client
        .revoke_token(authed(&manager, RevokeTokenRequest { id: own_id }))
        .await
        .unwrap();
    assert_status(
        client
            .list_tokens(authed(&manager, ListTokensRequest::default()))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
}

async fn delete_removes_the_token(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut client = app.tokens().await;
    let created = client
        .create_token(authed(&manager, create("to delete", &["tag:read"])))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.unwrap().id;
    client
        .delete_token(authed(&manager, DeleteTokenRequest { id: id.clone() }))
        .await
        .unwrap();
    assert_id_rpcs_fail(&app, &manager, &id, Code::NotFound, &id).await;
    let introspected = app.introspect(&created.secret, &[]).await;
    assert_eq!(introspected, proto::IntrospectResponse::default());
}

async fn malformed_ids_are_invalid_argument(app: TestApp) {
    let manager = app.manager("alice", &[]).await;
    let long = "x".repeat(10_000);
    for (id, needle) in [
        ("", "id is required"),
        ("short", "malformed"),
        (&long[..], "malformed"),
        ("Zqz69FDzybpmChQeXByl6é", "malformed"),
    ] {
        assert_id_rpcs_fail(&app, &manager, id, Code::InvalidArgument, needle).await;
    }
}

async fn list_pages_newest_first_while_tokens_come_and_go(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut client = app.tokens().await;
    let mut ids = Vec::new();
    for i in 0..9 {
        let created = client
            .create_token(authed(&manager, create(&format!("t{i}"), &["tag:read"])))
            .await
            .unwrap()
            .into_inner();
        ids.push(created.token.unwrap().id);
    }
    let page = |token: String| {
        authed(
            &manager,
            ListTokensRequest {
                page_size: 4,
                page_token: token,
                ..Default::default()
            },
        )
    };

    let first = client
        .list_tokens(page(String::new()))
        .await
        .unwrap()
        .into_inner();
    // The ids of a page, as indexes into `ids`.
    let positions = |page: &ListTokensResponse| -> Vec<Option<usize>> {
        page.tokens
            .iter()
            .map(|t| ids.iter().position(|id| *id == t.id))
            .collect()
    };
    assert_eq!(positions(&first), vec![Some(8), Some(7), Some(6), Some(5)]);
    assert!(!first.next_page_token.is_empty());

    // Between pages: a new token (newer than the cursor) and a deletion of one
    // not yet seen. Neither may shift or repeat what the next page shows.
    client
        .create_token(authed(&manager, create("late", &["tag:read"])))
        .await
        .unwrap();
    client
        .delete_token(authed(&manager, DeleteTokenRequest { id: ids[3].clone() }))
        .await
        .unwrap();

    let second = client
        .list_tokens(page(first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(positions(&second), vec![Some(4), Some(2), Some(1), Some(0)]);

    let third = client
        .list_tokens(page(second.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.tokens.len(), 1, "the manager's own token, oldest");
    assert!(
        third.next_page_token.is_empty(),
        "last page has no next token"
    );

    for bad in ["garbage", "p1.", "p1.zz", "\u{1F600}", &"A".repeat(100_000)] {
        assert_status(
            client.list_tokens(page(bad.to_owned())).await,
            Code::InvalidArgument,
            "page_token is malformed",
        );
    }
    assert_status(
        client
            .list_tokens(authed(
                &manager,
                ListTokensRequest {
                    page_size: -1,
                    page_token: String::new(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "page_size",
    );
}

async fn page_size_defaults_to_50_and_is_capped_at_1000(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    for _ in 0..60 {
        app.mint(("alice", "acme"), &["tag:read"], None).await;
    }
    let mut client = app.tokens().await;
    let default = client
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.tokens.len(), 50);
    assert!(!default.next_page_token.is_empty());
    let huge = client
        .list_tokens(authed(
            &manager,
            ListTokensRequest {
                page_size: i32::MAX,
                page_token: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(huge.tokens.len(), 61);
    assert!(huge.next_page_token.is_empty());
}

async fn list_reports_each_tokens_state(app: TestApp) {
    let manager = app.manager("alice", &[]).await;
    let (_, expiring) = app
        .mint(
            ("alice", "acme"),
            &["tag:read"],
            Some(clock::now_micros() + 500_000),
        )
        .await;
    let (_, revoked) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let listed = app
        .tokens()
        .await
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let state_of = |id: &str| listed.tokens.iter().find(|t| t.id == id).unwrap().state();
    assert_eq!(state_of(&expiring.id), TokenState::Expired);
    assert_eq!(state_of(&revoked.id), TokenState::Revoked);
    assert_eq!(
        listed
            .tokens
            .iter()
            .filter(|t| t.state() == TokenState::Active)
            .count(),
        1
    );
}

backend_tests!(
    create_returns_the_secret_once_and_the_token,
    no_expiry_means_expires_at_unset,
    invalid_create_requests_are_invalid_argument,
    new_tokens_cannot_exceed_the_callers_scopes,
    misspelt_alias_is_stored_as_the_canonical_scope,
    list_scopes_is_the_catalog_and_needs_no_credential,
    bad_credentials_are_unauthenticated_on_every_rpc,
    managing_tokens_needs_the_management_scope,
    callers_see_only_their_own_tokens,
    revoke_is_idempotent_and_ends_the_token,
    delete_removes_the_token,
    malformed_ids_are_invalid_argument,
    list_pages_newest_first_while_tokens_come_and_go,
    page_size_defaults_to_50_and_is_capped_at_1000,
    list_reports_each_tokens_state,
);
