-- Personal access tokens. Times are microseconds since the Unix epoch (UTC).
-- The secret itself is never stored: secret_hash is its domain-separated BLAKE3 hash.
CREATE TABLE tokens (
    -- Insertion order: newest-first listing and page cursors use it.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    secret_hash BLOB    NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    name        TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    -- Space-separated canonical scope names.
    scopes      TEXT    NOT NULL,
    hint        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    -- Written behind, at most once per token per flush interval.
    last_used_at INTEGER
) STRICT;

CREATE INDEX tokens_by_owner ON tokens (account, subject, seq DESC);

-- Every revoke or delete, by the server or the operator CLI, so that every server
-- process drops the token from its cache (each polls this table by seq: SQLite has
-- one writer at a time, so seq follows commit order). Pruned after a day.
CREATE TABLE token_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_hash BLOB    NOT NULL,
    changed_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX token_changes_by_time ON token_changes (changed_at);

-- Triggers, so that changes from any writer (a server, the operator CLI, a manual
-- UPDATE) are recorded. Times come from the database's clock.
CREATE TRIGGER tokens_revoked AFTER UPDATE OF revoked_at ON tokens
WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at)
    VALUES (NEW.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER));
END;

CREATE TRIGGER tokens_deleted AFTER DELETE ON tokens
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at)
    VALUES (OLD.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER));
END;
