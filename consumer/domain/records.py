"""Plain records: what the stores read back, as the services and entrypoints use it.

Frozen dataclasses with no behaviour to speak of; the adapters build them from rows, the
services turn them into answers (consumer.service.answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from consumer.domain.models import (
    BookingEvent,
    LinkState,
    LinkTokens,
    MessagePosition,
    RecordedEvent,
)


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


# --- the consumer runner's records (consumer.service.runner) -----------------------------------


class Partition(NamedTuple):
    """A partition of a topic. A named tuple as the Kafka client's own TopicPartition, so the
    two compare (and hash) alike."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record the group's consumer fetched, as the runner reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int  # the record's own timestamp (0: unknown)

    @property
    def at(self) -> Partition:
        return Partition(self.topic, self.partition)

    @property
    def position(self) -> MessagePosition:
        return MessagePosition(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class UnreadableRecord:
    """A record the Kafka client could not read (a header key that is not UTF-8, a corrupt
    batch): only where it is, and what the client raised."""

    topic: str
    partition: int
    offset: int
    failure: BaseException

    @property
    def at(self) -> Partition:
        return Partition(self.topic, self.partition)


# What a retention pass prunes, in the order it prunes them (consumer/service/retention.py).
# `bookings` last: its rule reads link_bookings and repairs as they are then.
PRUNED_TABLES = (
    "sync_results",
    "dead_letters",
    "reconcile_runs",
    "replays",
    "backfills",
    "consumer_members",
    "page_form_tokens",
    "page_sessions",
    "page_login_failures",
    "oauth_states",
    "bookings",
)


@dataclass(frozen=True)
class RetentionCutoffs:
    """What one retention pass may remove. `before`: now minus CALSYNC_RESULTS_RETENTION_DAYS
    (results, settled dead letters, finished runs, replays, members, bookings last changed
    before it). `horizon`: now minus CALSYNC_BACKFILL_PAST_DAYS (consumer.domain.horizon): a
    booking ending at or before it can no longer need an event from backfill, reconcile or
    repair. `now`: the pass's clock, for what expires (sessions, forms, sign-in states).
    `login_window_s`: failed sign-ins are forgotten once their window and block are over (as
    the pages themselves forget them)."""

    now: datetime
    before: datetime
    horizon: datetime
    login_window_s: float


@dataclass(frozen=True)
class PrunedBatch:
    """One batch of a retention pass: rows removed, where the next batch starts (tables
    walked by key), and whether there may be more."""

    pruned: int
    more: bool
    after: str | None = None


# --- reconcile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HorizonBooking:
    """A booking of a link's activity that ends after the horizon (its latest state), with
    the event the link's records hold for it on the link's calendar (None: none there)."""

    event: BookingEvent
    recorded_event_id: str | None
    ends_at: datetime  # with the booking id, where the next keyset page starts


@dataclass(frozen=True)
class KnownBooking:
    """A booking an event on a calendar names, as the records know it: whether it ends
    after the horizon, and the event the reconciled link records for it on its calendar."""

    booking_id: str
    within_horizon: bool
    recorded_event_id: str | None


@dataclass(frozen=True)
class StrandedEvent:
    """An event of ours left on a calendar a link moved away from (`stranded_events`); for
    one of a link not active any more, the active link of the same account whose token may
    remove it (`helper_link_id`, None: there is none)."""

    link_id: str
    booking_id: str
    calendar_id: str
    google_event_id: str
    helper_link_id: str | None = None


@dataclass(frozen=True)
class ReconcileRunState:
    """How far a reconcile run got, as recorded: where a resumed run starts again."""

    id: int
    executed: bool
    link_filter: str | None
    links_done: list[str]
    events_seen: int
    found: dict[str, int]
    repaired: dict[str, int]
    report: list[dict[str, Any]]  # the links with something to say (drift, an error)


# --- the repair queue (consumer.service.repairs, consumer.adapters.postgres.repair_store) ---


@dataclass(frozen=True)
class LeaseRequest:
    """What one poll of the repair loop asks for: at most `limit` repairs due, at most
    `places[account]` of an account this process already works repairs of (`per_account`
    of any other), leased to `member` for `lease_s`. Accounts are visited in turn, a window
    of them per poll, starting after `after` ('' : from the first); `link_id` narrows the
    poll to one link (`calsync repair --link`)."""

    member: str
    limit: int
    per_account: int
    lease_s: float
    places: tuple[tuple[str, int], ...] = ()  # (account, places left here)
    after: str = ""
    link_id: str | None = None


@dataclass(frozen=True)
class LeasedRepair:
    """A repair this process holds the lease of: the pair, why it is owed, its account."""

    link_id: str
    booking_id: str
    reason: str
    account: str


@dataclass(frozen=True)
class Lease:
    """One poll's answer: what was leased, and where the walk over the accounts stopped
    (`last_account`; `swept_to_end`: no account after it has repairs, the next poll starts
    from the first again)."""

    repairs: tuple[LeasedRepair, ...]
    last_account: str
    swept_to_end: bool


@dataclass(frozen=True)
class RepairsDue:
    """Repairs of active links due now: in all, and per account for the accounts with the
    most (at most the number asked for, the most first)."""

    total: int
    by_account: tuple[tuple[str, int], ...]


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
