-- One end per booking for the horizon: `bookings.ends_at`, kept by a trigger (016) and indexed
-- with the activity (bookings_activity_ends), which reconcile, the backfill and retention all
-- read. 017 had made a second index over an expression of the same value: two indexes to keep
-- up on every booking written, where one serves. (Concurrent work of one day, merged.)
DROP INDEX IF EXISTS bookings_activity_end;
DROP FUNCTION IF EXISTS calsync_booking_end(jsonb);
