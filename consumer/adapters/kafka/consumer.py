"""The group's consumer as the runner uses it (consumer.service.ports.KafkaConsumerPort): the
Kafka mechanics, kept apart from the runner's decisions.

- Fetching hands out plain records (consumer.domain.records), in each partition's order.
- A record the Kafka client cannot read (a header key that is not UTF-8, a corrupt batch)
  makes the client raise without saying which partition or offset, and the records before
  it in that fetch are not handed out. Every partition is then rewound to where it stood
  (nothing is lost) and read one record at a time until the unreadable one is met: it is
  handed out as an UnreadableRecord at its place (the runner dead-letters it) and reading
  goes on past it.
- The rebalance listener tells the runner which partitions it loses and gets.
- A commit is bounded by its timeout: a broker that answers nothing does not hold it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CorruptRecordException, InvalidMessageError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumer.domain.records import ConsumedRecord, Partition, UnreadableRecord

log = structlog.get_logger(__name__)
# What the Kafka client raises for a record it cannot read: never our input's fault to
# carry, and never a reason to stop.
UNREADABLE = (UnicodeDecodeError, CorruptRecordException, InvalidMessageError)
_ONE_AT_A_TIME_WAIT_MS = 100
Hook = Callable[[list[Partition]], Awaitable[None]]
Fetched = list[ConsumedRecord | UnreadableRecord]


class GroupConsumer:
    """The group's AIOKafkaConsumer (built by consumer.adapters.kafka.clients)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    def subscribe(self, topic: str, revoked: Hook, assigned: Hook) -> None:
        self._consumer.subscribe([topic], listener=_Rebalance(revoked, assigned))

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def getmany(self, timeout_ms: int, max_records: int) -> Fetched:
        try:
            batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except UNREADABLE as exc:
            return await self._past_unreadable(exc)
        return [_consumed(record) for records in batch.values() for record in records]

    async def _past_unreadable(self, exc: BaseException) -> Fetched:
        log.warning("record_unreadable_seen", cause=type(exc).__name__)
        assigned = list(self._consumer.assignment())
        for tp in assigned:
            self._consumer.seek(tp, await self._consumer.position(tp))
        fetched: Fetched = []
        for tp in assigned:
            while True:
                try:
                    got = await self._consumer.getmany(
                        tp, timeout_ms=_ONE_AT_A_TIME_WAIT_MS, max_records=1
                    )
                except UNREADABLE as bad:
                    offset = await self._consumer.position(tp)
                    fetched.append(UnreadableRecord(tp.topic, tp.partition, offset, bad))
                    self._consumer.seek(tp, offset + 1)
                    break
                records = got.get(tp, [])
                if not records:
                    break
                fetched.extend(_consumed(record) for record in records)
        return fetched

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def paused(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def pause(self, *partitions: Partition) -> None:
        self._consumer.pause(*_kafka(partitions))

    def resume(self, *partitions: Partition) -> None:
        self._consumer.resume(*_kafka(partitions))

    def highwater(self, partition: Partition) -> int | None:
        highwater: int | None = self._consumer.highwater(TopicPartition(*partition))
        return highwater

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._consumer.commit(
                    {TopicPartition(*partition): offset for partition, offset in offsets.items()}
                )
        except (KafkaError, TimeoutError) as exc:
            log.warning("offset_commit_failed", cause=repr(exc))
            return False
        return True

    async def topics(self) -> set[str]:
        topics: set[str] = await self._consumer.topics()
        return topics


def _consumed(record: ConsumerRecord[Any, Any]) -> ConsumedRecord:
    return ConsumedRecord(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        tuple(record.headers or ()),
        record.timestamp,
    )


def _kafka(partitions: Iterable[Partition]) -> list[TopicPartition]:
    return [TopicPartition(*partition) for partition in partitions]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's listener, telling the runner (its work to drain, its partitions to
    expect)."""

    def __init__(self, revoked: Hook, assigned: Hook) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._revoked([Partition(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._assigned([Partition(tp.topic, tp.partition) for tp in assigned])
