//! Configuration: defaults, then a TOML file, then `PATD_*` environment variables,
//! then flags (clap reads the last two, flags first). `Debug` redacts secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::auth::{
    Callers, IntrospectionCallers, SERVICE_CREDENTIAL_PREFIX, TrustedCallerConfig,
};
use crate::domain::cidr::CidrList;
use crate::domain::clock;
use crate::domain::policy::{Policy, PolicyConfig};
use crate::domain::token::{DEFAULT_PREFIX, TokenFormat};
use crate::serve::ServerSettings;
use crate::serve::telemetry::LogFormat;
use crate::serve::tls::{ClientAuth, TlsSettings};
use crate::store::{DatabaseUrl, StoreOptions};
use crate::webhooks::{DeliveryConfig, EndpointConfig, WebhookSettings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// An SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://patd.db";
pub const DEFAULT_LOG: &str = "info";
/// SQLite serves lookups from a local file and serialises writes: a few
/// connections suffice. Postgres is remote and shared by a fleet.
const DEFAULT_SQLITE_CONNECTIONS: u32 = 4;
const DEFAULT_POSTGRES_CONNECTIONS: u32 = 10;
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration file's keys; every one is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    health_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    trusted_proxies: Option<Vec<String>>,
    database_url: Option<String>,
    token_prefix: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    shutdown_grace: Option<String>,
    max_connections: Option<u32>,
    acquire_timeout: Option<String>,
    storage_timeout: Option<String>,
    cache_capacity: Option<usize>,
    negative_cache_capacity: Option<usize>,
    cache_ttl: Option<String>,
    preload_cache: Option<bool>,
    ext_authz_remove_authorization: Option<bool>,
    max_in_flight: Option<usize>,
    call_timeout: Option<String>,
    max_message_bytes: Option<usize>,
    change_poll_interval: Option<String>,
    last_used_interval: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    tls_client_auth: Option<ClientAuth>,
    tls_reload_interval: Option<String>,
    #[serde(default)]
    trusted_callers: Vec<TrustedCallerConfig>,
    introspection_callers: Option<IntrospectionCallers>,
    #[serde(default)]
    policy: PolicyConfig,
    #[serde(default)]
    webhooks: Vec<EndpointConfig>,
    #[serde(default)]
    webhook_delivery: DeliveryConfig,
    expiry_reminders: Option<Vec<String>>,
    expiry_reminder_interval: Option<String>,
}

/// Values from flags or the environment; `None` falls through to the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub trusted_proxies: Option<Vec<String>>,
    pub database_url: Option<String>,
    pub token_prefix: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    pub shutdown_grace: Option<Duration>,
    pub max_connections: Option<u32>,
    pub storage_timeout: Option<Duration>,
    pub cache_capacity: Option<usize>,
    pub negative_cache_capacity: Option<usize>,
    pub cache_ttl: Option<Duration>,
    pub preload_cache: Option<bool>,
    pub ext_authz_remove_authorization: Option<bool>,
    pub max_in_flight: Option<usize>,
    pub call_timeout: Option<Duration>,
    pub max_message_bytes: Option<usize>,
    pub change_poll_interval: Option<Duration>,
    pub last_used_interval: Option<Duration>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub tls_client_auth: Option<ClientAuth>,
    pub tls_reload_interval: Option<Duration>,
    pub introspection_callers: Option<IntrospectionCallers>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Prometheus `/metrics` over HTTP; off unless set.
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext `grpc.health.v1` only, for probes when the main port has TLS.
    pub health_listen: Option<SocketAddr>,
    /// HTTP: RFC 7662 introspection and `/healthz`; off unless set.
    pub http_listen: Option<SocketAddr>,
    /// TLS on the gRPC port; plaintext unless set.
    pub tls: Option<TlsSettings>,
    pub database_url: DatabaseUrl,
    pub log: String,
    pub log_format: LogFormat,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub storage_timeout: Duration,
    pub server: ServerSettings,
}

/// The override, else the file's value, else `default`.
fn duration(
    key: &str,
    overridden: Option<Duration>,
    file: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    match (overridden, file) {
        (Some(value), _) => Ok(value),
        (None, Some(text)) => clock::parse_duration(key, text),
        (None, None) => Ok(default),
    }
}

const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Refuses database URLs that would lose what is stored: an SQLite URL naming
/// no file (`sqlite:`) or an in-memory database (each pooled connection would
/// get one of its own, and all of it is gone on exit).
fn check_database_url(url: &DatabaseUrl) -> Result<(), String> {
    if !url.is_sqlite() {
        return Ok(());
    }
    let rest = url.expose().trim_start_matches("sqlite:");
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.trim().is_empty() {
        return Err(format!(
            "database_url {:?} names no file: use sqlite:PATH, e.g. sqlite://patd.db",
            url.redacted()
        ));
    }
    let in_memory = path == ":memory:"
        || query
            .split('&')
            .any(|param| param.eq_ignore_ascii_case("mode=memory"));
    if in_memory {
        return Err(format!(
            "database_url {:?} is an in-memory database, which loses every token on exit: name a file",
            url.redacted()
        ));
    }
    Ok(())
}

fn tls_settings(overrides: &Overrides, file: &FileConfig) -> Result<Option<TlsSettings>, String> {
    let cert = overrides
        .tls_cert_file
        .clone()
        .or(file.tls_cert_file.clone());
    let key = overrides.tls_key_file.clone().or(file.tls_key_file.clone());
    let client_ca = overrides
        .tls_client_ca_file
        .clone()
        .or(file.tls_client_ca_file.clone());
    let (cert_file, key_file) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_none() => return Ok(None),
        (None, None) => {
            return Err(
                "tls_client_ca_file needs tls_cert_file and tls_key_file (mTLS is TLS)".to_owned(),
            );
        }
        _ => return Err("tls_cert_file and tls_key_file go together".to_owned()),
    };
    let reload_interval = duration(
        "tls_reload_interval",
        overrides.tls_reload_interval,
        &file.tls_reload_interval,
        DEFAULT_TLS_RELOAD_INTERVAL,
    )?;
    if reload_interval.is_zero() {
        return Err("tls_reload_interval must be longer than zero".to_owned());
    }
    Ok(Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file: client_ca,
        client_auth: overrides
            .tls_client_auth
            .or(file.tls_client_auth)
            .unwrap_or_default(),
        reload_interval,
    }))
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read config file {}: {err}", path.display()))?;
    toml::from_str(&text).map_err(|err| describe_toml_error(path, &text, &err))
}

/// Where and what is wrong in the file, never what the file says there: the
/// toml crate's own text quotes the offending line, which may hold a database
/// password, and serde's messages quote the offending value.
fn describe_toml_error(path: &Path, text: &str, err: &toml::de::Error) -> String {
    let location = err.span().map_or_else(String::new, |span| {
        let start = span.start.min(text.len());
        let before = text.get(..start).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // The key the line sets, when it is a plain one: it says what to fix.
        let line_text = text.lines().nth(line - 1).unwrap_or_default();
        let key = line_text
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| {
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            });
        match key {
            Some(key) => format!(", line {line}, column {column} ({key})"),
            None => format!(", line {line}, column {column}"),
        }
    });
    format!(
        "config file {}{location}: {}",
        path.display(),
        redact_values(err.message())
    )
}

/// `message` with the values serde quotes (`string "…"`, `character '…'`,
/// unknown variant `` `…` ``) replaced by `…`; key names (unknown field `x`)
/// stay, since they say what to fix.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = rest
            .char_indices()
            .find(|&(i, c)| c == '"' || c == '\'' || rest[i..].starts_with("variant `"));
        let Some((start, c)) = next else {
            out.push_str(rest);
            return out;
        };
        let (open, close) = match c {
            '"' => ("\"", '"'),
            '\'' => ("'", '\''),
            _ => ("variant `", '`'),
        };
        out.push_str(&rest[..start]);
        out.push_str(open);
        let value = &rest[start + open.len()..];
        // serde escapes quotes inside the value with a backslash.
        let mut escaped = false;
        let end = value.char_indices().find(|&(_, c)| {
            let found = c == close && !escaped;
            escaped = c == '\\' && !escaped;
            found
        });
        out.push('…');
        match end {
            Some((end, _)) => {
                out.push(close);
                rest = &value[end + close.len_utf8()..];
            }
            None => return out,
        }
    }
}

impl Config {
    pub fn load(overrides: Overrides) -> Result<Config, String> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::build(overrides, file)
    }

    /// The configuration a file with `text` gives, without overrides (the
    /// fuzzers load configurations this way).
    pub fn from_file_text(text: &str) -> Result<Config, String> {
        let file = toml::from_str(text)
            .map_err(|err| describe_toml_error(Path::new("(text)"), text, &err))?;
        Config::build(Overrides::default(), file)
    }

    fn build(overrides: Overrides, mut file: FileConfig) -> Result<Config, String> {
        let tls = tls_settings(&overrides, &file)?;
        let callers = Callers::new(
            std::mem::take(&mut file.trusted_callers),
            overrides
                .introspection_callers
                .or(file.introspection_callers)
                .unwrap_or_default(),
        )?;
        if callers.needs_client_certs()
            && tls.as_ref().is_none_or(|tls| tls.client_ca_file.is_none())
        {
            return Err(
                "a trusted caller identified by client_cert_dns_name needs tls_client_ca_file (mTLS)"
                    .to_owned(),
            );
        }
        let defaults = ServerSettings::default();
        let acquire_timeout = duration(
            "acquire_timeout",
            None,
            &file.acquire_timeout,
            DEFAULT_ACQUIRE_TIMEOUT,
        )?;
        let storage_timeout = duration(
            "storage_timeout",
            overrides.storage_timeout,
            &file.storage_timeout,
            DEFAULT_STORAGE_TIMEOUT,
        )?;
        let database_url = DatabaseUrl::new(
            overrides
                .database_url
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
        );
        check_database_url(&database_url)?;
        let default_connections = if database_url.is_sqlite() {
            DEFAULT_SQLITE_CONNECTIONS
        } else {
            DEFAULT_POSTGRES_CONNECTIONS
        };
        let max_connections = overrides
            .max_connections
            .or(file.max_connections)
            .unwrap_or(default_connections);
        if max_connections == 0 {
            return Err("max_connections must be at least 1".to_owned());
        }
        let mut server = ServerSettings {
            shutdown_grace: duration(
                "shutdown_grace",
                overrides.shutdown_grace,
                &file.shutdown_grace,
                defaults.shutdown_grace,
            )?,
            change_poll_interval: duration(
                "change_poll_interval",
                overrides.change_poll_interval,
                &file.change_poll_interval,
                defaults.change_poll_interval,
            )?,
            last_used_interval: duration(
                "last_used_interval",
                overrides.last_used_interval,
                &file.last_used_interval,
                defaults.last_used_interval,
            )?,
            ..defaults
        };
        let limits = &mut server.limits;
        limits.call_timeout = duration(
            "call_timeout",
            overrides.call_timeout,
            &file.call_timeout,
            limits.call_timeout,
        )?;
        limits.max_in_flight = overrides
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or(limits.max_in_flight);
        limits.max_message_bytes = overrides
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(limits.max_message_bytes);
        if limits.max_in_flight == 0 || limits.max_message_bytes == 0 {
            return Err("max_in_flight and max_message_bytes must be at least 1".to_owned());
        }
        for (key, value) in [
            ("call_timeout", server.limits.call_timeout),
            ("storage_timeout", storage_timeout),
            ("change_poll_interval", server.change_poll_interval),
            ("last_used_interval", server.last_used_interval),
            ("shutdown_grace", server.shutdown_grace),
        ] {
            if value.is_zero() {
                return Err(format!("{key} must be longer than zero"));
            }
        }
        server.callers = callers;
        server.policy = Policy::new(&file.policy)?;
        server.webhooks = WebhookSettings::new(
            std::mem::take(&mut file.webhooks),
            &file.webhook_delivery,
            file.expiry_reminders.as_deref(),
            &file.expiry_reminder_interval,
        )?;
        let proxies = overrides
            .trusted_proxies
            .as_ref()
            .or(file.trusted_proxies.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        server.trusted_proxies =
            CidrList::parse(proxies).map_err(|err| format!("trusted_proxies: {}", err.0))?;
        server.ext_authz_remove_authorization = overrides
            .ext_authz_remove_authorization
            .or(file.ext_authz_remove_authorization)
            .unwrap_or(server.ext_authz_remove_authorization);
        server.preload_cache = overrides
            .preload_cache
            .or(file.preload_cache)
            .unwrap_or(server.preload_cache);
        let cache = &mut server.cache;
        cache.ttl = duration("cache_ttl", overrides.cache_ttl, &file.cache_ttl, cache.ttl)?;
        if cache.ttl < Duration::from_secs(1) {
            // Entry ages are kept in whole seconds.
            return Err(
                "cache_ttl must be at least 1s (set cache_capacity = 0 to disable the cache)"
                    .to_owned(),
            );
        }
        cache.capacity = overrides
            .cache_capacity
            .or(file.cache_capacity)
            .unwrap_or(cache.capacity);
        cache.negative_capacity = overrides
            .negative_cache_capacity
            .or(file.negative_cache_capacity)
            .unwrap_or(cache.negative_capacity);
        let prefix = overrides
            .token_prefix
            .or(file.token_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        server.token_format = TokenFormat::new(&prefix).map_err(|err| err.to_string())?;
        // A token with the service-credential prefix would be taken for a
        // service credential (and one that starts like it for a token).
        if prefix.starts_with(SERVICE_CREDENTIAL_PREFIX)
            || SERVICE_CREDENTIAL_PREFIX.starts_with(&prefix)
        {
            return Err(format!(
                "token_prefix {prefix:?} collides with the prefix of service credentials \
                 ({SERVICE_CREDENTIAL_PREFIX}): choose another"
            ));
        }
        Ok(Config {
            metrics_listen: overrides.metrics_listen.or(file.metrics_listen),
            health_listen: overrides.health_listen.or(file.health_listen),
            http_listen: overrides.http_listen.or(file.http_listen),
            tls,
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses")),
            database_url,
            log: overrides
                .log
                .or(file.log)
                .unwrap_or_else(|| DEFAULT_LOG.to_owned()),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            max_connections,
            acquire_timeout,
            storage_timeout,
            server,
        })
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            url: self.database_url.clone(),
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            call_timeout: self.storage_timeout,
        }
    }

    pub fn token_format(&self) -> &TokenFormat {
        &self.server.token_format
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::load(Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.token_format().prefix(), DEFAULT_PREFIX);
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.max_connections, DEFAULT_SQLITE_CONNECTIONS);
    }

    #[test]
    fn file_overrides_defaults_and_overrides_win_over_file() {
        let file = file_with(
            "listen = \"0.0.0.0:6000\"\ndatabase_url = \"postgres://u:pw@db/patd\"\n\
             token_prefix = \"acme_\"\nshutdown_grace = \"3s\"\nmax_connections = 20\n\
             cache_capacity = 5\nchange_poll_interval = \"250ms\"\n\
             metrics_listen = \"0.0.0.0:9090\"\n",
        );
        let from_file = Config::load(Overrides {
            config_file: Some(file.path().to_owned()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(from_file.listen.to_string(), "0.0.0.0:6000");
        assert_eq!(from_file.token_format().prefix(), "acme_");
        assert_eq!(from_file.server.shutdown_grace, Duration::from_secs(3));
        assert_eq!(from_file.server.cache.capacity, 5);
        assert_eq!(
            from_file.server.change_poll_interval,
            Duration::from_millis(250)
        );
        assert_eq!(from_file.max_connections, 20);
        assert_eq!(
            from_file.metrics_listen,
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert!(
            !format!("{from_file:?}").contains("pw@"),
            "Debug leaks the password"
        );

        let overridden = Config::load(Overrides {
            config_file: Some(file.path().to_owned()),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            database_url: Some("sqlite://other.db".to_owned()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(overridden.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(overridden.database_url.expose(), "sqlite://other.db");
        assert_eq!(overridden.token_format().prefix(), "acme_");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("shutdown_grace = \"soon\"", "shutdown_grace"),
            ("databse_url = \"x\"", "unknown field"),
            ("token_prefix = \"bad prefix\"", "token prefix"),
            ("max_connections = 0", "at least 1"),
            ("change_poll_interval = \"0s\"", "longer than zero"),
            ("last_used_interval = \"0ms\"", "longer than zero"),
            ("cache_ttl = \"500ms\"", "at least 1s"),
        ];
        for (text, expected) in cases {
            let file = file_with(text);
            let err = Config::load(Overrides {
                config_file: Some(file.path().to_owned()),
                ..Overrides::default()
            })
            .unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let missing = Config::load(Overrides {
            config_file: Some("/nonexistent/patd.toml".into()),
            ..Overrides::default()
        });
        assert!(missing.unwrap_err().contains("cannot read config file"));
    }

    /// Every way a file can be wrong next to a password: the error says where,
    /// and never what the file says there.
    #[test]
    fn file_errors_never_show_a_password() {
        let url = "postgres://patd:hunter2@db.internal/patd";
        let cases = [
            (format!("database_url = \"{url}\nlisten = 1"), "line 1"),
            (
                format!("database_url = \"{url}\"\ndatabse = 2"),
                "unknown field `databse`",
            ),
            (
                format!("max_connections = \"{url}\""),
                "invalid type: string \"…\", expected u32",
            ),
            (
                format!("database_url = \"{url}\"\ndatabase_url = \"{url}\""),
                "line 2",
            ),
            (format!("database_url = {url}"), "must be quoted"),
            (
                "log_format = \"hunter2\"".to_owned(),
                "unknown variant `…`, expected",
            ),
            (format!("listen = '{url}'"), "socket address"),
            (format!("[policy]\nmax_lifetime = \"{url}\""), "policy"),
            (format!("shutdown_grace = \"{url}\""), "shutdown_grace"),
            (
                format!("[[trusted_callers]]\nname = \"x\"\ncredential_hash = \"{url}\""),
                "64 hex",
            ),
        ];
        for (text, expected) in cases {
            let file = file_with(&text);
            let err = Config::load(Overrides {
                config_file: Some(file.path().to_owned()),
                ..Overrides::default()
            })
            .unwrap_err();
            assert!(!err.contains("hunter2"), "{text:?}: {err}");
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// Found by the `config` fuzz target (fuzz/artifacts): an empty quoted key.
    #[test]
    fn odd_keys_are_named_not_fatal() {
        let err = Config::from_file_text("\"\"=''").unwrap_err();
        assert!(err.contains("unknown field ``"), "{err}");
    }

    #[test]
    fn urls_that_would_lose_tokens_are_refused() {
        for url in [
            "sqlite:",
            "sqlite://",
            "sqlite:?mode=rwc",
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
        ] {
            let err = Config::load(Overrides {
                database_url: Some(url.to_owned()),
                ..Overrides::default()
            })
            .unwrap_err();
            assert!(
                err.contains("names no file") || err.contains("in-memory"),
                "{url}: {err}"
            );
        }
        for url in [
            "sqlite:patd.db",
            "sqlite://patd.db",
            "sqlite:///var/lib/patd/patd.db?mode=rwc",
        ] {
            assert!(
                Config::load(Overrides {
                    database_url: Some(url.to_owned()),
                    ..Overrides::default()
                })
                .is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn token_prefixes_that_collide_with_service_credentials_are_refused() {
        for prefix in ["patdsvc_", "patdsvc_x_"] {
            let err = Config::load(Overrides {
                token_prefix: Some(prefix.to_owned()),
                ..Overrides::default()
            })
            .unwrap_err();
            assert!(err.contains("collides"), "{prefix}: {err}");
        }
        assert!(
            Config::load(Overrides {
                token_prefix: Some("acme_".to_owned()),
                ..Overrides::default()
            })
            .is_ok()
        );
    }
}
