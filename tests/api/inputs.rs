//! Every client input bounded and validated: filters, enums, metadata and
//! free text get `INVALID_ARGUMENT` (never `INTERNAL`, never a silently wider
//! query), free text that must be kept is defused, and stored text never
//! reaches a terminal raw.

use std::process::Command;

use patd::proto::{ListTokensRequest, ReportLeakedTokensRequest};
use tonic::{Code, Request};

use crate::backend_tests;
use crate::helpers::{TestApp, authed, create};
use crate::tls::{acting_for, portal_credential, portal_trusted_settings};

async fn list_filters_and_enums_are_validated(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    app.mint(("alice", "acme"), &["tag:read"], None).await;
    app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let cases = [
        (
            ListTokensRequest {
                state: 99,
                ..Default::default()
            },
            "state 99 is not one of TOKEN_STATE_UNSPECIFIED",
        ),
        (
            ListTokensRequest {
                state: -5,
                ..Default::default()
            },
            "state -5",
        ),
        (
            ListTokensRequest {
                order_by: 99,
                ..Default::default()
            },
            "order_by 99 is not one of",
        ),
        (
            ListTokensRequest {
                name_contains: "%".repeat(100_000),
                ..Default::default()
            },
            "name_contains is longer than 100",
        ),
        (
            ListTokensRequest {
                name_contains: "ci\0".to_owned(),
                ..Default::default()
            },
            "U+0000",
        ),
        (
            ListTokensRequest {
                name_contains: "\u{202e}".to_owned(),
                ..Default::default()
            },
            "U+202E",
        ),
    ];
    for (request, needle) in cases {
        let err = tokens
            .list_tokens(authed(&manager, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err:?}");
        assert!(err.message().contains(needle), "{}", err.message());
    }
    // Known values still work, and a long-but-allowed filter is no error.
    let active = tokens
        .list_tokens(authed(
            &manager,
            ListTokensRequest {
                state: patd::proto::TokenState::Active.into(),
                name_contains: "_%".repeat(50),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(active.tokens.is_empty(), "no name holds the literal _%_%…");
}

async fn leak_sources_never_stop_a_revocation(app: TestApp) {
    let mut tokens = app.tokens().await;
    let mut answers = Vec::new();
    for source in [
        "https://example.test/a\0b",
        "line\nforged: leak_reported by admin",
        "\u{1b}[2J\u{1b}[31mred",
        "bidi \u{202e}gnp.exe",
        &"long".repeat(10_000),
    ] {
        let (leaked, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
        let answer = tokens
            .report_leaked_tokens(ReportLeakedTokensRequest {
                tokens: vec![leaked.clone()],
                source: source.to_owned(),
            })
            .await
            .unwrap_or_else(|err| panic!("{source:?}: {err:?}"))
            .into_inner();
        answers.push(answer);
        assert!(
            !app.is_active(&leaked).await,
            "{source:?}: revoked all the same"
        );
        let stored = app.store.find_by_id(&record.id).await.unwrap().unwrap();
        assert!(stored.revoked_at.is_some());
    }
    let unknown = tokens
        .report_leaked_tokens(ReportLeakedTokensRequest {
            tokens: vec![app.format.generate().expose().to_owned()],
            source: "line\nbreak\0".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answers.iter().all(|answer| *answer == unknown),
        "the same answer whatever the tokens were"
    );
    let trail = app
        .store
        .list_events(Some("acme"), None, 50)
        .await
        .unwrap()
        .events;
    let details: Vec<&str> = trail
        .iter()
        .filter(|event| event.kind == patd::store::EventKind::LeakReported)
        .map(|event| event.detail.as_str())
        .collect();
    assert_eq!(details.len(), 5, "{details:?}");
    for detail in details {
        assert!(
            !detail.chars().any(patd::domain::text::is_forbidden),
            "stored raw: {detail:?}"
        );
        assert!(detail.chars().count() <= 250, "bounded: {}", detail.len());
    }
}

async fn a_trusted_caller_names_one_owner_once(app: TestApp) {
    let mut tokens = app.tokens().await;
    let mut request = acting_for(
        authed(portal_credential(), ListTokensRequest::default()),
        "carol",
    );
    request
        .metadata_mut()
        .append("x-patd-act-as-subject", "mallory".parse().unwrap());
    let err = tokens.list_tokens(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("more than one x-patd-act-as-subject"),
        "{}",
        err.message()
    );
    let mut request = acting_for(Request::new(create("x", &["tag:read"])), "carol");
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", portal_credential()).parse().unwrap(),
    );
    request
        .metadata_mut()
        .append("x-patd-act-as-account", "evil".parse().unwrap());
    let err = tokens.create_token(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let one = acting_for(
        authed(portal_credential(), ListTokensRequest::default()),
        "carol",
    );
    assert!(tokens.list_tokens(one).await.is_ok());
}

/// Text stored by an older version, or written to the database by hand, is
/// shown escaped by every CLI command that prints it.
async fn the_cli_never_prints_stored_text_raw(app: TestApp) {
    let manager = app.manager("alice", &["eventLog:read", "tag:read"]).await;
    let (_, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let hostile = "evil\u{1b}[2J\nforged line\u{202e}gnp.exe\u{9b}31m";
    app.execute_raw(
        "UPDATE tokens SET name = $1 WHERE id = $2",
        &[hostile, &record.id],
    )
    .await;
    app.execute_raw(
        "UPDATE token_events SET detail = $1 WHERE token_id = $2",
        &[hostile, &record.id],
    )
    .await;
    for json in [false, true] {
        for command in [
            vec!["list"],
            vec!["get", record.id.as_str()],
            vec!["events"],
        ] {
            let mut args = command.clone();
            if json {
                args.push("--json");
            }
            let output = tokio::task::spawn_blocking({
                let addr = app.addr.to_string();
                let manager = manager.clone();
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                move || {
                    Command::new(env!("CARGO_BIN_EXE_patd"))
                        .args(&args)
                        .env("PATD_ADDR", addr)
                        .env("PATD_TOKEN", manager)
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            assert!(output.status.success(), "{args:?}: {output:?}");
            let stdout = String::from_utf8(output.stdout).unwrap();
            assert!(
                stdout.contains("evil"),
                "{args:?} shows the token: {stdout}"
            );
            for line in stdout.lines() {
                assert!(
                    !line.chars().any(patd::domain::text::is_forbidden),
                    "{args:?} printed raw: {line:?}"
                );
                assert!(!line.starts_with("forged line"), "{args:?} forged a line");
                if json {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(value.is_object());
                }
            }
            if json && command[0] != "events" {
                assert!(
                    stdout.contains("\\u001b[2J\\nforged line\\u202egnp.exe"),
                    "{stdout}"
                );
            }
        }
    }
}

/// The safety net under validation: text Postgres cannot hold, should any
/// reach it, is the request's fault (`INVALID_ARGUMENT`), not `INTERNAL`.
async fn values_storage_refuses_are_the_requests_fault(app: TestApp) {
    let event = patd::store::Event {
        seq: 0,
        at: patd::domain::clock::now_micros(),
        kind: patd::store::EventKind::Denied,
        token_id: None,
        subject: None,
        account: Some("acme".to_owned()),
        actor: patd::domain::model::Actor::operator(),
        detail: "nul\0inside".to_owned(),
        token: String::new(),
    };
    match (app.backend, app.store.record_event(&event).await) {
        (crate::helpers::Backend::Postgres, Err(err)) => {
            assert!(
                matches!(err, patd::store::StoreError::Rejected(_)),
                "{err:?}"
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(!status.message().contains("nul"), "{}", status.message());
        }
        (crate::helpers::Backend::Sqlite, Ok(())) => {}
        (backend, result) => panic!("{backend:?}: {result:?}"),
    }
}

backend_tests!(
    values_storage_refuses_are_the_requests_fault,
    list_filters_and_enums_are_validated,
    leak_sources_never_stop_a_revocation,
    a_trusted_caller_names_one_owner_once with portal_trusted_settings,
    the_cli_never_prints_stored_text_raw,
);
