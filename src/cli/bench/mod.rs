//! `patd bench`: seeds a database with deterministic tokens, starts `patd serve`
//! on it (or targets a running server), and drives `Introspect` with several mixes
//! of tokens and `grpc.health.v1.Health/Check` (the wire ceiling) with a lean
//! HTTP/2 client, reporting throughput, latency, errors, the Introspect/Check
//! ratio and the server's CPU per call and memory.
//!
//! The client is raw `h2` with pre-encoded gRPC frames: a tonic client costs more
//! CPU per call than the server does, and here they share two cores.
//!
//! May use: the library (`store` to seed, `domain` for tokens, `proto` to
//! encode) and `output`.
mod load;
pub mod webhooks;

use load::*;

use std::error::Error;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patd::domain::cidr::CidrList;
use patd::domain::clock;
use patd::domain::labels::Labels;
use patd::domain::model::{NewToken, Owner, TokenRecord};
use patd::domain::scope::ScopeSet;
use patd::domain::token::{
    RANDOM_CHARS, Secret, SecretHash, TokenFormat, base62_from, generate_id,
};
use patd::store::{DatabaseUrl, Store, StoreOptions};

const BENCH_ACCOUNT: &str = "bench";
const DEFAULT_DATABASE: &str = "sqlite://patd-bench.db";
const INTROSPECT_PATH: &str = "/pat.v1.IntrospectionService/Introspect";
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
const LIST_PATH: &str = "/pat.v1.TokenService/ListTokens";
/// Every tenth seeded token is revoked.
const REVOKED_EVERY: u64 = 10;
const UNKNOWN_SET: u64 = 10_000;
const SEED_BATCH: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A small working set of active tokens (`--hot-set`)
    Hot,
    /// Active tokens drawn uniformly from all seeded tokens
    Cold,
    /// Malformed tokens and wrong checksums: must never reach storage
    Junk,
    /// Well-formed tokens that were never issued (a set of 10,000)
    Unknown,
    /// Revoked tokens drawn uniformly from all revoked ones
    Revoked,
    /// The hot set, each call naming a resource (`IntrospectRequest.resource`)
    HotResource,
    /// ListTokens of one owner, first page of 50, no selector (the baseline)
    List,
    /// ListTokens with `team=team-7` (1% of the owner's tokens)
    ListTeam,
    /// ListTokens with `env=prod` (50% of the owner's tokens)
    ListEnv,
    /// ListTokens with `canary` (0.1% of the owner's tokens)
    ListCanary,
    /// ListTokens with `env=prod`, by name (every match is sorted)
    ListEnvByName,
}

impl Mix {
    /// The label selector of a ListTokens mix.
    fn selector(self) -> Option<&'static str> {
        match self {
            Mix::List => Some(""),
            Mix::ListTeam => Some("team=team-7"),
            Mix::ListEnv => Some("env=prod"),
            Mix::ListCanary => Some("canary"),
            Mix::ListEnvByName => Some("env=prod"),
            _ => None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Benchmark a running server instead of starting one (it must serve the
    /// database given by --database-url, seeded by an earlier run)
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Server process id, for CPU and memory figures with --addr
    #[arg(long, requires = "addr")]
    server_pid: Option<u32>,
    /// Tokens to seed [default: 1000000, or 10000 with --quick]
    #[arg(long)]
    tokens: Option<u64>,
    /// A short run: 10,000 tokens, 3 s per mix
    #[arg(long)]
    quick: bool,
    /// Mixes to drive, comma-separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hot,cold,junk,unknown,revoked"
    )]
    mix: Vec<Mix>,
    /// Concurrent callers
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections the callers share
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time per mix [default: 10s, or 3s with --quick]
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured time before each mix
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Active tokens in the hot mix
    #[arg(long, default_value_t = 1_000)]
    hot_set: u64,
    /// Whole runs (Check and every mix); medians are printed when more than one
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Owners the seeded tokens are spread over (user-0 …); 1: one owner holds
    /// them all. Only for a new database: a seeded one keeps its owners
    #[arg(long, default_value_t = DEFAULT_OWNERS)]
    owners: u64,
    /// Arguments for the `patd serve` the benchmark starts, after `--`
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// Deterministic bench tokens: the random part of token `i` comes from a keyed
/// BLAKE3 stream, so any run can rebuild the secrets of a seeded database.
struct Fixture {
    format: TokenFormat,
    key: [u8; 32],
    /// Token `i` belongs to `user-{i % owners}`.
    owners: u64,
}

impl Fixture {
    fn new(format: TokenFormat, purpose: &str) -> Fixture {
        Fixture {
            format,
            key: blake3::derive_key("patd bench fixture v1", purpose.as_bytes()),
            owners: DEFAULT_OWNERS,
        }
    }

    fn secret_of(&self, index: u64) -> Secret {
        let mut reader = blake3::Hasher::new_keyed(&self.key)
            .update(&index.to_le_bytes())
            .finalize_xof();
        let random = base62_from(RANDOM_CHARS, |buf| reader.fill(buf));
        self.format.compose(&random)
    }

    fn secret(&self, index: u64) -> String {
        self.secret_of(index).expose().to_owned()
    }
}

fn is_revoked(index: u64) -> bool {
    index % REVOKED_EVERY == REVOKED_EVERY - 1
}

/// The `n`-th active (not revoked) index.
fn active_index(n: u64) -> u64 {
    n / (REVOKED_EVERY - 1) * REVOKED_EVERY + n % (REVOKED_EVERY - 1)
}

fn bench_token(fixture: &Fixture, index: u64, scopes: ScopeSet, now: i64) -> NewToken {
    let secret = fixture.secret_of(index);
    let hint = fixture.format.hint(&secret);
    NewToken {
        secret_hash: SecretHash::of(secret.expose()),
        record: TokenRecord {
            id: generate_id(),
            name: format!("bench-{index}"),
            owner: Owner {
                subject: format!("user-{}", index % fixture.owners),
                account: BENCH_ACCOUNT.to_owned(),
            },
            scopes,
            hint,
            created_at: now,
            expires_at: None,
            revoked_at: is_revoked(index).then_some(now),
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            rotated_at: None,
            allowed_cidrs: CidrList::default(),
            description: String::new(),
            labels: bench_labels(index, fixture.owners),
            resources: Default::default(),
        },
    }
}

/// Owners the bench tokens are spread over, unless `--owners` says otherwise.
const DEFAULT_OWNERS: u64 = 1_000;

/// Every bench token's labels, by its place among its owner's tokens: a
/// `team` of 100 (1% of the owner's tokens each), an `env` of two (50%), and
/// `canary` on one in 1,000 (0.1%), for measuring ListTokens' label selectors
/// at several selectivities.
fn bench_labels(index: u64, owners: u64) -> Labels {
    let place = index / owners;
    let env = if place.is_multiple_of(2) {
        "prod"
    } else {
        "dev"
    };
    let mut entries = vec![
        ("team".to_owned(), format!("team-{}", place % 100)),
        ("env".to_owned(), env.to_owned()),
    ];
    if place % 1_000 == 7 {
        entries.push(("canary".to_owned(), "yes".to_owned()));
    }
    Labels::parse(entries.iter().map(|(k, v)| (k, v))).expect("valid labels")
}

/// `user-0`'s manager token (personalAccessToken:write) for the ListTokens
/// mixes, stored once (it is in the bench account, but not one of the seeded
/// tokens); its secret.
async fn bench_manager(store: &Store, format: &TokenFormat) -> Result<String, Box<dyn Error>> {
    let fixture = Fixture::new(format.clone(), "manager");
    let scopes = ScopeSet::parse(["personalAccessToken:write"])?;
    let mut manager = bench_token(&fixture, 0, scopes, clock::now_micros());
    if store.find_by_hash(&manager.secret_hash).await?.is_none() {
        manager.record.name = "bench-manager".to_owned();
        manager.record.labels = Labels::default();
        store
            .insert(&manager, &patd::domain::model::Actor::operator())
            .await?;
    }
    Ok(fixture.secret(0))
}

/// Seeds tokens `existing..tokens` (earlier runs seeded the ones before);
/// `others`: tokens in the bench account that are not seeded ones.
async fn seed(
    store: &Store,
    fixture: &Fixture,
    tokens: u64,
    others: u64,
) -> Result<(), Box<dyn Error>> {
    let existing = (store.count_in_account(BENCH_ACCOUNT).await? as u64).saturating_sub(others);
    if existing >= tokens {
        eprintln!("seed: {existing} bench tokens already stored");
        return Ok(());
    }
    let scopes = ScopeSet::parse(["license:read", "product:read", "user:read"])?;
    let started = Instant::now();
    let mut next = existing;
    while next < tokens {
        let end = (next + SEED_BATCH).min(tokens);
        let now = clock::now_micros();
        let batch: Vec<NewToken> = (next..end)
            .map(|index| bench_token(fixture, index, scopes, now))
            .collect();
        store.insert_many(&batch, None, None).await?;
        next = end;
        if next.is_multiple_of(100_000) || next == tokens {
            eprintln!("seed: {next}/{tokens} tokens ({:.1?})", started.elapsed());
        }
    }
    Ok(())
}

struct Row {
    name: String,
    result: LoadResult,
    cpu_us_per_call: Option<f64>,
    rss_mb: Option<f64>,
}

fn print_rows(title: &str, rows: &[Row], check_rate: f64) {
    println!("\n{title}");
    println!(
        "| load | calls/s | p50 µs | p99 µs | p99.9 µs | errors | wrong | ×Check | server CPU µs/call | server RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let r = &row.result;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.2} | {} | {} |",
            row.name,
            r.rate(),
            r.percentile_us(0.50),
            r.percentile_us(0.99),
            r.percentile_us(0.999),
            r.errors_column(),
            r.wrong,
            r.rate() / check_rate,
            row.cpu_us_per_call
                .map_or("n/a".to_owned(), |v| format!("{v:.1}")),
            row.rss_mb.map_or("n/a".to_owned(), |v| format!("{v:.0}")),
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A `patd serve` the benchmark started.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// From start to SERVING.
    startup: Duration,
    /// From start to a full cache, when the server preloads it.
    preloaded: Option<Duration>,
}

impl Drop for Server {
    /// A benchmark that fails midway leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `patd serve` on a free port and waits for SERVING, then for the cache
/// preload (so that no measurement overlaps it). Server warnings pass through.
async fn start_server(
    database_url: &DatabaseUrl,
    serve_args: &[String],
) -> Result<Server, Box<dyn Error>> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", &addr.to_string()])
        .args([
            "--log",
            "warn,patd::verify::coherence=info",
            "--database-url",
        ])
        .arg(database_url.expose())
        .args(serve_args)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let (preloaded_tx, preloaded_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("token cache preloaded") {
                let _ = preloaded_tx.send(started.elapsed());
            } else {
                eprintln!("server: {line}");
            }
        }
    });
    let uri: http::Uri = format!("http://{addr}{CHECK_PATH}").parse()?;
    let check = &check_calls()[0];
    let startup = loop {
        if let Ok(send) = connect(addr).await
            && let Ok(true) = unary(&send, &uri, check).await
        {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the server did not report SERVING within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let preloads = !serve_args
        .windows(2)
        .any(|w| w[0] == "--preload-cache" && w[1] == "false");
    let preloaded = if preloads {
        let waited = tokio::task::spawn_blocking(move || {
            preloaded_rx.recv_timeout(Duration::from_secs(300))
        });
        Some(
            waited
                .await?
                .map_err(|_| "the server did not finish preloading within 300 s")?,
        )
    } else {
        None
    };
    Ok(Server {
        child,
        addr,
        startup,
        preloaded,
    })
}

pub async fn run(
    args: BenchArgs,
    database_url: Option<DatabaseUrl>,
    format: TokenFormat,
) -> Result<(), Box<dyn Error>> {
    let database_url = database_url.unwrap_or_else(|| DatabaseUrl::new(DEFAULT_DATABASE));
    let tokens = args
        .tokens
        .unwrap_or(if args.quick { 10_000 } else { 1_000_000 });
    let duration = args
        .duration
        .unwrap_or(Duration::from_secs(if args.quick { 3 } else { 10 }));
    let mut fixture = Fixture::new(format.clone(), "issued");
    fixture.owners = args.owners.max(1);
    let unknown = Fixture::new(format, "never issued");

    let options = StoreOptions {
        url: database_url.clone(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_secs(300),
    };
    let store = Store::connect(&options, true).await?;
    // Stored first, so that the seed knows the account holds it.
    let manager = bench_manager(&store, &fixture.format).await?;
    seed(&store, &fixture, tokens, 1).await?;
    store.close().await;

    let (mut server, addr, pid) = match args.addr {
        Some(addr) => (None, addr, args.server_pid),
        None => {
            let server = start_server(&database_url, &args.serve_args).await?;
            let (addr, pid) = (server.addr, server.child.id());
            (Some(server), addr, Some(pid))
        }
    };
    println!(
        "patd bench: {} on {addr}, {tokens} tokens, {} callers on {} connections, {duration:?} per load after {:?} warm-up",
        database_url.redacted(),
        args.concurrency,
        args.connections,
        args.warmup
    );
    if let Some(server) = &server {
        print!("server: SERVING {:.2?} after start", server.startup);
        match server.preloaded {
            Some(preloaded) => println!(", cache preloaded {preloaded:.2?} after start"),
            None => println!(),
        }
    }

    let mut loads: Vec<(String, &str, Arc<Vec<Call>>)> = vec![(
        "Health/Check".to_owned(),
        CHECK_PATH,
        Arc::new(check_calls()),
    )];
    for mix in &args.mix {
        if let Some(selector) = mix.selector() {
            let call = list_call(&manager, *mix, selector, &fixture, tokens);
            let by = if *mix == Mix::ListEnvByName {
                " by name"
            } else {
                ""
            };
            let name = format!("ListTokens {selector:?}{by}");
            loads.push((name, LIST_PATH, Arc::new(vec![call])));
            continue;
        }
        let calls = calls_for(*mix, &fixture, &unknown, tokens, args.hot_set);
        loads.push((
            format!("Introspect {mix:?}").to_lowercase(),
            INTROSPECT_PATH,
            Arc::new(calls),
        ));
    }

    let mut runs: Vec<Vec<Row>> = Vec::new();
    for run in 1..=args.runs.max(1) {
        let mut rows = Vec::new();
        for (name, path, calls) in &loads {
            let before = pid.and_then(process_usage);
            let result = drive(addr, path, calls.clone(), &args, duration)?;
            let after = pid.and_then(process_usage);
            let (cpu_us_per_call, rss_mb) = match (before, after) {
                (Some((cpu_before, _)), Some((cpu_after, rss))) => {
                    // The warm-up's calls are not counted, so scale CPU to the
                    // measured window.
                    let total = duration + args.warmup;
                    let measured = (cpu_after - cpu_before) as f64 * duration.as_secs_f64()
                        / total.as_secs_f64();
                    (
                        Some(measured / result.ok.max(1) as f64),
                        Some(rss as f64 / 1e6),
                    )
                }
                _ => (None, None),
            };
            rows.push(Row {
                name: name.clone(),
                result,
                cpu_us_per_call,
                rss_mb,
            });
        }
        let check_rate = rows[0].result.rate();
        print_rows(&format!("run {run}"), &rows, check_rate);
        runs.push(rows);
    }

    if runs.len() > 1 {
        println!(
            "\nmedians of {} runs (×Check: median of the per-run ratios)",
            runs.len()
        );
        println!("| load | calls/s | p50 µs | p99 µs | p99.9 µs | ×Check |");
        println!("|---|---|---|---|---|---|");
        for (i, (name, _, _)) in loads.iter().enumerate() {
            let of = |f: &dyn Fn(&Row, &Row) -> f64| {
                median(runs.iter().map(|rows| f(&rows[i], &rows[0])).collect())
            };
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
                of(&|r, _| r.result.rate()),
                of(&|r, _| r.result.percentile_us(0.50)),
                of(&|r, _| r.result.percentile_us(0.99)),
                of(&|r, _| r.result.percentile_us(0.999)),
                of(&|r, check| r.result.rate() / check.result.rate()),
            );
        }
    }

    if let Some(server) = server.as_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status();
        server.child.wait()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_secrets_are_deterministic_and_well_formed() {
        let format = TokenFormat::default();
        let fixture = Fixture::new(format.clone(), "issued");
        let other = Fixture::new(format.clone(), "never issued");
        assert_eq!(fixture.secret(7), fixture.secret(7));
        assert_ne!(fixture.secret(7), fixture.secret(8));
        assert_ne!(fixture.secret(7), other.secret(7));
        assert!(format.parse(&fixture.secret(123_456)).is_some());
    }

    #[test]
    fn active_indices_skip_the_revoked_ones() {
        let active: Vec<u64> = (0..20).map(active_index).collect();
        assert!(active.iter().all(|&i| !is_revoked(i)));
        assert_eq!(&active[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 10]);
        let mut distinct = active.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 20);
    }

    #[test]
    fn percentiles_come_from_sorted_latencies() {
        let result = LoadResult {
            ok: 1_000,
            latencies_ns: (1..=1_000).map(|us| us * 1_000).collect(),
            elapsed: Duration::from_secs(1),
            ..LoadResult::default()
        };
        assert_eq!(result.percentile_us(0.50), 500.0);
        assert_eq!(result.percentile_us(0.99), 990.0);
        assert_eq!(result.percentile_us(0.999), 999.0);
        assert_eq!(result.rate(), 1_000.0);
    }
}
