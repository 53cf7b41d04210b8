-- Webhooks: the audit trail is the outbox. Each event also keeps a snapshot of
-- the token as it was (JSON: name, scopes, expiry, labels, ...), so that a
-- delivery describes a token even after it was deleted. Older events have none.
ALTER TABLE token_events ADD COLUMN token TEXT NOT NULL DEFAULT '';

-- One row per configured endpoint (by name), shared by every server on this
-- database: how far the trail has been fanned out into its deliveries, and
-- which process holds the right to deliver to it (a lease; SQLite has one).
CREATE TABLE webhook_endpoints (
    name            TEXT    PRIMARY KEY,
    -- Every event with seq <= mark has its delivery row (or was filtered out).
    mark            INTEGER NOT NULL,
    -- Unused on SQLite (see the Postgres migration: a batch's horizon and progress).
    target          INTEGER NOT NULL DEFAULT 0,
    after_seq       INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT    NOT NULL DEFAULT '',
    lease_until     INTEGER NOT NULL DEFAULT 0,
    -- Set when the receiver answered 410 Gone; `patd admin webhooks retry` clears it.
    disabled_at     INTEGER,
    disabled_reason TEXT    NOT NULL DEFAULT ''
) STRICT;

-- One event for one endpoint; delivered in `position` order, one at a time.
CREATE TABLE webhook_deliveries (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT    NOT NULL REFERENCES webhook_endpoints (name) ON DELETE CASCADE,
    event_seq       INTEGER NOT NULL,
    -- The webhook-id: the same on every attempt.
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    event_at        INTEGER NOT NULL,
    -- The JSON body, rendered once: every attempt signs the same bytes.
    body            TEXT    NOT NULL,
    -- pending, delivered or dead (retries exhausted)
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- Retries stop here (the event's time plus the retry window; a manual retry
    -- starts a new window).
    deadline        INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_error      TEXT    NOT NULL DEFAULT '',
    finished_at     INTEGER,
    UNIQUE (endpoint, event_seq)
) STRICT;

CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint, state, position);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- Expiry reminders sent: one per token, expiry and lead time, whichever server sent it
-- (the key is what makes it exactly once). lead is in microseconds; 0 is
-- token.expired.
CREATE TABLE token_reminders (
    token_id   TEXT    NOT NULL,
    lead       INTEGER NOT NULL,
    -- The expiry reminded of: a rotation that sets a new expiry gets new reminders.
    expires_at INTEGER NOT NULL,
    sent_at    INTEGER NOT NULL,
    PRIMARY KEY (token_id, lead, expires_at)
) STRICT;

-- Tokens that expired before reminders existed get no token.expired.
CREATE TABLE token_reminders_since (
    since INTEGER NOT NULL
) STRICT;
INSERT INTO token_reminders_since (since) VALUES (CAST(unixepoch('subsec') * 1000000 AS INTEGER));

CREATE INDEX tokens_by_expiry ON tokens (expires_at) WHERE expires_at IS NOT NULL;
