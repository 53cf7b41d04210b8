-- Suspension: a token stopped for a while, not destroyed. While suspended_at is
-- set the token is inactive everywhere; clearing it resumes the token (unless it
-- expired or was revoked meanwhile). Existing tokens are not suspended.
ALTER TABLE tokens ADD COLUMN suspended_at BIGINT;

-- Every server must forget a suspended (or resumed) token at once, as for a
-- revoke (tokens_record_change records the change and notifies listeners).
CREATE TRIGGER tokens_suspended AFTER UPDATE OF suspended_at ON tokens
FOR EACH ROW WHEN (OLD.suspended_at IS NULL AND NEW.suspended_at IS NOT NULL)
EXECUTE FUNCTION tokens_record_change('suspended');

CREATE TRIGGER tokens_resumed AFTER UPDATE OF suspended_at ON tokens
FOR EACH ROW WHEN (OLD.suspended_at IS NOT NULL AND NEW.suspended_at IS NULL)
EXECUTE FUNCTION tokens_record_change('resumed');
