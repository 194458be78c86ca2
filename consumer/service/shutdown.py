"""A shutdown's one clock: SIGTERM ends `calsync consume` within `CALSYNC_SHUTDOWN_GRACE_S`
+ 10 s, whatever the database and the broker do.

The grace is for the work in flight. Past it, every wait takes what is left of one deadline
and no more: cancelled work that does not end (a statement waiting for a lock someone else
holds, a Google call that outlives its cancellation) is left behind, a commit the broker
does not answer is given up, closing what is left open is not waited for. Nothing is ever
committed past a message whose results are not recorded: what is left behind is read again
by the next owner of its partition, and a replay changes nothing that was done. The worker
arms a watchdog at the bound itself (consumer/entrypoints/worker.py) for whatever could
still hold the process (a thread in a blocking call).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

AFTER_GRACE_S = 10.0  # the process ends within the grace and this, whatever happens
# What the steps past the grace may take in all: the rest of AFTER_GRACE_S is for closing
# the event loop and the interpreter's exit, and is where the watchdog stands.
STEPS_AFTER_GRACE_S = 8.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self, cap: float = math.inf) -> float:
        """Seconds left (never below 0), at most `cap`."""
        return max(0.0, min(cap, self.at - time.monotonic()))


async def within(work: Awaitable[T], seconds: float, step: str) -> bool:
    """Await `work` for at most `seconds`. True when it ended (its own failure included:
    a shutdown goes on); past them it is cancelled, not waited for, and one warning names
    the step."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait([task], timeout=max(0.0, seconds))
    if not done:
        task.cancel()
        log.warning("shutdown_step_given_up", step=step, after_s=round(seconds, 1))
        return False
    if not task.cancelled() and (failure := task.exception()) is not None:
        log.warning("shutdown_step_failed", step=step, cause=type(failure).__name__)
    return True
