-- One row per session: the serialized resource plus what the store compares and expires.
-- `doc` is text, not jsonb: it is served byte for byte and never queried inside.
CREATE TABLE IF NOT EXISTS sessions (
    tenant      text   NOT NULL,
    session_id  text   NOT NULL,
    version     bigint NOT NULL,
    expires_at  bigint,
    doc         text   NOT NULL,
    PRIMARY KEY (tenant, session_id)
);

CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
