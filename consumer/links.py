"""The link lifecycle, behind both `calsync links ...` and the HTTP API (`calsync serve`):
connect through Google's consent, choose a calendar (then backfill), disconnect, inspect.

Every refusal is a LinkError worded for the person who asked, raised before anything is
stored, so that the stored links stay exactly as they were.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from consumer.app import Services, services
from consumer.db import LinkRow, LinkTokens
from consumer.google_calendar import CalendarInfo, GoogleApiError
from consumer.link_store import CalendarTaken, LinkStore, StateRefused, link_summary
from consumer.models import CalendarLink, LinkState
from consumer.oauth import OAuthClient, OAuthRefused
from consumer.quota import QuotaPaused
from consumer.settings import Settings
from consumer.sync import google_backoff
from consumer.tokens import TokenRefreshFailed

log = structlog.get_logger(__name__)
_MAX_ID_LENGTH = 200
T = TypeVar("T")


class LinkError(Exception):
    """A refusal about a link: `status` is the HTTP status, `problem` a short name."""

    def __init__(self, message: str, status: int = 400, problem: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem


def _calendar_json(calendar: CalendarInfo) -> dict[str, Any]:
    return {"id": calendar.id, "name": calendar.name, "primary": calendar.primary,
            "writable": calendar.writable}


def _check_id(kind: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > _MAX_ID_LENGTH or any(c.isspace() for c in value):
        raise LinkError(f"{kind} must be a non-empty id without spaces (at most "
                        f"{_MAX_ID_LENGTH} characters)", 400, f"invalid_{kind.replace(' ', '_')}")
    return value


class LinkService:
    def __init__(self, svc: Services) -> None:
        self.settings = svc.settings
        self.svc = svc
        self.repository = svc.repository
        self.store = LinkStore(svc.repository, svc.cipher)
        self.oauth = OAuthClient(svc.settings, svc.cipher)

    async def _existing(self, link_id: str) -> LinkRow:
        row = await self.repository.link(link_id)
        if row is None:
            raise LinkError(f"no link {link_id!r} (see: calsync links list)", 404,
                            "link_not_found")
        return row

    # --- connect ------------------------------------------------------------------------

    async def start_connect(self, activity_id: str) -> dict[str, Any]:
        activity_id = _check_id("activity id", activity_id)
        if not self.settings.google_client_id:
            raise LinkError("CALSYNC_GOOGLE_CLIENT_ID is not set", 500, "not_configured")
        nonce = secrets.token_urlsafe(24)
        url, verifier, expires_at = self.oauth.authorization_url(nonce)
        await self.store.save_state(nonce, activity_id, verifier, expires_at)
        return {"activity_id": activity_id, "authorization_url": url,
                "redirect_uri": self.settings.oauth_redirect_uri,
                "expires_at": expires_at.isoformat()}

    async def finish_connect(self, params: dict[str, str]) -> dict[str, Any]:
        """Google's redirect: exchange the code, store the link(s), list the calendars."""
        state = params.get("state")
        if not state:
            raise LinkError("the redirect carries no state parameter", 400, "state_missing")
        try:
            activity_id, verifier = await self.store.take_state(self.oauth.read_state(state))
        except (OAuthRefused, StateRefused) as exc:
            raise LinkError(str(exc), 400, exc.problem) from None
        if params.get("error"):
            raise LinkError(f"Google answered {params['error']!r}: the account owner did not "
                            "grant access", 400, "consent_denied")
        if not params.get("code"):
            raise LinkError("the redirect carries no authorization code", 400, "code_missing")
        try:
            granted = await asyncio.to_thread(self.oauth.exchange, params["code"], verifier)
        except OAuthRefused as exc:
            status = 502 if exc.problem == "google_unreachable" else 400
            raise LinkError(str(exc), status, exc.problem) from None
        assert granted.tokens.access_token is not None
        calendars = await self._list_calendars(granted.tokens.access_token, granted.email)
        reconnected = await self.store.reconnect(activity_id, granted.email, granted.tokens)
        backfill: dict[str, Any] = {}
        if reconnected:
            link_ids = reconnected
            for link_id in reconnected:
                log.info("link_reconnected", link_id=link_id, account=granted.email)
                backfill[link_id] = await self.svc.engine.backfill(await self._existing(link_id))
        else:
            link = CalendarLink(id="lnk_" + secrets.token_hex(8), activity_id=activity_id,
                                account_email=granted.email, calendar_id=None,
                                state=LinkState.PENDING)
            await self.store.add_pending(link, granted.tokens)
            log.info("link_connected", link_id=link.id, activity_id=activity_id,
                     account=granted.email)
            link_ids = [link.id]
        return {
            "activity_id": activity_id, "account_email": granted.email,
            "links": [link_summary(await self._existing(i)) for i in link_ids],
            "reconnected": reconnected, "backfill": backfill,
            "calendars": [_calendar_json(c) for c in calendars],
        }

    # --- calendars ----------------------------------------------------------------------

    async def _google(self, account: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """An operator's Google call, paced like the sync's: it first takes a slot of the
        account's and the project's group-wide quota (ahead of queued messages: someone is
        waiting), transient failures are retried, and a 403/429 for rate limits slows that
        quota down for the whole group. Without this, removing a calendar's thousands of
        events would burst past the account's 600 calls a minute."""
        quota = self.svc.engine.quota
        async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, GoogleApiError)
                                         and e.retriable),
                wait=google_backoff(self.settings.retry_initial_s, self.settings.retry_max_s),
                stop=stop_after_attempt(6), reraise=True):
            with attempt:
                try:
                    await quota.acquire(account)
                except QuotaPaused as exc:
                    raise LinkError(f"Google said the {exc.scope}'s quota is spent: no call is "
                                    f"made for {exc.seconds:.0f}s more; try again later", 503,
                                    "quota_paused") from None
                try:
                    return await call(*args)
                except GoogleApiError as exc:
                    if exc.rate_limited:
                        await quota.refused(account, exc.reason, exc.retry_after)
                    raise
        raise AssertionError("unreachable")

    async def _list_calendars(self, token: str, email: str) -> list[CalendarInfo]:
        try:
            return await self._google(email, self.svc.google.list_calendars, token)
        except GoogleApiError as exc:
            raise LinkError(f"Google could not list the calendars of {email}: {exc}", 502,
                            "google_error") from None

    async def _token(self, row: LinkRow) -> str:
        if row.tokens is None:
            raise LinkError(f"link {row.link.id} is disconnected: connect the account again",
                            409, "link_disconnected")
        try:
            return await self.svc.tokens.access_token(row.link.id, row.tokens)
        except TokenRefreshFailed as exc:
            raise LinkError(f"Google refused the tokens of link {row.link.id} ({exc.reason}): "
                            "reconnect the account", 409, "reauth_required") from None

    async def calendars(self, link_id: str) -> list[dict[str, Any]]:
        row = await self._existing(link_id)
        token = await self._token(row)
        return [_calendar_json(c) for c in
                await self._list_calendars(token, row.link.account_email)]

    async def select(self, link_id: str, calendar_id: str) -> dict[str, Any]:
        """Choose the calendar that receives the activity's bookings, then backfill it."""
        row = await self._existing(link_id)
        calendar_id = _check_id("calendar id", calendar_id)
        token = await self._token(row)
        calendars = {c.id: c for c in await self._list_calendars(token, row.link.account_email)}
        chosen = calendars.get(calendar_id)
        if chosen is None:
            raise LinkError(f"calendar {calendar_id!r} is not in the calendar list of "
                            f"{row.link.account_email} (see: calsync links calendars {link_id})",
                            422, "calendar_unknown")
        if not chosen.writable:
            raise LinkError(f"calendar {chosen.name!r} ({calendar_id}) is not writable: your "
                            f"access role is {chosen.access_role!r}; choose a calendar where you "
                            "are writer or owner", 422, "calendar_not_writable")
        try:
            activation = await self.store.activate(link_id, calendar_id)
        except CalendarTaken as exc:
            fix = ("" if exc.state == LinkState.ACTIVE else
                   f" (it is {exc.state}: reconnect or re-select that link instead)")
            raise LinkError(f"calendar {calendar_id!r} of {row.link.account_email} already "
                            f"belongs to this activity's link {exc.link_id}{fix}", 409,
                            "calendar_taken") from None
        active = await self._existing(activation.link_id)
        log.info("link_activated", link_id=active.link.id, calendar_id=calendar_id,
                 merged_from=activation.merged_from)
        backfill = await self.svc.engine.backfill(active)
        return {"link": link_summary(await self._existing(active.link.id)),
                "calendar": _calendar_json(chosen), "merged_from": activation.merged_from,
                "backfill": backfill}

    # --- disconnect ---------------------------------------------------------------------

    async def disconnect(self, link_id: str, remove_events: bool) -> dict[str, Any]:
        row = await self._existing(link_id)
        if row.link.state is LinkState.DISCONNECTED and row.tokens is None:
            raise LinkError(f"link {link_id} is already disconnected", 409, "link_disconnected")
        token = None
        if remove_events and row.link.calendar_id and row.tokens is not None:
            token = await self._token(row)  # refused: nothing changes
        await self.store.mark_disconnected(link_id, "disconnected")
        self.svc.engine.halted.add(link_id)
        if not await self.store.wait_for_in_flight(link_id, self.settings.shutdown_grace_s):
            log.warning("disconnect_in_flight_still_running", link_id=link_id)
        removed = await self._remove_events(row, token) if token is not None else 0
        revoked, shared_with = await self._revoke(row)
        reason = ("disconnected; " + (f"{removed} events removed" if remove_events
                                      else "events kept on the calendar"))
        await self.store.wipe_tokens(link_id, reason)
        self.svc.tokens.forget(link_id)
        log.info("link_disconnected", link_id=link_id, events_removed=removed,
                 token_revoked=revoked)
        return {"link": link_summary(await self._existing(link_id)),
                "events_removed": removed, "events_kept": not remove_events,
                "token_revoked": revoked, "token_still_used_by": shared_with}

    async def _remove_events(self, row: LinkRow, token: str) -> int:
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        google, account = self.svc.google, row.link.account_email
        try:
            events: list[dict[str, Any]] = await self._google(
                account, google.list_link_events, token, calendar_id, row.link.id)

            async def delete(event_id: str) -> None:
                try:
                    await self._google(account, google.delete_event, token, calendar_id,
                                       event_id)
                except GoogleApiError as exc:
                    if not exc.gone:
                        raise

            await asyncio.gather(*(delete(e["id"]) for e in events))
        except GoogleApiError as exc:
            raise LinkError(f"the link is disconnected, but its events could not all be removed "
                            f"({exc}): run the disconnect again", 502, "google_error") from None
        await self.store.forget_events(row.link.id)
        return len(events)

    async def _revoke(self, row: LinkRow) -> tuple[bool, list[str]]:
        """Revoke at Google, unless other links still use the account: Google revokes the
        whole grant of an account, whichever of its tokens is revoked."""
        if row.tokens is None:
            return False, []
        others = await self.store.other_live_links_of_account(row.link.account_email,
                                                              row.link.id)
        if others:
            return False, others
        try:
            return await asyncio.to_thread(self.oauth.revoke, row.tokens.refresh_token), []
        except OAuthRefused as exc:
            raise LinkError(f"the link is disconnected, but {exc}: run the disconnect again",
                            502, exc.problem) from None

    # --- inspect, import ----------------------------------------------------------------

    async def get(self, link_id: str) -> dict[str, Any]:
        return link_summary(await self._existing(link_id))

    async def list(self) -> list[dict[str, Any]]:
        return [link_summary(row) for row in await self.repository.all_links()]

    async def import_link(self, *, activity_id: str, account_email: str, refresh_token: str,
                          access_token: str | None, expires_at: datetime | None,
                          calendar_id: str | None) -> str:
        """Register a link from tokens obtained elsewhere (migrations from another system)."""
        link = CalendarLink(id="lnk_" + secrets.token_hex(8),
                            activity_id=_check_id("activity id", activity_id),
                            account_email=account_email, calendar_id=calendar_id,
                            state=LinkState.ACTIVE if calendar_id else LinkState.PENDING)
        await self.repository.insert_link(link, LinkTokens(refresh_token, access_token,
                                                           expires_at))
        return link.id


@asynccontextmanager
async def link_service(settings: Settings) -> AsyncIterator[LinkService]:
    async with services(settings, pool_size=4) as svc:
        yield LinkService(svc)
