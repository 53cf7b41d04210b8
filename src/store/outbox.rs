//! The webhook outbox: the audit trail (`token_events`, written in the same
//! transaction as each change) fanned out into one delivery row per endpoint
//! and event, delivered in order by whichever process holds the endpoint's
//! lease.
//!
//! Fan-out never skips a committed event, though transactions commit out of
//! order on Postgres: it reads events by transaction id, in batches of
//! transactions older than the oldest one still running when the batch began
//! (every one of them has committed or aborted), each batch in `seq` order. A
//! later change to the same token always lands in the same or a later batch
//! with a higher `seq`, so receivers see each token's events in the order they
//! happened. SQLite has one writer at a time, so `seq` is commit order there.

use super::events::{EVENT_COLUMNS, Event, EventRow};
use super::stats::StoreStats;
use super::{Backend, Store, StoreResult};

/// The database's clock, in microseconds: leases are compared against one
/// clock, whatever the replicas' clocks say.
const SQLITE_NOW: &str = "CAST(unixepoch('subsec') * 1000000 AS INTEGER)";
const POSTGRES_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";
/// The oldest transaction still running (see [`super::ChangeMark`]).
const POSTGRES_HORIZON: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT";

/// Where an endpoint's fan-out stands (see the migration's comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct FanoutMark {
    mark: i64,
    target: i64,
    after_seq: i64,
}

/// One event rendered for one endpoint.
pub struct NewDelivery {
    pub event_seq: i64,
    pub event_id: String,
    pub event_type: &'static str,
    pub event_at: i64,
    pub body: String,
    /// When retries stop.
    pub deadline: i64,
}

/// A delivery waiting to be sent.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingDelivery {
    pub position: i64,
    pub event_id: String,
    pub event_type: String,
    pub event_at: i64,
    pub body: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub deadline: i64,
}

/// How one attempt ended, as the outbox records it.
pub enum Attempted<'a> {
    Delivered,
    /// Failed; tried again at `next_attempt_at`, or dead-lettered if `None`.
    Failed {
        error: &'a str,
        next_attempt_at: Option<i64>,
    },
}

/// An endpoint's queue, as operators and metrics see it (fleet-wide).
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct EndpointStatus {
    pub name: String,
    pub disabled_at: Option<i64>,
    pub disabled_reason: String,
    pub lease_owner: String,
    pub lease_until: i64,
    pub pending: i64,
    /// When the oldest pending event happened.
    pub oldest_pending_at: Option<i64>,
    pub dead: i64,
}

/// A delivery that ran out of retries (or any one event, for `--event`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_type: String,
    pub event_at: i64,
    pub attempts: i32,
    pub last_error: String,
    pub finished_at: Option<i64>,
}

/// What [`Store::retry_deliveries`] did.
pub enum Retried {
    /// Deliveries queued again, and whether the endpoint had been disabled.
    Queued {
        deliveries: u64,
        was_disabled: bool,
    },
    NoEndpoint,
}

impl Store {
    fn db_now(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => SQLITE_NOW,
            Backend::Postgres(_) => POSTGRES_NOW,
        }
    }

    /// Registers endpoint `name` if it is new: it receives the events that
    /// commit from now on, not the trail's history.
    pub async fn ensure_endpoint(&self, name: &str) -> StoreResult<()> {
        let start = match self.backend {
            Backend::Sqlite(_) => "SELECT COALESCE(MAX(seq), 0) FROM token_events",
            Backend::Postgres(_) => POSTGRES_HORIZON,
        };
        const INSERT: &str = "INSERT INTO webhook_endpoints (name, mark) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        timed!(self, pool => async {
            let (mark,): (i64,) = sqlx::query_as(start).fetch_one(pool).await?;
            sqlx::query(INSERT).bind(name).bind(mark).execute(pool).await?;
            Ok::<(), sqlx::Error>(())
        }
        .await)?;
        Ok(())
    }

    /// Takes or renews the lease on endpoint `name` for `owner`, for `ttl_micros`
    /// by the database's clock: `Some(disabled)` if `owner` holds it now. A
    /// replica never waits for another's lock (`SKIP LOCKED`).
    pub async fn lease_endpoint(
        &self,
        name: &str,
        owner: &str,
        ttl_micros: i64,
    ) -> StoreResult<Option<bool>> {
        let now = self.db_now();
        let lock = match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE webhook_endpoints SET lease_owner = $1, lease_until = {now} + $2 \
             WHERE name = (SELECT name FROM webhook_endpoints WHERE name = $3 \
             AND (lease_owner = $1 OR lease_until < {now}){lock}) \
             RETURNING disabled_at"
        );
        let row: Option<(Option<i64>,)> = timed!(self, pool => sqlx::query_as(&sql)
            .bind(owner)
            .bind(ttl_micros)
            .bind(name)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(|(disabled,)| disabled.is_some()))
    }

    /// Gives the lease up (at shutdown), so another replica takes over at once.
    pub async fn release_endpoint(&self, name: &str, owner: &str) -> StoreResult<()> {
        const SQL: &str = "UPDATE webhook_endpoints SET lease_until = 0 \
                           WHERE name = $1 AND lease_owner = $2";
        timed!(self, pool => sqlx::query(SQL).bind(name).bind(owner).execute(pool).await.map(drop))?;
        Ok(())
    }

    /// The next events to fan out to `name` (at most `limit`), the mark to
    /// store with their deliveries, and whether that mark moved.
    pub async fn outbox_batch(
        &self,
        name: &str,
        limit: i64,
    ) -> StoreResult<(Vec<Event>, FanoutMark, bool)> {
        const MARK: &str = "SELECT mark, target, after_seq FROM webhook_endpoints WHERE name = $1";
        let read = async {
            let mark: FanoutMark =
                on_pool!(self, pool => sqlx::query_as(MARK).bind(name).fetch_one(pool).await)?;
            match &self.backend {
                Backend::Sqlite(pool) => {
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM token_events WHERE seq > $1 ORDER BY seq LIMIT $2"
                    );
                    let rows: Vec<EventRow> = sqlx::query_as(&sql)
                        .bind(mark.mark)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                    let next = FanoutMark {
                        mark: rows.last().map_or(mark.mark, |row| row.seq),
                        ..mark
                    };
                    Ok::<_, sqlx::Error>((rows, next, next != mark))
                }
                Backend::Postgres(pool) => {
                    let target = if mark.target == 0 {
                        let (horizon,): (i64,) =
                            sqlx::query_as(POSTGRES_HORIZON).fetch_one(pool).await?;
                        horizon
                    } else {
                        mark.target
                    };
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM token_events \
                         WHERE txid >= $1::BIGINT::TEXT::XID8 AND txid < $2::BIGINT::TEXT::XID8 \
                         AND seq > $3 ORDER BY seq LIMIT $4"
                    );
                    let rows: Vec<EventRow> = sqlx::query_as(&sql)
                        .bind(mark.mark)
                        .bind(target)
                        .bind(mark.after_seq)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                    let next = if (rows.len() as i64) < limit {
                        // The batch is done: every older transaction's events are in.
                        FanoutMark {
                            mark: target.max(mark.mark),
                            target: 0,
                            after_seq: 0,
                        }
                    } else {
                        FanoutMark {
                            mark: mark.mark,
                            target,
                            after_seq: rows.last().map_or(mark.after_seq, |row| row.seq),
                        }
                    };
                    Ok((rows, next, next != mark))
                }
            }
        };
        let (rows, next, moved) = self.timed(read).await?;
        Ok((
            rows.into_iter().filter_map(EventRow::into_event).collect(),
            next,
            moved,
        ))
    }

    /// Stores `deliveries` for `name` and moves its mark to `mark`, in one
    /// transaction, if `owner` still holds the lease (false if not: another
    /// replica fans out now). Deliveries already stored are left as they are.
    pub async fn enqueue_deliveries(
        &self,
        name: &str,
        owner: &str,
        deliveries: &[NewDelivery],
        mark: FanoutMark,
        now: i64,
    ) -> StoreResult<bool> {
        const MOVE: &str = "UPDATE webhook_endpoints SET mark = $1, target = $2, after_seq = $3 \
                            WHERE name = $4 AND lease_owner = $5";
        const INSERT: &str = "INSERT INTO webhook_deliveries \
            (endpoint, event_seq, event_id, event_type, event_at, body, next_attempt_at, deadline) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (endpoint, event_seq) DO NOTHING";
        StoreStats::count(&self.stats.writes);
        let held = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(MOVE)
                .bind(mark.mark)
                .bind(mark.target)
                .bind(mark.after_seq)
                .bind(name)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 0 {
                return Ok(false);
            }
            for delivery in deliveries {
                sqlx::query(INSERT)
                    .bind(name)
                    .bind(delivery.event_seq)
                    .bind(&delivery.event_id)
                    .bind(delivery.event_type)
                    .bind(delivery.event_at)
                    .bind(&delivery.body)
                    .bind(now)
                    .bind(delivery.deadline)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)?;
        Ok(held)
    }

    /// The first `limit` deliveries waiting for `name`, in order.
    pub async fn pending_deliveries(
        &self,
        name: &str,
        limit: i64,
    ) -> StoreResult<Vec<PendingDelivery>> {
        const SQL: &str = "SELECT position, event_id, event_type, event_at, body, attempts, \
            next_attempt_at, deadline FROM webhook_deliveries \
            WHERE endpoint = $1 AND state = 'pending' ORDER BY position LIMIT $2";
        Ok(timed!(self, pool => sqlx::query_as(SQL)
            .bind(name)
            .bind(limit)
            .fetch_all(pool)
            .await)?)
    }

    /// Records how an attempt at delivery `position` ended.
    pub async fn record_attempt(
        &self,
        position: i64,
        attempted: Attempted<'_>,
        now: i64,
    ) -> StoreResult<()> {
        const DELIVERED: &str = "UPDATE webhook_deliveries SET state = 'delivered', \
            attempts = attempts + 1, last_attempt_at = $1, finished_at = $1, last_error = '' \
            WHERE position = $2";
        const RETRY: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, \
            last_attempt_at = $1, last_error = $2, next_attempt_at = $3 WHERE position = $4";
        const DEAD: &str = "UPDATE webhook_deliveries SET state = 'dead', \
            attempts = attempts + 1, last_attempt_at = $1, last_error = $2, finished_at = $1 \
            WHERE position = $3";
        StoreStats::count(&self.stats.writes);
        timed!(self, pool => match attempted {
            Attempted::Delivered => sqlx::query(DELIVERED).bind(now).bind(position).execute(pool).await.map(drop),
            Attempted::Failed { error, next_attempt_at: Some(next) } => sqlx::query(RETRY)
                .bind(now)
                .bind(error)
                .bind(next)
                .bind(position)
                .execute(pool)
                .await
                .map(drop),
            Attempted::Failed { error, next_attempt_at: None } => sqlx::query(DEAD)
                .bind(now)
                .bind(error)
                .bind(position)
                .execute(pool)
                .await
                .map(drop),
        })?;
        Ok(())
    }

    /// Stops deliveries to `name` (its receiver answered 410 Gone) fleet-wide.
    pub async fn disable_endpoint(&self, name: &str, reason: &str, now: i64) -> StoreResult<()> {
        const SQL: &str = "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2 \
                           WHERE name = $3";
        StoreStats::count(&self.stats.writes);
        timed!(self, pool => sqlx::query(SQL).bind(now).bind(reason).bind(name).execute(pool).await.map(drop))?;
        Ok(())
    }

    /// Every endpoint this database knows, with its queue (delivered rows,
    /// the bulk, are not read).
    pub async fn endpoint_statuses(&self) -> StoreResult<Vec<EndpointStatus>> {
        const SQL: &str = "SELECT e.name, e.disabled_at, e.disabled_reason, e.lease_owner, \
            e.lease_until, \
            COALESCE(SUM(CASE WHEN d.state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
            MIN(CASE WHEN d.state = 'pending' THEN d.event_at END) AS oldest_pending_at, \
            COALESCE(SUM(CASE WHEN d.state = 'dead' THEN 1 ELSE 0 END), 0) AS dead \
            FROM webhook_endpoints e LEFT JOIN webhook_deliveries d ON d.endpoint = e.name \
            AND d.state IN ('pending', 'dead') \
            GROUP BY e.name, e.disabled_at, e.disabled_reason, e.lease_owner, e.lease_until \
            ORDER BY e.name";
        Ok(timed!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await)?)
    }

    /// `name`'s dead letters, newest first (at most `limit`).
    pub async fn dead_letters(&self, name: &str, limit: i64) -> StoreResult<Vec<DeadLetter>> {
        const SQL: &str = "SELECT event_id, event_type, event_at, attempts, last_error, \
            finished_at FROM webhook_deliveries WHERE endpoint = $1 AND state = 'dead' \
            ORDER BY position DESC LIMIT $2";
        Ok(timed!(self, pool => sqlx::query_as(SQL)
            .bind(name)
            .bind(limit)
            .fetch_all(pool)
            .await)?)
    }

    /// Queues `name`'s dead letters again, and gives its pending deliveries a
    /// fresh start (or only event `event_id`, dead or delivered), each with a
    /// new retry window ending at `deadline`, and enables the endpoint again if
    /// a 410 had disabled it. Counts the dead or delivered ones queued again.
    pub async fn retry_deliveries(
        &self,
        name: &str,
        event_id: Option<&str>,
        now: i64,
        deadline: i64,
    ) -> StoreResult<Retried> {
        const ENABLE: &str = "UPDATE webhook_endpoints SET disabled_at = NULL, \
            disabled_reason = '' WHERE name = $1";
        const WAS: &str = "SELECT disabled_at FROM webhook_endpoints WHERE name = $1";
        // Dead letters queue again, and what waits gets a new window too (after
        // a 410 or a long outage it would otherwise die on its first failure);
        // backoff starts over.
        const REQUEUE: &str = "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
            next_attempt_at = $1, deadline = $2, finished_at = NULL \
            WHERE endpoint = $3 AND state IN ('dead', 'pending')";
        const REQUEUE_ONE: &str = "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
            next_attempt_at = $1, deadline = $2, finished_at = NULL \
            WHERE endpoint = $3 AND event_id = $4 AND state <> 'pending'";
        StoreStats::count(&self.stats.writes);
        let retried = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let was: Option<(Option<i64>,)> =
                sqlx::query_as(WAS).bind(name).fetch_optional(&mut *tx).await?;
            let Some((was_disabled,)) = was else {
                return Ok(Retried::NoEndpoint);
            };
            sqlx::query(ENABLE).bind(name).execute(&mut *tx).await?;
            let query = match event_id {
                None => sqlx::query(REQUEUE).bind(now).bind(deadline).bind(name),
                Some(id) => sqlx::query(REQUEUE_ONE)
                    .bind(now)
                    .bind(deadline)
                    .bind(name)
                    .bind(id),
            };
            let pending: (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint = $1 AND state = 'pending'",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            let touched = query.execute(&mut *tx).await?.rows_affected();
            let deliveries = match event_id {
                None => touched.saturating_sub(pending.0 as u64),
                Some(_) => touched,
            };
            tx.commit().await?;
            Ok::<Retried, sqlx::Error>(Retried::Queued {
                deliveries,
                was_disabled: was_disabled.is_some(),
            })
        }
        .await)?;
        Ok(retried)
    }

    /// Forgets deliveries that succeeded before `delivered_before` and dead
    /// letters recorded before `dead_before`.
    pub async fn prune_deliveries(
        &self,
        delivered_before: i64,
        dead_before: i64,
    ) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM webhook_deliveries WHERE finished_at IS NOT NULL AND \
            ((state = 'delivered' AND finished_at < $1) OR (state = 'dead' AND finished_at < $2))";
        StoreStats::count(&self.stats.writes);
        Ok(timed!(self, pool => sqlx::query(SQL)
            .bind(delivered_before)
            .bind(dead_before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?)
    }
}
