"""Work on many items with a bounded number of tasks (consumer.service.bounded): a reconcile's
repairs are worked a few at a time, and the items are taken only as fast as they are worked:
never a coroutine per item up front."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from consumer.service.bounded import each_bounded


async def test_every_item_is_worked_never_more_than_the_bound_at_once() -> None:
    busy, most, worked = 0, 0, []

    async def work(item: int) -> None:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0)
        worked.append(item)
        busy -= 1

    await each_bounded(range(100), work, 4)
    assert sorted(worked) == list(range(100))
    assert most == 4


class _Enough(Exception):
    """Ends a test's endless work."""


async def test_items_are_taken_only_as_fast_as_they_are_worked() -> None:
    """Of a lazy source, no more than the workers and the queue hold are taken ahead of
    the items worked: an iterator of a million items is never turned into a million tasks."""
    taken, finished = 0, 0
    ahead: list[int] = []
    release = asyncio.Event()

    def source() -> Iterator[int]:
        nonlocal taken
        for item in range(1_000_000):
            taken += 1
            ahead.append(taken - finished)
            yield item

    async def work(item: int) -> None:
        nonlocal finished
        if item < 3:
            await release.wait()  # the first items hold their workers
        finished += 1
        if finished >= 50:
            raise _Enough

    job = asyncio.create_task(each_bounded(source(), work, 3))
    for _ in range(20):
        await asyncio.sleep(0)
    assert taken <= 3 + 3 + 1, "taken ahead: the workers' items and a full queue, no more"
    release.set()
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(job, timeout=10)
    assert raised.group_contains(_Enough)
    assert max(ahead) <= 3 + 3 + 1
    assert taken < 100


async def test_an_async_source_is_read_as_it_is_worked() -> None:
    async def source() -> AsyncIterator[str]:
        for item in ("a", "b", "c"):
            yield item

    worked: list[str] = []

    async def work(item: str) -> None:
        worked.append(item)

    await each_bounded(source(), work, 2)
    assert sorted(worked) == ["a", "b", "c"]


async def test_a_failing_item_ends_the_work_and_is_raised_never_a_hang() -> None:
    async def work(item: int) -> None:
        if item == 5:
            raise ValueError("item 5")
        await asyncio.sleep(0)

    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(each_bounded(range(1000), work, 2), timeout=10)
    assert raised.group_contains(ValueError)
