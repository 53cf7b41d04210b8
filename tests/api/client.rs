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
use crate::helpers::{KillOnDrop, TestApp, authed, free_addr, revoke_as_operator};

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

    // A rename changes what a cached answer says: it must go too.
    let (renamed, renamed_record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    assert_eq!(
        auth.verify(&renamed, &[], None).await.unwrap().name,
        "minted"
    );
    let rename = crate::helpers::rename(&renamed_record.id, "renamed");
    tokens.update_token(authed(&manager, rename)).await.unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while auth.verify(&renamed, &[], None).await.unwrap().name != "renamed" {
        assert!(Instant::now() < deadline, "the cached name never changed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!(
        "{:?}: revoke {revoke_seen:?}, delete {delete_seen:?}, rotate {rotate_seen:?}",
        app.backend
    );
}

/// A rotated-out secret used after its grace period must reach patd, which
/// takes it for a leak and revokes the token: the Authenticator must not answer
/// it "inactive" from its cache and so hide the thief's use.
async fn reuse_of_a_rotated_secret_after_its_grace_reaches_patd(app: TestApp) {
    let auth = authenticator(&app).await;
    let manager = app.manager("alice", &["license:read"]).await;
    let (old, record) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let rotated = app
        .tokens()
        .await
        .rotate_token(authed(
            &manager,
            patd::proto::RotateTokenRequest {
                id: record.id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Within its grace the old secret works, and is cached with the grace as
    // its expiry (again, once the rotation's own change has dropped it).
    let deadline = Instant::now() + Duration::from_millis(500);
    while !matches!(auth.verify_cached(&old, &[], None), Some(Ok(_))) {
        assert!(
            Instant::now() < deadline,
            "the old secret is cached in its grace"
        );
        auth.verify(&old, &[], None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(matches!(
        auth.verify(&old, &[], None).await,
        Err(VerifyError::Inactive)
    ));
    assert!(
        !app.is_active(&rotated.secret).await,
        "patd saw the reuse and revoked the token"
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
    http_call("GET", addr, path, authorization)
}

/// `method path` on `addr`: the status, the `WWW-Authenticate` challenge, the body.
fn http_call(
    method: &str,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
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

    // Allowlisted tokens under axum: the address from ConnectInfo, as the README shows.
    let router = axum::Router::new()
        .route("/licenses", axum::routing::get(hello))
        .route_layer(
            AuthLayer::new(auth.clone(), ["license:read"]).client_ip(|parts| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip())
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowlisting_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let owner = ("alice", "acme");
    let (loopback_only, _) = app
        .mint_limited(owner, &["license:read"], None, &["127.0.0.0/8"])
        .await;
    let (office_only, _) = app
        .mint_limited(owner, &["license:read"], None, &["10.0.0.0/8"])
        .await;
    for (secret, want) in [(&loopback_only, 200), (&office_only, 401)] {
        let authorization = bearer(secret);
        let (status, _, _) = tokio::task::spawn_blocking(move || {
            http_get(allowlisting_addr, "/licenses", authorization.as_deref())
        })
        .await
        .unwrap();
        assert_eq!(status, want, "allowlisted token from 127.0.0.1");
    }
    // Without the address (the first router), an allowlisted token is inactive.
    let (status, _, _) = get(bearer(&loopback_only)).await.unwrap();
    assert_eq!(status, 401, "no address, no allowlisted token");

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

/// A gRPC health check on `addr` presenting `secret`: the code if refused.
async fn health_check(addr: SocketAddr, secret: Option<&str>) -> Result<(), Code> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    client
        .check(request)
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

/// Starts an example binary (built by `cargo test` beside the test binary)
/// serving on `listen` against `app`, and waits until it accepts connections.
async fn start_example(name: &str, app: &TestApp, listen: &str) -> KillOnDrop {
    let examples = std::env::current_exe().unwrap();
    let examples = examples
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples");
    let child = std::process::Command::new(examples.join(name))
        .env("PATD_ADDR", app.addr.to_string())
        .env("LISTEN", listen)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{name} (built by cargo test): {err}"));
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} never listened on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// The README's examples, `crates/patd-client/examples/`, run as a service
/// author runs them: against a real patd, called as clients call them.
async fn the_examples_protect_their_services(app: TestApp) {
    let (http, grpc) = (free_addr(), free_addr());
    let _axum = start_example("axum_service", &app, &http).await;
    let _tonic = start_example("tonic_service", &app, &grpc).await;
    let (reader, _) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let (writer, _) = app.mint(("bob", "acme"), &["license:write"], None).await;
    let (http, grpc): (SocketAddr, SocketAddr) = (http.parse().unwrap(), grpc.parse().unwrap());
    let call = |method: &'static str, path: &'static str, secret: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let authorization = secret.map(|secret| format!("Bearer {secret}"));
            let (status, _, body) = http_call(method, http, path, authorization.as_deref());
            (status, body)
        })
    };
    let some = |secret: &str| Some(secret.to_owned());
    assert_eq!(
        call("GET", "/", None).await.unwrap(),
        (200, "public\n".into())
    );
    assert_eq!(
        call("GET", "/licenses", some(&reader)).await.unwrap(),
        (200, "licenses of acme for alice\n".into())
    );
    assert_eq!(call("GET", "/licenses", None).await.unwrap().0, 401);
    // Per-route scopes: reading needs license:read, adding license:write.
    assert_eq!(
        call("GET", "/licenses", some(&writer)).await.unwrap().0,
        403
    );
    assert_eq!(
        call("POST", "/licenses", some(&reader)).await.unwrap().0,
        403
    );
    let (status, body) = call("POST", "/licenses", some(&writer)).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("license added by bob (token "), "{body}");

    assert_eq!(health_check(grpc, Some(&reader)).await, Ok(()));
    assert_eq!(health_check(grpc, None).await, Err(Code::Unauthenticated));
    assert_eq!(
        health_check(grpc, Some(&writer)).await,
        Err(Code::PermissionDenied)
    );
    let junk = crate::helpers::with_wrong_checksum(&reader);
    assert_eq!(
        health_check(grpc, Some(&junk)).await,
        Err(Code::Unauthenticated)
    );
}

backend_tests!(
    reuse_of_a_rotated_secret_after_its_grace_reaches_patd,
    the_examples_protect_their_services,
    cached_tokens_are_dropped_as_soon_as_they_change,
    junk_never_leaves_the_process,
    a_silent_stream_means_no_cache_and_no_patd_means_no_principal,
    the_layer_protects_axum_and_tonic_services,
);
