//! The embedded default: one SQLite file in WAL mode.

use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::{Connect, StoreError, StoreOptions, StoreResult};

pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub async fn connect(options: &StoreOptions, when: Connect) -> StoreResult<SqlitePool> {
    let connect_options = SqliteConnectOptions::from_str(options.url.expose())
        .map_err(|err| {
            StoreError::Config(format!(
                "invalid SQLite URL {}: {err}",
                options.url.redacted()
            ))
        })?
        .create_if_missing(true)
        // WAL lets readers (every Introspect) proceed while a writer commits.
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged create or revoke survives power loss, not just a crash.
        .synchronous(SqliteSynchronous::Full)
        // Wait for another writer no longer than a storage call may take.
        .busy_timeout(options.call_timeout)
        // 512 KiB of page cache per connection instead of 2 MiB: lookups are
        // answered from patd's own cache, and the OS caches the file anyway.
        .pragma("cache_size", "-512")
        .foreign_keys(true);
    // Turning a fresh file into WAL mode needs it to itself for a moment, and
    // SQLite answers "locked" at once, not after the busy timeout, if another
    // process is opening it too: try again, briefly.
    let mut attempt = 1;
    loop {
        match super::open_pool(options, connect_options.clone(), when).await {
            Err(StoreError::Unavailable(sqlx::Error::Database(db)))
                if attempt < OPEN_ATTEMPTS && is_busy(db.as_ref()) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Attempts to open a file another process is opening at the same moment.
const OPEN_ATTEMPTS: u32 = 5;

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, extended codes included.
fn is_busy(db: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
    db.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xFF, 5 | 6))
}

/// Applies the migrations. SQLite has no advisory lock, so two processes that
/// start on a fresh file at once (a server and `patd admin create`, two
/// replicas) may both try the same migration: the second one's statements then
/// wait for the first's transaction and fail ("table tokens already exists").
/// Each migration is one transaction, so nothing half-applied is left: the
/// loser runs the migrator again, which now sees what the winner applied.
pub async fn migrate(pool: &SqlitePool) -> Result<(), MigrateError> {
    let mut attempt = 1;
    loop {
        match MIGRATOR.run(pool).await {
            Err(MigrateError::Execute(err) | MigrateError::ExecuteMigration(err, _))
                if attempt < OPEN_ATTEMPTS =>
            {
                tracing::debug!(error = %err, attempt, "migration raced with another process; again");
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}
