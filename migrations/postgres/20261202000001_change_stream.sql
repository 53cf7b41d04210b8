-- The change log also says which token changed and how, so that WatchChanges
-- subscribers (consumer caches keyed by token id) can follow it; and how far it
-- has been pruned, so that a subscriber resuming from before that is told.
ALTER TABLE token_changes
    ADD COLUMN token_id TEXT NOT NULL DEFAULT '',
    ADD COLUMN kind TEXT NOT NULL DEFAULT '';

-- The trigger now records the token and the kind of change (its argument).
CREATE OR REPLACE FUNCTION tokens_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (OLD.secret_hash, (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT,
            OLD.id, TG_ARGV[0]);
    PERFORM pg_notify('patd_' || left(md5(TG_TABLE_SCHEMA), 16), encode(OLD.secret_hash, 'hex'));
    RETURN NULL;
END
$$;

DROP TRIGGER tokens_revoked ON tokens;
CREATE TRIGGER tokens_revoked AFTER UPDATE OF revoked_at ON tokens
FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
EXECUTE FUNCTION tokens_record_change('revoked');

DROP TRIGGER tokens_deleted ON tokens;
CREATE TRIGGER tokens_deleted AFTER DELETE ON tokens
FOR EACH ROW EXECUTE FUNCTION tokens_record_change('deleted');

DROP TRIGGER tokens_rotated ON tokens;
CREATE TRIGGER tokens_rotated AFTER UPDATE OF secret_hash ON tokens
FOR EACH ROW WHEN (OLD.secret_hash <> NEW.secret_hash)
EXECUTE FUNCTION tokens_record_change('rotated');

-- A reader's mark (a transaction id horizon, see ChangeMark) below this may
-- have missed pruned changes.
CREATE TABLE token_changes_pruned (
    through_seq BIGINT NOT NULL
);
INSERT INTO token_changes_pruned (through_seq) VALUES (0);
