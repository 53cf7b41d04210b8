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
    revoked_at  INTEGER
) STRICT;

CREATE INDEX tokens_by_owner ON tokens (account, subject, seq DESC);
