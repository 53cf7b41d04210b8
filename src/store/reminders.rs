//! Expiry reminders: `expiring` events at each lead time before a token's
//! expiry and an `expired` event at it, each exactly once per token and lead
//! time whichever replica finds it first — the primary key of
//! `token_reminders` decides, in the transaction that writes the event.

use crate::domain::model::{Actor, TokenRecord};

use super::events::{Event, EventKind};
use super::stats::StoreStats;
use super::tokens::TokenRow;
use super::{Backend, Store, StoreResult};

/// How far back `expired` looks: a token that expired longer ago than this
/// while every server was down gets no `expired` event (and its reminder rows
/// may be pruned).
pub const EXPIRED_LOOKBACK_MICROS: i64 = 30 * 86_400 * 1_000_000;

impl Store {
    /// Active tokens inside the window of reminder `lead` (expiring within
    /// `lead` of `now` but not within `shorter`, the next shorter lead, whose
    /// reminder supersedes it), that existed before their window opened and
    /// have not had it yet: soonest first, at most `limit`. `lead` 0 asks for
    /// tokens that expired while active, since reminders exist and within
    /// [`EXPIRED_LOOKBACK_MICROS`].
    pub async fn reminders_due(
        &self,
        lead: i64,
        shorter: i64,
        now: i64,
        limit: i64,
    ) -> StoreResult<Vec<TokenRecord>> {
        const EXPIRING: &str = select!(
            "WHERE expires_at > $1 AND expires_at <= $1 + $2 AND expires_at > $1 + $3 ",
            "AND created_at <= expires_at - $2 AND revoked_at IS NULL AND suspended_at IS NULL ",
            "AND NOT EXISTS (SELECT 1 FROM token_reminders r WHERE r.token_id = tokens.id AND r.lead = $2 ",
            "AND r.expires_at = tokens.expires_at) ",
            "ORDER BY expires_at LIMIT $4"
        );
        const EXPIRED: &str = select!(
            "WHERE expires_at <= $1 AND expires_at > $1 - $2 ",
            "AND expires_at >= (SELECT since FROM token_reminders_since) ",
            "AND (revoked_at IS NULL OR revoked_at > expires_at) ",
            "AND (suspended_at IS NULL OR suspended_at > expires_at) ",
            "AND NOT EXISTS (SELECT 1 FROM token_reminders r WHERE r.token_id = tokens.id AND r.lead = 0 ",
            "AND r.expires_at = tokens.expires_at) ",
            "ORDER BY expires_at LIMIT $3"
        );
        let rows: Vec<TokenRow> = if lead > 0 {
            timed!(self, pool => sqlx::query_as(EXPIRING)
                .bind(now)
                .bind(lead)
                .bind(shorter)
                .bind(limit)
                .fetch_all(pool)
                .await)?
        } else {
            timed!(self, pool => sqlx::query_as(EXPIRED)
                .bind(now)
                .bind(EXPIRED_LOOKBACK_MICROS)
                .bind(limit)
                .fetch_all(pool)
                .await)?
        };
        Ok(rows.into_iter().map(TokenRecord::from).collect())
    }

    /// Records reminder `lead` of `token` and its event, in one transaction,
    /// unless some server already has: true if this call did.
    pub async fn send_reminder(
        &self,
        token: &TokenRecord,
        lead: i64,
        now: i64,
        detail: String,
    ) -> StoreResult<bool> {
        // The token is checked again as the claim is written: one revoked,
        // suspended or given a new expiry since it was found gets nothing.
        const CLAIM: &str = "INSERT INTO token_reminders (token_id, lead, expires_at, sent_at) \
            SELECT id, $2, expires_at, $3 FROM tokens WHERE id = $1 AND expires_at = $4 \
            AND (revoked_at IS NULL OR revoked_at > expires_at) \
            AND (suspended_at IS NULL OR suspended_at > expires_at) \
            ON CONFLICT (token_id, lead, expires_at) DO NOTHING";
        let kind = if lead > 0 {
            EventKind::Expiring
        } else {
            EventKind::Expired
        };
        let event = Event::about(kind, token, &Actor::new("patd", None), now, detail);
        StoreStats::count(&self.stats.writes);
        let sent = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let claimed = sqlx::query(CLAIM)
                .bind(&token.id)
                .bind(lead)
                .bind(now)
                .bind(token.expires_at.unwrap_or(i64::MIN))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if claimed == 0 {
                return Ok(false);
            }
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)?;
        if sent {
            self.events_written();
        }
        Ok(sent)
    }

    /// Forgets reminders sent before `before` (their tokens have expired long
    /// since, so none can be due again).
    pub async fn prune_reminders(&self, before: i64) -> StoreResult<u64> {
        self.delete_before("DELETE FROM token_reminders WHERE sent_at < $1", before)
            .await
    }
}
