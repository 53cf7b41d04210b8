//! The HTTP listener itself, whatever the endpoint: drained like gRPC at
//! shutdown, HTTP/2 for clients that speak it (h2c), and slow clients cut off.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend_tests;
use crate::helpers::TestApp;

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

/// Reads one HTTP/1.1 answer (head and a Content-Length body) off `stream`.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if seen.len() >= end + 4 + length {
                return String::from_utf8_lossy(&seen[..end + 4 + length]).into_owned();
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(read > 0, "closed before answering: {seen:?}");
        seen.extend_from_slice(&chunk[..read]);
    }
}

/// True when the server closes `stream` within `within`.
async fn closes(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut chunk)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn shutdown_finishes_requests_in_progress_and_closes_idle_connections(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let addr = app.http_addr;
    let form = format!("token={secret}");
    let request = |body: &str| {
        format!(
            "POST /oauth2/introspect HTTP/1.1\r\nHost: patd\r\n{FORM}\r\nContent-Length: {}\r\n\r\n{body}",
            form.len()
        )
    };
    // One kept-alive connection that has been answered and sits idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(request(&form).as_bytes()).await.unwrap();
    let first = read_answer(&mut idle).await;
    assert!(first.contains(r#""active":true"#), "{first}");
    // One whose request has begun (head sent, body not yet) when shutdown does.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(request("").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = tokio::spawn(app.stop());
    assert!(
        closes(&mut idle, Duration::from_secs(5)).await,
        "an idle connection is closed when shutdown begins"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the server waits for the request in progress"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    busy.write_all(form.as_bytes()).await.unwrap();
    let answer = read_answer(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""active":true"#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "the last answer says the connection ends: {answer}"
    );
    assert!(closes(&mut busy, Duration::from_secs(5)).await);
    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping).await;
    assert!(stopped.expect("stops once drained").unwrap().is_ok());
}

/// `curl` with the given arguments; its standard output.
async fn curl(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed (.ci/run installs it)");
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap()
}

async fn http2_clients_are_served_with_prior_knowledge(app: TestApp) {
    let (secret, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let base = format!("http://{}", app.http_addr);
    let introspected = curl(vec![
        "--http2-prior-knowledge".into(),
        "-w".into(),
        "\n%{http_version} %{http_code}".into(),
        "-d".into(),
        format!("token={secret}"),
        format!("{base}/oauth2/introspect"),
    ])
    .await;
    let (body, status) = introspected.rsplit_once('\n').unwrap();
    assert_eq!(status, "2 200", "{introspected}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "alice");
    let auth = curl(vec![
        "--http2-prior-knowledge".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_version} %{http_code}".into(),
        "-H".into(),
        format!("Authorization: Bearer {secret}"),
        format!("{base}/auth?scope=tag:read"),
    ])
    .await;
    assert_eq!(auth, "2 200");
    // SERVING follows the first storage check, just after start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = curl(vec![
            "--http2-prior-knowledge".into(),
            "-w".into(),
            " %{http_version}".into(),
            format!("{base}/healthz"),
        ])
        .await;
        match health.split_whitespace().collect::<Vec<_>>()[..] {
            ["SERVING", "2"] => break,
            ["NOT_SERVING", "2"] if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("healthz over HTTP/2: {health}"),
        }
    }
}

async fn slow_clients_are_cut_off(app: TestApp) {
    let addr = app.http_addr;
    let started = Instant::now();
    // Half a head, then nothing: the connection is closed.
    let slow_head = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /oauth2/introspect HTTP/1.1\r\nHost: patd\r\n")
            .await
            .unwrap();
        assert!(
            closes(&mut stream, Duration::from_secs(15)).await,
            "a head that never ends is cut off"
        );
    };
    // A whole head, half a body, then nothing: 408.
    let slow_body = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /oauth2/introspect HTTP/1.1\r\nHost: patd\r\n{FORM}\r\nContent-Length: 100\r\n\r\ntoken="
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer));
        let _ = read.await.expect("a body that never ends is cut off");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    };
    tokio::join!(slow_head, slow_body);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "the clients had the whole timeout"
    );
    // And the port still serves.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: patd\r\n\r\n")
        .await
        .unwrap();
    let health = read_answer(&mut fresh).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

backend_tests!(
    shutdown_finishes_requests_in_progress_and_closes_idle_connections,
    http2_clients_are_served_with_prior_knowledge,
);

/// Not storage-bound: once is enough.
#[tokio::test]
async fn sqlite_slow_clients_are_cut_off() {
    let app = TestApp::spawn_with(crate::helpers::Backend::Sqlite, TestApp::settings())
        .await
        .unwrap();
    slow_clients_are_cut_off(app).await;
}
