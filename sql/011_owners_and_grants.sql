-- One owner per calendar, one grant per Google account (issue 20).

-- --- One grant per Google account --------------------------------------------------------
-- Google keeps at most 100 refresh tokens per account and OAuth client and silently voids
-- the oldest, and every consent mints one: tokens kept per link were lost without a word
-- once an account was connected often enough. Now each account has one grant, shared by
-- all its links (the newest refresh token Google gave, encrypted as before). Google
-- revokes an account's whole grant whichever of its tokens is revoked, so the grant is
-- revoked only with the last live link that uses it.
--   valid:   in use;
--   refused: Google answered `invalid_grant` (revoked, expired, unused for six months,
--            voided): `state_reason` keeps Google's words; a reconnect replaces it;
--   revoked: revoked at Google by the disconnect of its last link (tokens wiped); kept so
--            that a connection whose code was exchanged before that revoke, and whose
--            token died with it, is told to start again.
CREATE TABLE google_grants (
    account_email     text PRIMARY KEY,
    refresh_token_enc text,
    access_token_enc  text,
    token_expires_at  timestamptz,
    state             text        NOT NULL DEFAULT 'valid'
        CHECK (state IN ('valid', 'refused', 'revoked')),
    state_reason      text,
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'revoked' OR refresh_token_enc IS NOT NULL)
);

-- The links' tokens become their accounts' grants. The database cannot decrypt them, so the
-- choice is by what is known of them: a working link's (not refused, not disconnected)
-- before the others, the most recently updated first.
INSERT INTO google_grants (account_email, refresh_token_enc, access_token_enc, token_expires_at,
                           state, state_reason, created_at, updated_at)
SELECT DISTINCT ON (account_email)
       account_email, refresh_token_enc, access_token_enc, token_expires_at,
       CASE WHEN state = 'reauth_required' THEN 'refused' ELSE 'valid' END,
       CASE WHEN state = 'reauth_required' THEN coalesce(nullif(
           regexp_replace(state_reason, '^token refresh refused: ', ''), ''), 'invalid_grant') END,
       created_at, updated_at
  FROM calendar_links
 WHERE refresh_token_enc IS NOT NULL
 ORDER BY account_email,
          CASE state WHEN 'reauth_required' THEN 2 WHEN 'disconnected' THEN 1 ELSE 0 END,
          updated_at DESC, id;

-- When a disconnect has finished (its events removed or kept, the grant released). Until
-- then the link's calendar cannot be chosen again (`disconnect_in_progress`): choosing it
-- would revive the link while its events are still being removed. Links disconnected
-- before this migration had finished once their tokens were wiped.
ALTER TABLE calendar_links ADD COLUMN disconnect_finished_at timestamptz;
UPDATE calendar_links SET disconnect_finished_at = state_changed_at
 WHERE state = 'disconnected' AND refresh_token_enc IS NULL;

-- Links keep no tokens of their own any more. Their change notice no longer looks at them
-- (a grant's change has its own, below).
DROP TRIGGER calendar_links_changed ON calendar_links;
ALTER TABLE calendar_links
    DROP CONSTRAINT calendar_links_tokens,
    DROP COLUMN refresh_token_enc,
    DROP COLUMN access_token_enc,
    DROP COLUMN token_expires_at;
CREATE TRIGGER calendar_links_changed
    AFTER UPDATE ON calendar_links
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION calendar_links_notify();
CREATE INDEX calendar_links_account ON calendar_links (account_email);

-- Consumers LISTEN on calsync_grants to drop an account's cached access token when its
-- grant changes (reconnected, refused, revoked, its refresh token rotated by Google); an
-- access token refreshed is no news. Payload: the account's email.
CREATE FUNCTION google_grants_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('calsync_grants', NEW.account_email);
    RETURN NEW;
END $$;

CREATE TRIGGER google_grants_changed
    AFTER UPDATE ON google_grants
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.refresh_token_enc IS DISTINCT FROM NEW.refresh_token_enc)
    EXECUTE FUNCTION google_grants_notify();

-- --- One live link per calendar of an activity, whatever the account --------------------
-- A calendar shared between two Google accounts has one id for both: two links of one
-- activity on it, one per account, put every booking there twice. Where a database already
-- holds such links, one keeps the calendar (the active one, the oldest of them) and the
-- others go back to `pending` (no calendar) with a reason naming the owner; their events
-- stay on the calendar as duplicates until a reconcile removes them (events of a link
-- that no longer syncs that calendar) or the link chooses another calendar (they move).
WITH ranked AS (
    SELECT id, calendar_id,
           first_value(id) OVER same AS owner_id,
           row_number() OVER same AS rank
      FROM calendar_links
     WHERE state <> 'disconnected' AND calendar_id IS NOT NULL
    WINDOW same AS (PARTITION BY activity_id, calendar_id
                    ORDER BY state = 'active' DESC, created_at, id)
)
UPDATE calendar_links AS l
   SET state = 'pending', calendar_id = NULL, state_changed_at = now(), updated_at = now(),
       state_reason = 'calendar_taken: calendar ' || r.calendar_id || ' is synced by link '
                      || r.owner_id || ' of this activity (migration 011): choose another'
                      || ' calendar, or disconnect this link'
  FROM ranked AS r
 WHERE l.id = r.id AND r.rank > 1;

DROP INDEX calendar_links_one_live_per_calendar;
CREATE UNIQUE INDEX calendar_links_one_owner_per_calendar
    ON calendar_links (activity_id, calendar_id)
    WHERE state <> 'disconnected' AND calendar_id IS NOT NULL;
