//! patd-client against the real server: the Authenticator's cache and its
//! coherence through WatchChanges, failing closed, and the tower layer in front
//! of a real axum and a real tonic service.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patd_client::{
    AuthLayer, Authenticator, AuthenticatorSettings, Client, Principal, VerifyError,
};
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed, revoke_as_operator};

fn settings() -> AuthenticatorSettings {
    AuthenticatorSettings {
        max_staleness: Duration::from_millis(1_500),
        ..AuthenticatorSettings::default()
    }
}

fn client_for(app: &TestApp) -> Client {
    Client::builder(app.addr.to_string()).build().unwrap()
}

/// An authenticator on `app`, once its change stream is heard from.
pub async fn authenticator(app: &TestApp) -> Authenticator {
    let auth = Authenticator::new(client_for(app), settings());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !auth.is_coherent() {
        assert!(Instant::now() < deadline, "the change stream never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    auth
}

async fn introspections(app: &TestApp) -> f64 {
    let (scrape, _) = crate::metrics::scrape(app).await;
    // No series yet: no call yet.
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "grpc_server_handled_total"
                && s.labels.get("grpc_method") == Some("Introspect")
                && s.labels.get("grpc_code") == Some("OK")
        })
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("not a counter"),
        })
}

/// Polls `verify` until it is no longer accepted; how long that took.
async fn until_denied(auth: &Authenticator, secret: &str) -> Duration {
    let started = Instant::now();
    loop {
        match auth.verify(secret, &[], None).await {
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "still accepted after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(VerifyError::Inactive) => return started.elapsed(),
            Err(other) => panic!("{other}"),
        }
    }
}

async fn cached_tokens_are_dropped_as_soon_as_they_change(app: TestApp) {
    let auth = authenticator(&app).await;
    let manager = app.manager("alice", &["tag:read"]).await;
    let (revoked, revoked_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (deleted, deleted_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (rotated, rotated_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    for secret in [&revoked, &deleted, &rotated] {
        let principal = auth.verify(secret, &["tag:read"], None).await.unwrap();
        assert_eq!(
            (principal.subject.as_str(), principal.account.as_str()),
            ("alice", "acme")
        );
    }
    // Answered from memory now: no more Introspect calls.
    let before = introspections(&app).await;
    for _ in 0..50 {
        for secret in [&revoked, &deleted, &rotated] {
            auth.verify(secret, &[], None).await.unwrap();
        }
    }
    assert_eq!(
        introspections(&app).await,
        before,
        "cached answers call nobody"
    );
    // Required scopes are decided per call, from the cached facts.
    match auth.verify(&revoked, &["user:write"], None).await {
        Err(VerifyError::MissingScopes { missing, .. }) => assert_eq!(missing, ["user:write"]),
        other => panic!("{other:?}"),
    }

    let mut tokens = app.tokens().await;
    revoke_as_operator(&app.store, &revoked_record).await;
    let revoke_seen = until_denied(&auth, &revoked).await;
    tokens
        .delete_token(authed(
            &manager,
            patd::proto::DeleteTokenRequest {
                id: deleted_record.id.clone(),
            },
        ))
        .await
        .unwrap();
    let delete_seen = until_denied(&auth, &deleted).await;
    tokens
        .rotate_token(authed(
            &manager,
            patd::proto::RotateTokenRequest {
                id: rotated_record.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let rotate_seen = until_denied(&auth, &rotated).await;
    eprintln!(
        "{:?}: revoke {revoke_seen:?}, delete {delete_seen:?}, rotate {rotate_seen:?}",
        app.backend
    );
}

/// Two replicas on one Postgres: revoked through A, denied by an Authenticator
/// following B.
#[tokio::test]
async fn postgres_a_revoke_on_one_replica_reaches_an_authenticator_on_another() {
    let Some(a) = TestApp::spawn_with(crate::helpers::Backend::Postgres, TestApp::settings()).await
    else {
        return;
    };
    let b = TestApp::spawn_with_store(
        a.backend,
        TestApp::connect_store(&a.database_url).await,
        a.database_url.clone(),
        TestApp::settings(),
    )
    .await;
    let auth = authenticator(&b).await;
    let manager = a.manager("alice", &["tag:read"]).await;
    let (secret, record) = a.mint(("alice", "acme"), &["tag:read"], None).await;
    auth.verify(&secret, &[], None).await.unwrap();
    a.tokens()
        .await
        .revoke_token(authed(
            &manager,
            patd::proto::RevokeTokenRequest { id: record.id },
        ))
        .await
        .unwrap();
    let seen = until_denied(&auth, &secret).await;
    eprintln!("replica A -> authenticator on B: {seen:?}");
}

async fn junk_never_leaves_the_process(app: TestApp) {
    let auth = authenticator(&app).await;
    let before = introspections(&app).await;
    let valid = app.format.generate().expose().to_owned();
    let wrong_checksum = crate::helpers::with_wrong_checksum(&valid);
    for junk in ["", "x", "patd_", wrong_checksum.as_str(), "acme_abc"] {
        assert!(matches!(
            auth.verify(junk, &[], None).await,
            Err(VerifyError::Inactive)
        ));
    }
    assert_eq!(introspections(&app).await, before);
    // A well-formed unknown one is asked once, then remembered briefly.
    for _ in 0..3 {
        assert!(matches!(
            auth.verify(&valid, &[], None).await,
            Err(VerifyError::Inactive)
        ));
    }
    assert_eq!(introspections(&app).await, before + 1.0);
}

/// The stream goes silent (patd stopped): cached answers are no longer used,
/// and with patd unreachable every verify fails closed.
async fn a_silent_stream_means_no_cache_and_no_patd_means_no_principal(app: TestApp) {
    let auth = authenticator(&app).await;
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    auth.verify(&secret, &[], None).await.unwrap();
    app.stop().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match auth.verify(&secret, &[], None).await {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "a cached answer outlived the stream"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(VerifyError::Unavailable(status)) => {
                assert_eq!(status.code(), Code::Unavailable);
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(!auth.is_coherent());
}

fn http_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let challenge = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .starts_with("www-authenticate:")
                .then(|| line["www-authenticate:".len()..].trim().to_owned())
        })
        .unwrap_or_default();
    (status, challenge, body.to_owned())
}

async fn hello(principal: Principal) -> String {
    format!("hello {} of {}", principal.subject, principal.account)
}

/// An axum service and a tonic service behind the layer, called with valid,
/// expired, revoked, junk, missing and under-scoped tokens.
async fn the_layer_protects_axum_and_tonic_services(app: TestApp) {
    let auth = authenticator(&app).await;
    let router = axum::Router::new()
        .route("/licenses", axum::routing::get(hello))
        .route_layer(AuthLayer::new(auth.clone(), ["license:read"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let grpc = tonic::transport::Server::builder()
        .layer(AuthLayer::new(auth.clone(), ["license:read"]))
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            grpc_listener,
        ));
    tokio::spawn(grpc);

    let (valid, _) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let (under_scoped, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let soon = patd::domain::clock::now_micros() + 300_000;
    let (expired, _) = app
        .mint(("alice", "acme"), &["license:read"], Some(soon))
        .await;
    // Cached while still valid: the expiry must be enforced at its instant.
    auth.verify(&expired, &[], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let junk = crate::helpers::with_wrong_checksum(&valid);

    let get = |authorization: Option<String>| {
        tokio::task::spawn_blocking(move || {
            http_get(http_addr, "/licenses", authorization.as_deref())
        })
    };
    let bearer = |secret: &str| Some(format!("Bearer {secret}"));
    let (status, _, body) = get(bearer(&valid)).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello alice of acme"));
    for secret in [&expired, &revoked, &junk] {
        let (status, challenge, _) = get(bearer(secret)).await.unwrap();
        assert_eq!(status, 401);
        assert_eq!(challenge, r#"Bearer realm="patd", error="invalid_token""#);
    }
    let (status, challenge, _) = get(None).await.unwrap();
    assert_eq!(
        (status, challenge.as_str()),
        (401, r#"Bearer realm="patd""#)
    );
    let (status, challenge, _) = get(bearer(&under_scoped)).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        challenge,
        r#"Bearer realm="patd", error="insufficient_scope", scope="license:read""#
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = |secret: Option<&str>| {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        }
        async move {
            client
                .check(request)
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(check(Some(&valid)).await, Ok(()));
    for secret in [
        Some(expired.as_str()),
        Some(revoked.as_str()),
        Some(junk.as_str()),
        None,
    ] {
        assert_eq!(
            check(secret).await,
            Err(Code::Unauthenticated),
            "{secret:?}"
        );
    }
    assert_eq!(
        check(Some(&under_scoped)).await,
        Err(Code::PermissionDenied)
    );
}

backend_tests!(
    cached_tokens_are_dropped_as_soon_as_they_change,
    junk_never_leaves_the_process,
    a_silent_stream_means_no_cache_and_no_patd_means_no_principal,
    the_layer_protects_axum_and_tonic_services,
);
