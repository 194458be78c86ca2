"""The two ways work is tried again, each written once.

- `within_budget`: a call to Google (or to its token endpoint) retried while it fails for a
  reason that passes, with exponential backoff and full jitter, never sooner than Google's
  Retry-After, for at most a budget of time counted from the first try. The first try goes
  without any retry machinery (most calls succeed at once: CPU per call).
- `until_done`: infrastructure work (a database or a broker that is away) retried without
  giving up, the delay doubling up to a ceiling, one log line per doubling of the attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay

from consumer.adapters.google.backoff import google_backoff

T = TypeVar("T")


async def within_budget(
    attempt: Callable[[], Awaitable[T]],
    *,
    retriable: Callable[[BaseException], bool],
    budget_s: float,
    initial_s: float,
    max_s: float,
    before_retry: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """`attempt()`, and again while it fails `retriable`-ly, until `budget_s` (counted from
    the first try) would be passed by the next wait; `before_retry` runs before each retry
    (a quota slot, a check that the work may go on). The last failure is raised."""
    started = time.monotonic()
    try:
        return await attempt()
    except BaseException as exc:
        if not retriable(exc):
            raise
        first_failure: BaseException | None = exc
    retrying = AsyncRetrying(
        retry=retry_if_exception(retriable),
        wait=google_backoff(initial_s, max_s),
        stop=stop_before_delay(max(0.0, budget_s - (time.monotonic() - started))),
        reraise=True,
    )
    async for retry in retrying:
        with retry:
            if first_failure is not None:
                # Tenacity counts the first try's failure as its first attempt, so the
                # backoff (and Retry-After) comes before the next one.
                failure, first_failure = first_failure, None
                raise failure
            if before_retry is not None:
                await before_retry()
            return await attempt()
    raise AssertionError("unreachable")


async def until_done(
    work: Callable[[], Awaitable[T]],
    *,
    initial_s: float,
    max_s: float,
    failed: Callable[[BaseException, int, float], bool | None],
) -> T:
    """`work()` until it succeeds: after each failure `failed(exc, attempts, retry_in_s)` is
    told (to log it, to note the cause), then the delay doubles up to `max_s`. When `failed`
    answers True, `work()` is tried again at once, the delay unchanged: what it does next
    changed (a message the poison policy gave up on is dead-lettered instead), so there is
    nothing to wait for."""
    delay, attempts = initial_s, 0
    while True:
        try:
            return await work()
        except Exception as exc:
            attempts += 1
            if failed(exc, attempts, delay):
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)


def first_of_a_doubling(attempts: int) -> bool:
    """Whether a retry count is worth a log line: the 1st, 2nd, 4th, 8th... attempt."""
    return attempts & (attempts - 1) == 0
