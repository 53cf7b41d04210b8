//! Suspension and offboarding: a token stopped and started again (resuming is
//! checked against the caller's authority inside the transaction), and every
//! token of one owner revoked at once. The change log hears of each through
//! the tokens table's triggers, so every replica forgets the tokens.

use crate::domain::authority::{Authority, Exceeds};
use crate::domain::model::{Actor, Owner, TokenRecord};
use crate::domain::token::SecretHash;

use super::events::{Event, EventKind};
use super::stats::StoreStats;
use super::tokens::HashedTokenRow;
use super::{Backend, Store, StoreResult};

/// What [`Store::suspend`] or [`Store::resume`] did.
pub enum Suspended {
    /// The token as it now is, and its secret's hash; `changed` is false when
    /// it already was as asked (the calls are idempotent).
    Done {
        record: Box<TokenRecord>,
        hash: SecretHash,
        changed: bool,
    },
    NotFound,
    /// Resuming would hand back more than the caller holds.
    Exceeds(Exceeds),
}

impl Store {
    /// Suspends `owner`'s token `id` at `now` (a suspended one keeps its time).
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn suspend(
        &self,
        owner: &Owner,
        id: &str,
        now: i64,
        actor: &Actor,
    ) -> StoreResult<Suspended> {
        self.set_suspended(owner, id, Some(now), None, now, actor)
            .await
    }

    /// Resumes `owner`'s token `id`, unless what it grants exceeds `authority`.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn resume(
        &self,
        owner: &Owner,
        id: &str,
        authority: &Authority,
        now: i64,
        actor: &Actor,
    ) -> StoreResult<Suspended> {
        self.set_suspended(owner, id, None, Some(authority), now, actor)
            .await
    }

    async fn set_suspended(
        &self,
        owner: &Owner,
        id: &str,
        suspended_at: Option<i64>,
        authority: Option<&Authority>,
        now: i64,
        actor: &Actor,
    ) -> StoreResult<Suspended> {
        // Conditional on the state read, so that of two concurrent calls one
        // changes the row and records the event, the other finds it done.
        const SUSPEND: &str = concat!(
            "UPDATE tokens SET suspended_at = $1 WHERE id = $2 AND suspended_at IS NULL RETURNING ",
            columns!(),
            ", secret_hash"
        );
        const RESUME: &str = concat!(
            "UPDATE tokens SET suspended_at = NULL WHERE id = $1 AND suspended_at IS NOT NULL RETURNING ",
            columns!(),
            ", secret_hash"
        );
        StoreStats::count(&self.stats.writes);
        let begin = self.begin_writing();
        Ok(timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            let current = current_for_owner!(&mut *tx, owner, id);
            let Some(current) = current else {
                return Ok(Suspended::NotFound);
            };
            let unchanged = |row: HashedTokenRow| Suspended::Done {
                record: Box::new(row.token.into()),
                hash: row.secret_hash,
                changed: false,
            };
            if current.token.suspended_at.is_some() == suspended_at.is_some() {
                return Ok(unchanged(current));
            }
            let changed: Option<HashedTokenRow> = match suspended_at {
                Some(at) => {
                    sqlx::query_as(SUSPEND).bind(at).bind(id).fetch_optional(&mut *tx).await?
                }
                None => {
                    // A suspended token cannot be rotated, so what it grants is
                    // what was read: checked before it is handed back.
                    let record: TokenRecord = current.token.clone().into();
                    let grant = record.grant(record.expires_at);
                    if let Some(Err(exceeds)) = authority.map(|authority| authority.check(grant)) {
                        return Ok(Suspended::Exceeds(exceeds));
                    }
                    sqlx::query_as(RESUME).bind(id).fetch_optional(&mut *tx).await?
                }
            };
            let Some(changed) = changed else {
                return Ok(unchanged(current));
            };
            let record: TokenRecord = changed.token.clone().into();
            let kind = if suspended_at.is_some() { EventKind::Suspended } else { EventKind::Resumed };
            let event = Event::about(kind, &record, actor, now, String::new());
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
            self.events_written();
            Ok(Suspended::Done {
                record: Box::new(record),
                hash: changed.secret_hash,
                changed: true,
            })
        }
        .await)?)
    }

    /// Offboarding: revokes every token of `owner` not revoked yet, in one
    /// transaction, with a `revoked` event each and one `revoked_all` summary.
    /// The tokens revoked and their secrets' hashes.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_all(
        &self,
        owner: &Owner,
        now: i64,
        actor: &Actor,
    ) -> StoreResult<Vec<(TokenRecord, SecretHash)>> {
        const SQL: &str = concat!(
            "UPDATE tokens SET revoked_at = $1 ",
            "WHERE account = $2 AND subject = $3 AND revoked_at IS NULL RETURNING ",
            columns!(),
            ", secret_hash"
        );
        StoreStats::count(&self.stats.writes);
        let begin = self.begin_writing();
        let rows: Vec<HashedTokenRow> = timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            let rows: Vec<HashedTokenRow> = sqlx::query_as(SQL)
                .bind(now)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_all(&mut *tx)
                .await?;
            for row in &rows {
                let record: TokenRecord = row.token.clone().into();
                let event = Event::about(EventKind::Revoked, &record, actor, now, "offboarding".to_owned());
                insert_event!(&mut *tx, &event);
            }
            let summary = Event {
                seq: 0,
                at: now,
                kind: EventKind::RevokedAll,
                token_id: None,
                subject: Some(owner.subject.clone()),
                account: Some(owner.account.clone()),
                actor: actor.clone(),
                detail: format!("revoked {} tokens", rows.len()),
                token: String::new(),
            };
            insert_event!(&mut *tx, &summary);
            tx.commit().await?;
            self.events_written();
            Ok(rows)
        }
        .await)?;
        Ok(rows
            .into_iter()
            .map(|row| (row.token.into(), row.secret_hash))
            .collect())
    }
}
