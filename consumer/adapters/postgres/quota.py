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
the account's pace drops group-wide (and honours Retry-After), then recovers slot by slot;
the project's pace drops only on project-level signals (several accounts refused for
`rateLimitExceeded` within a few seconds), so one account's trouble stays its own.

A quota Google says is spent for hours (`quotaExceeded` for an account, `dailyLimitExceeded`
for the project) is paused group-wide for `quota_exceeded_pause_s`: calls for it raise
QuotaPaused at once instead of waiting, and the sync defers that work to the repair loop.
A call that may wait only so long (`max_wait_s`: a live message) is answered SlotTooFar when
its account's queue here would keep it longer, at once or as soon as Google slows the account
down: whether its work then leaves the in-flight window is the account pressure's decision
(consumer.service.pressure), not the quota's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from consumer.adapters.batching import Batcher
from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.repository import Pool
from consumer.domain.errors import QuotaPaused, SlotTooFar

log = structlog.get_logger(__name__)

_RESERVE = "SELECT key, wait_s, step_s, paused_s FROM calsync_reserve_slots(%s, %s, %s)"
_REFUSED = "SELECT calsync_quota_refused(%s, %s) AS pace"
_PAUSE = "SELECT calsync_quota_pause(%s, %s, %s) AS paused_s"
_PAUSED = (
    "SELECT key, extract(epoch FROM paused_until - now()) AS paused_s FROM quota_buckets"
    " WHERE paused_until > now()"
)
_AHEAD_S = 0.5  # reserve at most about this much of a quota's time at once, per process
_PAUSES_FRESH_S = 2.0  # how old this process's view of the group's pauses may be
# `rateLimitExceeded` from this many accounts within the window: the project's quota.
_PROJECT_SIGNAL_ACCOUNTS = 3
_PROJECT_SIGNAL_WINDOW_S = 10.0


@dataclass
class _Queue:
    interval_s: float
    step_s: float = 0.0  # the spacing last handed out (the interval, slower after refusals)
    # A heap of (ticket, arrival, future, max_wait_s): lowest ticket first; max_wait_s is
    # how long the caller may wait for its slot (None: as long as it takes).
    waiters: list[tuple[int, int, asyncio.Future[None], float | None]] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None
    quiet_until: float = 0.0  # loop time: refused by Google, slots reserved before are void


@dataclass(frozen=True)
class QuotaConfig:
    """The group's quotas: per Google account and per project, in calls a minute (0: no
    limit; CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN, _PER_PROJECT_PER_MIN), the share of them aimed at
    (CALSYNC_QUOTA_USE_SHARE), how long a spent quota pauses (CALSYNC_QUOTA_EXCEEDED_PAUSE_S),
    and the project (the OAuth client id) whose quotas they are."""

    project: str
    per_account_per_min: int
    per_project_per_min: int
    use_share: float
    exceeded_pause_s: float


class GroupQuota:
    def __init__(self, config: QuotaConfig, pool: Pool, metrics: Metrics) -> None:
        self._metrics = metrics
        self._pause_s = config.exceeded_pause_s
        self._paused: dict[str, float] = {}  # key -> loop time its pause ends
        self._pauses_read_at = -_PAUSES_FRESH_S
        self._pauses_reading: asyncio.Task[None] | None = None
        self._rate_refusals: deque[tuple[float, str]] = deque()  # (when, account)
        share = config.use_share
        project = config.project or "default"
        self._project_key = f"{project}:project"
        self._account_prefix = f"{project}:account:"
        self._project_interval = (
            60.0 / (config.per_project_per_min * share) if config.per_project_per_min else None
        )
        self._account_interval = (
            60.0 / (config.per_account_per_min * share) if config.per_account_per_min else None
        )
        self._pool = pool
        self._queues: dict[str, _Queue] = {}
        self._arrivals = itertools.count()  # ties between equal tickets: first come, first served
        self._reserver: Batcher[tuple[str, int, float], tuple[float, float, float]] = Batcher(
            self._reserve
        )

    @property
    def limited(self) -> bool:
        return self._project_interval is not None or self._account_interval is not None

    def account_key(self, account: str) -> str:
        return self._account_prefix + account

    async def acquire(self, account: str, ticket: int = 0, max_wait_s: float | None = None) -> None:
        """Wait for this account's next slot, then the project's; lower tickets go first.
        Raises QuotaPaused while either is paused; with `max_wait_s`, SlotTooFar when the
        account's queue would keep this call waiting longer (now, or once Google slows the
        account down while it waits)."""
        await self._fresh_pauses()
        for key, scope in (
            (self._account_prefix + account, "account"),
            (self._project_key, "project"),
        ):
            if (left := self.paused_for(key)) > 0:
                raise QuotaPaused(scope, left)
        if max_wait_s is not None and (wait := self.expected_wait(account)) > max_wait_s:
            raise SlotTooFar(wait)
        if self._account_interval is not None:
            started = time.perf_counter()
            await self._slot(
                self._account_prefix + account, self._account_interval, ticket, max_wait_s
            )
            self._metrics.quota_waits.labels("account").observe(time.perf_counter() - started)
        if self._project_interval is not None:
            started = time.perf_counter()
            await self._slot(self._project_key, self._project_interval, ticket)
            self._metrics.quota_waits.labels("project").observe(time.perf_counter() - started)

    def paused_for(self, key: str) -> float:
        """Seconds the key's quota stays paused (0: not paused), as this process knows."""
        until = self._paused.get(key)
        if until is None:
            return 0.0
        left = until - asyncio.get_running_loop().time()
        if left <= 0:
            del self._paused[key]
            return 0.0
        return left

    def expected_wait(self, account: str) -> float:
        """How long a call of this account asking now would wait for its slot here."""
        queue = self._queues.get(self._account_prefix + account)
        if queue is None or self._account_interval is None:
            return 0.0
        quiet = max(0.0, queue.quiet_until - asyncio.get_running_loop().time())
        return quiet + len(queue.waiters) * max(queue.interval_s, queue.step_s)

    async def pause(self, account: str | None, reason: str) -> float:
        """Google said a quota is spent for hours (`account` None: the project's): pause it
        group-wide for `quota_exceeded_pause_s`; calls waiting for it are deferred."""
        key = self._project_key if account is None else self._account_prefix + account
        scope = "project" if account is None else "account"
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_PAUSE, (key, self._pause_s, reason))).fetchone()
        seconds = float(row["paused_s"]) if row else self._pause_s
        self._set_paused(key, seconds)
        self._metrics.quota_pauses.labels(scope).inc()
        log.warning(
            "quota_paused", quota=scope, account=account, reason=reason, paused_s=round(seconds)
        )
        return seconds

    def _set_paused(self, key: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._paused[key] = loop.time() + seconds
        scope = "project" if key == self._project_key else "account"
        for queue_key, queue in list(self._queues.items()):
            if queue_key == key or scope == "project":
                _fail_waiters(queue, QuotaPaused(scope, seconds))

    async def _fresh_pauses(self) -> None:
        """Learn the pauses other processes of the group set (one query every few seconds
        per process, shared by every caller meanwhile)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._pauses_read_at < _PAUSES_FRESH_S:
            return
        if self._pauses_reading is None or self._pauses_reading.done():
            self._pauses_reading = loop.create_task(self._read_pauses())
        await asyncio.shield(self._pauses_reading)

    async def _read_pauses(self) -> None:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_PAUSED)).fetchall()
        loop = asyncio.get_running_loop()
        self._pauses_read_at = loop.time()
        # The database is the group's truth: a pause lifted by an operator ends here too
        # (every pause set here was written there first).
        self._paused = {row["key"]: loop.time() + float(row["paused_s"]) for row in rows}

    async def lift_pauses(self, account: str | None) -> int:
        """An operator's word: the account's pause (or every pause) ends now."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE quota_buckets SET paused_until = NULL WHERE paused_until > now()"
                " AND (%s::text IS NULL OR key = %s)",
                (account, None if account is None else self._account_prefix + account),
            )
            lifted = cur.rowcount
        if account is None:
            self._paused.clear()
        else:
            self._paused.pop(self._account_prefix + account, None)
        return lifted

    async def refused(self, account: str, reason: str, retry_after_s: float | None) -> None:
        """Google said 403/429 for rate limits: slow the account down, group-wide, and the
        project too when several accounts were refused for `rateLimitExceeded` at once."""
        keys = [self._account_prefix + account]
        now = asyncio.get_running_loop().time()
        if reason != "userRateLimitExceeded" and self._project_interval is not None:
            refusals = self._rate_refusals
            refusals.append((now, account))
            while refusals and refusals[0][0] < now - _PROJECT_SIGNAL_WINDOW_S:
                refusals.popleft()
            if len({a for _, a in refusals}) >= _PROJECT_SIGNAL_ACCOUNTS:
                keys.append(self._project_key)
        for key in keys:  # this process stops handing out what it reserved before at once
            if (queue := self._queues.get(key)) is not None:
                queue.quiet_until = max(
                    queue.quiet_until, now + (retry_after_s or 0.0), now + queue.interval_s
                )
        async with self._pool.connection() as conn:
            for key in keys:
                row = await (await conn.execute(_REFUSED, (key, retry_after_s or 0.0))).fetchone()
                if key != self._project_key and (queue := self._queues.get(key)) is not None:
                    pace = row["pace"] if row and row["pace"] is not None else 1.0
                    self._defer_the_far_waiters(queue, float(pace))
                scope = "project" if key == self._project_key else "account"
                self._metrics.quota_slowdowns.labels(scope).inc()
                log.info(
                    "quota_slowed_down",
                    quota=scope,
                    account=account,
                    reason=reason,
                    pace=row["pace"] if row else None,
                    retry_after_s=retry_after_s,
                )

    def _defer_the_far_waiters(self, queue: _Queue, pace: float) -> None:
        """Google slowed an account down: a call already waiting for one of its slots that
        may wait only so long, and whose turn is now further off, is answered SlotTooFar at
        once instead of holding its place for the slower pace (and then spending a call
        Google may refuse again)."""
        loop = asyncio.get_running_loop()
        step = max(queue.interval_s / max(pace, 0.1), queue.step_s)
        wait = max(0.0, queue.quiet_until - loop.time())
        for _, _, waiter, max_wait_s in sorted(queue.waiters, key=lambda w: w[:2]):
            if waiter.done():
                continue
            if max_wait_s is not None and wait > max_wait_s:
                waiter.set_exception(SlotTooFar(wait, slowed=True))
                continue
            wait += step
        # The deferred leave the queue now: expected_wait and the pump count who is left.
        queue.waiters = [entry for entry in queue.waiters if not entry[2].done()]
        heapq.heapify(queue.waiters)

    async def _slot(
        self, key: str, interval_s: float, ticket: int, max_wait_s: float | None = None
    ) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(interval_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(queue.waiters, (ticket, next(self._arrivals), waiter, max_wait_s))
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
                wait_s, step_s, paused_s = await self._reserver.submit(
                    (key, count, queue.interval_s)
                )
                if paused_s > 0:  # another process paused it meanwhile
                    self._set_paused(key, paused_s)
                    continue
                queue.step_s = step_s
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
            _fail_waiters(queue, exc)
        finally:
            if not queue.waiters:
                self._queues.pop(key, None)

    async def _reserve(
        self, wanted: list[tuple[str, int, float]]
    ) -> list[tuple[float, float, float]]:
        order = sorted(range(len(wanted)), key=lambda i: wanted[i][0])  # one lock order
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                _RESERVE,
                (
                    [wanted[i][0] for i in order],
                    [wanted[i][1] for i in order],
                    [wanted[i][2] for i in order],
                ),
            )
            rows = await cur.fetchall()
        answers: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(wanted)
        for i, row in zip(order, rows, strict=True):
            answers[i] = (float(row["wait_s"]), float(row["step_s"]), float(row["paused_s"]))
        return answers

    async def close(self) -> None:
        for queue in list(self._queues.values()):
            if queue.pump is not None:
                queue.pump.cancel()
        await self._reserver.close()


def _fail_waiters(queue: _Queue, exc: Exception) -> None:
    for _, _, waiter, _ in queue.waiters:
        if not waiter.done():
            waiter.set_exception(exc)
    queue.waiters.clear()
