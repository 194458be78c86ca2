-- Tokens encrypted at rest (Fernet, key from CALSYNC_TOKEN_KEY; the database never sees the
-- key), the OAuth connect flow's one-time states, and change notifications for consumers.

-- No deployment has stored tokens in clear yet; refuse rather than drop any that exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM calendar_links) THEN
        RAISE EXCEPTION 'calendar_links holds tokens in clear: export the links, empty the '
            'table, migrate, then re-import them with CALSYNC_TOKEN_KEY set';
    END IF;
END $$;

ALTER TABLE calendar_links
    DROP COLUMN refresh_token,
    DROP COLUMN access_token,
    ADD COLUMN refresh_token_enc text,
    ADD COLUMN access_token_enc  text,
    ADD COLUMN backfilled_at     timestamptz,
    -- Only a disconnected link may lose its tokens (they are wiped on disconnect).
    ADD CONSTRAINT calendar_links_tokens CHECK (state = 'disconnected' OR refresh_token_enc IS NOT NULL);

-- One live link per (activity, account, calendar): a second one would duplicate every event.
CREATE UNIQUE INDEX calendar_links_one_live_per_calendar
    ON calendar_links (activity_id, account_email, calendar_id)
    WHERE state <> 'disconnected' AND calendar_id IS NOT NULL;

-- Where a result came from: a Kafka message, a backfill on activation, or a resync.
ALTER TABLE sync_results ADD COLUMN source text NOT NULL DEFAULT 'event';

-- One row per started OAuth connection. The signed `state` names the nonce; the row makes it
-- single-use and keeps the PKCE verifier (encrypted) on the server side.
CREATE TABLE oauth_states (
    nonce             text PRIMARY KEY,
    activity_id       text        NOT NULL,
    code_verifier_enc text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    used_at           timestamptz
);

-- Consumers LISTEN on calsync_links to stop in-flight work of a link the moment it leaves
-- `active`, and to drop cached tokens when it is reconnected. Payload: "<id> <state>".
CREATE FUNCTION calendar_links_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('calsync_links', NEW.id || ' ' || NEW.state);
    RETURN NEW;
END $$;

CREATE TRIGGER calendar_links_changed
    AFTER UPDATE ON calendar_links
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.refresh_token_enc IS DISTINCT FROM NEW.refresh_token_enc)
    EXECUTE FUNCTION calendar_links_notify();
