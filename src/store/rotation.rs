//! Rotation: a new secret for an active token, the old one retired (usable for
//! a grace period), checked against the caller's authority, in one transaction.

use crate::domain::authority::{Authority, Exceeds};
use crate::domain::model::{Actor, Owner, TokenRecord, TokenState};
use crate::domain::token::SecretHash;

use super::events::{Event, EventKind};
use super::stats::StoreStats;
use super::tokens::TokenRow;
use super::{Backend, Store, StoreResult};

/// A rotation to store: see [`Store::rotate`].
pub struct Rotation<'a> {
    pub owner: &'a Owner,
    /// The caller's: the rotated token must not exceed it (checked against the
    /// row inside the transaction, so nothing can change in between).
    pub authority: &'a Authority,
    pub id: &'a str,
    pub new_hash: SecretHash,
    pub hint: String,
    pub now: i64,
    /// A new expiry; `None` keeps the current one.
    pub expires_at: Option<i64>,
    /// Until when the old secret keeps working (`now`: not at all).
    pub grace_until: i64,
    pub actor: &'a Actor,
}

pub enum Rotated {
    Done {
        record: Box<TokenRecord>,
        old_hash: SecretHash,
    },
    NotFound,
    /// Revoked or expired tokens are not rotated.
    Inactive(TokenState),
    /// The new secret would carry more than the caller holds.
    Exceeds(Exceeds),
    /// Another rotation of the same token committed first.
    Conflict,
}

/// Retired secrets kept per token (see [`Store::rotate`]).
pub const MAX_RETIRED_SECRETS: i64 = 100;

impl Store {
    /// Gives `owner`'s active token `id` the secret hashing to `new_hash`: the
    /// old hash is retired (usable until `grace_until`), all in one transaction.
    #[tracing::instrument(skip_all, fields(token_id = %rotation.id))]
    pub async fn rotate(&self, rotation: &Rotation<'_>) -> StoreResult<Rotated> {
        // Conditional on the hash read: of two concurrent rotations one wins and
        // the other finds no row, so no secret is replaced without being retired;
        // likewise a rotation racing a revoke or delete finds no row.
        const REPLACE: &str = concat!(
            "UPDATE tokens SET secret_hash = $1, hint = $2, rotated_at = $3, ",
            "expires_at = COALESCE($4, expires_at) WHERE id = $5 AND secret_hash = $6 ",
            // Still active: a revoke that committed since the read wins.
            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3) RETURNING ",
            columns!()
        );
        const RETIRE: &str = "INSERT INTO retired_secrets (secret_hash, token_id, retired_at, grace_until) \
             VALUES ($1, $2, $3, $4)";
        // A token keeps its last MAX_RETIRED_SECRETS retired secrets, so that
        // rotating in a loop cannot grow storage without bound; an older one
        // presented later is merely unknown.
        const FORGET_OLDEST: &str = "DELETE FROM retired_secrets WHERE token_id = $1 AND secret_hash NOT IN \
             (SELECT secret_hash FROM retired_secrets WHERE token_id = $1 \
              ORDER BY retired_at DESC LIMIT $2)";
        let Rotation {
            owner,
            authority,
            id,
            new_hash,
            hint,
            now,
            expires_at,
            grace_until,
            actor,
        } = rotation;
        StoreStats::count(&self.stats.writes);
        let begin = self.begin_writing();
        Ok(timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            let current = current_for_owner!(&mut *tx, owner, id);
            let Some(current) = current else {
                return Ok(Rotated::NotFound);
            };
            let record: TokenRecord = current.token.into();
            let state = record.state_at(*now);
            if state != TokenState::Active {
                return Ok(Rotated::Inactive(state));
            }
            let grant = record.grant(expires_at.or(record.expires_at));
            if let Err(exceeds) = authority.check(grant) {
                return Ok(Rotated::Exceeds(exceeds));
            }
            let replaced: Option<TokenRow> = sqlx::query_as(REPLACE)
                .bind(&new_hash.0[..])
                .bind(hint)
                .bind(now)
                .bind(expires_at)
                .bind(id)
                .bind(&current.secret_hash.0[..])
                .fetch_optional(&mut *tx)
                .await?;
            let Some(replaced) = replaced else {
                return Ok(Rotated::Conflict);
            };
            sqlx::query(RETIRE)
                .bind(&current.secret_hash.0[..])
                .bind(id)
                .bind(now)
                .bind(grace_until)
                .execute(&mut *tx)
                .await?;
            sqlx::query(FORGET_OLDEST)
                .bind(id)
                .bind(MAX_RETIRED_SECRETS)
                .execute(&mut *tx)
                .await?;
            let record: TokenRecord = replaced.clone().into();
            let grace = (grace_until - now) / 1_000_000;
            let event = Event::about(EventKind::Rotated, &record, actor, *now, format!("grace {grace}s"));
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
            self.events_written();
            Ok(Rotated::Done {
                record: Box::new(replaced.into()),
                old_hash: current.secret_hash,
            })
        }
        .await)?)
    }
}
