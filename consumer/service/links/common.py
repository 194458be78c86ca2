"""What every job of the link lifecycle shares: its ports (`LinkParts`, built in
consumer.bootstrap), the ids it accepts, and an operator's access to a link at Google
(the link as stored, its access token, the account's calendars, a call through the one
call policy)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from consumer.domain.errors import (
    GoogleApiError,
    LinkError,
    QuotaPaused,
    RefusalKind,
    TokenRefreshFailed,
)
from consumer.domain.models import LinkRow
from consumer.domain.records import CalendarInfo
from consumer.service.calls import GoogleCalls
from consumer.service.ports import (
    AccessTokens,
    BackfillRecords,
    LinkCalendars,
    LinkHealthRecords,
    LinkRecords,
    OAuthFlow,
    RepairLedger,
)
from consumer.service.sync import SyncEngine
from consumer.settings import Settings

MAX_ID_LENGTH = 200
T = TypeVar("T")


@dataclass(frozen=True)
class LinkParts:
    """The ports of the link lifecycle, and the services it works through."""

    settings: Settings
    links: LinkRecords
    backfills: BackfillRecords
    health: LinkHealthRecords
    oauth: OAuthFlow
    google: LinkCalendars
    tokens: AccessTokens
    calls: GoogleCalls  # the one Google-call policy: an operator's calls go through it
    engine: SyncEngine  # every write of a booking's event goes through it
    repairs: RepairLedger
    deployment_id: str  # whose events are ours


def check_id(kind: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_ID_LENGTH or any(c.isspace() for c in value):
        raise LinkError(
            f"{kind} must be a non-empty id without spaces (at most {MAX_ID_LENGTH} characters)",
            RefusalKind.INVALID,
            f"invalid_{kind.replace(' ', '_')}",
        )
    return value


class LinkAccess:
    """A link as stored, and an operator's calls at Google for it."""

    def __init__(self, parts: LinkParts) -> None:
        self.parts = parts

    async def existing(self, link_id: str) -> LinkRow:
        row = await self.parts.links.link(link_id)
        if row is None:
            raise LinkError(
                f"no link {link_id!r} (see: calsync links list)",
                RefusalKind.NOT_FOUND,
                "link_not_found",
            )
        return row

    async def google(self, account: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """An operator's Google call, through the one call policy (consumer.service.calls):
        a slot of the account's and the project's group-wide quota first (ahead of queued
        messages: someone is waiting), transient failures retried, rate limits slowing the
        account down for the whole group. Without it, removing a calendar's thousands of
        events would burst past the account's 600 calls a minute."""
        try:
            return await self.parts.calls.operator(account, lambda: call(*args))
        except QuotaPaused as exc:
            raise LinkError(
                f"Google said the {exc.scope}'s quota is spent: no call is "
                f"made for {exc.seconds:.0f}s more; try again later",
                RefusalKind.UNAVAILABLE,
                "quota_paused",
            ) from None

    async def list_calendars(self, token: str, email: str) -> list[CalendarInfo]:
        try:
            return await self.google(email, self.parts.google.list_calendars, token)
        except GoogleApiError as exc:
            raise LinkError(
                f"Google could not list the calendars of {email}: {exc}",
                RefusalKind.UPSTREAM,
                "google_error",
            ) from None

    async def token(self, row: LinkRow) -> str:
        if row.tokens is None:
            raise LinkError(
                f"link {row.link.id} is disconnected: connect the account again",
                RefusalKind.CONFLICT,
                "link_disconnected",
            )
        account = row.link.account_email
        try:
            return await self.parts.tokens.access_token(account, row.tokens)
        except TokenRefreshFailed as exc:
            if not exc.retriable:  # the account's links stop too, as the sync's would
                await self.parts.engine.grant_refused(
                    account, f"token refresh refused: {exc.explained}"
                )
            raise LinkError(
                f"Google refused the tokens of link {row.link.id} ({exc.explained}): "
                "reconnect the account",
                RefusalKind.CONFLICT,
                "reauth_required",
            ) from None
