"""Google's quotas, kept by the whole consumer group: per account and per project.

Every Calendar call first takes a slot of its account's quota, then one of the project's.
Slots are reserved in PostgreSQL (sql/004_quotas.sql), a few at a time, so that however
many processes run, the group never goes over the rate, and calls come evenly spaced
instead of in bursts. Each quota has its own queue here: an account that is throttled (or
busy) makes its own calls wait, never another account's. A call takes its project slot only
once its account slot has come, so no project slot waits unused behind a slow account.
Slots go to the oldest message first (its ticket, given in arrival order), not to whichever
call asked first: with a backlog, messages then finish one after another and offsets move,
instead of all of them advancing a little and none finishing.

The group aims at `quota_use_share` of each configured quota: Google counts in sliding
windows, and the rest absorbs jitter. When Google still answers 403/429 for rate limits,
the quota's pace drops group-wide (and honours Retry-After), then recovers slot by slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

import structlog

from consumer.batching import Batcher
from consumer.db import Pool
from consumer.metrics import Metrics
from consumer.settings import Settings

log = structlog.get_logger(__name__)

_RESERVE = "SELECT key, wait_s, step_s FROM calsync_reserve_slots(%s, %s, %s)"
_REFUSED = "SELECT calsync_quota_refused(%s, %s) AS pace"
_AHEAD_S = 0.5  # reserve at most about this much of a quota's time at once, per process


@dataclass
class _Queue:
    interval_s: float
    waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)  # heap
    pump: asyncio.Task[None] | None = None
    quiet_until: float = 0.0  # loop time: refused by Google, slots reserved before are void


class GroupQuota:
    def __init__(self, settings: Settings, pool: Pool, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        share = settings.quota_use_share
        project = settings.google_client_id or "default"
        self._project_key = f"{project}:project"
        self._account_prefix = f"{project}:account:"
        self._project_interval = (60.0 / (settings.quota_per_project_per_min * share)
                                  if settings.quota_per_project_per_min else None)
        self._account_interval = (60.0 / (settings.quota_per_account_per_min * share)
                                  if settings.quota_per_account_per_min else None)
        self._pool = pool
        self._queues: dict[str, _Queue] = {}
        self._arrivals = itertools.count()  # ties between equal tickets: first come, first served
        self._reserver: Batcher[tuple[str, int, float], tuple[float, float]] = Batcher(
            self._reserve)

    @property
    def limited(self) -> bool:
        return self._project_interval is not None or self._account_interval is not None

    async def acquire(self, account: str, ticket: int = 0) -> None:
        """Wait for this account's next slot, then the project's; lower tickets go first."""
        if self._account_interval is not None:
            started = time.perf_counter()
            await self._slot(self._account_prefix + account, self._account_interval, ticket)
            self._metrics.quota_waits.labels("account").observe(time.perf_counter() - started)
        if self._project_interval is not None:
            started = time.perf_counter()
            await self._slot(self._project_key, self._project_interval, ticket)
            self._metrics.quota_waits.labels("project").observe(time.perf_counter() - started)

    async def refused(self, account: str, reason: str, retry_after_s: float | None) -> None:
        """Google said 403/429 for rate limits: slow the quota it named down, group-wide."""
        keys = []
        if reason == "userRateLimitExceeded" or self._project_interval is None:
            keys.append(self._account_prefix + account)
        else:  # rateLimitExceeded, quotaExceeded: the project's, or a calendar's, or the user's
            keys += [self._account_prefix + account, self._project_key]
        now = asyncio.get_running_loop().time()
        for key in keys:  # this process stops handing out what it reserved before at once
            if (queue := self._queues.get(key)) is not None:
                queue.quiet_until = max(queue.quiet_until, now + (retry_after_s or 0.0),
                                        now + queue.interval_s)
        async with self._pool.connection() as conn:
            for key in keys:
                row = await (await conn.execute(_REFUSED, (key, retry_after_s or 0.0))
                             ).fetchone()
                scope = "project" if key == self._project_key else "account"
                self._metrics.quota_slowdowns.labels(scope).inc()
                log.info("quota_slowed_down", quota=scope, account=account, reason=reason,
                         pace=row["pace"] if row else None, retry_after_s=retry_after_s)

    async def _slot(self, key: str, interval_s: float, ticket: int) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(interval_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(queue.waiters, (ticket, next(self._arrivals), waiter))
        if queue.pump is None or queue.pump.done():
            queue.pump = asyncio.create_task(self._pump(key, queue))
        await waiter

    async def _pump(self, key: str, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while queue.waiters and queue.waiters[0][2].done():  # cancelled meanwhile
                    heapq.heappop(queue.waiters)
                if not queue.waiters:
                    break
                if (quiet := queue.quiet_until - loop.time()) > 0:
                    await asyncio.sleep(quiet)
                count = min(len(queue.waiters), max(1, int(_AHEAD_S / queue.interval_s)))
                asked_at = loop.time()
                wait_s, step_s = await self._reserver.submit((key, count, queue.interval_s))
                first = loop.time() + wait_s
                for k in range(count):
                    delay = first + k * step_s - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if queue.quiet_until > asked_at:
                        break  # Google refused meanwhile: reserve afresh, at the new pace
                    while queue.waiters:  # a slot nobody waits for any more is lost
                        waiter = heapq.heappop(queue.waiters)[2]
                        if not waiter.done():
                            waiter.set_result(None)
                            break
        except Exception as exc:  # the database: the waiters fail, the caller retries
            for _, _, waiter in queue.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            queue.waiters.clear()
        finally:
            if not queue.waiters:
                self._queues.pop(key, None)

    async def _reserve(self, wanted: list[tuple[str, int, float]]
                       ) -> list[tuple[float, float]]:
        order = sorted(range(len(wanted)), key=lambda i: wanted[i][0])  # one lock order
        async with self._pool.connection() as conn:
            cur = await conn.execute(_RESERVE, ([wanted[i][0] for i in order],
                                                [wanted[i][1] for i in order],
                                                [wanted[i][2] for i in order]))
            rows = await cur.fetchall()
        answers: list[tuple[float, float]] = [(0.0, 0.0)] * len(wanted)
        for i, row in zip(order, rows, strict=True):
            answers[i] = (float(row["wait_s"]), float(row["step_s"]))
        return answers

    async def close(self) -> None:
        for queue in list(self._queues.values()):
            if queue.pump is not None:
                queue.pump.cancel()
        await self._reserver.close()
