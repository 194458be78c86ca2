-- What on-call tooling needs: which consumer processes are alive, every replay, and whether a
-- dead letter was put back (and processed) already.

-- Each consumer process reports itself every few seconds while it runs and removes its row
-- when it stops cleanly. `calsync replay` refuses while a member of the group is alive here,
-- and `calsync status` lists them (the broker's own member list is shown beside it).
CREATE TABLE consumer_members (
    group_id    text        NOT NULL,
    member      text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    topic       text        NOT NULL,
    partitions  integer[]   NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, member)
);

CREATE TABLE replays (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    who         text        NOT NULL,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    spec        text        NOT NULL,  -- the command line's reset option, as given
    executed    boolean     NOT NULL,
    resync      boolean     NOT NULL DEFAULT false,
    plan        jsonb       NOT NULL,  -- per partition: current, new, messages to re-read
    resynced    integer
);

ALTER TABLE dead_letters
    ADD COLUMN replayed_at    timestamptz,  -- put back on its topic by `calsync dlq replay`
    ADD COLUMN replayed_by    text,
    ADD COLUMN reprocessed_at timestamptz;  -- the consumer handled the replayed copy
