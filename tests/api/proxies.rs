//! The real proxies in front of an upstream, protected through patd's forward
//! auth: nginx (`auth_request`) and Caddy (`forward_auth`), started on random
//! ports with the configuration the README shows. A tiny upstream in the test
//! records what reaches it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::backend_tests;
use crate::forward_auth::behind_trusted_proxy;
use crate::helpers::{KillOnDrop, TestApp, free_addr, with_wrong_checksum};
use crate::oauth::send;

/// Requests the upstream received: their headers.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        record.lock().unwrap().push(headers);
        async { "hello from upstream\n" }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A proxy binary, or a failed test saying how to get it (CI installs both).
fn require(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "this test needs {binary}: apt-get install {binary}");
}

async fn wait_listening(addr: &str, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{what} never listened on {addr}: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx in front of `upstream`, asking patd's `/auth` for `license:read`.
async fn nginx(app: &TestApp, upstream: SocketAddr, dir: &std::path::Path) -> (String, KillOnDrop) {
    require("nginx");
    let listen = free_addr();
    let config = include_str!("proxies/nginx.conf")
        .replace("{dir}", &dir.display().to_string())
        .replace("{listen}", &listen)
        .replace("{patd}", &app.http_addr.to_string())
        .replace("{upstream}", &upstream.to_string());
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let log = dir.join("error.log");
    let child = Command::new("nginx")
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    wait_listening(&listen, "nginx", &log).await;
    (listen, child)
}

/// Caddy in front of `upstream`, asking patd's `/auth` for `license:read`.
async fn caddy(app: &TestApp, upstream: SocketAddr, dir: &std::path::Path) -> (String, KillOnDrop) {
    require("caddy");
    let listen = free_addr();
    let port = listen.rsplit(':').next().unwrap();
    let config = include_str!("proxies/Caddyfile")
        .replace("{port}", port)
        .replace("{patd}", &app.http_addr.to_string())
        .replace("{upstream}", &upstream.to_string());
    std::fs::write(dir.join("Caddyfile"), config).unwrap();
    let log = dir.join("caddy.log");
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    wait_listening(&listen, "caddy", &log).await;
    (listen, child)
}

/// Through `proxy`: a valid token reaches the upstream with its identity (and
/// a client's own `X-Patd-*` replaced); nothing else reaches it.
async fn protects(app: &TestApp, proxy: &str, seen: &Seen) {
    let proxy: SocketAddr = proxy.parse().unwrap();
    let (valid, record) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let (under, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let get = |headers: Vec<String>| {
        let mut head = "GET /licenses HTTP/1.1".to_owned();
        for line in headers {
            head.push_str("\r\n");
            head.push_str(&line);
        }
        send(proxy, head, Vec::new())
    };
    let bearer = |secret: &str| format!("Authorization: Bearer {secret}");
    let answer = get(vec![
        bearer(&valid),
        "X-Patd-Subject: mallory".to_owned(),
        "X-Patd-Scopes: personalAccessToken:write".to_owned(),
    ])
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "hello from upstream\n", "{:?}", answer.headers);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let header = |name: &str| -> Vec<&str> {
            seen[0]
                .get_all(name)
                .iter()
                .map(|value| value.to_str().unwrap())
                .collect()
        };
        assert_eq!(
            header("x-patd-subject"),
            ["alice"],
            "the client's copy is replaced"
        );
        assert_eq!(header("x-patd-account"), ["acme"]);
        assert_eq!(header("x-patd-token-id"), [record.id.as_str()]);
        assert_eq!(header("x-patd-scopes"), ["license:read"]);
    }
    for (headers, status, challenge) in [
        (
            vec![],
            401,
            r#"Bearer realm="patd", error="invalid_request""#,
        ),
        (
            vec![bearer(&with_wrong_checksum(&valid))],
            401,
            r#"Bearer realm="patd", error="invalid_token""#,
        ),
        (
            vec![bearer(&revoked)],
            401,
            r#"Bearer realm="patd", error="invalid_token""#,
        ),
        (
            vec![bearer(&under)],
            403,
            r#"Bearer realm="patd", error="insufficient_scope", scope="license:read""#,
        ),
    ] {
        let answer = get(headers.clone()).await;
        assert_eq!(answer.status, status, "{headers:?}: {}", answer.body);
        let challenges: Vec<&str> = answer
            .headers
            .iter()
            .filter(|(name, _)| name == "www-authenticate")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(challenges, [challenge], "{headers:?}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no refused request reached the upstream"
    );
}

async fn nginx_protects_an_upstream_through_patd(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, seen) = upstream().await;
    let (proxy, _nginx) = nginx(&app, upstream, dir.path()).await;
    protects(&app, &proxy, &seen).await;
}

async fn caddy_protects_an_upstream_through_patd(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, seen) = upstream().await;
    let (proxy, _caddy) = caddy(&app, upstream, dir.path()).await;
    protects(&app, &proxy, &seen).await;
}

backend_tests!(
    nginx_protects_an_upstream_through_patd with behind_trusted_proxy,
    caddy_protects_an_upstream_through_patd with behind_trusted_proxy,
);
