"""PostgreSQL for retention (issue 22, point 4): the group's lock on a pass, its schedule, and
one small batch of deletions at a time.

A pass holds a session-level advisory lock on a connection of its own (`Connect`, outside
the sync's pools) for its whole length, so one process of the group prunes at a time. Every
batch is one statement in autocommit: its own short transaction, with its own statement
timeout. A DELETE takes the table's ROW EXCLUSIVE lock, which INSERTs share: the hot path's
inserts of results never wait for a pass. Rows are found through indexes (sync_results by
`recorded_at`, bookings by their key; the rest are small tables) and at most `limit` rows
are read or removed per batch, so no batch grows with the history.

What is removed, table by table (the service says when; see README "Retention"):

- `sync_results` recorded before the cutoff, oldest first;
- settled `dead_letters`: copied (or the copy refused), replayed by an operator, and that
  replay processed, before the cutoff. One waiting for an operator (never replayed, or
  replayed and not processed yet) is never pruned, however old;
- finished `reconcile_runs` (never the latest, which `calsync status` shows, nor one
  unfinished, which the next run resumes), `replays`, finished `backfills` that are not
  their link's latest (the pages read the calendar's name and the last progress from it);
- `consumer_members` not seen since the cutoff (processes gone without leaving);
- used `page_form_tokens`, `oauth_states` a day past their expiry, expired `page_sessions`,
  `page_login_failures` whose window and block are over (the pages forget these too, but
  only when someone signs in or chooses a calendar);
- `bookings` last changed before the cutoff that can no longer need an event (not live, as
  `consumer.domain.planning.belongs_on_calendar` says, or ending at or before the horizon),
  and never while a `link_bookings` row holds an event for one (that event must stay known,
  to be removed later) nor while a repair is owed for it. `link_bookings` rows stay: their
  versions keep a replayed old message from bringing a pruned booking back to life.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg

from consumer.adapters.postgres.connections import Connect, DictConnection
from consumer.adapters.postgres.locks import advisory_key
from consumer.domain.records import PrunedBatch, RetentionCutoffs

RETENTION_LOCK = advisory_key("calsync.retention")

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s) AS ok"
_UNLOCK = "SELECT pg_advisory_unlock(%s)"
_BATCH_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
# The schedule: due at once the first time it is seen (a new deployment prunes on its first
# pass), then one interval after each pass.
_SCHEDULE_DUE = (
    "WITH seen AS (INSERT INTO schedules (name, next_at) VALUES ('retention', now())"
    " ON CONFLICT (name) DO NOTHING RETURNING next_at)"
    " SELECT coalesce((SELECT next_at FROM seen), (SELECT next_at FROM schedules"
    " WHERE name = 'retention')) <= now() AS due"
)
_SCHEDULE_NEXT = (
    "UPDATE schedules SET next_at = now() + make_interval(secs => %s) WHERE name = 'retention'"
)

# sync_results, oldest first through sync_results_recorded_at: each batch starts again at the
# oldest row left (the index entries of the rows just removed are skipped, then forgotten).
_SYNC_RESULTS = (
    "WITH batch AS (SELECT id FROM sync_results WHERE recorded_at < %(before)s"
    " ORDER BY recorded_at LIMIT %(limit)s),"
    " gone AS (DELETE FROM sync_results s USING batch WHERE s.id = batch.id RETURNING 1)"
    " SELECT count(*) AS pruned FROM gone"
)


def _by_condition(table: str, condition: str) -> str:
    """At most `limit` rows of a small table meeting `condition`, removed by their ctid (the
    subquery reads them once; a row changed meanwhile has another ctid and stays)."""
    return (
        f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
        f" WHERE {condition} LIMIT %(limit)s)) RETURNING 1) SELECT count(*) AS pruned FROM gone"
    )


_BY_CONDITION = {
    "dead_letters": _by_condition(
        "dead_letters",
        "published_at IS NOT NULL AND replayed_at IS NOT NULL"
        " AND reprocessed_at IS NOT NULL AND reprocessed_at < %(before)s",
    ),
    "reconcile_runs": _by_condition(
        "reconcile_runs",
        "finished_at IS NOT NULL AND finished_at < %(before)s"
        " AND id < (SELECT max(id) FROM reconcile_runs)",
    ),
    "replays": _by_condition("replays", "at < %(before)s"),
    "backfills": _by_condition(
        "backfills",
        "finished_at IS NOT NULL AND finished_at < %(before)s AND EXISTS (SELECT 1 FROM"
        " backfills newer WHERE newer.link_id = backfills.link_id AND newer.id > backfills.id)",
    ),
    "consumer_members": _by_condition("consumer_members", "seen_at < %(before)s"),
    "page_form_tokens": _by_condition(
        "page_form_tokens", "expires_at < %(now)s - interval '1 day'"
    ),
    "page_sessions": _by_condition("page_sessions", "expires_at < %(now)s"),
    "page_login_failures": _by_condition(
        "page_login_failures",
        "first_failed_at < %(now)s - make_interval(secs => %(login_window_s)s)"
        " AND (blocked_until IS NULL OR blocked_until < %(now)s)",
    ),
    "oauth_states": _by_condition("oauth_states", "expires_at < %(now)s - interval '1 day'"),
}

# bookings, a page of `limit` keys at a time (whatever they hold, so a batch never reads
# further than that), removing those of the page that can go. A booking needs no event when
# planning's belongs_on_calendar says so: status draft or canceled, event deleted or
# canceled, or source ical. The row is checked again under its lock when the consumer
# changed it meanwhile (a newer version sets updated_at): it then stays.
_BOOKINGS = (
    "WITH page AS (SELECT booking_id FROM bookings WHERE booking_id > %(after)s"
    " ORDER BY booking_id LIMIT %(limit)s),"
    " gone AS (DELETE FROM bookings b USING page WHERE b.booking_id = page.booking_id"
    " AND b.updated_at < %(before)s"
    " AND (b.event_type IN ('booking.deleted', 'booking.canceled')"
    " OR b.event -> 'booking' ->> 'status' IN ('draft', 'canceled')"
    " OR b.event -> 'booking' ->> 'source' = 'ical'"
    " OR b.ends_at <= %(horizon)s)"
    " AND NOT EXISTS (SELECT 1 FROM link_bookings lb WHERE lb.booking_id = b.booking_id"
    " AND lb.google_event_id IS NOT NULL)"
    " AND NOT EXISTS (SELECT 1 FROM repairs r WHERE r.booking_id = b.booking_id)"
    " RETURNING 1)"
    " SELECT (SELECT count(*) FROM gone) AS pruned, (SELECT count(*) FROM page) AS read,"
    " (SELECT max(booking_id) FROM page) AS last"
)


class RetentionBatches:
    """A pass's session: the lock is held while it lives."""

    def __init__(self, conn: DictConnection) -> None:
        self._conn = conn

    async def due(self) -> bool:
        """Whether the group's schedule says a pass is due (the first time: at once)."""
        row = await (await self._conn.execute(_SCHEDULE_DUE)).fetchone()
        return bool(row and row["due"])

    async def schedule_next(self, interval_s: float) -> None:
        await self._conn.execute(_SCHEDULE_NEXT, (interval_s,))

    async def prune(
        self, table: str, cutoffs: RetentionCutoffs, limit: int, after: str | None
    ) -> PrunedBatch:
        """One batch of `table`: at most `limit` rows read or removed, in one statement."""
        params: dict[str, Any] = {
            "before": cutoffs.before,
            "horizon": cutoffs.horizon,
            "now": cutoffs.now,
            "login_window_s": cutoffs.login_window_s,
            "limit": limit,
            "after": after or "",
        }
        if table == "bookings":
            row = await self._one(_BOOKINGS, params)
            read = int(row["read"])
            return PrunedBatch(int(row["pruned"]), read == limit, row["last"])
        query = _SYNC_RESULTS if table == "sync_results" else _BY_CONDITION[table]
        pruned = int((await self._one(query, params))["pruned"])
        return PrunedBatch(pruned, pruned == limit)

    async def _one(self, query: str, params: dict[str, Any]) -> dict[str, Any]:
        row = await (await self._conn.execute(query, params)).fetchone()
        assert row is not None
        return row


class RetentionStore:
    def __init__(self, connect: Connect, batch_timeout_s: float) -> None:
        self._connect = connect
        self._batch_timeout_ms = max(1, round(batch_timeout_s * 1000))

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[RetentionBatches | None]:
        """The group's retention lock on a connection of its own: the pass's session, or
        None when another process holds it (it prunes now)."""
        async with self._connect() as conn:
            got = await (await conn.execute(_TRY_LOCK, (RETENTION_LOCK,))).fetchone()
            if not got or not got["ok"]:
                yield None
                return
            try:
                await conn.execute(_BATCH_TIMEOUT, (f"{self._batch_timeout_ms}ms",))
                yield RetentionBatches(conn)
            finally:
                # A broken session released the lock as it ended: nothing to undo then.
                with suppress(psycopg.Error):
                    await conn.execute(_UNLOCK, (RETENTION_LOCK,))
