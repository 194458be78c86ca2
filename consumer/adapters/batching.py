"""Coalescing many small awaits into one round trip.

Callers `submit` one item and await its own answer; a flush runs over every item queued so
far (up to `max_size`). While `concurrency` flushes are out (database or Google round
trips), the next items queue up, so the batch size follows the load by itself: one item
when idle, hundreds under a backlog, and no timer adds latency.

Both bounds may be functions, read at every flush: Google's are set by a controller that
measures (consumer/adapters/google/concurrency.py), and change while the batcher runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
Bound = int | Callable[[], int]


def _reader(bound: Bound) -> Callable[[], int]:
    if callable(bound):
        return bound
    return lambda: bound


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        flush: Callable[[list[In]], Awaitable[Sequence[Out]]],
        max_size: Bound = 500,
        undelivered: Callable[[In, Out], None] | None = None,
        concurrency: Bound = 1,
        split_on: Callable[[Exception], bool] | None = None,
    ) -> None:
        """`undelivered`: told of an answer whose caller was cancelled meanwhile (to give
        back what the flush took for it). `split_on`: failures of a flush that may come from
        one item alone (bad data): the batch is then split in halves and each flushed again,
        so that only the item at fault fails and its batch-mates go on."""
        self._flush = flush
        self._split_on = split_on
        self._undelivered = undelivered
        self._max_size = _reader(max_size)
        self._concurrency = _reader(concurrency)
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0  # tasks alive, counted when they decide (a done task lingers)
        self._collecting = 0  # tasks about to take the queue (not flushing)

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._spawn()
        return await future

    @property
    def waiting(self) -> int:
        """Items queued, not yet taken by a flush."""
        return len(self._queue)

    @property
    def flushing(self) -> int:
        """Flushes out (or about to go)."""
        return self._running

    def _spawn(self) -> None:
        if self._collecting == 0 and self._running < self._concurrency():
            self._collecting += 1
            self._running += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(0)  # let the callers woken in this turn join in
                if not self._queue or self._running > self._concurrency():
                    return  # nothing to do, or the bound went down: the others go on
                size = max(1, self._max_size())
                batch = self._queue[:size]
                del self._queue[:size]
                self._collecting -= 1
                try:
                    if self._queue:  # more than one flush takes: another may go meanwhile
                        self._spawn()
                    await self._deliver(batch)
                finally:
                    self._collecting += 1
        finally:
            self._collecting -= 1
            # Gone from the count now, not when its done-callback runs: an item submitted
            # in between would otherwise find the flush slot taken and wait for ever.
            self._running -= 1
            current = asyncio.current_task()
            if current is not None:
                self._tasks.discard(current)

    async def _deliver(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        live = [(item, future) for item, future in batch if not future.cancelled()]
        if live:
            try:
                answers = await self._flush([item for item, _ in live])
            except Exception as exc:
                if len(live) > 1 and self._split_on is not None and self._split_on(exc):
                    half = len(live) // 2
                    await self._deliver(live[:half])
                    await self._deliver(live[half:])
                    return
                for _, future in live:  # every caller of the batch sees the failure
                    if not future.done():
                        future.set_exception(exc)
                return
            for (item, future), answer in zip(live, answers, strict=True):
                if not future.done():
                    if isinstance(answer, BaseException):  # this item's own failure
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                elif self._undelivered is not None:
                    self._undelivered(item, answer)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
