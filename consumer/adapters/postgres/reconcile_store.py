"""PostgreSQL for reconcile: the runs as they go (`reconcile_runs`), the group's schedule and
its one-at-a-time lock, and what a link's comparison reads of the records.

What a comparison reads is bounded by the horizon, never by the history: the activity's
bookings that end after it, in keyset pages over (end, id) (`bookings.ends_at`, kept by the
database, sql/016_reconcile_horizon.sql; the index `bookings_activity_ends` walks them), and,
per page of Google events, the few bookings and links that page names. Stranded events are
read from the horizon on too.

Queries run on the sync's pool; the schedule's advisory lock is held by a connection of its
own (`Connect`) for a whole run, so a long run keeps no pooled connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from consumer.adapters.postgres.connections import Connect
from consumer.adapters.postgres.locks import advisory_key
from consumer.adapters.postgres.repository import Repository
from consumer.domain.models import BookingEvent, LinkRow
from consumer.domain.records import (
    HorizonBooking,
    KnownBooking,
    ReconcileRunState,
    StrandedEvent,
)

log = structlog.get_logger(__name__)

_RECONCILE_LOCK = advisory_key("calsync.reconcile")
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s) AS ok"
_UNLOCK = "SELECT pg_advisory_unlock(%s)"

# --- runs -------------------------------------------------------------------------------------

_ACTIVE_LINKS = (
    "SELECT id FROM calendar_links WHERE state = 'active'"
    " AND (%(link)s::text IS NULL OR id = %(link)s) ORDER BY id"
)
_NEW_RUN = (
    "INSERT INTO reconcile_runs (trigger, by_whom, executed, link_filter, links_total)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_RUN = (
    "SELECT id, executed, link_filter, links_done, events_seen, found, repaired, report"
    " FROM reconcile_runs WHERE id = %s"
)
_PROGRESS = (
    "UPDATE reconcile_runs SET links_done = %s, events_seen = %s, found = %s, repaired = %s,"
    " report = %s, updated_at = now() WHERE id = %s"
)
_HEARTBEAT = "UPDATE reconcile_runs SET progress = %s, updated_at = now() WHERE id = %s"
_FINISH = (
    "UPDATE reconcile_runs SET finished_at = now(), updated_at = now(), error = %s WHERE id = %s"
)
_UNFINISHED = (
    "SELECT id FROM reconcile_runs WHERE finished_at IS NULL AND executed"
    " AND updated_at < now() - make_interval(secs => %s) ORDER BY id DESC LIMIT 1"
)
# The schedule: first due one interval after it is first seen, then one after each run.
_SCHEDULE_DUE = (
    "WITH seen AS (INSERT INTO schedules (name, next_at)"
    " VALUES ('reconcile', now() + make_interval(secs => %(interval)s))"
    " ON CONFLICT (name) DO NOTHING RETURNING next_at)"
    " SELECT coalesce((SELECT next_at FROM seen), (SELECT next_at FROM schedules"
    " WHERE name = 'reconcile')) <= now() AS due"
)
_SCHEDULE_NEXT = (
    "UPDATE schedules SET next_at = now() + make_interval(secs => %s) WHERE name = 'reconcile'"
)

# --- one link's comparison ------------------------------------------------------------------

_LINK_STATES = "SELECT id, state, calendar_id FROM calendar_links WHERE id = ANY(%s)"
# The activity's bookings that end after the horizon, a keyset page at a time, with the event
# the link records for each on its calendar.
_HORIZON_BOOKINGS = (
    "SELECT b.booking_id, b.event, b.ends_at, lb.google_event_id AS recorded"
    " FROM bookings b LEFT JOIN link_bookings lb ON lb.link_id = %(link)s"
    " AND lb.booking_id = b.booking_id AND lb.calendar_id = %(calendar)s"
    " AND lb.google_event_id IS NOT NULL"
    " WHERE b.activity_id = %(activity)s AND b.ends_at > %(since)s"
    " AND (b.ends_at, b.booking_id) > (%(after_end)s, %(after_id)s)"
    " ORDER BY b.ends_at, b.booking_id LIMIT %(limit)s"
)
# Bookings a page of events names (absent: no such booking), whether each ends after the
# horizon, and the event the link records for it on its calendar.
_KNOWN_BOOKINGS = (
    "SELECT b.booking_id, coalesce(b.ends_at > %(since)s, false) AS within,"
    " lb.google_event_id AS recorded FROM bookings b"
    " LEFT JOIN link_bookings lb ON lb.link_id = %(link)s AND lb.booking_id = b.booking_id"
    " AND lb.calendar_id = %(calendar)s AND lb.google_event_id IS NOT NULL"
    " WHERE b.booking_id = ANY(%(ids)s::text[])"
)
_BOOKING = "SELECT event FROM bookings WHERE booking_id = %s"
# Stranded events of bookings that end after the horizon (a booking no longer recorded
# ended long ago: retention keeps every booking that ends after the horizon).
_STRANDED = (
    "SELECT s.link_id, s.booking_id, s.calendar_id, s.google_event_id FROM stranded_events s"
    " JOIN bookings b ON b.booking_id = s.booking_id AND b.ends_at > %(since)s"
    " WHERE s.link_id = %(link)s ORDER BY s.calendar_id, s.google_event_id"
)
# Stranded events of links not active any more, with an active link of the same account
# whose token can reach them; from the horizon on, a keyset page at a time.
_STRANDED_ELSEWHERE = (
    "SELECT s.link_id, s.booking_id, s.calendar_id, s.google_event_id,"
    " (SELECT a.id FROM calendar_links a WHERE a.account_email = cl.account_email"
    "  AND a.state = 'active' ORDER BY a.id LIMIT 1) AS helper_link_id"
    " FROM stranded_events s JOIN calendar_links cl ON cl.id = s.link_id"
    " JOIN bookings b ON b.booking_id = s.booking_id AND b.ends_at > %(since)s"
    " WHERE cl.state <> 'active'"
    " AND (s.calendar_id, s.google_event_id) > (%(after_calendar)s, %(after_event)s)"
    " ORDER BY s.calendar_id, s.google_event_id LIMIT %(limit)s"
)
_UNSTRAND = "DELETE FROM stranded_events WHERE calendar_id = %s AND google_event_id = %s"


def _booking(data: Any, booking_id: str) -> BookingEvent | None:
    try:
        return BookingEvent.model_validate(data)
    except ValidationError as exc:  # stored before the contract's bounds were tightened
        log.warning("stored_booking_unreadable", booking_id=booking_id, problems=exc.error_count())
        return None


class ReconcileStore:
    """The records as reconcile reads and writes them (the service's ReconcileRecords)."""

    def __init__(self, repository: Repository, connect: Connect, page_size: int = 500) -> None:
        self._repository = repository
        self._pool = repository.pool
        self._connect = connect
        self._page_size = page_size

    # --- runs ---------------------------------------------------------------------------

    async def active_links(self, link_filter: str | None) -> list[str]:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_ACTIVE_LINKS, {"link": link_filter})).fetchall()
        return [str(r["id"]) for r in rows]

    async def new_run(
        self, trigger: str, who: str, executed: bool, link_filter: str | None, links_total: int
    ) -> int:
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(_NEW_RUN, (trigger, who, executed, link_filter, links_total))
            ).fetchone()
        assert row is not None
        return int(row["id"])

    async def run(self, run_id: int) -> ReconcileRunState | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_RUN, (run_id,))).fetchone()
        if row is None:
            return None
        return ReconcileRunState(
            id=int(row["id"]),
            executed=bool(row["executed"]),
            link_filter=row["link_filter"],
            links_done=list(row["links_done"]),
            events_seen=int(row["events_seen"]),
            found=dict(row["found"]),
            repaired=dict(row["repaired"]),
            report=list(row["report"]),
        )

    async def save_progress(
        self,
        run_id: int,
        links_done: Sequence[str],
        events_seen: int,
        found: Mapping[str, int],
        repaired: Mapping[str, int],
        report: Sequence[Mapping[str, Any]],
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                _PROGRESS,
                (
                    list(links_done),
                    events_seen,
                    Jsonb(dict(found)),
                    Jsonb(dict(repaired)),
                    Jsonb(list(report)),
                    run_id,
                ),
            )

    async def heartbeat(self, run_id: int, progress: Mapping[str, Any]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_HEARTBEAT, (Jsonb(dict(progress)), run_id))

    async def finish(self, run_id: int, error: str | None) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_FINISH, (error, run_id))

    # --- the schedule -------------------------------------------------------------------

    @asynccontextmanager
    async def schedule_turn(self) -> AsyncIterator[bool]:
        """The group's one reconcile at a time: True for the whole block when this process
        holds the lock (on a connection of its own), False when another process does."""
        async with self._connect() as conn:
            got = await (await conn.execute(_TRY_LOCK, (_RECONCILE_LOCK,))).fetchone()
            if not got or not got["ok"]:
                yield False
                return
            try:
                yield True
            finally:
                # A connection gone takes its session's lock with it: nothing to release.
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(_UNLOCK, (_RECONCILE_LOCK,))

    async def unfinished_run(self, stale_s: float) -> int | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_UNFINISHED, (stale_s,))).fetchone()
        return None if row is None else int(row["id"])

    async def schedule_due(self, interval_s: float) -> bool:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_SCHEDULE_DUE, {"interval": interval_s})).fetchone()
        return bool(row and row["due"])

    async def schedule_next(self, interval_s: float) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_SCHEDULE_NEXT, (interval_s,))

    # --- one link's comparison ------------------------------------------------------------

    async def link(self, link_id: str) -> LinkRow | None:
        return await self._repository.link(link_id)

    async def link_states(self, link_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
        if not link_ids:
            return {}
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_LINK_STATES, (list(link_ids),))).fetchall()
        return {r["id"]: (r["state"], r["calendar_id"]) for r in rows}

    async def horizon_bookings(
        self, link_id: str, activity_id: str, calendar_id: str, since: datetime
    ) -> AsyncIterator[list[HorizonBooking]]:
        """The activity's bookings that end after `since`, in pages, by (end, id)."""
        after: tuple[datetime, str] = (since, "")
        while True:
            params = {
                "link": link_id,
                "calendar": calendar_id,
                "activity": activity_id,
                "since": since,
                "after_end": after[0],
                "after_id": after[1],
                "limit": self._page_size,
            }
            async with self._pool.connection() as conn:
                rows = await (await conn.execute(_HORIZON_BOOKINGS, params)).fetchall()
            page = [
                HorizonBooking(event, r["recorded"], r["ends_at"])
                for r in rows
                if (event := _booking(r["event"], r["booking_id"])) is not None
            ]
            if page:
                yield page
            if len(rows) < self._page_size:
                return
            after = (rows[-1]["ends_at"], rows[-1]["booking_id"])

    async def known_bookings(
        self, link_id: str, calendar_id: str, booking_ids: Collection[str], since: datetime
    ) -> dict[str, KnownBooking]:
        if not booking_ids:
            return {}
        params = {"link": link_id, "calendar": calendar_id, "ids": list(booking_ids)}
        async with self._pool.connection() as conn:
            rows = await (
                await conn.execute(_KNOWN_BOOKINGS, {**params, "since": since})
            ).fetchall()
        return {
            r["booking_id"]: KnownBooking(r["booking_id"], bool(r["within"]), r["recorded"])
            for r in rows
        }

    async def latest_booking(self, booking_id: str) -> BookingEvent | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_BOOKING, (booking_id,))).fetchone()
        return None if row is None else _booking(row["event"], booking_id)

    async def stranded(self, link_id: str, since: datetime) -> list[StrandedEvent]:
        """The link's events stranded on calendars it moved away from, from the horizon on."""
        async with self._pool.connection() as conn:
            rows = await (
                await conn.execute(_STRANDED, {"link": link_id, "since": since})
            ).fetchall()
        return [StrandedEvent(**r) for r in rows]

    async def stranded_elsewhere(self, since: datetime) -> AsyncIterator[list[StrandedEvent]]:
        """Events stranded by links not active any more, from the horizon on, in pages."""
        after = ("", "")
        while True:
            params = {
                "since": since,
                "after_calendar": after[0],
                "after_event": after[1],
                "limit": self._page_size,
            }
            async with self._pool.connection() as conn:
                rows = await (await conn.execute(_STRANDED_ELSEWHERE, params)).fetchall()
            if rows:
                yield [StrandedEvent(**r) for r in rows]
            if len(rows) < self._page_size:
                return
            after = (rows[-1]["calendar_id"], rows[-1]["google_event_id"])

    async def unstrand(self, calendar_id: str, event_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_UNSTRAND, (calendar_id, event_id))
