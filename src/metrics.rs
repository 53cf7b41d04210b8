//! Prometheus metrics, served as text on a port of their own (`metrics_listen`):
//! calls by service, method and code with latency histograms, why Introspect
//! answered as it did (which never leaves the server otherwise), the token cache,
//! the storage pool, and tokens by state.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::clock;
use crate::store::{Store, TokenCounts};
use crate::verifier::Inactive;

/// Upper bounds of the latency buckets, in microseconds (100 µs to 10 s).
const BUCKETS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// The methods this server answers, as `/package.Service/Method`, from the
/// descriptors it serves by reflection (Envoy's is not among those). Only these
/// get series of their own: any other path, which anyone can invent, counts as
/// `other`, so made-up paths can neither grow memory nor crowd out real ones.
fn served_paths() -> &'static HashSet<String> {
    static PATHS: LazyLock<HashSet<String>> = LazyLock::new(|| {
        use prost::Message;
        let sets = [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut paths: HashSet<String> = sets
            .iter()
            .flat_map(|set| {
                prost_types::FileDescriptorSet::decode(*set)
                    .expect("compiled-in descriptors decode")
                    .file
            })
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service.into_iter().flat_map(move |service| {
                    let prefix = format!("/{package}.{}/", service.name());
                    service
                        .method
                        .into_iter()
                        .map(move |method| format!("{prefix}{}", method.name()))
                })
            })
            .collect();
        paths.insert("/envoy.service.auth.v3.Authorization/Check".to_owned());
        paths
    });
    &PATHS
}

/// Standard gRPC code names, as go-grpc-prometheus and OpenTelemetry label them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The call shape, as go-grpc-prometheus labels it.
fn grpc_type(path: &str) -> &'static str {
    if path.ends_with("/ServerReflectionInfo") {
        "bidi_stream"
    } else if path == "/grpc.health.v1.Health/Watch" {
        "server_stream"
    } else {
        "unary"
    }
}

/// Scrape connections served at once; more wait to be accepted.
const MAX_SCRAPERS: usize = 16;

/// Where calls beyond [`MAX_CALL_SERIES`] paths are counted.
const OTHER_PATH: &str = "/other/other";

/// Token counts by state are a full scan: taken at most this often.
const TOKEN_COUNT_MAX_AGE: Duration = Duration::from_secs(15);

/// A latency histogram with Prometheus' cumulative buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// `name_bucket`, `name_sum` and `name_count` lines; `labels` is empty or
    /// `key="value",…` without braces.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS_MICROS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |&micros| seconds(micros));
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = seconds(self.sum_micros.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

fn seconds(micros: u64) -> String {
    format!("{}", micros as f64 / 1e6)
}

/// Why Introspect answered as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntrospectOutcome {
    Active,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    /// Outside the token's IP allowlist, or no client address given for it.
    AddressNotAllowed,
    /// Storage could not be asked: the call failed (closed).
    StorageError,
}

const OUTCOMES: [(IntrospectOutcome, &str); 7] = [
    (IntrospectOutcome::Active, "active"),
    (IntrospectOutcome::Malformed, "malformed"),
    (IntrospectOutcome::Unknown, "unknown"),
    (IntrospectOutcome::Expired, "expired"),
    (IntrospectOutcome::Revoked, "revoked"),
    (IntrospectOutcome::AddressNotAllowed, "address_not_allowed"),
    (IntrospectOutcome::StorageError, "storage_error"),
];

impl From<Inactive> for IntrospectOutcome {
    fn from(inactive: Inactive) -> IntrospectOutcome {
        match inactive {
            Inactive::Malformed => IntrospectOutcome::Malformed,
            Inactive::Unknown => IntrospectOutcome::Unknown,
            Inactive::Expired => IntrospectOutcome::Expired,
            Inactive::Revoked => IntrospectOutcome::Revoked,
            Inactive::AddressNotAllowed => IntrospectOutcome::AddressNotAllowed,
        }
    }
}

/// How a token was found in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLookup {
    /// A token the cache holds.
    Hit,
    /// A secret the cache remembers as unknown.
    NegativeHit,
    /// Not cached: storage was asked.
    Miss,
}

const CACHE_LOOKUPS: [(CacheLookup, &str); 3] = [
    (CacheLookup::Hit, "hit"),
    (CacheLookup::NegativeHit, "negative_hit"),
    (CacheLookup::Miss, "miss"),
];

/// What Envoy's `Check` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Allowed,
    /// No `authorization` header, or not `Bearer <token>`.
    NoToken,
    Inactive(IntrospectOutcome),
    MissingScopes,
    StorageError,
    /// The route requires a scope that does not exist.
    Misconfigured,
}

const CHECKS: [(Check, &str); 10] = [
    (Check::Allowed, "allowed"),
    (Check::NoToken, "no_token"),
    (Check::Inactive(IntrospectOutcome::Malformed), "malformed"),
    (Check::Inactive(IntrospectOutcome::Unknown), "unknown"),
    (Check::Inactive(IntrospectOutcome::Expired), "expired"),
    (Check::Inactive(IntrospectOutcome::Revoked), "revoked"),
    (
        Check::Inactive(IntrospectOutcome::AddressNotAllowed),
        "address_not_allowed",
    ),
    (Check::MissingScopes, "missing_scopes"),
    (Check::StorageError, "storage_error"),
    (Check::Misconfigured, "misconfigured"),
];

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// One method's calls, a latency histogram per status code.
#[derive(Debug, Default)]
struct CallSeries {
    by_code: [Histogram; CODES],
}

/// Counters shared by the server's layers and handlers (one set per server).
#[derive(Debug, Default)]
pub struct Metrics {
    /// By path (`/package.Service/Method`): looked up by `&str`, so that recording
    /// a call allocates nothing.
    calls: RwLock<HashMap<String, Arc<CallSeries>>>,
    introspect: [AtomicU64; OUTCOMES.len()],
    cache: [AtomicU64; CACHE_LOOKUPS.len()],
    checks: [AtomicU64; CHECKS.len()],
    /// Refused management calls the audit trail's budgets left unrecorded.
    unrecorded_refusals: AtomicU64,
    /// Async: concurrent scrapes wait for one count instead of each scanning.
    token_counts: tokio::sync::Mutex<Option<(Instant, TokenCounts)>>,
}

impl Metrics {
    /// Records a finished call to `path` (`/package.Service/Method`).
    pub fn record_call(&self, path: &str, code: tonic::Code, latency: Duration) {
        let code = (code as usize).min(CODES - 1);
        if let Some(series) = self.calls.read().expect("lock poisoned").get(path) {
            series.by_code[code].observe(latency);
            return;
        }
        let mut calls = self.calls.write().expect("lock poisoned");
        let path = if served_paths().contains(path) {
            path
        } else {
            OTHER_PATH
        };
        let series = calls.entry(path.to_owned()).or_default();
        series.by_code[code].observe(latency);
    }

    /// Calls to `path` that ended with `code` so far.
    pub fn handled(&self, path: &str, code: tonic::Code) -> u64 {
        let calls = self.calls.read().expect("lock poisoned");
        calls.get(path).map_or(0, |series| {
            series.by_code[(code as usize).min(CODES - 1)].count()
        })
    }

    pub fn record_introspect(&self, outcome: IntrospectOutcome) {
        let index = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.introspect[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_check(&self, check: Check) {
        // Outcomes that are not a decision on a token's state count as errors.
        let index = CHECKS
            .iter()
            .position(|(c, _)| *c == check)
            .unwrap_or(CHECKS.len() - 2);
        self.checks[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_unrecorded_refusal(&self) {
        self.unrecorded_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_cache(&self, lookup: CacheLookup) {
        let index = CACHE_LOOKUPS
            .iter()
            .position(|(l, _)| *l == lookup)
            .unwrap_or(0);
        self.cache[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Token counts by state, from storage at most every [`TOKEN_COUNT_MAX_AGE`].
    async fn token_counts(&self, store: &Store) -> Option<TokenCounts> {
        let mut cached = self.token_counts.lock().await;
        if let Some((taken, counts)) = *cached
            && taken.elapsed() < TOKEN_COUNT_MAX_AGE
        {
            return Some(counts);
        }
        match store.count_by_state(clock::now_micros()).await {
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

    /// The Prometheus text exposition (format 0.0.4).
    pub async fn render(&self, store: &Store) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str(
            "# HELP grpc_server_handled_total Calls completed, by service, method and status code.\n\
             # TYPE grpc_server_handled_total counter\n",
        );
        let mut paths: Vec<(String, Arc<CallSeries>)> = self
            .calls
            .read()
            .expect("lock poisoned")
            .iter()
            .map(|(path, series)| (path.clone(), series.clone()))
            .collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        // Every (method, code) pair that has seen a call, with its labels.
        let mut calls: Vec<(String, &Histogram, u64)> = Vec::new();
        for (path, series) in &paths {
            let (service, method) = path
                .strip_prefix('/')
                .and_then(|path| path.split_once('/'))
                .unwrap_or(("other", "other"));
            for (code, histogram) in series.by_code.iter().enumerate() {
                let count = histogram.count();
                if count > 0 {
                    let labels = format!(
                        "grpc_type=\"{}\",grpc_service=\"{}\",grpc_method=\"{}\",grpc_code=\"{}\"",
                        grpc_type(path),
                        escape(service),
                        escape(method),
                        code_name(tonic::Code::from_i32(code as i32))
                    );
                    calls.push((labels, histogram, count));
                }
            }
        }
        for (labels, _, count) in &calls {
            let _ = writeln!(out, "grpc_server_handled_total{{{labels}}} {count}");
        }
        out.push_str(
            "# HELP grpc_server_handling_seconds Call latency in the server, by service, method and status code.\n\
             # TYPE grpc_server_handling_seconds histogram\n",
        );
        for (labels, histogram, _) in &calls {
            histogram.write(&mut out, "grpc_server_handling_seconds", labels);
        }

        out.push_str(
            "# HELP patd_introspect_total Introspect answers by outcome (inactive reasons are never sent to callers).\n\
             # TYPE patd_introspect_total counter\n",
        );
        for ((_, name), count) in OUTCOMES.iter().zip(&self.introspect) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "patd_introspect_total{{outcome=\"{name}\"}} {count}");
        }
        out.push_str(
            "# HELP patd_ext_authz_checks_total Envoy ext_authz decisions (denials by reason).\n\
             # TYPE patd_ext_authz_checks_total counter\n",
        );
        for ((_, name), count) in CHECKS.iter().zip(&self.checks) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "patd_ext_authz_checks_total{{decision=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP patd_audit_refusals_unrecorded_total Refused management calls not written to the audit trail (over its budgets).\n\
             # TYPE patd_audit_refusals_unrecorded_total counter\n\
             patd_audit_refusals_unrecorded_total {}",
            self.unrecorded_refusals.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP patd_token_cache_lookups_total Token cache lookups by result.\n\
             # TYPE patd_token_cache_lookups_total counter\n",
        );
        for ((_, name), count) in CACHE_LOOKUPS.iter().zip(&self.cache) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "patd_token_cache_lookups_total{{result=\"{name}\"}} {count}"
            );
        }

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

        if let Some(counts) = self.token_counts(store).await {
            let _ = write!(
                out,
                "# HELP patd_tokens Stored tokens by state (refreshed at most every {}s).\n\
                 # TYPE patd_tokens gauge\n\
                 patd_tokens{{state=\"active\"}} {}\n\
                 patd_tokens{{state=\"expired\"}} {}\n\
                 patd_tokens{{state=\"revoked\"}} {}\n",
                TOKEN_COUNT_MAX_AGE.as_secs(),
                counts.active,
                counts.expired,
                counts.revoked
            );
        }
        out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener` (until the task is dropped).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Store) {
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
        let metrics = metrics.clone();
        let store = store.clone();
        let service = hyper::service::service_fn(move |request| {
            let metrics = metrics.clone();
            let store = store.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &store, request).await) }
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
    metrics: &Metrics,
    store: &Store,
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
            metrics.render(store).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let histogram = Histogram::default();
        for micros in [50, 100, 101, 3_000, 20_000_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let mut out = String::new();
        histogram.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"0.00025\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 5\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 20.003251\n"), "{out}");
    }

    #[test]
    fn only_served_methods_get_series_of_their_own() {
        let metrics = Metrics::default();
        for i in 0..300 {
            for path in [
                format!("/made.up.Service{i}/Method"),
                format!("/pat.v1.TokenService/Junk{i}"),
            ] {
                metrics.record_call(&path, tonic::Code::Unimplemented, Duration::ZERO);
            }
        }
        assert_eq!(
            metrics.calls.read().unwrap().len(),
            1,
            "made-up paths share one series"
        );
        assert_eq!(metrics.handled(OTHER_PATH, tonic::Code::Unimplemented), 600);
        for path in [
            "/pat.v1.TokenService/CreateToken",
            "/pat.v1.IntrospectionService/Introspect",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/envoy.service.auth.v3.Authorization/Check",
        ] {
            metrics.record_call(path, tonic::Code::Ok, Duration::ZERO);
            assert_eq!(metrics.handled(path, tonic::Code::Ok), 1, "{path}");
        }
        assert!(served_paths().len() < 40, "{:?}", served_paths());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
