-- Issue 22, point 3: a repair queue that costs the same at a million rows.
--
-- The repair loop leases what is due, oldest first, at most so many per Google account
-- (one account's thousands of repairs never take every place). Before, each poll ranked
-- every due row with a window function over a join with calendar_links (about 200 ms at
-- 200,000 repairs). Now each repair carries its link's account, and one index per account
-- in due order lets each poll walk only the few rows it leases: per account, its oldest due
-- repair (one index probe), the accounts whose oldest are the oldest, then their first due
-- rows (consumer/adapters/postgres/repair_store.py, `_LEASE`).

ALTER TABLE repairs ADD COLUMN account_email text;

UPDATE repairs r SET account_email = cl.account_email FROM calendar_links cl WHERE cl.id = r.link_id;

ALTER TABLE repairs ALTER COLUMN account_email SET NOT NULL;

-- Whoever writes a repair (the sync store's results, a backfill's or a reconcile's debt, an
-- operator's INSERT, a bench's fill) need not name the account: it is the link's. A writer
-- that names it (a bulk fill) costs no lookup.
CREATE FUNCTION calsync_repair_account() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT cl.account_email INTO NEW.account_email FROM calendar_links cl WHERE cl.id = NEW.link_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER repairs_account BEFORE INSERT ON repairs
    FOR EACH ROW WHEN (NEW.account_email IS NULL) EXECUTE FUNCTION calsync_repair_account();

-- A link takes another account (a disconnected link revived by another account that shares
-- its calendar): its repairs follow it.
CREATE FUNCTION calsync_link_account_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE repairs SET account_email = NEW.account_email WHERE link_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER calendar_links_account_moved AFTER UPDATE OF account_email ON calendar_links
    FOR EACH ROW WHEN (OLD.account_email IS DISTINCT FROM NEW.account_email)
    EXECUTE FUNCTION calsync_link_account_moved();

-- The lease's index: per account, in due order. It replaces the one on due_at alone, which
-- only a scan of every due row could use for per-account places.
DROP INDEX repairs_due;
CREATE INDEX repairs_due_by_account ON repairs (account_email, due_at);

-- A lease only sets leased_by and leased_until, which no index holds: with room left on
-- its page the new row version stays there (a HOT update) and no index is written, which
-- makes a poll of a few hundred leases about a third cheaper. New pages keep 30% free
-- (rows already there stay as they are until the table is rewritten).
ALTER TABLE repairs SET (fillfactor = 70);
