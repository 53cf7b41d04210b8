//! Starts the real server on 127.0.0.1:0 against a fresh SQLite file or a fresh
//! Postgres schema, and captures every log line the process writes.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use patd::domain::clock;
use patd::domain::model::{Actor, Owner, TokenRecord, TokenSpec, parse_scopes};
use patd::domain::token::TokenFormat;
use patd::proto::introspection_service_client::IntrospectionServiceClient;
use patd::proto::token_service_client::TokenServiceClient;
use patd::proto::{IntrospectRequest, IntrospectResponse};
use patd::serve::telemetry::{self, LogFormat};
use patd::serve::tls::TlsReloader;
use patd::serve::{self, ServerSettings};
use patd::store::{Connect, DatabaseUrl, EventKind, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const POSTGRES_URL_VAR: &str = "PATD_TEST_POSTGRES_URL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Everything written to the log by every test in this process.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a subscriber that records every event of every crate at debug level
/// (and patd's at trace), so that secret-leak tests see all there is to see.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuffer(buffer.clone());
        let subscriber =
            telemetry::subscriber("debug,patd=trace", LogFormat::Text, false, move || {
                writer.clone()
            })
            .expect("test log filter parses");
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
        buffer
    })
    .clone()
}

/// All log output so far, as text.
pub fn logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
}

pub struct TestApp {
    pub backend: Backend,
    pub addr: SocketAddr,
    /// Prometheus metrics: http://{metrics_addr}/metrics.
    pub metrics_addr: SocketAddr,
    /// The plaintext health-only port (apps serving TLS).
    pub health_addr: Option<SocketAddr>,
    /// The HTTP listener (RFC 7662 introspection, /healthz).
    pub http_addr: SocketAddr,
    pub store: Store,
    pub format: TokenFormat,
    pub database_url: DatabaseUrl,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), serve::ServeError>>>,
    _dir: tempfile::TempDir,
}

/// The Postgres URL for tests, or `None` (and a note) when the variable is unset.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: {POSTGRES_URL_VAR} is unset, Postgres tests do not run");
            None
        }
    }
}

/// A schema of its own for one test; schemas from runs over an hour old are
/// dropped, so an interrupted run leaves nothing behind for long.
async fn fresh_postgres_schema(base_url: &str) -> String {
    let admin = sqlx::PgPool::connect(base_url).await.unwrap_or_else(|err| {
        panic!("{POSTGRES_URL_VAR} is set but Postgres is unreachable: {err}")
    });
    let now = clock::now_micros() / 1_000_000;
    let stale: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'patd_test_%'")
            .fetch_all(&admin)
            .await
            .unwrap();
    for (schema,) in stale {
        let created: i64 = schema
            .split('_')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if now - created > 3600 {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&admin)
                .await;
        }
    }
    let schema = format!(
        "patd_test_{now}_{}",
        patd::domain::token::generate_id().to_lowercase()
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let separator = if base_url.contains('?') { '&' } else { '?' };
    format!("{base_url}{separator}options=-csearch_path%3D{schema}")
}

impl TestApp {
    /// A database URL for `backend` that no other test uses, or `None` when the
    /// Postgres tests are skipped.
    pub async fn fresh_database(backend: Backend, dir: &tempfile::TempDir) -> Option<DatabaseUrl> {
        Some(DatabaseUrl::new(match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("patd.db").display()),
            Backend::Postgres => fresh_postgres_schema(&postgres_url()?).await,
        }))
    }

    /// Storage settings for tests: a short call timeout, so faults show quickly.
    pub fn store_options(url: &DatabaseUrl) -> StoreOptions {
        StoreOptions {
            url: url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
        }
    }

    pub async fn connect_store(url: &DatabaseUrl) -> Store {
        let options = Self::store_options(url);
        Store::connect(&options, true)
            .await
            .expect("store connects and migrates")
    }

    /// Settings for tests: short intervals, so background work shows quickly, and
    /// no preload racing with what a test stores (the preload has its own test).
    pub fn settings() -> ServerSettings {
        ServerSettings {
            shutdown_grace: Duration::from_secs(5),
            change_poll_interval: Duration::from_millis(100),
            preload_cache: false,
            ..ServerSettings::default()
        }
    }

    pub async fn spawn_with(backend: Backend, settings: ServerSettings) -> Option<TestApp> {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let database_url = Self::fresh_database(backend, &dir).await?;
        let store = Self::connect_store(&database_url).await;
        Some(Self::spawn_on(backend, store, database_url, settings, dir, None).await)
    }

    /// Like [`TestApp::spawn_with`], with the production storage timeouts (5 s)
    /// instead of the short ones that make faults show quickly: for tests about
    /// what survives load, where a disk shared with other tests may be slow.
    pub async fn spawn_patient(backend: Backend, settings: ServerSettings) -> Option<TestApp> {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let database_url = Self::fresh_database(backend, &dir).await?;
        let options = StoreOptions {
            acquire_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            ..Self::store_options(&database_url)
        };
        let store = Store::connect(&options, true)
            .await
            .expect("store connects and migrates");
        Some(Self::spawn_on(backend, store, database_url, settings, dir, None).await)
    }

    /// A Postgres server whose storage connections pass through `proxy`, with a
    /// store opened lazily (as `patd serve` opens Postgres) that migrates once
    /// reachable. `database_url` is the direct URL, for setting up and checking.
    pub async fn spawn_behind_proxy(
        proxy_mode: ProxyMode,
        settings: ServerSettings,
    ) -> Option<(TestApp, Proxy)> {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let direct = Self::fresh_database(Backend::Postgres, &dir).await?;
        let options: sqlx::postgres::PgConnectOptions = direct.expose().parse().unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let proxy = Proxy::start(&upstream, proxy_mode).await;
        let proxied = DatabaseUrl::new(direct.expose().replacen(
            &upstream,
            &proxy.addr.to_string(),
            1,
        ));
        assert_ne!(
            proxied, direct,
            "{POSTGRES_URL_VAR} must name host:port explicitly"
        );
        let store = Store::open(&Self::store_options(&proxied), Connect::Lazily)
            .await
            .unwrap();
        let app = Self::spawn_on(Backend::Postgres, store, direct, settings, dir, None).await;
        Some((app, proxy))
    }

    /// A server on `store` (opened by the test), in a directory of its own.
    pub async fn spawn_with_store(
        backend: Backend,
        store: Store,
        database_url: DatabaseUrl,
        settings: ServerSettings,
    ) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_on(backend, store, database_url, settings, dir, None).await
    }

    /// An app on SQLite serving TLS from `tls`.
    pub async fn spawn_with_tls(settings: ServerSettings, tls: Arc<TlsReloader>) -> TestApp {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let database_url = Self::fresh_database(Backend::Sqlite, &dir).await.unwrap();
        let store = Self::connect_store(&database_url).await;
        Self::spawn_on(
            Backend::Sqlite,
            store,
            database_url,
            settings,
            dir,
            Some(tls),
        )
        .await
    }

    async fn spawn_on(
        backend: Backend,
        store: Store,
        database_url: DatabaseUrl,
        settings: ServerSettings,
        dir: tempfile::TempDir,
        tls: Option<Arc<TlsReloader>>,
    ) -> TestApp {
        Self::spawn_listening(
            backend,
            store,
            database_url,
            settings,
            dir,
            tls,
            "127.0.0.1:0",
        )
        .await
    }

    /// A server whose gRPC port is an IPv6 socket bound to `::ffff:127.0.0.1`:
    /// IPv4 clients reach it as a dual-stack `[::]` listener sees them, with
    /// IPv4-mapped addresses, without listening beyond loopback.
    pub async fn spawn_dual_stack(backend: Backend, settings: ServerSettings) -> Option<TestApp> {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let database_url = Self::fresh_database(backend, &dir).await?;
        let store = Self::connect_store(&database_url).await;
        let mut app = Self::spawn_listening(
            backend,
            store,
            database_url,
            settings,
            dir,
            None,
            "[::ffff:127.0.0.1]:0",
        )
        .await;
        app.addr = SocketAddr::new([127, 0, 0, 1].into(), app.addr.port());
        Some(app)
    }

    async fn spawn_listening(
        backend: Backend,
        store: Store,
        database_url: DatabaseUrl,
        settings: ServerSettings,
        dir: tempfile::TempDir,
        tls: Option<Arc<TlsReloader>>,
        grpc_bind: &str,
    ) -> TestApp {
        let listener = TcpListener::bind(grpc_bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        // With TLS, also the plaintext health port Kubernetes probes use.
        let health = match tls {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let health_addr = health.as_ref().map(|l| l.local_addr().unwrap());
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let listeners = serve::Listeners {
            grpc: listener,
            tls,
            metrics: Some(metrics),
            health,
            http: Some(http),
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let format = settings.token_format.clone();
        let server = tokio::spawn(serve::run(settings, store.clone(), listeners, async {
            let _ = shutdown_rx.await;
        }));
        TestApp {
            backend,
            addr,
            metrics_addr,
            health_addr,
            http_addr,
            store,
            format,
            database_url,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }

    /// A channel from the local address `from` (e.g. another 127.0.0.0/8 address,
    /// to be another client).
    pub async fn channel_from(&self, from: std::net::IpAddr) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .local_address(Some(from))
            .connect()
            .await
            .unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("client connects to the test server")
    }

    pub async fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel().await)
    }

    pub async fn introspection(&self) -> IntrospectionServiceClient<Channel> {
        IntrospectionServiceClient::new(self.channel().await)
    }

    /// Mints a token straight into storage, as the operator CLI does.
    pub async fn mint(
        &self,
        owner: (&str, &str),
        scopes: &[&str],
        expires_at: Option<i64>,
    ) -> (String, TokenRecord) {
        self.mint_limited(owner, scopes, expires_at, &[]).await
    }

    /// Runs `sql` with text parameters on the app's database directly, as an
    /// older version or a hand-made edit might have written it.
    pub async fn execute_raw(&self, sql: &str, binds: &[&str]) {
        macro_rules! execute_on {
            ($pool:ty) => {{
                let pool = <$pool>::connect(self.database_url.expose()).await.unwrap();
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = query.bind(*bind);
                }
                query.execute(&pool).await.unwrap();
                pool.close().await;
            }};
        }
        match self.backend {
            Backend::Sqlite => execute_on!(sqlx::SqlitePool),
            Backend::Postgres => execute_on!(sqlx::PgPool),
        }
    }

    /// [`TestApp::mint`] with an IP allowlist.
    pub async fn mint_limited(
        &self,
        owner: (&str, &str),
        scopes: &[&str],
        expires_at: Option<i64>,
        allowed_cidrs: &[&str],
    ) -> (String, TokenRecord) {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let spec = TokenSpec {
            name: "minted",
            scopes: parse_scopes(&scopes).unwrap(),
            expires_at,
            allowed_cidrs: patd::domain::cidr::CidrList::parse(allowed_cidrs).unwrap(),
            description: String::new(),
            labels: Default::default(),
            resources: Default::default(),
        };
        let owner = Owner::new(owner.0, owner.1).unwrap();
        let (new, secret) = spec
            .issue(&self.format, owner, clock::now_micros())
            .unwrap();
        self.store.insert(&new, &Actor::operator()).await.unwrap();
        (secret.expose().to_owned(), new.record)
    }

    /// Mints a token and revokes it, as another process would.
    pub async fn mint_revoked(
        &self,
        owner: (&str, &str),
        scopes: &[&str],
    ) -> (String, TokenRecord) {
        let (secret, record) = self.mint(owner, scopes, None).await;
        revoke_as_operator(&self.store, &record).await;
        (secret, record)
    }

    /// A token for `subject` in account `acme` that may manage tokens and holds
    /// the given extra scopes.
    pub async fn manager(&self, subject: &str, extra: &[&str]) -> String {
        let mut scopes = vec!["personalAccessToken:write"];
        scopes.extend_from_slice(extra);
        self.mint((subject, "acme"), &scopes, None).await.0
    }

    /// CreateToken, as the holder of `caller`, of a `tag:read` token named `name`.
    pub async fn create_tag_reader(
        &self,
        caller: &str,
        name: &str,
    ) -> Result<patd::proto::CreateTokenResponse, tonic::Status> {
        let request = patd::proto::CreateTokenRequest {
            name: name.to_owned(),
            scopes: vec!["tag:read".to_owned()],
            expires_at: None,
            allowed_cidrs: vec![],
            ..Default::default()
        };
        let response = self
            .tokens()
            .await
            .create_token(authed(caller, request))
            .await;
        response.map(tonic::Response::into_inner)
    }

    /// Whether Introspect calls `secret` active.
    pub async fn is_active(&self, secret: &str) -> bool {
        self.introspect(secret, &[]).await.active
    }

    /// Introspect's answer for `token` (which must not be an error status).
    pub async fn introspect(&self, token: &str, required: &[&str]) -> IntrospectResponse {
        let request = IntrospectRequest {
            token: token.to_owned(),
            required_scopes: required.iter().map(|s| s.to_string()).collect(),
            client_ip: String::new(),
            ..Default::default()
        };
        let answer = self.introspection().await.introspect(request).await;
        answer
            .expect("introspection answers, it does not fail")
            .into_inner()
    }

    /// Polls until Introspect calls `secret` inactive; panics after 3 s.
    pub async fn wait_until_inactive(&self, secret: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while self.is_active(secret).await {
            assert!(
                std::time::Instant::now() < deadline,
                "token still active after 3 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), serve::ServeError> {
        let _ = self.shutdown.take().unwrap().send(());
        let result = self
            .server
            .take()
            .unwrap()
            .await
            .expect("server task panicked");
        self.store.close().await;
        result
    }

    /// Stops the server as SIGTERM does and starts a new one with `settings` on
    /// the same database (an SQLite file survives it).
    pub async fn restart(mut self, settings: ServerSettings) -> TestApp {
        let _ = self.shutdown.take().unwrap().send(());
        let stopped = self.server.take().unwrap().await;
        stopped
            .expect("server task panicked")
            .expect("server stops cleanly");
        self.store.close().await;
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let store = Self::connect_store(&self.database_url).await;
        Self::spawn_on(
            self.backend,
            store,
            self.database_url.clone(),
            settings,
            dir,
            None,
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// A transaction on its own connection that keeps writers to `tokens` waiting
/// (readers go on) until released.
pub enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    pub async fn take(app: &TestApp) -> WriteLock {
        use sqlx::{ConnectOptions, Executor};
        let url = app.database_url.expose();
        match app.backend {
            Backend::Sqlite => {
                let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
                let mut conn = options.connect().await.unwrap();
                conn.execute("BEGIN IMMEDIATE").await.unwrap();
                WriteLock::Sqlite(conn)
            }
            Backend::Postgres => {
                let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
                let mut conn = options.connect().await.unwrap();
                conn.execute("BEGIN").await.unwrap();
                conn.execute("LOCK TABLE tokens IN EXCLUSIVE MODE")
                    .await
                    .unwrap();
                WriteLock::Postgres(conn)
            }
        }
    }

    pub async fn release(self) {
        use sqlx::Executor;
        match self {
            WriteLock::Sqlite(mut conn) => conn.execute("ROLLBACK").await.map(drop),
            WriteLock::Postgres(mut conn) => conn.execute("ROLLBACK").await.map(drop),
        }
        .unwrap();
    }
}

/// `valid` with its last character changed, so its checksum no longer matches.
pub fn with_wrong_checksum(valid: &str) -> String {
    let last = if valid.ends_with('a') { "b" } else { "a" };
    format!("{}{last}", &valid[..valid.len() - 1])
}

/// `message` with `authorization: Bearer <secret>` metadata.
/// An UpdateToken request renaming token `id` to `name`.
pub fn rename(id: &str, name: &str) -> patd::proto::UpdateTokenRequest {
    patd::proto::UpdateTokenRequest {
        id: id.to_owned(),
        token: Some(patd::proto::Token {
            name: name.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
    }
}

pub fn authed<T>(secret: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// Runs each listed test function once per backend, as `sqlite::NAME` and
/// `postgres::NAME`; `NAME with SETTINGS` starts the server with `SETTINGS()`
/// instead of [`TestApp::settings`].
#[macro_export]
macro_rules! backend_tests {
    (@settings) => { $crate::helpers::TestApp::settings() };
    (@settings $settings:ident) => { super::$settings() };
    ($($name:ident $(with $settings:ident)?),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let settings = $crate::backend_tests!(@settings $($settings)?);
                    let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Sqlite, settings).await;
                    super::$name(app.expect("SQLite is always available")).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let settings = $crate::backend_tests!(@settings $($settings)?);
                    if let Some(app) = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Postgres, settings).await {
                        super::$name(app).await;
                    }
                }
            )+
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the upstream.
    Up,
    /// Accept and close at once: storage refuses.
    Refuse,
    /// Accept and never answer: storage hangs.
    Blackhole,
}

/// A TCP proxy on 127.0.0.1 the test controls; leaving `Up` cuts every
/// connection it carries.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode_tx, mode_rx) = tokio::sync::watch::channel(mode);
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut mode = mode_rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let current = *mode.borrow_and_update();
                    match current {
                        ProxyMode::Refuse => return,
                        ProxyMode::Blackhole => {
                            let _ = mode.changed().await;
                            return;
                        }
                        ProxyMode::Up => {}
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let left_up = async {
                        while mode.changed().await.is_ok() && *mode.borrow() == ProxyMode::Up {}
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = left_up => {}
                    }
                    // A black hole keeps the connection open and silent.
                    if *mode.borrow() == ProxyMode::Blackhole {
                        let _ = mode.changed().await;
                    }
                });
            }
        });
        Proxy {
            addr,
            mode: mode_tx,
            accept,
        }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.mode.send_replace(ProxyMode::Refuse);
    }
}

/// A child process that is killed when dropped, so a failing test leaves no
/// server behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `patd serve` as a process of its own on `database_url`, listening on `addr`,
/// with `extra` arguments; its output is discarded.
pub fn spawn_patd(database_url: &str, addr: &str, extra: &[&str]) -> KillOnDrop {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_patd"))
        .args(["serve", "--listen", addr, "--log", "warn"])
        .args(["--database-url", database_url])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("patd starts");
    KillOnDrop(child)
}

/// A CreateToken request for `name` with `scopes`, no expiry.
pub fn create(name: &str, scopes: &[&str]) -> patd::proto::CreateTokenRequest {
    patd::proto::CreateTokenRequest {
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Revokes `record` through `store` directly, as `patd admin revoke` (or another
/// process) does; the token must exist.
pub async fn revoke_as_operator(store: &Store, record: &TokenRecord) {
    let revoked = store
        .revoke(
            &record.owner,
            &record.id,
            clock::now_micros(),
            &Actor::operator(),
            EventKind::Revoked,
        )
        .await;
    assert!(revoked.unwrap().is_some(), "token {} exists", record.id);
}

/// Runs `patd health` against `addr` for `service`, off the test's runtime (the
/// server it asks may be running on that runtime).
pub async fn patd_health(addr: &str, service: &str) -> std::process::Output {
    let args = [
        "health",
        "--addr",
        addr,
        "--service",
        service,
        "--timeout",
        "3s",
    ]
    .map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_patd"))
            .args(args)
            .output()
            .expect("patd runs")
    })
    .await
    .unwrap()
}

/// A channel to a `patd serve` at `addr`, once it answers.
pub async fn connect_when_up(addr: &str) -> Channel {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            let mut client = TokenServiceClient::new(channel.clone());
            if client
                .list_scopes(patd::proto::ListScopesRequest {})
                .await
                .is_ok()
            {
                return channel;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "patd serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on 127.0.0.1, as `host:port`.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// What `grpc.health.v1.Health/Check` says of `service` ("" for the server).
pub async fn health_of(channel: &Channel, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    client.check(request).await.unwrap().into_inner().status()
}

/// Polls health of `service` until it is `wanted`; panics after `within`.
pub async fn wait_for_health(
    channel: &Channel,
    service: &str,
    wanted: ServingStatus,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    while health_of(channel, service).await != wanted {
        assert!(
            std::time::Instant::now() < deadline,
            "health of {service:?} never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
