"""Coalescing many small awaits into one round trip.

Callers `submit` one item and await its own answer; one flush at a time runs over every
item queued so far. While a flush is out (a database round trip), the next items queue up,
so the batch size follows the load by itself: one item when idle, hundreds under a backlog,
and no timer adds latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(self, flush: Callable[[list[In]], Awaitable[Sequence[Out]]],
                 max_size: int = 500,
                 undelivered: Callable[[In, Out], None] | None = None) -> None:
        """`undelivered`: told of an answer whose caller was cancelled meanwhile (to give
        back what the flush took for it)."""
        self._flush = flush
        self._undelivered = undelivered
        self._max_size = max_size
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the callers woken in this turn of the loop join in
        while self._queue:
            batch = self._queue[:self._max_size]
            del self._queue[:self._max_size]
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            try:
                answers = await self._flush([item for item, _ in live])
            except Exception as exc:  # every caller of the batch sees the failure
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (item, future), answer in zip(live, answers, strict=True):
                if not future.done():
                    if isinstance(answer, BaseException):  # this item's own failure
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                elif self._undelivered is not None:
                    self._undelivered(item, answer)

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
