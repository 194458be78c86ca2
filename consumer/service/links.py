"""The link lifecycle, behind both `calsync links ...` and the HTTP API (`calsync serve`):
connect through Google's consent, choose a calendar (then backfill), disconnect, inspect.

Every refusal is a LinkError worded for the person who asked, raised before anything is
stored, so that the stored links stay exactly as they were.

Every backfill is recorded in `backfills` and its progress kept there as it goes, whoever
waits for it: the CLI and the JSON API wait for the end (and answer the counts); the pages
start it in the background of `calsync serve` and show its progress from that table.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog

from consumer.adapters.google.oauth import OAuthClient
from consumer.adapters.postgres.link_store import Activation, Backfill, LastResult, LinkStore
from consumer.domain.drift import foreign
from consumer.domain.errors import (
    CalendarTaken,
    GoogleApiError,
    LinkError,
    OAuthRefused,
    QuotaPaused,
    RefusalKind,
    StateRefused,
    TokenRefreshFailed,
)
from consumer.domain.models import (
    BookingEvent,
    CalendarLink,
    LinkRow,
    LinkState,
    LinkTokens,
    Operation,
)
from consumer.domain.planning import plan_operation
from consumer.domain.records import CalendarInfo
from consumer.service.answers import (
    ActivitySummary,
    Chosen,
    Connected,
    ConnectStarted,
    Disconnected,
    LinkSummary,
    ListedCalendar,
)
from consumer.service.context import Services

log = structlog.get_logger(__name__)
_MAX_ID_LENGTH = 200
_BACKFILL_CONCURRENCY = 8
_PROGRESS_EVERY_S = 0.5  # how often a running backfill writes its progress, when it moved
_HEARTBEAT_EVERY_S = 5.0  # ... and at least this often (pages tell a stalled one by it)
T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """What a person chooses among: the link, its account's calendars, and which of them
    other live links of the activity already sync (calendar id -> link id, account)."""

    link: LinkSummary
    calendars: list[CalendarInfo]
    taken: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class LinkHealth:
    """One link as the links page shows it."""

    link: LinkSummary
    calendar_name: str | None
    events_synced: int
    last_result: LastResult | None
    repair_backlog: int
    backfill: Backfill | None


@dataclass
class _Tally:
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def _check_id(kind: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > _MAX_ID_LENGTH or any(c.isspace() for c in value):
        raise LinkError(
            f"{kind} must be a non-empty id without spaces (at most {_MAX_ID_LENGTH} characters)",
            RefusalKind.INVALID,
            f"invalid_{kind.replace(' ', '_')}",
        )
    return value


class LinkService:
    def __init__(self, svc: Services, store: LinkStore, oauth: OAuthClient) -> None:
        self.settings = svc.settings
        self.svc = svc
        self.repository = svc.repository
        self.store = store
        self.oauth = oauth
        self._background: set[asyncio.Task[Any]] = set()
        # Who holds the leases of the backfills this process works (see RepairQueue.owe).
        self.member = f"{socket.gethostname()}-{os.getpid()}-links"

    async def close(self) -> None:
        """Let background backfills finish (up to the shutdown grace), then stop them: each
        records that it was interrupted."""
        running = set(self._background)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(work, name=what)
        self._background.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background_failed", what=what, error=repr(finished.exception()))

        task.add_done_callback(done)

    async def _existing(self, link_id: str) -> LinkRow:
        row = await self.repository.link(link_id)
        if row is None:
            raise LinkError(
                f"no link {link_id!r} (see: calsync links list)",
                RefusalKind.NOT_FOUND,
                "link_not_found",
            )
        return row

    # --- connect ------------------------------------------------------------------------

    async def start_connect(
        self, activity_id: str, login_hint: str | None = None
    ) -> ConnectStarted:
        """`login_hint`: the account Google's account chooser should offer first (a
        reconnection)."""
        activity_id = _check_id("activity id", activity_id)
        if not self.settings.google_client_id:
            raise LinkError(
                "CALSYNC_GOOGLE_CLIENT_ID is not set", RefusalKind.NOT_CONFIGURED, "not_configured"
            )
        nonce = secrets.token_urlsafe(24)
        url, verifier, expires_at = self.oauth.authorization_url(nonce, login_hint)
        await self.store.save_state(nonce, activity_id, verifier, expires_at)
        return ConnectStarted(
            activity_id=activity_id,
            authorization_url=url,
            redirect_uri=self.settings.oauth_redirect_uri,
            expires_at=expires_at,
        )

    async def finish_connect(self, params: dict[str, str]) -> Connected:
        """Google's redirect: exchange the code, store the link(s), list the calendars;
        a reconnection's backfill is waited for."""
        return await self.connected(params, wait=True)

    async def connected(self, params: dict[str, str], wait: bool) -> Connected:
        """Google's redirect. `wait=False`: a reconnection's backfill goes on in the
        background (its progress in `backfills`)."""
        state = params.get("state")
        if not state:
            raise LinkError(
                "the redirect carries no state parameter", RefusalKind.INVALID, "state_missing"
            )
        try:
            taken = await self.store.take_state(self.oauth.read_state(state))
        except (OAuthRefused, StateRefused) as exc:
            raise LinkError(str(exc), RefusalKind.INVALID, exc.problem) from None
        activity_id, verifier = taken.activity_id, taken.code_verifier
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
            granted = await asyncio.to_thread(self.oauth.exchange, params["code"], verifier)
        except OAuthRefused as exc:
            kind = (
                RefusalKind.UPSTREAM if exc.problem == "google_unreachable" else RefusalKind.INVALID
            )
            raise LinkError(str(exc), kind, exc.problem, activity_id) from None
        assert granted.tokens.access_token is not None
        try:
            calendars = await self._list_calendars(granted.tokens.access_token, granted.email)
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
        # One grant per Google account: what Google just granted replaces it, and every
        # link of the account that Google's refusal stopped is active again, whatever its
        # activity; a new link only when the activity had none of those.
        try:
            stored = await self.store.connect(pending, granted.tokens, taken.taken_at)
        except StateRefused as exc:
            raise LinkError(str(exc), RefusalKind.CONFLICT, exc.problem, activity_id) from None
        self.svc.tokens.forget(granted.email)
        if stored.created:
            log.info(
                "link_connected", link_id=pending.id, activity_id=activity_id, account=granted.email
            )
        backfill: dict[str, dict[str, int]] = {}
        backfill_ids: dict[str, int] = {}
        names = {c.id: c.name for c in calendars}
        for link_id in stored.reconnected:
            log.info("link_reconnected", link_id=link_id, account=granted.email)
            row = await self._existing(link_id)
            backfill_id = await self._start_backfill(
                row, names.get(row.link.calendar_id or ""), "reconnect"
            )
            backfill_ids[link_id] = backfill_id
            if wait:
                backfill[link_id] = await self._run_backfill(backfill_id, row)
            else:
                self._spawn(self._run_backfill(backfill_id, row), f"backfill {link_id}")
        link_ids = stored.here or [pending.id]
        return Connected(
            activity_id=activity_id,
            account_email=granted.email,
            links=[LinkSummary.of(await self._existing(i)) for i in link_ids],
            calendars=calendars,
            reconnected=stored.reconnected,
            backfill=backfill,
            backfill_ids=backfill_ids,
        )

    # --- calendars ----------------------------------------------------------------------

    async def _google(self, account: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """An operator's Google call, through the one call policy (consumer.service.calls):
        a slot of the account's and the project's group-wide quota first (ahead of queued
        messages: someone is waiting), transient failures retried, rate limits slowing the
        account down for the whole group. Without it, removing a calendar's thousands of
        events would burst past the account's 600 calls a minute."""
        try:
            return await self.svc.calls.operator(account, lambda: call(*args))
        except QuotaPaused as exc:
            raise LinkError(
                f"Google said the {exc.scope}'s quota is spent: no call is "
                f"made for {exc.seconds:.0f}s more; try again later",
                RefusalKind.UNAVAILABLE,
                "quota_paused",
            ) from None

    async def _list_calendars(self, token: str, email: str) -> list[CalendarInfo]:
        try:
            return await self._google(email, self.svc.google.list_calendars, token)
        except GoogleApiError as exc:
            raise LinkError(
                f"Google could not list the calendars of {email}: {exc}",
                RefusalKind.UPSTREAM,
                "google_error",
            ) from None

    async def _token(self, row: LinkRow) -> str:
        if row.tokens is None:
            raise LinkError(
                f"link {row.link.id} is disconnected: connect the account again",
                RefusalKind.CONFLICT,
                "link_disconnected",
            )
        account = row.link.account_email
        try:
            return await self.svc.tokens.access_token(account, row.tokens)
        except TokenRefreshFailed as exc:
            if not exc.retriable:  # the account's links stop too, as the sync's would
                await self.svc.engine.grant_refused(
                    account, f"token refresh refused: {exc.explained}"
                )
            raise LinkError(
                f"Google refused the tokens of link {row.link.id} ({exc.explained}): "
                "reconnect the account",
                RefusalKind.CONFLICT,
                "reauth_required",
            ) from None

    async def calendars(self, link_id: str) -> list[ListedCalendar]:
        """The account's calendars, from Google, each saying whether another live link of
        the activity already syncs it (`taken`: it cannot be chosen for this link)."""
        row = await self._existing(link_id)
        token = await self._token(row)
        listed = await self._list_calendars(token, row.link.account_email)
        taken = await self.taken(row.link.activity_id, link_id)
        return [ListedCalendar.of(c, taken=c.id in taken) for c in listed]

    async def choice(self, link_id: str) -> Choice:
        """What the calendar choice shows: the account's calendars, from Google, and those
        that other live links of the activity already sync."""
        row = await self._existing(link_id)
        if row.link.state is LinkState.DISCONNECTED:
            raise LinkError(
                f"link {link_id} is disconnected: connect the account again",
                RefusalKind.CONFLICT,
                "link_disconnected",
                row.link.activity_id,
            )
        try:
            token = await self._token(row)
            calendars = await self._list_calendars(token, row.link.account_email)
        except LinkError as exc:
            exc.activity_id = row.link.activity_id
            raise
        return Choice(
            LinkSummary.of(row), calendars, await self.taken(row.link.activity_id, link_id)
        )

    async def taken(self, activity_id: str, link_id: str) -> dict[str, tuple[str, str]]:
        """Calendars that the activity's other live links sync: id -> (link, account)."""
        others = (await self.repository.links_of_activities({activity_id})).get(activity_id, [])
        return {
            o.link.calendar_id: (o.link.id, o.link.account_email)
            for o in others
            if o.link.id != link_id
            and o.link.calendar_id
            and o.link.state is not LinkState.DISCONNECTED
        }

    async def use_form_token(self, jti: str, link_id: str, expires_at: datetime) -> bool:
        """Record a page form's single use: False if it was used before."""
        return await self.store.use_form_token(jti, link_id, expires_at)

    async def select(self, link_id: str, calendar_id: str) -> Chosen:
        """Choose the calendar that receives the activity's bookings, then backfill it."""
        return await self.choose(link_id, calendar_id, wait=True)

    async def choose(self, link_id: str, calendar_id: str, wait: bool) -> Chosen:
        """Choose the calendar; `wait=False`: the backfill goes on in the background."""
        try:
            active, chosen, activation = await self._activate(link_id, calendar_id)
        except LinkError as exc:
            if exc.activity_id is None:
                known = await self.repository.link(link_id)
                exc.activity_id = known.link.activity_id if known else None
            raise
        backfill_id = await self._start_backfill(active, chosen.name, "select")
        counts: dict[str, int] | None = None
        if wait:
            counts = await self._run_backfill(backfill_id, active)
        else:
            self._spawn(self._run_backfill(backfill_id, active), f"backfill {active.link.id}")
        return Chosen(
            link=LinkSummary.of(await self._existing(active.link.id)),
            calendar=chosen,
            merged_from=activation.merged_from,
            backfill_id=backfill_id,
            backfill=counts,
        )

    async def _activate(
        self, link_id: str, calendar_id: str
    ) -> tuple[LinkRow, CalendarInfo, Activation]:
        row = await self._existing(link_id)
        calendar_id = _check_id("calendar id", calendar_id)
        token = await self._token(row)
        calendars = {c.id: c for c in await self._list_calendars(token, row.link.account_email)}
        chosen = calendars.get(calendar_id)
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
            activation = await self.store.activate(link_id, calendar_id)
        except StateRefused as exc:
            raise LinkError(str(exc), RefusalKind.CONFLICT, exc.problem) from None
        except CalendarTaken as exc:
            fix = (
                ""
                if exc.state == LinkState.ACTIVE
                else f" (it is {exc.state}: reconnect or re-select that link instead)"
            )
            through = (
                f" (through {exc.account})"
                if exc.account and exc.account != row.link.account_email
                else ""
            )
            raise LinkError(
                f"calendar_taken: calendar {calendar_id!r} of {row.link.account_email} "
                f"already belongs to this activity's link {exc.link_id}{through}{fix}: one "
                "live link per calendar of an activity, or every booking would be there twice",
                RefusalKind.CONFLICT,
                "calendar_taken",
            ) from None
        active = await self._existing(activation.link_id)
        log.info(
            "link_activated",
            link_id=active.link.id,
            calendar_id=calendar_id,
            merged_from=activation.merged_from,
        )
        return active, chosen, activation

    # --- backfill -----------------------------------------------------------------------

    async def _start_backfill(self, row: LinkRow, calendar_name: str | None, trigger: str) -> int:
        assert row.link.calendar_id is not None
        return await self.store.start_backfill(
            row.link.id, row.link.calendar_id, calendar_name, trigger
        )

    async def _run_backfill(self, backfill_id: int, row: LinkRow) -> dict[str, int]:
        """Bring a link that just became active up to the latest recorded booking states,
        through the sync engine's locked, versioned path (so events cannot double them),
        keeping its progress in `backfills`. Answers the counts: bookings, then per
        outcome."""
        engine = self.svc.engine
        engine.resume(row.link.id)
        self.svc.tokens.forget(row.link.id)
        tally = _Tally()
        try:
            pending = [
                event
                for event, recorded in await self.repository.bookings_of_activity(
                    row.link.id, row.link.activity_id
                )
                if plan_operation(event, row.link, recorded, latest=True).operation
                is not Operation.NONE
            ]
            tally.counts["bookings"] = len(pending)
            await self.store.backfill_total(backfill_id, len(pending))
            # Written down first: if this process stops, the consumer group's repair loop
            # finishes what is left once this process's lease on it ends.
            await self.svc.repairs.owe(
                row.link.id,
                [(e.booking.id, e.booking.version) for e in pending],
                "backfill",
                self.member,
                self.settings.repair_lease_s,
            )
            gate = asyncio.Semaphore(_BACKFILL_CONCURRENCY)

            async def one(event: BookingEvent) -> None:
                async with gate:
                    # The latest state, read under the claim (it may have moved on since).
                    result = await engine.sync_link(
                        event, row, None, source="backfill", latest=True
                    )
                outcome = result.outcome.value
                tally.counts[outcome] = tally.counts.get(outcome, 0) + 1
                tally.done += 1

            reporter = asyncio.create_task(self._report_progress(backfill_id, tally))
            try:
                await asyncio.gather(*(one(event) for event in pending))
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            await self.repository.mark_backfilled(row.link.id)
        except BaseException as exc:
            error = (
                "interrupted: the service stopped"
                if isinstance(exc, asyncio.CancelledError)
                else f"{type(exc).__name__}: {exc}"
            )
            await asyncio.shield(
                self.store.finish_backfill(backfill_id, tally.done, tally.counts, error)
            )
            raise
        await self.store.finish_backfill(backfill_id, tally.done, tally.counts, None)
        log.info("link_backfilled", link_id=row.link.id, backfill_id=backfill_id, **tally.counts)
        return tally.counts

    async def _report_progress(self, backfill_id: int, tally: _Tally) -> None:
        """Every half second when it moved, and every few seconds anyway (a heartbeat):
        one cheap UPDATE, whatever the number of bookings."""
        reported, at = -1, time.monotonic()
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            if tally.done != reported or time.monotonic() - at >= _HEARTBEAT_EVERY_S:
                reported, at = tally.done, time.monotonic()
                try:
                    await self.store.backfill_progress(backfill_id, tally.done, dict(tally.counts))
                    # The leases on what is left stay this process's while it works them.
                    await self.svc.repairs.renew(self.member, self.settings.repair_lease_s)
                except Exception as exc:  # progress is for people; the backfill goes on
                    log.warning(
                        "backfill_progress_not_saved", backfill_id=backfill_id, error=repr(exc)
                    )

    async def backfills(self, ids: list[int]) -> list[Backfill]:
        return await self.store.backfills(ids)

    # --- disconnect ---------------------------------------------------------------------

    async def disconnect(self, link_id: str, remove_events: bool) -> Disconnected:
        row = await self._existing(link_id)
        if row.link.state is LinkState.DISCONNECTED and row.disconnect_finished_at is not None:
            raise LinkError(
                f"link {link_id} is already disconnected", RefusalKind.CONFLICT, "link_disconnected"
            )
        token = None
        if remove_events and row.link.calendar_id and row.tokens is not None:
            token = await self._token(row)  # refused: nothing changes
        since = await self.store.mark_disconnected(link_id, "disconnected")
        self.svc.engine.halt(link_id, since)
        # The fence: every consumer stops the link's work before its next Google call (told
        # through NOTIFY), and each claim still held is waited for. Once none is left, no
        # write of the link can reach Google: what is on the calendar now is all there is.
        fenced = await self.store.wait_for_in_flight(link_id, self.settings.shutdown_grace_s)
        if not fenced:
            log.warning("disconnect_in_flight_still_running", link_id=link_id)
        await self.store.drop_repairs(link_id)
        removed = await self._remove_events(row, token) if token is not None else 0
        if not fenced and token is not None:
            # Work still in flight at the first look (a consumer busy, a call at Google):
            # waited for once more, and whatever it wrote meanwhile is removed too.
            if not await self.store.wait_for_in_flight(
                link_id, 2 * self.settings.google_timeout_s + 5
            ):
                log.warning("disconnect_not_fenced", link_id=link_id)
            removed += await self._remove_events(row, token)
        revoked, shared_with = await self._revoke(row)
        reason = "disconnected; " + (
            f"{removed} events removed" if remove_events else "events kept on the calendar"
        )
        # Only now may its calendar be chosen again (by a revival of this link).
        await self.store.finish_disconnect(link_id, reason)
        if revoked:
            self.svc.tokens.forget(row.link.account_email)
        log.info(
            "link_disconnected", link_id=link_id, events_removed=removed, token_revoked=revoked
        )
        return Disconnected(
            link=LinkSummary.of(await self._existing(link_id)),
            events_removed=removed,
            events_kept=not remove_events,
            token_revoked=revoked,
            token_still_used_by=shared_with,
        )

    async def _remove_events(self, row: LinkRow, token: str) -> int:
        """Every event of the link that can be reached, wherever it is: on its calendar
        (found by its private `link_id` property, and this deployment's: untagged, or
        tagged with our deployment id), recorded on another one (a move under
        way), or stranded on one it moved away from. One that cannot be reached (the
        calendar gone or read-only) is recorded as stranded, for a reconcile to remove once
        it can; only faults that pass make the disconnect say to run it again."""
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        google, account = self.svc.google, row.link.account_email
        removed = 0
        left: list[tuple[str, str, str, str]] = []  # (booking, calendar, event, why)

        async def delete(on: str, event_id: str, booking_id: str) -> None:
            nonlocal removed
            try:
                await self._google(account, google.delete_event, token, on, event_id)
            except GoogleApiError as exc:
                if exc.retriable:
                    raise
                if not exc.gone:
                    left.append((booking_id, on, event_id, str(exc)[:300]))
                    return
            removed += 1

        try:
            try:
                listed = await self._google(
                    account, google.list_link_events, token, calendar_id, row.link.id
                )
                # Only this deployment's: one naming the same link id but tagged with another
                # deployment (a copy of this database running elsewhere) is not ours.
                targets = [
                    (calendar_id, e["id"], "")
                    for e in listed
                    if foreign(e, self.svc.deployment.id, {row.link.id}) is None
                ]
            except GoogleApiError as exc:
                if exc.retriable:
                    raise
                # The calendar cannot be listed (gone, or read-only now): what the records
                # say is on it is tried one by one.
                targets = [
                    (calendar_id, e, b)
                    for b, e in await self.store.recorded_events(row.link.id, calendar_id)
                ]
            for b, on, e in await self.store.events_elsewhere(row.link.id, calendar_id):
                targets.append((on, e, b))
            await asyncio.gather(*(delete(on, e, b) for on, e, b in targets))
        except GoogleApiError as exc:
            raise LinkError(
                f"the link is disconnected, but its events could not all be removed "
                f"({exc}): run the disconnect again",
                RefusalKind.UPSTREAM,
                "google_error",
            ) from None
        await self.store.strand(row.link.id, left)
        await self.store.forget_events(row.link.id)
        return removed

    async def _revoke(self, row: LinkRow) -> tuple[bool, list[str]]:
        """Revoke the account's grant at Google, unless another link still uses it: Google
        revokes the whole grant of an account, whichever of its tokens is revoked. Decided
        with the grant locked, at the moment of revoking: a link of the account connected
        or chosen meanwhile keeps it."""

        async def revoke(refresh_token: str) -> bool:
            return await asyncio.to_thread(self.oauth.revoke, refresh_token)

        try:
            return await self.store.release_grant(row.link.account_email, row.link.id, revoke)
        except OAuthRefused as exc:
            raise LinkError(
                f"the link is disconnected, but {exc}: run the disconnect again",
                RefusalKind.UPSTREAM,
                exc.problem,
            ) from None

    # --- inspect, import ----------------------------------------------------------------

    async def get(self, link_id: str) -> LinkSummary:
        return LinkSummary.of(await self._existing(link_id))

    async def find(self, link_id: str) -> LinkSummary | None:
        row = await self.repository.link(link_id)
        return LinkSummary.of(row) if row else None

    async def list(self) -> list[LinkSummary]:
        return [LinkSummary.of(row) for row in await self.repository.all_links()]

    async def activities(self) -> builtins.list[ActivitySummary]:
        return [ActivitySummary(**row) for row in await self.store.activities()]

    async def health(self, activity_id: str) -> builtins.list[LinkHealth]:
        """The activity's links as the links page shows them (no Google call)."""
        rows = (await self.repository.links_of_activities({activity_id})).get(activity_id, [])
        rows.sort(key=lambda r: (r.link.state is LinkState.DISCONNECTED, r.created_at))
        ids = [r.link.id for r in rows]
        synced = await self.store.events_synced(ids)
        last = await self.store.last_results(ids)
        backlog = await self.store.repair_backlog(ids)
        backfills = await self.store.latest_backfills(ids)
        names = await self.store.calendar_names(
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

    async def import_link(
        self,
        *,
        activity_id: str,
        account_email: str,
        refresh_token: str,
        access_token: str | None,
        expires_at: datetime | None,
        calendar_id: str | None,
    ) -> str:
        """Register a link from tokens obtained elsewhere (migrations from another system).
        The tokens become the account's one grant (shared with its other links)."""
        link = CalendarLink(
            id="lnk_" + secrets.token_hex(8),
            activity_id=_check_id("activity id", activity_id),
            account_email=account_email,
            calendar_id=calendar_id,
            state=LinkState.ACTIVE if calendar_id else LinkState.PENDING,
        )
        try:
            await self.store.import_link(link, LinkTokens(refresh_token, access_token, expires_at))
        except CalendarTaken as exc:
            raise LinkError(
                f"calendar_taken: calendar {calendar_id!r} already belongs to this activity's "
                f"link {exc.link_id}: one live link per calendar of an activity",
                RefusalKind.CONFLICT,
                "calendar_taken",
            ) from None
        self.svc.tokens.forget(account_email)
        return link.id
