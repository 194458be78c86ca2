"""The retention pass's loop on an in-memory store: every table batch after batch until the
store says there is no more, the key of each page handed to the next, a pause after every
batch, the cutoffs from the clock and the settings, nothing when another process holds the
group's lock or nothing is due."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from consumer.adapters.metrics import Metrics
from consumer.domain.records import PRUNED_TABLES, PrunedBatch, RetentionCutoffs
from consumer.service.retention import Retention, RetentionPolicy

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class FakeBatches:
    def __init__(self, rows: dict[str, int], due: bool = True) -> None:
        self.rows = dict(rows)  # rows left to prune per table
        self.is_due = due
        self.calls: list[tuple[str, str | None]] = []
        self.cutoffs: list[RetentionCutoffs] = []
        self.next_in: float | None = None

    async def due(self) -> bool:
        return self.is_due

    async def schedule_next(self, interval_s: float) -> None:
        self.next_in = interval_s

    async def prune(
        self, table: str, cutoffs: RetentionCutoffs, limit: int, after: str | None
    ) -> PrunedBatch:
        self.calls.append((table, after))
        self.cutoffs.append(cutoffs)
        taken = min(limit, self.rows.get(table, 0))
        self.rows[table] = self.rows.get(table, 0) - taken
        key = None if table != "bookings" else f"bk_{len(self.calls)}"
        return PrunedBatch(taken, taken == limit, key)


class FakeRecords:
    def __init__(self, batches: FakeBatches, held_elsewhere: bool = False) -> None:
        self.batches = batches
        self.held_elsewhere = held_elsewhere

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[FakeBatches | None]:
        yield None if self.held_elsewhere else self.batches


def retention(records: FakeRecords, pauses: list[float]) -> tuple[Retention, Metrics]:
    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    metrics = Metrics()
    policy = RetentionPolicy(
        retention_days=90, past_days=7, login_window_s=900, batch_rows=10, min_pause_s=0.02
    )
    return Retention(policy, records, metrics, clock=lambda: NOW, sleep=sleep), metrics


async def test_a_pass_prunes_every_table_in_batches_with_a_pause_after_each() -> None:
    batches = FakeBatches({"sync_results": 25, "bookings": 20})
    pauses: list[float] = []
    pruning, metrics = retention(FakeRecords(batches), pauses)

    done = await pruning.run_pass()

    assert done is not None
    assert done.pruned == {"sync_results": 25, "bookings": 20}
    # 10 + 10 + 5 results (the short batch ends it), one batch of every other table, and
    # bookings page after page, each page starting after the last one's key, until a
    # short page.
    results = [after for table, after in batches.calls if table == "sync_results"]
    assert results == [None, None, None]
    pages = [after for table, after in batches.calls if table == "bookings"]
    assert len(pages) == 3 and pages[0] is None and pages[1] and pages[2]
    assert [t for t, _ in batches.calls if t not in ("sync_results", "bookings")] == [
        t for t in PRUNED_TABLES if t not in ("sync_results", "bookings")
    ]
    assert len(pauses) == len(batches.calls) and min(pauses) >= 0.02
    assert batches.next_in == 3600.0
    assert metrics.retention_pruned.labels("sync_results")._value.get() == 25
    assert batches.cutoffs[0] == RetentionCutoffs(
        now=NOW,
        before=NOW - timedelta(days=90),
        horizon=NOW - timedelta(days=7),
        login_window_s=900,
    )


async def test_no_pass_while_another_process_prunes_or_none_is_due() -> None:
    batches = FakeBatches({"sync_results": 5})
    pauses: list[float] = []
    assert await retention(FakeRecords(batches, held_elsewhere=True), pauses)[0].run_pass() is None
    assert batches.calls == []
    batches.is_due = False
    pruning = retention(FakeRecords(batches), pauses)[0]
    assert await pruning.run_pass(only_when_due=True) is None
    assert batches.calls == []
    assert await pruning.run_pass() is not None  # asked for by hand: it runs
    assert batches.rows["sync_results"] == 0
