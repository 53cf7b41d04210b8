//! The command line (the binary's, not the library's): `serve`, `migrate`, the
//! operator's `admin` commands, which work directly on the configured database
//! (that is how the first token is minted), the API client commands (`create`,
//! `list`, …; see `client`), and `bench`.
//!
//! May use: the whole library.

#[macro_use]
pub mod output;
pub mod bench;
pub mod client;
pub mod webhooks;

use std::error::Error;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use bench::BenchArgs;
use client::{ClientCommand, HealthArgs, NewTokenArgs};
use output::shown;
use patd::api::auth::{IntrospectionCallers, generate_service_credential, service_credential_hash};
use patd::config::{Config, Overrides};
use patd::domain::cidr::CidrList;
use patd::domain::clock;
use patd::domain::labels::{Labels, validate_description};
use patd::domain::model::{Actor, Owner, TokenRecord, TokenSpec, parse_scopes};
use patd::domain::resource::ResourceList;
use patd::serve;
use patd::serve::telemetry::{self, LogFormat};
use patd::serve::tls::{ClientAuth, TlsReloader};
use patd::store::{Connect, Cursor, DatabaseUrl, EventKind, Store};

#[derive(Debug, Parser)]
#[command(
    name = "patd",
    version,
    about = "Personal access tokens over gRPC: issue, manage and introspect"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes; `--help` lists them after the command's own.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// TOML configuration file (keys as in the README); flags and PATD_* variables win over it
    #[arg(long, env = "PATD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// sqlite:PATH or postgres://USER@HOST/DB [default: sqlite://patd.db]
    #[arg(long, env = "PATD_DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Prefix of every token's secret [default: patd_]
    #[arg(long, env = "PATD_TOKEN_PREFIX", global = true)]
    token_prefix: Option<String>,
    /// Log filter in RUST_LOG syntax [default: info]
    #[arg(long, env = "PATD_LOG", global = true)]
    log: Option<String>,
    /// Log line format [default: text]
    #[arg(long, env = "PATD_LOG_FORMAT", global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Storage connections per process [default: 4 for SQLite, 10 for Postgres]
    #[arg(long, env = "PATD_MAX_CONNECTIONS", global = true)]
    max_connections: Option<u32>,
    /// Longest one storage call may take before it fails as UNAVAILABLE [default: 5s]
    #[arg(long, env = "PATD_STORAGE_TIMEOUT", global = true, value_parser = humantime::parse_duration)]
    storage_timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (creates and migrates the database on first start)
    Serve(ServeArgs),
    /// Apply the embedded database migrations and exit
    Migrate,
    /// Operator commands on the database itself, bypassing the API and its checks:
    /// bootstrap (the first token) and recovery. Need --database-url, not a token.
    #[command(subcommand)]
    Admin(AdminCommand),
    #[command(flatten)]
    Client(ClientCommand),
    /// Ask a running server for its grpc.health.v1 status; exit 0 only if SERVING
    Health(HealthArgs),
    /// Load-test Introspect against Health/Check (seeds its own database,
    /// sqlite://patd-bench.db unless --database-url is given)
    Bench(BenchArgs),
    /// Measure webhooks: the outbox's cost on CreateToken/RevokeToken, delivery
    /// delay and throughput to a local receiver
    BenchWebhooks(bench::webhooks::WebhookBenchArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051]
    #[arg(long, env = "PATD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Envoy ext_authz: remove `authorization` from allowed requests before they
    /// reach the upstream [default: false]
    #[arg(long, env = "PATD_EXT_AUTHZ_REMOVE_AUTHORIZATION")]
    ext_authz_remove_authorization: Option<bool>,
    /// PEM certificate chain for TLS on the gRPC port (reloaded when it changes)
    #[arg(long, env = "PATD_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for --tls-cert-file
    #[arg(long, env = "PATD_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA bundle: verify client certificates against it (mTLS)
    #[arg(long, env = "PATD_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// With --tls-client-ca-file: must every client present a certificate? [default: optional]
    #[arg(long, env = "PATD_TLS_CLIENT_AUTH", value_enum)]
    tls_client_auth: Option<ClientAuth>,
    /// How often the TLS files are checked for changes [default: 10s]
    #[arg(long, env = "PATD_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration)]
    tls_reload_interval: Option<Duration>,
    /// Who may call Introspect and Check: any, or only trusted callers [default: any]
    #[arg(long, env = "PATD_INTROSPECTION_CALLERS", value_enum)]
    introspection_callers: Option<IntrospectionCallers>,
    /// Also serve grpc.health.v1 alone, in plaintext, here (for Kubernetes probes
    /// when the main port has TLS), e.g. 0.0.0.0:50052 [default: off]
    #[arg(long, env = "PATD_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9090 [default: off]
    #[arg(long, env = "PATD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve HTTP here: RFC 7662 introspection at POST /oauth2/introspect, and
    /// GET /healthz, e.g. 0.0.0.0:8080 [default: off]
    #[arg(long, env = "PATD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Comma-separated networks of the proxies whose X-Forwarded-For, X-Real-IP
    /// and X-Patd-Required-Scopes forward auth believes, e.g. 10.0.0.0/8 [default: none]
    #[arg(long, env = "PATD_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// How long in-flight calls may finish after SIGTERM, e.g. 10s [default: 10s]
    #[arg(long, env = "PATD_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// Tokens kept in memory for Introspect (about 200 bytes each); 0 disables
    /// [default: 1000000]
    #[arg(long, env = "PATD_CACHE_CAPACITY")]
    cache_capacity: Option<usize>,
    /// Unknown secrets remembered as unknown [default: 100000]
    #[arg(long, env = "PATD_NEGATIVE_CACHE_CAPACITY")]
    negative_cache_capacity: Option<usize>,
    /// Longest a cached answer is reused without a change notice [default: 10m]
    #[arg(long, env = "PATD_CACHE_TTL", value_parser = humantime::parse_duration)]
    cache_ttl: Option<Duration>,
    /// Calls in flight before new ones are refused with RESOURCE_EXHAUSTED
    /// (health checks exempt) [default: 512]
    #[arg(long, env = "PATD_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Longest a call may run before it is cancelled [default: 10s]
    #[arg(long, env = "PATD_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// Largest request message accepted, in bytes [default: 131072]
    #[arg(long, env = "PATD_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Do not apply migrations (a separate job does, e.g. the helm chart's
    /// pre-upgrade hook running `patd migrate`)
    #[arg(long, env = "PATD_NO_MIGRATE")]
    no_migrate: bool,
    /// Load tokens into the cache at start, after SERVING [default: true]
    #[arg(long, env = "PATD_PRELOAD_CACHE")]
    preload_cache: Option<bool>,
    /// How often revokes and deletes by other processes are picked up [default: 1s]
    #[arg(long, env = "PATD_CHANGE_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    change_poll_interval: Option<Duration>,
    /// How often last_used_at is written behind [default: 60s]
    #[arg(long, env = "PATD_LAST_USED_INTERVAL", value_parser = humantime::parse_duration)]
    last_used_interval: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Generate a credential for a trusted internal caller: the secret on stdout,
    /// the `[[trusted_callers]]` entry (with only its hash) on stderr
    ServiceCredential {
        /// The caller's name, e.g. portal
        #[arg(long)]
        name: String,
    },
    /// Webhook endpoints' queues and dead letters (list, retry)
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    #[command(flatten)]
    Tokens(AdminTokenCommand),
}

#[derive(Debug, Subcommand)]
enum AdminTokenCommand {
    /// Create a token for any subject and account; prints the secret once, on stdout
    Create {
        /// The subject (user) the token belongs to, e.g. alice
        #[arg(long)]
        subject: String,
        /// The account the subject belongs to, e.g. acme
        #[arg(long)]
        account: String,
        #[command(flatten)]
        token: NewTokenArgs,
    },
    /// List tokens, newest first (every owner's unless filtered)
    List {
        /// Only this subject's tokens (with --account)
        #[arg(long, requires = "account")]
        subject: Option<String>,
        /// Only tokens in this account (with --subject)
        #[arg(long, requires = "subject")]
        account: Option<String>,
    },
    /// Revoke a token by id (idempotent), or with --subject and --account every
    /// token of that owner (offboarding; prints how many were revoked)
    Revoke {
        /// The token's id (22 letters and digits)
        #[arg(required_unless_present = "subject", conflicts_with = "subject")]
        id: Option<String>,
        /// Every token of this subject (with --account)
        #[arg(long, requires = "account")]
        subject: Option<String>,
        /// That subject's account (with --subject)
        #[arg(long, requires = "subject")]
        account: Option<String>,
    },
    /// Delete a token by id
    Delete {
        /// The token's id (22 letters and digits)
        id: String,
    },
}

type CliResult = Result<(), Box<dyn Error>>;

impl Cli {
    fn config(&self) -> Result<Config, String> {
        let global = &self.global;
        let serve = match &self.command {
            Command::Serve(args) => Some(args),
            _ => None,
        };
        Config::load(Overrides {
            config_file: global.config.clone(),
            listen: serve.and_then(|args| args.listen),
            metrics_listen: serve.and_then(|args| args.metrics_listen),
            health_listen: serve.and_then(|args| args.health_listen),
            http_listen: serve.and_then(|args| args.http_listen),
            trusted_proxies: serve.and_then(|args| args.trusted_proxies.clone()),
            ext_authz_remove_authorization: serve
                .and_then(|args| args.ext_authz_remove_authorization),
            tls_cert_file: serve.and_then(|args| args.tls_cert_file.clone()),
            tls_key_file: serve.and_then(|args| args.tls_key_file.clone()),
            tls_client_ca_file: serve.and_then(|args| args.tls_client_ca_file.clone()),
            tls_client_auth: serve.and_then(|args| args.tls_client_auth),
            tls_reload_interval: serve.and_then(|args| args.tls_reload_interval),
            introspection_callers: serve.and_then(|args| args.introspection_callers),
            database_url: global.database_url.clone(),
            token_prefix: global.token_prefix.clone(),
            log: global.log.clone(),
            log_format: global.log_format,
            shutdown_grace: serve.and_then(|args| args.shutdown_grace),
            max_connections: global.max_connections,
            storage_timeout: global.storage_timeout,
            cache_capacity: serve.and_then(|args| args.cache_capacity),
            negative_cache_capacity: serve.and_then(|args| args.negative_cache_capacity),
            cache_ttl: serve.and_then(|args| args.cache_ttl),
            preload_cache: serve.and_then(|args| args.preload_cache),
            max_in_flight: serve.and_then(|args| args.max_in_flight),
            call_timeout: serve.and_then(|args| args.call_timeout),
            max_message_bytes: serve.and_then(|args| args.max_message_bytes),
            change_poll_interval: serve.and_then(|args| args.change_poll_interval),
            last_used_interval: serve.and_then(|args| args.last_used_interval),
        })
    }
}

pub async fn run(cli: Cli) -> CliResult {
    let config = cli.config()?;
    // Operator commands talk to a person: only warnings unless asked for more.
    let default_log = match cli.command {
        Command::Serve(_) => config.log.clone(),
        _ if cli.global.log.is_some() => config.log.clone(),
        _ => "warn".to_owned(),
    };
    let ansi = std::io::stderr().is_terminal();
    let subscriber = telemetry::subscriber(&default_log, config.log_format, ansi, std::io::stderr)?;
    tracing::subscriber::set_global_default(subscriber)?;

    match cli.command {
        Command::Serve(args) => serve(&config, !args.no_migrate).await,
        Command::Migrate => {
            let store = Store::connect(&config.store_options(), true).await?;
            store.close().await;
            note!("migrations applied to {}", config.database_url.redacted());
            Ok(())
        }
        Command::Health(args) => Ok(client::health(args).await?),
        Command::Client(command) => Ok(client::run(command).await?),
        Command::BenchWebhooks(args) => {
            bench::webhooks::run(args, cli.global.database_url.clone()).await
        }
        Command::Bench(args) => {
            let url = cli.global.database_url.clone().map(DatabaseUrl::new);
            bench::run(args, url, config.token_format().clone()).await
        }
        Command::Admin(AdminCommand::ServiceCredential { name }) => {
            let credential = generate_service_credential();
            // Valid TOML as it stands, so `2>caller.toml` makes a configuration.
            note!(
                "# Add to the configuration file of every replica:\n[[trusted_callers]]\nname = {name:?}\ncredential_hash = \"{}\"\n# The credential (on stdout) is shown once; give it to {name} only.",
                service_credential_hash(&credential).to_hex()
            );
            out!("{credential}");
            Ok(())
        }
        Command::Admin(command) => {
            let store = Store::connect(&config.store_options(), true).await?;
            let result = match command {
                AdminCommand::Webhooks(command) => webhooks::run(&config, &store, command).await,
                AdminCommand::Tokens(command) => admin_command(&config, &store, command).await,
                AdminCommand::ServiceCredential { .. } => unreachable!("matched above"),
            };
            store.close().await;
            result
        }
    }
}

async fn serve(config: &Config, migrate: bool) -> CliResult {
    // A file-size limit (RLIMIT_FSIZE) or quota must turn into failed writes
    // ("storage is full"), not kill the server: catching SIGXFSZ makes the write
    // fail with EFBIG instead.
    #[cfg(target_os = "linux")]
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))?;
    // Listen for SIGTERM/SIGINT from the start, even before storage is reached.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    tracing::info!(database = %config.database_url.redacted(), "opening storage");
    let options = config.store_options();
    let mut settings = config.server.clone();
    let store = if config.database_url.is_postgres() {
        // A fleet's database may come up after patd: serve NOT_SERVING meanwhile,
        // then migrate (replicas starting together take turns: sqlx holds an
        // advisory lock) and turn SERVING when it answers.
        settings.migrate = migrate;
        Store::open(&options, Connect::Lazily).await?
    } else {
        // A local file that cannot be opened or migrated will not fix itself.
        settings.migrate = false;
        Store::connect(&options, migrate).await?
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", config.listen))?;
    let metrics = bind_optional(config.metrics_listen, "metrics").await?;
    let health = bind_optional(config.health_listen, "health").await?;
    let http = bind_optional(config.http_listen, "http").await?;
    let tls = config.tls.clone().map(TlsReloader::load).transpose()?;
    let listeners = serve::Listeners {
        grpc: listener,
        tls,
        metrics,
        health,
        http,
    };
    let stop = async {
        let _ = stop_rx.await;
    };
    let grace = settings.shutdown_grace;
    serve::run(settings, store.clone(), listeners, stop).await?;
    // Closing waits for every pooled connection; a hung one must not keep the
    // process alive after the drain.
    if tokio::time::timeout(grace, store.close()).await.is_err() {
        tracing::warn!("storage connections did not close in time; exiting anyway");
    }
    Ok(())
}

async fn bind_optional(
    addr: Option<SocketAddr>,
    what: &str,
) -> Result<Option<TcpListener>, String> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|err| format!("cannot listen for {what} on {addr}: {err}")),
        None => Ok(None),
    }
}

/// SIGXFSZ on Linux (x86_64 and aarch64 alike): sent when a write passes the
/// file-size limit.
#[cfg(target_os = "linux")]
const SIGXFSZ: i32 = 25;

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn admin_command(config: &Config, store: &Store, command: AdminTokenCommand) -> CliResult {
    match command {
        AdminTokenCommand::Create {
            subject,
            account,
            token,
        } => {
            let now = clock::now_micros();
            let spec = TokenSpec {
                name: &token.name,
                scopes: parse_scopes(&token.scopes)?,
                expires_at: token.expiry_micros()?,
                allowed_cidrs: CidrList::parse(&token.allowed_cidrs)?,
                description: validate_description(&token.description)?,
                labels: Labels::parse(token.labels.iter().map(|(k, v)| (k, v)))?,
                resources: ResourceList::parse("resources", &token.resources)?,
            };
            let owner = Owner::new(&subject, &account)?;
            let (new, secret) = spec.issue(config.token_format(), owner, now)?;
            store.insert(&new, &Actor::operator()).await?;
            note!("{}", describe(&new.record, now));
            note!("The secret below is shown once; store it now.");
            out!("{}", secret.expose());
            Ok(())
        }
        AdminTokenCommand::List { subject, account } => {
            let owner = match (subject, account) {
                (Some(subject), Some(account)) => Some(Owner::new(&subject, &account)?),
                _ => None,
            };
            let now = clock::now_micros();
            out!(
                "{:<22}  {:<8}  {:<20}  {:<20}  {:<20}  {:<20}  SCOPES",
                "ID",
                "STATE",
                "NAME",
                "SUBJECT",
                "ACCOUNT",
                "EXPIRES"
            );
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = store.list(owner.as_ref(), cursor, 1000).await?;
                for token in &page.tokens {
                    out!(
                        "{:<22}  {:<8}  {:<20}  {:<20}  {:<20}  {:<20}  {}",
                        token.id,
                        token.state_at(now).as_str(),
                        shown(&token.name),
                        shown(&token.owner.subject),
                        shown(&token.owner.account),
                        token.expires_at.map_or("never".to_owned(), clock::rfc3339),
                        token.scopes.to_stored(),
                    );
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        }
        AdminTokenCommand::Revoke {
            id: None,
            subject: Some(subject),
            account: Some(account),
        } => {
            let owner = Owner::new(&subject, &account)?;
            let now = clock::now_micros();
            let revoked = store.revoke_all(&owner, now, &Actor::operator()).await?;
            out!("{}", revoked.len());
            Ok(())
        }
        AdminTokenCommand::Revoke { id, .. } => {
            let id = id.ok_or("name a token id, or --subject and --account")?;
            let token = find(store, &id).await?;
            let now = clock::now_micros();
            let revoked = store
                .revoke(
                    &token.owner,
                    &id,
                    now,
                    &Actor::operator(),
                    EventKind::Revoked,
                )
                .await?;
            let (revoked, _) = revoked.ok_or_else(|| format!("no token with id {id}"))?;
            out!("{}", describe(&revoked, now));
            Ok(())
        }
        AdminTokenCommand::Delete { id } => {
            let token = find(store, &id).await?;
            if store
                .delete(&token.owner, &id, &Actor::operator(), clock::now_micros())
                .await?
                .is_none()
            {
                return Err(format!("no token with id {id}").into());
            }
            out!("deleted {}", describe(&token, clock::now_micros()));
            Ok(())
        }
    }
}

async fn find(store: &Store, id: &str) -> Result<TokenRecord, Box<dyn Error>> {
    Ok(store
        .find_by_id(id)
        .await?
        .ok_or_else(|| format!("no token with id {id}"))?)
}

/// One line about a token, for the operator.
fn describe(token: &TokenRecord, now: i64) -> String {
    format!(
        "token {} \"{}\" ({}) of {} in {}: {}, scopes {}, expires {}",
        token.id,
        shown(&token.name),
        token.hint,
        shown(&token.owner.subject),
        shown(&token.owner.account),
        token.state_at(now).as_str(),
        token.scopes.to_stored(),
        token.expires_at.map_or("never".to_owned(), clock::rfc3339),
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command of the tree, with its path (`patd admin create`).
    fn commands(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            out.push((path.clone(), sub.clone()));
            commands(sub, path, out);
        }
    }

    #[test]
    fn every_option_has_a_one_line_help_text() {
        let mut all = Vec::new();
        commands(&Cli::command(), "patd".to_owned(), &mut all);
        assert!(all.len() > 20, "{}", all.len());
        let mut missing = Vec::new();
        for (path, command) in &all {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                if help.trim().is_empty() || help.contains('\n') {
                    missing.push(format!("{path}: --{id}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "options without a one-line help: {missing:#?}"
        );
    }

    #[test]
    fn a_commands_own_options_come_before_the_global_ones() {
        let mut cli = Cli::command();
        cli.build();
        let mut all = Vec::new();
        commands(&cli, "patd".to_owned(), &mut all);
        for (path, mut command) in all {
            // clap's own `help` subcommands take no options.
            if command.has_subcommands() || path.split(' ').any(|word| word == "help") {
                continue;
            }
            let help = command.render_help().to_string();
            let own = help
                .find("Options:")
                .unwrap_or_else(|| panic!("{path}:\n{help}"));
            let global = help
                .find("Global options:")
                .unwrap_or_else(|| panic!("{path} shows no global options:\n{help}"));
            assert!(own < global, "{path}:\n{help}");
            let own_part = &help[own..global];
            assert!(!own_part.contains("--database-url <"), "{path}:\n{help}");
        }
    }
}
