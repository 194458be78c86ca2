"""Choosing the calendar a link syncs to (then backfilling it), and importing a link from
tokens obtained elsewhere (backfilled like a choice when it comes with its calendar).

Every refusal is a LinkError worded for the person who asked, raised before anything is
stored, so that the stored links stay exactly as they were.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import structlog

from consumer.domain.errors import CalendarTaken, LinkError, RefusalKind, StateRefused
from consumer.domain.models import CalendarLink, LinkRow, LinkState, LinkTokens
from consumer.domain.records import Activation, CalendarInfo
from consumer.service.answers import Chosen, Imported, LinkSummary, ListedCalendar
from consumer.service.links.backfill import Backfiller
from consumer.service.links.common import LinkAccess, LinkParts, check_id

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Choice:
    """What a person chooses among: the link, its account's calendars, and which of them
    other live links of the activity already sync (calendar id -> link id, account);
    `will_write`: how many bookings the backfill would write once a calendar is chosen."""

    link: LinkSummary
    calendars: list[CalendarInfo]
    taken: dict[str, tuple[str, str]]
    will_write: int | None = None


@dataclass(frozen=True)
class ImportedTokens:
    """Tokens obtained elsewhere, for `import_link`."""

    refresh_token: str
    access_token: str | None
    expires_at: datetime | None


class Chooser:
    def __init__(self, parts: LinkParts, access: LinkAccess, backfiller: Backfiller) -> None:
        self.parts = parts
        self.access = access
        self.backfiller = backfiller

    async def calendars(self, link_id: str) -> list[ListedCalendar]:
        """The account's calendars, from Google, each saying whether another live link of
        the activity already syncs it (`taken`: it cannot be chosen for this link)."""
        row = await self.access.existing(link_id)
        token = await self.access.token(row)
        listed = await self.access.list_calendars(token, row.link.account_email)
        taken = await self.taken(row.link.activity_id, link_id)
        return [ListedCalendar.of(c, taken=c.id in taken) for c in listed]

    async def choice(self, link_id: str) -> Choice:
        """What the calendar choice shows: the account's calendars, from Google, those that
        other live links of the activity already sync, and what the backfill would write."""
        row = await self.access.existing(link_id)
        if row.link.state is LinkState.DISCONNECTED:
            raise LinkError(
                f"link {link_id} is disconnected: connect the account again",
                RefusalKind.CONFLICT,
                "link_disconnected",
                row.link.activity_id,
            )
        try:
            token = await self.access.token(row)
            calendars = await self.access.list_calendars(token, row.link.account_email)
        except LinkError as exc:
            exc.activity_id = row.link.activity_id
            raise
        return Choice(
            LinkSummary.of(row),
            calendars,
            await self.taken(row.link.activity_id, link_id),
            await self.backfiller.will_write(row),
        )

    async def taken(self, activity_id: str, link_id: str) -> dict[str, tuple[str, str]]:
        """Calendars that the activity's other live links sync: id -> (link, account)."""
        others = await self.parts.links.links_of_activity(activity_id)
        return {
            o.link.calendar_id: (o.link.id, o.link.account_email)
            for o in others
            if o.link.id != link_id
            and o.link.calendar_id
            and o.link.state is not LinkState.DISCONNECTED
        }

    async def choose(self, link_id: str, calendar_id: str, wait: bool) -> Chosen:
        """Choose the calendar; `wait=False`: the backfill goes on in the background."""
        try:
            active, chosen, activation = await self._activate(link_id, calendar_id)
        except LinkError as exc:
            if exc.activity_id is None:
                known = await self.parts.links.link(link_id)
                exc.activity_id = known.link.activity_id if known else None
            raise
        planned = await self.backfiller.plan(active, chosen.name, "select")
        counts: dict[str, int] | None = None
        if wait:
            counts = await self.backfiller.run(planned)
        else:
            self.backfiller.spawn(planned)
        return Chosen(
            link=LinkSummary.of(await self.access.existing(active.link.id)),
            calendar=chosen,
            merged_from=activation.merged_from,
            backfill_id=planned.id,
            backfill=counts,
        )

    async def _activate(
        self, link_id: str, calendar_id: str
    ) -> tuple[LinkRow, CalendarInfo, Activation]:
        row = await self.access.existing(link_id)
        calendar_id = check_id("calendar id", calendar_id)
        token = await self.access.token(row)
        listed = await self.access.list_calendars(token, row.link.account_email)
        chosen = {c.id: c for c in listed}.get(calendar_id)
        if chosen is None:
            raise LinkError(
                f"calendar {calendar_id!r} is not in the calendar list of "
                f"{row.link.account_email} (see: calsync links calendars {link_id})",
                RefusalKind.UNPROCESSABLE,
                "calendar_unknown",
            )
        if not chosen.writable:
            raise LinkError(
                f"calendar {chosen.name!r} ({calendar_id}) is not writable: your "
                f"access role is {chosen.access_role!r}; choose a calendar where you "
                "are writer or owner",
                RefusalKind.UNPROCESSABLE,
                "calendar_not_writable",
            )
        try:
            activation = await self.parts.links.activate(link_id, calendar_id)
        except StateRefused as exc:
            raise LinkError(str(exc), RefusalKind.CONFLICT, exc.problem) from None
        except CalendarTaken as exc:
            raise _calendar_taken(exc, row, calendar_id) from None
        active = await self.access.existing(activation.link_id)
        log.info(
            "link_activated",
            link_id=active.link.id,
            calendar_id=calendar_id,
            merged_from=activation.merged_from,
        )
        return active, chosen, activation

    async def import_link(
        self,
        activity_id: str,
        account_email: str,
        tokens: ImportedTokens,
        calendar_id: str | None,
        backfill: bool,
    ) -> Imported:
        """Register a link from tokens obtained elsewhere (migrations from another system).
        The tokens become the account's one grant (shared with its other links). With its
        calendar, the link is active and, unless `backfill` is False, backfilled like a
        chosen calendar (from the horizon on, paced, its progress in `backfills`, trigger
        'import'), waited for."""
        link = CalendarLink(
            id="lnk_" + secrets.token_hex(8),
            activity_id=check_id("activity id", activity_id),
            account_email=account_email,
            calendar_id=calendar_id,
            state=LinkState.ACTIVE if calendar_id else LinkState.PENDING,
        )
        stored = LinkTokens(tokens.refresh_token, tokens.access_token, tokens.expires_at)
        try:
            await self.parts.links.import_link(link, stored)
        except CalendarTaken as exc:
            raise LinkError(
                f"calendar_taken: calendar {calendar_id!r} already belongs to this activity's "
                f"link {exc.link_id}: one live link per calendar of an activity",
                RefusalKind.CONFLICT,
                "calendar_taken",
            ) from None
        self.parts.tokens.forget(account_email)
        if not (calendar_id and backfill):
            return Imported(link_id=link.id, backfill=None, backfill_id=None)
        planned = await self.backfiller.plan(await self.access.existing(link.id), None, "import")
        counts = await self.backfiller.run(planned)
        return Imported(link_id=link.id, backfill=counts, backfill_id=planned.id)


def _calendar_taken(exc: CalendarTaken, row: LinkRow, calendar_id: str) -> LinkError:
    fix = (
        ""
        if exc.state == LinkState.ACTIVE
        else f" (it is {exc.state}: reconnect or re-select that link instead)"
    )
    through = (
        f" (through {exc.account})" if exc.account and exc.account != row.link.account_email else ""
    )
    return LinkError(
        f"calendar_taken: calendar {calendar_id!r} of {row.link.account_email} "
        f"already belongs to this activity's link {exc.link_id}{through}{fix}: one "
        "live link per calendar of an activity, or every booking would be there twice",
        RefusalKind.CONFLICT,
        "calendar_taken",
    )
