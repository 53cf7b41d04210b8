-- Token lifecycle: rotation (secrets retired with an optional grace period), the
-- last client address, per-token IP allowlists, and an append-only audit trail.

ALTER TABLE tokens ADD COLUMN rotated_at INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_ip TEXT;
-- Space-separated CIDR blocks; empty: any address.
ALTER TABLE tokens ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '';

-- Secrets a token had before a rotation. One still within its grace period works;
-- one presented after it is reuse of a leaked secret and revokes the token.
-- Deleting the token deletes these hashes too.
CREATE TABLE retired_secrets (
    secret_hash BLOB    PRIMARY KEY CHECK (length(secret_hash) = 32),
    token_id    TEXT    NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    retired_at  INTEGER NOT NULL,
    grace_until INTEGER NOT NULL
) STRICT;

CREATE INDEX retired_secrets_by_token ON retired_secrets (token_id);

-- A rotation retires the old hash: every server must forget it, as for a revoke.
CREATE TRIGGER tokens_rotated AFTER UPDATE OF secret_hash ON tokens
WHEN OLD.secret_hash <> NEW.secret_hash
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at)
    VALUES (OLD.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER));
END;

-- Who did what to which token, when, from where. Nothing in it is secret.
CREATE TABLE token_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    -- created, rotated, revoked, deleted, reuse_detected, leak_reported, denied
    kind     TEXT    NOT NULL,
    token_id TEXT,
    -- The token's owner (for a denial: the owner the caller claimed, if any).
    subject  TEXT,
    account  TEXT,
    -- token:<id>, trusted:<name>, operator, or anonymous
    actor    TEXT    NOT NULL,
    peer     TEXT    NOT NULL DEFAULT '',
    detail   TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX token_events_by_account ON token_events (account, seq DESC);
