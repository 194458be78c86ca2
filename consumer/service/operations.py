"""On-call tooling behind `calsync replay`, `calsync dlq` and `calsync status`.

Replay is modelled on `kafka-consumer-groups --reset-offsets`: a plan (current and new
offset, messages to re-read) per partition, a dry run by default, `--execute` to commit the
new offsets, refused while the group has live members. Every argument is checked before
anything is touched; every replay, dry or not, is recorded in `replays`.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.adapters.kafka import DLQ_REPLAY_OF
from consumer.adapters.postgres.connections import Connect
from consumer.adapters.postgres.members import alive_members
from consumer.domain.errors import OpsError
from consumer.domain.messages import parse_message
from consumer.domain.models import BookingEvent, LinkState
from consumer.service.answers import DeadLetter, DeadLetterMessage
from consumer.service.context import Services
from consumer.settings import Settings

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_JOIN_TIMEOUT_S = 60.0


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration as kafka-consumer-groups takes it: PnDTnHnMnS."""
    match = _DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration (PnDTnHnMnS, e.g. PT1H30M): {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


@dataclass(frozen=True)
class ResetSpec:
    to_datetime: datetime | None = None
    by_duration: timedelta | None = None
    to_offset: int | None = None
    shift_by: int | None = None
    to_earliest: bool = False

    def describe(self) -> str:
        if self.to_datetime is not None:
            return f"--to-datetime {self.to_datetime.isoformat()}"
        if self.by_duration is not None:
            return f"--by-duration {self.by_duration}"
        if self.to_offset is not None:
            return f"--to-offset {self.to_offset}"
        if self.shift_by is not None:
            return f"--shift-by {self.shift_by}"
        return "--to-earliest"


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    current: int
    new: int
    earliest: int
    latest: int

    @property
    def rereads(self) -> int:
        return max(0, self.current - self.new)


async def kafka_probe(settings: Settings, group: str) -> AIOKafkaConsumer:
    probe = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        await probe.start()
    except KafkaError as exc:
        raise OpsError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    return probe


async def _known_groups(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return {group for group, _ in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def plan_replay(
    settings: Settings, group: str, topic: str, partitions: list[int] | None, spec: ResetSpec
) -> list[PartitionPlan]:
    probe = await kafka_probe(settings, group)
    try:
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
        committed = {tp: await probe.committed(tp) for tp in chosen}
        if group not in await _known_groups(settings) and all(
            c is None for c in committed.values()
        ):
            raise OpsError(
                f"unknown group {group!r}: it has no members and no committed offsets on {topic!r}"
            )
        targets = await _targets(probe, chosen, spec, earliest, latest, committed)
    finally:
        await probe.stop()
    return [
        PartitionPlan(
            tp.partition,
            committed[tp] if committed[tp] is not None else earliest[tp],
            targets[tp],
            earliest[tp],
            latest[tp],
        )
        for tp in chosen
    ]


async def _targets(
    probe: AIOKafkaConsumer,
    chosen: list[TopicPartition],
    spec: ResetSpec,
    earliest: dict[TopicPartition, int],
    latest: dict[TopicPartition, int],
    committed: dict[TopicPartition, int | None],
) -> dict[TopicPartition, int]:
    if spec.to_earliest:
        return dict(earliest)
    if spec.to_offset is not None:
        for tp in chosen:
            if not earliest[tp] <= spec.to_offset <= latest[tp]:
                raise OpsError(
                    f"offset {spec.to_offset} is out of range for partition "
                    f"{tp.partition} ({earliest[tp]}..{latest[tp]})"
                )
        return {tp: spec.to_offset for tp in chosen}
    if spec.shift_by is not None:
        targets = {}
        for tp in chosen:
            start = committed[tp]
            shifted = (start if start is not None else earliest[tp]) + spec.shift_by
            targets[tp] = min(latest[tp], max(earliest[tp], shifted))  # clamped, as Kafka's
        return targets
    when = spec.to_datetime or datetime.now(UTC) - (spec.by_duration or timedelta())
    found = await probe.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in chosen})
    return {tp: found[tp].offset if found.get(tp) is not None else latest[tp] for tp in chosen}


async def refuse_if_active(connect: Connect, group: str) -> None:
    members = await alive_members(connect, group)
    if members:
        names = ", ".join(f"{m.member} (partitions {m.partitions})" for m in members)
        raise OpsError(
            f"group {group!r} has {len(members)} active member(s): {names}; stop "
            "the consumers first (see: calsync status)"
        )


async def execute_replay(
    settings: Settings, group: str, topic: str, plan: list[PartitionPlan]
) -> None:
    """Commit the new offsets as the group's only member (joining waits out members the
    broker still lists but that stopped heartbeating)."""
    member = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
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
                f"could not join group {group!r} within {_JOIN_TIMEOUT_S:.0f}s: nothing was changed"
            ) from None
        wanted = {TopicPartition(topic, p) for p in member.partitions_for_topic(topic) or ()}
        if set(member.assignment()) != wanted:
            raise OpsError(
                f"group {group!r} has other active members at the broker: nothing was changed"
            )
        await member.commit({TopicPartition(topic, p.partition): p.new for p in plan})
    finally:
        await member.stop()


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.event.set()


async def record_replay(
    connect: Connect,
    group: str,
    topic: str,
    spec: ResetSpec,
    plan: list[PartitionPlan],
    executed: bool,
    resync: bool,
    who: str | None,
    resynced: int | None = None,
) -> int:
    who = who or f"{getpass.getuser()}@{socket.gethostname()}"
    async with connect() as conn:
        cur = await conn.execute(
            "INSERT INTO replays (who, group_id, topic, spec, executed, resync, plan, resynced)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                who,
                group,
                topic,
                spec.describe(),
                executed,
                resync,
                json.dumps([{**asdict(p), "rereads": p.rereads} for p in plan]),
                resynced,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def affected_bookings(settings: Settings, topic: str, plan: list[PartitionPlan]) -> set[str]:
    """The bookings whose messages the replay re-reads."""
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    bookings: set[str] = set()
    try:
        todo = {TopicPartition(topic, p.partition): p for p in plan if p.rereads}
        reader.assign(list(todo))
        for tp, p in todo.items():
            reader.seek(tp, p.new)
        while todo:
            batch = await reader.getmany(*todo, timeout_ms=1000)
            if not batch:
                break
            for tp, records in batch.items():
                for record in records:
                    if record.offset < todo[tp].current:
                        parsed = parse_message(record.key, record.value)
                        if isinstance(parsed, BookingEvent):
                            bookings.add(parsed.booking.id)
                if records and records[-1].offset + 1 >= todo[tp].current:
                    del todo[tp]
    finally:
        await reader.stop()
    return bookings


async def resync_bookings(svc: Services, booking_ids: set[str]) -> int:
    """Re-apply the latest recorded state of these bookings to every active link, even where
    versions say nothing changed (Google's side drifted). Returns the operations applied.
    Each goes through the pair's claim, and the state applied is read under it: a consumer
    running meanwhile (or a newer version arriving) can never be rolled back by a resync."""
    applied = 0
    for booking_id in sorted(booking_ids):
        event = await svc.repository.latest_booking(booking_id)
        if event is None:
            continue
        rows = await svc.repository.links_for_activity(event.booking.activity_id)
        # And the links whose calendars still hold it (it moved to another activity).
        holding = (await svc.repository.links_holding({booking_id})).get(booking_id, [])
        rows += [r for r in holding if r.link.id not in {x.link.id for x in rows}]
        for row in rows:
            if row.link.state is LinkState.ACTIVE:
                result = await svc.engine.sync_link(
                    event, row, None, source="resync", force=True, latest=True
                )
                applied += result.outcome.value == "applied"
    return applied


# --- dead letters -----------------------------------------------------------------------------

_DLQ_COLUMNS = (
    "id, recorded_at, topic, kafka_partition, kafka_offset,"
    " CASE WHEN record_timestamp > 0 THEN to_timestamp(record_timestamp / 1000.0) END"
    " AS record_timestamp, error_type, error, published_at, copy_error,"
    " replayed_at, replayed_by, reprocessed_at"
)


async def dead_letters(connect: Connect, include_replayed: bool) -> list[DeadLetter]:
    where = "" if include_replayed else " WHERE replayed_at IS NULL"
    async with connect() as conn:
        rows = await (
            await conn.execute(
                f"SELECT {_DLQ_COLUMNS} FROM dead_letters{where} ORDER BY id".encode()
            )
        ).fetchall()
    return [DeadLetter(**row) for row in rows]


async def dead_letter(connect: Connect, dead_letter_id: int) -> DeadLetterMessage:
    async with connect() as conn:
        row = await (
            await conn.execute(
                f"SELECT {_DLQ_COLUMNS}, message_key, message_value, header_keys, header_values"
                " FROM dead_letters WHERE id = %s".encode(),
                (dead_letter_id,),
            )
        ).fetchone()
    if row is None:
        raise OpsError(f"no dead letter {dead_letter_id} (see: calsync dlq list)")
    # Headers as Kafka carries them: (name, raw value), in their original order.
    headers = [
        (bytes(k).decode("utf-8", "surrogateescape"), bytes(v))
        for k, v in zip(row.pop("header_keys"), row.pop("header_values"), strict=True)
    ]
    return DeadLetterMessage(**row, headers=headers)


async def replay_dead_letters(
    settings: Settings,
    connect: Connect,
    ids: list[int],
    rate: float,
    value: bytes | None,
    who: str | None,
) -> list[int]:
    """Put dead letters back on their topic, each once; returns the ids put back."""
    chosen = (
        [await dead_letter(connect, i) for i in ids]
        if ids
        else [await dead_letter(connect, r.id) for r in await dead_letters(connect, False)]
    )
    done = next((r for r in chosen if r.replayed_at is not None), None)
    if done is not None:
        assert done.replayed_at is not None
        raise OpsError(
            f"dead letter {done.id} was already replayed "
            f"({done.replayed_at.isoformat(timespec='seconds')}, by "
            f"{done.replayed_by}): a message is put back once"
        )
    if value is not None and len(chosen) != 1:
        raise OpsError("--value-file replaces the value of exactly one dead letter")
    who = who or f"{getpass.getuser()}@{socket.gethostname()}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for number, row in enumerate(chosen):
            if number and rate:
                await asyncio.sleep(1.0 / rate)
            headers = [
                (k, v) for k, v in row.headers if not k.startswith("error") and k != DLQ_REPLAY_OF
            ]
            headers.append((DLQ_REPLAY_OF, str(row.id).encode()))
            await producer.send_and_wait(
                row.topic,
                value if value is not None else row.message_value,
                key=row.message_key,
                headers=headers,
            )
            async with connect() as conn:
                await conn.execute(
                    "UPDATE dead_letters SET replayed_at = now(), replayed_by = %s WHERE id = %s",
                    (who, row.id),
                )
    finally:
        await producer.stop()
    return [r.id for r in chosen]
