"""Which offset of a partition may be committed while messages finish out of order."""

from __future__ import annotations


class PartitionOffsets:
    """Offsets taken from one partition, in the order read (which is offset order).

    The commit point is the oldest unfinished offset, or one past the highest offset taken
    when everything taken is finished: everything below it is recorded, so committing it can
    never skip work. Only unfinished offsets are kept (at most the in-flight window), so
    memory stays bounded however long one message holds the partition back.
    """

    def __init__(self) -> None:
        self._unfinished: set[int] = set()
        self._first: int | None = None  # where reading started: nothing to commit below it
        self._highest: int | None = None
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self._unfinished)

    def add(self, offset: int) -> bool:
        """Take an offset; False when it was taken before (a redelivery: already handled)."""
        if self._highest is not None and offset <= self._highest:
            return False
        if self._first is None:
            self._first = offset
        self._highest = offset
        self._unfinished.add(offset)
        return True

    def finish(self, offset: int) -> None:
        self._unfinished.discard(offset)

    def first_unrecorded(self) -> int | None:
        """The lowest offset not yet recorded (None before anything was read)."""
        if self._unfinished:
            return min(self._unfinished)
        if self._highest is not None:
            return self._highest + 1
        return self.committed

    def commit_point(self) -> int | None:
        """The offset to commit (the next to read), when it moved past `committed`."""
        if self._first is None:
            return None
        point = self.first_unrecorded()
        floor = self.committed if self.committed is not None else self._first
        if point is None or point <= floor:
            return None
        return point
