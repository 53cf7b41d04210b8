//! Token storage on SQLite (embedded default) or Postgres (shared by a fleet).
//!
//! Both backends run the same SQL: `$N` placeholders, `CAST`, `RETURNING` and
//! integer microsecond timestamps mean the same thing in both, so each query is
//! written once and type-checked against each driver by [`on_pool!`]. Only
//! connecting and migrating differ (see `sqlite.rs` and `postgres.rs`).

mod postgres;
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

use crate::authority::{Authority, Exceeds, Grant};
use crate::cidr::CidrList;
use crate::metrics::Histogram;
use crate::model::{Actor, NewToken, Owner, TokenRecord, TokenState};
use crate::scope::ScopeSet;
use crate::token::SecretHash;

/// How to reach storage. `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        let url = match self.0.split_once('?') {
            // A password may also be a query parameter (`?password=...`).
            Some((base, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|param| match param.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=***")
                        }
                        _ => param.to_owned(),
                    })
                    .collect();
                format!("{base}?{}", params.join("&"))
            }
            None => self.0.clone(),
        };
        let url = &url;
        let Some(scheme_end) = url.find("://") else {
            return url.clone();
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return url.clone();
        };
        match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

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

#[derive(Debug)]
pub enum StoreError {
    /// The URL names no supported backend or is malformed.
    Config(String),
    /// Storage could not be reached or did not answer in time.
    Unavailable(sqlx::Error),
    /// Storage answered with an error.
    Failed(sqlx::Error),
    /// Storage refused a value the request carried (a Postgres data exception,
    /// SQLite's "too big"): the request's fault, not the server's. Requests are
    /// validated before they reach storage; this keeps a gap in that from
    /// being answered `INTERNAL`.
    Rejected(sqlx::Error),
    /// Applying migrations failed.
    Migrate(sqlx::migrate::MigrateError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Config(message) => f.write_str(message),
            StoreError::Unavailable(err) => write!(f, "storage unavailable: {err}"),
            StoreError::Failed(err) => write!(f, "storage error: {err}"),
            StoreError::Rejected(err) => write!(f, "storage refused a value: {err}"),
            StoreError::Migrate(err) => write!(f, "migration failed: {err}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// What a caller may be told about an unavailable store: the kind of fault,
    /// never the driver's text (which may name hosts, files or queries).
    pub fn public_reason(&self) -> &'static str {
        if let StoreError::Rejected(_) = self {
            return "a value in the request cannot be stored: check its length and characters";
        }
        let StoreError::Unavailable(err) = self else {
            return "storage error";
        };
        match err {
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                "storage did not answer in time; retry later"
            }
            sqlx::Error::PoolTimedOut => "all storage connections are busy; retry later",
            sqlx::Error::Database(db) => {
                database_fault(db.as_ref()).unwrap_or("storage is unavailable; retry later")
            }
            _ => "storage is unavailable; retry later",
        }
    }
}

/// For a database error that means "storage cannot serve this now" (not "this
/// request is wrong"), what a caller may be told.
fn database_fault(db: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<&'static str> {
    let code = db.code()?;
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLite reports extended result codes; the low byte is the primary one.
        return match code.parse::<i32>().ok()? & 0xFF {
            5 | 6 => Some("storage is locked by another writer; retry later"),
            8 => Some("storage is read-only"),
            10 => Some("storage had an I/O error"),
            13 => Some("storage is full"),
            14 => Some("storage cannot be opened"),
            _ => None,
        };
    }
    match code.as_ref() {
        "40001" | "40P01" | "55P03" => Some("storage conflict; retry"),
        "53100" => Some("storage is full"),
        "53300" => Some("storage has no free connections; retry later"),
        "57014" => Some("storage did not answer in time; retry later"),
        "25006" => Some("storage is read-only"),
        // Undefined table: reachable, but not migrated yet.
        "42P01" => Some("storage is not ready; retry later"),
        // Connection exceptions, insufficient resources, operator intervention.
        code if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") => {
            Some("storage is unavailable; retry later")
        }
        _ => None,
    }
}

/// Whether storage refused a value itself (not the statement, not the state):
/// Postgres SQLSTATE class 22 (data exception: invalid encoding such as a NUL
/// in text, string too long, numeric out of range), SQLite `SQLITE_TOOBIG`.
fn is_rejected_value(db: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return code.parse::<i32>().is_ok_and(|code| code & 0xFF == 18);
    }
    code.starts_with("22")
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let transient = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            // A connection in a state it cannot recover from: it is discarded
            // (see `open_pool`), and the next attempt gets another.
            | sqlx::Error::InvalidSavePointStatement
            | sqlx::Error::BeginFailed => true,
            sqlx::Error::Database(db) => database_fault(db.as_ref()).is_some(),
            _ => false,
        };
        let rejected = match &err {
            sqlx::Error::Database(db) => is_rejected_value(db.as_ref()),
            _ => false,
        };
        if transient {
            StoreError::Unavailable(err)
        } else if rejected {
            StoreError::Rejected(err)
        } else {
            StoreError::Failed(err)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

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

/// A position in a newest-first listing: tokens strictly older than `seq` come next.
/// Keyset paging on the insertion sequence stays correct while tokens are created
/// (they sort before the cursor) or deleted (they simply vanish) between pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(i64);

impl Cursor {
    const TAG: &'static str = "p1.";

    pub fn encode(self) -> String {
        format!("{}{:x}", Cursor::TAG, self.0)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let hex = text.strip_prefix(Cursor::TAG)?;
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let seq = i64::from_str_radix(hex, 16).ok()?;
        (seq > 0).then_some(Cursor(seq))
    }
}

pub struct Page {
    pub tokens: Vec<TokenRecord>,
    pub next: Option<Cursor>,
}

/// Orders for [`Store::search`]; ties broken by insertion order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenOrder {
    #[default]
    CreatedDesc,
    CreatedAsc,
    /// Soonest expiry first; tokens that never expire last.
    ExpiresAsc,
    /// Most recently used first; never-used tokens last.
    LastUsedDesc,
    /// By name, byte order.
    NameAsc,
}

impl TokenOrder {
    /// The SQL sort key and whether it runs descending.
    fn key(self, backend: &Backend) -> (&'static str, bool) {
        match self {
            TokenOrder::CreatedDesc => ("seq", true),
            TokenOrder::CreatedAsc => ("seq", false),
            TokenOrder::ExpiresAsc => ("COALESCE(expires_at, 9223372036854775807)", false),
            TokenOrder::LastUsedDesc => ("COALESCE(last_used_at, -1)", true),
            // Byte order on both backends, whatever the database's locale.
            TokenOrder::NameAsc => match backend {
                Backend::Sqlite(_) => ("name", false),
                Backend::Postgres(_) => ("name COLLATE \"C\"", false),
            },
        }
    }

    fn key_of(self, row: &TokenRow) -> SortKey {
        match self {
            TokenOrder::CreatedDesc | TokenOrder::CreatedAsc => SortKey::Int(row.seq),
            TokenOrder::ExpiresAsc => SortKey::Int(row.expires_at.unwrap_or(i64::MAX)),
            TokenOrder::LastUsedDesc => SortKey::Int(row.last_used_at.unwrap_or(-1)),
            TokenOrder::NameAsc => SortKey::Text(row.name.clone()),
        }
    }
}

/// Which tokens [`Store::search`] returns; every set field must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenFilter {
    pub state: Option<TokenState>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub expires_before: Option<i64>,
    pub last_used_after: Option<i64>,
    pub last_used_before: Option<i64>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    Int(i64),
    Text(String),
}

/// Where a page ended: its last row's sort key and sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct After {
    pub key: SortKey,
    pub seq: i64,
}

pub struct SearchPage {
    pub tokens: Vec<TokenRecord>,
    pub next: Option<After>,
}

/// A page of tokens with their secrets' hashes.
pub struct HashedPage {
    pub tokens: Vec<(SecretHash, StoredToken)>,
    pub next: Option<Cursor>,
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

/// Statements issued, by kind: for tests that prove what does and does not reach
/// storage, and for operators.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Lookups of a token by its secret's hash (the Introspect path).
    pub hash_lookups: AtomicU64,
    /// Statements that modify `tokens`.
    pub writes: AtomicU64,
    /// Latency of storage calls, including any wait for a pooled connection.
    pub call_latency: Histogram,
    /// Calls that found no idle connection in a full pool.
    pub calls_waited: AtomicU64,
}

/// Stored tokens by state at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub active: i64,
    pub expired: i64,
    pub revoked: i64,
}

/// The connection pool at one moment.
#[derive(Clone, Copy, Debug)]
pub struct PoolStatus {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

impl StoreStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    stats: Arc<StoreStats>,
    call_timeout: Duration,
    reachable: Arc<AtomicBool>,
}

#[derive(Clone, sqlx::FromRow)]
struct TokenRow {
    seq: i64,
    id: String,
    name: String,
    subject: String,
    account: String,
    scopes: String,
    hint: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    last_used_ip: Option<String>,
    rotated_at: Option<i64>,
    allowed_cidrs: String,
}

#[derive(sqlx::FromRow)]
struct HashedTokenRow {
    #[sqlx(flatten)]
    token: TokenRow,
    #[sqlx(try_from = "Vec<u8>")]
    secret_hash: SecretHash,
}

impl From<TokenRow> for TokenRecord {
    fn from(row: TokenRow) -> Self {
        TokenRecord {
            id: row.id,
            name: row.name,
            owner: Owner {
                subject: row.subject,
                account: row.account,
            },
            scopes: ScopeSet::from_stored(&row.scopes),
            hint: row.hint,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            last_used_ip: row.last_used_ip,
            rotated_at: row.rotated_at,
            allowed_cidrs: CidrList::from_stored(&row.allowed_cidrs),
        }
    }
}

/// A token stored under a secret hash, and its insertion sequence.
#[derive(Debug)]
pub struct StoredToken {
    pub seq: i64,
    pub record: TokenRecord,
}

/// What happened to a token, in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Rotated,
    Revoked,
    Deleted,
    /// A retired secret was presented after its grace period; the token was revoked.
    ReuseDetected,
    /// A valid token was reported as leaked and revoked.
    LeakReported,
    /// A management call was refused (bad credential, missing scope).
    Denied,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Created,
        EventKind::Rotated,
        EventKind::Revoked,
        EventKind::Deleted,
        EventKind::ReuseDetected,
        EventKind::LeakReported,
        EventKind::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Rotated => "rotated",
            EventKind::Revoked => "revoked",
            EventKind::Deleted => "deleted",
            EventKind::ReuseDetected => "reuse_detected",
            EventKind::LeakReported => "leak_reported",
            EventKind::Denied => "denied",
        }
    }
}

/// One entry of the audit trail. Nothing in it is secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    pub at: i64,
    pub kind: EventKind,
    pub token_id: Option<String>,
    pub subject: Option<String>,
    pub account: Option<String>,
    pub actor: Actor,
    pub detail: String,
}

impl Event {
    /// An event about `token`, by `actor`, at `at`.
    pub fn about(
        kind: EventKind,
        token: &TokenRecord,
        actor: &Actor,
        at: i64,
        detail: String,
    ) -> Event {
        Event {
            seq: 0,
            at,
            kind,
            token_id: Some(token.id.clone()),
            subject: Some(token.owner.subject.clone()),
            account: Some(token.owner.account.clone()),
            actor: actor.clone(),
            detail,
        }
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    at: i64,
    kind: String,
    token_id: Option<String>,
    subject: Option<String>,
    account: Option<String>,
    actor: String,
    peer: String,
    detail: String,
}

impl EventRow {
    fn into_event(self) -> Option<Event> {
        let kind = EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == self.kind)?;
        Some(Event {
            seq: self.seq,
            at: self.at,
            kind,
            token_id: self.token_id,
            subject: self.subject,
            account: self.account,
            actor: Actor {
                principal: self.actor,
                peer: self.peer,
            },
            detail: self.detail,
        })
    }
}

pub struct EventPage {
    pub events: Vec<Event>,
    pub next: Option<Cursor>,
}

/// A token found by a secret's hash.
#[derive(Debug)]
pub struct HashMatch {
    pub stored: StoredToken,
    /// Set when the hash is a secret retired by a rotation: until when it works.
    pub retired_grace_until: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct MatchedTokenRow {
    #[sqlx(flatten)]
    token: TokenRow,
    #[sqlx(try_from = "Vec<u8>")]
    secret_hash: SecretHash,
    grace_until: Option<i64>,
}

/// A rotation to store: see [`Store::rotate`].
pub struct Rotation<'a> {
    pub owner: &'a Owner,
    /// The caller's: the rotated token must not exceed it (checked against the
    /// row inside the transaction, so nothing can change in between).
    pub authority: &'a Authority,
    pub id: &'a str,
    pub new_hash: SecretHash,
    pub hint: String,
    pub now: i64,
    /// A new expiry; `None` keeps the current one.
    pub expires_at: Option<i64>,
    /// Until when the old secret keeps working (`now`: not at all).
    pub grace_until: i64,
    pub actor: &'a Actor,
}

pub enum Rotated {
    Done {
        record: Box<TokenRecord>,
        old_hash: SecretHash,
    },
    NotFound,
    /// Revoked or expired tokens are not rotated.
    Inactive(TokenState),
    /// The new secret would carry more than the caller holds.
    Exceeds(Exceeds),
    /// Another rotation of the same token committed first.
    Conflict,
}

/// A revoke or delete recorded in `token_changes` (by a trigger).
#[derive(Debug, sqlx::FromRow)]
pub struct Change {
    pub seq: i64,
    #[sqlx(try_from = "Vec<u8>")]
    pub secret_hash: SecretHash,
}

/// What a [`ChangeListener`] heard.
pub enum Heard {
    /// This token was revoked or deleted.
    Changed(SecretHash),
    /// The listening connection was lost and has been re-established:
    /// notifications in between are lost, so the caller must catch up.
    Reconnected,
}

/// Postgres notifications of revokes and deletes, as they commit.
pub struct ChangeListener {
    listener: sqlx::postgres::PgListener,
}

impl ChangeListener {
    pub async fn next(&mut self) -> StoreResult<Heard> {
        loop {
            match self.listener.try_recv().await? {
                None => return Ok(Heard::Reconnected),
                Some(notification) => {
                    let mut hash = [0u8; 32];
                    let payload = notification.payload().as_bytes();
                    // A payload that is not a hash (never sent by patd) is ignored.
                    if payload.len() == 64
                        && payload.chunks(2).zip(hash.iter_mut()).all(|(pair, byte)| {
                            std::str::from_utf8(pair)
                                .ok()
                                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                                .map(|value| *byte = value)
                                .is_some()
                        })
                    {
                        return Ok(Heard::Changed(SecretHash(hash)));
                    }
                }
            }
        }
    }
}

/// How far the change log has been read, so that no committed change is ever
/// skipped. SQLite has one writer at a time, so `seq` follows commit order and the
/// mark is the last `seq` read. Postgres transactions commit in any order, so the
/// mark is the oldest transaction id still running at the previous read: every
/// change from an older transaction had committed (or aborted) by then, and every
/// change from a newer one is read again until its transaction is older than the
/// mark. Re-read changes are recognised by `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeMark(i64);

/// The columns of a [`TokenRow`], as a literal for `concat!`.
macro_rules! columns {
    () => {
        "seq, id, name, subject, account, scopes, hint, created_at, expires_at, revoked_at, \
         last_used_at, last_used_ip, rotated_at, allowed_cidrs"
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
            "INSERT INTO token_events (at, kind, token_id, subject, account, actor, peer, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(&event.token_id)
        .bind(&event.subject)
        .bind(&event.account)
        .bind(&event.actor.principal)
        .bind(&event.actor.peer)
        .bind(&event.detail)
        .execute($executor)
        .await?;
    }};
}

/// Retired secrets kept per token (see [`Store::rotate`]).
pub const MAX_RETIRED_SECRETS: i64 = 100;

/// `INSERT ... VALUES` rows per statement: 11 parameters each stays well inside
/// both backends' parameter limits.
const INSERT_ROWS_PER_STATEMENT: usize = 500;
/// `last_used_at` updates per statement (3 parameters each).
const LAST_USED_ROWS_PER_STATEMENT: usize = 500;

/// `$first, $first+1, ...` as `width` placeholders in parentheses.
fn placeholders(first: usize, width: usize) -> String {
    let names: Vec<String> = (first..first + width).map(|n| format!("${n}")).collect();
    format!("({})", names.join(", "))
}

/// `rows` groups of `width` placeholders, numbered from `$1`.
fn values_list(rows: usize, width: usize) -> String {
    let groups: Vec<String> = (0..rows)
        .map(|row| placeholders(row * width + 1, width))
        .collect();
    groups.join(", ")
}

impl Store {
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
            Backend::Sqlite(pool) => sqlite::MIGRATOR.run(pool).await,
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

    /// Stores a new token and its `created` event, in one transaction.
    #[tracing::instrument(skip_all, fields(token_id = %new.record.id))]
    pub async fn insert(&self, new: &NewToken, actor: &Actor) -> StoreResult<()> {
        self.insert_many(std::slice::from_ref(new), Some(actor), None)
            .await
            .map(drop)
    }

    /// [`Store::insert`], unless the owner already holds `max_active` active
    /// tokens: then nothing is stored and the answer is false. Counting and
    /// inserting are one transaction, serialised per owner, so concurrent
    /// creates cannot overshoot.
    pub async fn insert_limited(
        &self,
        new: &NewToken,
        actor: &Actor,
        max_active: u32,
    ) -> StoreResult<bool> {
        self.insert_many(std::slice::from_ref(new), Some(actor), Some(max_active))
            .await
    }

    /// Inserts all of `tokens` in one transaction, many rows per statement, with a
    /// `created` event each when `actor` is given. With `max_active`, every token
    /// must have the same owner (see [`Store::insert_limited`]); false when that
    /// limit refused them.
    #[tracing::instrument(skip_all, fields(count = tokens.len()))]
    pub async fn insert_many(
        &self,
        tokens: &[NewToken],
        actor: Option<&Actor>,
        max_active: Option<u32>,
    ) -> StoreResult<bool> {
        const COLUMNS: &str = "INSERT INTO tokens (id, secret_hash, name, subject, account, \
            scopes, hint, created_at, expires_at, revoked_at, allowed_cidrs) VALUES ";
        const LOCK_OWNER: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
        const ACTIVE: &str = "SELECT COUNT(*) FROM tokens WHERE account = $1 AND subject = $2 \
            AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)";
        let is_postgres = matches!(self.backend, Backend::Postgres(_));
        let begin = self.begin_writing();
        let stored = timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            if let (Some(max), Some(first)) = (max_active, tokens.first()) {
                let owner = &first.record.owner;
                // SQLite has one writer at a time already; Postgres needs the
                // count and the insert serialised per owner.
                if is_postgres {
                    sqlx::query(LOCK_OWNER)
                        .bind(format!("{}/{}", owner.account, owner.subject))
                        .execute(&mut *tx)
                        .await?;
                }
                let (active,): (i64,) = sqlx::query_as(ACTIVE)
                    .bind(&owner.account)
                    .bind(&owner.subject)
                    .bind(first.record.created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                if active + tokens.len() as i64 > i64::from(max) {
                    return Ok(false);
                }
            }
            for chunk in tokens.chunks(INSERT_ROWS_PER_STATEMENT) {
                let sql = format!("{COLUMNS}{}", values_list(chunk.len(), 11));
                let mut query = sqlx::query(&sql);
                for new in chunk {
                    let token = &new.record;
                    query = query
                        .bind(&token.id)
                        .bind(&new.secret_hash.0[..])
                        .bind(&token.name)
                        .bind(&token.owner.subject)
                        .bind(&token.owner.account)
                        .bind(token.scopes.to_stored())
                        .bind(&token.hint)
                        .bind(token.created_at)
                        .bind(token.expires_at)
                        .bind(token.revoked_at)
                        .bind(token.allowed_cidrs.to_stored());
                }
                StoreStats::count(&self.stats.writes);
                query.execute(&mut *tx).await?;
            }
            if let Some(actor) = actor {
                for new in tokens {
                    let token = &new.record;
                    let detail = format!("scopes {}", token.scopes.to_stored());
                    let event = Event::about(EventKind::Created, token, actor, token.created_at, detail);
                    insert_event!(&mut *tx, &event);
                }
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)?;
        Ok(stored)
    }

    /// The token whose secret hashes to `hash`, current or retired by a rotation,
    /// confirmed by a constant-time comparison of the stored hash.
    #[tracing::instrument(skip_all)]
    pub async fn find_by_hash(&self, hash: &SecretHash) -> StoreResult<Option<HashMatch>> {
        // One round trip for both: the current secret, or a retired one joined to
        // its token.
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            ", secret_hash, CAST(NULL AS BIGINT) AS grace_until FROM tokens WHERE secret_hash = $1 ",
            "UNION ALL SELECT ",
            "t.seq, t.id, t.name, t.subject, t.account, t.scopes, t.hint, t.created_at, ",
            "t.expires_at, t.revoked_at, t.last_used_at, t.last_used_ip, t.rotated_at, ",
            "t.allowed_cidrs, r.secret_hash, r.grace_until ",
            "FROM retired_secrets r JOIN tokens t ON t.id = r.token_id WHERE r.secret_hash = $1"
        );
        StoreStats::count(&self.stats.hash_lookups);
        let row: Option<MatchedTokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(&hash.0[..])
            .fetch_optional(pool)
            .await)?;
        Ok(row
            .filter(|row| hash.matches(&row.secret_hash))
            .map(|row| HashMatch {
                stored: StoredToken {
                    seq: row.token.seq,
                    record: row.token.into(),
                },
                retired_grace_until: row.grace_until,
            }))
    }

    /// Gives `owner`'s active token `id` the secret hashing to `new_hash`: the
    /// old hash is retired (usable until `grace_until`), all in one transaction.
    #[tracing::instrument(skip_all, fields(token_id = %rotation.id))]
    pub async fn rotate(&self, rotation: &Rotation<'_>) -> StoreResult<Rotated> {
        const CURRENT: &str = concat!(
            "SELECT ",
            columns!(),
            ", secret_hash FROM tokens WHERE id = $1 AND account = $2 AND subject = $3"
        );
        // Conditional on the hash read: of two concurrent rotations one wins and
        // the other finds no row, so no secret is replaced without being retired;
        // likewise a rotation racing a revoke or delete finds no row.
        const REPLACE: &str = concat!(
            "UPDATE tokens SET secret_hash = $1, hint = $2, rotated_at = $3, ",
            "expires_at = COALESCE($4, expires_at) WHERE id = $5 AND secret_hash = $6 ",
            // Still active: a revoke that committed since the read wins.
            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3) RETURNING ",
            columns!()
        );
        const RETIRE: &str = "INSERT INTO retired_secrets (secret_hash, token_id, retired_at, grace_until) \
             VALUES ($1, $2, $3, $4)";
        // A token keeps its last MAX_RETIRED_SECRETS retired secrets, so that
        // rotating in a loop cannot grow storage without bound; an older one
        // presented later is merely unknown.
        const FORGET_OLDEST: &str = "DELETE FROM retired_secrets WHERE token_id = $1 AND secret_hash NOT IN \
             (SELECT secret_hash FROM retired_secrets WHERE token_id = $1 \
              ORDER BY retired_at DESC LIMIT $2)";
        let Rotation {
            owner,
            authority,
            id,
            new_hash,
            hint,
            now,
            expires_at,
            grace_until,
            actor,
        } = rotation;
        StoreStats::count(&self.stats.writes);
        let begin = self.begin_writing();
        Ok(timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            let current: Option<HashedTokenRow> = sqlx::query_as(CURRENT)
                .bind(id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(current) = current else {
                return Ok(Rotated::NotFound);
            };
            let record: TokenRecord = current.token.into();
            let state = record.state_at(*now);
            if state != TokenState::Active {
                return Ok(Rotated::Inactive(state));
            }
            let grant = Grant {
                scopes: record.scopes,
                allowed_cidrs: &record.allowed_cidrs,
                expires_at: expires_at.or(record.expires_at),
            };
            if let Err(exceeds) = authority.check(grant) {
                return Ok(Rotated::Exceeds(exceeds));
            }
            let replaced: Option<TokenRow> = sqlx::query_as(REPLACE)
                .bind(&new_hash.0[..])
                .bind(hint)
                .bind(now)
                .bind(expires_at)
                .bind(id)
                .bind(&current.secret_hash.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            let Some(replaced) = replaced else {
                return Ok(Rotated::Conflict);
            };
            sqlx::query(RETIRE)
                .bind(&current.secret_hash.0[..])
                .bind(id)
                .bind(now)
                .bind(grace_until)
                .execute(&mut *tx)
                .await?;
            sqlx::query(FORGET_OLDEST)
                .bind(id)
                .bind(MAX_RETIRED_SECRETS)
                .execute(&mut *tx)
                .await?;
            let record: TokenRecord = replaced.clone().into();
            let grace = (grace_until - now) / 1_000_000;
            let event = Event::about(EventKind::Rotated, &record, actor, *now, format!("grace {grace}s"));
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
            Ok(Rotated::Done {
                record: Box::new(replaced.into()),
                old_hash: current.secret_hash,
            })
        }
        .await)?)
    }

    /// How many tokens `account` has, in any state.
    pub async fn count_in_account(&self, account: &str) -> StoreResult<i64> {
        const SQL: &str = "SELECT COUNT(*) FROM tokens WHERE account = $1";
        let (count,): (i64,) =
            timed!(self, pool => sqlx::query_as(SQL).bind(account).fetch_one(pool).await)?;
        Ok(count)
    }

    /// Tokens by state at `now` (a full scan: for metrics, taken rarely).
    pub async fn count_by_state(&self, now: i64) -> StoreResult<TokenCounts> {
        const SQL: &str = "SELECT \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND expires_at <= $1 THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) \
             FROM tokens";
        let (active, expired, revoked): (i64, i64, i64) =
            timed!(self, pool => sqlx::query_as(SQL).bind(now).fetch_one(pool).await)?;
        Ok(TokenCounts {
            active,
            expired,
            revoked,
        })
    }

    /// Any owner's token by id: for operators only.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn find_by_id(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        const SQL: &str = select!("WHERE id = $1");
        let row: Option<TokenRow> =
            timed!(self, pool => sqlx::query_as(SQL).bind(id).fetch_optional(pool).await)?;
        Ok(row.map(Into::into))
    }

    /// `owner`'s token by id; another owner's token is `None`.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn get(&self, owner: &Owner, id: &str) -> StoreResult<Option<TokenRecord>> {
        const SQL: &str = select!("WHERE id = $1 AND account = $2 AND subject = $3");
        let row: Option<TokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(id)
            .bind(&owner.account)
            .bind(&owner.subject)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(Into::into))
    }

    /// `owner`'s tokens (everyone's for `None`), newest first: [`Store::search`]
    /// without filters.
    pub async fn list(
        &self,
        owner: Option<&Owner>,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<Page> {
        let after = cursor.map(|cursor| After {
            key: SortKey::Int(cursor.0),
            seq: cursor.0,
        });
        let page = self
            .search(
                owner,
                &TokenFilter::default(),
                TokenOrder::CreatedDesc,
                after.as_ref(),
                page_size,
                0,
            )
            .await?;
        Ok(Page {
            tokens: page.tokens,
            next: page.next.map(|after| Cursor(after.seq)),
        })
    }

    /// Tokens of `owner` (of everyone for `None`) that pass `filter` at `now`, in
    /// `order`, the page after `after`. Keyset paging on (sort key, seq): stable
    /// while tokens come and go between pages.
    pub async fn search(
        &self,
        owner: Option<&Owner>,
        filter: &TokenFilter,
        order: TokenOrder,
        after: Option<&After>,
        page_size: u32,
        now: i64,
    ) -> StoreResult<SearchPage> {
        #[derive(Clone)]
        enum Param {
            Int(i64),
            Text(String),
        }
        let mut params: Vec<Param> = Vec::new();
        let mut sql = format!("SELECT {} FROM tokens WHERE 1 = 1", columns!());
        let mut push = |sql: &mut String, clause: &str, param: Param| {
            params.push(param);
            sql.push_str(&clause.replace('?', &format!("${}", params.len())));
        };
        if let Some(owner) = owner {
            push(
                &mut sql,
                " AND account = ?",
                Param::Text(owner.account.clone()),
            );
            push(
                &mut sql,
                " AND subject = ?",
                Param::Text(owner.subject.clone()),
            );
        }
        match filter.state {
            None => {}
            Some(TokenState::Revoked) => sql.push_str(" AND revoked_at IS NOT NULL"),
            Some(TokenState::Active) => push(
                &mut sql,
                " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
                Param::Int(now),
            ),
            Some(TokenState::Expired) => push(
                &mut sql,
                " AND revoked_at IS NULL AND expires_at <= ?",
                Param::Int(now),
            ),
        }
        for (column, after_time, before_time) in [
            ("created_at", filter.created_after, filter.created_before),
            ("expires_at", filter.expires_after, filter.expires_before),
            (
                "last_used_at",
                filter.last_used_after,
                filter.last_used_before,
            ),
        ] {
            if let Some(at) = after_time {
                push(&mut sql, &format!(" AND {column} > ?"), Param::Int(at));
            }
            if let Some(at) = before_time {
                push(&mut sql, &format!(" AND {column} < ?"), Param::Int(at));
            }
        }
        if let Some(needle) = &filter.name_contains {
            let escaped = needle
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            push(
                &mut sql,
                " AND lower(name) LIKE ? ESCAPE '\\'",
                Param::Text(format!("%{escaped}%")),
            );
        }
        let (key, descending) = order.key(&self.backend);
        let (compare, direction) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(after) = after {
            let key_param = match &after.key {
                SortKey::Int(value) => Param::Int(*value),
                SortKey::Text(value) => Param::Text(value.clone()),
            };
            push(
                &mut sql,
                &format!(" AND ({key} {compare} ?"),
                key_param.clone(),
            );
            push(&mut sql, &format!(" OR ({key} = ?"), key_param);
            push(
                &mut sql,
                &format!(" AND seq {compare} ?))"),
                Param::Int(after.seq),
            );
        }
        // One row more than asked says whether another page follows.
        push(
            &mut sql,
            &format!(" ORDER BY {key} {direction}, seq {direction} LIMIT ?"),
            Param::Int(i64::from(page_size) + 1),
        );
        let mut rows: Vec<TokenRow> = timed!(self, pool => {
            let mut query = sqlx::query_as(&sql);
            for param in &params {
                query = match param {
                    Param::Int(value) => query.bind(value),
                    Param::Text(value) => query.bind(value),
                };
            }
            query.fetch_all(pool).await
        })?;
        let next = (rows.len() > page_size as usize).then(|| {
            rows.truncate(page_size as usize);
            rows.last().map(|row| After {
                key: order.key_of(row),
                seq: row.seq,
            })
        });
        Ok(SearchPage {
            tokens: rows.into_iter().map(Into::into).collect(),
            next: next.flatten(),
        })
    }

    /// Every token with its secret's hash, newest first, `page_size` at a time after
    /// `cursor` (for loading the cache).
    pub async fn scan_with_hashes(
        &self,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<HashedPage> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            ", secret_hash FROM tokens WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        );
        let before = cursor.map_or(i64::MAX, |cursor| cursor.0);
        let rows: Vec<HashedTokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(before)
            .bind(i64::from(page_size))
            .fetch_all(pool)
            .await)?;
        let next = if rows.len() == page_size as usize {
            rows.last().map(|row| Cursor(row.token.seq))
        } else {
            None
        };
        let tokens = rows
            .into_iter()
            .map(|row| {
                let stored = StoredToken {
                    seq: row.token.seq,
                    record: row.token.into(),
                };
                (row.secret_hash, stored)
            })
            .collect();
        Ok(HashedPage { tokens, next })
    }

    /// Revokes `owner`'s token at `now` unless it is already revoked (then its first
    /// revocation time stands). `None` if `owner` has no such token; else the token
    /// and its secret's hash, for the caller to invalidate.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn revoke(
        &self,
        owner: &Owner,
        id: &str,
        now: i64,
        actor: &Actor,
        kind: EventKind,
    ) -> StoreResult<Option<(TokenRecord, SecretHash)>> {
        self.revoke_with_detail(owner, id, now, actor, kind, "")
            .await
    }

    /// [`Store::revoke`], with `detail` in the event.
    pub async fn revoke_with_detail(
        &self,
        owner: &Owner,
        id: &str,
        now: i64,
        actor: &Actor,
        kind: EventKind,
        detail: &str,
    ) -> StoreResult<Option<(TokenRecord, SecretHash)>> {
        const SQL: &str = concat!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) ",
            "WHERE id = $2 AND account = $3 AND subject = $4 RETURNING ",
            columns!(),
            ", secret_hash"
        );
        StoreStats::count(&self.stats.writes);
        let row: Option<HashedTokenRow> = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let row: Option<HashedTokenRow> = sqlx::query_as(SQL)
                .bind(now)
                .bind(id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional(&mut *tx)
                .await?;
            // Only the revocation that took effect is recorded, not repeats.
            if let Some(row) = row.as_ref().filter(|row| row.token.revoked_at == Some(now)) {
                let record: TokenRecord = row.token.clone().into();
                let event = Event::about(kind, &record, actor, now, detail.to_owned());
                insert_event!(&mut *tx, &event);
            }
            tx.commit().await?;
            Ok(row)
        }
        .await)?;
        Ok(row.map(|row| (row.token.into(), row.secret_hash)))
    }

    /// Deletes `owner`'s token (and its `deleted` event, in one transaction); its
    /// secret's hash if there was one.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn delete(
        &self,
        owner: &Owner,
        id: &str,
        actor: &Actor,
        now: i64,
    ) -> StoreResult<Option<SecretHash>> {
        const SQL: &str = "DELETE FROM tokens WHERE id = $1 AND account = $2 AND subject = $3 RETURNING secret_hash";
        StoreStats::count(&self.stats.writes);
        let row: Option<(Vec<u8>,)> = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let row: Option<(Vec<u8>,)> = sqlx::query_as(SQL)
                .bind(id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some() {
                let event = Event {
                    seq: 0,
                    at: now,
                    kind: EventKind::Deleted,
                    token_id: Some(id.to_owned()),
                    subject: Some(owner.subject.clone()),
                    account: Some(owner.account.clone()),
                    actor: actor.clone(),
                    detail: String::new(),
                };
                insert_event!(&mut *tx, &event);
            }
            tx.commit().await?;
            Ok(row)
        }
        .await)?;
        row.map(|(bytes,)| SecretHash::try_from(bytes))
            .transpose()
            .map_err(|err| StoreError::Failed(sqlx::Error::Decode(Box::new(err))))
    }

    /// Appends one event outside any other change (denials, leak reports).
    pub async fn record_event(&self, event: &Event) -> StoreResult<()> {
        StoreStats::count(&self.stats.writes);
        timed!(self, pool => async {
            insert_event!(pool, event);
            Ok::<(), sqlx::Error>(())
        }
        .await)?;
        Ok(())
    }

    /// Events newest first: of `account`, or of every account.
    pub async fn list_events(
        &self,
        account: Option<&str>,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<EventPage> {
        const COLUMNS: &str = "SELECT seq, at, kind, token_id, subject, account, actor, peer, detail FROM token_events ";
        let before = cursor.map_or(i64::MAX, |cursor| cursor.0);
        let limit = i64::from(page_size) + 1;
        let mut rows: Vec<EventRow> = match account {
            Some(account) => timed!(self, pool => sqlx::query_as(&format!(
                "{COLUMNS}WHERE seq < $1 AND account = $2 ORDER BY seq DESC LIMIT $3"
            ))
            .bind(before)
            .bind(account)
            .bind(limit)
            .fetch_all(pool)
            .await),
            None => timed!(self, pool => sqlx::query_as(&format!(
                "{COLUMNS}WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
            ))
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await),
        }?;
        let next = (rows.len() > page_size as usize).then(|| {
            rows.truncate(page_size as usize);
            Cursor(rows.last().map_or(0, |row| row.seq))
        });
        Ok(EventPage {
            events: rows.into_iter().filter_map(EventRow::into_event).collect(),
            next,
        })
    }

    /// Revokes and deletes recorded since `mark` (see [`ChangeMark`]; the default
    /// mark reads the whole log), and the mark for the next read.
    pub async fn changes_since(&self, mark: ChangeMark) -> StoreResult<(Vec<Change>, ChangeMark)> {
        Ok(self.timed(self.read_changes(mark)).await?)
    }

    async fn read_changes(
        &self,
        mark: ChangeMark,
    ) -> Result<(Vec<Change>, ChangeMark), sqlx::Error> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                const SQL: &str =
                    "SELECT seq, secret_hash FROM token_changes WHERE seq > $1 ORDER BY seq";
                let changes: Vec<Change> = sqlx::query_as(SQL).bind(mark.0).fetch_all(pool).await?;
                let next = changes.last().map_or(mark, |change| ChangeMark(change.seq));
                Ok((changes, next))
            }
            Backend::Postgres(pool) => {
                // The horizon is taken first: what committed before it is visible
                // to the read that follows.
                const HORIZON: &str =
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT";
                const SQL: &str = "SELECT seq, secret_hash FROM token_changes \
                    WHERE txid >= $1::BIGINT::TEXT::XID8 ORDER BY seq";
                let (horizon,): (i64,) = sqlx::query_as(HORIZON).fetch_one(pool).await?;
                let changes = sqlx::query_as(SQL).bind(mark.0).fetch_all(pool).await?;
                Ok((changes, ChangeMark(horizon)))
            }
        }
    }

    /// A subscription to revokes and deletes as they commit (Postgres LISTEN);
    /// `None` on SQLite, where the change log is the only path.
    pub async fn listen_for_changes(&self) -> StoreResult<Option<ChangeListener>> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(None);
        };
        // The schema of the table the triggers are on, as the trigger names it.
        const CHANNEL: &str = "SELECT 'patd_' || left(md5(n.nspname::TEXT), 16) \
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.oid = 'tokens'::regclass";
        // Not gated on the storage watch: listening is how this process learns of
        // changes, and should start as soon as Postgres answers.
        let (channel,): (String,) = self
            .bounded(sqlx::query_as(CHANNEL).fetch_one(pool))
            .await?;
        // A pool of its own: the listener holds its connection for good, and must
        // not take one from the pool that serves requests.
        let own_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.call_timeout)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = self
            .bounded(sqlx::postgres::PgListener::connect_with(&own_pool))
            .await?;
        self.bounded(listener.listen(&channel)).await?;
        Ok(Some(ChangeListener { listener }))
    }

    /// Forgets changes recorded before `before`.
    /// Deletes refusals of anonymous callers (no valid credential) recorded
    /// before `before`: the only audit events that outsiders can cause at will.
    pub async fn prune_anonymous_denials(&self, before: i64) -> StoreResult<u64> {
        const SQL: &str =
            "DELETE FROM token_events WHERE kind = 'denied' AND actor = 'anonymous' AND at < $1";
        let pruned = timed!(self, pool => sqlx::query(SQL)
            .bind(before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(pruned)
    }

    pub async fn prune_changes(&self, before: i64) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM token_changes WHERE changed_at < $1";
        let pruned = timed!(self, pool => sqlx::query(SQL)
            .bind(before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(pruned)
    }

    /// Writes `(seq, last used, client address)`; a stored later time is never
    /// overwritten, nor a stored address by none.
    #[tracing::instrument(skip_all, fields(count = uses.len()))]
    pub async fn record_last_used(&self, uses: &[(i64, i64, Option<String>)]) -> StoreResult<()> {
        // One short transaction per chunk: a flush may cover every token of a
        // large installation, and must not hold SQLite's write lock (or a long
        // Postgres transaction) for all of it.
        for chunk in uses.chunks(LAST_USED_ROWS_PER_STATEMENT) {
            timed!(self, pool => {
                // Both backends name the columns of a VALUES list column1, column2.
                let sql = format!(
                    "UPDATE tokens SET last_used_at = v.column2, \
                     last_used_ip = COALESCE(v.column3, tokens.last_used_ip) FROM (VALUES {}) AS v \
                     WHERE tokens.seq = v.column1 \
                     AND (tokens.last_used_at IS NULL OR tokens.last_used_at < v.column2)",
                    values_list(chunk.len(), 3)
                );
                let mut query = sqlx::query(&sql);
                for (seq, at, client) in chunk {
                    query = query.bind(seq).bind(at).bind(client);
                }
                StoreStats::count(&self.stats.writes);
                query.execute(pool).await.map(drop)
            })?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        for seq in [1, 255, i64::MAX] {
            assert_eq!(Cursor::decode(&Cursor(seq).encode()), Some(Cursor(seq)));
        }
        for bad in [
            "",
            "p1.",
            "p1.0",
            "p1.-1",
            "p1.zz",
            "p2.10",
            "10",
            "p1.ffffffffffffffff",
            "p1.10000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn redacts_the_password_only() {
        let url = DatabaseUrl::new("postgres://patd:s3cret@db.internal:5432/patd?sslmode=require");
        assert_eq!(
            url.redacted(),
            "postgres://patd:***@db.internal:5432/patd?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let in_query = DatabaseUrl::new("postgres://patd@db/patd?sslmode=require&password=s3cret");
        assert_eq!(
            in_query.redacted(),
            "postgres://patd@db/patd?sslmode=require&password=***"
        );
        for plain in [
            "postgres://postgres@127.0.0.1/test",
            "sqlite:patd.db",
            "sqlite://patd.db?mode=rwc",
        ] {
            assert_eq!(DatabaseUrl::new(plain).redacted(), plain);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_cursors_never_panics(text in ".{0,64}") {
                let _ = Cursor::decode(&text);
            }

            #[test]
            fn every_cursor_round_trips(seq in 1i64..) {
                prop_assert_eq!(Cursor::decode(&Cursor(seq).encode()), Some(Cursor(seq)));
            }
        }
    }
}
