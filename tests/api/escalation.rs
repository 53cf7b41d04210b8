//! The subset rule, attacked: no path that hands out a secret (create, rotate,
//! rotate-self) gives out more scopes, wider networks or a longer life than the
//! caller's own token has; and no owner sees or touches another's tokens.

use patd::domain::clock;
use patd::proto::{
    CreateTokenRequest, CreateTokenResponse, DeleteTokenRequest, GetTokenRequest,
    IntrospectRequest, RotateSelfRequest, RotateTokenRequest, Token,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed, create};

const HOUR: i64 = 3_600_000_000;

fn rotate(id: &str, expires_at: Option<i64>) -> RotateTokenRequest {
    RotateTokenRequest {
        id: id.to_owned(),
        expires_at: expires_at.map(clock::to_timestamp),
        grace_period: None,
    }
}

/// The attack: a token holding only `personalAccessToken:write` rotates a
/// broader token of its owner to learn its secret, then mints with its scopes.
async fn rotation_cannot_hand_out_scopes_the_caller_lacks(app: TestApp) {
    let (narrow, _) = app
        .mint(("alice", "acme"), &["personalAccessToken:write"], None)
        .await;
    let (broad_secret, broad) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write", "user:write", "license:write"],
            None,
        )
        .await;
    let mut tokens = app.tokens().await;
    let err = tokens
        .rotate_token(authed(&narrow, rotate(&broad.id, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("lacks scopes: license:write, user:write"),
        "{}",
        err.message()
    );
    assert!(
        app.is_active(&broad_secret).await,
        "the refused rotation changed nothing"
    );
    let record = tokens
        .get_token(authed(
            &narrow,
            GetTokenRequest {
                id: broad.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.rotated_at, None);

    // A caller holding everything the target has may rotate it.
    let rotated = tokens
        .rotate_token(authed(&broad_secret, rotate(&broad.id, None)))
        .await
        .unwrap()
        .into_inner();
    assert!(app.is_active(&rotated.secret).await);
}

/// A caller limited to networks hands out only tokens limited to those networks
/// (or narrower); the test client is on 127.0.0.1.
async fn an_allowlisted_caller_hands_out_only_allowlisted_tokens(app: TestApp) {
    let scopes = ["personalAccessToken:write", "tag:read"];
    let (limited, _) = app
        .mint_limited(("alice", "acme"), &scopes, None, &["127.0.0.0/8"])
        .await;
    let mut tokens = app.tokens().await;
    let with_cidrs = |cidrs: &[&str]| CreateTokenRequest {
        allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        ..create("ci", &["tag:read"])
    };
    for wider in [&[][..], &["0.0.0.0/0"], &["127.0.0.1", "10.0.0.0/8"]] {
        let err = tokens
            .create_token(authed(&limited, with_cidrs(wider)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{wider:?}");
        assert!(
            err.message().contains("may be used only from 127.0.0.0/8"),
            "{}",
            err.message()
        );
    }
    let created = tokens
        .create_token(authed(
            &limited,
            with_cidrs(&["127.0.0.1", "::ffff:127.0.0.2"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.token.unwrap().allowed_cidrs,
        ["127.0.0.1/32", "127.0.0.2/32"],
        "a mapped address is stored as the IPv4 address it means"
    );

    // Nor may it rotate a token of its owner that works from anywhere.
    let (_, open) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let err = tokens
        .rotate_token(authed(&limited, rotate(&open.id, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("allowed_cidrs"), "{}", err.message());
}

/// A caller that expires hands out only tokens that expire no later.
async fn an_expiring_caller_hands_out_nothing_that_outlives_it(app: TestApp) {
    let now = clock::now_micros();
    let caller_expiry = now + 2 * HOUR;
    let (expiring, caller) = app
        .mint(
            ("alice", "acme"),
            &["personalAccessToken:write", "tag:read"],
            Some(caller_expiry),
        )
        .await;
    let mut tokens = app.tokens().await;
    let expiring_at = |at: Option<i64>| CreateTokenRequest {
        expires_at: at.map(clock::to_timestamp),
        ..create("ci", &["tag:read"])
    };
    for longer in [None, Some(caller_expiry + 1)] {
        let err = tokens
            .create_token(authed(&expiring, expiring_at(longer)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{longer:?}");
        assert!(
            err.message().contains("must expire no later"),
            "{}",
            err.message()
        );
    }
    assert!(
        tokens
            .create_token(authed(&expiring, expiring_at(Some(caller_expiry))))
            .await
            .is_ok()
    );

    // Rotation: a target that never expires may be rotated only into one that
    // expires in time.
    let (_, forever) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let err = tokens
        .rotate_token(authed(&expiring, rotate(&forever.id, None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let shortened = tokens
        .rotate_token(authed(&expiring, rotate(&forever.id, Some(now + HOUR))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        shortened.token.unwrap().expires_at,
        Some(clock::to_timestamp(now + HOUR))
    );

    // Rotating itself cannot extend its own life, whatever its scopes.
    let longer = RotateSelfRequest {
        expires_at: Some(clock::to_timestamp(caller_expiry + HOUR)),
        grace_period: None,
    };
    let err = tokens
        .rotate_self(authed(&expiring, longer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = tokens
        .rotate_token(authed(
            &expiring,
            rotate(&caller.id, Some(caller_expiry + HOUR)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(app.is_active(&expiring).await, "nothing was rotated");
}

/// A caller in a random property-test case.
#[derive(Clone, Debug)]
struct CallerCase {
    scopes: Vec<&'static str>,
    /// Among those the target and new tokens draw from.
    cidrs: Vec<&'static str>,
    expires_in_hours: Option<i64>,
}

#[derive(Clone, Debug)]
enum Action {
    Create {
        scopes: Vec<&'static str>,
        cidrs: Vec<&'static str>,
        expires_in_hours: Option<i64>,
    },
    RotateOwn {
        scopes: Vec<&'static str>,
        cidrs: Vec<&'static str>,
        expires_in_hours: Option<i64>,
        new_expiry_hours: Option<i64>,
    },
    RotateSelf {
        new_expiry_hours: Option<i64>,
    },
    /// Get, rotate, revoke or delete (by number) another owner's token.
    TouchOthers(u8),
}

const SCOPES: [&str; 4] = ["license:read", "license:write", "tag:read", "user:write"];
const BLOCKS: [&str; 4] = ["127.0.0.0/8", "127.0.0.1/32", "10.0.0.0/8", "0.0.0.0/0"];

fn subset<T: Copy + std::fmt::Debug>(items: &'static [T]) -> impl Strategy<Value = Vec<T>> {
    proptest::sample::subsequence(items, 0..=items.len())
}

fn hours() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(1i64..6)
}

fn case() -> impl Strategy<Value = (CallerCase, Action)> {
    let caller = (
        subset(&SCOPES),
        // The caller must be usable from the test's 127.0.0.1.
        proptest::sample::subsequence(&BLOCKS[..2], 0..=1),
        hours(),
    )
        .prop_map(|(scopes, cidrs, expires_in_hours)| CallerCase {
            scopes,
            cidrs,
            expires_in_hours,
        });
    let action = proptest::prop_oneof![
        (subset(&SCOPES), subset(&BLOCKS), hours()).prop_map(|(scopes, cidrs, expires)| {
            Action::Create {
                scopes,
                cidrs,
                expires_in_hours: expires,
            }
        }),
        (subset(&SCOPES), subset(&BLOCKS), hours(), hours()).prop_map(
            |(scopes, cidrs, expires, new_expiry)| Action::RotateOwn {
                scopes,
                cidrs,
                expires_in_hours: expires,
                new_expiry_hours: new_expiry,
            }
        ),
        hours().prop_map(|new_expiry_hours| Action::RotateSelf { new_expiry_hours }),
        (0u8..4).prop_map(Action::TouchOthers),
    ];
    (caller, action)
}

/// Asserts that `handed_out`, just received by `caller`, is within it: its
/// scopes, networks and expiry, as Introspect reports them from storage.
async fn assert_within(
    app: &TestApp,
    caller: &CallerCase,
    now: i64,
    handed_out: CreateTokenResponse,
) {
    let token: Token = handed_out.token.unwrap();
    let mut introspection = app.introspection().await;
    let answer = introspection
        .introspect(IntrospectRequest {
            token: handed_out.secret.clone(),
            required_scopes: vec![],
            client_ip: "127.0.0.1".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for scope in &answer.scopes {
        assert!(
            caller.scopes.contains(&scope.as_str()),
            "{caller:?} handed out {scope}"
        );
    }
    if let Some(hours) = caller.expires_in_hours {
        let limit = now + hours * HOUR;
        let expires = token.expires_at.as_ref().and_then(clock::from_timestamp);
        assert!(
            expires.is_some_and(|at| at <= limit),
            "{caller:?} handed out a token expiring {expires:?}"
        );
    }
    if !caller.cidrs.is_empty() {
        let outer = patd::domain::cidr::CidrList::parse(&caller.cidrs).unwrap();
        let inner = patd::domain::cidr::CidrList::parse(&token.allowed_cidrs).unwrap();
        assert!(
            !inner.is_empty() && outer.covers(&inner),
            "{caller:?} handed out allowed_cidrs {:?}",
            token.allowed_cidrs
        );
    }
}

/// For random callers and requests, through the real server: a secret handed
/// out never carries more than its caller holds, and another owner's tokens
/// are never visible or touchable.
async fn random_callers_never_hand_out_more_than_they_hold(app: TestApp) {
    let mut runner = TestRunner::deterministic();
    let (_, others) = app.mint(("mallory", "acme"), &["tag:read"], None).await;
    let (_, other_account) = app.mint(("alice", "evil"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    let mut handed_out = 0;
    for round in 0..48 {
        let (mut caller, action) = case().new_tree(&mut runner).unwrap().current();
        caller.scopes.push("personalAccessToken:write");
        let now = clock::now_micros();
        let hours = |h: Option<i64>| h.map(|h| now + h * HOUR);
        let (secret, _) = app
            .mint_limited(
                ("alice", "acme"),
                &caller.scopes,
                hours(caller.expires_in_hours),
                &caller.cidrs,
            )
            .await;
        let result = match &action {
            Action::Create {
                scopes,
                cidrs,
                expires_in_hours,
            } => {
                if scopes.is_empty() {
                    continue;
                }
                let request = CreateTokenRequest {
                    name: format!("case {round}"),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    expires_at: hours(*expires_in_hours).map(clock::to_timestamp),
                    allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                };
                tokens.create_token(authed(&secret, request)).await
            }
            Action::RotateOwn {
                scopes,
                cidrs,
                expires_in_hours,
                new_expiry_hours,
            } => {
                if scopes.is_empty() {
                    continue;
                }
                let (_, target) = app
                    .mint_limited(("alice", "acme"), scopes, hours(*expires_in_hours), cidrs)
                    .await;
                let request = rotate(&target.id, hours(*new_expiry_hours));
                tokens.rotate_token(authed(&secret, request)).await
            }
            Action::RotateSelf { new_expiry_hours } => {
                let request = RotateSelfRequest {
                    expires_at: hours(*new_expiry_hours).map(clock::to_timestamp),
                    grace_period: None,
                };
                tokens.rotate_self(authed(&secret, request)).await
            }
            Action::TouchOthers(which) => {
                for target in [&others, &other_account] {
                    let id = target.id.clone();
                    let code = match which {
                        0 => tokens
                            .get_token(authed(&secret, GetTokenRequest { id }))
                            .await
                            .map(drop),
                        1 => tokens
                            .rotate_token(authed(&secret, rotate(&id, None)))
                            .await
                            .map(drop),
                        2 => tokens
                            .revoke_token(authed(&secret, patd::proto::RevokeTokenRequest { id }))
                            .await
                            .map(drop),
                        _ => tokens
                            .delete_token(authed(&secret, DeleteTokenRequest { id }))
                            .await
                            .map(drop),
                    }
                    .unwrap_err()
                    .code();
                    assert_eq!(code, Code::NotFound, "{action:?} on {}", target.id);
                }
                continue;
            }
        };
        match result {
            Ok(response) => {
                handed_out += 1;
                assert_within(&app, &caller, now, response.into_inner()).await;
            }
            Err(status) => assert!(
                matches!(
                    status.code(),
                    Code::PermissionDenied | Code::InvalidArgument
                ),
                "{caller:?} {action:?}: {status:?}"
            ),
        }
    }
    assert!(
        handed_out >= 5,
        "the cases exercise the allowed path too ({handed_out})"
    );
    for target in [&others, &other_account] {
        let stored = app.store.find_by_id(&target.id).await.unwrap().unwrap();
        assert_eq!(
            stored.revoked_at, None,
            "another owner's token was untouched"
        );
        assert_eq!(stored.rotated_at, None);
    }
}

backend_tests!(
    rotation_cannot_hand_out_scopes_the_caller_lacks,
    an_allowlisted_caller_hands_out_only_allowlisted_tokens,
    an_expiring_caller_hands_out_nothing_that_outlives_it,
    random_callers_never_hand_out_more_than_they_hold,
);
