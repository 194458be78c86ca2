-- Backfills bounded by the horizon (issue 22, points 1, 2 and 6).
--
-- A backfill covers only the bookings that end after the horizon (now minus
-- CALSYNC_BACKFILL_PAST_DAYS), read in keyset pages ordered by (end, booking id). The index
-- below answers each page from the activity's bookings within the horizon alone, however
-- many years of past bookings the activity holds.
--
-- A booking's end is in its stored event (bookings.event->'booking'->>'end'), always an ISO
-- 8601 date-time with an offset (the contract refuses one without): its cast to timestamptz
-- does not depend on the session's time zone, so the function may be declared immutable,
-- which an index expression needs.
CREATE FUNCTION calsync_booking_end(event jsonb) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (event -> 'booking' ->> 'end')::timestamptz $$;

CREATE INDEX bookings_activity_end ON bookings (activity_id, calsync_booking_end(event), booking_id);

-- `calsync links import --calendar` backfills like a select: its backfills say 'import'.
ALTER TABLE backfills DROP CONSTRAINT backfills_trigger_check;
ALTER TABLE backfills ADD CONSTRAINT backfills_trigger_check
    CHECK (trigger IN ('select', 'reconnect', 'import'));

-- The horizon a backfill covered (bookings ending after it), for pages and status to say.
ALTER TABLE backfills ADD COLUMN horizon timestamptz;
