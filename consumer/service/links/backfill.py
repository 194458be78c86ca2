"""The backfill: a link that just became active (a calendar chosen, its account reconnected,
a link imported with its calendar) is brought up to the latest recorded booking states,
through the sync engine's claimed, versioned path (so events cannot double them).

Bounded by the horizon (consumer.domain.horizon): only bookings that end after now minus
CALSYNC_BACKFILL_PAST_DAYS are read, and an activity's ten years of past bookings are never
sent to Google. Bounded in memory: bookings are read in keyset pages, and no list of the
history is ever held. A first pass counts what it writes and owes it to the repair loop,
page by page (`repairs`, leased to this process: if it stops, the group finishes the rest
once the lease ends); a second pass works the pages, a few bookings at a time.

Every backfill is recorded in `backfills`, with what it will write counted before it
starts (`total`), and its progress kept there as it goes, whoever waits for it: the CLI and
the JSON API wait for the end (and answer the counts); the pages start it in the background
of `calsync serve` and show its progress from that table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from consumer.domain.horizon import horizon
from consumer.domain.models import BookingEvent, LinkRow, LinkState, Operation
from consumer.domain.planning import plan_operation
from consumer.domain.records import Backfill
from consumer.service.links.common import LinkParts

log = structlog.get_logger(__name__)
PAGE_SIZE = 500  # bookings read at once (a page is all a backfill holds of the history)
CONCURRENCY = 8  # bookings at Google at once, per backfill
_PROGRESS_EVERY_S = 0.5  # how often a running backfill writes its progress, when it moved
_HEARTBEAT_EVERY_S = 5.0  # ... and at least this often (pages tell a stalled one by it)
_NO_CALENDAR = "\x00none"  # a calendar no record names: what a first choice is counted on


@dataclass(frozen=True)
class PlannedBackfill:
    """A backfill recorded and counted, not started: its row in `backfills`, the link, the
    horizon it covers (bookings ending after `since`) and how many bookings it writes."""

    id: int
    row: LinkRow
    since: datetime
    total: int


@dataclass
class _Tally:
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class Backfiller:
    def __init__(self, parts: LinkParts) -> None:
        self.parts = parts
        self._background: set[asyncio.Task[Any]] = set()
        # Who holds the leases of the backfills this process works (see RepairLedger).
        self.member = f"{socket.gethostname()}-{os.getpid()}-links"

    def horizon(self) -> datetime:
        """Bookings ending after this are backfilled now."""
        return horizon(datetime.now(UTC), self.parts.settings.backfill_past_days)

    # --- what a backfill writes -------------------------------------------------------------

    async def plan(self, row: LinkRow, calendar_name: str | None, trigger: str) -> PlannedBackfill:
        """Record the backfill of a link that just became active, and write down what it
        will write, page by page: counted (`total`, known before anything is written) and
        owed to the repair loop (`repairs`, leased to this process), so that a backfill
        whose process stops is finished by the consumer group once the lease ends."""
        assert row.link.calendar_id is not None
        since = self.horizon()
        records = self.parts.backfills
        backfill_id = await records.start_backfill(
            row.link.id, row.link.calendar_id, calendar_name, trigger, since
        )
        try:
            total = 0
            async for page in self._pending(row, since):
                await self._owe(row, page)
                total += len(page)
            await records.backfill_total(backfill_id, total)
        except BaseException as exc:
            await asyncio.shield(records.finish_backfill(backfill_id, 0, {}, _failure(exc)))
            raise
        return PlannedBackfill(backfill_id, row, since, total)

    async def _owe(self, row: LinkRow, page: list[BookingEvent]) -> None:
        await self.parts.repairs.owe(
            row.link.id,
            [(e.booking.id, e.booking.version) for e in page],
            "backfill",
            self.member,
            self.parts.settings.repair_lease_s,
        )

    async def count(self, row: LinkRow, since: datetime) -> int:
        """How many bookings a backfill of the link writes: those ending after `since` whose
        latest state is not on its calendar yet (read page by page: nothing is kept)."""
        total = 0
        async for page in self._pending(row, since):
            total += len(page)
        return total

    async def will_write(self, row: LinkRow, calendar_id: str | None = None) -> int:
        """For a calendar choice: how many bookings choosing `calendar_id` (default: the
        link's own, or a first one) would write now."""
        chosen = calendar_id or row.link.calendar_id or _NO_CALENDAR
        link = row.link.model_copy(update={"state": LinkState.ACTIVE, "calendar_id": chosen})
        return await self.count(dataclasses.replace(row, link=link), self.horizon())

    async def _pending(self, row: LinkRow, since: datetime) -> AsyncIterator[list[BookingEvent]]:
        """The bookings the link needs an operation for, a page at a time: the activity's
        (ending after `since`), then those that moved to another activity while the link's
        calendars still hold their event (they must leave)."""
        records = self.parts.backfills
        link = row.link
        for read in (records.activity_page, records.moved_away_page):
            after = None
            while True:
                page = await read(link.id, link.activity_id, since, after, PAGE_SIZE)
                pending = [
                    held.event
                    for held in page.bookings
                    if plan_operation(held.event, link, held.recorded, latest=True).operation
                    is not Operation.NONE
                ]
                if pending:
                    yield pending
                if page.next is None:
                    break
                after = page.next

    # --- running it -------------------------------------------------------------------------

    async def run(self, planned: PlannedBackfill) -> dict[str, int]:
        """Work a planned backfill to its end, keeping its progress in `backfills`. Answers
        the counts: bookings (its total), then per outcome."""
        row = planned.row
        self.parts.engine.resume(row.link.id)
        tally = _Tally(counts={"bookings": planned.total})
        records = self.parts.backfills
        try:
            reporter = asyncio.create_task(self._report_progress(planned.id, tally))
            try:
                await self._work(row, planned.since, tally)
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            await records.mark_backfilled(row.link.id)
        except BaseException as exc:
            await asyncio.shield(
                records.finish_backfill(planned.id, tally.done, tally.counts, _failure(exc))
            )
            raise
        await records.finish_backfill(planned.id, tally.done, tally.counts, None)
        log.info("link_backfilled", link_id=row.link.id, backfill_id=planned.id, **tally.counts)
        return tally.counts

    async def _work(self, row: LinkRow, since: datetime, tally: _Tally) -> None:
        """Page by page (read again: the latest states), its bookings at most CONCURRENCY at
        a time (a task is made only when a place is free: never one per booking up front).
        What was owed when it was planned and is no longer pending is settled by the repair
        loop; what became pending since is owed now."""
        places = asyncio.Semaphore(CONCURRENCY)
        running: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            places.release()
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failures.append(error)

        try:
            async for page in self._pending(row, since):
                await self._owe(row, page)
                for event in page:
                    await places.acquire()
                    if failures:
                        raise failures[0]
                    task = asyncio.create_task(self._one(event, row, tally))
                    running.add(task)
                    task.add_done_callback(finished)
            while running:
                await asyncio.wait(set(running))
            if failures:
                raise failures[0]
        finally:
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, event: BookingEvent, row: LinkRow, tally: _Tally) -> None:
        # The latest state, read under the claim (it may have moved on since).
        result = await self.parts.engine.sync_link(event, row, None, source="backfill", latest=True)
        outcome = result.outcome.value
        tally.counts[outcome] = tally.counts.get(outcome, 0) + 1
        tally.done += 1

    async def _report_progress(self, backfill_id: int, tally: _Tally) -> None:
        """Every half second when it moved, and every few seconds anyway (a heartbeat):
        one cheap UPDATE, whatever the number of bookings."""
        reported, at = -1, time.monotonic()
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            if tally.done != reported or time.monotonic() - at >= _HEARTBEAT_EVERY_S:
                reported, at = tally.done, time.monotonic()
                try:
                    await self.parts.backfills.backfill_progress(
                        backfill_id, tally.done, dict(tally.counts)
                    )
                    # The leases on what is left stay this process's while it works them.
                    await self.parts.repairs.renew(self.member, self.parts.settings.repair_lease_s)
                except Exception as exc:  # progress is for people; the backfill goes on
                    log.warning(
                        "backfill_progress_not_saved", backfill_id=backfill_id, error=repr(exc)
                    )

    # --- in the background (the pages) ------------------------------------------------------

    def spawn(self, planned: PlannedBackfill) -> None:
        """Run the backfill in the background of this process (its progress in `backfills`)."""
        self._spawn(self.run(planned), f"backfill {planned.row.link.id}")

    def _spawn(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(work, name=what)
        self._background.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background_failed", what=what, error=repr(finished.exception()))

        task.add_done_callback(done)

    async def close(self) -> None:
        """Let background backfills finish (up to the shutdown grace), then stop them: each
        records that it was interrupted."""
        running = set(self._background)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.parts.settings.shutdown_grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # --- reading them -----------------------------------------------------------------------

    async def backfills(self, ids: list[int]) -> list[Backfill]:
        return await self.parts.backfills.backfills(ids)

    async def latest(self, link_ids: list[str]) -> dict[str, Backfill]:
        return await self.parts.backfills.latest_backfills(link_ids)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "interrupted: the service stopped"
    return f"{type(exc).__name__}: {exc}"
