"""The horizon: how far back a link's backfill, reconcile and drift repair look.

A company with ten years of bookings has a million of them and a few weeks that matter on a
calendar. Work that keeps calendars exact covers the bookings that end after the horizon
(now minus CALSYNC_BACKFILL_PAST_DAYS): older bookings are never created by it, and their
events are never touched by it (neither created nor deleted). Live messages are applied
whatever their date. Pure.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from consumer.domain.models import Booking


def horizon(now: datetime, past_days: float) -> datetime:
    """The earliest end a booking may have to be within the horizon."""
    return now - timedelta(days=past_days)


def within_horizon(booking: Booking, since: datetime) -> bool:
    """Whether a booking ends after the horizon `since` (see `horizon`)."""
    return booking.end > since
