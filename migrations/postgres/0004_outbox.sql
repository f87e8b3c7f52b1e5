-- The outbox (see "The outbox" in docs/ARCHITECTURE.md): one row per event and destination,
-- written by the same statement as the change it tells of. `seq` is the order of the changes
-- (of one session, always: its changes are serialized by the session's row, and each takes its
-- number while holding it); an identity never hands out a number twice. The claim walks due
-- rows in `outbox_due` order and keeps the oldest row of each (destination, session), found
-- through `outbox_session`. Event ids drawn in SQL use gen_random_uuid() (built in since
-- PostgreSQL 13).
CREATE TABLE IF NOT EXISTS outbox (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination     integer NOT NULL,
    tenant          text    NOT NULL,
    session_id      text    NOT NULL,
    event_id        text    NOT NULL,
    kind            text    NOT NULL,
    version         bigint  NOT NULL,
    customer_id     text,
    doc             text,
    event_time      bigint  NOT NULL,
    recorded_at     bigint  NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at bigint  NOT NULL,
    claim_owner     text,
    claimed_until   bigint
);

CREATE INDEX IF NOT EXISTS outbox_session ON outbox (destination, tenant, session_id, seq);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at, seq);
