-- Calendar links: a Google account connected by OAuth plus (once chosen) one calendar.
CREATE TABLE calendar_links (
    id               text PRIMARY KEY,
    activity_id      text        NOT NULL,
    account_email    text        NOT NULL,
    calendar_id      text,
    state            text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'active', 'reauth_required', 'calendar_unavailable',
                         'disconnected')),
    state_reason     text,
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    refresh_token    text        NOT NULL,
    access_token     text,
    token_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'active' OR calendar_id IS NOT NULL)
);
CREATE INDEX calendar_links_activity ON calendar_links (activity_id);

-- The latest state of every booking seen on the topic (for backfill and resync).
CREATE TABLE bookings (
    booking_id  text PRIMARY KEY,
    activity_id text        NOT NULL,
    version     bigint      NOT NULL,
    event_type  text        NOT NULL,
    event       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bookings_activity ON bookings (activity_id);

-- What is applied to one link's calendar for one booking. google_event_id is NULL when no
-- event is on the calendar; generation picks the next deterministic id after a delete.
CREATE TABLE link_bookings (
    link_id         text        NOT NULL REFERENCES calendar_links (id) ON DELETE CASCADE,
    booking_id      text        NOT NULL,
    applied_version bigint,
    google_event_id text,
    generation      integer     NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, booking_id)
);

-- One row per (booking event, link): the audit trail, and what offsets wait for.
CREATE TABLE sync_results (
    id              bigserial PRIMARY KEY,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    topic           text,
    kafka_partition integer,
    kafka_offset    bigint,
    booking_id      text        NOT NULL,
    booking_version bigint      NOT NULL,
    link_id         text        NOT NULL,
    operation       text        NOT NULL CHECK (operation IN ('create', 'update', 'delete', 'none')),
    outcome         text        NOT NULL CHECK (outcome IN ('applied', 'unchanged', 'skipped', 'failed')),
    reason          text        NOT NULL,
    google_event_id text,
    error           text,
    attempts        integer     NOT NULL DEFAULT 0,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_results_booking ON sync_results (booking_id, link_id);
CREATE INDEX sync_results_recorded_at ON sync_results (recorded_at);

-- Messages that could not be read as booking events; also copied to the dead-letter topic.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    message_key     bytea,
    message_value   bytea,
    headers         jsonb       NOT NULL DEFAULT '[]',
    error_type      text        NOT NULL,
    error           text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
