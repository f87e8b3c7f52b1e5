-- A customer's sessions, newest first (see "The customer index" in docs/ARCHITECTURE.md): the
-- customer and the modification time (ms since the epoch) as columns of their own, filled in
-- for the rows written before from their document. `doc` is text and was never required to be
-- JSON, so it is read through a function that answers NULL for a document that is not.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS customer_id text;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS modified_at bigint NOT NULL DEFAULT 0;

CREATE FUNCTION pg_temp.session_doc(doc text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN doc::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

UPDATE sessions SET
    customer_id = pg_temp.session_doc(doc) ->> 'customerId',
    modified_at = COALESCE(
        round(extract(epoch FROM (pg_temp.session_doc(doc) #>> '{metadata,modifiedAt}')::timestamptz) * 1000)::bigint,
        0)
WHERE customer_id IS NULL;

CREATE INDEX IF NOT EXISTS sessions_customer
    ON sessions (tenant, customer_id, modified_at DESC, session_id)
    WHERE customer_id IS NOT NULL;
