"""What the services answer: frozen pydantic models, rendered by the entrypoints.

A service says what happened (a link, a disconnect's outcome, the on-call status, a dead
letter); how it looks is the entrypoint's business: the HTTP API and the `--json` outputs
dump a model (`model_dump()`, the same keys in the same order, with `null` where a value is
missing), the CLI's text and the pages read its attributes. Timestamps that the answers have
always carried as ISO 8601 text (`datetime.isoformat()`, `+00:00` rather than pydantic's
`Z`) are `IsoDatetime`: a `datetime` to the code, that text when dumped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_serializer

from consumer.domain.models import LinkRow
from consumer.domain.records import CalendarInfo


def _iso(moment: datetime) -> str:
    return moment.isoformat()


IsoDatetime = Annotated[datetime, PlainSerializer(_iso, return_type=str)]


class Answer(BaseModel):
    """The base of every service answer: frozen, strict (a value is never quietly coerced:
    an int stays an int, a bool a bool), no unknown fields. Code reads its attributes; the
    entrypoints render it with `model_dump()`."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


# --- links ------------------------------------------------------------------------------------


class LinkSummary(Answer):
    """A link as the CLI, the HTTP API and the pages show it: never its tokens."""

    id: str
    activity_id: str
    account_email: str
    calendar_id: str | None
    state: str
    state_reason: str | None
    state_changed_at: IsoDatetime
    created_at: IsoDatetime
    backfilled_at: IsoDatetime | None

    @classmethod
    def of(cls, row: LinkRow) -> LinkSummary:
        link = row.link
        return cls(
            id=link.id,
            activity_id=link.activity_id,
            account_email=link.account_email,
            calendar_id=link.calendar_id,
            state=link.state.value,
            state_reason=row.state_reason,
            state_changed_at=row.state_changed_at,
            created_at=row.created_at,
            backfilled_at=row.backfilled_at,
        )


class ActivitySummary(Answer):
    """An activity with links: how many are live, how many need someone (the pages' index)."""

    activity_id: str
    live: int
    needing_action: int


class CalendarSummary(Answer):
    """One of an account's calendars, as answered: whether it can receive bookings."""

    id: str
    name: str
    primary: bool
    writable: bool

    @classmethod
    def of(cls, calendar: CalendarInfo) -> CalendarSummary:
        return cls(
            id=calendar.id, name=calendar.name, primary=calendar.primary, writable=calendar.writable
        )


class ListedCalendar(CalendarSummary):
    """One of an account's calendars as `calsync links calendars` and
    `GET /links/{id}/calendars` list it: `taken` when another live link of the activity
    already syncs it (whichever account's), so it cannot be chosen for this link."""

    taken: bool

    @classmethod
    def of(cls, calendar: CalendarInfo, taken: bool = False) -> ListedCalendar:
        return cls(
            id=calendar.id,
            name=calendar.name,
            primary=calendar.primary,
            writable=calendar.writable,
            taken=taken,
        )


def _calendar_summary(calendar: CalendarInfo) -> dict[str, Any]:
    return CalendarSummary.of(calendar).model_dump()


class ConnectStarted(Answer):
    """The consent URL to open, and until when its signed state is accepted."""

    activity_id: str
    authorization_url: str
    redirect_uri: str
    expires_at: IsoDatetime


class Connected(Answer):
    """Google's redirect, done: the account's link(s) and calendars."""

    activity_id: str
    account_email: str
    links: list[LinkSummary]
    reconnected: list[str]
    backfill: dict[str, dict[str, int]]  # per reconnected link, when waited for: the counts
    calendars: list[CalendarInfo]  # dumped as CalendarSummary (no access role)
    backfill_ids: dict[str, int] = Field(exclude=True)  # per reconnected link: its backfill

    @field_serializer("calendars")
    def _calendars(self, calendars: list[CalendarInfo]) -> list[dict[str, Any]]:
        return [_calendar_summary(c) for c in calendars]


class Chosen(Answer):
    """A calendar chosen: the link is active and its backfill started (or done)."""

    link: LinkSummary
    calendar: CalendarInfo  # dumped as CalendarSummary
    merged_from: str | None
    backfill: dict[str, int] | None  # the counts, when waited for
    backfill_id: int = Field(exclude=True)  # its row in `backfills`

    @field_serializer("calendar")
    def _calendar(self, calendar: CalendarInfo) -> dict[str, Any]:
        return _calendar_summary(calendar)


class Imported(Answer):
    """A link imported from tokens obtained elsewhere: its id, and (imported with its
    calendar, unless told not to) its backfill's counts."""

    link_id: str
    backfill: dict[str, int] | None  # the counts, when backfilled
    backfill_id: int | None = Field(exclude=True)  # its row in `backfills`


class Disconnected(Answer):
    """What a disconnect did: events removed (or kept), the token revoked (or why not)."""

    link: LinkSummary
    events_removed: int
    events_kept: bool
    token_revoked: bool
    token_still_used_by: list[str]  # other live links of the account: the grant is shared


# --- on-call ----------------------------------------------------------------------------------


class DeadLetter(Answer):
    """A message the consumer could not use, as `calsync dlq list` shows it."""

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


class DeadLetterMessage(DeadLetter):
    """A dead letter whole: the message as Kafka carried it (headers in their order)."""

    message_key: bytes | None
    message_value: bytes | None
    headers: list[tuple[str, bytes]]


class RepairSummary(Answer):
    """The repairs waiting: (link, booking) pairs not on their calendar yet."""

    waiting: int
    due: int
    oldest_age_s: float | None
    by_reason: dict[str, int]


class Outstanding(Answer):
    """The work the consumer group owes calendars, in one figure (issue 22, point 5):
    messages not committed yet (the group's lag at the broker) plus repairs due. Since
    offsets move on past work deferred to the repair loop, lag 0 does not mean every
    calendar is up to date; `total` 0 does."""

    total: int
    messages: int
    repairs_due: int
    # Repairs due per Google account, for the accounts with the most (the most first; a
    # message has no account until it is read).
    by_account: dict[str, int]


class ReconcileRun(Answer):
    """A reconcile run as recorded (the latest one is in `calsync status`)."""

    id: int
    trigger: str
    executed: bool
    started_at: IsoDatetime
    finished_at: IsoDatetime | None
    running: bool
    links_done: int
    links_total: int
    events_seen: int
    found: dict[str, int]
    repaired: dict[str, int]
    progress: dict[str, Any] | None
    error: str | None


class ReconcileResult(Answer):
    """What one `calsync reconcile` found and repaired, link by link."""

    run_id: int
    executed: bool
    found: dict[str, int]
    repaired: dict[str, int]
    links: list[dict[str, Any]]


class BackfillProgress(Answer):
    """A backfill's progress as people read it: done of total, rate, an estimated end."""

    id: int
    link_id: str
    calendar_id: str
    calendar_name: str | None
    trigger: str
    status: str  # running, stalled, finished, failed
    total: int | None
    done: int
    percent: int | None
    counts: dict[str, int]
    outcomes: dict[str, int]
    rate_per_s: float | None
    estimated_end: IsoDatetime | None
    remaining_s: float | None
    started_at: IsoDatetime
    finished_at: IsoDatetime | None
    elapsed_s: float
    error: str | None


class PartitionLag(Answer):
    partition: int
    committed: int | None
    end: int
    lag: int


class DeadLetterCounts(Answer):
    waiting: int
    total: int
    oldest_waiting: IsoDatetime | None


class Status(Answer):
    """`calsync status`: the deployment, the group, its lag and stalls, the links, recent
    failures, repairs, the latest reconcile, backfills under way and dead letters."""

    deployment_id: str  # what every event written is tagged with
    deployment_id_source: Literal["setting", "database"]  # CALSYNC_DEPLOYMENT_ID, or migrate's
    group: str
    topic: str
    members: list[dict[str, Any]]
    broker_group: dict[str, Any]
    partitions: list[PartitionLag]
    total_lag: int
    stalls: list[dict[str, Any]]
    links: list[dict[str, Any]]
    failures_last_hour: list[dict[str, Any]]
    repairs: RepairSummary
    reconcile: ReconcileRun | None
    backfills: list[dict[str, Any]]  # a few of each BackfillProgress's fields
    dead_letters: DeadLetterCounts
    outstanding: Outstanding
