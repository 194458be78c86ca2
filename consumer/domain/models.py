"""The data the service speaks: the booking event contract and the per-link records.

The booking event models *are* the published contract: `schemas/booking-event.schema.json`
is generated from them (`calsync schema`), and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SUPPORTED_SCHEMA_VERSIONS = (1,)

# What the contract accepts, beyond the field types (README, "The booking event contract").
# Anything outside is dead-lettered: these are the bounds within which PostgreSQL, UTC
# conversion, rendering in the booking's time zone and Google all work.
MAX_MESSAGE_BYTES = 1_048_576  # Kafka's default largest message
MAX_JSON_DEPTH = 32  # objects and arrays nested; a booking event needs 2
MAX_VERSION = 2**63 - 1  # PostgreSQL bigint
EARLIEST_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive


def _plain_text(value: str) -> str:
    """PostgreSQL refuses NUL in text and jsonb; a lone surrogate is not UTF-8 at all."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain a lone surrogate (U+D800..U+DFFF)") from None
    return value


def _within_range(value: datetime) -> datetime:
    # Checked on the year first: converting a far date with an offset to UTC overflows.
    if not (EARLIEST_TIME.year <= value.year < LATEST_TIME.year) or not (
        EARLIEST_TIME <= value < LATEST_TIME
    ):
        raise ValueError(
            f"must be from {EARLIEST_TIME:%Y-%m-%dT%H:%M:%SZ} to before "
            f"{LATEST_TIME:%Y-%m-%dT%H:%M:%SZ} (UTC)"
        )
    return value


# A string that can be stored and sent anywhere: no NUL, no lone surrogate.
Text = Annotated[str, StringConstraints(pattern="^[^\\u0000]*$"), AfterValidator(_plain_text)]
# A date-time with an offset, within the range every part of the path handles.
Instant = Annotated[AwareDatetime, AfterValidator(_within_range)]


class EventType(StrEnum):
    CREATED = "booking.created"
    UPDATED = "booking.updated"
    CANCELED = "booking.canceled"
    DELETED = "booking.deleted"


class BookingStatus(StrEnum):
    DRAFT = "draft"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    CHECKED_IN = "checked_in"
    COMPLETED = "completed"
    NO_SHOW = "no_show"
    CANCELED = "canceled"


class BookingSource(StrEnum):
    WEB = "web"
    ADMIN = "admin"
    API = "api"
    ICAL = "ical"


class Booking(BaseModel):
    """A booking as it stands after the change the event announces."""

    # Tolerant reader: upstream may add fields without a schema_version bump.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Text = Field(min_length=1, max_length=200, description="Booking id; also the message key.")
    version: int = Field(
        ge=0, le=MAX_VERSION, description="Increases with every change of the booking."
    )
    confirmation_code: Text = Field(min_length=1, max_length=200)
    status: BookingStatus
    source: BookingSource
    activity_id: Text = Field(min_length=1, max_length=200)
    activity_name: Text = Field(min_length=1, max_length=500)
    customer_name: Text = Field(min_length=1, max_length=500)
    location_name: Text | None = Field(default=None, max_length=1000)
    start: Instant = Field(
        description="Start, ISO 8601 with an offset (UTC recommended), from 1900-01-01 to "
        "before 2200-01-01 UTC."
    )
    end: Instant = Field(description="End, ISO 8601 with an offset; after start; same range.")
    timezone: Text = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone used for the date and times in the event description.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError("unknown IANA time zone") from exc
        return value

    @model_validator(mode="after")
    def _end_after_start(self) -> Booking:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class BookingEvent(BaseModel):
    """One booking lifecycle event, as published on the booking-events topic."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        title="BookingEvent",
        json_schema_extra={
            "$id": "https://calendar-sync/schemas/booking-event.schema.json",
            "description": (
                "Booking lifecycle event. Kafka topic booking-events; "
                "key = booking id (UTF-8), value = this object as UTF-8 JSON."
            ),
        },
    )

    schema_version: Literal[1]
    event_id: UUID
    event_type: EventType
    occurred_at: Instant
    booking: Booking


class LinkState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REAUTH_REQUIRED = "reauth_required"
    CALENDAR_UNAVAILABLE = "calendar_unavailable"
    DISCONNECTED = "disconnected"


class CalendarLink(BaseModel):
    """A Google account connected by OAuth plus (once chosen) one calendar in it."""

    model_config = ConfigDict(frozen=True)

    id: str
    activity_id: str
    account_email: str
    calendar_id: str | None
    state: LinkState


class RecordedEvent(BaseModel):
    """What is recorded for one (link, booking): the last applied version and its event."""

    model_config = ConfigDict(frozen=True)

    applied_version: int | None = None
    google_event_id: str | None = None
    generation: int = 0
    calendar_id: str | None = None  # the calendar the event is on (None: no event)


class Operation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    MOVE = "move"  # off the calendar the link had, onto the one it has now
    NONE = "none"


class Outcome(StrEnum):
    APPLIED = "applied"  # Google holds what the booking says
    UNCHANGED = "unchanged"  # nothing to do (stale version, nothing on the calendar)
    SKIPPED = "skipped"  # the link could not be used (token refresh failed)
    FAILED = "failed"  # Google refused or kept failing past the retry budget
    DEFERRED = "deferred"  # not tried now (a quota paused or booked up): the repair loop will


class RepairPlan(BaseModel):
    """A (link, booking) left off its calendar for now: kept in `repairs` (with the result)
    and re-driven by the repair loop."""

    model_config = ConfigDict(frozen=True)

    reason: str
    not_before_s: float = 0.0  # a pause or Retry-After: never try sooner
    backoff: bool = True  # a failure (exponential backoff), not just a deferral
    attempts: int = 0  # failures so far, this one included (set when scheduled)
    due_in_s: float = 0.0  # when to try again (set when scheduled)


class PlannedOperation(BaseModel):
    model_config = ConfigDict(frozen=True)

    operation: Operation
    reason: str


class SyncResult(BaseModel):
    """The outcome of one booking event on one link; one row in sync_results."""

    model_config = ConfigDict(frozen=True)

    link_id: str
    operation: Operation
    outcome: Outcome
    reason: str
    google_event_id: str | None = None
    error: str | None = None
    attempts: int = 0
    recorded: RecordedEvent | None = None  # the new (link, booking) record, None = keep
    finished_at: datetime | None = None
    repair: RepairPlan | None = None  # left off the calendar: the repair loop takes it
    # Events left on a calendar that could not be reached: (calendar, event id, why).
    stranded: tuple[tuple[str, str, str], ...] = ()
    # Stranded events taken back (their calendar is the link's again): (calendar, event id).
    unstranded: tuple[tuple[str, str], ...] = ()


# --- records the adapters hand the service (never serialized as such) -----------------------


@dataclass(frozen=True)
class LinkTokens:
    """Tokens in clear: only ever in memory; the repository encrypts them on the way out."""

    refresh_token: str
    access_token: str | None
    expires_at: datetime | None

    def __repr__(self) -> str:  # never let a token reach a log line or a traceback
        return f"LinkTokens(expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class StoredGrant:
    """A Google account's grant as stored: its tokens, and Google's refusal when it refused
    the refresh token (`invalid_grant: ...`; None while the grant is valid)."""

    tokens: LinkTokens
    refused: str | None = None


@dataclass(frozen=True)
class LinkRow:
    """A calendar link as stored, with its account's grant's tokens (decrypted) when read
    with them."""

    link: CalendarLink
    tokens: LinkTokens | None  # None once its disconnect has finished (or no grant)
    state_reason: str | None
    state_changed_at: datetime
    created_at: datetime
    backfilled_at: datetime | None = None
    disconnect_finished_at: datetime | None = None  # a disconnect's end (None: not over)


@dataclass(frozen=True)
class MessagePosition:
    """Where a booking event was read: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int
