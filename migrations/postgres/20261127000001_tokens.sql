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
    revoked_at  BIGINT,
    -- Written behind, at most once per token per flush interval.
    last_used_at BIGINT
);

CREATE INDEX tokens_by_owner ON tokens (account, subject, seq DESC);

-- Every revoke or delete, by the server or the operator CLI, so that every server
-- process drops the token from its cache (each polls this table). Pruned after a day.
CREATE TABLE token_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret_hash BYTEA  NOT NULL,
    changed_at  BIGINT NOT NULL,
    -- Transactions commit out of order: readers follow the log by transaction id
    -- (see ChangeMark in src/store/mod.rs), never by seq or time.
    txid        XID8   NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX token_changes_by_time ON token_changes (changed_at);
CREATE INDEX token_changes_by_txid ON token_changes (txid);

-- Triggers, so that changes from any writer (a server, the operator CLI, a manual
-- UPDATE) are recorded. Times come from the database's clock.
-- Also NOTIFY, delivered at commit, so that every replica listening drops the
-- token at once; the channel is derived from the table's schema (whatever the
-- writer's search_path) so that installations sharing a database do not hear
-- each other (see Store::listen_for_changes).
CREATE FUNCTION tokens_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at)
    VALUES (OLD.secret_hash, (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT);
    PERFORM pg_notify('patd_' || left(md5(TG_TABLE_SCHEMA), 16), encode(OLD.secret_hash, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_revoked AFTER UPDATE OF revoked_at ON tokens
FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
EXECUTE FUNCTION tokens_record_change();

CREATE TRIGGER tokens_deleted AFTER DELETE ON tokens
FOR EACH ROW EXECUTE FUNCTION tokens_record_change();
