"""The horizon, row by row: a booking is within it when it ends after now minus the past days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.domain.horizon import horizon, within_horizon
from tests.plugins.events import booking_model

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "past_days", "within"),
    [
        ("2026-12-10T09:00:00Z", "2026-12-10T10:00:00Z", 7, True),  # in the future
        ("2026-11-27T09:00:00Z", "2026-11-27T10:00:00Z", 7, True),  # ended 6 days ago
        ("2026-11-26T09:00:00Z", "2026-11-26T11:59:00Z", 7, False),  # ended just before
        ("2026-11-26T09:00:00Z", "2026-11-26T12:01:00Z", 7, True),  # ended just after
        ("2016-01-01T09:00:00Z", "2016-01-01T10:00:00Z", 7, False),  # ten years ago
        ("2026-12-03T09:00:00Z", "2026-12-03T11:00:00Z", 0, False),  # horizon = now
        ("2026-12-03T09:00:00Z", "2026-12-03T13:00:00Z", 0, True),  # still running
    ],
)
def test_a_booking_is_within_the_horizon_when_it_ends_after_it(
    start: str, end: str, past_days: float, within: bool
) -> None:
    booking = booking_model("bk_1", 1, start=start, end=end).booking
    assert within_horizon(booking, horizon(NOW, past_days)) is within
