-- The deployment: which calendar-sync installation this database belongs to (production,
-- staging, another region). Every event we write carries its id as the private extended
-- property `deployment`, so that deployments syncing to the same calendar keep to their own
-- events. Made once, here, at `calsync migrate`, and kept with the data; the setting
-- CALSYNC_DEPLOYMENT_ID, when set, is used instead. One row at most (`one` is always true).
-- A copy of this database (a restored backup) carries the id along: a copy that runs as a
-- deployment of its own must be given its own CALSYNC_DEPLOYMENT_ID.
CREATE TABLE deployment (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    -- The same rule as the setting: it lands in Google's extended properties and in URIs.
    id         text        NOT NULL CHECK (id ~ '^[A-Za-z0-9._~-]{1,64}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment (id) VALUES (gen_random_uuid()::text);
