//! Garbage and abuse: every one gets a clear status, and the server stays SERVING.

use std::time::{Duration, Instant};

use patd::proto::{CreateTokenRequest, IntrospectRequest, ListTokensRequest};
use patd::serve::{Limits, ServerSettings};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::backend_tests;
use crate::helpers::{TestApp, WriteLock, authed, health_of};

async fn assert_serving(app: &TestApp) {
    assert_eq!(
        health_of(&app.channel().await, "").await,
        ServingStatus::Serving
    );
}

fn create(name: String, scopes: Vec<String>) -> CreateTokenRequest {
    CreateTokenRequest {
        name,
        scopes,
        expires_at: None,
        ..Default::default()
    }
}

async fn oversized_messages_are_refused_with_a_clear_status(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let huge_name = create("n".repeat(1_000_000), vec!["tag:read".to_owned()]);
    let status = tokens
        .create_token(authed(&manager, huge_name))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    let huge_token = IntrospectRequest {
        token: "x".repeat(1_000_000),
        required_scopes: vec![],
        client_ip: String::new(),
        ..Default::default()
    };
    let status = app
        .introspection()
        .await
        .introspect(huge_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let hundred_kb = app.introspect(&"x".repeat(100 * 1024), &[]).await;
    assert!(!hundred_kb.active, "100 KB still fits, and is inactive");
    assert_serving(&app).await;
}

async fn ten_thousand_scopes_get_a_short_answer(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let unknown: Vec<String> = (0..10_000).map(|i| format!("x:{i}")).collect();
    let status = tokens
        .create_token(authed(&manager, create("ci".into(), unknown)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() < 1_000,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("and 9995 more"),
        "{}",
        status.message()
    );

    let repeated = vec!["tag:read".to_owned(); 10_000];
    let created = tokens
        .create_token(authed(&manager, create("ci".into(), repeated)))
        .await
        .unwrap();
    assert_eq!(created.into_inner().token.unwrap().scopes, vec!["tag:read"]);

    let required = vec!["tag:read"; 10_000];
    assert!(
        app.introspect(&manager, &required)
            .await
            .missing_scopes
            .is_empty()
    );
    assert_serving(&app).await;
}

async fn hostile_metadata_is_unauthenticated_or_refused(app: TestApp) {
    let manager = app.manager("alice", &[]).await;
    let mut tokens = app.tokens().await;
    // Bytes above 0x7F are legal in HTTP/2 header values but not printable ASCII.
    let mut non_ascii = Request::new(ListTokensRequest::default());
    let value = MetadataValue::try_from(&b"Bearer \xff\xfe\xfd"[..]).unwrap();
    non_ascii.metadata_mut().insert("authorization", value);
    let status = tokens.list_tokens(non_ascii).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("not printable ASCII"),
        "{}",
        status.message()
    );

    // Metadata beyond the header-list limit (16 KiB) is refused by HTTP/2 itself.
    let mut oversized = authed(&manager, ListTokensRequest::default());
    let padding = "p".repeat(64 * 1024);
    oversized
        .metadata_mut()
        .insert("x-padding", padding.parse().unwrap());
    assert!(tokens.list_tokens(oversized).await.is_err());

    // A bearer token the size of the header limit is simply malformed.
    let long_bearer = authed(&"x".repeat(8 * 1024), ListTokensRequest::default());
    let status = app
        .tokens()
        .await
        .list_tokens(long_bearer)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_serving(&app).await;
}

fn four_in_flight() -> ServerSettings {
    ServerSettings {
        limits: Limits {
            max_in_flight: 4,
            ..Limits::default()
        },
        ..TestApp::settings()
    }
}

async fn overload_is_refused_fast_and_health_stays_serving(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    app.introspect(&manager, &[]).await;
    // Four creates wait on storage's write lock: the server is full.
    let lock = WriteLock::take(&app).await;
    let mut stuck = Vec::new();
    for i in 0..4 {
        let mut tokens = app.tokens().await;
        let request = authed(
            &manager,
            create(format!("stuck {i}"), vec!["tag:read".into()]),
        );
        stuck.push(tokio::spawn(
            async move { tokens.create_token(request).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let request = IntrospectRequest {
        token: manager.clone(),
        required_scopes: vec![],
        client_ip: String::new(),
        ..Default::default()
    };
    let refused = app
        .introspection()
        .await
        .introspect(request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused in {:?}",
        started.elapsed()
    );
    assert_serving(&app).await;

    lock.release().await;
    for call in stuck {
        assert!(call.await.unwrap().is_ok(), "admitted calls complete");
    }
    assert!(
        app.introspect(&manager, &[]).await.active,
        "capacity is back"
    );
}

fn short_call_timeout() -> ServerSettings {
    ServerSettings {
        limits: Limits {
            call_timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        ..TestApp::settings()
    }
}

async fn a_call_past_its_timeout_is_cancelled(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    app.introspect(&manager, &[]).await;
    // The write waits on a lock longer than the call may run (storage gives up
    // only after 2 s in tests).
    let lock = WriteLock::take(&app).await;
    let started = Instant::now();
    let status = app.create_tag_reader(&manager, "slow").await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    lock.release().await;
    assert_serving(&app).await;
}

backend_tests!(
    a_call_past_its_timeout_is_cancelled with short_call_timeout,
    oversized_messages_are_refused_with_a_clear_status,
    ten_thousand_scopes_get_a_short_answer,
    hostile_metadata_is_unauthenticated_or_refused,
    overload_is_refused_fast_and_health_stays_serving with four_in_flight,
);
