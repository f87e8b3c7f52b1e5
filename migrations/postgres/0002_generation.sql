-- Which life of a session a row belongs to (see `StoredSession::generation` in src/store):
-- a session deleted or expired and created again restarts at version 1, so the conditional
-- write compares the generation too. Rows written before share generation 0, which is still
-- told apart from every newly drawn one.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0;
