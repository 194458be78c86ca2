"""Disconnecting a link: fenced first (no write of it can reach Google once it returns),
its events removed when asked, its account's grant revoked at Google when no other link
uses it, then finished."""

from __future__ import annotations

import asyncio

import structlog

from consumer.domain.drift import foreign
from consumer.domain.errors import GoogleApiError, LinkError, OAuthRefused, RefusalKind
from consumer.domain.models import LinkRow, LinkState
from consumer.service.answers import Disconnected, LinkSummary
from consumer.service.links.common import LinkAccess, LinkParts

log = structlog.get_logger(__name__)


class Disconnector:
    def __init__(self, parts: LinkParts, access: LinkAccess) -> None:
        self.parts = parts
        self.access = access

    async def disconnect(self, link_id: str, remove_events: bool) -> Disconnected:
        row = await self.access.existing(link_id)
        if row.link.state is LinkState.DISCONNECTED and row.disconnect_finished_at is not None:
            raise LinkError(
                f"link {link_id} is already disconnected", RefusalKind.CONFLICT, "link_disconnected"
            )
        token = None
        if remove_events and row.link.calendar_id and row.tokens is not None:
            token = await self.access.token(row)  # refused: nothing changes
        removed = await self._fence_and_remove(row, token)
        revoked, shared_with = await self._revoke(row)
        reason = "disconnected; " + (
            f"{removed} events removed" if remove_events else "events kept on the calendar"
        )
        # Only now may its calendar be chosen again (by a revival of this link).
        await self.parts.links.finish_disconnect(link_id, reason)
        if revoked:
            self.parts.tokens.forget(row.link.account_email)
        log.info(
            "link_disconnected", link_id=link_id, events_removed=removed, token_revoked=revoked
        )
        return Disconnected(
            link=LinkSummary.of(await self.access.existing(link_id)),
            events_removed=removed,
            events_kept=not remove_events,
            token_revoked=revoked,
            token_still_used_by=shared_with,
        )

    async def _fence_and_remove(self, row: LinkRow, token: str | None) -> int:
        """Mark the link disconnected, wait until no work of it is in flight anywhere, drop
        what it was owed, and (with a token) remove its events: how many were removed."""
        link_id, links, settings = row.link.id, self.parts.links, self.parts.settings
        since = await links.mark_disconnected(link_id, "disconnected")
        self.parts.engine.halt(link_id, since)
        # The fence: every consumer stops the link's work before its next Google call (told
        # through NOTIFY), and each claim still held is waited for. Once none is left, no
        # write of the link can reach Google: what is on the calendar now is all there is.
        fenced = await links.wait_for_in_flight(link_id, settings.shutdown_grace_s)
        if not fenced:
            log.warning("disconnect_in_flight_still_running", link_id=link_id)
        await links.drop_repairs(link_id)
        if token is None:
            return 0
        removed = await self._remove_events(row, token)
        if not fenced:
            # Work still in flight at the first look (a consumer busy, a call at Google):
            # waited for once more, and whatever it wrote meanwhile is removed too.
            if not await links.wait_for_in_flight(link_id, 2 * settings.google_timeout_s + 5):
                log.warning("disconnect_not_fenced", link_id=link_id)
            removed += await self._remove_events(row, token)
        return removed

    async def _remove_events(self, row: LinkRow, token: str) -> int:
        """Every event of the link that can be reached, wherever it is: on its calendar
        (found by its private `link_id` property, and this deployment's: untagged, or
        tagged with our deployment id), recorded on another one (a move under
        way), or stranded on one it moved away from. One that cannot be reached (the
        calendar gone or read-only) is recorded as stranded, for a reconcile to remove once
        it can; only faults that pass make the disconnect say to run it again."""
        google, account = self.parts.google, row.link.account_email
        removed = 0
        left: list[tuple[str, str, str, str]] = []  # (booking, calendar, event, why)

        async def delete(on: str, event_id: str, booking_id: str) -> None:
            nonlocal removed
            try:
                await self.access.google(account, google.delete_event, token, on, event_id)
            except GoogleApiError as exc:
                if exc.retriable:
                    raise
                if not exc.gone:
                    left.append((booking_id, on, event_id, str(exc)[:300]))
                    return
            removed += 1

        try:
            targets = await self._targets(row, token)
            await asyncio.gather(*(delete(on, e, b) for on, e, b in targets))
        except GoogleApiError as exc:
            raise LinkError(
                f"the link is disconnected, but its events could not all be removed "
                f"({exc}): run the disconnect again",
                RefusalKind.UPSTREAM,
                "google_error",
            ) from None
        await self.parts.links.strand(row.link.id, left)
        await self.parts.links.forget_events(row.link.id)
        return removed

    async def _targets(self, row: LinkRow, token: str) -> list[tuple[str, str, str]]:
        """(calendar, event, booking) of every event of the link to remove."""
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        links, account = self.parts.links, row.link.account_email
        try:
            listed = await self.access.google(
                account, self.parts.google.list_link_events, token, calendar_id, row.link.id
            )
            # Only this deployment's: one naming the same link id but tagged with another
            # deployment (a copy of this database running elsewhere) is not ours.
            targets = [
                (calendar_id, e["id"], "")
                for e in listed
                if foreign(e, self.parts.deployment_id, {row.link.id}) is None
            ]
        except GoogleApiError as exc:
            if exc.retriable:
                raise
            # The calendar cannot be listed (gone, or read-only now): what the records
            # say is on it is tried one by one.
            targets = [
                (calendar_id, e, b)
                for b, e in await links.recorded_events(row.link.id, calendar_id)
            ]
        for b, on, e in await links.events_elsewhere(row.link.id, calendar_id):
            targets.append((on, e, b))
        return targets

    async def _revoke(self, row: LinkRow) -> tuple[bool, list[str]]:
        """Revoke the account's grant at Google, unless another link still uses it: Google
        revokes the whole grant of an account, whichever of its tokens is revoked. Decided
        with the grant locked, at the moment of revoking: a link of the account connected
        or chosen meanwhile keeps it."""

        async def revoke(refresh_token: str) -> bool:
            return await asyncio.to_thread(self.parts.oauth.revoke, refresh_token)

        try:
            return await self.parts.links.release_grant(row.link.account_email, row.link.id, revoke)
        except OAuthRefused as exc:
            raise LinkError(
                f"the link is disconnected, but {exc}: run the disconnect again",
                RefusalKind.UPSTREAM,
                exc.problem,
            ) from None
