"""The backfill's decisions (consumer/service/links/backfill.py), on fakes of its ports and
the real sync engine over fakes: what it reads (the horizon), what it owes before writing,
and how many bookings it works at once (a few, whatever the history)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calls, sync_engine
from consumer.domain.models import BookingEvent, LinkRow, SyncResult
from consumer.service.links.backfill import CONCURRENCY, PAGE_SIZE, Backfiller
from consumer.service.links.common import LinkParts
from tests.plugins.events import booking_model
from tests.unit.fakes import (
    FakeBackfills,
    FakeCalendar,
    FakeQuota,
    FakeRepairLedger,
    FakeRepository,
    FakeSyncStore,
    FakeTokens,
)
from tests.unit.test_sync_engine import unit_settings

CALENDAR = "cal"


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def booking(booking_id: str, ends: datetime, **fields: Any) -> BookingEvent:
    return booking_model(
        booking_id, 1, start=_at(ends - timedelta(hours=1)), end=_at(ends), **fields
    )


class World:
    def __init__(self) -> None:
        self.google = FakeCalendar()
        self.google.add_calendar(CALENDAR)
        self.repository = FakeRepository()
        self.backfills = FakeBackfills(self.repository)
        self.ledger = FakeRepairLedger()
        settings = unit_settings()
        calls = google_calls(settings, FakeQuota(), FakeTokens(self.google, self.repository))
        store = FakeSyncStore(self.repository)
        self.engine = sync_engine(
            settings, self.repository, store, calls, self.google, Metrics(), None
        )
        unused: Any = None  # ports a backfill never uses
        self.backfiller = Backfiller(
            LinkParts(
                settings=settings,
                links=unused,
                backfills=self.backfills,
                health=unused,
                oauth=unused,
                google=unused,
                tokens=unused,
                calls=calls,
                engine=self.engine,
                repairs=self.ledger,
                deployment_id="unit",
            )
        )
        self.link: LinkRow = self.repository.add_link("lnk_1", "act_1", calendar_id=CALENDAR)

    def history(self, past: int, upcoming: int) -> set[str]:
        """`past` bookings that ended a month ago and before, `upcoming` ones; the ids of
        the upcoming ones."""
        now = datetime.now(UTC).replace(microsecond=0)
        for i in range(past):
            event = booking(f"past_{i:05}", now - timedelta(days=30, hours=i))
            self.repository.bookings[event.booking.id] = event
        ids = set()
        for i in range(upcoming):
            event = booking(f"next_{i:05}", now + timedelta(days=3, minutes=i))
            self.repository.bookings[event.booking.id] = event
            ids.add(event.booking.id)
        return ids


async def test_only_bookings_within_the_horizon_are_counted_owed_and_written() -> None:
    world = World()
    upcoming = world.history(past=3 * PAGE_SIZE, upcoming=PAGE_SIZE + 7)
    planned = await world.backfiller.plan(world.link, "Cal", "select")
    assert planned.total == len(upcoming)
    # Owed before anything is written: a stopped backfill is finished by the repair loop.
    assert {b for _, b in world.ledger.owed} == upcoming
    assert world.google.live_events(CALENDAR) == {}
    horizon = world.backfills.records[planned.id]["horizon"]
    expected = datetime.now(UTC) - timedelta(days=7)
    assert abs((horizon - expected).total_seconds()) < 60
    assert {since for _, since in world.backfills.pages} == {horizon}

    counts = await world.backfiller.run(planned)

    assert counts == {"bookings": len(upcoming), "applied": len(upcoming)}
    written = {
        e["extendedProperties"]["private"]["booking_id"]
        for e in world.google.live_events(CALENDAR).values()
    }
    assert written == upcoming
    assert world.backfills.read == 2 * len(upcoming)  # two passes, never the past
    assert world.backfills.records[planned.id]["finished"]
    assert world.backfills.backfilled == ["lnk_1"]
    await world.engine.close()


async def test_a_backfill_works_a_few_bookings_at_a_time_and_makes_no_task_up_front() -> None:
    """Over 1,200 bookings: never more than CONCURRENCY at Google at once, and never more
    than that many tasks alive for them (not one coroutine per booking made up front)."""
    world = World()
    world.history(past=0, upcoming=1_200)
    planned = await world.backfiller.plan(world.link, "Cal", "select")
    working, most_working, most_tasks = 0, 0, 0
    real_sync = world.engine.sync_link

    def booking_tasks() -> int:
        """Tasks alive for one booking each (other tests' tasks share the event loop)."""
        return sum(
            1
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "Backfiller._one"
        )

    async def slow_sync(*args: Any, **kwargs: Any) -> SyncResult:
        nonlocal working, most_working, most_tasks
        working += 1
        most_working = max(most_working, working)
        most_tasks = max(most_tasks, booking_tasks())
        try:
            await asyncio.sleep(0.001)
            return await real_sync(*args, **kwargs)
        finally:
            working -= 1

    world.engine.sync_link = cast(Any, slow_sync)  # type: ignore[method-assign]
    counts = await world.backfiller.run(planned)

    assert counts["applied"] == 1_200
    assert most_working == CONCURRENCY
    assert most_tasks == CONCURRENCY
    await world.engine.close()


async def test_will_write_counts_what_a_choice_would_write_and_owes_nothing() -> None:
    world = World()
    upcoming = world.history(past=50, upcoming=12)
    canceled = booking("next_gone", datetime.now(UTC) + timedelta(days=2), status="canceled")
    world.repository.bookings[canceled.booking.id] = canceled
    pending = world.repository.add_link("lnk_2", "act_1", calendar_id=None)
    assert await world.backfiller.will_write(pending) == len(upcoming)
    assert world.ledger.owed == {} and world.backfills.records == {}
    await world.engine.close()
