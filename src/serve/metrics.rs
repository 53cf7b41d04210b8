//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on a port of its own,
//! the registry's series plus the storage pool, reachability, latency and
//! tokens by state. May use: `metrics`, `store`, `domain`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::domain::clock;
use crate::metrics::Metrics;
use crate::store::{EndpointStatus, Store, TokenCounts};

/// Scrape connections served at once; more wait to be accepted.
const MAX_SCRAPERS: usize = 16;
/// Token counts by state are a full scan: taken at most this often.
const TOKEN_COUNT_MAX_AGE: Duration = Duration::from_secs(15);
/// Webhook queues are counted in storage: at most this often.
const WEBHOOK_QUEUE_MAX_AGE: Duration = Duration::from_secs(2);

/// One gauge of an endpoint's queue, from its status at `now`.
type QueueGauge = fn(&EndpointStatus, i64) -> f64;

/// What a scrape reads: the registry, the store, and the last count of tokens.
struct Exposition {
    metrics: Arc<Metrics>,
    store: Store,
    /// Async: concurrent scrapes wait for one count instead of each scanning.
    token_counts: tokio::sync::Mutex<Option<(Instant, TokenCounts)>>,
    webhook_queues: tokio::sync::Mutex<Option<(Instant, Vec<EndpointStatus>)>>,
}

impl Exposition {
    /// Token counts by state, from storage at most every [`TOKEN_COUNT_MAX_AGE`].
    async fn token_counts(&self) -> Option<TokenCounts> {
        let mut cached = self.token_counts.lock().await;
        if let Some((taken, counts)) = *cached
            && taken.elapsed() < TOKEN_COUNT_MAX_AGE
        {
            return Some(counts);
        }
        match self.store.count_by_state(clock::now_micros()).await {
            Ok(counts) => {
                *cached = Some((Instant::now(), counts));
                Some(counts)
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics: cannot count tokens");
                None
            }
        }
    }

    /// Every webhook endpoint's queue (fleet-wide), from storage at most every
    /// [`WEBHOOK_QUEUE_MAX_AGE`].
    async fn webhook_queues(&self) -> Vec<EndpointStatus> {
        let mut cached = self.webhook_queues.lock().await;
        if let Some((taken, queues)) = &*cached
            && taken.elapsed() < WEBHOOK_QUEUE_MAX_AGE
        {
            return queues.clone();
        }
        match self.store.endpoint_statuses().await {
            Ok(queues) => {
                *cached = Some((Instant::now(), queues.clone()));
                queues
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics: cannot read webhook queues");
                Vec::new()
            }
        }
    }

    fn write_webhook_queues(out: &mut String, queues: &[EndpointStatus]) {
        if queues.is_empty() {
            return;
        }
        let now = clock::now_micros();
        let gauges: [(&str, &str, QueueGauge); 4] = [
            (
                "patd_webhook_pending",
                "Deliveries waiting, by endpoint (all replicas).",
                |q, _| q.pending as f64,
            ),
            (
                "patd_webhook_oldest_pending_age_seconds",
                "Age of the oldest waiting event, by endpoint; 0 when none waits.",
                |q, now| {
                    q.oldest_pending_at
                        .map_or(0.0, |at| (now - at).max(0) as f64 / 1e6)
                },
            ),
            (
                "patd_webhook_dead_letters",
                "Deliveries out of retries, by endpoint (see patd admin webhooks).",
                |q, _| q.dead as f64,
            ),
            (
                "patd_webhook_endpoint_disabled",
                "1 while an endpoint is disabled (its receiver answered 410 Gone).",
                |q, _| f64::from(u8::from(q.disabled_at.is_some())),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for queue in queues {
                let _ = writeln!(
                    out,
                    "{name}{{endpoint=\"{}\"}} {}",
                    queue.name,
                    value(queue, now)
                );
            }
        }
    }

    /// The whole exposition (format 0.0.4).
    async fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.render(&mut out);
        let store = &self.store;
        let pool = store.pool_status();
        let _ = write!(
            out,
            "# HELP patd_storage_connections Storage pool connections by state.\n\
             # TYPE patd_storage_connections gauge\n\
             patd_storage_connections{{state=\"idle\"}} {}\n\
             patd_storage_connections{{state=\"in_use\"}} {}\n\
             # HELP patd_storage_connections_max The storage pool's size limit.\n\
             # TYPE patd_storage_connections_max gauge\n\
             patd_storage_connections_max {}\n\
             # HELP patd_storage_reachable 1 while storage answers the server's checks.\n\
             # TYPE patd_storage_reachable gauge\n\
             patd_storage_reachable {}\n\
             # HELP patd_storage_calls_waited_total Storage calls that found every pooled connection busy and had to wait.\n\
             # TYPE patd_storage_calls_waited_total counter\n\
             patd_storage_calls_waited_total {}\n\
             # HELP patd_storage_call_seconds Storage call latency, including the wait for a connection.\n\
             # TYPE patd_storage_call_seconds histogram\n",
            pool.idle,
            pool.size.saturating_sub(pool.idle),
            pool.max,
            u8::from(store.is_reachable()),
            store.stats().calls_waited.load(Ordering::Relaxed),
        );
        store
            .stats()
            .call_latency
            .write(&mut out, "patd_storage_call_seconds", "");

        if let Some(counts) = self.token_counts().await {
            let _ = write!(
                out,
                "# HELP patd_tokens Stored tokens by state (refreshed at most every {}s).\n\
                 # TYPE patd_tokens gauge\n\
                 patd_tokens{{state=\"active\"}} {}\n\
                 patd_tokens{{state=\"expired\"}} {}\n\
                 patd_tokens{{state=\"revoked\"}} {}\n\
                 patd_tokens{{state=\"suspended\"}} {}\n",
                TOKEN_COUNT_MAX_AGE.as_secs(),
                counts.active,
                counts.expired,
                counts.revoked,
                counts.suspended
            );
        }
        Self::write_webhook_queues(&mut out, &self.webhook_queues().await);
        out
    }
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener` (until the task is dropped).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Store) {
    let exposition = Arc::new(Exposition {
        metrics,
        store,
        token_counts: tokio::sync::Mutex::default(),
        webhook_queues: tokio::sync::Mutex::default(),
    });
    let scrapers = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let permit = scrapers
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exposition = exposition.clone();
        let service = hyper::service::service_fn(move |request| {
            let exposition = exposition.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(&exposition, request).await) }
        });
        tokio::spawn(async move {
            let _permit = permit;
            // One request per connection: a scrape is one GET, and a connection
            // cannot then be held open indefinitely.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
        });
    }
}

async fn respond(
    exposition: &Exposition,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, content_type: &'static str, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match (request.method(), request.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => reply(
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exposition.render().await,
        ),
        (_, "/metrics") => reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => reply(
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_owned(),
        ),
    }
}
