"""Inspecting links (no Google call): one, all, the activities that have links, and each
link's health as the links page shows it."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.domain.models import LinkState
from consumer.domain.records import Backfill, LastResult
from consumer.service.answers import ActivitySummary, LinkSummary
from consumer.service.links.common import LinkAccess, LinkParts


@dataclass(frozen=True)
class LinkHealth:
    """One link as the links page shows it."""

    link: LinkSummary
    calendar_name: str | None
    events_synced: int
    last_result: LastResult | None
    repair_backlog: int
    backfill: Backfill | None


class Inspector:
    def __init__(self, parts: LinkParts, access: LinkAccess) -> None:
        self.parts = parts
        self.access = access

    async def get(self, link_id: str) -> LinkSummary:
        return LinkSummary.of(await self.access.existing(link_id))

    async def find(self, link_id: str) -> LinkSummary | None:
        row = await self.parts.links.link(link_id)
        return LinkSummary.of(row) if row else None

    async def all(self) -> list[LinkSummary]:
        return [LinkSummary.of(row) for row in await self.parts.links.all_links()]

    async def activities(self) -> list[ActivitySummary]:
        return [ActivitySummary(**row) for row in await self.parts.health.activities()]

    async def health(self, activity_id: str) -> list[LinkHealth]:
        """The activity's links as the links page shows them (no Google call)."""
        rows = await self.parts.links.links_of_activity(activity_id)
        rows.sort(key=lambda r: (r.link.state is LinkState.DISCONNECTED, r.created_at))
        ids = [r.link.id for r in rows]
        health = self.parts.health
        synced = await health.events_synced(ids)
        last = await health.last_results(ids)
        backlog = await health.repair_backlog(ids)
        backfills = await self.parts.backfills.latest_backfills(ids)
        names = await health.calendar_names(
            {r.link.id: r.link.calendar_id for r in rows if r.link.calendar_id}
        )
        return [
            LinkHealth(
                link=LinkSummary.of(r),
                calendar_name=names.get(r.link.id),
                events_synced=synced.get(r.link.id, 0),
                last_result=last.get(r.link.id),
                repair_backlog=backlog.get(r.link.id, 0),
                backfill=backfills.get(r.link.id),
            )
            for r in rows
        ]
