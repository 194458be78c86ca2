-- What the pages read and write: backfill progress, single-use calendar-choice forms, and the
-- latest result of a link.

-- One row per backfill of a link (a calendar chosen, or the account reconnected), updated
-- as it goes: `total` once the bookings needing work are counted, `done` and `counts` (per
-- outcome) every few bookings, `updated_at` at least every few seconds while it runs, so a
-- page can tell progress, rate and an estimated end, and tell a backfill whose process went
-- away (no news for a while) from a slow one. `calendar_name` is the name Google gave the
-- calendar when it was chosen, for pages to show.
CREATE TABLE backfills (
    id            bigserial PRIMARY KEY,
    link_id       text        NOT NULL REFERENCES calendar_links (id) ON DELETE CASCADE,
    calendar_id   text        NOT NULL,
    calendar_name text,
    trigger       text        NOT NULL CHECK (trigger IN ('select', 'reconnect')),
    total         integer,
    done          integer     NOT NULL DEFAULT 0,
    counts        jsonb       NOT NULL DEFAULT '{}',
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    error         text
);
CREATE INDEX backfills_link ON backfills (link_id, id DESC);

-- Each calendar-choice form carries a signed token with a unique id (jti); the row records
-- its use, so a replayed form is refused. Rows outlive their token's expiry by a day.
CREATE TABLE page_form_tokens (
    jti        text PRIMARY KEY,
    link_id    text        NOT NULL,
    used_at    timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- The links page shows each link's latest result.
CREATE INDEX sync_results_link ON sync_results (link_id, id DESC);
