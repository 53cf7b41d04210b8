//! The audit trail: what happened to which token, by whom, from where.

use crate::domain::clock;
use crate::domain::model::{Actor, TokenRecord};

use super::pages::Cursor;
use super::stats::StoreStats;
use super::{Backend, Store, StoreResult};

/// What happened to a token, in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Rotated,
    Revoked,
    Deleted,
    /// A retired secret was presented after its grace period; the token was revoked.
    ReuseDetected,
    /// A valid token was reported as leaked and revoked.
    LeakReported,
    /// A management call was refused (bad credential, missing scope).
    Denied,
    Suspended,
    Resumed,
    /// Every token of one owner was revoked at once (offboarding); each token
    /// also gets its own `revoked` event.
    RevokedAll,
    /// Name, description or labels changed (UpdateToken); the detail names which.
    Updated,
    /// The token expires within a reminder's lead time (the detail says which).
    Expiring,
    /// The token reached its expiry while active.
    Expired,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::Created,
        EventKind::Rotated,
        EventKind::Revoked,
        EventKind::Deleted,
        EventKind::ReuseDetected,
        EventKind::LeakReported,
        EventKind::Denied,
        EventKind::Suspended,
        EventKind::Resumed,
        EventKind::RevokedAll,
        EventKind::Updated,
        EventKind::Expiring,
        EventKind::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Rotated => "rotated",
            EventKind::Revoked => "revoked",
            EventKind::Deleted => "deleted",
            EventKind::ReuseDetected => "reuse_detected",
            EventKind::LeakReported => "leak_reported",
            EventKind::Denied => "denied",
            EventKind::Suspended => "suspended",
            EventKind::Resumed => "resumed",
            EventKind::RevokedAll => "revoked_all",
            EventKind::Updated => "updated",
            EventKind::Expiring => "expiring",
            EventKind::Expired => "expired",
        }
    }
}

/// One entry of the audit trail. Nothing in it is secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    pub at: i64,
    pub kind: EventKind,
    pub token_id: Option<String>,
    pub subject: Option<String>,
    pub account: Option<String>,
    pub actor: Actor,
    pub detail: String,
    /// The token as it was (JSON, see [`token_snapshot`]); empty when the event
    /// is about no one token, or predates snapshots.
    pub token: String,
}

/// What an event keeps of its token: everything a receiver may want to know
/// about it, and nothing secret (no hash, no hint).
pub fn token_snapshot(token: &TokenRecord) -> String {
    let labels: serde_json::Map<String, serde_json::Value> = token
        .labels
        .iter()
        .map(|(key, value)| (key.to_owned(), value.into()))
        .collect();
    serde_json::json!({
        "name": token.name,
        "description": token.description,
        "scopes": token.scopes.to_names(),
        "created_at": clock::rfc3339(token.created_at),
        "expires_at": token.expires_at.map(clock::rfc3339),
        "labels": labels,
        "resources": token.resources.to_strings(),
        "allowed_cidrs": token.allowed_cidrs.to_strings(),
    })
    .to_string()
}

impl Event {
    /// An event about `token`, by `actor`, at `at`.
    pub fn about(
        kind: EventKind,
        token: &TokenRecord,
        actor: &Actor,
        at: i64,
        detail: String,
    ) -> Event {
        Event {
            seq: 0,
            at,
            kind,
            token_id: Some(token.id.clone()),
            subject: Some(token.owner.subject.clone()),
            account: Some(token.owner.account.clone()),
            actor: actor.clone(),
            detail,
            token: token_snapshot(token),
        }
    }
}

/// The columns of an [`EventRow`].
pub(super) const EVENT_COLUMNS: &str =
    "seq, at, kind, token_id, subject, account, actor, peer, detail, token";

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) seq: i64,
    at: i64,
    kind: String,
    token_id: Option<String>,
    subject: Option<String>,
    account: Option<String>,
    actor: String,
    peer: String,
    detail: String,
    token: String,
}

impl EventRow {
    pub(super) fn into_event(self) -> Option<Event> {
        let kind = EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == self.kind)?;
        Some(Event {
            seq: self.seq,
            at: self.at,
            kind,
            token_id: self.token_id,
            subject: self.subject,
            account: self.account,
            actor: Actor {
                principal: self.actor,
                peer: self.peer,
            },
            detail: self.detail,
            token: self.token,
        })
    }
}

pub struct EventPage {
    pub events: Vec<Event>,
    pub next: Option<Cursor>,
}

impl Store {
    /// Appends one event outside any other change (denials, leak reports).
    pub async fn record_event(&self, event: &Event) -> StoreResult<()> {
        StoreStats::count(&self.stats.writes);
        timed!(self, pool => async {
            insert_event!(pool, event);
            Ok::<(), sqlx::Error>(())
        }
        .await)?;
        self.events_written();
        Ok(())
    }

    /// Events newest first: of `account`, or of every account.
    pub async fn list_events(
        &self,
        account: Option<&str>,
        cursor: Option<Cursor>,
        page_size: u32,
    ) -> StoreResult<EventPage> {
        let columns = format!("SELECT {EVENT_COLUMNS} FROM token_events ");
        let before = cursor.map_or(i64::MAX, |cursor| cursor.0);
        let limit = i64::from(page_size) + 1;
        let mut rows: Vec<EventRow> = match account {
            Some(account) => timed!(self, pool => sqlx::query_as(&format!(
                "{columns}WHERE seq < $1 AND account = $2 ORDER BY seq DESC LIMIT $3"
            ))
            .bind(before)
            .bind(account)
            .bind(limit)
            .fetch_all(pool)
            .await),
            None => timed!(self, pool => sqlx::query_as(&format!(
                "{columns}WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
            ))
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await),
        }?;
        let next = (rows.len() > page_size as usize).then(|| {
            rows.truncate(page_size as usize);
            Cursor(rows.last().map_or(0, |row| row.seq))
        });
        Ok(EventPage {
            events: rows.into_iter().filter_map(EventRow::into_event).collect(),
            next,
        })
    }

    /// Deletes refusals of anonymous callers (no valid credential) recorded
    /// before `before`: the only audit events that outsiders can cause at will.
    pub async fn prune_anonymous_denials(&self, before: i64) -> StoreResult<u64> {
        const SQL: &str =
            "DELETE FROM token_events WHERE kind = 'denied' AND actor = 'anonymous' AND at < $1";
        self.delete_before(SQL, before).await
    }
}
