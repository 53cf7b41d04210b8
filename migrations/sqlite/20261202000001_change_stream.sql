-- The change log also says which token changed and how, so that WatchChanges
-- subscribers (consumer caches keyed by token id) can follow it; and how far it
-- has been pruned, so that a subscriber resuming from before that is told.
ALTER TABLE token_changes ADD COLUMN token_id TEXT NOT NULL DEFAULT '';
ALTER TABLE token_changes ADD COLUMN kind TEXT NOT NULL DEFAULT '';

DROP TRIGGER tokens_revoked;
CREATE TRIGGER tokens_revoked AFTER UPDATE OF revoked_at ON tokens
WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (NEW.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER), NEW.id, 'revoked');
END;

DROP TRIGGER tokens_deleted;
CREATE TRIGGER tokens_deleted AFTER DELETE ON tokens
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (OLD.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER), OLD.id, 'deleted');
END;

DROP TRIGGER tokens_rotated;
CREATE TRIGGER tokens_rotated AFTER UPDATE OF secret_hash ON tokens
WHEN OLD.secret_hash <> NEW.secret_hash
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (OLD.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER), OLD.id, 'rotated');
END;

-- A reader's mark (the last seq it read) below this may have missed pruned
-- changes.
CREATE TABLE token_changes_pruned (
    through_seq INTEGER NOT NULL
) STRICT;
INSERT INTO token_changes_pruned (through_seq) VALUES (0);
