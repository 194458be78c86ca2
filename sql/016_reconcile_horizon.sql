-- Issue 22, the horizon for reconcile: a link's reconcile reads only the bookings of its
-- activity that end after the horizon (now minus CALSYNC_BACKFILL_PAST_DAYS), in keyset
-- pages, without reading the activity's history. For that, each booking's end as a column,
-- kept by the database itself whatever writes the row (the consumer's upsert, a bulk fill),
-- and an index that walks an activity's bookings by their end.
--
-- The end is the booking's own (`event.booking.end`, ISO 8601 with an offset, as the
-- contract requires and the consumer stores it). A row whose end cannot be read (stored
-- before the contract was enforced) gets NULL: it is never within the horizon.

ALTER TABLE bookings ADD COLUMN IF NOT EXISTS ends_at timestamptz;

CREATE OR REPLACE FUNCTION calsync_booking_ends_at(event jsonb) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN event->'booking'->>'end' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d'
                THEN (event->'booking'->>'end')::timestamptz END
$$;

CREATE OR REPLACE FUNCTION calsync_bookings_set_ends_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    NEW.ends_at := calsync_booking_ends_at(NEW.event);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER bookings_ends_at BEFORE INSERT OR UPDATE OF event ON bookings
    FOR EACH ROW EXECUTE FUNCTION calsync_bookings_set_ends_at();

UPDATE bookings SET ends_at = calsync_booking_ends_at(event) WHERE ends_at IS NULL;

-- An activity's bookings from the horizon on, in (end, id) order: the reconcile's keyset.
CREATE INDEX IF NOT EXISTS bookings_activity_ends ON bookings (activity_id, ends_at, booking_id);
