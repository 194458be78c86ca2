"""Link operations behind `calsync links`: import, list calendars, select, list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from consumer.db import LinkRow, LinkTokens, Repository
from consumer.google_calendar import CalendarInfo, GoogleApiError, GoogleCalendar
from consumer.models import CalendarLink, LinkState
from consumer.settings import Settings
from consumer.tokens import TokenProvider, TokenRefreshFailed


class LinkError(Exception):
    """A refusal about a link, worded for the person who asked."""


@asynccontextmanager
async def _repository(settings: Settings) -> AsyncIterator[Repository]:
    repository = Repository(Repository.pool_for(settings.database_url, 2, "cli"))
    await repository.pool.open(wait=True, timeout=30)
    try:
        yield repository
    finally:
        await repository.pool.close()


async def import_link(settings: Settings, *, link_id: str, activity_id: str, account_email: str,
                      refresh_token: str, access_token: str | None, expires_at: datetime | None,
                      calendar_id: str | None) -> str:
    link = CalendarLink(id=link_id, activity_id=activity_id, account_email=account_email,
                        calendar_id=calendar_id,
                        state=LinkState.ACTIVE if calendar_id else LinkState.PENDING)
    async with _repository(settings) as repository:
        await repository.insert_link(link, LinkTokens(refresh_token, access_token, expires_at))
    return link_id


async def _existing(repository: Repository, link_id: str) -> LinkRow:
    row = await repository.link(link_id)
    if row is None:
        raise LinkError(f"no link {link_id!r} (see: calsync links list)")
    return row


async def _calendars(settings: Settings, repository: Repository, row: LinkRow
                     ) -> list[CalendarInfo]:
    tokens = TokenProvider(settings, repository)
    google = GoogleCalendar(settings)
    try:
        token = await tokens.access_token(row.link.id, row.tokens)
        return await google.list_calendars(token)
    except TokenRefreshFailed as exc:
        raise LinkError(f"Google refused the tokens of link {row.link.id} ({exc.reason}): "
                        "reconnect the account") from None
    except GoogleApiError as exc:
        raise LinkError(f"Google could not list the calendars of {row.link.account_email}: "
                        f"{exc}") from None
    finally:
        google.close()
        tokens.close()


async def list_calendars(settings: Settings, link_id: str) -> list[CalendarInfo]:
    async with _repository(settings) as repository:
        return await _calendars(settings, repository, await _existing(repository, link_id))


async def select_calendar(settings: Settings, link_id: str, calendar_id: str) -> CalendarInfo:
    async with _repository(settings) as repository:
        row = await _existing(repository, link_id)
        calendars = {c.id: c for c in await _calendars(settings, repository, row)}
        chosen = calendars.get(calendar_id)
        if chosen is None:
            raise LinkError(f"calendar {calendar_id!r} is not in the calendar list of "
                            f"{row.link.account_email} (see: calsync links calendars {link_id})")
        if not chosen.writable:
            raise LinkError(f"calendar {chosen.name!r} ({calendar_id}) is not writable: your "
                            f"access role is {chosen.access_role!r}; choose a calendar where you "
                            "are writer or owner")
        await repository.select_calendar(link_id, calendar_id)
        return chosen


async def list_links(settings: Settings) -> list[dict[str, Any]]:
    async with _repository(settings) as repository:
        return [{
            "id": r.link.id,
            "activity_id": r.link.activity_id,
            "account_email": r.link.account_email,
            "calendar_id": r.link.calendar_id,
            "state": r.link.state.value,
            "state_reason": r.state_reason,
            "state_changed_at": r.state_changed_at.isoformat(),
            "created_at": r.created_at.isoformat(),
        } for r in await repository.all_links()]
