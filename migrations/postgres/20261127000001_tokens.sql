-- Personal access tokens. Times are microseconds since the Unix epoch (UTC).
-- The secret itself is never stored: secret_hash is its domain-separated BLAKE3 hash.
CREATE TABLE tokens (
    -- Insertion order: newest-first listing and page cursors use it.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT   NOT NULL UNIQUE,
    secret_hash BYTEA  NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    name        TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    account     TEXT   NOT NULL,
    -- Space-separated canonical scope names.
    scopes      TEXT   NOT NULL,
    hint        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE INDEX tokens_by_owner ON tokens (account, subject, seq DESC);
