//! Storage faults: Postgres behind a TCP proxy the test controls, and SQLite
//! locked or read-only. patd fails closed, reports NOT_SERVING, and recovers.

use std::time::{Duration, Instant};

use patd::domain::model::Actor;
use patd::proto::{GetTokenRequest, IntrospectRequest, ListScopesRequest};
use patd::store::{DatabaseUrl, Store};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::backend_tests;
use crate::helpers::{self, Backend, ProxyMode, TestApp, WriteLock, authed, health_of};

const SERVICE: &str = "pat.v1.IntrospectionService";

async fn health(app: &TestApp) -> ServingStatus {
    health_of(&app.channel().await, SERVICE).await
}

async fn wait_for_health(app: &TestApp, wanted: ServingStatus, within: Duration) {
    helpers::wait_for_health(&app.channel().await, SERVICE, wanted, within).await;
}

/// Introspect's status for `token`: `Ok(active)` or the error code.
async fn introspect_outcome(app: &TestApp, token: &str) -> Result<bool, Code> {
    let request = IntrospectRequest {
        token: token.to_owned(),
        required_scopes: vec![],
        client_ip: String::new(),
        ..Default::default()
    };
    let answer = app.introspection().await.introspect(request).await;
    answer
        .map(|response| response.into_inner().active)
        .map_err(|status| status.code())
}

#[tokio::test]
async fn postgres_unreachable_at_start_then_serving_when_it_appears() {
    let Some((app, proxy)) =
        TestApp::spawn_behind_proxy(ProxyMode::Refuse, TestApp::settings()).await
    else {
        return;
    };
    assert_eq!(health(&app).await, ServingStatus::NotServing);
    let unknown = app.format.generate().expose().to_owned();
    assert_eq!(
        introspect_outcome(&app, &unknown).await,
        Err(Code::Unavailable),
        "fail closed"
    );
    let scopes = app.tokens().await.list_scopes(ListScopesRequest {}).await;
    assert!(scopes.is_ok(), "what needs no storage still works");

    proxy.set(ProxyMode::Up);
    wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(10)).await;
    // The server applied the migrations itself once Postgres answered.
    let direct = TestApp::connect_store(&app.database_url).await;
    let (secret, _) = mint_with(&direct, &app).await;
    assert_eq!(introspect_outcome(&app, &secret).await, Ok(true));
}

async fn mint_with(store: &Store, app: &TestApp) -> (String, patd::domain::model::TokenRecord) {
    let scopes = patd::domain::model::parse_scopes(&["tag:read".to_owned()]).unwrap();
    let spec = patd::domain::model::TokenSpec {
        name: "faults",
        scopes,
        expires_at: None,
        allowed_cidrs: Default::default(),
        description: String::new(),
        labels: Default::default(),
        resources: Default::default(),
    };
    let owner = patd::domain::model::Owner::new("alice", "acme").unwrap();
    let (new, secret) = spec
        .issue(&app.format, owner, patd::domain::clock::now_micros())
        .unwrap();
    store.insert(&new, &Actor::operator()).await.unwrap();
    (secret.expose().to_owned(), new.record)
}

#[tokio::test]
async fn postgres_lost_while_running_fails_closed_and_recovers() {
    let Some((app, proxy)) = TestApp::spawn_behind_proxy(ProxyMode::Up, TestApp::settings()).await
    else {
        return;
    };
    wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(5)).await;
    let direct = TestApp::connect_store(&app.database_url).await;
    let (secret, record) = mint_with(&direct, &app).await;
    let manager = app.manager("alice", &[]).await;
    assert_eq!(
        introspect_outcome(&app, &secret).await,
        Ok(true),
        "now cached"
    );

    proxy.set(ProxyMode::Refuse);
    let lost = Instant::now();
    // The cache answers for at most one poll interval (100 ms in tests) plus 1 s
    // after the last successful poll; then never `active` unverified.
    assert_cached_answers_stop(&app, &secret, lost).await;
    wait_for_health(&app, ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(
        health_of(&app.channel().await, patd::serve::LIVENESS_SERVICE).await,
        ServingStatus::Serving,
        "a storage outage must not fail the liveness probe"
    );
    let addr = app.addr.to_string();
    let probe = helpers::patd_health(&addr, "").await;
    assert_eq!(
        probe.status.code(),
        Some(7),
        "`patd health` fails on NOT_SERVING"
    );
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "NOT_SERVING");
    let alive = helpers::patd_health(&addr, patd::serve::LIVENESS_SERVICE).await;
    assert!(alive.status.success(), "liveness stays SERVING");
    let started = Instant::now();
    let get = app
        .tokens()
        .await
        .get_token(authed(
            &manager,
            GetTokenRequest {
                id: record.id.clone(),
            },
        ))
        .await;
    assert_eq!(get.unwrap_err().code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fails, does not hang"
    );

    proxy.set(ProxyMode::Up);
    wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while introspect_outcome(&app, &secret).await != Ok(true) {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls Introspect of a cached `secret` after storage was lost at `lost`: it
/// may answer from the cache only within the trust window, then must be
/// UNAVAILABLE.
async fn assert_cached_answers_stop(app: &TestApp, secret: &str, lost: Instant) {
    loop {
        let asked = Instant::now();
        match introspect_outcome(app, secret).await {
            Err(Code::Unavailable) => break,
            Ok(true) => {
                let age = asked.duration_since(lost);
                assert!(
                    age < Duration::from_millis(1_300),
                    "answered from cache {age:?} after the loss"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn postgres_that_hangs_times_out_as_unavailable() {
    let Some((app, proxy)) = TestApp::spawn_behind_proxy(ProxyMode::Up, TestApp::settings()).await
    else {
        return;
    };
    wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(5)).await;
    let manager = app.manager("alice", &["tag:read"]).await;
    assert_eq!(introspect_outcome(&app, &manager).await, Ok(true));
    proxy.set(ProxyMode::Blackhole);
    // Connections stay open and silent.
    let started = Instant::now();
    let status = app.create_tag_reader(&manager, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_cached_answers_stop(&app, &manager, started).await;
    wait_for_health(&app, ServingStatus::NotServing, Duration::from_secs(8)).await;

    proxy.set(ProxyMode::Up);
    wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while introspect_outcome(&app, &manager).await != Ok(true) {
        assert!(Instant::now() < deadline, "never recovered from the hang");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_write_lock_held_too_long_is_unavailable_not_a_hang(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    app.introspect(&manager, &[]).await;
    let lock = WriteLock::take(&app).await;
    let started = Instant::now();
    let status = app.create_tag_reader(&manager, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("did not answer in time"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "storage timeout is 2 s in tests"
    );
    lock.release().await;
    assert!(
        app.introspect(&manager, &[]).await.active,
        "nothing was corrupted"
    );
}

#[tokio::test]
async fn sqlite_read_only_database_serves_reads_and_refuses_writes_clearly() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, TestApp::settings()).await else {
        unreachable!("SQLite is always available");
    };
    let manager = app.manager("alice", &["tag:read"]).await;
    let read_only = DatabaseUrl::new(format!("{}?mode=ro", app.database_url.expose()));
    let store = Store::connect(&TestApp::store_options(&read_only), false)
        .await
        .unwrap();
    let mut settings = TestApp::settings();
    settings.migrate = false;
    let ro_app = TestApp::spawn_with_store(Backend::Sqlite, store, read_only, settings).await;
    assert!(ro_app.introspect(&manager, &[]).await.active, "reads work");
    let status = ro_app.create_tag_reader(&manager, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "storage is read-only");
}

backend_tests!(a_write_lock_held_too_long_is_unavailable_not_a_hang);

/// A full disk, simulated with a file-size limit on a real `patd serve`: writes
/// fail with a clear status, reads go on, the server keeps running and nothing
/// already stored is lost.
#[tokio::test]
async fn sqlite_full_disk_refuses_writes_clearly_and_recovers_by_itself() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, TestApp::settings()).await else {
        unreachable!("SQLite is always available");
    };
    let manager = app.manager("alice", &["tag:read"]).await;
    let path = app
        .database_url
        .expose()
        .trim_start_matches("sqlite://")
        .to_owned();
    let largest = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{path}{suffix}")).ok())
        .map(|meta| meta.len())
        .max()
        .unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Killed on drop, so that a failed assertion leaves no server behind.
    let mut server = helpers::KillOnDrop(
        std::process::Command::new("prlimit")
            // A soft limit, which the test raises again below (a hard one could
            // only be raised with CAP_SYS_RESOURCE).
            .arg(format!("--fsize={}:unlimited", largest + 64 * 1024))
            .arg(env!("CARGO_BIN_EXE_patd"))
            .args(["serve", "--log", "error", "--listen", &addr.to_string()])
            .args(["--database-url", app.database_url.expose()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prlimit (util-linux) runs patd"),
    );
    let channel = loop {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut tokens = patd::proto::token_service_client::TokenServiceClient::new(channel.clone());
    let mut created = Vec::new();
    let refusal = loop {
        assert!(
            created.len() < 5_000,
            "the file-size limit was never reached"
        );
        let request = patd::proto::CreateTokenRequest {
            name: format!("fill {}", created.len()),
            scopes: vec!["tag:read".to_owned()],
            expires_at: None,
            allowed_cidrs: vec![],
            ..Default::default()
        };
        match tokens.create_token(authed(&manager, request)).await {
            Ok(answer) => created.push(answer.into_inner().secret),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(
        ["storage is full", "storage had an I/O error"].contains(&refusal.message()),
        "{}",
        refusal.message()
    );
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    // Every later write is refused the same way (no connection is left stuck
    // in the failed transaction, which answered INTERNAL before) ...
    let fill = |n: usize| patd::proto::CreateTokenRequest {
        name: format!("after {n}"),
        scopes: vec!["tag:read".to_owned()],
        expires_at: None,
        allowed_cidrs: vec![],
        ..Default::default()
    };
    for n in 0..10 {
        let status = tokens
            .create_token(authed(&manager, fill(n)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let rotate = patd::proto::RotateSelfRequest::default();
    let status = tokens
        .rotate_self(authed(&created[0], rotate))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // ... and once there is room again, writes work by themselves.
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &server.id().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(raised.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        match tokens.create_token(authed(&manager, fill(99))).await {
            Ok(answer) => break answer.into_inner().secret,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "writes never resumed: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let rotated = tokens
        .rotate_self(authed(
            &created[0],
            patd::proto::RotateSelfRequest::default(),
        ))
        .await
        .expect("rotation works again")
        .into_inner();
    created[0] = rotated.secret;
    created.push(recovered);
    let mut introspection =
        patd::proto::introspection_service_client::IntrospectionServiceClient::new(channel);
    for secret in created.iter().chain([&manager]) {
        let request = IntrospectRequest {
            token: secret.clone(),
            required_scopes: vec![],
            client_ip: String::new(),
            ..Default::default()
        };
        let answer = introspection
            .introspect(request)
            .await
            .unwrap()
            .into_inner();
        assert!(
            answer.active,
            "a token stored before the disk filled is intact"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
