"""The services' ports: what each service needs of the outside, as Protocols.

The adapters implement them (consumer.adapters: PostgreSQL stores, Kafka, Google); the unit
tier's fakes (tests/unit/fakes.py) implement them too and type-check against them. A service
names the port it uses, never the adapter's class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from consumer.adapters.postgres.ops_store import Overview
from consumer.domain.models import (
    BookingEvent,
    CalendarLink,
    LinkRow,
    LinkState,
    LinkTokens,
    MessagePosition,
    SyncResult,
)
from consumer.domain.records import (
    Activation,
    Backfill,
    BookingPosition,
    BookingsPage,
    CalendarInfo,
    Claim,
    DeadLetterRecord,
    Deployment,
    GrantedAccount,
    GroupAtBroker,
    KafkaRecord,
    LastResult,
    Member,
    PartitionOffsets,
    RepairCount,
    StoredConnection,
    TakenState,
)

# --- the sync engine -------------------------------------------------------------------------


class SyncRecords(Protocol):
    """What the sync engine reads and writes of bookings and links (outside a claim)."""

    async def upsert_bookings(self, events: list[BookingEvent]) -> None: ...

    async def links_of_activities(self, activity_ids: set[str]) -> dict[str, list[LinkRow]]: ...

    async def links_holding(self, booking_ids: set[str]) -> dict[str, list[LinkRow]]: ...

    async def latest_booking(self, booking_id: str) -> BookingEvent | None: ...

    async def leave_active(self, link_id: str, state: LinkState, reason: str) -> float | None: ...

    async def leave_active_grant(
        self, account: str, reason: str
    ) -> list[tuple[str, str, str | None, float]]: ...

    async def forget_event(self, link_id: str, booking_id: str, event_id: str) -> None: ...


class Claims(Protocol):
    """(link, booking) pairs worked by one process at a time, group-wide, and their results
    recorded durably (the sync store)."""

    async def claim(self, link_id: str, booking_id: str) -> Claim: ...

    async def record(
        self,
        claim: Claim,
        event: BookingEvent,
        position: MessagePosition | None,
        result: SyncResult,
        source: str,
    ) -> None: ...

    async def release(self, claim: Claim) -> None: ...

    async def close(self) -> None: ...


# --- Google --------------------------------------------------------------------------------------


class CalendarGateway(Protocol):
    """Google Calendar's calls; each carries its own access token (links belong to different
    accounts). A failure is a GoogleApiError."""

    async def insert_event(
        self, token: str, calendar_id: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def update_event(
        self, token: str, calendar_id: str, event_id: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None: ...

    async def get_event(self, token: str, calendar_id: str, event_id: str) -> dict[str, Any]: ...

    async def calendar_entry(self, token: str, calendar_id: str) -> CalendarInfo: ...


class AccessTokens(Protocol):
    """Access tokens per Google account (its one grant, shared by all its links)."""

    async def access_token(
        self, account: str, stored: LinkTokens | None, rejected: str | None = None
    ) -> str: ...

    def forget(self, account: str) -> None: ...


class Quota(Protocol):
    """Google's quotas, kept by the whole consumer group (per account and per project)."""

    @property
    def limited(self) -> bool: ...

    async def acquire(
        self, account: str, ticket: int = 0, max_wait_s: float | None = None
    ) -> None: ...

    def expected_wait(self, account: str) -> float: ...

    async def refused(self, account: str, reason: str, retry_after_s: float | None) -> None: ...

    async def pause(self, account: str | None, reason: str) -> float: ...

    async def lift_pauses(self, account: str | None) -> int: ...

    async def close(self) -> None: ...


# --- on-call: `calsync status`, `calsync replay`, `calsync dlq`, the gauges ---------------------


class OpsRecords(Protocol):
    """The database as on-call tooling reads and records it."""

    async def ping(self, timeout_s: float) -> None: ...

    async def deployment(self, configured: str | None) -> Deployment: ...

    async def alive_members(self, group_id: str) -> list[Member]: ...

    async def overview(self) -> Overview: ...

    async def repair_counts(self) -> list[RepairCount]: ...

    async def link_state_counts(self) -> dict[str, int]: ...

    async def record_replay(
        self,
        who: str,
        group: str,
        topic: str,
        spec: str,
        executed: bool,
        resync: bool,
        plan: Sequence[Mapping[str, Any]],
        resynced: int | None,
    ) -> int: ...

    async def dead_letters(self, include_replayed: bool) -> list[DeadLetterRecord]: ...

    async def dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None: ...

    async def mark_dead_letter_replayed(self, dead_letter_id: int, who: str) -> None: ...


class Publishing(Protocol):
    async def publish(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None: ...


class GroupAdmin(Protocol):
    """The broker as on-call tooling asks it."""

    async def offsets(
        self, group: str, topic: str, partitions: Sequence[int] | None = None
    ) -> list[PartitionOffsets]: ...

    async def offsets_at(
        self, topic: str, partitions: Sequence[int], at_ms: int
    ) -> dict[int, int]: ...

    async def known_groups(self) -> set[str]: ...

    async def group(self, group: str) -> GroupAtBroker: ...

    async def commit_as_only_member(
        self, group: str, topic: str, offsets: dict[int, int]
    ) -> None: ...

    def records(
        self, topic: str, ranges: dict[int, tuple[int, int]]
    ) -> AsyncIterator[KafkaRecord]: ...

    def publisher(self) -> AbstractAsyncContextManager[Publishing]: ...


# --- the link lifecycle: connect, backfill, disconnect, inspect ------------------------------


class LinkRecords(Protocol):
    """The links as stored, and what connecting, choosing, importing and disconnecting one
    change (the link store). Refusals: StateRefused, CalendarTaken."""

    async def link(self, link_id: str) -> LinkRow | None: ...

    async def links_of_activity(self, activity_id: str) -> list[LinkRow]: ...

    async def all_links(self) -> list[LinkRow]: ...

    async def save_state(
        self, nonce: str, activity_id: str, code_verifier: str, expires_at: datetime
    ) -> None: ...

    async def take_state(self, nonce: str) -> TakenState: ...

    async def connect(
        self, pending: CalendarLink, tokens: LinkTokens, asked_at: datetime
    ) -> StoredConnection: ...

    async def import_link(self, link: CalendarLink, tokens: LinkTokens) -> None: ...

    async def activate(self, link_id: str, calendar_id: str) -> Activation: ...

    async def use_form_token(self, jti: str, link_id: str, expires_at: datetime) -> bool: ...

    async def mark_disconnected(self, link_id: str, reason: str) -> float: ...

    async def wait_for_in_flight(self, link_id: str, timeout_s: float) -> bool: ...

    async def recorded_events(self, link_id: str, calendar_id: str) -> list[tuple[str, str]]: ...

    async def events_elsewhere(
        self, link_id: str, calendar_id: str
    ) -> list[tuple[str, str, str]]: ...

    async def strand(self, link_id: str, left: list[tuple[str, str, str, str]]) -> None: ...

    async def drop_repairs(self, link_id: str) -> None: ...

    async def forget_events(self, link_id: str) -> int: ...

    async def release_grant(
        self, account: str, link_id: str, revoke: Callable[[str], Awaitable[bool]]
    ) -> tuple[bool, list[str]]: ...

    async def finish_disconnect(self, link_id: str, reason: str) -> None: ...


class BackfillRecords(Protocol):
    """The bookings a backfill reads (keyset pages within the horizon) and its record in
    `backfills` (the backfill store)."""

    async def activity_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage: ...

    async def moved_away_page(
        self,
        link_id: str,
        activity_id: str,
        since: datetime,
        after: BookingPosition | None,
        limit: int,
    ) -> BookingsPage: ...

    async def mark_backfilled(self, link_id: str) -> None: ...

    async def start_backfill(
        self,
        link_id: str,
        calendar_id: str,
        calendar_name: str | None,
        trigger: str,
        horizon: datetime,
    ) -> int: ...

    async def backfill_total(self, backfill_id: int, total: int) -> None: ...

    async def backfill_progress(
        self, backfill_id: int, done: int, counts: Mapping[str, int]
    ) -> None: ...

    async def finish_backfill(
        self, backfill_id: int, done: int, counts: Mapping[str, int], error: str | None
    ) -> None: ...

    async def backfills(self, ids: list[int]) -> list[Backfill]: ...

    async def latest_backfills(self, link_ids: list[str]) -> dict[str, Backfill]: ...


class LinkHealthRecords(Protocol):
    """What the links page shows of each link (the link health store)."""

    async def events_synced(self, link_ids: list[str]) -> dict[str, int]: ...

    async def last_results(self, link_ids: list[str]) -> dict[str, LastResult]: ...

    async def repair_backlog(self, link_ids: list[str]) -> dict[str, int]: ...

    async def activities(self) -> list[dict[str, Any]]: ...

    async def calendar_names(self, calendars: Mapping[str, str]) -> dict[str, str]: ...


class OAuthFlow(Protocol):
    """Google's consent (the OAuth client): blocking calls (`exchange`, `revoke`) run in a
    thread. Refusals: OAuthRefused."""

    def authorization_url(
        self, nonce: str, login_hint: str | None = None
    ) -> tuple[str, str, datetime]: ...

    def read_state(self, state: str) -> str: ...

    def exchange(self, code: str, code_verifier: str) -> GrantedAccount: ...

    def revoke(self, token: str) -> bool: ...


class LinkCalendars(Protocol):
    """Google's calls an operator's link work makes (through the call policy's
    `operator`): the account's calendars, a link's events, deleting one."""

    async def list_calendars(self, token: str) -> list[CalendarInfo]: ...

    async def list_link_events(
        self, token: str, calendar_id: str, link_id: str
    ) -> list[dict[str, Any]]: ...

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None: ...


class RepairLedger(Protocol):
    """What a backfill owes a link, written in `repairs` before it is worked and leased to
    the process working it (if it stops, the group's repair loop finishes it)."""

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None: ...

    async def renew(self, member: str, lease_s: float) -> None: ...
