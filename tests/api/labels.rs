//! Descriptions, labels, UpdateToken (AIP-134) and ListTokens' label
//! selectors, through the real server on both backends: client text is
//! bounded and validated, an update never touches what a token grants, a
//! rename reaches cached Introspect answers at once, and selectors find
//! exactly the owner's matching tokens.

use std::collections::HashMap;

use patd::proto::{
    CreateTokenRequest, GetTokenRequest, ListTokensRequest, Token, TokenOrder, UpdateTokenRequest,
};
use tonic::Code;

use crate::audit::events;
use crate::backend_tests;
use crate::helpers::{TestApp, authed};

fn labels(entries: &[(&str, &str)]) -> HashMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labelled(name: &str, description: &str, entries: &[(&str, &str)]) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.to_owned(),
        scopes: vec!["tag:read".to_owned()],
        description: description.to_owned(),
        labels: labels(entries),
        ..Default::default()
    }
}

async fn create(app: &TestApp, caller: &str, request: CreateTokenRequest) -> Result<Token, Code> {
    let answer = app
        .tokens()
        .await
        .create_token(authed(caller, request))
        .await;
    answer
        .map(|answer| answer.into_inner().token.unwrap())
        .map_err(|status| status.code())
}

async fn update(
    app: &TestApp,
    caller: &str,
    id: &str,
    token: Token,
    paths: Option<&[&str]>,
) -> Result<Token, tonic::Status> {
    let request = UpdateTokenRequest {
        id: id.to_owned(),
        token: Some(token),
        update_mask: paths.map(|paths| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let answer = app
        .tokens()
        .await
        .update_token(authed(caller, request))
        .await;
    answer.map(tonic::Response::into_inner)
}

async fn get(app: &TestApp, caller: &str, id: &str) -> Token {
    let request = authed(caller, GetTokenRequest { id: id.to_owned() });
    app.tokens()
        .await
        .get_token(request)
        .await
        .unwrap()
        .into_inner()
}

/// The names of the caller's tokens matching `selector`, every page of
/// `page_size`, newest first; or the refusal.
async fn selected(
    app: &TestApp,
    caller: &str,
    selector: &str,
    page_size: i32,
) -> Result<Vec<String>, tonic::Status> {
    selected_in(app, caller, selector, page_size, TokenOrder::Unspecified).await
}

/// [`selected`] in another order.
async fn selected_in(
    app: &TestApp,
    caller: &str,
    selector: &str,
    page_size: i32,
    order: TokenOrder,
) -> Result<Vec<String>, tonic::Status> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTokensRequest {
            page_size,
            page_token: page_token.clone(),
            label_selector: selector.to_owned(),
            order_by: order.into(),
            ..Default::default()
        };
        let page = app
            .tokens()
            .await
            .list_tokens(authed(caller, request))
            .await?
            .into_inner();
        names.extend(page.tokens.into_iter().map(|token| token.name));
        if page.next_page_token.is_empty() {
            return Ok(names);
        }
        page_token = page.next_page_token;
    }
}

async fn descriptions_and_labels_are_set_at_create_and_validated(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let token = create(
        &app,
        &alice,
        labelled(
            "deploy",
            "  pushes release tags from CI  ",
            &[
                ("team", " payments "),
                ("k8s.io/env", "prod"),
                ("empty", ""),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(token.description, "pushes release tags from CI");
    let expected = labels(&[("team", "payments"), ("k8s.io/env", "prod"), ("empty", "")]);
    assert_eq!(token.labels, expected);
    let stored = get(&app, &alice, &token.id).await;
    assert_eq!(
        (stored.description, stored.labels),
        (token.description, expected)
    );

    let many: Vec<(String, String)> = (0..17).map(|n| (format!("k{n}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let long_value = "v".repeat(256);
    let long_description = "d".repeat(501);
    for (request, why) in [
        (labelled("x", "", &[("Team", "a")]), "bad key"),
        (labelled("x", "", &[("-team", "a")]), "bad key"),
        (labelled("x", "", &[(&"k".repeat(64), "a")]), "long key"),
        (labelled("x", "", &many), "17 labels"),
        (labelled("x", "", &[("team", &long_value)]), "long value"),
        (labelled("x", "", &[("team", "a\u{202e}b")]), "bidi value"),
        (labelled("x", &long_description, &[]), "long description"),
        (labelled("x", "line\u{2028}break", &[]), "separator"),
    ] {
        assert_eq!(
            create(&app, &alice, request).await,
            Err(Code::InvalidArgument),
            "{why}"
        );
    }
    // Nothing refused was stored: the one token made above (and alice's own).
    assert_eq!(
        selected(&app, &alice, "", 100).await.unwrap(),
        ["deploy", "minted"]
    );
}

async fn update_token_follows_aip_134(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let bob = app.manager("bob", &["tag:read"]).await;
    let reader = app
        .mint(("alice", "acme"), &["eventLog:read"], None)
        .await
        .0;
    let created = app
        .tokens()
        .await
        .create_token(authed(&alice, labelled("ci", "old", &[("team", "a")])))
        .await
        .unwrap()
        .into_inner();
    let (id, secret) = (created.token.unwrap().id, created.secret);
    // Warm the cache: the rename must not be answered from it.
    assert_eq!(app.introspect(&secret, &[]).await.name, "ci");

    let renamed = update(
        &app,
        &alice,
        &id,
        Token {
            name: "  deploy  ".into(),
            description: "ignored: not in the mask".into(),
            ..Default::default()
        },
        Some(&["name"]),
    )
    .await
    .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.description.as_str()),
        ("deploy", "old")
    );
    assert_eq!(renamed.scopes, ["tag:read"], "what it grants stays");
    assert_eq!(app.introspect(&secret, &[]).await.name, "deploy");

    // Labels are replaced as a whole; the index follows.
    let relabelled = update(
        &app,
        &alice,
        &id,
        Token {
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        },
        Some(&["labels"]),
    )
    .await
    .unwrap();
    assert_eq!(relabelled.labels, labels(&[("env", "prod")]));
    assert_eq!(
        selected(&app, &alice, "team", 10).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        selected(&app, &alice, "env=prod", 10).await.unwrap(),
        ["deploy"]
    );

    // No mask: the fields that are set. `*`: all three (empty clears).
    let described = update(
        &app,
        &alice,
        &id,
        Token {
            description: "new".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (described.name.as_str(), described.description.as_str()),
        ("deploy", "new")
    );
    let replaced = update(
        &app,
        &alice,
        &id,
        Token {
            id: id.clone(),
            name: "all".into(),
            ..Default::default()
        },
        Some(&["*"]),
    )
    .await
    .unwrap();
    assert_eq!(
        (replaced.name.as_str(), replaced.description.as_str()),
        ("all", "")
    );
    assert!(replaced.labels.is_empty());

    // Refused, and nothing changes.
    let wider = Token {
        name: "x".into(),
        scopes: vec!["user:write".into()],
        ..Default::default()
    };
    for (token, paths, why) in [
        (wider.clone(), Some(&["scopes"][..]), "scopes"),
        (
            wider.clone(),
            Some(&["name", "expires_at"][..]),
            "expires_at",
        ),
        (wider.clone(), Some(&["resources"][..]), "resources"),
        (Token::default(), None, "nothing to update"),
        (Token::default(), Some(&["name"][..]), "name is required"),
        (
            Token {
                id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                name: "x".into(),
                ..Default::default()
            },
            Some(&["name"][..]),
            "token.id",
        ),
        (
            Token {
                labels: labels(&[("Bad", "x")]),
                ..Default::default()
            },
            Some(&["labels"][..]),
            "key",
        ),
    ] {
        let status = update(&app, &alice, &id, token, paths).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{why}");
        assert!(
            status.message().contains(why),
            "{why}: {}",
            status.message()
        );
    }
    let unchanged = get(&app, &alice, &id).await;
    assert_eq!(
        (unchanged.name.as_str(), unchanged.scopes),
        ("all", vec!["tag:read".to_owned()])
    );

    // Another owner's token is not found; a credential without write is refused.
    let name = Token {
        name: "stolen".into(),
        ..Default::default()
    };
    let status = update(&app, &bob, &id, name.clone(), Some(&["name"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = update(&app, &secret, &id, name, Some(&["name"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(get(&app, &alice, &id).await.name, "all");

    // One `updated` event per update that changed something, naming the fields.
    let before = events(&app, &reader, 100).await;
    let same = Token {
        name: "all".into(),
        ..Default::default()
    };
    update(&app, &alice, &id, same, Some(&["name"]))
        .await
        .unwrap();
    assert_eq!(
        events(&app, &reader, 100).await.len(),
        before.len(),
        "no change, no event"
    );
    let details: Vec<String> = before
        .iter()
        .filter(|event| event.kind == "updated" && event.token_id == id)
        .map(|event| event.detail.clone())
        .collect();
    assert_eq!(
        details,
        [
            "changed name, description, labels",
            "changed description",
            "changed labels",
            "changed name"
        ]
    );
}

async fn label_selectors_find_the_owners_matching_tokens(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let bob = app.manager("bob", &["tag:read"]).await;
    for (name, entries) in [
        ("pay-prod", &[("team", "payments"), ("env", "prod")][..]),
        ("pay-dev", &[("team", "payments"), ("env", "dev")][..]),
        (
            "search",
            &[("team", "search"), ("env", "prod"), ("owner", "")][..],
        ),
        ("bare", &[][..]),
    ] {
        create(&app, &alice, labelled(name, "", entries))
            .await
            .unwrap();
    }
    // Bob's token with the same labels is never alice's to see.
    create(
        &app,
        &bob,
        labelled("bobs", "", &[("team", "payments"), ("env", "prod")]),
    )
    .await
    .unwrap();
    for (selector, expected) in [
        ("team=payments", &["pay-dev", "pay-prod"][..]),
        ("team==payments", &["pay-dev", "pay-prod"][..]),
        ("team=payments,env=prod", &["pay-prod"][..]),
        (" env = prod , team ", &["search", "pay-prod"][..]),
        ("env", &["search", "pay-dev", "pay-prod"][..]),
        ("owner", &["search"][..]),
        ("owner=", &["search"][..]),
        ("team=", &[][..]),
        ("team=payments,team=search", &[][..]),
        ("nobody", &[][..]),
    ] {
        // Paged one at a time too: the selector holds across pages, in every
        // order (newest and oldest first read the label index in order; the
        // others filter and sort).
        for page_size in [1, 100] {
            assert_eq!(
                selected(&app, &alice, selector, page_size).await.unwrap(),
                expected,
                "{selector:?} by {page_size}"
            );
            let mut oldest_first = expected.to_vec();
            oldest_first.reverse();
            let mut by_name = expected.to_vec();
            by_name.sort();
            for (order, expected) in [
                (TokenOrder::CreatedAsc, &oldest_first),
                (TokenOrder::NameAsc, &by_name),
            ] {
                let found = selected_in(&app, &alice, selector, page_size, order).await;
                assert_eq!(
                    &found.unwrap(),
                    expected,
                    "{selector:?} by {page_size}, {order:?}"
                );
            }
        }
    }
    assert_eq!(
        selected(&app, &bob, "team=payments", 10).await.unwrap(),
        ["bobs"]
    );

    let seventeen = vec!["k"; 17].join(",");
    for bad in [
        ",",
        "team=payments,",
        "a,,b",
        "=prod",
        "Team=x",
        "team!=x",
        "team in (a)",
        seventeen.as_str(),
    ] {
        let status = selected(&app, &alice, bad, 10).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            status.message().contains("label_selector"),
            "{}",
            status.message()
        );
    }

    // A page token is only good for the selector that issued it.
    let request = ListTokensRequest {
        page_size: 1,
        label_selector: "env".into(),
        ..Default::default()
    };
    let page = app
        .tokens()
        .await
        .list_tokens(authed(&alice, request))
        .await
        .unwrap()
        .into_inner();
    let request = ListTokensRequest {
        page_size: 1,
        page_token: page.next_page_token,
        label_selector: "team".into(),
        ..Default::default()
    };
    let status = app
        .tokens()
        .await
        .list_tokens(authed(&alice, request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn concurrent_updates_keep_labels_and_their_index_together(app: TestApp) {
    let alice = app.manager("alice", &["tag:read"]).await;
    let token = create(&app, &alice, labelled("racy", "", &[("v", "0")]))
        .await
        .unwrap();
    // A rename and a relabel of one token at once, round after round: the
    // rename must apply to what the relabel left (or the other way round),
    // never write back labels it read before the relabel committed, leaving
    // the stored labels and their index apart.
    let client = app.tokens().await;
    for round in 1..=30 {
        let mut updates = tokio::task::JoinSet::new();
        for (path, change) in [
            (
                "labels",
                Token {
                    labels: labels(&[("v", &round.to_string())]),
                    ..Default::default()
                },
            ),
            (
                "name",
                Token {
                    name: format!("name-{round}"),
                    ..Default::default()
                },
            ),
        ] {
            let (mut client, alice, id) = (client.clone(), alice.clone(), token.id.clone());
            updates.spawn(async move {
                let request = UpdateTokenRequest {
                    id,
                    token: Some(change),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![path.into()],
                    }),
                };
                client.update_token(authed(&alice, request)).await.unwrap();
            });
        }
        while let Some(done) = updates.join_next().await {
            done.unwrap();
        }
        let stored = get(&app, &alice, &token.id).await;
        assert_eq!(
            (stored.name.as_str(), stored.labels["v"].as_str()),
            (format!("name-{round}").as_str(), round.to_string().as_str()),
            "round {round}: neither update was lost"
        );
        let found = selected(&app, &alice, &format!("v={round}"), 10)
            .await
            .unwrap();
        assert_eq!(
            found,
            [stored.name],
            "round {round}: the index holds the stored labels"
        );
    }
}

backend_tests!(
    concurrent_updates_keep_labels_and_their_index_together,
    descriptions_and_labels_are_set_at_create_and_validated,
    update_token_follows_aip_134,
    label_selectors_find_the_owners_matching_tokens,
);
