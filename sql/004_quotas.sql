-- Google's quotas, shared by every consumer process of the group (consumer/quota.py).
--
-- One row per quota (a Google account of a project, or the project itself). `next_at` is the
-- group's next free slot, as in GCRA: a process reserves n slots at once, spaced `step` apart,
-- and moves `next_at` past them, so slots are never handed out twice and never come in
-- bursts. `pace` (0.1 .. 1) is the share of the configured rate in use: it drops when Google
-- still answers 403/429 and recovers slot by slot.
CREATE TABLE quota_buckets (
    key          text             PRIMARY KEY,
    next_at      timestamptz      NOT NULL,
    pace         double precision NOT NULL DEFAULT 1 CHECK (pace > 0 AND pace <= 1),
    refusals     bigint           NOT NULL DEFAULT 0,
    refused_at   timestamptz,
    updated_at   timestamptz      NOT NULL DEFAULT now()
);

-- Reserve p_counts[i] slots of key p_keys[i] whose full-pace interval is p_intervals[i]
-- seconds. Answers, per key, the seconds from now to the first slot and the spacing. Callers
-- pass keys sorted, so that concurrent reservations lock rows in one order.
CREATE FUNCTION calsync_reserve_slots(p_keys text[], p_counts integer[],
                                      p_intervals double precision[])
RETURNS TABLE (key text, wait_s double precision, step_s double precision)
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
        step := p_intervals[i] / bucket.pace;
        start_at := greatest(bucket.next_at, now_at);
        UPDATE quota_buckets q
           SET next_at = start_at + make_interval(secs => step * p_counts[i]),
               pace = least(1.0, bucket.pace + 0.002 * p_counts[i]),
               updated_at = now_at
         WHERE q.key = p_keys[i];
        key := p_keys[i];
        wait_s := extract(epoch FROM start_at - now_at);
        step_s := step;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Google refused a call for rate limits although the group kept to the configured rate: slow
-- the key down (at most once a second, however many calls saw the refusal) and keep it quiet
-- for Retry-After, when Google gave one.
CREATE FUNCTION calsync_quota_refused(p_key text, p_retry_after_s double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    now_at timestamptz := clock_timestamp();
    new_pace double precision;
BEGIN
    INSERT INTO quota_buckets AS q (key, next_at) VALUES (p_key, now_at)
        ON CONFLICT ON CONSTRAINT quota_buckets_pkey DO NOTHING;
    UPDATE quota_buckets q
       SET pace = greatest(0.1, q.pace * 0.7),
           refusals = q.refusals + 1,
           refused_at = now_at,
           next_at = greatest(q.next_at, now_at + make_interval(secs => p_retry_after_s)),
           updated_at = now_at
     WHERE q.key = p_key AND (q.refused_at IS NULL OR q.refused_at < now_at - interval '1 second')
    RETURNING q.pace INTO new_pace;
    IF new_pace IS NULL THEN  -- slowed down already within the last second: only Retry-After
        UPDATE quota_buckets q
           SET refusals = q.refusals + 1,
               next_at = greatest(q.next_at, now_at + make_interval(secs => p_retry_after_s))
         WHERE q.key = p_key
        RETURNING q.pace INTO new_pace;
    END IF;
    RETURN new_pace;
END
$$;
