"""In-memory fakes of our own ports, for the unit tier: no broker, no PostgreSQL, no HTTP.

Each keeps the contract of the adapter it stands for, as far as the code under test can
tell, and records what it was asked so a test can check the decisions made:

- FakeCalendar (the CalendarGateway of consumer.service.sync, i.e.
  consumer.adapters.google.calendar): the Calendar API as the sandbox reads Google,
  conservatively. An id once inserted stays taken (insert -> 409 `duplicate`, even after a
  delete); an event deleted by a person in Google's UI is `cancelled`: update -> 403
  `forbidden` (or 410, the other plausible answer), delete -> 410 `deleted`, get -> 200 with
  `status: cancelled`; an unknown event -> 404; a calendar deleted or no longer in the
  account's list -> 404 on every call; one shared read-only -> 403 `requiredAccessLevel` on
  writes, `reader` in its list entry; a token it did not issue (or revoked since) -> 401.
  Refusals can be queued per method (`fail`), each raised as the adapter raises them
  (GoogleApiError, classified by consumer.domain.refusals).
  tests/integration/test_fake_calendar_contract.py plays one story on it and on the sandbox,
  and checks they answer alike.
- FakeTokens (AccessTokens): hands out a token per link (issued by the FakeCalendar it is
  given, so Google knows it), a new one when the last was rejected; can be told to fail the
  way the token endpoint does (TokenRefreshFailed).
- FakeTokenEndpoint: Google's OAuth token endpoint behind the real TokenProvider (its one
  blocking call, `_grant`), so the provider's margins and single flight are tested as is.
- FakeRepository (consumer.adapters.postgres.repository.Repository, what the engine, the
  token provider and the runner use of it) and FakeSyncStore
  (consumer.adapters.postgres.sync_store.SyncStore) share one in-memory "database": links,
  bookings, link_bookings, results, repairs, dead letters.
- FakeQuota (consumer.adapters.postgres.quota.GroupQuota): never waits; records refusals and
  pauses, and can be paused.
- FakeKafkaConsumer (KafkaConsumerPort: the group's consumer as the runner sees it, records
  queued by the test), FakeProducer (the AIOKafkaProducer under the real DeadLetterProducer,
  so a copy's fallbacks are the adapter's own), FakeMemberReports (MemberReports).


- FakeRepairQueue (RepairQueue, i.e. consumer.adapters.postgres.repair_store.RepairStore):
  the repair loop's queue over FakeSyncStore's repairs (one table, as in PostgreSQL): a
  poll walks the accounts a window at a time, an equal share each within its places.
- FakeKafkaConsumer / FakeProducer: the parts of aiokafka's clients the runner's dispatch,
  commits and drains use.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumer.adapters.google.calendar import WRITE_ROLES
from consumer.domain.errors import GoogleApiError, QuotaPaused, TokenRefreshFailed
from consumer.domain.models import (
    BookingEvent,
    CalendarLink,
    LinkRow,
    LinkState,
    LinkTokens,
    MessagePosition,
    Operation,
    Outcome,
    RecordedEvent,
    RepairPlan,
    StoredGrant,
    SyncResult,
)
from consumer.domain.records import (
    Backfill,
    BookingPosition,
    BookingsPage,
    CalendarInfo,
    Claim,
    ConsumedRecord,
    HeldBooking,
    Lease,
    LeasedRepair,
    LeaseRequest,
    Partition,
    RepairsDue,
    Stall,
    UnreadableRecord,
)
from consumer.service.ports import PartitionsHook

# --- Google Calendar -------------------------------------------------------------------------


@dataclass
class FakeGoogleCalendar:
    """One calendar of one account, as Google holds it."""

    id: str
    access_role: str = "owner"
    summary: str = ""
    primary: bool = False
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # cancelled ones too


@dataclass
class _Fault:
    method: str | None  # None: any call
    status: int | None
    reason: str
    domain: str
    retry_after: float | None
    times: int


class FakeCalendar:
    """The Calendar API (see the module docstring for the semantics kept)."""

    def __init__(self, deleted_event_update_status: int = 403) -> None:
        assert deleted_event_update_status in (403, 410)
        self.deleted_event_update_status = deleted_event_update_status
        self.calendars: dict[str, FakeGoogleCalendar] = {}
        self.issued_tokens: set[str] = set()  # Google answers 401 to any other
        self.calls: list[tuple[str, str, str | None]] = []  # (method, calendar, event id)
        self.tokens_used: list[str] = []
        self._faults: list[_Fault] = []

    # --- what a test arranges ------------------------------------------------------------

    def add_calendar(
        self, calendar_id: str, access_role: str = "owner", primary: bool = False
    ) -> FakeGoogleCalendar:
        calendar = FakeGoogleCalendar(calendar_id, access_role, calendar_id, primary)
        self.calendars[calendar_id] = calendar
        return calendar

    def issue_token(self, token: str) -> str:
        self.issued_tokens.add(token)
        return token

    def revoke_token(self, token: str) -> None:
        """Google stops taking it (revoked, or expired early): 401 from then on."""
        self.issued_tokens.discard(token)

    def remove_calendar(self, calendar_id: str) -> None:
        """Deleted, or removed from the account's list: 404 from then on."""
        del self.calendars[calendar_id]

    def share_read_only(self, calendar_id: str) -> None:
        self.calendars[calendar_id].access_role = "reader"

    def delete_by_hand(self, calendar_id: str, event_id: str) -> None:
        """A person deleted the event in Google Calendar's UI: it stays, `cancelled`."""
        self.calendars[calendar_id].events[event_id]["status"] = "cancelled"

    def fail(
        self,
        method: str | None,
        status: int | None,
        reason: str,
        domain: str = "global",
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """The next `times` calls of `method` (e.g. "events.insert"; None: any) are refused
        with this status and reason (status None: no answer at all, a timeout)."""
        self._faults.append(_Fault(method, status, reason, domain, retry_after, times))

    def live_events(self, calendar_id: str) -> dict[str, dict[str, Any]]:
        return {
            event_id: event
            for event_id, event in self.calendars[calendar_id].events.items()
            if event["status"] != "cancelled"
        }

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    # --- the gateway ----------------------------------------------------------------------

    async def insert_event(
        self, token: str, calendar_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        method = "events.insert"
        calendar = self._writable(self._enter(method, token, calendar_id, body.get("id")), method)
        event_id = str(body.get("id") or f"g{len(calendar.events):08d}")
        if event_id in calendar.events:  # a deleted id stays taken, as at Google
            raise _error(409, "duplicate", method)
        event = {**copy.deepcopy(body), "id": event_id, "status": body.get("status", "confirmed")}
        calendar.events[event_id] = event
        return copy.deepcopy(event)

    async def update_event(
        self, token: str, calendar_id: str, event_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        method = "events.update"
        calendar = self._writable(self._enter(method, token, calendar_id, event_id), method)
        current = calendar.events.get(event_id)
        if current is None:
            raise _error(404, "notFound", method)
        if current["status"] == "cancelled":
            if self.deleted_event_update_status == 410:
                raise _error(410, "deleted", method)
            raise _error(403, "forbidden", method)
        event = {**copy.deepcopy(body), "id": event_id, "status": body.get("status", "confirmed")}
        calendar.events[event_id] = event
        return copy.deepcopy(event)

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None:
        method = "events.delete"
        calendar = self._writable(self._enter(method, token, calendar_id, event_id), method)
        current = calendar.events.get(event_id)
        if current is None:
            raise _error(404, "notFound", method)
        if current["status"] == "cancelled":
            raise _error(410, "deleted", method)
        current["status"] = "cancelled"

    async def get_event(self, token: str, calendar_id: str, event_id: str) -> dict[str, Any]:
        method = "events.get"
        calendar = self._enter(method, token, calendar_id, event_id)
        current = calendar.events.get(event_id)
        if current is None:
            raise _error(404, "notFound", method)
        return copy.deepcopy(current)  # a deleted event reads `cancelled`

    async def calendar_entry(self, token: str, calendar_id: str) -> CalendarInfo:
        calendar = self._enter("calendarList.get", token, calendar_id, None)
        return CalendarInfo(
            calendar.id,
            calendar.summary,
            calendar.primary,
            calendar.access_role in WRITE_ROLES,
            calendar.access_role,
        )

    def _enter(
        self, method: str, token: str, calendar_id: str, event_id: str | None
    ) -> FakeGoogleCalendar:
        """Every call: counted, authenticated, then any refusal queued for it, then the
        calendar (404 when gone)."""
        self.calls.append((method, calendar_id, event_id))
        self.tokens_used.append(token)
        if token not in self.issued_tokens:
            raise _error(401, "authError", method)
        for fault in self._faults:
            if fault.method in (None, method) and fault.times > 0:
                fault.times -= 1
                raise GoogleApiError(
                    fault.status,
                    fault.reason,
                    "refused by the test",
                    fault.retry_after,
                    fault.domain,
                    method,
                )
        calendar = self.calendars.get(calendar_id)
        if calendar is None:
            raise _error(404, "notFound", method)
        return calendar

    @staticmethod
    def _writable(calendar: FakeGoogleCalendar, method: str) -> FakeGoogleCalendar:
        if calendar.access_role not in WRITE_ROLES:
            raise _error(403, "requiredAccessLevel", method, domain="calendar")
        return calendar


def _error(status: int, reason: str, method: str, domain: str = "global") -> GoogleApiError:
    return GoogleApiError(status, reason, reason, None, domain, method)


# --- tokens ------------------------------------------------------------------------------------


class FakeTokens:
    """AccessTokens: one token per account (its grant) until it is rejected, then a fresh
    one."""

    def __init__(
        self, google: FakeCalendar | None = None, repository: FakeRepository | None = None
    ) -> None:
        self.google = google  # the calendar that takes the tokens issued
        self.repository = repository  # where a grant Google refuses is marked, as TokenProvider
        self.current: dict[str, str] = {}
        self.asked: list[tuple[str, str | None]] = []  # (account, the token rejected)
        self.forgotten: list[str] = []
        self.failure: TokenRefreshFailed | None = None  # raised on every ask while set
        self.failures_left = 0  # with `failure`: only this many times (0: always)
        self._issued = itertools.count(1)

    async def access_token(
        self, account: str, stored: LinkTokens | None, rejected: str | None = None
    ) -> str:
        self.asked.append((account, rejected))
        if self.failure is not None:
            failure = self.failure
            if self.failures_left:
                self.failures_left -= 1
                if not self.failures_left:
                    self.failure = None
            if not failure.retriable and self.repository is not None:
                self.repository.refused_grants[account] = failure.explained
            raise failure
        token = self.current.get(account)
        if token is None or token == rejected:
            token = self.current[account] = f"ya29.fake-{account}-{next(self._issued)}"
            if self.google is not None:
                self.google.issue_token(token)
        return token

    def forget(self, account: str) -> None:
        self.forgotten.append(account)
        self.current.pop(account, None)

    @property
    def refreshes(self) -> int:
        """How many times a token was asked for after one was rejected."""
        return sum(1 for _, rejected in self.asked if rejected is not None)


class FakeTokenEndpoint:
    """Google's OAuth token endpoint, in place of the real TokenProvider's `_grant` (the
    provider's one blocking HTTP call): grants a token of `lifetime_s`, or refuses."""

    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self.lifetime_s = lifetime_s
        self.grants: list[str] = []  # the refresh tokens presented
        self.refuse_with: str | None = None  # e.g. "invalid_grant" (permanent), "server_error"
        self.refuse_description: str | None = None  # its `error_description`
        self.rotate_refresh_token = False
        self.delay_s = 0.0
        self._issued = itertools.count(1)

    def install(self, provider: Any) -> None:
        provider._grant = self.grant

    def grant(self, refresh_token: str) -> LinkTokens:
        self.grants.append(refresh_token)
        if self.delay_s:
            time.sleep(self.delay_s)  # it runs in the provider's thread pool, as the real one
        if self.refuse_with is not None:
            raise TokenRefreshFailed(
                self.refuse_with,
                permanent=self.refuse_with == "invalid_grant",
                description=self.refuse_description,
            )
        n = next(self._issued)
        return LinkTokens(
            refresh_token=f"1//rotated-{n}" if self.rotate_refresh_token else refresh_token,
            access_token=f"ya29.granted-{n}",
            expires_at=datetime.fromtimestamp(time.time() + self.lifetime_s, UTC),
        )


# --- the database: repository and sync store ---------------------------------------------------


class _FakeConnection:
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


class _FakePool:
    """What TokenProvider uses of the psycopg pool: a connection with a transaction."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # the link row's lock, held while refreshing

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_FakeConnection]:
        async with self.lock:
            yield _FakeConnection()


@dataclass
class DeadLetter:
    id: int
    position: MessagePosition
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    error_type: str
    error: str
    published: bool = False
    copy_error: str | None = None
    reprocessed: bool = False


class FakeRepository:
    """The repository's queries over an in-memory database shared with FakeSyncStore."""

    def __init__(self) -> None:
        self.pool = _FakePool()
        self.links: dict[str, LinkRow] = {}
        self.state_changed_at: dict[str, float] = {}
        self.bookings: dict[str, BookingEvent] = {}
        self.link_bookings: dict[tuple[str, str], RecordedEvent] = {}
        self.grants: dict[str, LinkTokens] = {}  # per account: its one grant
        self.refused_grants: dict[str, str] = {}  # per account: Google's refusal
        self.saved_tokens: list[tuple[str, LinkTokens, bool]] = []  # (account, ...)
        self.dead_letters: dict[
            tuple[str, int, int, int, bytes | None, bytes | None], DeadLetter
        ] = {}
        self.left_active: list[tuple[str, LinkState, str]] = []

    def add_link(
        self,
        link_id: str = "lnk_1",
        activity_id: str = "act_1",
        account_email: str = "owner@example.com",
        calendar_id: str | None = "cal",
        tokens: LinkTokens | None = None,
        state: LinkState = LinkState.ACTIVE,
    ) -> LinkRow:
        now = datetime.now(UTC)
        if tokens is not None or account_email not in self.grants:
            self.grants[account_email] = tokens or LinkTokens("1//refresh", None, None)
            self.refused_grants.pop(account_email, None)
        row = LinkRow(
            CalendarLink(
                id=link_id,
                activity_id=activity_id,
                account_email=account_email,
                calendar_id=calendar_id,
                state=state,
            ),
            self.grants[account_email],
            None,
            now,
            now,
        )
        self.links[link_id] = row
        self.state_changed_at[link_id] = time.time()
        return row

    def choose_calendar(self, link_id: str, calendar_id: str) -> None:
        """The link's owner chose another calendar (`calsync links select`)."""
        row = self.links[link_id]
        self.links[link_id] = LinkRow(
            row.link.model_copy(update={"calendar_id": calendar_id}),
            row.tokens,
            row.state_reason,
            row.state_changed_at,
            row.created_at,
        )

    def state(self, link_id: str) -> LinkState:
        return self.links[link_id].link.state

    # --- what the sync engine uses ----------------------------------------------------------

    async def upsert_bookings(self, events: list[BookingEvent]) -> None:
        for event in events:
            known = self.bookings.get(event.booking.id)
            if known is None or known.booking.version <= event.booking.version:
                self.bookings[event.booking.id] = event

    async def links_of_activities(self, activity_ids: set[str]) -> dict[str, list[LinkRow]]:
        answer: dict[str, list[LinkRow]] = defaultdict(list)
        for row in self.links.values():
            if row.link.activity_id in activity_ids:
                answer[row.link.activity_id].append(row)
        return dict(answer)

    async def links_holding(self, booking_ids: set[str]) -> dict[str, list[LinkRow]]:
        answer: dict[str, list[LinkRow]] = defaultdict(list)
        for (link_id, booking_id), rec in self.link_bookings.items():
            if booking_id in booking_ids and rec.google_event_id is not None:
                answer[booking_id].append(self.links[link_id])
        return dict(answer)

    async def latest_booking(self, booking_id: str) -> BookingEvent | None:
        return self.bookings.get(booking_id)

    # --- what the repair loop reads (RepairReads) --------------------------------------------

    async def links_by_id(self, link_ids: set[str]) -> dict[str, LinkRow]:
        return {link_id: self.links[link_id] for link_id in link_ids if link_id in self.links}

    async def latest_bookings(self, booking_ids: set[str]) -> dict[str, BookingEvent]:
        return {b: self.bookings[b] for b in booking_ids if b in self.bookings}

    async def leave_active(self, link_id: str, state: LinkState, reason: str) -> float | None:
        row = self.links[link_id]
        if row.link.state is not LinkState.ACTIVE:
            return None  # another process changed it first
        self.links[link_id] = LinkRow(
            row.link.model_copy(update={"state": state}),
            row.tokens,
            reason,
            datetime.now(UTC),
            row.created_at,
        )
        self.state_changed_at[link_id] = time.time()
        self.left_active.append((link_id, state, reason))
        return self.state_changed_at[link_id]

    async def leave_active_grant(
        self, account: str, reason: str
    ) -> list[tuple[str, str, str | None, float]]:
        if account in self.grants and account not in self.refused_grants:
            return []  # replaced meanwhile (a reconnect)
        changed = []
        for row in list(self.links.values()):
            if row.link.account_email == account:
                changed_at = await self.leave_active(row.link.id, LinkState.REAUTH_REQUIRED, reason)
                if changed_at is not None:
                    changed.append(
                        (row.link.id, row.link.activity_id, row.link.calendar_id, changed_at)
                    )
        return changed

    async def forget_event(self, link_id: str, booking_id: str, event_id: str) -> None:
        rec = self.link_bookings.get((link_id, booking_id))
        if rec is not None and rec.google_event_id == event_id:
            self.link_bookings[(link_id, booking_id)] = rec.model_copy(
                update={"google_event_id": None}
            )

    # --- what the token provider uses --------------------------------------------------------

    @asynccontextmanager
    async def locked_grant(self, account: str) -> AsyncIterator[FakeLockedGrant]:
        yield FakeLockedGrant(self, account, await self.lock_grant(None, account))

    async def lock_grant(self, conn: Any, account: str) -> StoredGrant | None:
        tokens = self.grants.get(account)
        if tokens is None:
            return None
        return StoredGrant(tokens, self.refused_grants.get(account))

    async def save_tokens(
        self, conn: Any, account: str, tokens: LinkTokens, refresh_token_changed: bool
    ) -> None:
        old = self.grants[account]
        self.grants[account] = (
            tokens
            if refresh_token_changed
            else LinkTokens(old.refresh_token, tokens.access_token, tokens.expires_at)
        )
        self.saved_tokens.append((account, tokens, refresh_token_changed))

    async def refuse_grant(self, conn: Any, account: str, reason: str) -> None:
        self.refused_grants[account] = reason
        old = self.grants[account]
        self.grants[account] = LinkTokens(old.refresh_token, None, None)

    # --- what the runner uses ------------------------------------------------------------------

    async def record_dead_letter(
        self,
        position: MessagePosition,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        error_type: str,
        error: str,
    ) -> tuple[int, bool]:
        # Idempotent on the record (position, timestamp, key and value), as the table's
        # unique key with its digest.
        where = (position.topic, position.partition, position.offset, timestamp_ms, key, value)
        letter = self.dead_letters.get(where)
        if letter is None:
            letter = self.dead_letters[where] = DeadLetter(
                len(self.dead_letters) + 1, position, timestamp_ms, key, value, error_type, error
            )
        return letter.id, letter.published

    def _letter(self, dead_letter_id: int) -> DeadLetter:
        return next(d for d in self.dead_letters.values() if d.id == dead_letter_id)

    async def mark_dead_letter_published(
        self, dead_letter_id: int, copy_error: str | None = None
    ) -> None:
        letter = self._letter(dead_letter_id)
        letter.published, letter.copy_error = True, copy_error

    async def dead_letter_reprocessed(self, dead_letter_id: int) -> bool:
        return any(d.id == dead_letter_id and d.reprocessed for d in self.dead_letters.values())

    async def mark_dead_letter_reprocessed(self, dead_letter_id: int) -> None:
        self._letter(dead_letter_id).reprocessed = True


@dataclass
class RecordedResult:
    event: BookingEvent
    position: MessagePosition | None
    result: SyncResult
    source: str


_SETTLES = frozenset({Outcome.APPLIED, Outcome.UNCHANGED})


class FakeSyncStore:
    """The sync store over FakeRepository's tables: a claim is exclusive per (link,
    booking) and reads the record, the link's state and calendar under it; a record saves
    the result, the new (link, booking) record, and the repair (kept or settled)."""

    def __init__(self, repository: FakeRepository) -> None:
        self.db = repository
        self.results: list[RecordedResult] = []
        self.repairs: dict[tuple[str, str], tuple[int, SyncResult]] = {}
        self.claims = 0
        self.released = 0
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def claim(self, link_id: str, booking_id: str) -> Claim:
        await self._locks[(link_id, booking_id)].acquire()
        self.claims += 1
        row = self.db.links[link_id]
        repair = self.repairs.get((link_id, booking_id))
        latest = self.db.bookings.get(booking_id)
        return Claim(
            link_id,
            booking_id,
            self.db.link_bookings.get((link_id, booking_id)),
            row.link.state,
            0,
            repair[1].repair.attempts if repair and repair[1].repair else 0,
            row.link.calendar_id,
            self.db.state_changed_at[link_id],
            latest.booking.version if latest else None,
        )

    async def record(
        self,
        claim: Claim,
        event: BookingEvent,
        position: MessagePosition | None,
        result: SyncResult,
        source: str,
    ) -> None:
        pair = (result.link_id, event.booking.id)
        if result.recorded is not None:
            self.db.link_bookings[pair] = result.recorded
        self.results.append(RecordedResult(event, position, result, source))
        if result.repair is not None:
            self.repairs[pair] = (event.booking.version, result)
        elif (
            result.outcome in _SETTLES
            and pair in self.repairs
            and self.repairs[pair][0] <= event.booking.version
        ):
            del self.repairs[pair]

    async def release(self, claim: Claim) -> None:
        self.released += 1
        self._locks[(claim.link_id, claim.booking_id)].release()

    async def close(self) -> None:
        pass


class FakeLockedGrant:
    """A grant as FakeRepository.locked_grant hands it out (no lock needed in one process)."""

    def __init__(self, repository: FakeRepository, account: str, grant: StoredGrant | None) -> None:
        self._repository = repository
        self._account = account
        self.grant = grant

    async def save(self, tokens: LinkTokens, refresh_token_changed: bool) -> None:
        await self._repository.save_tokens(None, self._account, tokens, refresh_token_changed)

    async def refuse(self, reason: str) -> None:
        await self._repository.refuse_grant(None, self._account, reason)


# --- the quota ---------------------------------------------------------------------------------


class FakeQuota:
    """GroupQuota without the group: slots at once; refusals and pauses recorded; a pause
    makes every later acquire raise QuotaPaused, as the real one does."""

    def __init__(self, pause_s: float = 3600.0, limited: bool = True) -> None:
        self.pause_s = pause_s
        # A quota configured (the engine races a slot against a halt) or none (it does not).
        self.limited = limited
        self.acquired: list[tuple[str, int, bool]] = []
        self.refusals: list[tuple[str, str, float | None]] = []
        self.pauses: list[tuple[str | None, str]] = []
        self.paused: dict[str | None, float] = {}  # account (None: the project) -> seconds

    async def acquire(self, account: str, ticket: int = 0, max_wait_s: float | None = None) -> None:
        # (account, ticket, whether the caller may leave the window rather than wait)
        self.acquired.append((account, ticket, max_wait_s is not None))
        for key, scope in ((account, "account"), (None, "project")):
            if key in self.paused:
                raise QuotaPaused(scope, self.paused[key])

    async def refused(self, account: str, reason: str, retry_after_s: float | None) -> None:
        self.refusals.append((account, reason, retry_after_s))

    async def pause(self, account: str | None, reason: str) -> float:
        self.pauses.append((account, reason))
        self.paused[account] = self.pause_s
        return self.pause_s

    def expected_wait(self, account: str) -> float:
        return 0.0

    async def lift_pauses(self, account: str | None) -> int:
        lifted = [key for key in self.paused if account is None or key == account]
        for key in lifted:
            del self.paused[key]
        return len(lifted)

    async def close(self) -> None:
        pass


# --- Kafka and the runner's other ports ---------------------------------------------------------


# --- the repair queue --------------------------------------------------------------------------


@dataclass
class _QueuedRepair:
    entry: tuple[int, SyncResult]  # FakeSyncStore.repairs' row it mirrors (replaced: rescheduled)
    account: str
    reason: str
    due_at: float
    leased_by: str | None = None
    leased_until: float = 0.0


class FakeRepairQueue:
    """The repair queue (RepairQueue, i.e. consumer.adapters.postgres.repair_store) over
    FakeSyncStore's `repairs`, the one table both write, as in PostgreSQL: a pair is owed while
    the sync store keeps it; a new result for it reschedules it (due after its plan's
    `due_in_s`, lease cleared). A poll walks the accounts in order, `accounts_per_poll` at a
    time from `after`, gives each ready account an equal share of the poll (at most its
    places), and leases each one's oldest due repairs of active links, as `_LEASE` does. Every
    request is kept in `asks`; `fail_next` makes the next lease raise it."""

    def __init__(self, store: FakeSyncStore, accounts_per_poll: int = 64) -> None:
        self.store = store
        self.db = store.db
        self.accounts_per_poll = accounts_per_poll
        self.asks: list[LeaseRequest] = []
        self.fail_next: Exception | None = None
        self.released: list[str] = []
        self._rows: dict[tuple[str, str], _QueuedRepair] = {}

    def owe_now(
        self,
        link_id: str,
        booking_id: str,
        version: int = 1,
        reason: str = "retries_exhausted",
        due_in_s: float = 0.0,
    ) -> None:
        """A repair row, as a failed result (or an operator's INSERT) leaves it."""
        plan = RepairPlan(reason=reason, attempts=1, due_in_s=due_in_s)
        failed = SyncResult(
            link_id=link_id,
            operation=Operation.CREATE,
            outcome=Outcome.FAILED,
            reason=reason,
            repair=plan,
        )
        self.store.repairs[(link_id, booking_id)] = (version, failed)

    def owed(self) -> set[tuple[str, str]]:
        return set(self._sync())

    def _sync(self) -> dict[tuple[str, str], _QueuedRepair]:
        now = time.monotonic()
        for pair in set(self._rows) - set(self.store.repairs):
            del self._rows[pair]
        for pair, entry in self.store.repairs.items():
            row = self._rows.get(pair)
            if row is None or row.entry is not entry:
                plan = entry[1].repair
                self._rows[pair] = _QueuedRepair(
                    entry,
                    self.db.links[pair[0]].link.account_email,
                    plan.reason if plan else entry[1].reason,
                    now + (plan.due_in_s if plan else 0.0),
                )
        return self._rows

    def _ready(self, row: _QueuedRepair, now: float) -> bool:
        return row.due_at <= now and (row.leased_by is None or row.leased_until < now)

    def _active(self, link_id: str) -> bool:
        return self.db.links[link_id].link.state is LinkState.ACTIVE

    async def lease(self, ask: LeaseRequest) -> Lease:
        self.asks.append(ask)
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        rows, now = self._sync(), time.monotonic()
        places = dict(ask.places)
        due = sorted(
            (row.due_at, pair)
            for pair, row in rows.items()
            if self._ready(row, now)
            and self._active(pair[0])
            and (ask.link_id is None or pair[0] == ask.link_id)
        )
        if ask.link_id is not None:
            account = self.db.links[ask.link_id].link.account_email
            taken = [p for _, p in due][: min(ask.limit, places.get(account, ask.per_account))]
            return Lease(self._take(taken, ask, now), "", True)
        accounts = sorted({row.account for row in rows.values()})
        visited = [a for a in accounts if a > ask.after][: self.accounts_per_poll]
        ready = [
            a
            for a in visited
            if places.get(a, ask.per_account) > 0
            and any(self._ready(r, now) for r in rows.values() if r.account == a)
        ]
        chosen: list[tuple[float, tuple[str, str]]] = []
        for account in ready:
            share = min(places.get(account, ask.per_account), -(-ask.limit // len(ready)))
            chosen += [(d, p) for d, p in due if rows[p].account == account][:share]
        taken = [p for _, p in sorted(chosen)][: ask.limit]
        swept = len(visited) < self.accounts_per_poll
        return Lease(self._take(taken, ask, now), visited[-1] if visited else "", swept)

    def _take(
        self, pairs: list[tuple[str, str]], ask: LeaseRequest, now: float
    ) -> tuple[LeasedRepair, ...]:
        leased = []
        for pair in pairs:
            row = self._rows[pair]
            row.leased_by, row.leased_until = ask.member, now + ask.lease_s
            leased.append(LeasedRepair(pair[0], pair[1], row.reason, row.account))
        return tuple(leased)

    async def release(self, member: str) -> None:
        self.released.append(member)
        for row in self._sync().values():
            if row.leased_by == member:
                row.leased_by = None

    async def drop_inactive(self) -> int:
        gone = [pair for pair in self._sync() if not self._active(pair[0])]
        for pair in gone:
            del self.store.repairs[pair]
        return len(gone)

    async def settle_gone(self, link_id: str, booking_id: str) -> None:
        self.store.repairs.pop((link_id, booking_id), None)

    async def make_due(self, link_id: str | None) -> int:
        made = 0
        for pair, row in self._sync().items():
            if link_id is None or pair[0] == link_id:
                row.due_at, row.leased_by, made = time.monotonic(), None, made + 1
        return made

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None:
        for booking_id, version in pairs:
            self.owe_now(link_id, booking_id, version, reason)
        rows = self._sync()
        for booking_id, _ in pairs:
            row = rows[(link_id, booking_id)]
            row.leased_by, row.leased_until = member, time.monotonic() + lease_s

    async def renew(self, member: str, lease_s: float) -> None:
        for row in self._sync().values():
            if row.leased_by == member and row.leased_until > time.monotonic():
                row.leased_until = time.monotonic() + lease_s

    async def due(self, top: int) -> RepairsDue:
        now = time.monotonic()
        counts = Counter(
            row.account
            for pair, row in self._sync().items()
            if row.due_at <= now and self._active(pair[0])
        )
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        return RepairsDue(sum(counts.values()), tuple(ranked))


# --- Kafka -------------------------------------------------------------------------------------


def record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] = (),
) -> ConsumedRecord:
    return ConsumedRecord(
        topic, partition, offset, key, value, tuple(headers), int(time.time() * 1000)
    )


class FakeKafkaConsumer:
    """The group's consumer (KafkaConsumerPort): hands out what a test queued with `fetch`,
    in order, as the adapter does (an UnreadableRecord at its place); records commits,
    pauses and the rebalance hooks it was given."""

    def __init__(self, assigned: Iterable[Partition] = ()) -> None:
        self.assigned = set(assigned)
        self.commits: list[dict[Partition, int]] = []
        self.refuse_commits = False  # the broker away: commits fail (the adapter says False)
        self.highwaters: dict[Partition, int] = {}
        self.revoked: PartitionsHook | None = None
        self.assigned_hook: PartitionsHook | None = None
        self.running = False
        self._paused: set[Partition] = set()
        self._fetchable: list[ConsumedRecord | UnreadableRecord] = []
        self._arrived = asyncio.Event()

    def fetch(self, *fetched: ConsumedRecord | UnreadableRecord) -> None:
        """What the next polls hand out."""
        self._fetchable.extend(fetched)
        self._arrived.set()

    def subscribe(self, topic: str, revoked: PartitionsHook, assigned: PartitionsHook) -> None:
        self.revoked, self.assigned_hook = revoked, assigned

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> list[ConsumedRecord | UnreadableRecord]:
        if not self._fetchable:  # a poll waits for records, at most its timeout
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
        fetched = [f for f in self._fetchable[:max_records] if f.at in self.assigned - self._paused]
        for f in fetched:
            self._fetchable.remove(f)
        return fetched

    def assignment(self) -> set[Partition]:
        return set(self.assigned)

    def paused(self) -> set[Partition]:
        return set(self._paused)

    def pause(self, *partitions: Partition) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions: Partition) -> None:
        self._paused -= set(partitions)

    def highwater(self, partition: Partition) -> int | None:
        return self.highwaters.get(partition)

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        if self.refuse_commits:
            return False
        self.commits.append(dict(offsets))
        return True

    async def topics(self) -> set[str]:
        return {p.topic for p in self.assigned}

    def committed_offset(self, partition: Partition) -> int | None:
        """The last offset committed for `partition` (None: never)."""
        for commit in reversed(self.commits):
            if partition in commit:
                return int(commit[partition])
        return None


class FakeProducer:
    """The dead-letter producer's AIOKafkaProducer, under the real DeadLetterProducer
    (consumer.adapters.kafka.dead_letters): send_and_wait, kept in a list."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, key, value, list(headers or ())))


class FakeMemberReports:
    """MemberReports: the reports kept in a list, and whether it left."""

    def __init__(self, member: str = "host-1-abc", heartbeat_s: float = 5.0) -> None:
        self._member = member
        self._heartbeat_s = heartbeat_s
        self.reports: list[tuple[list[int], list[Stall]]] = []
        self.left = False

    @property
    def member(self) -> str:
        return self._member

    @property
    def heartbeat_s(self) -> float:
        return self._heartbeat_s

    async def report(self, partitions: list[int], stalls: list[Stall]) -> None:
        self.reports.append((partitions, stalls))

    async def leave(self) -> None:
        self.left = True


# --- the link lifecycle's backfill ------------------------------------------------------------


class FakeBackfills:
    """BackfillRecords over FakeRepository's bookings and link_bookings: keyset pages of an
    activity's bookings ending after the horizon (ordered by end, then id), and the record
    of each backfill; it counts the bookings it handed out."""

    def __init__(self, repository: FakeRepository) -> None:
        self.db = repository
        self.records: dict[int, dict[str, Any]] = {}
        self.read = 0  # bookings handed out in pages, in all
        self.pages: list[tuple[str, datetime]] = []  # (which, horizon) of each page asked
        self.backfilled: list[str] = []  # links marked backfilled

    def _held(self, link_id: str, event: BookingEvent) -> HeldBooking:
        return HeldBooking(event, self.db.link_bookings.get((link_id, event.booking.id)))

    async def activity_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage:
        self.pages.append(("activity", since))
        start = (after.end, after.booking_id) if after is not None and after.end else None
        found = sorted(
            (e for e in self.db.bookings.values() if e.booking.activity_id == activity_id),
            key=lambda e: (e.booking.end, e.booking.id),
        )
        page = [
            e
            for e in found
            if e.booking.end > since and (start is None or (e.booking.end, e.booking.id) > start)
        ][:limit]
        self.read += len(page)
        last = BookingPosition(page[-1].booking.id, page[-1].booking.end) if page else None
        return BookingsPage(
            [self._held(link_id, e) for e in page], last if len(page) == limit else None
        )

    async def moved_away_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage:
        self.pages.append(("moved_away", since))
        held = sorted(
            booking_id
            for (link, booking_id), rec in self.db.link_bookings.items()
            if link == link_id and rec.google_event_id is not None
        )
        page = [
            self.db.bookings[b]
            for b in held
            if (after is None or b > after.booking_id)
            and b in self.db.bookings
            and self.db.bookings[b].booking.activity_id != activity_id
            and self.db.bookings[b].booking.end > since
        ][:limit]
        self.read += len(page)
        last = BookingPosition(page[-1].booking.id) if page else None
        return BookingsPage(
            [self._held(link_id, e) for e in page], last if len(page) == limit else None
        )

    async def mark_backfilled(self, link_id: str) -> None:
        self.backfilled.append(link_id)

    async def start_backfill(
        self,
        link_id: str,
        calendar_id: str,
        calendar_name: str | None,
        trigger: str,
        horizon: datetime,
    ) -> int:
        backfill_id = len(self.records) + 1
        self.records[backfill_id] = {
            "link_id": link_id,
            "calendar_id": calendar_id,
            "trigger": trigger,
            "horizon": horizon,
            "total": None,
            "done": 0,
            "finished": False,
        }
        return backfill_id

    async def backfill_total(self, backfill_id: int, total: int) -> None:
        self.records[backfill_id]["total"] = total

    async def backfill_progress(
        self, backfill_id: int, done: int, counts: Mapping[str, int]
    ) -> None:
        self.records[backfill_id].update(done=done, counts=dict(counts))

    async def finish_backfill(
        self, backfill_id: int, done: int, counts: Mapping[str, int], error: str | None
    ) -> None:
        self.records[backfill_id].update(done=done, counts=dict(counts), error=error, finished=True)

    async def backfills(self, ids: list[int]) -> list[Backfill]:
        return []

    async def latest_backfills(self, link_ids: list[str]) -> dict[str, Backfill]:
        return {}


class FakeRepairLedger:
    """RepairLedger: what was owed, per (link, booking) its version, and the renewals."""

    def __init__(self) -> None:
        self.owed: dict[tuple[str, str], int] = {}
        self.renewed = 0

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None:
        for booking_id, version in pairs:
            self.owed[(link_id, booking_id)] = version

    async def renew(self, member: str, lease_s: float) -> None:
        self.renewed += 1
