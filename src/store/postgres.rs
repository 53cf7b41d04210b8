//! Postgres: what a fleet of replicas shares.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;

use super::{Connect, StoreError, StoreOptions, StoreResult};

/// sqlx takes a Postgres advisory lock while migrating, so replicas starting at
/// once apply each migration exactly once.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub async fn connect(options: &StoreOptions, when: Connect) -> StoreResult<PgPool> {
    let connect_options = PgConnectOptions::from_str(options.url.expose())
        .map_err(|err| {
            StoreError::Config(format!(
                "invalid Postgres URL {}: {err}",
                options.url.redacted()
            ))
        })?
        .application_name("patd")
        // The server gives up on a statement just after patd would: a hung query
        // must not hold a backend after its caller was answered UNAVAILABLE.
        .options([(
            "statement_timeout",
            format!("{}ms", options.call_timeout.as_millis() + 1_000),
        )]);
    super::open_pool(options, connect_options, when).await
}
