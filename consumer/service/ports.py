"""The services' ports: what each service needs of the outside, as Protocols.

The adapters implement them (consumer.adapters: PostgreSQL stores, Kafka, Google); the unit
tier's fakes (tests/unit/fakes.py) implement them too and type-check against them. A service
names the port it uses, never the adapter's class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from consumer.adapters.postgres.ops_store import Overview
from consumer.domain.models import (
    BookingEvent,
    LinkRow,
    LinkState,
    LinkTokens,
    MessagePosition,
    SyncResult,
)
from consumer.domain.records import (
    CalendarInfo,
    Claim,
    DeadLetterRecord,
    Deployment,
    GroupAtBroker,
    KafkaRecord,
    Lease,
    LeaseRequest,
    Member,
    PartitionOffsets,
    RepairCount,
    RepairsDue,
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


# --- the repair loop (consumer.service.repairs) -------------------------------------------------


class RepairQueue(Protocol):
    """The `repairs` queue: what the repair loop leases and settles, what backfills and
    reconciles owe to it, and what is due (the work owed, issue 22 point 5)."""

    async def lease(self, ask: LeaseRequest) -> Lease: ...

    async def release(self, member: str) -> None: ...

    async def drop_inactive(self) -> int: ...

    async def settle_gone(self, link_id: str, booking_id: str) -> None: ...

    async def make_due(self, link_id: str | None) -> int: ...

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None: ...

    async def renew(self, member: str, lease_s: float) -> None: ...

    async def due(self, top: int) -> RepairsDue: ...


class RepairReads(Protocol):
    """What the repair loop reads of the links and bookings it repairs (the repository)."""

    async def links_by_id(self, link_ids: set[str]) -> dict[str, LinkRow]: ...

    async def latest_bookings(self, booking_ids: set[str]) -> dict[str, BookingEvent]: ...
