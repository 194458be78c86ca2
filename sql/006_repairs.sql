-- Google's refusals and the repair loop (consumer/refusals.py, consumer/repairs.py).

-- Work may be deferred (an account or the project paused, an account's queue too long): the
-- message's offset moves on, and a `repairs` row keeps the promise.
ALTER TABLE sync_results DROP CONSTRAINT sync_results_outcome_check;
ALTER TABLE sync_results ADD CONSTRAINT sync_results_outcome_check
    CHECK (outcome IN ('applied', 'unchanged', 'skipped', 'failed', 'deferred'));

-- Every (link, booking) whose latest state is not on the link's calendar yet: failed after
-- the retry budget, deferred by a pause, the token endpoint down. Written in the same
-- transaction as the result that leaves it so, removed in the same transaction as the result
-- that applies `booking_version` (or a later one). The consumer group works due rows, one
-- process at a time per row (a lease, then the pair's claim), with exponential backoff.
CREATE TABLE repairs (
    link_id          text        NOT NULL REFERENCES calendar_links (id) ON DELETE CASCADE,
    booking_id       text        NOT NULL,
    booking_version  bigint      NOT NULL,  -- the newest version known to be missing
    reason           text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    leased_by        text,
    leased_until     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, booking_id)
);
CREATE INDEX repairs_due ON repairs (due_at);

-- Quotas Google says are spent for hours (quotaExceeded for an account, dailyLimitExceeded
-- for the project): no call is made for the key before `paused_until`; its work is deferred.
ALTER TABLE quota_buckets
    ADD COLUMN paused_until  timestamptz,
    ADD COLUMN paused_reason text;

DROP FUNCTION calsync_reserve_slots(text[], integer[], double precision[]);

-- As before, and each key's pause: while a key is paused no slot is reserved for it
-- (wait_s and step_s are 0) and `paused_s` says for how long still.
CREATE FUNCTION calsync_reserve_slots(p_keys text[], p_counts integer[],
                                      p_intervals double precision[])
RETURNS TABLE (key text, wait_s double precision, step_s double precision,
               paused_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_at   timestamptz := clock_timestamp();
    bucket   quota_buckets%ROWTYPE;
    step     double precision;
    start_at timestamptz;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        INSERT INTO quota_buckets AS q (key, next_at) VALUES (p_keys[i], now_at)
            ON CONFLICT ON CONSTRAINT quota_buckets_pkey DO NOTHING;
        SELECT * INTO bucket FROM quota_buckets q WHERE q.key = p_keys[i] FOR UPDATE;
        key := p_keys[i];
        IF bucket.paused_until IS NOT NULL AND bucket.paused_until > now_at THEN
            wait_s := 0;
            step_s := 0;
            paused_s := extract(epoch FROM bucket.paused_until - now_at);
            RETURN NEXT;
            CONTINUE;
        END IF;
        step := p_intervals[i] / bucket.pace;
        start_at := greatest(bucket.next_at, now_at);
        UPDATE quota_buckets q
           SET next_at = start_at + make_interval(secs => step * p_counts[i]),
               pace = least(1.0, bucket.pace + 0.002 * p_counts[i]),
               updated_at = now_at
         WHERE q.key = p_keys[i];
        wait_s := extract(epoch FROM start_at - now_at);
        step_s := step;
        paused_s := 0;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Pause a key until now + p_seconds (a later pause already set stays); answers the seconds
-- the key is paused for.
CREATE FUNCTION calsync_quota_pause(p_key text, p_seconds double precision, p_reason text)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    now_at timestamptz := clock_timestamp();
    until  timestamptz;
BEGIN
    INSERT INTO quota_buckets AS q (key, next_at) VALUES (p_key, now_at)
        ON CONFLICT ON CONSTRAINT quota_buckets_pkey DO NOTHING;
    UPDATE quota_buckets q
       SET paused_until = greatest(coalesce(q.paused_until, now_at),
                                   now_at + make_interval(secs => p_seconds)),
           paused_reason = p_reason,
           refusals = q.refusals + 1,
           refused_at = now_at,
           updated_at = now_at
     WHERE q.key = p_key
    RETURNING q.paused_until INTO until;
    RETURN extract(epoch FROM until - now_at);
END
$$;
