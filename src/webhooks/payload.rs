//! What a receiver gets: one JSON object per event,
//! `{ "id", "type", "timestamp", "data": { ... } }`, rendered from the audit
//! trail's row and its token snapshot. Never a secret, a hash or a header.

use serde_json::{Map, Value};

use crate::domain::clock;
use crate::store::{Event, EventKind};

/// Every event type a webhook can carry, by audit kind. Refused management
/// calls and the per-owner `revoked_all` summary are not among them (each
/// offboarded token has its own `token.revoked`).
pub const EVENT_TYPES: [(EventKind, &str); 11] = [
    (EventKind::Created, "token.created"),
    (EventKind::Updated, "token.updated"),
    (EventKind::Rotated, "token.rotated"),
    (EventKind::Revoked, "token.revoked"),
    (EventKind::Deleted, "token.deleted"),
    (EventKind::Suspended, "token.suspended"),
    (EventKind::Resumed, "token.resumed"),
    (EventKind::ReuseDetected, "token.reuse_detected"),
    (EventKind::LeakReported, "token.leak_reported"),
    (EventKind::Expiring, "token.expiring"),
    (EventKind::Expired, "token.expired"),
];

/// The webhook type of an audit kind, if it has one.
pub fn event_type(kind: EventKind) -> Option<&'static str> {
    EVENT_TYPES
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, name)| *name)
}

/// The event's id (and `webhook-id`): stable for the event, distinct across
/// databases (the time makes a recreated database's `seq` 1 a new id).
pub fn event_id(event: &Event) -> String {
    format!("evt_{:x}_{}", event.at, event.seq)
}

/// The JSON body for `event`, or `None` if its kind is never sent.
pub fn render(event: &Event) -> Option<(&'static str, String, String)> {
    let event_type = event_type(event.kind)?;
    let id = event_id(event);
    let mut data = Map::new();
    data.insert("token_id".into(), event.token_id.clone().into());
    data.insert("subject".into(), event.subject.clone().into());
    data.insert("account".into(), event.account.clone().into());
    // The snapshot's fields (name, scopes, expires_at, labels, ...).
    if let Ok(Value::Object(token)) = serde_json::from_str::<Value>(&event.token) {
        data.extend(token);
    }
    data.insert("actor".into(), event.actor.principal.clone().into());
    data.insert(
        "peer".into(),
        (!event.actor.peer.is_empty())
            .then(|| event.actor.peer.clone())
            .into(),
    );
    data.insert("detail".into(), event.detail.clone().into());
    let body = serde_json::json!({
        "id": id,
        "type": event_type,
        "timestamp": clock::rfc3339_micros(event.at),
        "data": data,
    });
    Some((event_type, id, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Actor;

    #[test]
    fn every_kind_but_denials_and_summaries_has_a_type() {
        for kind in EventKind::ALL {
            let expected = !matches!(kind, EventKind::Denied | EventKind::RevokedAll);
            assert_eq!(event_type(kind).is_some(), expected, "{kind:?}");
        }
    }

    #[test]
    fn the_body_carries_the_snapshot_and_the_actor() {
        let event = Event {
            seq: 7,
            at: 1_700_000_000_000_000,
            kind: EventKind::Revoked,
            token_id: Some("tok_1".into()),
            subject: Some("alice".into()),
            account: Some("acme".into()),
            actor: Actor::new("operator", None),
            detail: String::new(),
            token: r#"{"name":"ci","scopes":["repo"]}"#.into(),
        };
        let (kind, id, body) = render(&event).unwrap();
        assert_eq!(kind, "token.revoked");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["type"], "token.revoked");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(body["data"]["name"], "ci");
        assert_eq!(body["data"]["scopes"][0], "repo");
        assert_eq!(body["data"]["actor"], "operator");
        assert_eq!(body["data"]["peer"], Value::Null);
    }
}
