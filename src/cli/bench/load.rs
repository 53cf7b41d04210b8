//! The load itself: pre-encoded gRPC frames over raw HTTP/2 connections, and
//! what each call was expected to answer; latencies and errors counted.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use patd::proto::{IntrospectRequest, IntrospectResponse, ListTokensRequest, ListTokensResponse};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::*;

/// A pseudo-random sequence for choosing tokens (xorshift64*; not for secrets).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(super) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// What a call's answer must say.
#[derive(Clone, Copy)]
pub(super) enum Expect {
    Active(bool),
    Serving,
    /// A ListTokens page of this many tokens.
    Listed(usize),
}

/// One call: the pre-encoded gRPC frame and the answer it must get.
#[derive(Clone)]
pub(super) struct Call {
    pub(super) frame: Bytes,
    pub(super) expect: Expect,
    /// `authorization` metadata, for management calls.
    pub(super) authorization: Option<http::HeaderValue>,
}

pub(super) fn grpc_frame(message: &impl Message) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(message.encoded_len() as u32);
    message.encode(&mut frame).expect("BytesMut grows");
    frame.freeze()
}

pub(super) fn introspect_call(token: String, active: bool) -> Call {
    Call {
        frame: grpc_frame(&IntrospectRequest {
            token,
            required_scopes: vec!["license:read".to_owned()],
            ..IntrospectRequest::default()
        }),
        expect: Expect::Active(active),
        authorization: None,
    }
}

/// An Introspect naming the resource the client acts on (the bench tokens
/// are unrestricted, so the answer is active and not denied).
fn resource_call(token: String) -> Call {
    Call {
        frame: grpc_frame(&IntrospectRequest {
            token,
            required_scopes: vec!["license:read".to_owned()],
            resource: "product:PR-7".to_owned(),
            ..IntrospectRequest::default()
        }),
        expect: Expect::Active(true),
        authorization: None,
    }
}

/// The first ListTokens page (50) of `user-0`, as its manager, with `selector`;
/// expected to hold the seeded tokens that match (computed from the seed).
pub(super) fn list_call(
    manager: &str,
    mix: Mix,
    selector: &str,
    fixture: &Fixture,
    tokens: u64,
) -> Call {
    let parsed = patd::domain::labels::LabelSelector::parse(selector).expect("a bench selector");
    let matching = (0..tokens)
        .step_by(fixture.owners as usize)
        .filter(|index| parsed.matches(&bench_labels(*index, fixture.owners)))
        .count();
    let order = if mix == Mix::ListEnvByName {
        patd::proto::TokenOrder::NameAsc
    } else {
        patd::proto::TokenOrder::CreatedDesc
    };
    // The manager itself has no labels: listed only without a selector.
    let matching = matching + usize::from(selector.is_empty());
    Call {
        frame: grpc_frame(&ListTokensRequest {
            page_size: 50,
            label_selector: selector.to_owned(),
            order_by: order.into(),
            ..ListTokensRequest::default()
        }),
        expect: Expect::Listed(matching.min(50)),
        authorization: Some(format!("Bearer {manager}").parse().expect("ASCII")),
    }
}

/// Pre-built calls for `mix`, drawn from at random: the hot set, every active
/// token (cold), every revoked token, 10,000 never-issued tokens, or 1,000 junk.
pub(super) fn calls_for(
    mix: Mix,
    fixture: &Fixture,
    unknown: &Fixture,
    tokens: u64,
    hot_set: u64,
) -> Vec<Call> {
    let active = tokens - tokens / REVOKED_EVERY;
    match mix {
        Mix::Hot => (0..hot_set.min(active))
            .map(|n| introspect_call(fixture.secret(active_index(n)), true))
            .collect(),
        Mix::HotResource => (0..hot_set.min(active))
            .map(|n| resource_call(fixture.secret(active_index(n))))
            .collect(),
        Mix::List | Mix::ListTeam | Mix::ListEnv | Mix::ListCanary | Mix::ListEnvByName => {
            unreachable!("ListTokens mixes are built by list_call")
        }
        Mix::Cold => (0..active)
            .map(|n| introspect_call(fixture.secret(active_index(n)), true))
            .collect(),
        Mix::Revoked => (0..tokens / REVOKED_EVERY)
            .map(|n| introspect_call(fixture.secret(n * REVOKED_EVERY + REVOKED_EVERY - 1), false))
            .collect(),
        Mix::Unknown => (0..UNKNOWN_SET)
            .map(|index| introspect_call(unknown.secret(index), false))
            .collect(),
        Mix::Junk => (0..1_000u64)
            .map(|index| {
                let valid = fixture.secret(index);
                let junk = match index % 5 {
                    // A different last character: the checksum no longer matches.
                    0 => {
                        let last = if valid.ends_with('x') { "y" } else { "x" };
                        format!("{}{last}", &valid[..valid.len() - 1])
                    }
                    1 => valid.replacen(fixture.format.prefix(), "ghp_", 1),
                    2 => valid[..20].to_owned(),
                    3 => String::new(),
                    _ => "y".repeat(1_024),
                };
                introspect_call(junk, false)
            })
            .collect(),
    }
}

pub(super) fn check_calls() -> Vec<Call> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    vec![Call {
        frame: grpc_frame(&request),
        expect: Expect::Serving,
        authorization: None,
    }]
}

#[derive(Default)]
pub(super) struct LoadResult {
    pub(super) ok: u64,
    pub(super) errors: u64,
    /// Answers that contradict the fixture (e.g. a revoked token active).
    pub(super) wrong: u64,
    pub(super) latencies_ns: Vec<u64>,
    /// How long the failed calls took (a shed call should fail fast).
    pub(super) error_latencies_ns: Vec<u64>,
    pub(super) elapsed: Duration,
}

/// The `fraction` percentile of sorted nanosecond latencies, in microseconds.
pub(super) fn percentile_us(sorted_ns: &[u64], fraction: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * fraction).ceil() as usize).max(1);
    sorted_ns[rank.min(sorted_ns.len()) - 1] as f64 / 1_000.0
}

impl LoadResult {
    pub(super) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(super) fn percentile_us(&self, fraction: f64) -> f64 {
        percentile_us(&self.latencies_ns, fraction)
    }

    /// "0", or the count and the p99 latency of the failures.
    pub(super) fn errors_column(&self) -> String {
        if self.errors == 0 {
            "0".to_owned()
        } else {
            let p99 = percentile_us(&self.error_latencies_ns, 0.99);
            format!("{} (p99 {p99:.0} µs)", self.errors)
        }
    }
}

pub(super) type SendRequest = h2::client::SendRequest<Bytes>;

pub(super) async fn connect(addr: SocketAddr) -> Result<SendRequest, Box<dyn Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// One gRPC unary call; `Ok(true)` when the answer is what the call expects.
pub(super) async fn unary(
    send: &SendRequest,
    uri: &http::Uri,
    call: &Call,
) -> Result<bool, Box<dyn Error + Send + Sync>> {
    let mut request = http::Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(authorization) = &call.authorization {
        request = request.header("authorization", authorization.clone());
    }
    let request = request.body(())?;
    let mut send = send.clone().ready().await?;
    let (response, mut stream) = send.send_request(request, false)?;
    stream.send_data(call.frame.clone(), true)?;
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    if status != "0" {
        return Err(format!("grpc-status {status}").into());
    }
    let message = message.get(5..).unwrap_or_default();
    Ok(match call.expect {
        Expect::Active(expected) => IntrospectResponse::decode(message)?.active == expected,
        Expect::Serving => HealthCheckResponse::decode(message)?.status() == ServingStatus::Serving,
        Expect::Listed(count) => ListTokensResponse::decode(message)?.tokens.len() == count,
    })
}

/// Drives `calls` at `path` with `concurrency` callers on `connections` HTTP/2
/// connections, on one thread of its own (a current-thread runtime spends the
/// least CPU per call, which the server needs more).
pub(super) fn drive(
    addr: SocketAddr,
    path: &str,
    calls: Arc<Vec<Call>>,
    args: &BenchArgs,
    duration: Duration,
) -> Result<LoadResult, Box<dyn Error>> {
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let (concurrency, connections, warmup) =
        (args.concurrency, args.connections.max(1), args.warmup);
    let worker = std::thread::spawn(move || -> Result<LoadResult, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut senders = Vec::new();
            for _ in 0..connections {
                senders.push(connect(addr).await.map_err(|e| e.to_string())?);
            }
            let measure_from = Instant::now() + warmup;
            let end = measure_from + duration;
            let tasks: Vec<_> = (0..concurrency)
                .map(|caller| {
                    let send = senders[caller % connections].clone();
                    let (uri, calls) = (uri.clone(), calls.clone());
                    tokio::spawn(async move {
                        let mut result = LoadResult::default();
                        let mut rng = Rng(0x1234_5678 + caller as u64 * 0x9E37);
                        loop {
                            let started = Instant::now();
                            if started >= end {
                                break;
                            }
                            let call = &calls[rng.below(calls.len() as u64) as usize];
                            let outcome = unary(&send, &uri, call).await;
                            if started < measure_from {
                                continue;
                            }
                            match outcome {
                                Ok(right) => {
                                    result.ok += 1;
                                    result.wrong += u64::from(!right);
                                    result
                                        .latencies_ns
                                        .push(started.elapsed().as_nanos() as u64);
                                }
                                Err(_) => {
                                    result.errors += 1;
                                    result
                                        .error_latencies_ns
                                        .push(started.elapsed().as_nanos() as u64);
                                }
                            }
                        }
                        result
                    })
                })
                .collect();
            let mut total = LoadResult::default();
            for task in tasks {
                let part = task.await.map_err(|e| e.to_string())?;
                total.ok += part.ok;
                total.errors += part.errors;
                total.wrong += part.wrong;
                total.latencies_ns.extend(part.latencies_ns);
                total.error_latencies_ns.extend(part.error_latencies_ns);
            }
            total.elapsed = duration;
            total.latencies_ns.sort_unstable();
            total.error_latencies_ns.sort_unstable();
            Ok(total)
        })
    });
    Ok(worker.join().map_err(|_| "load thread panicked")??)
}

/// CPU time (µs) and resident memory (bytes) of a process, from /proc.
pub(super) fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces), 1-based from 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // Linux reports in clock ticks of 1/100 s and pages of 4 KiB on x86_64.
    Some((ticks * 10_000, rss_pages * 4_096))
}
