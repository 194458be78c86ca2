"""Work on many items with a bounded number of tasks: a fixed set of workers (the semaphore:
never more than `concurrency` items worked at once) fed through a bounded queue (never more
than `concurrency` items taken ahead of the workers), so an iterator of items is read only
as fast as they are worked, and no coroutine is made per item up front.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class _Done:
    """Tells a worker that no more items come."""


_DONE = _Done()


async def each_bounded(
    items: Iterable[T] | AsyncIterable[T],
    work: Callable[[T], Awaitable[None]],
    concurrency: int,
) -> None:
    """`await work(item)` for every item, at most `concurrency` at once. A failure of
    `work` (it should catch its own) cancels the rest and is raised (in an ExceptionGroup)."""
    concurrency = max(1, concurrency)
    queue: asyncio.Queue[T | _Done] = asyncio.Queue(maxsize=concurrency)

    async def worker() -> None:
        while not isinstance(item := await queue.get(), _Done):
            await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
        if isinstance(items, AsyncIterable):
            async for item in items:
                await queue.put(item)
        else:
            for item in items:
                await queue.put(item)
        for _ in range(concurrency):
            await queue.put(_DONE)
