"""The services' ports: what each service needs of the outside, as Protocols.

The adapters implement them (consumer.adapters: PostgreSQL stores, Kafka, Google); the unit
tier's fakes (tests/unit/fakes.py) implement them too and type-check against them. A service
names the port it uses, never the adapter's class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from consumer.adapters.postgres.ops_store import Overview
from consumer.domain.messages import BadMessage
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
    ConsumedRecord,
    DeadLetterRecord,
    Deployment,
    GrantedAccount,
    GroupAtBroker,
    HorizonBooking,
    KafkaRecord,
    KnownBooking,
    LastResult,
    Lease,
    LeaseRequest,
    Member,
    Partition,
    PartitionOffsets,
    PrunedBatch,
    ReconcileRunState,
    RepairCount,
    RepairsDue,
    RetentionCutoffs,
    Stall,
    StoredConnection,
    StrandedEvent,
    TakenState,
    UnreadableRecord,
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


# --- the consumer runner (consumer.service.runner) ----------------------------------------------

# What the runner is told when the group takes partitions from it or gives it some.
PartitionsHook = Callable[[list[Partition]], Awaitable[None]]


class KafkaConsumerPort(Protocol):
    """The group's consumer (consumer.adapters.kafka.consumer): the Kafka mechanics are its
    own (the rebalance listener, rewinds past a record the client cannot read, a commit
    bounded by its timeout); which offsets to commit, and when, is the runner's."""

    def subscribe(self, topic: str, revoked: PartitionsHook, assigned: PartitionsHook) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> list[ConsumedRecord | UnreadableRecord]:
        """The records fetched, in each partition's order; a record the client could not read
        comes as an UnreadableRecord at its place (nothing before it is lost; the reading
        goes on past it)."""
        ...

    def assignment(self) -> set[Partition]: ...

    def paused(self) -> set[Partition]: ...

    def pause(self, *partitions: Partition) -> None: ...

    def resume(self, *partitions: Partition) -> None: ...

    def highwater(self, partition: Partition) -> int | None: ...

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        """Commit these offsets within `timeout_s`; False (said in a warning) when the broker
        refused or did not answer in time: the next commit carries them."""
        ...

    async def topics(self) -> set[str]: ...


class DeadLetterCopies(Protocol):
    """The dead-letter topic (consumer.adapters.kafka.dead_letters)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_copy(self, record: ConsumedRecord, bad: BadMessage) -> str | None:
        """Put the record's copy on the dead-letter topic; what the dead letter's row says
        of it (None: sent whole; else why only a minimal copy, or none). A fault that passes
        (the broker away) is raised: the caller tries again."""
        ...


class DeadLetterRows(Protocol):
    """The dead letters' rows (consumer.adapters.postgres.repository)."""

    async def record_dead_letter(
        self,
        position: MessagePosition,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        error_type: str,
        error: str,
    ) -> tuple[int, bool]: ...

    async def mark_dead_letter_published(
        self, dead_letter_id: int, copy_error: str | None = None
    ) -> None: ...

    async def dead_letter_reprocessed(self, dead_letter_id: int) -> bool: ...

    async def mark_dead_letter_reprocessed(self, dead_letter_id: int) -> None: ...


class MemberReports(Protocol):
    """This process as a member of its group, reported in PostgreSQL every `heartbeat_s`
    (consumer.adapters.postgres.members)."""

    @property
    def member(self) -> str: ...

    @property
    def heartbeat_s(self) -> float: ...

    async def report(self, partitions: list[int], stalls: list[Stall]) -> None: ...

    async def leave(self) -> None: ...


class BookingHandler(Protocol):
    """What the runner hands a booking event to (the sync engine): it returns once every
    result is recorded."""

    async def handle(self, event: BookingEvent, position: MessagePosition | None) -> object: ...


# --- retention -------------------------------------------------------------------------------


class RetentionBatches(Protocol):
    """A retention pass's session: the group's retention lock is held while it lives."""

    async def due(self) -> bool: ...

    async def schedule_next(self, interval_s: float) -> None: ...

    async def prune(
        self, table: str, cutoffs: RetentionCutoffs, limit: int, after: str | None
    ) -> PrunedBatch: ...


class RetentionRecords(Protocol):
    """The tables retention prunes, one process of the group at a time."""

    def exclusive(self) -> AbstractAsyncContextManager[RetentionBatches | None]: ...


# --- reconcile ---------------------------------------------------------------------------------


class ReconcileRecords(Protocol):
    """The records as reconcile reads and writes them: its runs, the group's schedule, and
    what a link's comparison needs (from the horizon on, never the history)."""

    async def active_links(self, link_filter: str | None) -> list[str]: ...

    async def new_run(
        self, trigger: str, who: str, executed: bool, link_filter: str | None, links_total: int
    ) -> int: ...

    async def run(self, run_id: int) -> ReconcileRunState | None: ...

    async def save_progress(
        self,
        run_id: int,
        links_done: Sequence[str],
        events_seen: int,
        found: Mapping[str, int],
        repaired: Mapping[str, int],
        report: Sequence[Mapping[str, Any]],
    ) -> None: ...

    async def heartbeat(self, run_id: int, progress: Mapping[str, Any]) -> None: ...

    async def finish(self, run_id: int, error: str | None) -> None: ...

    def schedule_turn(self) -> AbstractAsyncContextManager[bool]: ...

    async def unfinished_run(self, stale_s: float) -> int | None: ...

    async def schedule_due(self, interval_s: float) -> bool: ...

    async def schedule_next(self, interval_s: float) -> None: ...

    async def link(self, link_id: str) -> LinkRow | None: ...

    async def link_states(self, link_ids: Collection[str]) -> dict[str, tuple[str, str | None]]: ...

    def horizon_bookings(
        self, link_id: str, activity_id: str, calendar_id: str, since: datetime
    ) -> AsyncIterator[list[HorizonBooking]]: ...

    async def known_bookings(
        self, link_id: str, calendar_id: str, booking_ids: Collection[str], since: datetime
    ) -> dict[str, KnownBooking]: ...

    async def latest_booking(self, booking_id: str) -> BookingEvent | None: ...

    async def stranded(self, link_id: str, since: datetime) -> list[StrandedEvent]: ...

    def stranded_elsewhere(self, since: datetime) -> AsyncIterator[list[StrandedEvent]]: ...

    async def unstrand(self, calendar_id: str, event_id: str) -> None: ...


class ManagedEvents(Protocol):
    """Google's listing of a calendar's events of ours, a page at a time, from `time_min`
    on (events that end after it)."""

    async def managed_events_page(
        self,
        token: str,
        calendar_id: str,
        page_token: str | None,
        time_min: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...


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
