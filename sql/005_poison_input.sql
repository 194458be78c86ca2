-- Dead letters keep a message exactly as it came, whatever its bytes: NUL and invalid UTF-8
-- in header values cannot be stored in jsonb, so headers become two bytea arrays (Kafka
-- header keys are strings, but may hold NUL too). A row is written before the copy on the
-- dead-letter topic and marked when that copy is published, so the pair is written once
-- per (topic, partition, offset), however often the work is retried or redelivered.
ALTER TABLE dead_letters
    ADD COLUMN header_keys   bytea[]     NOT NULL DEFAULT '{}',
    ADD COLUMN header_values bytea[]     NOT NULL DEFAULT '{}',
    ADD COLUMN published_at  timestamptz,
    -- the broker refused even a minimal copy (e.g. a dead-letter topic with a tiny
    -- max.message.bytes): the row is the dead letter, and says why no copy exists
    ADD COLUMN copy_error    text;

UPDATE dead_letters d
   SET header_keys = coalesce((SELECT array_agg(convert_to(h ->> 0, 'UTF8') ORDER BY n)
                                 FROM jsonb_array_elements(d.headers) WITH ORDINALITY AS t(h, n)),
                              '{}'),
       header_values = coalesce((SELECT array_agg(convert_to(h ->> 1, 'UTF8') ORDER BY n)
                                   FROM jsonb_array_elements(d.headers) WITH ORDINALITY AS t(h, n)),
                                '{}'),
       published_at = d.recorded_at;  -- rows from before this migration were copied already

ALTER TABLE dead_letters DROP COLUMN headers;

-- What a consumer process is stuck on: per partition, its oldest unrecorded message when it
-- has waited past the stall threshold (topic, partition, offset, key, cause, waiting_s).
ALTER TABLE consumer_members ADD COLUMN stalls jsonb NOT NULL DEFAULT '[]';
