//! Updating what a token is called and what it is for (name, description,
//! labels): never what it grants. The labels' index rows are replaced in the
//! same transaction; a rename reaches every replica's cache through the
//! tokens table's trigger (Introspect answers carry the name).

use crate::domain::labels::Labels;
use crate::domain::model::{Actor, Owner, TokenRecord};
use crate::domain::token::SecretHash;

use super::events::{Event, EventKind};
use super::stats::StoreStats;
use super::{Backend, Store, StoreResult};

/// The fields to set; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Labels>,
}

/// What [`Store::update`] did.
pub enum Updated {
    /// The token as it now is, its secret's hash, and whether its name changed
    /// (cached answers must then go).
    Done {
        record: Box<TokenRecord>,
        hash: SecretHash,
        renamed: bool,
    },
    NotFound,
}

impl Store {
    /// Applies `update` to `owner`'s token `id`, with an `updated` event naming
    /// the fields that changed (none changed: no write, no event).
    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn update(
        &self,
        owner: &Owner,
        id: &str,
        update: &TokenUpdate,
        now: i64,
        actor: &Actor,
    ) -> StoreResult<Updated> {
        const SET: &str =
            "UPDATE tokens SET name = $1, description = $2, labels = $3 WHERE seq = $4";
        const CLEAR_LABELS: &str = "DELETE FROM token_labels WHERE token_seq = $1";
        // Postgres reads committed data per statement: lock the row first, so
        // that two concurrent updates apply one after the other (a rename must
        // not write back labels read before a relabel committed, leaving the
        // labels and their index rows apart). SQLite's write transaction is
        // exclusive already.
        const LOCK: &str = "SELECT seq FROM tokens WHERE id = $1 FOR UPDATE";
        let is_postgres = matches!(self.backend, Backend::Postgres(_));
        StoreStats::count(&self.stats.writes);
        let begin = self.begin_writing();
        Ok(timed!(self, pool => async {
            let mut tx = pool.begin_with(begin).await?;
            if is_postgres {
                sqlx::query(LOCK).bind(id).execute(&mut *tx).await?;
            }
            let current = current_for_owner!(&mut *tx, owner, id);
            let Some(current) = current else {
                return Ok(Updated::NotFound);
            };
            let seq = current.token.seq;
            let hash = current.secret_hash;
            let mut record: TokenRecord = current.token.into();
            let mut changed = Vec::new();
            if let Some(name) = update.name.as_ref().filter(|name| **name != record.name) {
                record.name = name.clone();
                changed.push("name");
            }
            if let Some(description) =
                update.description.as_ref().filter(|d| **d != record.description)
            {
                record.description = description.clone();
                changed.push("description");
            }
            let relabel = update.labels.as_ref().filter(|labels| **labels != record.labels);
            if let Some(labels) = relabel {
                record.labels = labels.clone();
                changed.push("labels");
            }
            if changed.is_empty() {
                return Ok(Updated::Done { record: Box::new(record), hash, renamed: false });
            }
            sqlx::query(SET)
                .bind(&record.name)
                .bind(&record.description)
                .bind(record.labels.to_stored())
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            if relabel.is_some() {
                sqlx::query(CLEAR_LABELS).bind(seq).execute(&mut *tx).await?;
                let rows: Vec<(&str, &str, &str)> =
                    record.labels.iter().map(|(key, value)| (id, key, value)).collect();
                insert_labels!(&mut *tx, &rows);
            }
            let detail = format!("changed {}", changed.join(", "));
            let event = Event::about(EventKind::Updated, &record, actor, now, detail);
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
            self.events_written();
            Ok(Updated::Done {
                renamed: changed.contains(&"name"),
                record: Box::new(record),
                hash,
            })
        }
        .await)?)
    }
}
