"""The data the service speaks: the booking event contract and the per-link records.

The booking event models *are* the published contract: `schemas/booking-event.schema.json`
is generated from them (`calsync schema`), and a test keeps the two in step.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

SUPPORTED_SCHEMA_VERSIONS = (1,)


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

    id: str = Field(min_length=1, max_length=200, description="Booking id; also the message key.")
    version: int = Field(ge=0, description="Increases with every change of the booking.")
    confirmation_code: str = Field(min_length=1, max_length=200)
    status: BookingStatus
    source: BookingSource
    activity_id: str = Field(min_length=1, max_length=200)
    activity_name: str = Field(min_length=1, max_length=500)
    customer_name: str = Field(min_length=1, max_length=500)
    location_name: str | None = Field(default=None, max_length=1000)
    start: AwareDatetime = Field(description="Start, ISO 8601 with an offset (UTC recommended).")
    end: AwareDatetime = Field(description="End, ISO 8601 with an offset; after start.")
    timezone: str = Field(
        default="UTC",
        description="IANA time zone used for the date and times in the event description.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
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
    occurred_at: AwareDatetime
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


class Operation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NONE = "none"


class Outcome(StrEnum):
    APPLIED = "applied"  # Google holds what the booking says
    UNCHANGED = "unchanged"  # nothing to do (stale version, nothing on the calendar)
    SKIPPED = "skipped"  # the link could not be used (token refresh failed)
    FAILED = "failed"  # Google refused or kept failing past the retry budget


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
