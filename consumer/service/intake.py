"""The runner's intake: records taken in as fetched, one chain per booking, and what is in
flight.

Records with the same key (booking id) on a partition form a chain: each one's work waits
for the one before it; different bookings run concurrently. Each partition's offsets
(consumer.domain.offsets.PartitionOffsets) say what may be committed; the messages in flight
say what lag, stall reports and logs tell of them. A drain forgets a partition whole: work
left behind then finishes nothing of what a new assignment takes in.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.domain.errors import printable
from consumer.domain.offsets import PartitionOffsets
from consumer.domain.records import ConsumedRecord, Partition, Stall

log = structlog.get_logger(__name__)
_Chain = tuple[Partition, bytes | None]
# A record's work: the record, the work of its booking's record before it (to wait for),
# and the partition's offsets it was taken into.
Work = Callable[
    [ConsumedRecord, "asyncio.Task[None] | None", PartitionOffsets], Coroutine[Any, Any, None]
]


@dataclass
class InFlight:
    """A message taken and not yet recorded: what lag, stall reports and logs say of it."""

    key: str | None
    timestamp_ms: int  # the record's own timestamp
    taken_at: float  # monotonic
    cause: str = "in progress"  # the last failure, while it is being retried
    stall_logged: bool = False


class Intake:
    """Records in flight, per partition and per booking."""

    def __init__(self) -> None:
        self.offsets: dict[Partition, PartitionOffsets] = {}
        self.pending: defaultdict[Partition, dict[int, InFlight]] = defaultdict(dict)
        self._tasks: defaultdict[Partition, set[asyncio.Task[None]]] = defaultdict(set)
        self._tails: dict[_Chain, asyncio.Task[None]] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.processed = 0

    def take(self, record: ConsumedRecord, work: Work) -> None:
        """Start `record`'s work, after its booking's record before it (a redelivery of an
        offset taken before is skipped: it is handled already)."""
        at = record.at
        offsets = self.offsets.setdefault(at, PartitionOffsets())
        if not offsets.add(record.offset):
            log.debug("redelivery_skipped", partition=record.partition, offset=record.offset)
            return
        chain: _Chain = (at, record.key)
        self.pending[at][record.offset] = InFlight(
            printable(record.key.decode("utf-8", "backslashreplace"), 200)
            if record.key is not None
            else None,
            record.timestamp_ms,
            time.monotonic(),
        )
        task = asyncio.create_task(work(record, self._tails.get(chain), offsets))
        self._tails[chain] = task
        self._tasks[at].add(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        task.add_done_callback(lambda t: self._forget_task(chain, t))

    def _forget_task(self, chain: _Chain, task: asyncio.Task[None]) -> None:
        self.in_flight -= 1
        tasks = self._tasks.get(chain[0])  # None once a drain has forgotten the partition
        if tasks is not None:
            tasks.discard(task)
        if self._tails.get(chain) is task:
            del self._tails[chain]

    def in_flight_of(self, record: ConsumedRecord) -> InFlight | None:
        pending = self.pending.get(record.at)
        return pending.get(record.offset) if pending is not None else None

    def done(self, record: ConsumedRecord, taken_into: PartitionOffsets) -> None:
        """`record` is recorded. `taken_into`: the partition's offsets it was taken into; a
        drain may have forgotten them (and a new assignment started others) while its work
        was left behind: it then finishes nothing of the new ones."""
        at = record.at
        offsets = self.offsets.get(at)
        if offsets is not None and offsets is taken_into:
            offsets.finish(record.offset)
            pending = self.pending.get(at)
            if pending is not None:
                pending.pop(record.offset, None)
        self.processed += 1

    def take_unreadable(self, at: Partition, offset: int) -> PartitionOffsets | None:
        """Take an offset whose record could not be read (its work is the caller's); None
        when it was taken before."""
        offsets = self.offsets.setdefault(at, PartitionOffsets())
        return offsets if offsets.add(offset) else None

    def tasks_of(self, partitions: Iterable[Partition]) -> set[asyncio.Task[None]]:
        tasks: set[asyncio.Task[None]] = set()
        for at in partitions:
            tasks |= self._tasks.get(at, set())
        return tasks

    def commit_points(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Per partition (all, or these), the offset to commit when it moved."""
        wanted = {}
        for at in partitions if partitions is not None else list(self.offsets):
            offsets = self.offsets.get(at)
            point = offsets.commit_point() if offsets is not None else None
            if point is not None:
                wanted[at] = point
        return wanted

    def forget(self, partitions: Iterable[Partition]) -> None:
        """The partitions are drained: their bookkeeping goes (work left behind keeps what
        it was taken into, and finishes nothing of what comes after)."""
        gone = set(partitions)
        for at in gone:
            self.offsets.pop(at, None)
            self._tasks.pop(at, None)
            self.pending.pop(at, None)
        for chain in [c for c in self._tails if c[0] in gone]:
            del self._tails[chain]

    def stalls(self, threshold_s: float) -> list[Stall]:
        """Per partition, its oldest unrecorded message when it has waited past the
        threshold."""
        now = time.monotonic()
        answer = []
        for at, messages in self.pending.items():
            if not messages:
                continue
            offset = min(messages)
            oldest = messages[offset]
            waited = now - oldest.taken_at
            if waited > threshold_s:
                answer.append(
                    Stall(
                        at.topic, at.partition, offset, oldest.key, oldest.cause, round(waited, 1)
                    )
                )
        return answer
