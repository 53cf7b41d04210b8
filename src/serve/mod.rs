//! The process around the services: builds and runs the gRPC server (our
//! services, health, reflection and the call log) on a listener the caller
//! bound, until the shutdown future resolves; with the overload guard, TLS,
//! telemetry (logs) and the metrics endpoint.
//!
//! May use: every layer below (`domain`, `metrics`, `store`, `verify`, `api`).

pub mod http;
pub mod metrics;
pub mod overload;
pub mod telemetry;
pub mod tls;
mod write_deadline;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::auth::Callers;
use crate::api::ext_authz::ExtAuthzApi;
use crate::api::forward_auth::ForwardAuth;
use crate::api::introspection::IntrospectionApi;
use crate::api::oauth::HttpIntrospection;
use crate::api::tokens::TokenApi;
use crate::domain::cidr::CidrList;
use crate::domain::policy::Policy;
use crate::domain::token::TokenFormat;
use crate::proto::introspection_service_server::IntrospectionServiceServer;
use crate::proto::token_service_server::TokenServiceServer;
use crate::serve::overload::ShedLayer;
use crate::serve::telemetry::CallLogLayer;
use crate::serve::tls::TlsReloader;
use crate::store::{Store, StoreError};
use crate::verify::Verifier;
use crate::verify::cache::CacheSettings;
use crate::webhooks::{self, WebhookSettings};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;

pub use crate::proto::FILE_DESCRIPTOR_SET;

/// Health service names: the whole server ("") and each of our services.
/// They follow storage: a replica that cannot check tokens should get no traffic.
const HEALTH_SERVICES: [&str; 4] = [
    "",
    <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME,
    <IntrospectionServiceServer<IntrospectionApi> as tonic::server::NamedService>::NAME,
    <AuthorizationServer<ExtAuthzApi> as tonic::server::NamedService>::NAME,
];

/// SERVING for as long as the process answers at all, whatever storage does: the
/// liveness probe's name, so that a database outage takes replicas out of the
/// load balancer (readiness) without restarting every one of them.
pub const LIVENESS_SERVICE: &str = "liveness";

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub token_format: TokenFormat,
    /// How long in-flight calls may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    pub cache: CacheSettings,
    /// How often `token_changes` is polled for revokes and deletes made by other
    /// processes: the staleness bound for those changes.
    pub change_poll_interval: Duration,
    /// How often `last_used_at` is written behind (at most once per token each).
    pub last_used_interval: Duration,
    /// Fill the cache from storage at start (in the background, after SERVING).
    pub preload_cache: bool,
    /// Apply migrations once storage is reachable (for stores opened lazily).
    pub migrate: bool,
    pub limits: Limits,
    /// Envoy ext_authz: drop `authorization` from allowed requests before they
    /// go upstream.
    pub ext_authz_remove_authorization: bool,
    /// Trusted internal callers, and who may call Introspect and Check.
    pub callers: Callers,
    /// Lifetimes and token counts allowed per account.
    pub policy: Policy,
    /// HTTP forward auth: peers whose `X-Forwarded-For`/`X-Real-IP` and
    /// `X-Patd-Required-Scopes` are believed (none by default).
    pub trusted_proxies: CidrList,
    /// Webhook endpoints, their delivery, and the expiry reminders.
    pub webhooks: WebhookSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            token_format: TokenFormat::default(),
            shutdown_grace: Duration::from_secs(10),
            cache: CacheSettings {
                capacity: 1_000_000,
                negative_capacity: 100_000,
                ttl: Duration::from_secs(600),
            },
            change_poll_interval: Duration::from_secs(1),
            last_used_interval: Duration::from_secs(60),
            preload_cache: true,
            migrate: true,
            limits: Limits::default(),
            ext_authz_remove_authorization: false,
            callers: Callers::default(),
            policy: Policy::default(),
            trusted_proxies: CidrList::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// HTTP/2 pings find dead peers (and keep idle connections through middleboxes).
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// Bounds that keep one caller, or a burst, from taking the server down.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Calls in flight across all connections (health checks excepted); more
    /// are refused with RESOURCE_EXHAUSTED at once.
    pub max_in_flight: usize,
    /// A call still running after this is cancelled (CANCELLED to the caller).
    pub call_timeout: Duration,
    /// Largest decoded request message; a larger one is refused.
    pub max_message_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest header block (metadata) a request may send.
    pub max_header_list_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 512,
            call_timeout: Duration::from_secs(10),
            // A 100 KB junk token must still get its `active: false`.
            max_message_bytes: 128 * 1024,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// A background task that stops when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
pub enum ServeError {
    Reflection(tonic_reflection::server::Error),
    Transport(tonic::transport::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Reflection(err) => write!(f, "building server reflection: {err}"),
            ServeError::Transport(err) => write!(f, "serving gRPC: {err}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// How often a serving server checks that storage still answers.
const STORAGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Retry delays while storage is unreachable: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Migrates (when asked; otherwise checks that a separate job has) and pings
/// storage; the error is logged by the caller.
async fn storage_ready(store: &Store, migrate: bool) -> Result<(), StoreError> {
    if migrate {
        store.migrate().await?;
    } else if !store.is_migrated().await? {
        return Err(StoreError::Config(
            "the database is not migrated: run `patd migrate` (or start without --no-migrate)"
                .to_owned(),
        ));
    }
    store.ping().await
}

/// Keeps health in step with storage: SERVING while it answers, NOT_SERVING
/// (so meshes and Kubernetes drain this replica) once two checks in a row fail,
/// retrying with backoff. While storage is down, storage calls fail at once
/// ([`Store::set_reachable`]). The first time storage is ready it starts the cache
/// preload. Once shutdown has begun it never reports SERVING again.
async fn watch_storage(
    store: Store,
    reporter: HealthReporter,
    migrate: bool,
    first_attempt: Result<(), StoreError>,
    preload: Option<Verifier>,
    draining: Arc<AtomicBool>,
) {
    let mut migrated = first_attempt.is_ok();
    let mut serving = None;
    let mut failures = 0;
    let mut retry = RETRY_FIRST;
    let mut preloader = None;
    let mut attempt = first_attempt;
    loop {
        match attempt {
            Ok(()) => {
                failures = 0;
                store.set_reachable(true);
                if serving != Some(true) && !draining.load(Ordering::Acquire) {
                    set_health(&reporter, ServingStatus::Serving).await;
                    // Shutdown may have begun while SERVING was being set: it wins.
                    if draining.load(Ordering::Acquire) {
                        set_health(&reporter, ServingStatus::NotServing).await;
                    } else {
                        tracing::info!(backend = store.backend_name(), "storage ready: SERVING");
                        serving = Some(true);
                    }
                }
                if let Some(verifier) = preload.as_ref().filter(|_| preloader.is_none()) {
                    let verifier = verifier.clone();
                    preloader = Some(AbortOnDrop(tokio::spawn(async move {
                        if let Err(err) = verifier.preload().await {
                            tracing::warn!(error = %err, "cache preload failed; tokens load on first use");
                        }
                    })));
                }
                retry = RETRY_FIRST;
                tokio::time::sleep(STORAGE_CHECK_INTERVAL).await;
            }
            // One failed check while serving is retried at once before anything
            // changes: a single lost packet should not drain the replica.
            Err(err) if serving == Some(true) && failures == 0 => {
                failures += 1;
                tracing::warn!(error = %err, "storage check failed; checking again");
                tokio::time::sleep(RETRY_FIRST).await;
            }
            Err(err) => {
                failures += 1;
                store.set_reachable(false);
                if serving != Some(false) {
                    set_health(&reporter, ServingStatus::NotServing).await;
                    serving = Some(false);
                }
                tracing::warn!(error = %err, retry_in = ?retry, "storage unreachable: NOT_SERVING");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        attempt = storage_ready(&store, migrate && !migrated).await;
        migrated |= attempt.is_ok();
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Where the server listens: gRPC (with TLS when `tls` is set), and optionally
/// Prometheus metrics over HTTP and a plaintext gRPC port serving only
/// `grpc.health.v1` (Kubernetes' gRPC probes cannot speak TLS).
pub struct Listeners {
    pub grpc: TcpListener,
    pub tls: Option<Arc<TlsReloader>>,
    pub metrics: Option<TcpListener>,
    pub health: Option<TcpListener>,
    /// HTTP: RFC 7662 introspection and `/healthz`.
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Listeners {
        Listeners {
            grpc,
            tls: None,
            metrics: None,
            health: None,
            http: None,
        }
    }
}

/// Serves on `listeners` until `shutdown` resolves, then reports NOT_SERVING, stops
/// accepting calls and lets in-flight ones finish for at most the shutdown grace.
/// Health reports SERVING only after a round trip to `store` succeeded.
pub async fn run(
    settings: ServerSettings,
    store: Store,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        tls,
        metrics: metrics_listener,
        health: health_listener,
        http: http_listener,
    } = listeners.into();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The reporter starts with "" SERVING; nothing is until storage answers.
    set_health(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;

    // Both reflection versions describe everything served, each other included, so
    // old and new grpcurl alike list the same services.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;

    let verifier = Verifier::new(settings.token_format.clone(), store.clone(), settings.cache);

    let local_addr = listener
        .local_addr()
        .map_or_else(|err| err.to_string(), |addr| addr.to_string());
    let tls_watch = tls
        .clone()
        .map(|tls| AbortOnDrop(tokio::spawn(tls.watch())));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (incoming, acceptor) = tls::incoming(listener, tls.clone());
    let stop_accepting = acceptor.abort_handle();
    let acceptor = AbortOnDrop(acceptor);

    // One in-flight guard for gRPC and HTTP calls alike.
    let shed = ShedLayer::new(settings.limits.max_in_flight);
    let (stop_http, http_stopping) = tokio::sync::watch::channel(false);
    let mut http_server = http_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            let described = self::http::describe(addr, tls.is_some());
            tracing::info!(%addr, "RFC 7662 introspection at {described}");
        }
        let state = Arc::new(self::http::HttpState {
            introspection: HttpIntrospection::new(verifier.clone(), settings.callers.clone()),
            forward_auth: ForwardAuth::new(verifier.clone(), settings.trusted_proxies.clone()),
            health: tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
            shed: shed.clone(),
        });
        AbortOnDrop(tokio::spawn(self::http::serve(
            listener,
            tls.clone(),
            state,
            http_stopping.clone(),
        )))
    });

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_reporter = reporter.clone();
    let draining = Arc::new(AtomicBool::new(false));
    let signal_draining = draining.clone();
    let signal_feed = verifier.feed().clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: reporting NOT_SERVING and draining");
        signal_draining.store(true, Ordering::Release);
        set_health(&signal_reporter, ServingStatus::NotServing).await;
        // Change streams end now (their subscribers resume on another replica),
        // rather than holding the drain open until shutdown_grace.
        signal_feed.close();
        // New connections are refused from now on, not accepted and left hanging.
        stop_accepting.abort();
        stop_http.send_replace(true);
        let _ = draining_tx.send(());
    };

    // The side ports answer from the start: liveness must not wait for storage.
    let metrics_server = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        AbortOnDrop(tokio::spawn(self::metrics::serve(
            listener,
            verifier.metrics().clone(),
            store.clone(),
        )))
    });
    let health_server = health_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "health (plaintext) listening");
        }
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let health = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming(incoming);
        AbortOnDrop(tokio::spawn(async move {
            if let Err(err) = health.await {
                tracing::error!(error = %err, "health listener failed");
            }
        }))
    });

    // One attempt before serving, so that a healthy start is SERVING from the
    // first call (connections meanwhile wait in the listen backlog); after that,
    // a background watch retries, turns health on and off, and preloads.
    let ready = storage_ready(&store, settings.migrate).await;
    if ready.is_ok() {
        store.set_reachable(true);
        // New webhook endpoints start from here: before the first call is served.
        if let Err(err) = webhooks::register(&store, &settings.webhooks).await {
            tracing::warn!(error = %err, "webhook endpoints not registered yet; retrying");
        }
    }
    // Background duties start once the first attempt has settled whether storage
    // answers (a lazily opened store is marked reachable only then).
    let follower = AbortOnDrop(tokio::spawn(
        verifier
            .clone()
            .follow_changes(settings.change_poll_interval),
    ));
    let notifications = AbortOnDrop(tokio::spawn(verifier.clone().follow_notifications()));
    let writer = AbortOnDrop(tokio::spawn(
        verifier.clone().write_behind(settings.last_used_interval),
    ));
    let watch = AbortOnDrop(tokio::spawn(watch_storage(
        store.clone(),
        reporter.clone(),
        settings.migrate,
        ready,
        settings.preload_cache.then(|| verifier.clone()),
        draining,
    )));
    // Webhooks and reminders: their own tasks, so a slow receiver never holds a call.
    let lease_owner = webhooks::lease_owner();
    let deliveries = AbortOnDrop(tokio::spawn(webhooks::run(
        store.clone(),
        settings.webhooks.clone(),
        verifier.metrics().clone(),
        lease_owner.clone(),
    )));
    tracing::info!(addr = %local_addr, scheme, backend = store.backend_name(), "listening");

    let limits = &settings.limits;
    let serve = tonic::transport::Server::builder()
        .timeout(limits.call_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Connections are recycled (GOAWAY, then in-flight calls finish), so that
        // clients rebalance across replicas and no connection lives forever.
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        // Shed before logging: under overload, refusals are cheap and unlogged.
        .layer(shed)
        .layer(CallLogLayer::new(verifier.metrics().clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            TokenServiceServer::new(TokenApi::new(
                verifier.clone(),
                settings.callers.clone(),
                settings.policy.clone(),
            ))
            .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            IntrospectionServiceServer::new(IntrospectionApi::new(
                verifier.clone(),
                settings.callers.clone(),
            ))
            .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            AuthorizationServer::new(ExtAuthzApi::new(
                verifier.clone(),
                settings.callers.clone(),
                settings.ext_authz_remove_authorization,
            ))
            .max_decoding_message_size(limits.max_message_bytes),
        )
        .serve_with_incoming_shutdown(incoming, signal);

    let drain_deadline = async {
        if draining_rx.await.is_ok() {
            tokio::time::sleep(settings.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await
        }
    };

    // Both ports drain within the one grace.
    let serve = async {
        let served = serve.await;
        if served.is_ok()
            && let Some(http) = http_server.as_mut()
        {
            let _ = (&mut http.0).await;
        }
        served
    };
    tokio::select! {
        result = serve => result.map_err(ServeError::Transport)?,
        () = drain_deadline => {
            tracing::warn!(grace = ?settings.shutdown_grace, "in-flight calls did not finish in time; closing");
        }
    }
    // Stop the background tasks, but not in the middle of a last_used flush.
    let paused = verifier.pause_flushes().await;
    drop((
        follower,
        notifications,
        writer,
        watch,
        metrics_server,
        deliveries,
    ));
    drop((acceptor, tls_watch, health_server, http_server));
    drop(paused);
    match verifier.flush_last_used().await {
        Ok(written) => tracing::info!(written, "last_used_at flushed"),
        Err(err) => tracing::warn!(error = %err, "last_used_at could not be flushed at shutdown"),
    }
    // Another replica takes over this one's webhook endpoints at once.
    let release = webhooks::release(&store, &settings.webhooks, &lease_owner);
    let _ = tokio::time::timeout(Duration::from_secs(2), release).await;
    tracing::info!("server stopped");
    Ok(())
}
