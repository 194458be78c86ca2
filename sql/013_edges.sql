-- Issue 20, the edges: a dead letter known by its content (10), sessions of the pages that
-- signing out voids (12), sign-in attempts limited per client address (14).

-- 10. A dead letter is known by its content, not only by its position. A topic deleted and
-- created again starts its offsets at 0 anew: a new bad message at an old dead letter's
-- (topic, partition, offset) is another message, and gets its own row and its own copy. A
-- redelivery of the same record (same position, same timestamp, same key and value) still
-- finds its row and is never copied twice.
--
-- The digest is SHA-256 over the key and the value, each framed so that no two different
-- pairs share an input: a missing one (NULL) as one 0x00 byte, a present one as 0x01, its
-- length in 8 bytes (big-endian), then its bytes. So (NULL, v) and ('', v) differ, and
-- ('ab', 'c') and ('a', 'bc') too.
CREATE FUNCTION calsync_record_digest(message_key bytea, message_value bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT sha256(
        CASE WHEN message_key IS NULL THEN '\x00'::bytea
             ELSE '\x01'::bytea || int8send(length(message_key)::bigint) || message_key END
        || CASE WHEN message_value IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int8send(length(message_value)::bigint) || message_value END)
$$;

ALTER TABLE dead_letters
    -- the record's own timestamp (milliseconds since the epoch, as Kafka gave it; 0 for a
    -- record the client could not read). NULL: recorded before this migration, unknown.
    ADD COLUMN record_timestamp bigint,
    ADD COLUMN record_digest    bytea;

UPDATE dead_letters SET record_digest = calsync_record_digest(message_key, message_value);
ALTER TABLE dead_letters ALTER COLUMN record_digest SET NOT NULL;

ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_topic_kafka_partition_kafka_offset_key;
-- Rows from before this migration (no timestamp) never conflict here: the consumer finds
-- them by position and digest (consumer/adapters/postgres/repository.py).
CREATE UNIQUE INDEX dead_letters_record
    ON dead_letters (topic, kafka_partition, kafka_offset, record_timestamp, record_digest);

-- 12. A signed-in session of the pages exists while its row does: signing out deletes it, so
-- the cookie is refused from then on by every `calsync serve` process, although its
-- signature stays valid until it expires. The row holds a digest of the session id, never
-- the id the cookie carries. Expired rows are deleted whenever a session starts.
CREATE TABLE page_sessions (
    id_digest  bytea       PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX page_sessions_expiry ON page_sessions (expires_at);

-- 14. Failed sign-ins per client address: after CALSYNC_HTTP_LOGIN_MAX_FAILURES within
-- CALSYNC_HTTP_LOGIN_WINDOW_S, the address is refused (429) until `blocked_until`, whatever
-- it sends. One row per address that failed recently; rows whose window and block are both
-- over are deleted whenever a sign-in fails.
CREATE TABLE page_login_failures (
    client          text        PRIMARY KEY,
    failures        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    blocked_until   timestamptz
);
