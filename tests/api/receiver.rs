//! A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that
//! checks every request's Standard Webhooks signature with its own HMAC (the
//! RustCrypto `hmac`/`sha2` crates, not patd's `ring` code) and answers as the
//! test scripts it to: fail the first N attempts, hang, answer 410, or accept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret every test endpoint signs with (whsec_ + base64 of 32 bytes).
pub const SECRET: &str = "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1vZi0zMi1ieXRlcyE=";

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    /// The signature verified against [`SECRET`].
    pub verified: bool,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub raw: String,
    /// What the receiver answered.
    pub status: u16,
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    Accept,
    /// 500 for the first N requests, then 2xx.
    FailFirst(u64),
    /// Hang (never answer within patd's timeout) on the first N requests.
    HangFirst(u64),
    /// 410 Gone, always.
    Gone,
    /// 503, always.
    Fail,
    /// 2xx after sleeping this long (a slow receiver).
    Slow(Duration),
}

struct Shared {
    script: Mutex<Script>,
    seen: AtomicU64,
    received: Mutex<Vec<Received>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Standard Webhooks verification, written from the specification.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|signature| signature == expected)
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = shared.seen.fetch_add(1, Ordering::SeqCst);
    let script = *shared.script.lock().unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let verified = verify(SECRET, &id, &timestamp, &body, &header("webhook-signature"));
    let raw = String::from_utf8_lossy(&body).into_owned();
    // Recorded on arrival (status 0 until answered): a hung request counts too.
    let index = {
        let mut received = shared.received.lock().unwrap();
        received.push(Received {
            id,
            timestamp: timestamp.parse().unwrap_or(0),
            verified,
            headers: headers.clone(),
            body: serde_json::from_str(&raw).unwrap_or_default(),
            raw,
            status: 0,
        });
        received.len() - 1
    };
    let status = match script {
        Script::Accept => StatusCode::NO_CONTENT,
        Script::FailFirst(count) if n < count => StatusCode::INTERNAL_SERVER_ERROR,
        Script::FailFirst(_) => StatusCode::OK,
        Script::HangFirst(count) if n < count => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
        Script::HangFirst(_) => StatusCode::OK,
        Script::Gone => StatusCode::GONE,
        Script::Fail => StatusCode::SERVICE_UNAVAILABLE,
        Script::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::ACCEPTED
        }
    };
    shared.received.lock().unwrap()[index].status = status.as_u16();
    status
}

impl Receiver {
    pub async fn start(script: Script) -> Receiver {
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            seen: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Receiver {
            addr,
            shared,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook?key=query-secret", self.addr)
    }

    pub fn set(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
        self.shared.seen.store(0, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|received| (200..300).contains(&received.status))
            .collect()
    }

    /// Waits (at most `limit`) until `done` holds for the accepted requests.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let accepted = self.accepted();
            if done(&accepted) {
                return accepted;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver: condition not met within {limit:?}; accepted {} of {} requests: {:#?}",
                accepted.len(),
                self.received().len(),
                accepted
                    .iter()
                    .map(|r| r.body["type"].clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Endpoint configuration for a test receiver, as a `[[webhooks]]` entry.
pub fn endpoint(name: &str, url: &str) -> patd::webhooks::EndpointConfig {
    patd::webhooks::EndpointConfig {
        name: name.to_owned(),
        url: url.to_owned(),
        secret: Some(SECRET.to_owned()),
        timeout: Some("500ms".to_owned()),
        ..Default::default()
    }
}

/// Server settings delivering to `endpoints` with quick retries (50 ms
/// doubling to 200 ms, for `retry_for`), a 2 s lease, 100 ms polls, and
/// reminders `leads` checked every 100 ms.
pub fn settings(
    endpoints: Vec<patd::webhooks::EndpointConfig>,
    retry_for: &str,
    leads: &[&str],
) -> patd::serve::ServerSettings {
    let delivery = patd::webhooks::DeliveryConfig {
        retry_initial: Some("50ms".to_owned()),
        retry_max: Some("200ms".to_owned()),
        retry_for: Some(retry_for.to_owned()),
        lease: Some("2s".to_owned()),
        poll_interval: Some("100ms".to_owned()),
    };
    let leads: Vec<String> = leads.iter().map(|lead| lead.to_string()).collect();
    patd::serve::ServerSettings {
        webhooks: patd::webhooks::WebhookSettings::new(
            endpoints,
            &delivery,
            Some(&leads),
            &Some("100ms".to_owned()),
        )
        .unwrap(),
        ..crate::helpers::TestApp::settings()
    }
}
