"""The repair loop: nothing left off a calendar is forgotten.

Every (link, booking) whose latest state is not on the link's calendar (failed after the
retry budget, deferred while a quota is paused or booked up, the token endpoint down) has a
row in `repairs`, written in the same transaction as the result that left it so. Every
consumer process runs this loop: it leases rows that are due (one process per row; a
process that dies loses its lease after `repair_lease_s`), reads the booking's latest state
and the link, and applies it through the sync engine's claimed, versioned path, exactly as
a message would. The result settles the row (applied, or nothing to do) or schedules the
next attempt (exponential backoff up to `repair_max_backoff_s`, never before a pause or a
Retry-After ends). A link that leaves `active` drops its repairs: reconnecting or
re-selecting a calendar backfills it anyway. Repairs are owed by live messages too, whatever
their booking's date: every owed repair is re-driven (the horizon bounds what backfills and
reconciles owe, not what the loop works).

Each poll is one statement of the queue (consumer.adapters.postgres.repair_store): the
accounts in turn, a window of them per poll, each one's oldest due repairs, at most the
places its account still has in this process, so that one account's thousands of repairs
never take every place. While a poll finds work (or the walk over the accounts has not
reached their end) the loop looks again at once; once a whole walk found nothing it waits,
longer each time up to `repair_poll_s` (consumer.domain.repair_queue.PollPace).

Repairs wait for their account's quota like messages do, but outside the message window:
a throttled account's backlog never holds up another account's bookings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from consumer.adapters.classify import is_retriable
from consumer.adapters.metrics import Metrics
from consumer.domain.models import BookingEvent, LinkRow, LinkState, Outcome
from consumer.domain.records import LeasedRepair, LeaseRequest
from consumer.domain.repair_queue import PollPace
from consumer.service.ports import RepairQueue, RepairReads
from consumer.service.sync import SyncEngine

log = structlog.get_logger(__name__)

_DROP_EVERY_S = 10.0  # how often repairs of links no longer active are removed


@dataclass(frozen=True)
class RepairLoopConfig:
    """What the loop takes of the settings (built in consumer.bootstrap)."""

    concurrency: int  # CALSYNC_REPAIR_CONCURRENCY: repairs at work at once in this process
    poll_s: float  # CALSYNC_REPAIR_POLL_S: the longest wait between two polls
    lease_s: float  # CALSYNC_REPAIR_LEASE_S
    places_per_account: int  # repairs of one account at work at once in this process


@dataclass(frozen=True)
class Polled:
    """What one poll did: repairs started, and whether its walk over the accounts reached
    their end (a poll that could not run, full or failed, counts as a whole walk)."""

    started: int
    swept_to_end: bool


class RepairLoop:
    def __init__(
        self,
        config: RepairLoopConfig,
        engine: SyncEngine,
        queue: RepairQueue,
        records: RepairReads,
        metrics: Metrics,
        member: str,
    ) -> None:
        self.config = config
        self.engine = engine
        self.queue = queue
        self.records = records
        self.metrics = metrics
        self.member = member
        self._tasks: set[asyncio.Task[str]] = set()
        self._running: Counter[str] = Counter()  # per account, repairs running here
        self._working: set[tuple[str, str]] = set()  # (link, booking) running here
        self._after = ""  # the walk over the accounts goes on after this one
        self._dropped_at = float("-inf")

    async def run(self) -> None:
        """Until cancelled: take due repairs and work them, `concurrency` at a time."""
        pace = PollPace(self.config.poll_s)
        try:
            while True:
                polled = await self._poll_safely()
                if self.room() <= 0:
                    await self._wait_for_a_place()
                    continue
                await asyncio.sleep(pace.after(polled.started, polled.swept_to_end))
        finally:
            await self._stop()

    def room(self) -> int:
        """Repairs this process may still start."""
        return self.config.concurrency - len(self._tasks)

    async def poll(self, link_id: str | None = None) -> Polled:
        """One poll: lease what is due (of one link, or of the accounts next in turn) and
        start working it."""
        room = self.room()
        if room <= 0:
            return Polled(0, False)
        lease = await self.queue.lease(
            LeaseRequest(
                member=self.member,
                limit=room,
                per_account=self.config.places_per_account,
                lease_s=self.config.lease_s,
                places=self._places_left(),
                after=self._after if link_id is None else "",
                link_id=link_id,
            )
        )
        if link_id is None:
            self._after = "" if lease.swept_to_end else lease.last_account
        if not lease.repairs:
            return Polled(0, lease.swept_to_end)
        links = await self.records.links_by_id({r.link_id for r in lease.repairs})
        bookings = await self.records.latest_bookings({r.booking_id for r in lease.repairs})
        return Polled(self._start(lease.repairs, links, bookings), lease.swept_to_end)

    async def drain(self, link_id: str | None = None) -> Counter[str]:
        """Work everything due now (of one link, or of all) until a whole walk over the
        accounts finds nothing due and every repair at work here has ended: what `calsync
        repair` does. Each repair is tried once (a failure is due again later)."""
        outcomes: Counter[str] = Counter()
        pending: set[asyncio.Task[str]] = set(self._tasks)
        pace = PollPace(self.config.poll_s)
        self._after = ""
        while True:
            polled = await self.poll(link_id)
            pending |= self._tasks
            walked_out = pace.after(polled.started, polled.swept_to_end) > 0
            if not pending:
                if walked_out:
                    return outcomes
                continue
            if walked_out or self.room() <= 0:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                outcomes.update(task.result() for task in done)

    def _places_left(self) -> tuple[tuple[str, int], ...]:
        per_account = self.config.places_per_account
        return tuple((a, max(0, per_account - n)) for a, n in self._running.items() if n > 0)

    def _start(
        self,
        leased: Iterable[LeasedRepair],
        links: dict[str, LinkRow],
        bookings: dict[str, BookingEvent],
    ) -> int:
        started = 0
        for repair in leased:
            pair = (repair.link_id, repair.booking_id)
            if pair in self._working:  # leased again while still at work here
                continue
            self._working.add(pair)
            self._running[repair.account] += 1
            task = asyncio.create_task(
                self._work(repair, links.get(repair.link_id), bookings.get(repair.booking_id))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def _poll_safely(self) -> Polled:
        try:
            if time.monotonic() - self._dropped_at >= _DROP_EVERY_S:
                await self.queue.drop_inactive()
                self._dropped_at = time.monotonic()
            return await self.poll()
        except Exception as exc:  # a bug of ours must not end the loop for good
            if is_retriable(exc):  # the database away: seen and retried elsewhere too
                log.info("repairs_not_read", cause=type(exc).__name__)
            else:
                log.error("repair_loop_failed", cause=type(exc).__name__, error=str(exc)[:300])
            return Polled(0, True)

    async def _wait_for_a_place(self) -> None:
        if self._tasks:
            await asyncio.wait(
                set(self._tasks), timeout=self.config.poll_s, return_when=asyncio.FIRST_COMPLETED
            )
        else:
            await asyncio.sleep(self.config.poll_s)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.queue.release(self.member)
        except Exception as exc:  # the leases expire by themselves
            log.info("repair_leases_not_released", cause=type(exc).__name__)

    async def _work(
        self, repair: LeasedRepair, row: LinkRow | None, event: BookingEvent | None
    ) -> str:
        """One repair; its outcome (`settled` when there was nothing left to apply)."""
        try:
            return await self._apply(repair, row, event)
        finally:
            self._working.discard((repair.link_id, repair.booking_id))
            self._running[repair.account] -= 1
            if self._running[repair.account] <= 0:
                del self._running[repair.account]

    async def _apply(
        self, repair: LeasedRepair, row: LinkRow | None, event: BookingEvent | None
    ) -> str:
        try:
            if row is None or event is None or row.link.state is not LinkState.ACTIVE:
                await self.queue.settle_gone(repair.link_id, repair.booking_id)
                return "settled"
            # Deferred again (not waited for) when its account is booked up: a repair
            # holds a place here only while it can go.
            result = await self.engine.sync_link(
                event, row, None, source="repair", latest=True, may_defer=True
            )
        except Exception as exc:  # the lease expires and another try comes; the loop goes on
            log.warning(
                "repair_failed",
                link_id=repair.link_id,
                booking_id=repair.booking_id,
                cause=type(exc).__name__,
            )
            self.metrics.repairs.labels("error").inc()
            return "error"
        self.metrics.repairs.labels(result.outcome.value).inc()
        if result.outcome in (Outcome.APPLIED, Outcome.UNCHANGED):
            log.info(
                "repaired",
                link_id=repair.link_id,
                booking_id=repair.booking_id,
                was=repair.reason,
                op=result.operation.value,
                outcome=result.outcome.value,
            )
        return result.outcome.value
