"""PostgreSQL of what the links page shows of each link (no Google call): events synced,
its latest result, its repair backlog, the name its calendar had when chosen, and the
activities that have links."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumer.adapters.postgres.repository import Pool
from consumer.domain.records import LastResult

_CALENDAR_NAMES = (
    "SELECT DISTINCT ON (b.link_id) b.link_id, b.calendar_name FROM backfills b"
    " JOIN unnest(%s::text[], %s::text[]) AS l(link_id, calendar_id)"
    " ON b.link_id = l.link_id AND b.calendar_id = l.calendar_id"
    " WHERE b.calendar_name IS NOT NULL ORDER BY b.link_id, b.id DESC"
)
_EVENTS_SYNCED = (
    "SELECT link_id, count(*) AS n FROM link_bookings WHERE link_id = ANY(%s)"
    " AND google_event_id IS NOT NULL GROUP BY link_id"
)
_LAST_RESULTS = (
    "SELECT l.id AS link_id, r.operation, r.outcome, r.reason, r.source, r.booking_id,"
    " r.recorded_at FROM unnest(%s::text[]) AS l(id) CROSS JOIN LATERAL ("
    " SELECT operation, outcome, reason, source, booking_id, recorded_at FROM sync_results"
    " WHERE link_id = l.id ORDER BY id DESC LIMIT 1) AS r"
)
_REPAIR_BACKLOG = (
    "SELECT link_id, count(*) AS n FROM repairs WHERE link_id = ANY(%s) GROUP BY link_id"
)
_ACTIVITIES = (
    "SELECT activity_id, count(*) FILTER (WHERE state <> 'disconnected') AS live,"
    " count(*) FILTER (WHERE state IN ('reauth_required', 'calendar_unavailable'))"
    " AS needing_action FROM calendar_links GROUP BY activity_id ORDER BY activity_id"
)


class LinkHealthStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def events_synced(self, link_ids: list[str]) -> dict[str, int]:
        """Events on each link's calendar that the link put there (by our records)."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_EVENTS_SYNCED, (link_ids,))).fetchall()
        return {row["link_id"]: int(row["n"]) for row in rows}

    async def last_results(self, link_ids: list[str]) -> dict[str, LastResult]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_LAST_RESULTS, (link_ids,))).fetchall()
        return {
            row["link_id"]: LastResult(
                row["operation"],
                row["outcome"],
                row["reason"],
                row["source"],
                row["booking_id"],
                row["recorded_at"],
            )
            for row in rows
        }

    async def repair_backlog(self, link_ids: list[str]) -> dict[str, int]:
        """(Link, booking) pairs waiting for a repair, per link."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_REPAIR_BACKLOG, (link_ids,))).fetchall()
        return {row["link_id"]: int(row["n"]) for row in rows}

    async def activities(self) -> list[dict[str, Any]]:
        """Every activity with links: how many are live, how many need someone."""
        async with self.pool.connection() as conn:
            return list(await (await conn.execute(_ACTIVITIES)).fetchall())

    async def calendar_names(self, calendars: Mapping[str, str]) -> dict[str, str]:
        """The name each link's calendar (link id -> calendar id) had when it was chosen,
        where it was recorded."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(_CALENDAR_NAMES, (list(calendars), list(calendars.values())))
            ).fetchall()
        return {row["link_id"]: row["calendar_name"] for row in rows}
