-- Suspension: a token stopped for a while, not destroyed. While suspended_at is
-- set the token is inactive everywhere; clearing it resumes the token (unless it
-- expired or was revoked meanwhile). Existing tokens are not suspended.
ALTER TABLE tokens ADD COLUMN suspended_at INTEGER;

-- Every server must forget a suspended (or resumed) token at once, as for a revoke.
CREATE TRIGGER tokens_suspended AFTER UPDATE OF suspended_at ON tokens
WHEN OLD.suspended_at IS NULL AND NEW.suspended_at IS NOT NULL
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (NEW.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER), NEW.id, 'suspended');
END;

CREATE TRIGGER tokens_resumed AFTER UPDATE OF suspended_at ON tokens
WHEN OLD.suspended_at IS NOT NULL AND NEW.suspended_at IS NULL
BEGIN
    INSERT INTO token_changes (secret_hash, changed_at, token_id, kind)
    VALUES (NEW.secret_hash, CAST(unixepoch('subsec') * 1000000 AS INTEGER), NEW.id, 'resumed');
END;

