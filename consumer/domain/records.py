"""Plain records: what the stores read back, as the services and entrypoints use it.

Frozen dataclasses with no behaviour to speak of; the adapters build them from rows, the
services turn them into answers (consumer.service.answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from consumer.domain.models import BookingEvent, LinkState, LinkTokens, RecordedEvent


@dataclass(frozen=True)
class RepairCount:
    """The repairs of active links waiting for one reason: how many, how many due now, since
    when the oldest waits, and the database's clock when it was read."""

    reason: str
    waiting: int
    due: int
    oldest: datetime
    now: datetime


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as recorded; the message itself (key, value, headers in their order)
    only where it was asked for."""

    id: int
    recorded_at: datetime
    topic: str
    kafka_partition: int
    kafka_offset: int
    # The record's own timestamp (with its position and a digest of key and value, what the
    # dead letter is known by); None when unknown (recorded before it was kept, unreadable).
    record_timestamp: datetime | None
    error_type: str
    error: str
    published_at: datetime | None  # its copy went to the dead-letter topic (or was refused)
    copy_error: str | None  # why there is no copy, or only a minimal one
    replayed_at: datetime | None
    replayed_by: str | None
    reprocessed_at: datetime | None
    message_key: bytes | None = None
    message_value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class DeadLetterTally:
    waiting: int
    total: int
    oldest_waiting: datetime | None


@dataclass(frozen=True)
class ReconcileRunRecord:
    """A reconcile run as recorded in `reconcile_runs`."""

    id: int
    trigger: str
    executed: bool
    started_at: datetime
    finished_at: datetime | None
    links_done: int
    links_total: int
    events_seen: int
    found: dict[str, int]
    repaired: dict[str, int]
    progress: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class Member:
    """A consumer process of a group, as it last reported itself."""

    member: str
    host: str
    pid: int
    topic: str
    partitions: list[int]
    stalls: list[dict[str, Any]]
    started_at: datetime
    seen_at: datetime


@dataclass(frozen=True)
class Stall:
    """A partition held back by its oldest unrecorded message (kept in consumer_members)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    cause: str  # the last failure of the message, or "in progress"
    waiting_s: float


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition's offsets: its first and next offsets, and the group's committed one."""

    partition: int
    earliest: int
    latest: int
    committed: int | None


@dataclass(frozen=True)
class GroupAtBroker:
    """The group as the broker describes it (its members as the broker still lists them)."""

    state: str
    members: int | None


@dataclass(frozen=True)
class KafkaRecord:
    """A record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Deployment:
    """Which deployment this is: its id, and where the id comes from (CALSYNC_DEPLOYMENT_ID,
    or the one `calsync migrate` made for the database)."""

    id: str
    source: Literal["setting", "database"]


@dataclass(frozen=True)
class CalendarInfo:
    """One calendar of an account's calendar list, as Google lists it: whether it can receive
    bookings (`writable`: the access role is writer or owner)."""

    id: str
    name: str
    primary: bool
    writable: bool
    access_role: str


@dataclass(frozen=True)
class Claim:
    """A (link, booking) pair this process alone works on, group-wide (the sync store's
    locks), with what was read under them."""

    link_id: str
    booking_id: str
    recorded: RecordedEvent | None  # None when never applied
    state: LinkState  # the link's state, read under its shared lock
    epoch: int  # which connection holds the locks
    repair_attempts: int = 0  # failures of this pair so far, as its repair row says
    calendar_id: str | None = None  # the link's calendar, read under its shared lock
    state_changed_at: float = 0.0  # since when the link is in `state` (epoch seconds)
    latest_version: int | None = None  # the booking's latest version taken in (bookings)
    # An event of ours for this pair left on the link's current calendar by an earlier move
    # away from it (stranded): taken back instead of creating a second one.
    stranded_event_id: str | None = None


# --- the link lifecycle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backfill:
    """A backfill as recorded: `now` is the database's clock when it was read; `total` is
    how many bookings it writes (counted before it starts: those of the horizon that need
    an operation), None until counted."""

    id: int
    link_id: str
    calendar_id: str
    calendar_name: str | None
    trigger: str
    total: int | None
    done: int
    counts: dict[str, int]
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None
    now: datetime
    horizon: datetime | None = None  # bookings ending after it are covered (None: before 017)


@dataclass(frozen=True)
class LastResult:
    """A link's latest result in `sync_results`, as the links page shows it."""

    operation: str
    outcome: str
    reason: str
    source: str
    booking_id: str
    recorded_at: datetime


@dataclass(frozen=True)
class Activation:
    """A calendar chosen: the link that is now active (an earlier one, when revived)."""

    link_id: str
    merged_from: str | None  # the pending link folded into it


@dataclass(frozen=True)
class TakenState:
    """A started connection, used: its activity, PKCE verifier, and when it was used (the
    database's clock, before Google's code is exchanged)."""

    activity_id: str
    code_verifier: str
    taken_at: datetime


@dataclass(frozen=True)
class GrantedAccount:
    """What Google granted at a consent: the account, its tokens, the scopes."""

    email: str
    tokens: LinkTokens
    scopes: list[str]


@dataclass(frozen=True)
class StoredConnection:
    """What a connection stored: the account's links reconnected (every activity), those
    of them in the connection's activity, and the new pending link when there were none."""

    reconnected: list[str]
    here: list[str]
    created: str | None


@dataclass(frozen=True)
class BookingPosition:
    """Where a keyset page of bookings ends: the last booking's id, and its end when the
    pages are ordered by end first (an activity's bookings; None otherwise)."""

    booking_id: str
    end: datetime | None = None


@dataclass(frozen=True)
class HeldBooking:
    """A booking as a backfill reads it: its latest recorded state and what the link holds
    for it (None when nothing was ever applied)."""

    event: BookingEvent
    recorded: RecordedEvent | None


@dataclass(frozen=True)
class BookingsPage:
    """One keyset page of bookings: those readable, and where the next page starts (None:
    this was the last one)."""

    bookings: list[HeldBooking]
    next: BookingPosition | None
