"""The link lifecycle, behind both `calsync links ...` and the HTTP API (`calsync serve`):
connect through Google's consent (`connect`), choose a calendar or import a link
(`choose`), backfill it (`backfill`), disconnect (`disconnect`), inspect (`inspection`).

`LinkService` is the one face the entrypoints use: it hands each call to the job that does
it. Every job works through the ports in `LinkParts` (built in consumer.bootstrap), never
through an adapter's class.
"""

from __future__ import annotations

import builtins
from datetime import datetime

from consumer.domain.records import Backfill
from consumer.service.answers import (
    ActivitySummary,
    Chosen,
    Connected,
    ConnectStarted,
    Disconnected,
    Imported,
    LinkSummary,
    ListedCalendar,
)
from consumer.service.context import Services
from consumer.service.links.backfill import Backfiller
from consumer.service.links.choose import Choice, Chooser, ImportedTokens
from consumer.service.links.common import LinkAccess, LinkParts
from consumer.service.links.connect import Connector
from consumer.service.links.disconnect import Disconnector
from consumer.service.links.inspection import Inspector, LinkHealth
from consumer.settings import Settings

__all__ = ["Choice", "LinkHealth", "LinkParts", "LinkService"]


class LinkService:
    """`svc`: what the process was built with (the entrypoints' pages read its key ring and
    pool through it); the jobs see only `parts`."""

    def __init__(self, svc: Services, parts: LinkParts) -> None:
        self.svc = svc
        self.parts = parts
        self.settings: Settings = parts.settings
        access = LinkAccess(parts)
        self.backfiller = Backfiller(parts)
        self.connector = Connector(parts, access, self.backfiller)
        self.chooser = Chooser(parts, access, self.backfiller)
        self.disconnector = Disconnector(parts, access)
        self.inspector = Inspector(parts, access)

    async def close(self) -> None:
        """Let background backfills finish (up to the shutdown grace), then stop them."""
        await self.backfiller.close()

    # --- connect ------------------------------------------------------------------------

    async def start_connect(
        self, activity_id: str, login_hint: str | None = None
    ) -> ConnectStarted:
        return await self.connector.start_connect(activity_id, login_hint)

    async def finish_connect(self, params: dict[str, str]) -> Connected:
        """Google's redirect: exchange the code, store the link(s), list the calendars;
        a reconnection's backfill is waited for."""
        return await self.connector.connected(params, wait=True)

    async def connected(self, params: dict[str, str], wait: bool) -> Connected:
        return await self.connector.connected(params, wait)

    # --- choose, import -------------------------------------------------------------------

    async def calendars(self, link_id: str) -> builtins.list[ListedCalendar]:
        return await self.chooser.calendars(link_id)

    async def choice(self, link_id: str) -> Choice:
        return await self.chooser.choice(link_id)

    async def taken(self, activity_id: str, link_id: str) -> dict[str, tuple[str, str]]:
        return await self.chooser.taken(activity_id, link_id)

    async def use_form_token(self, jti: str, link_id: str, expires_at: datetime) -> bool:
        """Record a page form's single use: False if it was used before."""
        return await self.parts.links.use_form_token(jti, link_id, expires_at)

    async def select(self, link_id: str, calendar_id: str) -> Chosen:
        """Choose the calendar that receives the activity's bookings, then backfill it."""
        return await self.chooser.choose(link_id, calendar_id, wait=True)

    async def choose(self, link_id: str, calendar_id: str, wait: bool) -> Chosen:
        """Choose the calendar; `wait=False`: the backfill goes on in the background."""
        return await self.chooser.choose(link_id, calendar_id, wait)

    async def import_link(
        self,
        *,
        activity_id: str,
        account_email: str,
        refresh_token: str,
        access_token: str | None,
        expires_at: datetime | None,
        calendar_id: str | None,
        backfill: bool = True,
    ) -> str:
        """Register a link from tokens obtained elsewhere: its id. With its calendar it is
        active and backfilled like a chosen calendar (waited for), unless `backfill` is
        False."""
        imported = await self.imported(
            activity_id=activity_id,
            account_email=account_email,
            refresh_token=refresh_token,
            access_token=access_token,
            expires_at=expires_at,
            calendar_id=calendar_id,
            backfill=backfill,
        )
        return imported.link_id

    async def imported(
        self,
        *,
        activity_id: str,
        account_email: str,
        refresh_token: str,
        access_token: str | None,
        expires_at: datetime | None,
        calendar_id: str | None,
        backfill: bool = True,
    ) -> Imported:
        """`import_link`, answering the backfill's counts too."""
        tokens = ImportedTokens(refresh_token, access_token, expires_at)
        return await self.chooser.import_link(
            activity_id, account_email, tokens, calendar_id, backfill
        )

    # --- backfill -------------------------------------------------------------------------

    async def backfills(self, ids: builtins.list[int]) -> builtins.list[Backfill]:
        return await self.backfiller.backfills(ids)

    async def latest_backfills(self, link_ids: builtins.list[str]) -> dict[str, Backfill]:
        return await self.backfiller.latest(link_ids)

    async def will_write(self, link_id: str, calendar_id: str | None = None) -> int:
        """How many bookings a backfill would write if `calendar_id` (default: the link's
        own, or a first one) were chosen now: those ending after the horizon whose latest
        state is not on it yet."""
        return await self.backfiller.will_write(
            await self.chooser.access.existing(link_id), calendar_id
        )

    # --- disconnect ---------------------------------------------------------------------

    async def disconnect(self, link_id: str, remove_events: bool) -> Disconnected:
        return await self.disconnector.disconnect(link_id, remove_events)

    # --- inspect --------------------------------------------------------------------------

    async def get(self, link_id: str) -> LinkSummary:
        return await self.inspector.get(link_id)

    async def find(self, link_id: str) -> LinkSummary | None:
        return await self.inspector.find(link_id)

    async def list(self) -> builtins.list[LinkSummary]:
        return await self.inspector.all()

    async def activities(self) -> builtins.list[ActivitySummary]:
        return await self.inspector.activities()

    async def health(self, activity_id: str) -> builtins.list[LinkHealth]:
        """The activity's links as the links page shows them (no Google call)."""
        return await self.inspector.health(activity_id)
