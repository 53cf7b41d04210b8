-- What a token is for (description, labels) and which resources it may be used
-- on. Existing tokens get none of each: no description, no labels, every
-- resource, exactly as before.
ALTER TABLE tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
-- A JSON object of the labels, as shown; token_labels is what selectors search.
ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '';
-- Space-separated `type:id` names; empty: every resource.
ALTER TABLE tokens ADD COLUMN resources TEXT NOT NULL DEFAULT '';

-- One row per label, written with the token, so that ListTokens' label
-- selectors are index lookups: (account, subject, key, value) finds the tokens.
CREATE TABLE token_labels (
    token_seq BIGINT NOT NULL REFERENCES tokens (seq) ON DELETE CASCADE,
    account   TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    key       TEXT   NOT NULL,
    value     TEXT   NOT NULL,
    PRIMARY KEY (token_seq, key)
);

CREATE INDEX token_labels_by_owner ON token_labels (account, subject, key, value, token_seq);

-- A renamed token's cached Introspect answers (which carry the name) must go
-- everywhere, as for a revoke.
CREATE TRIGGER tokens_updated AFTER UPDATE OF name ON tokens
FOR EACH ROW WHEN (OLD.name <> NEW.name)
EXECUTE FUNCTION tokens_record_change('updated');
