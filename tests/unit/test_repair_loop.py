"""The repair loop's decisions (consumer/service/repairs.py), on fakes of its ports: what it
leases, for whom, in which order, when it looks again, and what it does with each repair,
without a database (tests/unit/fakes.py: FakeRepairQueue over FakeSyncStore's repairs).

The queue's one statement and its concurrency are tested on PostgreSQL
(tests/integration/test_repair_queue.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calls, sync_engine
from consumer.domain.models import LinkState
from consumer.domain.repair_queue import PollPace, places_per_account
from consumer.service.repairs import RepairLoop, RepairLoopConfig
from tests.plugins.events import booking_model
from tests.unit.fakes import (
    FakeCalendar,
    FakeQuota,
    FakeRepairQueue,
    FakeRepository,
    FakeSyncStore,
    FakeTokens,
)
from tests.unit.test_sync_engine import unit_settings

MEMBER = "host-1-abc"


class GatedQuota(FakeQuota):
    """A quota whose slots wait for `gate`: repairs stay at work until a test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def acquire(self, account: str, ticket: int = 0, max_wait_s: float | None = None) -> None:
        await self.gate.wait()
        await super().acquire(account, ticket, max_wait_s)


@dataclass
class Loop:
    google: FakeCalendar
    repository: FakeRepository
    store: FakeSyncStore
    queue: FakeRepairQueue
    quota: GatedQuota
    loop: RepairLoop

    def owe(self, account: str, n: int, due_in_s: float = 0.0, first: int = 0) -> list[str]:
        """`n` bookings of `account`'s link owed to the repair loop; their ids."""
        link_id = f"lnk_{account}"
        ids = [f"bk_{account}_{i}" for i in range(first, first + n)]
        for booking_id in ids:
            self.repository.bookings[booking_id] = booking_model(booking_id, 1, activity_id=account)
            self.queue.owe_now(link_id, booking_id, 1, due_in_s=due_in_s)
        return ids

    def leased(self) -> dict[str, int]:
        """Per account, the rows the queue has leased to this process."""
        counts: dict[str, int] = {}
        for row in self.queue._sync().values():
            if row.leased_by == MEMBER:
                counts[row.account] = counts.get(row.account, 0) + 1
        return counts

    def on_calendar(self, account: str) -> int:
        return len(self.google.live_events(f"cal_{account}"))


async def make_loop(
    accounts: tuple[str, ...] = ("a", "b"),
    concurrency: int = 8,
    places: int = 4,
    accounts_per_poll: int = 64,
    lease_s: float = 300.0,
    poll_s: float = 0.2,
    **settings: Any,
) -> Loop:
    google, repository, quota = FakeCalendar(), FakeRepository(), GatedQuota()
    tokens = FakeTokens(google, repository)
    store = FakeSyncStore(repository)
    for account in accounts:
        google.add_calendar(f"cal_{account}")
        repository.add_link(f"lnk_{account}", account, account, f"cal_{account}")
    config = unit_settings(**settings)
    calls = google_calls(config, quota, tokens)
    engine = sync_engine(config, repository, store, calls, google, Metrics(), "dep")
    queue = FakeRepairQueue(store, accounts_per_poll)
    loop = RepairLoop(
        RepairLoopConfig(
            concurrency=concurrency, poll_s=poll_s, lease_s=lease_s, places_per_account=places
        ),
        engine,
        queue,
        repository,
        Metrics(),
        MEMBER,
    )
    return Loop(google, repository, store, queue, quota, loop)


@pytest.fixture
async def world() -> AsyncIterator[Loop]:
    made = await make_loop()
    yield made
    await made.loop.engine.close()


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


# --- what a poll leases ---------------------------------------------------------------------


async def test_every_due_repair_is_applied_once_and_its_row_settled(world: Loop) -> None:
    world.owe("a", 5)
    world.owe("b", 3)
    world.owe("b", 2, due_in_s=3600, first=3)  # backing off: not due
    outcomes = await world.loop.drain()
    assert outcomes == {"applied": 8}
    assert (world.on_calendar("a"), world.on_calendar("b")) == (5, 3)
    assert world.queue.owed() == {("lnk_b", "bk_b_3"), ("lnk_b", "bk_b_4")}
    assert [r.source for r in world.store.results] == ["repair"] * 8


async def test_one_accounts_backlog_never_takes_every_place() -> None:
    world = await make_loop(concurrency=4, places=2)
    world.quota.gate.clear()  # the repairs stay at work
    world.owe("a", 10)  # owed first, and many
    world.owe("b", 1)
    polled = await world.loop.poll()
    # An equal share of the poll each (4 / 2 accounts), at most an account's places.
    assert polled.started == 3 and world.leased() == {"a": 2, "b": 1}
    again = await world.loop.poll()  # one place left in the loop, none left for a
    assert again.started == 0
    assert sorted(world.queue.asks[-1].places) == [("a", 0), ("b", 1)]
    assert world.queue.asks[-1].limit == 1
    world.quota.gate.set()
    await world.loop.drain()
    assert world.on_calendar("a") == 10 and world.on_calendar("b") == 1


async def test_accounts_are_visited_in_turn_a_window_at_a_time() -> None:
    world = await make_loop(accounts=("a", "b", "c", "d", "e"), accounts_per_poll=2)
    for account in ("a", "b", "c", "d", "e"):
        world.owe(account, 1)
    world.quota.gate.clear()
    started = [(await world.loop.poll()).started for _ in range(4)]
    assert [ask.after for ask in world.queue.asks] == ["", "b", "d", ""]
    assert started == [2, 2, 1, 0]  # the fourth poll starts again from the first account
    world.quota.gate.set()
    await world.loop.drain()
    assert all(world.on_calendar(a) == 1 for a in ("a", "b", "c", "d", "e"))


async def test_a_drain_goes_through_every_window_before_it_ends() -> None:
    # Only the last account has work: the first windows find nothing, the drain goes on.
    world = await make_loop(accounts=("a", "b", "c", "d", "e"), accounts_per_poll=2)
    world.owe("e", 3)
    world.owe("a", 1, due_in_s=3600)  # a has repairs, none due
    world.owe("b", 1, due_in_s=3600)
    world.owe("c", 1, due_in_s=3600)
    assert await world.loop.drain() == {"applied": 3}
    assert world.on_calendar("e") == 3


async def test_a_drain_of_one_link_takes_its_repairs_only() -> None:
    world = await make_loop(places=2)
    world.owe("a", 5)
    world.owe("b", 2)
    assert await world.loop.drain("lnk_a") == {"applied": 5}
    assert world.on_calendar("b") == 0 and len(world.queue.owed()) == 2
    assert {ask.link_id for ask in world.queue.asks} == {"lnk_a"}


async def test_a_pair_leased_again_while_still_at_work_here_is_not_started_twice() -> None:
    world = await make_loop(lease_s=0.0)  # the lease ends at once: the row is due again
    world.quota.gate.clear()
    world.owe("a", 1)
    assert (await world.loop.poll()).started == 1
    assert (await world.loop.poll()).started == 0  # leased again, but at work here
    world.quota.gate.set()
    await world.loop.drain()
    assert world.on_calendar("a") == 1
    assert [r.source for r in world.store.results] == ["repair"]


# --- what it does with each repair ------------------------------------------------------------


async def test_a_repair_whose_booking_or_link_is_gone_is_settled(world: Loop) -> None:
    world.queue.owe_now("lnk_a", "bk_never_seen")  # no booking recorded
    world.owe("b", 1)
    outcomes = await world.loop.drain()
    assert outcomes == {"settled": 1, "applied": 1}
    assert world.queue.owed() == set()


async def test_repairs_of_links_no_longer_active_are_dropped_not_worked(world: Loop) -> None:
    world.owe("a", 2)
    world.owe("b", 1)
    await world.repository.leave_active("lnk_a", LinkState.REAUTH_REQUIRED, "token refused")
    assert await world.loop.drain() == {"applied": 1}  # never leased
    assert await world.queue.drop_inactive() == 2
    assert world.queue.owed() == set() and world.on_calendar("a") == 0


# --- the loop: it goes on, looks again, stops cleanly -----------------------------------------


async def test_the_loop_outlives_a_failed_poll_and_releases_its_leases_when_stopped(
    world: Loop,
) -> None:
    world.queue.fail_next = RuntimeError("a bug of ours")
    world.owe("a", 2)
    running = asyncio.create_task(world.loop.run())
    try:
        await until(lambda: world.on_calendar("a") == 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert len(world.queue.asks) >= 2  # the failed poll, then the one that found them
    assert world.queue.released == [MEMBER]


async def test_a_full_loop_waits_for_a_place_not_for_the_polls_ceiling() -> None:
    # Two places, six repairs, a ceiling far beyond the test's patience: each place that
    # frees is taken at once (and while it finds work, the loop looks again at once).
    world = await make_loop(concurrency=2, places=2, poll_s=60.0)
    world.owe("a", 6)
    running = asyncio.create_task(world.loop.run())
    try:
        await until(lambda: world.on_calendar("a") == 6, timeout_s=5.0)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert world.queue.owed() == set()


def test_the_poll_waits_longer_each_time_a_whole_walk_finds_nothing() -> None:
    pace = PollPace(ceiling_s=2.0, first_s=0.05)
    assert [pace.after(0, True) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert pace.after(3, True) == 0.0  # found work: at once, and the waits start over
    assert pace.after(0, False) == 0.0  # the walk over the accounts goes on first
    assert pace.after(0, True) == 0.0  # that walk found work: the next one starts at once
    assert pace.after(0, True) == 0.05  # a whole walk found nothing
    assert pace.after(0, False) == 0.0 and pace.after(0, True) == 0.1


def test_an_accounts_places_follow_its_quota() -> None:
    # 30 calls a minute, 5 s a message may wait for its slot: what it can do in that time.
    assert places_per_account(30, 5.0) == 3
    assert places_per_account(600, 5.0) == 50
    assert places_per_account(6, 5.0) == 2  # never fewer than two
    assert places_per_account(0, 5.0) == 32  # no quota set: a fixed share
