//! Listing tokens: by owner newest first with a cursor (the operator's list),
//! by filters and orders with keyset pages (ListTokens), and every token with
//! its hash (the cache's preload).

use crate::domain::labels::{LabelSelector, LabelTerm};
use crate::domain::model::{Owner, TokenRecord, TokenState};
use crate::domain::token::SecretHash;

use super::tokens::{HashedTokenRow, StoredToken, TokenRow};
use super::{Backend, Store, StoreResult};

/// A position in a newest-first listing: tokens strictly older than `seq` come next.
/// Keyset paging on the insertion sequence stays correct while tokens are created
/// (they sort before the cursor) or deleted (they simply vanish) between pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(pub(super) i64);

impl Cursor {
    const TAG: &'static str = "p1.";

    pub fn encode(self) -> String {
        format!("{}{:x}", Cursor::TAG, self.0)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let hex = text.strip_prefix(Cursor::TAG)?;
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let seq = i64::from_str_radix(hex, 16).ok()?;
        (seq > 0).then_some(Cursor(seq))
    }
}

pub struct Page {
    pub tokens: Vec<TokenRecord>,
    pub next: Option<Cursor>,
}

/// Orders for [`Store::search`]; ties broken by insertion order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenOrder {
    #[default]
    CreatedDesc,
    CreatedAsc,
    /// Soonest expiry first; tokens that never expire last.
    ExpiresAsc,
    /// Most recently used first; never-used tokens last.
    LastUsedDesc,
    /// By name, byte order.
    NameAsc,
}

impl TokenOrder {
    /// The SQL sort key and whether it runs descending.
    fn key(self, backend: &Backend) -> (&'static str, bool) {
        match self {
            TokenOrder::CreatedDesc => ("seq", true),
            TokenOrder::CreatedAsc => ("seq", false),
            TokenOrder::ExpiresAsc => ("COALESCE(expires_at, 9223372036854775807)", false),
            TokenOrder::LastUsedDesc => ("COALESCE(last_used_at, -1)", true),
            // Byte order on both backends, whatever the database's locale.
            TokenOrder::NameAsc => match backend {
                Backend::Sqlite(_) => ("name", false),
                Backend::Postgres(_) => ("name COLLATE \"C\"", false),
            },
        }
    }

    fn key_of(self, row: &TokenRow) -> SortKey {
        match self {
            TokenOrder::CreatedDesc | TokenOrder::CreatedAsc => SortKey::Int(row.seq),
            TokenOrder::ExpiresAsc => SortKey::Int(row.expires_at.unwrap_or(i64::MAX)),
            TokenOrder::LastUsedDesc => SortKey::Int(row.last_used_at.unwrap_or(-1)),
            TokenOrder::NameAsc => SortKey::Text(row.name.clone()),
        }
    }
}

/// Which tokens [`Store::search`] returns; every set field must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenFilter {
    pub state: Option<TokenState>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub expires_before: Option<i64>,
    pub last_used_after: Option<i64>,
    pub last_used_before: Option<i64>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Labels every token must carry.
    pub label_selector: LabelSelector,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    Int(i64),
    Text(String),
}

/// Where a page ended: its last row's sort key and sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct After {
    pub key: SortKey,
    pub seq: i64,
}

pub struct SearchPage {
    pub tokens: Vec<TokenRecord>,
    pub next: Option<After>,
}

/// A page of tokens with their secrets' hashes.
pub struct HashedPage {
    pub tokens: Vec<(SecretHash, StoredToken)>,
    pub next: Option<Cursor>,
}

#[derive(Clone)]
enum Param {
    Int(i64),
    Text(String),
}

/// A search's SQL as it is built: text with `$N` placeholders, and the values
/// bound to them in order.
struct Query {
    sql: String,
    params: Vec<Param>,
}

impl Query {
    fn new(sql: String) -> Query {
        Query {
            sql,
            params: Vec::new(),
        }
    }

    fn text(&mut self, text: &str) {
        self.sql.push_str(text);
    }

    /// Appends `clause`, its one `?` numbered for `param`.
    fn push(&mut self, clause: &str, param: Param) {
        self.params.push(param);
        let placeholder = format!("${}", self.params.len());
        self.sql.push_str(&clause.replace('?', &placeholder));
    }

    /// ` AND account = ? AND subject = ?`, when there is an owner (both the
    /// tokens and token_labels name them so).
    fn owner(&mut self, owner: Option<&Owner>) {
        if let Some(owner) = owner {
            self.push(" AND account = ?", Param::Text(owner.account.clone()));
            self.push(" AND subject = ?", Param::Text(owner.subject.clone()));
        }
    }

    /// ` AND key = ?` and, for a term with a value, ` AND value = ?`, of the
    /// label columns qualified by `prefix`.
    fn label(&mut self, prefix: &str, term: &LabelTerm) {
        self.push(
            &format!(" AND {prefix}key = ?"),
            Param::Text(term.key.clone()),
        );
        if let Some(value) = &term.value {
            self.push(
                &format!(" AND {prefix}value = ?"),
                Param::Text(value.clone()),
            );
        }
    }
}

impl Store {
    /// `owner`'s tokens (everyone's for `None`), newest first: [`Store::search`]
    /// without filters.
    pub async fn list(
        &self,
        owner: Option<&Owner>,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<Page> {
        let after = cursor.map(|cursor| After {
            key: SortKey::Int(cursor.0),
            seq: cursor.0,
        });
        let page = self
            .search(
                owner,
                &TokenFilter::default(),
                TokenOrder::CreatedDesc,
                after.as_ref(),
                page_size,
                0,
            )
            .await?;
        Ok(Page {
            tokens: page.tokens,
            next: page.next.map(|after| Cursor(after.seq)),
        })
    }

    /// Tokens of `owner` (of everyone for `None`) that pass `filter` at `now`, in
    /// `order`, the page after `after`. Keyset paging on (sort key, seq): stable
    /// while tokens come and go between pages.
    pub async fn search(
        &self,
        owner: Option<&Owner>,
        filter: &TokenFilter,
        order: TokenOrder,
        after: Option<&After>,
        page_size: u32,
        now: i64,
    ) -> StoreResult<SearchPage> {
        let mut query = Query::new(format!("SELECT {} FROM ", columns!()));
        // Newest or oldest first with a selector: one term's index rows, read in
        // seq order, drive the query, so a page costs a page of index reads
        // whether the label is on 0.1% or half of the owner's tokens (filtering
        // tokens by `seq IN (...)` instead reads every match first). Only a
        // term with a value can: the index is ordered by seq within a value.
        // (An index by key and seq for presence terms misled Postgres's
        // planner into reading it for value terms too, filtering row by row.)
        let terms = &filter.label_selector.0;
        let driver = matches!(order, TokenOrder::CreatedDesc | TokenOrder::CreatedAsc)
            .then(|| terms.iter().position(|t| t.value.is_some()))
            .flatten();
        if let Some(driver) = driver {
            let term = &terms[driver];
            query.text("(SELECT token_seq FROM token_labels WHERE 1 = 1");
            query.owner(owner);
            query.label("", term);
            // CROSS JOIN: SQLite then keeps the label index as the outer loop
            // (its planner may otherwise scan the owner's tokens and sort).
            query.text(") AS l CROSS JOIN tokens WHERE tokens.seq = l.token_seq");
        } else {
            query.text("tokens WHERE 1 = 1");
        }
        query.owner(owner);
        match filter.state {
            None => {}
            Some(TokenState::Revoked) => query.text(" AND revoked_at IS NOT NULL"),
            Some(TokenState::Active) => query.push(
                " AND revoked_at IS NULL AND suspended_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > ?)",
                Param::Int(now),
            ),
            Some(TokenState::Suspended) => query.push(
                " AND revoked_at IS NULL AND suspended_at IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > ?)",
                Param::Int(now),
            ),
            Some(TokenState::Expired) => query.push(
                " AND revoked_at IS NULL AND expires_at <= ?",
                Param::Int(now),
            ),
        }
        for (column, after_time, before_time) in [
            ("created_at", filter.created_after, filter.created_before),
            ("expires_at", filter.expires_after, filter.expires_before),
            (
                "last_used_at",
                filter.last_used_after,
                filter.last_used_before,
            ),
        ] {
            if let Some(at) = after_time {
                query.push(&format!(" AND {column} > ?"), Param::Int(at));
            }
            if let Some(at) = before_time {
                query.push(&format!(" AND {column} < ?"), Param::Int(at));
            }
        }
        if let Some(needle) = &filter.name_contains {
            let escaped = needle
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query.push(
                " AND lower(name) LIKE ? ESCAPE '\\'",
                Param::Text(format!("%{escaped}%")),
            );
        }
        // The other terms: probes of each token's label row (by seq and key)
        // beside a driving term; else index lookups by owner, key and value.
        for (index, term) in terms.iter().enumerate() {
            if Some(index) == driver {
                continue;
            }
            if driver.is_some() {
                query.text(
                    " AND EXISTS (SELECT 1 FROM token_labels x WHERE x.token_seq = tokens.seq",
                );
                query.label("x.", term);
                query.text(")");
                continue;
            }
            query.text(" AND seq IN (SELECT token_seq FROM token_labels WHERE 1 = 1");
            query.owner(owner);
            query.label("", term);
            query.text(")");
        }
        let (key, descending) = order.key(&self.backend);
        // Sorted by the driving index's own column, so no sort is needed.
        let (key, tie) = if driver.is_some() {
            ("l.token_seq", "l.token_seq")
        } else {
            (key, "seq")
        };
        let (compare, direction) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(after) = after {
            let key_param = match &after.key {
                SortKey::Int(value) => Param::Int(*value),
                SortKey::Text(value) => Param::Text(value.clone()),
            };
            query.push(&format!(" AND ({key} {compare} ?"), key_param.clone());
            query.push(&format!(" OR ({key} = ?"), key_param);
            query.push(&format!(" AND {tie} {compare} ?))"), Param::Int(after.seq));
        }
        // One row more than asked says whether another page follows.
        query.push(
            &format!(" ORDER BY {key} {direction}, {tie} {direction} LIMIT ?"),
            Param::Int(i64::from(page_size) + 1),
        );
        let mut rows: Vec<TokenRow> = timed!(self, pool => {
            let mut bound = sqlx::query_as(&query.sql);
            for param in &query.params {
                bound = match param {
                    Param::Int(value) => bound.bind(value),
                    Param::Text(value) => bound.bind(value),
                };
            }
            bound.fetch_all(pool).await
        })?;
        let next = (rows.len() > page_size as usize).then(|| {
            rows.truncate(page_size as usize);
            rows.last().map(|row| After {
                key: order.key_of(row),
                seq: row.seq,
            })
        });
        Ok(SearchPage {
            tokens: rows.into_iter().map(Into::into).collect(),
            next: next.flatten(),
        })
    }

    /// Every token with its secret's hash, newest first, `page_size` at a time after
    /// `cursor` (for loading the cache).
    pub async fn scan_with_hashes(
        &self,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<HashedPage> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            ", secret_hash FROM tokens WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        );
        let before = cursor.map_or(i64::MAX, |cursor| cursor.0);
        let rows: Vec<HashedTokenRow> = timed!(self, pool => sqlx::query_as(SQL)
            .bind(before)
            .bind(i64::from(page_size))
            .fetch_all(pool)
            .await)?;
        let next = if rows.len() == page_size as usize {
            rows.last().map(|row| Cursor(row.token.seq))
        } else {
            None
        };
        let tokens = rows
            .into_iter()
            .map(|row| {
                let stored = StoredToken {
                    seq: row.token.seq,
                    record: row.token.into(),
                };
                (row.secret_hash, stored)
            })
            .collect();
        Ok(HashedPage { tokens, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        for seq in [1, 255, i64::MAX] {
            assert_eq!(Cursor::decode(&Cursor(seq).encode()), Some(Cursor(seq)));
        }
        for bad in [
            "",
            "p1.",
            "p1.0",
            "p1.-1",
            "p1.zz",
            "p2.10",
            "10",
            "p1.ffffffffffffffff",
            "p1.10000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_cursors_never_panics(text in ".{0,64}") {
                let _ = Cursor::decode(&text);
            }

            #[test]
            fn every_cursor_round_trips(seq in 1i64..) {
                prop_assert_eq!(Cursor::decode(&Cursor(seq).encode()), Some(Cursor(seq)));
            }
        }
    }
}
