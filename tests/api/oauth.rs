//! RFC 7662 introspection over HTTP (`POST /oauth2/introspect` on the
//! `http_listen` port) and `GET /healthz`, against the running server, spoken
//! to byte for byte as an HTTP/1.1 client would.

use std::io::{Read, Write};
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{TestApp, with_wrong_checksum};
use crate::tls::{introspection_for_trusted_only, portal_credential, portal_trusted_settings};

/// An HTTP answer: status, headers (lower-case names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body`.
pub async fn send(addr: SocketAddr, head: String, body: Vec<u8>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let mut request = format!(
            "{head}\r\nHost: patd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        // A server that answers before reading everything may reset the rest.
        let _ = stream.write_all(&request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {response:?}"));
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
    .unwrap()
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

/// `POST /oauth2/introspect` with a form body and extra header lines.
async fn introspect(app: &TestApp, extra: &[&str], form: &str) -> Answer {
    let mut head = format!("POST /oauth2/introspect HTTP/1.1\r\n{FORM}");
    for line in extra {
        head.push_str("\r\n");
        head.push_str(line);
    }
    send(app.http_addr, head, form.as_bytes().to_vec()).await
}

fn token_field(secret: &str) -> String {
    // Percent-encoded as a client library may: `_` as %5F.
    format!("token={}", secret.replace('_', "%5F"))
}

async fn active_tokens_get_the_rfc_7662_members(app: TestApp) {
    let (secret, record) = app
        .mint(("alice", "acme"), &["license:read", "tag:read"], None)
        .await;
    let answer = introspect(
        &app,
        &[],
        &format!("{}&token_type_hint=access_token", token_field(&secret)),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(
        answer.json(),
        json!({
            "active": true,
            "scope": "license:read tag:read",
            "token_type": "Bearer",
            "iat": record.created_at.div_euclid(1_000_000),
            "sub": "alice",
            "jti": record.id,
            "account": "acme",
            "name": "minted",
        }),
        "no exp: the token never expires"
    );
    let expires = patd::domain::clock::now_micros() + 3_600_000_000;
    let (expiring, _) = app
        .mint(("alice", "acme"), &["tag:read"], Some(expires))
        .await;
    let answer = introspect(&app, &[], &format!("token={expiring}")).await;
    assert_eq!(answer.json()["exp"], json!(expires.div_euclid(1_000_000)));
}

async fn inactive_tokens_get_active_false_and_nothing_else(app: TestApp) {
    let (valid, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let soon = patd::domain::clock::now_micros() + 100_000;
    let (expired, _) = app.mint(("alice", "acme"), &["tag:read"], Some(soon)).await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let unknown = {
        let (other, _) = crate::helpers::TestApp::spawn_with(app.backend, TestApp::settings())
            .await
            .unwrap()
            .mint(("alice", "acme"), &["tag:read"], None)
            .await;
        other
    };
    for token in [
        with_wrong_checksum(&valid),
        revoked,
        expired,
        unknown,
        "patd_short".to_owned(),
        "x".repeat(2_000),
    ] {
        let answer = introspect(&app, &[], &format!("token={token}")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, r#"{"active":false}"#, "{token}");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
}

async fn bad_requests_are_refused_with_what_was_wrong(app: TestApp) {
    let (valid, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let error = |answer: &Answer| answer.json()["error"].as_str().unwrap().to_owned();
    let get = send(
        app.http_addr,
        "GET /oauth2/introspect HTTP/1.1".into(),
        vec![],
    )
    .await;
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
    assert_eq!(error(&get), "invalid_request");
    let json_body = send(
        app.http_addr,
        "POST /oauth2/introspect HTTP/1.1\r\nContent-Type: application/json".into(),
        format!(r#"{{"token":"{valid}"}}"#).into_bytes(),
    )
    .await;
    assert_eq!(json_body.status, 415);
    for (form, says) in [
        (format!("token={valid}&token={valid}"), "more than once"),
        (String::new(), "token field is required"),
        ("token=".to_owned(), "token field is required"),
        ("token=%zz".to_owned(), "two hex digits"),
        (
            format!("token={valid}&client_ip=10.0.0.1"),
            "only from trusted callers",
        ),
    ] {
        let answer = introspect(&app, &[], &form).await;
        assert_eq!(answer.status, 400, "{form}");
        assert_eq!(error(&answer), "invalid_request");
        let description = answer.json()["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(description.contains(says), "{form}: {description}");
        assert!(!description.contains(&valid), "the token is never echoed");
    }
    let huge = introspect(&app, &[], &format!("token={}", "a".repeat(100_000))).await;
    assert_eq!(huge.status, 413);
    let long_header = format!("X-Filler: {}", "b".repeat(32 * 1024));
    let answer = introspect(&app, &[&long_header], &format!("token={valid}")).await;
    assert_eq!(answer.status, 431);
    let elsewhere = send(app.http_addr, "GET /nothing HTTP/1.1".into(), vec![]).await;
    assert_eq!(elsewhere.status, 404);
    // Still serving, and the token still answers.
    let answer = introspect(&app, &[], &format!("token={valid}")).await;
    assert_eq!(answer.json()["active"], json!(true));
}

async fn healthz_says_serving(app: TestApp) {
    // SERVING follows the first storage check, just after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = send(app.http_addr, "GET /healthz HTTP/1.1".into(), vec![]).await;
        match (answer.status, answer.body.trim()) {
            (200, "SERVING") => break,
            (503, "NOT_SERVING") if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => panic!("healthz: {other:?}"),
        }
    }
    let post = send(app.http_addr, "POST /healthz HTTP/1.1".into(), vec![]).await;
    assert_eq!(post.status, 405);
}

/// Storage unreachable: not serving, and introspection fails closed with 503,
/// never `active: true` (nor `false`: the token could not be checked).
#[tokio::test]
async fn postgres_storage_down_is_503_never_an_answer() {
    let Some((app, _proxy)) =
        TestApp::spawn_behind_proxy(crate::helpers::ProxyMode::Refuse, TestApp::settings()).await
    else {
        return;
    };
    // A well-formed token that is not in any cache: only storage could tell.
    let token = TestApp::spawn_with(crate::helpers::Backend::Sqlite, TestApp::settings())
        .await
        .unwrap()
        .mint(("alice", "acme"), &["tag:read"], None)
        .await
        .0;
    let health = send(app.http_addr, "GET /healthz HTTP/1.1".into(), vec![]).await;
    assert_eq!((health.status, health.body.trim()), (503, "NOT_SERVING"));
    let answer = introspect(&app, &[], &format!("token={token}")).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.json()["error"], json!("temporarily_unavailable"));
}

fn basic(name: &str, credential: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{credential}"));
    format!("Authorization: Basic {encoded}")
}

async fn only_trusted_callers_when_so_configured(app: TestApp) {
    let (valid, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let form = format!("token={valid}");
    let portal = portal_credential();
    let refused = introspect(&app, &[], &form).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Basic realm="patd", Bearer realm="patd""#)
    );
    assert_eq!(refused.json()["error"], json!("invalid_client"));
    for wrong in [
        basic("someone-else", portal),
        basic("portal", "patdsvc_not-the-credential"),
        format!("Authorization: Bearer {valid}"),
        "Authorization: Basic !!!".to_owned(),
    ] {
        assert_eq!(
            introspect(&app, &[&wrong], &form).await.status,
            401,
            "{wrong}"
        );
    }
    for right in [
        basic("portal", portal),
        format!("Authorization: Bearer {portal}"),
    ] {
        let answer = introspect(&app, &[&right], &form).await;
        assert_eq!(answer.status, 200, "{right}");
        assert_eq!(answer.json()["active"], json!(true));
    }
}

async fn a_trusted_caller_names_the_clients_address(app: TestApp) {
    let (office, _) = app
        .mint_limited(("alice", "acme"), &["tag:read"], None, &["10.0.0.0/8"])
        .await;
    let trusted = basic("portal", portal_credential());
    for (ip, active) in [
        ("10.1.2.3", true),
        ("192.0.2.1", false),
        ("::ffff:10.9.9.9", true),
    ] {
        let form = format!("token={office}&client_ip={}", ip.replace(':', "%3A"));
        let answer = introspect(&app, &[&trusted], &form).await;
        assert_eq!(answer.json()["active"], json!(active), "{ip}");
    }
    // Without an address an allowlisted token is inactive, as over gRPC.
    let answer = introspect(&app, &[&trusted], &format!("token={office}")).await;
    assert_eq!(answer.json()["active"], json!(false));
    let bad = introspect(&app, &[&trusted], &format!("token={office}&client_ip=nope")).await;
    assert_eq!(bad.status, 400);
}

/// Runs Authlib's resource protector (tests/api/oauth/authlib_resource_server.py)
/// against `url` as the client `id`/`secret`, one case per `(token, scopes)`;
/// what the library concluded of each.
async fn authlib(url: String, id: &str, secret: &str, cases: Vec<(String, &str)>) -> Vec<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/oauth/authlib_resource_server.py"
    );
    let (id, secret) = (id.to_owned(), secret.to_owned());
    let input: String = cases
        .iter()
        .map(|(token, scopes)| format!("{token} {scopes}\n"))
        .collect();
    tokio::task::spawn_blocking(move || {
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args([script, &url, &id, &secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "authlib (pip install authlib requests; .ci/run does): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    })
    .await
    .unwrap()
}

/// RFC 7662 as a client library reads it: Authlib authenticates with HTTP
/// Basic and decides requests from patd's answers as they are.
async fn an_rfc_7662_client_library_accepts_the_answers(app: TestApp) {
    let expires = patd::domain::clock::now_micros() + 3_600_000_000;
    let (reader, record) = app
        .mint(("alice", "acme"), &["tag:read", "license:read"], None)
        .await;
    let (expiring, _) = app
        .mint(("bob", "acme"), &["tag:read"], Some(expires))
        .await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["tag:read"]).await;
    let url = format!("http://{}/oauth2/introspect", app.http_addr);
    let cases = vec![
        (reader.clone(), "tag:read"),
        (reader.clone(), "-"),
        (reader.clone(), "license:write"),
        (expiring.clone(), "tag:read"),
        (revoked, "tag:read"),
        ("patd_junk".to_owned(), "-"),
    ];
    let seen = authlib(url.clone(), "portal", portal_credential(), cases).await;
    let verdicts: Vec<&str> = seen
        .iter()
        .map(|case| case["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "allowed",
            "allowed",
            "insufficient_scope",
            "allowed",
            "invalid_token",
            "invalid_token"
        ],
        "{seen:#?}"
    );
    let allowed = &seen[0];
    assert_eq!(allowed["sub"], json!("alice"));
    assert_eq!(allowed["scope"], json!("license:read tag:read"));
    assert_eq!(allowed["token_type"], json!("Bearer"));
    assert_eq!(allowed["jti"], json!(record.id));
    assert_eq!(allowed["expires_at"], json!(0), "no exp: never expires");
    assert_eq!(seen[3]["expires_at"], json!(expires.div_euclid(1_000_000)));
    for case in &seen {
        assert_eq!(case["status"], json!(200), "{case}");
        assert_eq!(case["content_type"], json!("application/json"), "{case}");
        assert_eq!(case["cache_control"], json!("no-store"), "{case}");
    }
    // A wrong client secret: the library hears 401 and allows nothing.
    let refused = authlib(url, "portal", "patdsvc_wrong", vec![(reader, "-")]).await;
    assert_eq!(refused[0]["status"], json!(401), "{refused:?}");
    assert!(
        refused[0]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("failed")
    );
}

backend_tests!(
    active_tokens_get_the_rfc_7662_members,
    inactive_tokens_get_active_false_and_nothing_else,
    bad_requests_are_refused_with_what_was_wrong,
    healthz_says_serving,
    only_trusted_callers_when_so_configured with introspection_for_trusted_only,
    a_trusted_caller_names_the_clients_address with portal_trusted_settings,
    an_rfc_7662_client_library_accepts_the_answers with introspection_for_trusted_only,
);
