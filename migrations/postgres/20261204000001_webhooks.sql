-- Webhooks: the audit trail is the outbox. Each event also keeps a snapshot of
-- the token as it was (JSON: name, scopes, expiry, labels, ...), so that a
-- delivery describes a token even after it was deleted. Older events have none.
ALTER TABLE token_events ADD COLUMN token TEXT NOT NULL DEFAULT '';
-- Transactions commit out of order: the trail is fanned out by transaction id,
-- as the change log is read (see store/outbox.rs). Older rows have none (they
-- predate every endpoint); the default applies to new rows only, so adding it
-- does not rewrite the table.
ALTER TABLE token_events ADD COLUMN txid XID8;
ALTER TABLE token_events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX token_events_by_txid ON token_events (txid);

-- One row per configured endpoint (by name), shared by every replica: how far
-- the trail has been fanned out into its deliveries, and which replica holds
-- the right to deliver to it (a lease, taken with FOR UPDATE SKIP LOCKED).
CREATE TABLE webhook_endpoints (
    name            TEXT   PRIMARY KEY,
    -- Every event of a transaction older than mark (a transaction id) has its
    -- delivery row (or was filtered out).
    mark            BIGINT NOT NULL,
    -- The batch being fanned out: events of transactions in [mark, target),
    -- done up to after_seq. target 0: no batch under way.
    target          BIGINT NOT NULL DEFAULT 0,
    after_seq       BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT   NOT NULL DEFAULT '',
    lease_until     BIGINT NOT NULL DEFAULT 0,
    -- Set when the receiver answered 410 Gone; `patd admin webhooks retry` clears it.
    disabled_at     BIGINT,
    disabled_reason TEXT   NOT NULL DEFAULT ''
);

-- One event for one endpoint; delivered in `position` order, one at a time.
CREATE TABLE webhook_deliveries (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint        TEXT   NOT NULL REFERENCES webhook_endpoints (name) ON DELETE CASCADE,
    event_seq       BIGINT NOT NULL,
    -- The webhook-id: the same on every attempt.
    event_id        TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    event_at        BIGINT NOT NULL,
    -- The JSON body, rendered once: every attempt signs the same bytes.
    body            TEXT   NOT NULL,
    -- pending, delivered or dead (retries exhausted)
    state           TEXT   NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- Retries stop here (the event's time plus the retry window; a manual retry
    -- starts a new window).
    deadline        BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_error      TEXT   NOT NULL DEFAULT '',
    finished_at     BIGINT,
    UNIQUE (endpoint, event_seq)
);

CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint, state, position);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- Expiry reminders sent: one per token, expiry and lead time, whichever replica sent it
-- (the key is what makes it exactly once). lead is in microseconds; 0 is
-- token.expired.
CREATE TABLE token_reminders (
    token_id   TEXT    NOT NULL,
    lead       BIGINT NOT NULL,
    -- The expiry reminded of: a rotation that sets a new expiry gets new reminders.
    expires_at BIGINT NOT NULL,
    sent_at    BIGINT NOT NULL,
    PRIMARY KEY (token_id, lead, expires_at)
);

-- Tokens that expired before reminders existed get no token.expired.
CREATE TABLE token_reminders_since (
    since BIGINT NOT NULL
);
INSERT INTO token_reminders_since (since)
VALUES ((extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT);

CREATE INDEX tokens_by_expiry ON tokens (expires_at) WHERE expires_at IS NOT NULL;
