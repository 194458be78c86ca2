"""Connecting a Google account through Google's consent: the consent URL, then Google's
redirect (the code exchanged, the account's one grant stored, its stopped links
reconnected and backfilled, a new pending link for the activity otherwise).

Every refusal is a LinkError worded for the person who asked, raised before anything is
stored, so that the stored links stay exactly as they were.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog

from consumer.domain.errors import LinkError, OAuthRefused, RefusalKind, StateRefused
from consumer.domain.models import CalendarLink, LinkState
from consumer.domain.records import CalendarInfo, GrantedAccount, StoredConnection, TakenState
from consumer.service.answers import Connected, ConnectStarted, LinkSummary
from consumer.service.links.backfill import Backfiller
from consumer.service.links.common import LinkAccess, LinkParts, check_id

log = structlog.get_logger(__name__)


class Connector:
    def __init__(self, parts: LinkParts, access: LinkAccess, backfiller: Backfiller) -> None:
        self.parts = parts
        self.access = access
        self.backfiller = backfiller

    async def start_connect(
        self, activity_id: str, login_hint: str | None = None
    ) -> ConnectStarted:
        """`login_hint`: the account Google's account chooser should offer first (a
        reconnection)."""
        activity_id = check_id("activity id", activity_id)
        settings = self.parts.settings
        if not settings.google_client_id:
            raise LinkError(
                "CALSYNC_GOOGLE_CLIENT_ID is not set", RefusalKind.NOT_CONFIGURED, "not_configured"
            )
        nonce = secrets.token_urlsafe(24)
        url, verifier, expires_at = self.parts.oauth.authorization_url(nonce, login_hint)
        await self.parts.links.save_state(nonce, activity_id, verifier, expires_at)
        return ConnectStarted(
            activity_id=activity_id,
            authorization_url=url,
            redirect_uri=settings.oauth_redirect_uri,
            expires_at=expires_at,
        )

    async def connected(self, params: dict[str, str], wait: bool) -> Connected:
        """Google's redirect. `wait=False`: a reconnection's backfill goes on in the
        background (its progress in `backfills`)."""
        taken = await self._take_state(params)
        activity_id = taken.activity_id
        granted = await self._exchange(params, taken)
        assert granted.tokens.access_token is not None
        try:
            calendars = await self.access.list_calendars(granted.tokens.access_token, granted.email)
        except LinkError as exc:
            exc.activity_id = activity_id
            raise
        pending = CalendarLink(
            id="lnk_" + secrets.token_hex(8),
            activity_id=activity_id,
            account_email=granted.email,
            calendar_id=None,
            state=LinkState.PENDING,
        )
        stored = await self._store(pending, granted, taken)
        backfill, backfill_ids = await self._catch_up(stored, granted.email, calendars, wait)
        link_ids = stored.here or [pending.id]
        return Connected(
            activity_id=activity_id,
            account_email=granted.email,
            links=[LinkSummary.of(await self.access.existing(i)) for i in link_ids],
            calendars=calendars,
            reconnected=stored.reconnected,
            backfill=backfill,
            backfill_ids=backfill_ids,
        )

    async def _take_state(self, params: dict[str, str]) -> TakenState:
        state = params.get("state")
        if not state:
            raise LinkError(
                "the redirect carries no state parameter", RefusalKind.INVALID, "state_missing"
            )
        try:
            return await self.parts.links.take_state(self.parts.oauth.read_state(state))
        except (OAuthRefused, StateRefused) as exc:
            raise LinkError(str(exc), RefusalKind.INVALID, exc.problem) from None

    async def _exchange(self, params: dict[str, str], taken: TakenState) -> GrantedAccount:
        activity_id = taken.activity_id
        if params.get("error"):
            raise LinkError(
                f"Google answered {params['error']!r}: the account owner did not grant access",
                RefusalKind.INVALID,
                "consent_denied",
                activity_id,
            )
        if not params.get("code"):
            raise LinkError(
                "the redirect carries no authorization code",
                RefusalKind.INVALID,
                "code_missing",
                activity_id,
            )
        try:
            return await asyncio.to_thread(
                self.parts.oauth.exchange, params["code"], taken.code_verifier
            )
        except OAuthRefused as exc:
            kind = (
                RefusalKind.UPSTREAM if exc.problem == "google_unreachable" else RefusalKind.INVALID
            )
            raise LinkError(str(exc), kind, exc.problem, activity_id) from None

    async def _store(
        self, pending: CalendarLink, granted: GrantedAccount, taken: TakenState
    ) -> StoredConnection:
        """One grant per Google account: what Google just granted replaces it, and every
        link of the account that Google's refusal stopped is active again, whatever its
        activity; a new link only when the activity had none of those."""
        try:
            stored = await self.parts.links.connect(pending, granted.tokens, taken.taken_at)
        except StateRefused as exc:
            raise LinkError(
                str(exc), RefusalKind.CONFLICT, exc.problem, taken.activity_id
            ) from None
        self.parts.tokens.forget(granted.email)
        if stored.created:
            log.info(
                "link_connected",
                link_id=pending.id,
                activity_id=pending.activity_id,
                account=granted.email,
            )
        return stored

    async def _catch_up(
        self, stored: StoredConnection, account: str, calendars: list[CalendarInfo], wait: bool
    ) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """Each reconnected link is backfilled: waited for (its counts), or in the
        background. (Counts and backfill ids per link.)"""
        backfill: dict[str, dict[str, int]] = {}
        backfill_ids: dict[str, int] = {}
        names = {c.id: c.name for c in calendars}
        for link_id in stored.reconnected:
            log.info("link_reconnected", link_id=link_id, account=account)
            row = await self.access.existing(link_id)
            planned = await self.backfiller.plan(
                row, names.get(row.link.calendar_id or ""), "reconnect"
            )
            backfill_ids[link_id] = planned.id
            if wait:
                backfill[link_id] = await self.backfiller.run(planned)
            else:
                self.backfiller.spawn(planned)
        return backfill, backfill_ids
