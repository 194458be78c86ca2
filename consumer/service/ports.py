"""The services' ports: what each service needs of the outside, as Protocols.

The adapters implement them (consumer.adapters: PostgreSQL stores, Kafka, Google); the unit
tier's fakes (tests/unit/fakes.py) implement them too and type-check against them. A service
names the port it uses, never the adapter's class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from consumer.adapters.postgres.ops_store import Overview
from consumer.domain.records import (
    DeadLetterRecord,
    Deployment,
    GroupAtBroker,
    KafkaRecord,
    Member,
    PartitionOffsets,
    RepairCount,
)

# --- on-call: `calsync status`, `calsync replay`, `calsync dlq`, the gauges ---------------------


class OpsRecords(Protocol):
    """The database as on-call tooling reads and records it."""

    async def ping(self, timeout_s: float) -> None: ...

    async def deployment(self, configured: str | None) -> Deployment: ...

    async def alive_members(self, group_id: str) -> list[Member]: ...

    async def overview(self) -> Overview: ...

    async def repair_counts(self) -> list[RepairCount]: ...

    async def link_state_counts(self) -> dict[str, int]: ...

    async def record_replay(
        self,
        who: str,
        group: str,
        topic: str,
        spec: str,
        executed: bool,
        resync: bool,
        plan: Sequence[Mapping[str, Any]],
        resynced: int | None,
    ) -> int: ...

    async def dead_letters(self, include_replayed: bool) -> list[DeadLetterRecord]: ...

    async def dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None: ...

    async def mark_dead_letter_replayed(self, dead_letter_id: int, who: str) -> None: ...


class Publishing(Protocol):
    async def publish(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None: ...


class GroupAdmin(Protocol):
    """The broker as on-call tooling asks it."""

    async def offsets(
        self, group: str, topic: str, partitions: Sequence[int] | None = None
    ) -> list[PartitionOffsets]: ...

    async def offsets_at(
        self, topic: str, partitions: Sequence[int], at_ms: int
    ) -> dict[int, int]: ...

    async def known_groups(self) -> set[str]: ...

    async def group(self, group: str) -> GroupAtBroker: ...

    async def commit_as_only_member(
        self, group: str, topic: str, offsets: dict[int, int]
    ) -> None: ...

    def records(
        self, topic: str, ranges: dict[int, tuple[int, int]]
    ) -> AsyncIterator[KafkaRecord]: ...

    def publisher(self) -> AbstractAsyncContextManager[Publishing]: ...
