"""The Kafka side of on-call work: a group's offsets and members as the broker sees them,
committing new offsets for a stopped group, reading back a range of records, and putting
messages back on a topic. What `calsync replay`, `calsync status` and `calsync dlq replay`
ask of the broker; the decisions stay in the services (consumer.service.operations).

Tansu, the embedded broker of the tests, answers `list_consumer_group_offsets` with a
protocol error, so committed offsets are read through a consumer of the group
(`committed()`), which both brokers answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.domain.errors import OpsError
from consumer.domain.records import GroupAtBroker, KafkaRecord, PartitionOffsets

_JOIN_TIMEOUT_S = 60.0


class KafkaGroupAdmin:
    """On-call questions and actions on one cluster (`bootstrap`)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    @asynccontextmanager
    async def _probe(self, group: str | None) -> AsyncIterator[AIOKafkaConsumer]:
        probe = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
        )
        try:
            await probe.start()
        except KafkaError as exc:
            raise OpsError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from None
        try:
            yield probe
        finally:
            await probe.stop()

    async def offsets(
        self, group: str, topic: str, partitions: Sequence[int] | None = None
    ) -> list[PartitionOffsets]:
        """The topic's partitions (all, or these: an unknown one is refused) with their
        offsets and the group's committed ones."""
        async with self._probe(group) as probe:
            if topic not in await probe.topics():
                raise OpsError(f"unknown topic {topic!r}")
            available = probe.partitions_for_topic(topic) or set()
            unknown = sorted(set(partitions or []) - available)
            if unknown:
                raise OpsError(
                    f"topic {topic!r} has no partition {', '.join(map(str, unknown))} "
                    f"(it has 0..{max(available)})"
                )
            chosen = [TopicPartition(topic, p) for p in sorted(partitions or available)]
            earliest = await probe.beginning_offsets(chosen)
            latest = await probe.end_offsets(chosen)
            return [
                PartitionOffsets(tp.partition, earliest[tp], latest[tp], await probe.committed(tp))
                for tp in chosen
            ]

    async def offsets_at(self, topic: str, partitions: Sequence[int], at_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose record is at or after `at_ms` (the end of
        the partition when there is none)."""
        async with self._probe(None) as probe:
            tps = [TopicPartition(topic, p) for p in partitions]
            found = await probe.offsets_for_times({tp: at_ms for tp in tps})
            ends = await probe.end_offsets(tps)
        return {
            tp.partition: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps
        }

    async def known_groups(self) -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            return {group for group, _ in await admin.list_consumer_groups()}
        finally:
            await admin.close()

    async def group(self, group: str) -> GroupAtBroker:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = (await admin.describe_consumer_groups([group]))[0].groups[0]
            return GroupAtBroker(state=str(described[2]), members=len(described[5]))
        except (KafkaError, IndexError):
            return GroupAtBroker(state="unknown", members=None)
        finally:
            await admin.close()

    async def commit_as_only_member(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit these offsets as the group's only member (joining waits out members the
        broker still lists but that stopped heartbeating); refused, with nothing changed,
        when another member is active."""
        member = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=10_000,
            rebalance_timeout_ms=10_000,
        )
        assigned = _Assigned()
        member.subscribe([topic], listener=assigned)
        await member.start()
        try:
            try:
                await asyncio.wait_for(assigned.event.wait(), _JOIN_TIMEOUT_S)
            except TimeoutError:
                raise OpsError(
                    f"could not join group {group!r} within {_JOIN_TIMEOUT_S:.0f}s: "
                    "nothing was changed"
                ) from None
            wanted = {TopicPartition(topic, p) for p in member.partitions_for_topic(topic) or ()}
            if set(member.assignment()) != wanted:
                raise OpsError(
                    f"group {group!r} has other active members at the broker: nothing was changed"
                )
            await member.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
        finally:
            await member.stop()

    async def records(
        self, topic: str, ranges: dict[int, tuple[int, int]]
    ) -> AsyncIterator[KafkaRecord]:
        """The records of each partition from `start` up to (not including) `end`."""
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            todo = {
                TopicPartition(topic, p): (start, end)
                for p, (start, end) in ranges.items()
                if end > start
            }
            reader.assign(list(todo))
            for tp, (start, _) in todo.items():
                reader.seek(tp, start)
            while todo:
                batch = await reader.getmany(*todo, timeout_ms=1000)
                if not batch:
                    break
                for tp, got in batch.items():
                    end = todo[tp][1]
                    for record in got:
                        if record.offset < end:
                            yield KafkaRecord(tp.partition, record.offset, record.key, record.value)
                    if got and got[-1].offset + 1 >= end:
                        del todo[tp]
        finally:
            await reader.stop()

    @asynccontextmanager
    async def publisher(self) -> AsyncIterator[Publisher]:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            yield Publisher(producer)
        finally:
            await producer.stop()


class Publisher:
    """Puts messages on a topic, each acknowledged by every in-sync replica."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.event.set()
