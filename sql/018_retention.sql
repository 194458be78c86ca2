-- Retention (issue 22, point 4): what the group's retention pass needs to find its rows
-- without scanning whole tables on every batch (consumer/adapters/postgres/retention_store.py).

-- A booking is never pruned while a repair is owed for it: the pass asks, for each page of
-- bookings, whether a repair names it. `repairs` is keyed (link_id, booking_id); without this
-- index each page would scan every waiting repair (a million of them at scale).
CREATE INDEX repairs_booking_id ON repairs (booking_id);

-- sync_results are pruned oldest first through `sync_results_recorded_at` (sql/001); bookings
-- page by their primary key, and "still holds an event" is `link_bookings_booking` (sql/007).
