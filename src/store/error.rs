//! Storage errors, and which of them mean "not now" (unavailable), "not this"
//! (a value storage refuses) or "something is wrong" (failed). What a caller may
//! be told comes from here; the driver's text stays in the log.

use std::fmt;

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
/// in text, string too long, numeric out of range) and 54000 (a program limit,
/// such as an index row too large for a very long label), SQLite `SQLITE_TOOBIG`.
fn is_rejected_value(db: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return code.parse::<i32>().is_ok_and(|code| code & 0xFF == 18);
    }
    code.starts_with("22") || code == "54000"
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
