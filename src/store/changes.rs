//! The change log that keeps every process's cache coherent: revokes, deletes
//! and rotations recorded by triggers in `token_changes`, read in commit order
//! (the engines differ in how: see [`ChangeMark`]), and on Postgres also pushed
//! as they commit (`LISTEN/NOTIFY`).

use crate::domain::token::SecretHash;

use super::{Backend, Store, StoreResult};

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

impl Store {
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
    pub async fn prune_changes(&self, before: i64) -> StoreResult<u64> {
        self.delete_before("DELETE FROM token_changes WHERE changed_at < $1", before)
            .await
    }
}
