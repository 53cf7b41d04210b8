//! `patd bench-webhooks`: what the outbox costs and how fast events leave.
//! Starts `patd serve` on a fresh database, alternately without and with a
//! webhook endpoint (a receiver in this process, answering 204), and measures
//! in each run:
//!
//! - CreateToken and RevokeToken latency, without and with the endpoint;
//! - end-to-end delay, event commit to the receiver, at a steady 100 events/s;
//! - delivery throughput: a backlog (queued while a 410 held the endpoint
//!   disabled) drained to the receiver.
//!
//! May use: the library and `output`.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use patd::domain::clock;
use patd::proto::token_service_client::TokenServiceClient;
use patd::proto::{CreateTokenRequest, RevokeTokenRequest};
use patd::store::{DatabaseUrl, Retried, Store, StoreOptions};

use super::{bench_manager, median, start_server};

const SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMhIQ==";
const ACCEPT: u8 = 0;
const GONE: u8 = 1;

#[derive(Debug, clap::Args)]
pub struct WebhookBenchArgs {
    /// Whole runs; medians are printed when more than one
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Create-and-revoke pairs timed per configuration and run
    #[arg(long, default_value_t = 1_000)]
    writes: usize,
    /// Concurrent writers
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Events queued for the throughput measurement
    #[arg(long, default_value_t = 5_000)]
    backlog: usize,
}

/// The receiver: answers by `mode`, counts deliveries and their delays.
#[derive(Default)]
struct Receiver {
    mode: AtomicU8,
    delivered: AtomicU64,
    delays_us: std::sync::Mutex<Vec<u64>>,
}

async fn receive(
    receiver: Arc<Receiver>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = if receiver.mode.load(Ordering::Relaxed) == GONE {
        http::StatusCode::GONE
    } else {
        receiver.delivered.fetch_add(1, Ordering::Relaxed);
        let at = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
            .and_then(|t| humantime::parse_rfc3339(&t).ok());
        if let Some(at) = at {
            let at = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let now = Duration::from_micros(clock::now_micros() as u64);
            receiver
                .delays_us
                .lock()
                .expect("lock")
                .push(now.saturating_sub(at).as_micros() as u64);
        }
        http::StatusCode::NO_CONTENT
    };
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("valid")
}

async fn start_receiver() -> Result<(Arc<Receiver>, String), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let receiver = Arc::new(Receiver::default());
    let shared = receiver.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(receive(shared, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((receiver, url))
}

type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A CreateToken request for `name`, as the holder of `authorization`.
fn create_request(
    name: String,
    authorization: &Authorization,
) -> tonic::Request<CreateTokenRequest> {
    let mut create = tonic::Request::new(CreateTokenRequest {
        name,
        scopes: vec!["personalAccessToken:write".to_owned()],
        ..Default::default()
    });
    create
        .metadata_mut()
        .insert("authorization", authorization.clone());
    create
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64
}

/// `writes` CreateToken + RevokeToken pairs over `concurrency` callers:
/// (create p50, create p99, revoke p50, revoke p99) in µs.
async fn time_writes(
    addr: std::net::SocketAddr,
    manager: &str,
    writes: usize,
    concurrency: usize,
) -> Result<[f64; 4], Box<dyn Error>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let authorization: tonic::metadata::MetadataValue<_> = format!("Bearer {manager}").parse()?;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut client = TokenServiceClient::new(channel.clone());
        let authorization = authorization.clone();
        let count = writes / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut times = (Vec::new(), Vec::new());
            for i in 0..count {
                let create = create_request(format!("bench-{worker}-{i}"), &authorization);
                let started = Instant::now();
                let created = client.create_token(create).await?.into_inner();
                times.0.push(started.elapsed().as_micros() as u64);
                let id = created.token.map(|t| t.id).unwrap_or_default();
                let mut revoke = tonic::Request::new(RevokeTokenRequest { id });
                revoke
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                let started = Instant::now();
                client.revoke_token(revoke).await?;
                times.1.push(started.elapsed().as_micros() as u64);
            }
            Ok::<_, tonic::Status>(times)
        }));
    }
    let (mut creates, mut revokes) = (Vec::new(), Vec::new());
    for task in tasks {
        let (c, r) = task.await??;
        creates.extend(c);
        revokes.extend(r);
    }
    creates.sort_unstable();
    revokes.sort_unstable();
    Ok([
        percentile(&creates, 0.5),
        percentile(&creates, 0.99),
        percentile(&revokes, 0.5),
        percentile(&revokes, 0.99),
    ])
}

/// Waits until the bench endpoint has nothing pending (fleet-wide, from storage).
async fn drained(store: &Store) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    loop {
        let statuses = store.endpoint_statuses().await?;
        if statuses.iter().any(|s| s.name == "bench" && s.pending == 0) {
            // Events still to be fanned out are not pending yet: one more poll.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let statuses = store.endpoint_statuses().await?;
            if statuses.iter().any(|s| s.name == "bench" && s.pending == 0) {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the bench endpoint did not drain within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(
    receiver: &Receiver,
    count: u64,
    limit: Duration,
) -> Result<Duration, Box<dyn Error>> {
    let started = Instant::now();
    while receiver.delivered.load(Ordering::Relaxed) < count {
        if started.elapsed() > limit {
            return Err(format!(
                "only {} of {count} deliveries within {limit:?}",
                receiver.delivered.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

/// On `database_url` (the global `--database-url`), or on
/// sqlite://patd-bench-webhooks.db, recreated each time.
pub async fn run(
    args: WebhookBenchArgs,
    database_url: Option<String>,
) -> Result<(), Box<dyn Error>> {
    let url = DatabaseUrl::new(database_url.unwrap_or_else(|| {
        // The default database is a fresh one every time.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("patd-bench-webhooks.db{suffix}"));
        }
        "sqlite://patd-bench-webhooks.db".to_owned()
    }));
    let (receiver, receiver_url) = start_receiver().await?;
    let config =
        std::env::temp_dir().join(format!("patd-bench-webhooks-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"bench\"\nurl = \"{receiver_url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )?;
    let options = StoreOptions {
        url: url.clone(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_secs(60),
    };
    let store = Store::connect(&options, true).await?;
    let manager = bench_manager(&store, &patd::domain::token::TokenFormat::default()).await?;
    println!(
        "patd bench-webhooks: {}, {} create+revoke pairs on {} callers per configuration, backlog {}",
        url.redacted(),
        args.writes,
        args.concurrency,
        args.backlog
    );
    println!(
        "| run | create p50 µs off/on | create p99 off/on | revoke p50 off/on | revoke p99 off/on | delay p50 ms | delay p99 ms | drain deliveries/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = (Vec::new(), Vec::new());
    let mut summary = (Vec::new(), Vec::new(), Vec::new());
    let quiet = ["--preload-cache".to_owned(), "false".to_owned()];
    for run in 1..=args.runs.max(1) {
        let mut server = start_server(&url, &quiet).await?;
        let off = time_writes(server.addr, &manager, args.writes, args.concurrency).await?;
        stop(&mut server)?;
        let mut with = quiet.to_vec();
        with.extend(["--config".to_owned(), config.display().to_string()]);
        receiver.mode.store(ACCEPT, Ordering::Relaxed);
        let mut server = start_server(&url, &with).await?;
        // The endpoint also gets what the run without it wrote: delivered first,
        // so that it neither competes with the timed writes nor delays the rest.
        drained(&store).await?;
        let on = time_writes(server.addr, &manager, args.writes, args.concurrency).await?;
        drained(&store).await?;
        // End-to-end delay at a steady 100 creates a second.
        receiver.delays_us.lock().expect("lock").clear();
        let before = receiver.delivered.load(Ordering::Relaxed);
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?
            .connect()
            .await?;
        let mut client = TokenServiceClient::new(channel);
        let authorization: Authorization = format!("Bearer {manager}").parse()?;
        for i in 0..500 {
            ticks.tick().await;
            let create = create_request(format!("steady-{i}"), &authorization);
            client.create_token(create).await?;
        }
        wait_for(&receiver, before + 500, Duration::from_secs(60)).await?;
        let mut delays = std::mem::take(&mut *receiver.delays_us.lock().expect("lock"));
        delays.sort_unstable();
        // Throughput: a 410 disables the endpoint, a backlog queues, then it is
        // enabled again and drained.
        receiver.mode.store(GONE, Ordering::Relaxed);
        let gone_at = receiver.delivered.load(Ordering::Relaxed);
        let create = create_request("gone".to_owned(), &authorization);
        client.create_token(create).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let writer_count = args.concurrency.max(1);
        let per = args.backlog / writer_count;
        let mut tasks = Vec::new();
        for worker in 0..writer_count {
            let mut client = client.clone();
            let authorization: tonic::metadata::MetadataValue<_> =
                format!("Bearer {manager}").parse()?;
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let create = create_request(format!("backlog-{worker}-{i}"), &authorization);
                    client.create_token(create).await?;
                }
                Ok::<_, tonic::Status>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        // Fan-out of the backlog happens while the endpoint is disabled.
        tokio::time::sleep(Duration::from_secs(2)).await;
        receiver.mode.store(ACCEPT, Ordering::Relaxed);
        let now = clock::now_micros();
        let started = Instant::now();
        let Retried::Queued { .. } = store
            .retry_deliveries("bench", None, now, now + 86_400_000_000)
            .await?
        else {
            return Err("the bench endpoint is not registered".into());
        };
        let backlog = (per * writer_count) as u64 + 1;
        wait_for(&receiver, gone_at + backlog, Duration::from_secs(300)).await?;
        let rate = backlog as f64 / started.elapsed().as_secs_f64();
        stop(&mut server)?;
        println!(
            "| {run} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.1} | {rate:.0} |",
            off[0],
            on[0],
            off[1],
            on[1],
            off[2],
            on[2],
            off[3],
            on[3],
            percentile(&delays, 0.5) / 1e3,
            percentile(&delays, 0.99) / 1e3,
        );
        ratios.0.push(on[0] / off[0]);
        ratios.1.push(on[2] / off[2]);
        summary.0.push(percentile(&delays, 0.5) / 1e3);
        summary.1.push(percentile(&delays, 0.99) / 1e3);
        summary.2.push(rate);
    }
    println!(
        "\nmedians of {} runs: create p50 on/off {:.3}, revoke p50 on/off {:.3}, delay p50 {:.1} ms, p99 {:.1} ms, drain {:.0} deliveries/s",
        args.runs.max(1),
        median(ratios.0),
        median(ratios.1),
        median(summary.0),
        median(summary.1),
        median(summary.2)
    );
    store.close().await;
    let _ = std::fs::remove_file(&config);
    Ok(())
}

fn stop(server: &mut super::Server) -> Result<(), Box<dyn Error>> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    server.child.wait()?;
    Ok(())
}
