"""PostgreSQL of backfills: the bookings a backfill reads, in keyset pages bounded by the
horizon, and its record in `backfills` (progress as it goes, for pages, status and CLI).

A page is read straight from an index (`bookings_activity_ends`, sql/016 and sql/023): the
activity's bookings ending after the horizon, ordered by (end, booking id), however many past
bookings the activity has; the memory of a backfill is one page, never the history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from consumer.adapters.postgres.repository import Pool
from consumer.domain.models import BookingEvent, RecordedEvent
from consumer.domain.records import Backfill, BookingPosition, BookingsPage, HeldBooking

log = structlog.get_logger(__name__)

_HELD = "lb.applied_version, lb.google_event_id, lb.generation, lb.calendar_id"
# The activity's bookings ending after the horizon, with what the link holds for each.
_ACTIVITY_PAGE = (
    f"SELECT b.booking_id, b.ends_at AS ends_at, b.event, {_HELD}"
    " FROM bookings b"
    " LEFT JOIN link_bookings lb ON lb.link_id = %(link)s AND lb.booking_id = b.booking_id"
    " WHERE b.activity_id = %(activity)s AND b.ends_at > %(since)s"
    " AND (b.ends_at, b.booking_id) > (%(after_end)s, %(after_id)s)"
    " ORDER BY b.ends_at, b.booking_id LIMIT %(limit)s"
)
# Bookings ending after the horizon whose event is still on the link's calendars although
# they moved to another activity since (they must leave); by the link's own key.
_MOVED_AWAY_PAGE = (
    f"SELECT b.booking_id, b.event, {_HELD}"
    " FROM link_bookings lb JOIN bookings b ON b.booking_id = lb.booking_id"
    " WHERE lb.link_id = %(link)s AND lb.booking_id > %(after_id)s"
    " AND lb.google_event_id IS NOT NULL AND b.activity_id <> %(activity)s"
    " AND b.ends_at > %(since)s"
    " ORDER BY lb.booking_id LIMIT %(limit)s"
)
_MARK_BACKFILLED = "UPDATE calendar_links SET backfilled_at = now() WHERE id = %s"
_START_BACKFILL = (
    "INSERT INTO backfills (link_id, calendar_id, calendar_name, trigger, horizon)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_BACKFILL_TOTAL = "UPDATE backfills SET total = %s, updated_at = now() WHERE id = %s"
_BACKFILL_PROGRESS = "UPDATE backfills SET done = %s, counts = %s, updated_at = now() WHERE id = %s"
_FINISH_BACKFILL = (
    "UPDATE backfills SET done = %s, counts = %s, error = %s, updated_at = now(),"
    " finished_at = now() WHERE id = %s AND finished_at IS NULL"
)
_BACKFILL_COLUMNS = (
    "id, link_id, calendar_id, calendar_name, trigger, total, done, counts, started_at,"
    " updated_at, finished_at, error, now() AS now, horizon"
)
_BACKFILLS = f"SELECT {_BACKFILL_COLUMNS} FROM backfills WHERE id = ANY(%s) ORDER BY id"
_LATEST_BACKFILLS = (
    f"SELECT DISTINCT ON (link_id) {_BACKFILL_COLUMNS} FROM backfills"
    " WHERE link_id = ANY(%s) ORDER BY link_id, id DESC"
)
# The earliest position: every booking within the horizon comes after it.
_FIRST_ID = ""


class BackfillStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- the bookings a backfill reads ----------------------------------------------------

    async def activity_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage:
        """A page of the activity's bookings that end after `since`, after `after`."""
        params = {
            "link": link_id,
            "activity": activity_id,
            "since": since,
            "after_end": after.end if after is not None and after.end is not None else since,
            "after_id": after.booking_id if after is not None else _FIRST_ID,
            "limit": limit,
        }
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_ACTIVITY_PAGE, params)).fetchall()
        last = BookingPosition(rows[-1]["booking_id"], rows[-1]["ends_at"]) if rows else None
        return _page(rows, last if len(rows) == limit else None)

    async def moved_away_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage:
        """A page of the bookings ending after `since` that moved to another activity while
        the link's calendars still hold their event, after `after`."""
        params = {
            "link": link_id,
            "activity": activity_id,
            "since": since,
            "after_id": after.booking_id if after is not None else _FIRST_ID,
            "limit": limit,
        }
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_MOVED_AWAY_PAGE, params)).fetchall()
        last = BookingPosition(rows[-1]["booking_id"]) if rows else None
        return _page(rows, last if len(rows) == limit else None)

    async def mark_backfilled(self, link_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_MARK_BACKFILLED, (link_id,))

    # --- the record of a backfill -----------------------------------------------------------

    async def start_backfill(
        self,
        link_id: str,
        calendar_id: str,
        calendar_name: str | None,
        trigger: str,
        horizon: datetime,
    ) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                _START_BACKFILL, (link_id, calendar_id, calendar_name, trigger, horizon)
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["id"])

    async def backfill_total(self, backfill_id: int, total: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_BACKFILL_TOTAL, (total, backfill_id))

    async def backfill_progress(
        self, backfill_id: int, done: int, counts: Mapping[str, int]
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_BACKFILL_PROGRESS, (done, json.dumps(counts), backfill_id))

    async def finish_backfill(
        self, backfill_id: int, done: int, counts: Mapping[str, int], error: str | None
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FINISH_BACKFILL, (done, json.dumps(counts), error, backfill_id))

    async def backfills(self, ids: list[int]) -> list[Backfill]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_BACKFILLS, (ids,))).fetchall()
        return [_backfill(row) for row in rows]

    async def latest_backfills(self, link_ids: list[str]) -> dict[str, Backfill]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_LATEST_BACKFILLS, (link_ids,))).fetchall()
        return {row["link_id"]: _backfill(row) for row in rows}


def _page(rows: list[dict[str, Any]], next_position: BookingPosition | None) -> BookingsPage:
    held: list[HeldBooking] = []
    for row in rows:
        try:
            event = BookingEvent.model_validate(row["event"])
        except ValidationError as exc:  # stored before the contract's bounds were tightened
            log.warning(
                "stored_booking_unreadable",
                booking_id=row["booking_id"],
                problems=exc.error_count(),
            )
            continue
        recorded = None
        if row["applied_version"] is not None or (row["generation"] or 0) > 0:
            recorded = RecordedEvent(
                applied_version=row["applied_version"],
                google_event_id=row["google_event_id"],
                generation=row["generation"],
                calendar_id=row["calendar_id"],
            )
        held.append(HeldBooking(event, recorded))
    return BookingsPage(held, next_position)


def _backfill(row: Mapping[str, Any]) -> Backfill:
    return Backfill(
        id=row["id"],
        link_id=row["link_id"],
        calendar_id=row["calendar_id"],
        calendar_name=row["calendar_name"],
        trigger=row["trigger"],
        total=row["total"],
        done=row["done"],
        counts=dict(row["counts"] or {}),
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        now=row["now"],
        horizon=row["horizon"],
    )
