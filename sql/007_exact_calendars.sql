-- Calendars stay exact (consumer/reconcile.py, the sync engine's moves).

-- Which calendar each recorded event is on: a link whose calendar changes moves its events
-- (deleted from the old calendar, created on the new one), and until then its records say
-- where they are. Rows from before this migration: the link's calendar.
ALTER TABLE link_bookings ADD COLUMN calendar_id text;
UPDATE link_bookings lb SET calendar_id = cl.calendar_id
  FROM calendar_links cl WHERE cl.id = lb.link_id AND lb.google_event_id IS NOT NULL;

-- Events of ours left on a calendar we could no longer reach when their link moved away
-- (the calendar deleted, shared read-only, its account's access gone): recorded so that
-- nothing of ours is unaccounted for, and removed when `calsync reconcile` reaches them.
CREATE TABLE stranded_events (
    link_id         text        NOT NULL,
    booking_id      text        NOT NULL,
    calendar_id     text        NOT NULL,
    google_event_id text        NOT NULL,
    reason          text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (calendar_id, google_event_id)
);

-- Every reconcile: who, when, how far it got, what it found and repaired (per kind). A run
-- whose process went away is resumed by the next one (links_done says where it was).
CREATE TABLE reconcile_runs (
    id            bigserial PRIMARY KEY,
    trigger       text        NOT NULL CHECK (trigger IN ('cli', 'schedule')),
    by_whom       text        NOT NULL,
    executed      boolean     NOT NULL,
    link_filter   text,
    links_total   integer     NOT NULL DEFAULT 0,
    links_done    text[]      NOT NULL DEFAULT '{}',
    events_seen   integer     NOT NULL DEFAULT 0,
    found         jsonb       NOT NULL DEFAULT '{}',
    repaired      jsonb       NOT NULL DEFAULT '{}',
    report        jsonb       NOT NULL DEFAULT '[]',
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    error         text
);
CREATE INDEX reconcile_runs_latest ON reconcile_runs (id DESC);

-- A result may be a move (off the link's old calendar, onto its new one).
ALTER TABLE sync_results DROP CONSTRAINT sync_results_operation_check;
ALTER TABLE sync_results ADD CONSTRAINT sync_results_operation_check
    CHECK (operation IN ('create', 'update', 'delete', 'move', 'none'));

-- A booking's links are found by the booking too (it may have moved to another activity).
CREATE INDEX link_bookings_booking ON link_bookings (booking_id) WHERE google_event_id IS NOT NULL;

-- Link notices say when the state changed: a consumer tells a halt from an activation that
-- came after it, whichever order the notice and its own reads arrive in.
-- Payload: "<id> <state> <state_changed_at as epoch seconds>".
CREATE OR REPLACE FUNCTION calendar_links_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('calsync_links', NEW.id || ' ' || NEW.state || ' '
                      || extract(epoch FROM NEW.state_changed_at));
    RETURN NEW;
END $$;

-- When the consumer group's scheduled work is next due (e.g. 'reconcile'): the first run
-- comes one interval after the group first started, not at every start.
CREATE TABLE schedules (
    name    text PRIMARY KEY,
    next_at timestamptz NOT NULL
);

-- How far a running reconcile is: repairs done and to do, an estimated end (written every
-- few seconds, with updated_at, while it runs).
ALTER TABLE reconcile_runs ADD COLUMN progress jsonb NOT NULL DEFAULT '{}';
