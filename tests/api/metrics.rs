//! Prometheus metrics over HTTP, scraped and parsed as Prometheus would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

use patd::proto::GetTokenRequest;
use prometheus_parse::{Sample, Scrape, Value};
use tonic::Code;

use crate::backend_tests;
use crate::helpers::{TestApp, authed};

/// A GET of `path` on `addr`: (status line, content type, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

pub async fn scrape(app: &TestApp) -> (Scrape, String) {
    let (status, content_type, body) = http_get(app.metrics_addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    (Scrape::parse(lines).expect("Prometheus text format"), body)
}

/// The value of the sample of `metric` whose labels include all of `labels`.
pub fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(matching.len(), 1, "{metric} {labels:?}: {matching:?}");
    match &matching[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(_) | Value::Summary(_) => panic!("{metric} is not a number"),
    }
}

async fn metrics_count_calls_outcomes_cache_and_tokens(app: TestApp) {
    let (active, _) = app.mint(("alice", "acme"), &["license:read"], None).await;
    let (revoked, _) = app.mint_revoked(("alice", "acme"), &["license:read"]).await;
    let expires_at = patd::domain::clock::now_micros() + 300_000;
    let (expired, _) = app
        .mint(("alice", "acme"), &["license:read"], Some(expires_at))
        .await;
    let unknown = app.format.generate().expose().to_owned();

    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert!(app.is_active(&active).await);
    assert!(app.is_active(&active).await);
    assert!(!app.is_active(&revoked).await);
    assert!(!app.is_active(&expired).await);
    assert!(!app.is_active(&unknown).await);
    assert!(!app.is_active(&unknown).await);
    assert!(!app.is_active("not-a-token").await);
    let denied = app
        .tokens()
        .await
        .get_token(authed(&unknown, GetTokenRequest { id: "x".to_owned() }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    let (scrape, body) = scrape(&app).await;
    for secret in [&active, &revoked, &expired, &unknown] {
        assert!(!body.contains(secret.as_str()), "a secret in the metrics");
    }

    let introspect = [
        ("grpc_service", "pat.v1.IntrospectionService"),
        ("grpc_method", "Introspect"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(
        value(&scrape, "grpc_server_handled_total", &introspect),
        7.0
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "grpc_server_handling_seconds"
                && introspect.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .expect("a latency histogram per method and code");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    assert_eq!(buckets.last().unwrap().count, 7.0, "+Inf holds every call");
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );
    let unauthenticated = [
        ("grpc_service", "pat.v1.TokenService"),
        ("grpc_method", "GetToken"),
        ("grpc_code", "Unauthenticated"),
    ];
    assert_eq!(
        value(&scrape, "grpc_server_handled_total", &unauthenticated),
        1.0
    );

    let outcomes: HashMap<&str, f64> = [
        "active",
        "revoked",
        "expired",
        "unknown",
        "malformed",
        "storage_error",
    ]
    .into_iter()
    .map(|outcome| {
        (
            outcome,
            value(&scrape, "patd_introspect_total", &[("outcome", outcome)]),
        )
    })
    .collect();
    let expected: HashMap<&str, f64> = [
        ("active", 2.0),
        ("revoked", 1.0),
        ("expired", 1.0),
        ("unknown", 2.0),
        ("malformed", 1.0),
        ("storage_error", 0.0),
    ]
    .into();
    assert_eq!(outcomes, expected);

    // active: miss then hit; revoked, expired: miss; unknown: miss then negative
    // hit, and once more as the GetToken bearer (a negative hit).
    let cache = |result| {
        value(
            &scrape,
            "patd_token_cache_lookups_total",
            &[("result", result)],
        )
    };
    assert_eq!(cache("hit"), 1.0);
    assert_eq!(cache("miss"), 4.0);
    assert_eq!(cache("negative_hit"), 2.0);

    assert_eq!(value(&scrape, "patd_tokens", &[("state", "active")]), 1.0);
    assert_eq!(value(&scrape, "patd_tokens", &[("state", "revoked")]), 1.0);
    assert_eq!(value(&scrape, "patd_tokens", &[("state", "expired")]), 1.0);
    assert_eq!(value(&scrape, "patd_storage_reachable", &[]), 1.0);
    let max = value(&scrape, "patd_storage_connections_max", &[]);
    assert_eq!(max, f64::from(app.store.max_connections()));
    let open = value(&scrape, "patd_storage_connections", &[("state", "idle")])
        + value(&scrape, "patd_storage_connections", &[("state", "in_use")]);
    assert!(open >= 1.0 && open <= max, "{open} of {max}");
    assert!(
        body.contains("patd_storage_call_seconds_count "),
        "storage latency histogram"
    );

    let (status, _, _) = http_get(app.metrics_addr, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// Calls, without a credential, to 300 methods nobody serves: they share one
/// `other` series, and the methods patd serves keep series of their own.
async fn made_up_methods_cannot_crowd_out_real_ones(app: TestApp) {
    let channel = app.channel().await;
    for i in 0..300 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path =
            http::uri::PathAndQuery::try_from(format!("/pat.v1.TokenService/Junk{i}")).unwrap();
        let codec = tonic_prost::ProstCodec::<
            patd::proto::ListScopesRequest,
            patd::proto::ListScopesResponse,
        >::default();
        let err = grpc
            .unary(
                tonic::Request::new(patd::proto::ListScopesRequest {}),
                path,
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    }
    let mut tokens = app.tokens().await;
    tokens
        .list_scopes(patd::proto::ListScopesRequest {})
        .await
        .unwrap();
    let (scrape, _) = scrape(&app).await;
    let list_scopes = [
        ("grpc_service", "pat.v1.TokenService"),
        ("grpc_method", "ListScopes"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(
        value(&scrape, "grpc_server_handled_total", &list_scopes),
        1.0
    );
    let other = [
        ("grpc_service", "other"),
        ("grpc_method", "other"),
        ("grpc_code", "Unimplemented"),
    ];
    assert_eq!(value(&scrape, "grpc_server_handled_total", &other), 300.0);
    assert!(
        !scrape.samples.iter().any(|s| s
            .labels
            .get("grpc_method")
            .is_some_and(|m| m.starts_with("Junk"))),
        "no series for a made-up method"
    );
}

backend_tests!(
    metrics_count_calls_outcomes_cache_and_tokens,
    made_up_methods_cannot_crowd_out_real_ones,
);
