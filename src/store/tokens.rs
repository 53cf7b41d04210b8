//! Tokens: rows and their conversion, inserting (with the per-owner limit),
//! finding by secret hash or id, revoking, deleting, counting and the
//! write-behind of last use.

use crate::domain::cidr::CidrList;
use crate::domain::labels::Labels;
use crate::domain::model::{Actor, NewToken, Owner, TokenRecord};
use crate::domain::resource::ResourceList;
use crate::domain::scope::ScopeSet;
use crate::domain::token::SecretHash;

use super::events::{Event, EventKind};
use super::stats::{StoreStats, TokenCounts};
use super::{Backend, Store, StoreResult};

#[derive(Clone, sqlx::FromRow)]
pub(super) struct TokenRow {
    pub(super) seq: i64,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) subject: String,
    pub(super) account: String,
    pub(super) scopes: String,
    pub(super) hint: String,
    pub(super) created_at: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) revoked_at: Option<i64>,
    pub(super) last_used_at: Option<i64>,
    pub(super) last_used_ip: Option<String>,
    pub(super) rotated_at: Option<i64>,
    pub(super) allowed_cidrs: String,
    pub(super) suspended_at: Option<i64>,
    pub(super) description: String,
    pub(super) labels: String,
    pub(super) resources: String,
}

/// `owner`'s token `id` (`$1`, `$2` account, `$3` subject) with its secret's
/// hash, as a change reads it first inside its transaction.
pub(super) const CURRENT_FOR_OWNER: &str = concat!(
    "SELECT ",
    columns!(),
    ", secret_hash FROM tokens WHERE id = $1 AND account = $2 AND subject = $3"
);

#[derive(sqlx::FromRow)]
pub(super) struct HashedTokenRow {
    #[sqlx(flatten)]
    pub(super) token: TokenRow,
    #[sqlx(try_from = "Vec<u8>")]
    pub(super) secret_hash: SecretHash,
}

impl From<TokenRow> for TokenRecord {
    fn from(row: TokenRow) -> Self {
        TokenRecord {
            id: row.id,
            name: row.name,
            owner: Owner {
                subject: row.subject,
                account: row.account,
            },
            scopes: ScopeSet::from_stored(&row.scopes),
            hint: row.hint,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            last_used_ip: row.last_used_ip,
            rotated_at: row.rotated_at,
            allowed_cidrs: CidrList::from_stored(&row.allowed_cidrs),
            suspended_at: row.suspended_at,
            description: row.description,
            labels: Labels::from_stored(&row.labels),
            resources: ResourceList::from_stored(&row.resources),
        }
    }
}

/// A token stored under a secret hash, and its insertion sequence.
#[derive(Debug)]
pub struct StoredToken {
    pub seq: i64,
    pub record: TokenRecord,
}

/// A token found by a secret's hash.
#[derive(Debug)]
pub struct HashMatch {
    pub stored: StoredToken,
    /// Set when the hash is a secret retired by a rotation: until when it works.
    pub retired_grace_until: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct MatchedTokenRow {
    #[sqlx(flatten)]
    token: TokenRow,
    #[sqlx(try_from = "Vec<u8>")]
    secret_hash: SecretHash,
    grace_until: Option<i64>,
}

/// `INSERT ... VALUES` rows per statement: 14 parameters each stays well inside
/// both backends' parameter limits (label rows: 3 each).
const INSERT_ROWS_PER_STATEMENT: usize = 500;
/// `last_used_at` updates per statement (3 parameters each).
const LAST_USED_ROWS_PER_STATEMENT: usize = 500;

/// `$first, $first+1, ...` as `width` placeholders in parentheses.
fn placeholders(first: usize, width: usize) -> String {
    let names: Vec<String> = (first..first + width).map(|n| format!("${n}")).collect();
    format!("({})", names.join(", "))
}

/// `rows` groups of `width` placeholders, numbered from `$1`.
pub(super) fn values_list(rows: usize, width: usize) -> String {
    let groups: Vec<String> = (0..rows)
        .map(|row| placeholders(row * width + 1, width))
        .collect();
    groups.join(", ")
}

impl Store {
    /// Stores a new token and its `created` event, in one transaction.
    #[tracing::instrument(skip_all, fields(token_id = %new.record.id))]
    pub async fn insert(&self, new: &NewToken, actor: &Actor) -> StoreResult<()> {
        self.insert_many(std::slice::from_ref(new), Some(actor), None)
            .await
            .map(drop)
    }

    /// [`Store::insert`], unless the owner already holds `max_active` active
    /// tokens: then nothing is stored and the answer is false. Counting and
    /// inserting are one transaction, serialised per owner, so concurrent
    /// creates cannot overshoot.
    pub async fn insert_limited(
        &self,
        new: &NewToken,
        actor: &Actor,
        max_active: u32,
    ) -> StoreResult<bool> {
        self.insert_many(std::slice::from_ref(new), Some(actor), Some(max_active))
            .await
    }

    /// Inserts all of `tokens` in one transaction, many rows per statement, with a
    /// `created` event each when `actor` is given. With `max_active`, every token
    /// must have the same owner (see [`Store::insert_limited`]); false when that
    /// limit refused them.
    #[tracing::instrument(skip_all, fields(count = tokens.len()))]
    pub async fn insert_many(
        &self,
        tokens: &[NewToken],
        actor: Option<&Actor>,
        max_active: Option<u32>,
    ) -> StoreResult<bool> {
        const COLUMNS: &str = "INSERT INTO tokens (id, secret_hash, name, subject, account, \
            scopes, hint, created_at, expires_at, revoked_at, allowed_cidrs, description, labels, \
            resources) VALUES ";
        const LOCK_OWNER: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
        const ACTIVE: &str = "SELECT COUNT(*) FROM tokens WHERE account = $1 AND subject = $2 \
            AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)";
        let is_postgres = matches!(self.backend, Backend::Postgres(_));
        let begin = self.begin_writing();
        let stored = timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            if let (Some(max), Some(first)) = (max_active, tokens.first()) {
                let owner = &first.record.owner;
                // SQLite has one writer at a time already; Postgres needs the
                // count and the insert serialised per owner.
                if is_postgres {
                    sqlx::query(LOCK_OWNER)
                        .bind(format!("{}/{}", owner.account, owner.subject))
                        .execute(&mut *tx)
                        .await?;
                }
                let (active,): (i64,) = sqlx::query_as(ACTIVE)
                    .bind(&owner.account)
                    .bind(&owner.subject)
                    .bind(first.record.created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                if active + tokens.len() as i64 > i64::from(max) {
                    return Ok(false);
                }
            }
            for chunk in tokens.chunks(INSERT_ROWS_PER_STATEMENT) {
                let sql = format!("{COLUMNS}{}", values_list(chunk.len(), 14));
                let mut query = sqlx::query(&sql);
                for new in chunk {
                    let token = &new.record;
                    query = query
                        .bind(&token.id)
                        .bind(&new.secret_hash.0[..])
                        .bind(&token.name)
                        .bind(&token.owner.subject)
                        .bind(&token.owner.account)
                        .bind(token.scopes.to_stored())
                        .bind(&token.hint)
                        .bind(token.created_at)
                        .bind(token.expires_at)
                        .bind(token.revoked_at)
                        .bind(token.allowed_cidrs.to_stored())
                        .bind(&token.description)
                        .bind(token.labels.to_stored())
                        .bind(token.resources.to_stored());
                }
                StoreStats::count(&self.stats.writes);
                query.execute(&mut *tx).await?;
            }
            let labels: Vec<(&str, &str, &str)> = tokens
                .iter()
                .flat_map(|new| {
                    let id = new.record.id.as_str();
                    new.record.labels.iter().map(move |(key, value)| (id, key, value))
                })
                .collect();
            for chunk in labels.chunks(INSERT_ROWS_PER_STATEMENT) {
                StoreStats::count(&self.stats.writes);
                insert_labels!(&mut *tx, chunk);
            }
            if let Some(actor) = actor {
                for new in tokens {
                    let token = &new.record;
                    let mut detail = format!("scopes {}", token.scopes.to_stored());
                    if !token.resources.is_empty() {
                        detail.push_str(&format!("; resources {}", token.resources.to_stored()));
                    }
                    if !token.allowed_cidrs.is_empty() {
                        detail.push_str(&format!("; from {}", token.allowed_cidrs.to_stored()));
                    }
                    let event = Event::about(EventKind::Created, token, actor, token.created_at, detail);
                    insert_event!(&mut *tx, &event);
                }
            }
            tx.commit().await?;
            self.events_written();
            Ok(true)
        }
        .await)?;
        Ok(stored)
    }

    /// The token whose secret hashes to `hash`, current or retired by a rotation,
    /// confirmed by a constant-time comparison of the stored hash.
    #[tracing::instrument(skip_all)]
    pub async fn find_by_hash(&self, hash: &SecretHash) -> StoreResult<Option<HashMatch>> {
        // One round trip for both: the current secret, or a retired one joined to
        // its token.
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            ", secret_hash, CAST(NULL AS BIGINT) AS grace_until FROM tokens WHERE secret_hash = $1 ",
            "UNION ALL SELECT ",
            "t.seq, t.id, t.name, t.subject, t.account, t.scopes, t.hint, t.created_at, ",
            "t.expires_at, t.revoked_at, t.last_used_at, t.last_used_ip, t.rotated_at, ",
            "t.allowed_cidrs, t.suspended_at, t.description, t.labels, t.resources, ",
            "r.secret_hash, r.grace_until ",
            "FROM retired_secrets r JOIN tokens t ON t.id = r.token_id WHERE r.secret_hash = $1"
        );
        StoreStats::count(&self.stats.hash_lookups);
        let row: Option<MatchedTokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(&hash.0[..])
            .fetch_optional(pool)
            .await)?;
        Ok(row
            .filter(|row| hash.matches(&row.secret_hash))
            .map(|row| HashMatch {
                stored: StoredToken {
                    seq: row.token.seq,
                    record: row.token.into(),
                },
                retired_grace_until: row.grace_until,
            }))
    }

    /// How many tokens `account` has, in any state.
    pub async fn count_in_account(&self, account: &str) -> StoreResult<i64> {
        const SQL: &str = "SELECT COUNT(*) FROM tokens WHERE account = $1";
        let (count,): (i64,) =
            timed!(self, pool => sqlx::query_as(SQL).bind(account).fetch_one(pool).await)?;
        Ok(count)
    }

    /// Tokens by state at `now` (a full scan: for metrics, taken rarely).
    pub async fn count_by_state(&self, now: i64) -> StoreResult<TokenCounts> {
        const SQL: &str = "SELECT \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND suspended_at IS NULL AND (expires_at IS NULL OR expires_at > $1) THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND expires_at <= $1 THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND suspended_at IS NOT NULL AND (expires_at IS NULL OR expires_at > $1) THEN 1 ELSE 0 END), 0) \
             FROM tokens";
        let (active, expired, revoked, suspended): (i64, i64, i64, i64) =
            timed!(self, pool => sqlx::query_as(SQL).bind(now).fetch_one(pool).await)?;
        Ok(TokenCounts {
            active,
            expired,
            revoked,
            suspended,
        })
    }

    /// Any owner's token by id: for operators only.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn find_by_id(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        const SQL: &str = select!("WHERE id = $1");
        let row: Option<TokenRow> =
            timed!(self, pool => sqlx::query_as(SQL).bind(id).fetch_optional(pool).await)?;
        Ok(row.map(Into::into))
    }

    /// `owner`'s token by id; another owner's token is `None`.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn get(&self, owner: &Owner, id: &str) -> StoreResult<Option<TokenRecord>> {
        const SQL: &str = select!("WHERE id = $1 AND account = $2 AND subject = $3");
        let row: Option<TokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(id)
            .bind(&owner.account)
            .bind(&owner.subject)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(Into::into))
    }

    /// Revokes `owner`'s token at `now` unless it is already revoked (then its first
    /// revocation time stands). `None` if `owner` has no such token; else the token
    /// and its secret's hash, for the caller to invalidate.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn revoke(
        &self,
        owner: &Owner,
        id: &str,
        now: i64,
        actor: &Actor,
        kind: EventKind,
    ) -> StoreResult<Option<(TokenRecord, SecretHash)>> {
        self.revoke_with_detail(owner, id, now, actor, kind, "")
            .await
    }

    /// [`Store::revoke`], with `detail` in the event.
    pub async fn revoke_with_detail(
        &self,
        owner: &Owner,
        id: &str,
        now: i64,
        actor: &Actor,
        kind: EventKind,
        detail: &str,
    ) -> StoreResult<Option<(TokenRecord, SecretHash)>> {
        const SQL: &str = concat!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) ",
            "WHERE id = $2 AND account = $3 AND subject = $4 RETURNING ",
            columns!(),
            ", secret_hash"
        );
        StoreStats::count(&self.stats.writes);
        let row: Option<HashedTokenRow> = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let row: Option<HashedTokenRow> = sqlx::query_as(SQL)
                .bind(now)
                .bind(id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional(&mut *tx)
                .await?;
            // Only the revocation that took effect is recorded, not repeats.
            if let Some(row) = row.as_ref().filter(|row| row.token.revoked_at == Some(now)) {
                let record: TokenRecord = row.token.clone().into();
                let event = Event::about(kind, &record, actor, now, detail.to_owned());
                insert_event!(&mut *tx, &event);
            }
            tx.commit().await?;
            self.events_written();
            Ok(row)
        }
        .await)?;
        Ok(row.map(|row| (row.token.into(), row.secret_hash)))
    }

    /// Deletes `owner`'s token (and its `deleted` event, in one transaction); its
    /// secret's hash if there was one.
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn delete(
        &self,
        owner: &Owner,
        id: &str,
        actor: &Actor,
        now: i64,
    ) -> StoreResult<Option<SecretHash>> {
        const SQL: &str = concat!(
            "DELETE FROM tokens WHERE id = $1 AND account = $2 AND subject = $3 RETURNING ",
            columns!(),
            ", secret_hash"
        );
        StoreStats::count(&self.stats.writes);
        let row: Option<HashedTokenRow> = timed!(self, pool => async {
            let mut tx = pool.begin().await?;
            let row: Option<HashedTokenRow> = sqlx::query_as(SQL)
                .bind(id)
                .bind(&owner.account)
                .bind(&owner.subject)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = &row {
                // The event keeps what the token was: it is gone after this.
                let record: TokenRecord = row.token.clone().into();
                let event = Event::about(EventKind::Deleted, &record, actor, now, String::new());
                insert_event!(&mut *tx, &event);
            }
            tx.commit().await?;
            Ok(row)
        }
        .await)?;
        self.events_written();
        Ok(row.map(|row| row.secret_hash))
    }

    /// Writes `(seq, last used, client address)`; a stored later time is never
    /// overwritten, nor a stored address by none.
    #[tracing::instrument(skip_all, fields(count = uses.len()))]
    pub async fn record_last_used(&self, uses: &[(i64, i64, Option<String>)]) -> StoreResult<()> {
        // One short transaction per chunk: a flush may cover every token of a
        // large installation, and must not hold SQLite's write lock (or a long
        // Postgres transaction) for all of it.
        for chunk in uses.chunks(LAST_USED_ROWS_PER_STATEMENT) {
            timed!(self, pool => {
                // Both backends name the columns of a VALUES list column1, column2.
                let sql = format!(
                    "UPDATE tokens SET last_used_at = v.column2, \
                     last_used_ip = COALESCE(v.column3, tokens.last_used_ip) FROM (VALUES {}) AS v \
                     WHERE tokens.seq = v.column1 \
                     AND (tokens.last_used_at IS NULL OR tokens.last_used_at < v.column2)",
                    values_list(chunk.len(), 3)
                );
                let mut query = sqlx::query(&sql);
                for (seq, at, client) in chunk {
                    query = query.bind(seq).bind(at).bind(client);
                }
                StoreStats::count(&self.stats.writes);
                query.execute(pool).await.map(drop)
            })?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}
