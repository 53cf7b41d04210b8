//! Postgres: what a fleet of replicas shares.

use std::str::FromStr;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

use super::{Connect, StoreError, StoreOptions, StoreResult};

/// sqlx takes a Postgres advisory lock while migrating, so replicas starting at
/// once apply each migration exactly once.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub async fn connect(options: &StoreOptions, when: Connect) -> StoreResult<PgPool> {
    let parsed = PgConnectOptions::from_str(options.url.expose()).map_err(|err| {
        StoreError::Config(format!(
            "invalid Postgres URL {}: {err}",
            options.url.redacted()
        ))
    })?;
    // `?application_name=` in the URL names a replica in pg_stat_activity.
    let name = parsed.get_application_name().unwrap_or("patd").to_owned();
    let connect_options = parsed
        .application_name(&name)
        // The server gives up on a statement just after patd would: a hung query
        // must not hold a backend after its caller was answered UNAVAILABLE.
        .options([(
            "statement_timeout",
            format!("{}ms", options.call_timeout.as_millis() + 1_000),
        )]);
    super::open_pool(options, connect_options, when).await
}

/// Applies the migrations on a connection of their own, without the statement
/// timeout that bounds requests: a migration may legitimately take longer.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", "0")]);
    let mut conn = options.connect().await.map_err(MigrateError::Execute)?;
    let result = MIGRATOR.run_direct(&mut conn).await;
    let _ = conn.close().await;
    result
}
