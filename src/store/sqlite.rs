//! The embedded default: one SQLite file in WAL mode.

use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
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
    super::open_pool(options, connect_options, when).await
}
