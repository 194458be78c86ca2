"""Which offset of a partition may be committed while messages finish out of order."""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets taken from one partition, in the order read (which is offset order).

    The commit point is the offset of the oldest unfinished message, or one past the last
    finished one: everything below it is recorded, so committing it can never skip work.
    """

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # one past the highest finished prefix
        self._highest: int | None = None
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self._order)

    def add(self, offset: int) -> bool:
        """Take an offset; False when it was taken before (a redelivery: already handled)."""
        if self._highest is not None and offset <= self._highest:
            return False
        self._highest = offset
        self._order.append(offset)
        return True

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        while self._order and self._order[0] in self._done:
            first = self._order.popleft()
            self._done.discard(first)
            self._next = first + 1

    def commit_point(self) -> int | None:
        """The offset to commit (the next to read), when it moved past `committed`."""
        if self._next is None or (self.committed is not None and self._next <= self.committed):
            return None
        return self._next

    def first_unrecorded(self) -> int | None:
        """The lowest offset not yet recorded (None before anything was read)."""
        if self._order:
            return self._order[0]
        return self._next if self._next is not None else self.committed
