//! Token storage on SQLite (embedded default) or Postgres (shared by a fleet):
//! this file holds the handle, its errors, connecting and migrating; each
//! concern has its own file (`tokens`, `rotation`, `suspension`, `update`,
//! `events`, `changes`, `pages`, plus `url`, `error`, `stats`).
//!
//! Both backends run the same SQL: `$N` placeholders, `CAST`, `RETURNING` and
//! integer microsecond timestamps mean the same thing in both, so each query is
//! written once and type-checked against each driver by `on_pool!`. Where the
//! engines differ (connecting and migrating in `sqlite.rs` and `postgres.rs`;
//! the change log's horizon and `LISTEN` in `changes.rs`; the per-owner lock in
//! `tokens.rs`), a named function or a `match` on the backend says so.
//!
//! May use: `domain`, `metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

pub use changes::{Backlog, Change, ChangeKind, ChangeListener, ChangeMark, Heard};
pub use error::{StoreError, StoreResult};
pub use events::{Event, EventKind, EventPage, token_snapshot};
pub use outbox::{
    Attempted, DeadLetter, EndpointStatus, FanoutMark, NewDelivery, PendingDelivery, Retried,
};
pub use pages::{After, Cursor, HashedPage, Page, SearchPage, SortKey, TokenFilter, TokenOrder};
pub use reminders::EXPIRED_LOOKBACK_MICROS;
pub use rotation::{MAX_RETIRED_SECRETS, Rotated, Rotation};
pub use stats::{PoolStatus, StoreStats, TokenCounts};
pub use suspension::Suspended;
pub use tokens::{HashMatch, StoredToken};
pub use update::{TokenUpdate, Updated};
pub use url::DatabaseUrl;

/// Connection settings common to both backends.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: DatabaseUrl,
    pub max_connections: u32,
    /// How long a call may wait for a pooled connection before it fails.
    pub acquire_timeout: Duration,
    /// How long one storage call may take in all before it fails as unavailable
    /// (a hung connection must not hang the RPC).
    pub call_timeout: Duration,
}

/// Opens a pool with the settings both backends share.
async fn open_pool<DB: sqlx::Database>(
    options: &StoreOptions,
    connect: <DB::Connection as sqlx::Connection>::Options,
    when: Connect,
) -> StoreResult<sqlx::Pool<DB>> {
    let pool_options = sqlx::pool::PoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        // A ping before every query costs a round trip per lookup (97 -> 32 µs on
        // SQLite, see perf-ceiling.md); a broken connection fails its query instead.
        .test_before_acquire(false)
        // A connection still in a transaction when it is taken from the pool is
        // one whose rollback failed (SQLite rolls back by itself on a full disk,
        // so sqlx's ROLLBACK fails and its transaction depth stays up): every
        // later BEGIN on it would fail. Close it and open a fresh one. The
        // check reads a counter: no round trip. (The pool's ping on release has
        // already run the rollback an unfinished transaction leaves queued.)
        .before_acquire(|conn, _| {
            Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
        });
    if when == Connect::Lazily {
        return Ok(pool_options.connect_lazy_with(connect));
    }
    // One direct connection first: it reports why storage is unreachable
    // (refused, authentication, unopenable file), where the pool would only
    // report that it timed out.
    let probe = sqlx::ConnectOptions::connect(&connect).await?;
    sqlx::Connection::close(probe).await?;
    Ok(pool_options.connect_with(connect).await?)
}

/// Whether [`Store::open`] reaches storage before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    /// Fail now if storage cannot be reached (operator commands, SQLite).
    Now,
    /// Connect on first use: a server starts while storage is still down.
    Lazily,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store has; the body is
/// compiled once per backend, so one query text serves both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// [`on_pool!`] for a storage call, bounded by the store's call timeout.
macro_rules! timed {
    ($store:expr, $pool:ident => $body:expr) => {
        $store.timed(async { on_pool!($store, $pool => $body) }).await
    };
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    stats: Arc<StoreStats>,
    call_timeout: Duration,
    reachable: Arc<AtomicBool>,
    /// Bumped after every committed audit event, so that webhook delivery wakes
    /// at once for this process's own changes (it polls for other processes').
    events_written: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The columns of a [`TokenRow`], as a literal for `concat!`.
macro_rules! columns {
    () => {
        "seq, id, name, subject, account, scopes, hint, created_at, expires_at, revoked_at, \
         last_used_at, last_used_ip, rotated_at, allowed_cidrs, suspended_at, description, labels, \
         resources"
    };
}

macro_rules! select {
    ($($rest:literal),+) => {
        concat!("SELECT ", columns!(), " FROM tokens ", $($rest),+)
    };
}

/// Appends `$event` (an [`Event`]) to the audit trail through `$executor`, inside
/// an [`on_pool!`] body (so compiled once per backend).
macro_rules! insert_event {
    ($executor:expr, $event:expr) => {{
        let event: &Event = $event;
        sqlx::query(
            "INSERT INTO token_events (at, kind, token_id, subject, account, actor, peer, detail, token) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(&event.token_id)
        .bind(&event.subject)
        .bind(&event.account)
        .bind(&event.actor.principal)
        .bind(&event.actor.peer)
        .bind(&event.detail)
        .bind(&event.token)
        .execute($executor)
        .await?;
    }};
}

/// Inserts label rows `(token id, key, value)` of tokens already written in
/// this transaction (at most 500 rows) through `$executor`, inside an
/// [`on_pool!`] body.
macro_rules! insert_labels {
    ($executor:expr, $rows:expr) => {{
        let rows: &[(&str, &str, &str)] = $rows;
        if !rows.is_empty() {
            // Both backends name the columns of a VALUES list column1, column2, ...
            let sql = format!(
                "INSERT INTO token_labels (token_seq, account, subject, key, value) \
                 SELECT t.seq, t.account, t.subject, v.column2, v.column3 \
                 FROM (VALUES {}) AS v JOIN tokens t ON t.id = v.column1",
                super::tokens::values_list(rows.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for (id, key, value) in rows {
                query = query.bind(*id).bind(*key).bind(*value);
            }
            query.execute($executor).await?;
        }
    }};
}

/// `$owner`'s token `$id` with its secret's hash (an `Option<HashedTokenRow>`),
/// read first inside a change's transaction `$executor`, in an [`on_pool!`] body.
macro_rules! current_for_owner {
    ($executor:expr, $owner:expr, $id:expr) => {{
        let owner: &Owner = $owner;
        let row: Option<super::tokens::HashedTokenRow> =
            sqlx::query_as(super::tokens::CURRENT_FOR_OWNER)
                .bind($id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional($executor)
                .await?;
        row
    }};
}

// Declared after the macros above, which they use (macros are in scope from
// where they are defined on).
mod changes;
mod error;
mod events;
mod outbox;
mod pages;
mod postgres;
mod reminders;
mod rotation;
mod sqlite;
mod stats;
mod suspension;
mod tokens;
mod update;
mod url;

impl Store {
    /// Wakes whoever waits on [`Store::subscribe_events`]: call after a commit
    /// that wrote audit events.
    fn events_written(&self) {
        self.events_written
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Changes each time this process commits audit events.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_written.subscribe()
    }

    /// Connects to the backend the URL names (`sqlite:` or `postgres://`) and applies
    /// the embedded migrations unless `migrate` is false.
    pub async fn connect(options: &StoreOptions, migrate: bool) -> StoreResult<Store> {
        let store = Store::open(options, Connect::Now).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// A store for the backend the URL names, connected now or on first use; no
    /// migrations are applied.
    pub async fn open(options: &StoreOptions, when: Connect) -> StoreResult<Store> {
        let backend = if options.url.is_sqlite() {
            Backend::Sqlite(sqlite::connect(options, when).await?)
        } else if options.url.is_postgres() {
            Backend::Postgres(postgres::connect(options, when).await?)
        } else {
            return Err(StoreError::Config(format!(
                "database URL {} names no supported backend: use sqlite:PATH or postgres://...",
                options.url.redacted()
            )));
        };
        Ok(Store {
            backend,
            stats: Arc::default(),
            call_timeout: options.call_timeout,
            // A store opened lazily has not reached storage yet.
            reachable: Arc::new(AtomicBool::new(when == Connect::Now)),
            events_written: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Marks storage reachable or not (the server's storage watch does). While
    /// unreachable, every call except [`Store::ping`] and [`Store::migrate`] fails
    /// at once as unavailable instead of waiting out its timeouts.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Release);
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        if !self.reachable.load(Ordering::Acquire) {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "storage is marked unreachable until the next successful check",
            )));
        }
        let pool = self.pool_status();
        if pool.idle == 0 && pool.size >= pool.max {
            StoreStats::count(&self.stats.calls_waited);
        }
        let started = std::time::Instant::now();
        let result = self.bounded(call).await;
        self.stats.call_latency.observe(started.elapsed());
        result
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    pub fn pool_status(&self) -> PoolStatus {
        on_pool!(self, pool => PoolStatus {
            size: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        })
    }

    /// `call` bounded by the call timeout, whether storage is marked reachable or not.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("storage call timed out after {:?}", self.call_timeout),
            ))),
        }
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlite::migrate(pool).await,
            Backend::Postgres(pool) => postgres::migrate(pool).await,
        }
        .map_err(StoreError::Migrate)
    }

    /// Whether every embedded migration has been applied (without applying any:
    /// for servers started with `--no-migrate`).
    pub async fn is_migrated(&self) -> StoreResult<bool> {
        use sqlx::migrate::Migrate;
        let list = async {
            Ok(match &self.backend {
                Backend::Sqlite(pool) => pool.acquire().await?.list_applied_migrations().await,
                Backend::Postgres(pool) => pool.acquire().await?.list_applied_migrations().await,
            })
        };
        let applied = self.bounded(list).await?;
        // No migrations table at all reads as "nothing applied".
        let applied = applied.unwrap_or_default();
        let embedded = match &self.backend {
            Backend::Sqlite(_) => &sqlite::MIGRATOR,
            Backend::Postgres(_) => &postgres::MIGRATOR,
        };
        // Same version and same checksum: an edited migration does not count.
        Ok(embedded.iter().all(|migration| {
            applied.iter().any(|done| {
                done.version == migration.version && done.checksum == migration.checksum
            })
        }))
    }

    /// How to begin a transaction that reads, then writes depending on what it
    /// read: SQLite must take the write lock first (IMMEDIATE), or a concurrent
    /// writer makes it fail as busy instead of waiting its turn.
    fn begin_writing(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "BEGIN IMMEDIATE",
            Backend::Postgres(_) => "BEGIN",
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The connection pool's size.
    pub fn max_connections(&self) -> u32 {
        on_pool!(self, pool => pool.options().get_max_connections())
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// A round trip to storage.
    pub async fn ping(&self) -> StoreResult<()> {
        let ping =
            async { on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop)) };
        self.bounded(ping).await?;
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Runs a `DELETE … WHERE <time> < $1` for `before`; how many rows went.
    async fn delete_before(&self, sql: &'static str, before: i64) -> StoreResult<u64> {
        let deleted = timed!(self, pool => sqlx::query(sql)
            .bind(before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(deleted)
    }
}
