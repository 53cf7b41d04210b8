//! `Authenticator::verify` on this machine: a cached token (the hot path of
//! every protected request), a malformed one (rejected without a call), and a
//! miss (an `Introspect` round trip to a local patd).
//!
//! Starts its own `patd serve` (release build) on a fresh SQLite file:
//!
//! ```sh
//! cargo build --release
//! cargo bench -p patd-client --bench verify
//! ```
//!
//! `PATD_BIN` names another patd binary (default: `target/release/patd`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use patd_client::{Authenticator, AuthenticatorSettings, Client};

/// A `patd serve` of our own, stopped when dropped.
struct Patd {
    child: Child,
    addr: String,
    _dir: PathBuf,
}

impl Drop for Patd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn patd_bin() -> PathBuf {
    std::env::var_os("PATD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/patd"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// patd on a fresh SQLite file, and a token holding `license:read`.
fn start_patd() -> (Patd, String) {
    let bin = patd_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("patd-client-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("patd.db").display());
    let token = Command::new(&bin)
        .args(["--database-url", &database, "admin", "create"])
        .args([
            "--subject",
            "bench",
            "--account",
            "bench",
            "--name",
            "bench",
        ])
        .args(["--scopes", "license:read"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(token.status.success(), "patd admin create failed");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(&bin)
        .args(["--database-url", &database, "serve", "--listen", &addr])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "patd never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        Patd {
            child,
            addr,
            _dir: dir,
        },
        token,
    )
}

fn verify(c: &mut Criterion) {
    let (patd, token) = start_patd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async { Client::builder(patd.addr.clone()).build().unwrap() });
    let (cached, uncached) = runtime.block_on(async {
        let cached = Authenticator::new(client.clone(), AuthenticatorSettings::default());
        // Never coherent: every verify is an Introspect.
        let uncached = Authenticator::new(
            client,
            AuthenticatorSettings {
                max_staleness: Duration::ZERO,
                ..AuthenticatorSettings::default()
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cached.is_coherent() {
            assert!(Instant::now() < deadline, "the change stream never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cached
            .verify(&token, &["license:read"], None)
            .await
            .unwrap();
        (cached, uncached)
    });
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    runtime
        .block_on(cached.verify(&token, &["license:read"], Some(ip)))
        .unwrap();
    let malformed = format!("{}x", &token[..token.len() - 1]);

    let mut group = c.benchmark_group("verify");
    // What the harness itself costs per iteration (entering the runtime).
    group.bench_function("harness: block_on(ready)", |b| {
        b.iter(|| runtime.block_on(std::future::ready(())))
    });
    group.bench_function("cached", |b| {
        b.iter(|| {
            runtime
                .block_on(cached.verify(&token, &["license:read"], None))
                .unwrap()
        })
    });
    group.bench_function("cached, with client address", |b| {
        b.iter(|| {
            runtime
                .block_on(cached.verify(&token, &["license:read"], Some(ip)))
                .unwrap()
        })
    });
    group.bench_function("malformed (no call)", |b| {
        b.iter(|| {
            runtime
                .block_on(cached.verify(&malformed, &[], None))
                .unwrap_err()
        })
    });
    group.bench_function("miss (Introspect round trip)", |b| {
        b.iter(|| {
            runtime
                .block_on(uncached.verify(&token, &["license:read"], None))
                .unwrap()
        })
    });
    group.finish();
    drop(patd);
}

criterion_group!(benches, verify);
criterion_main!(benches);
