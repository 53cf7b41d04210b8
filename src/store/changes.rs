//! The change log that keeps every process's cache coherent: revokes, deletes
//! and rotations recorded by triggers in `token_changes`, read in commit order
//! (the engines differ in how: see [`ChangeMark`]), and on Postgres also pushed
//! as they commit (`LISTEN/NOTIFY`).

use crate::domain::token::SecretHash;

use super::{Backend, Store, StoreResult};

/// A revoke, delete or rotation recorded in `token_changes` (by a trigger).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Change {
    /// Insertion order (commit order on SQLite, not on Postgres).
    pub seq: i64,
    #[sqlx(try_from = "Vec<u8>")]
    pub secret_hash: SecretHash,
    /// Empty for changes recorded before the change stream existed.
    pub token_id: String,
    #[sqlx(try_from = "String")]
    pub kind: ChangeKind,
    /// When it was recorded (the database's clock), microseconds.
    pub changed_at: i64,
}

/// What happened to a token, as the change log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Revoked,
    Deleted,
    /// The secret was replaced; the old one is retired.
    Rotated,
    Suspended,
    Resumed,
    /// Renamed (what Introspect answers changed).
    Updated,
    /// Recorded before the log said which (an older version's row).
    Unknown,
}

impl From<String> for ChangeKind {
    fn from(kind: String) -> Self {
        match kind.as_str() {
            "revoked" => ChangeKind::Revoked,
            "deleted" => ChangeKind::Deleted,
            "rotated" => ChangeKind::Rotated,
            "suspended" => ChangeKind::Suspended,
            "resumed" => ChangeKind::Resumed,
            "updated" => ChangeKind::Updated,
            _ => ChangeKind::Unknown,
        }
    }
}

/// The columns of a [`Change`].
const CHANGE_COLUMNS: &str = "seq, secret_hash, token_id, kind, changed_at";

/// What a backlog read found.
pub enum Backlog {
    /// The changes since the mark, and the mark after them.
    Changes(Vec<Change>, ChangeMark),
    /// Changes after that mark may have been pruned: the reader must start over.
    Pruned,
    /// More than the reader may take at once: it must start over too.
    TooLong,
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
///
/// A mark is also a change stream's cursor: resuming from it repeats at most
/// the changes read with it, and never skips one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeMark(i64);

impl ChangeMark {
    /// A mark as a number, for a cursor.
    pub fn to_i64(self) -> i64 {
        self.0
    }

    /// A mark from a cursor's number.
    pub fn from_i64(value: i64) -> ChangeMark {
        ChangeMark(value)
    }
}

impl Store {
    /// Revokes and deletes recorded since `mark` (see [`ChangeMark`]; the default
    /// mark reads the whole log), and the mark for the next read.
    pub async fn changes_since(&self, mark: ChangeMark) -> StoreResult<(Vec<Change>, ChangeMark)> {
        Ok(self.timed(self.read_changes(mark, i64::MAX)).await?)
    }

    async fn read_changes(
        &self,
        mark: ChangeMark,
        limit: i64,
    ) -> Result<(Vec<Change>, ChangeMark), sqlx::Error> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM token_changes WHERE seq > $1 ORDER BY seq LIMIT $2"
                );
                let changes: Vec<Change> = sqlx::query_as(&sql)
                    .bind(mark.0)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                let next = changes.last().map_or(mark, |change| ChangeMark(change.seq));
                Ok((changes, next))
            }
            Backend::Postgres(pool) => {
                // The horizon is taken first: what committed before it is visible
                // to the read that follows.
                const HORIZON: &str =
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT";
                let sql = format!(
                    "SELECT {CHANGE_COLUMNS} FROM token_changes \
                     WHERE txid >= $1::BIGINT::TEXT::XID8 ORDER BY seq LIMIT $2"
                );
                let (horizon,): (i64,) = sqlx::query_as(HORIZON).fetch_one(pool).await?;
                let changes = sqlx::query_as(&sql)
                    .bind(mark.0)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
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

    /// Forgets changes recorded before `before`, and notes the lowest mark
    /// that still misses none (see [`Store::changes_after`]), in one transaction.
    pub async fn prune_changes(&self, before: i64) -> StoreResult<u64> {
        // The mark past the newest pruned change: its seq (SQLite), or its
        // transaction id plus one (Postgres, where a mark means "every change
        // of an older transaction was read").
        let last = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT MAX(seq), MAX(seq) FROM token_changes WHERE changed_at < $1"
            }
            Backend::Postgres(_) => {
                "SELECT MAX(seq), MAX(txid::TEXT::BIGINT) + 1 FROM token_changes \
                 WHERE changed_at < $1"
            }
        };
        const DELETE: &str = "DELETE FROM token_changes WHERE changed_at < $1";
        const NOTE: &str =
            "UPDATE token_changes_pruned SET through_seq = $1 WHERE through_seq < $1";
        let pruned = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let (_, mark): (Option<i64>, Option<i64>) =
                sqlx::query_as(last).bind(before).fetch_one(&mut *tx).await?;
            let Some(mark) = mark else {
                return Ok(0);
            };
            let deleted = sqlx::query(DELETE)
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(NOTE).bind(mark).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(deleted)
        }
        .await)?;
        Ok(pruned)
    }

    /// The changes since `mark` (at most `limit`), and the mark after them — or
    /// that the log no longer holds them all.
    pub async fn changes_after(&self, mark: ChangeMark, limit: usize) -> StoreResult<Backlog> {
        const PRUNED: &str = "SELECT through_seq FROM token_changes_pruned";
        let take = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let read = async {
            let (pruned,): (i64,) =
                on_pool!(self, pool => sqlx::query_as(PRUNED).fetch_one(pool).await)?;
            let (changes, next) = self.read_changes(mark, take).await?;
            Ok::<_, sqlx::Error>((pruned, changes, next))
        };
        let (pruned, changes, next) = self.timed(read).await?;
        Ok(if mark.0 < pruned {
            Backlog::Pruned
        } else if changes.len() > limit {
            Backlog::TooLong
        } else {
            Backlog::Changes(changes, next)
        })
    }

    /// The mark of "now": a reader starting from it reads every change that
    /// commits from here on (and perhaps a few from just before).
    pub async fn current_mark(&self) -> StoreResult<ChangeMark> {
        let sql = match self.backend {
            Backend::Sqlite(_) => "SELECT COALESCE(MAX(seq), 0) FROM token_changes",
            Backend::Postgres(_) => "SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT",
        };
        let (mark,): (i64,) = timed!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(ChangeMark(mark))
    }
}
