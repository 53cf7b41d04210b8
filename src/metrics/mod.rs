//! Counters and histograms every layer records into, and their Prometheus
//! text: calls by service, method and code with latency histograms, why
//! Introspect answered as it did (which never leaves the server otherwise), the
//! token cache, Envoy decisions, unrecorded refusals.
//!
//! No I/O and no knowledge of the layers that record: they pass their facts in
//! (the store keeps its own [`Histogram`]; `serve::metrics` adds the storage
//! gauges and serves it all over HTTP). May use: `proto`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

pub mod webhooks;

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

/// Why the server ended a WatchChanges subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchDisconnect {
    /// It did not read what was sent to it in time.
    Slow,
    /// It fell more than the feed's buffer behind.
    Lagged,
    /// The server is shutting down.
    Shutdown,
}

const WATCH_DISCONNECTS: [(WatchDisconnect, &str); 3] = [
    (WatchDisconnect::Slow, "slow"),
    (WatchDisconnect::Lagged, "lagged"),
    (WatchDisconnect::Shutdown, "shutdown"),
];

/// Where calls to paths patd does not serve are counted.
const OTHER_PATH: &str = "/other/other";

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
    /// Writes the histogram's series `name` with `labels` to `out`.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
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
    Suspended,
    /// Outside the token's IP allowlist, or no client address given for it.
    AddressNotAllowed,
    /// Storage could not be asked: the call failed (closed).
    StorageError,
}

const OUTCOMES: [(IntrospectOutcome, &str); 8] = [
    (IntrospectOutcome::Active, "active"),
    (IntrospectOutcome::Malformed, "malformed"),
    (IntrospectOutcome::Unknown, "unknown"),
    (IntrospectOutcome::Expired, "expired"),
    (IntrospectOutcome::Revoked, "revoked"),
    (IntrospectOutcome::Suspended, "suspended"),
    (IntrospectOutcome::AddressNotAllowed, "address_not_allowed"),
    (IntrospectOutcome::StorageError, "storage_error"),
];

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
    /// Restricted to other resources than the request's.
    ResourceDenied,
    StorageError,
    /// The route requires a scope (or names a resource) that does not exist.
    Misconfigured,
}

const CHECKS: [(Check, &str); 12] = [
    (Check::Allowed, "allowed"),
    (Check::NoToken, "no_token"),
    (Check::Inactive(IntrospectOutcome::Malformed), "malformed"),
    (Check::Inactive(IntrospectOutcome::Unknown), "unknown"),
    (Check::Inactive(IntrospectOutcome::Expired), "expired"),
    (Check::Inactive(IntrospectOutcome::Revoked), "revoked"),
    (Check::Inactive(IntrospectOutcome::Suspended), "suspended"),
    (
        Check::Inactive(IntrospectOutcome::AddressNotAllowed),
        "address_not_allowed",
    ),
    (Check::MissingScopes, "missing_scopes"),
    (Check::ResourceDenied, "resource_denied"),
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
    /// WatchChanges subscriptions open now.
    watch_subscribers: AtomicI64,
    /// Changes (not heartbeats) sent to subscribers.
    watch_changes_sent: AtomicU64,
    watch_disconnects: [AtomicU64; WATCH_DISCONNECTS.len()],
    /// Webhook deliveries, by endpoint.
    pub webhooks: webhooks::WebhookMetrics,
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

    /// A WatchChanges subscription opened (`1`) or closed (`-1`).
    pub fn record_watch_subscribers(&self, delta: i64) {
        self.watch_subscribers.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn record_watch_change_sent(&self) {
        self.watch_changes_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_watch_disconnect(&self, why: WatchDisconnect) {
        let index = WATCH_DISCONNECTS
            .iter()
            .position(|(w, _)| *w == why)
            .unwrap_or(0);
        self.watch_disconnects[index].fetch_add(1, Ordering::Relaxed);
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

    /// This registry's series in the Prometheus text exposition (format
    /// 0.0.4), appended to `out`.
    pub fn render(&self, out: &mut String) {
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
            histogram.write(out, "grpc_server_handling_seconds", labels);
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
        let _ = writeln!(
            out,
            "# HELP patd_watch_subscribers WatchChanges subscriptions open now.\n\
             # TYPE patd_watch_subscribers gauge\n\
             patd_watch_subscribers {}\n\
             # HELP patd_watch_changes_sent_total Changes sent to WatchChanges subscribers (heartbeats not counted).\n\
             # TYPE patd_watch_changes_sent_total counter\n\
             patd_watch_changes_sent_total {}\n\
             # HELP patd_watch_disconnects_total WatchChanges subscriptions the server ended, by reason.\n\
             # TYPE patd_watch_disconnects_total counter",
            self.watch_subscribers.load(Ordering::Relaxed),
            self.watch_changes_sent.load(Ordering::Relaxed),
        );
        for ((_, name), count) in WATCH_DISCONNECTS.iter().zip(&self.watch_disconnects) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "patd_watch_disconnects_total{{reason=\"{name}\"}} {count}"
            );
        }
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
        self.webhooks.render(out);
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
