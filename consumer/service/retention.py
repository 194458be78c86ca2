"""Retention (issue 22, point 4): the logs and the bookings that no calendar can need any more
are removed by the consumer group, so that the database does not grow with the history.

One process of the group at a time (the store's advisory lock) runs a pass when the group's
schedule says one is due (at once on a new database, then every `interval_s`); each process
looks every `check_every_s`, the first time `start_delay_s` after it started (a restart
under load is not met with a pass at once). A pass prunes table after table in batches of
at most `batch_rows` rows, each its own short transaction, and after each batch sleeps as
long as the batch took (at least `min_pause_s`): a pass never takes more than half of the
database's time from the hot path, whatever the load. What each table keeps is the store's
(consumer/adapters/postgres/retention_store.py); the cutoffs are computed here, from the
settings and the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from consumer.adapters.metrics import Metrics
from consumer.domain.horizon import horizon
from consumer.domain.records import PRUNED_TABLES, RetentionCutoffs
from consumer.service.ports import RetentionBatches, RetentionRecords

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """The settings a pass runs with (sliced from them in bootstrap)."""

    retention_days: float  # CALSYNC_RESULTS_RETENTION_DAYS
    past_days: float  # CALSYNC_BACKFILL_PAST_DAYS: the horizon
    login_window_s: float  # CALSYNC_HTTP_LOGIN_WINDOW_S
    batch_rows: int = 5000
    interval_s: float = 3600.0
    start_delay_s: float = 120.0
    check_every_s: float = 60.0
    min_pause_s: float = 0.02


@dataclass(frozen=True)
class RetentionPass:
    """What one pass removed, table by table, and when it ran."""

    pruned: dict[str, int]
    started_at: datetime
    finished_at: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Retention:
    def __init__(
        self,
        policy: RetentionPolicy,
        records: RetentionRecords,
        metrics: Metrics,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self._records = records
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep

    def cutoffs(self) -> RetentionCutoffs:
        now = self._clock()
        return RetentionCutoffs(
            now=now,
            before=now - timedelta(days=self.policy.retention_days),
            horizon=horizon(now, self.policy.past_days),
            login_window_s=self.policy.login_window_s,
        )

    async def run_pass(self, only_when_due: bool = False) -> RetentionPass | None:
        """One pass, unless another process of the group runs one (or, `only_when_due`, the
        group's schedule says none is due): then None."""
        async with self._records.exclusive() as batches:
            if batches is None or (only_when_due and not await batches.due()):
                return None
            started = self._clock()
            try:
                pruned = await self._prune_all(batches, self.cutoffs())
            finally:
                await batches.schedule_next(self.policy.interval_s)
        done = RetentionPass(dict(pruned), started, self._clock())
        log.info(
            "retention_pass_finished",
            pruned=done.pruned,
            seconds=round((done.finished_at - started).total_seconds(), 1),
        )
        return done

    async def scheduled(self) -> None:
        """Until cancelled: take part in the group's schedule of passes."""
        await self._sleep(self.policy.start_delay_s)
        while True:
            try:
                await self.run_pass(only_when_due=True)
            except Exception as exc:  # a timed-out batch, the database away: next time
                log.warning("retention_pass_failed", cause=type(exc).__name__, error=str(exc)[:300])
            await self._sleep(self.policy.check_every_s)

    async def _prune_all(
        self, batches: RetentionBatches, cutoffs: RetentionCutoffs
    ) -> Counter[str]:
        pruned: Counter[str] = Counter()
        for table in PRUNED_TABLES:
            after: str | None = None
            more = True
            while more:
                started = time.monotonic()
                batch = await batches.prune(table, cutoffs, self.policy.batch_rows, after)
                more, after = batch.more, batch.after
                if batch.pruned:
                    pruned[table] += batch.pruned
                    self._metrics.retention_pruned.labels(table).inc(batch.pruned)
                # As long again for everyone else: at most half the database's time is ours.
                await self._sleep(max(self.policy.min_pause_s, time.monotonic() - started))
        return pruned
