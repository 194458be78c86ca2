"""On-call tooling behind `calsync replay`, `calsync dlq` and `calsync status`.

Replay is modelled on `kafka-consumer-groups --reset-offsets`: a plan (current and new
offset, messages to re-read) per partition, a dry run by default, `--execute` to commit the
new offsets, refused while the group has live members. Every argument is checked before
anything is touched; every replay, dry or not, is recorded in `replays`.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from consumer.adapters.kafka.dead_letters import DLQ_REPLAY_OF
from consumer.domain.errors import OpsError
from consumer.domain.messages import parse_message
from consumer.domain.models import BookingEvent, LinkState
from consumer.domain.records import DeadLetterRecord, PartitionOffsets
from consumer.service.answers import DeadLetter, DeadLetterMessage
from consumer.service.context import Services
from consumer.service.ports import GroupAdmin, OpsRecords

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


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


def who_asks(who: str | None) -> str:
    """Who an on-call action is recorded under: as given, or user@host."""
    return who or f"{getpass.getuser()}@{socket.gethostname()}"


async def plan_replay(
    admin: GroupAdmin,
    group: str,
    topic: str,
    partitions: list[int] | None,
    spec: ResetSpec,
) -> list[PartitionPlan]:
    offsets = await admin.offsets(group, topic, partitions)
    if all(p.committed is None for p in offsets) and group not in await admin.known_groups():
        raise OpsError(
            f"unknown group {group!r}: it has no members and no committed offsets on {topic!r}"
        )
    targets = await _targets(admin, topic, offsets, spec)
    return [
        PartitionPlan(
            p.partition,
            p.committed if p.committed is not None else p.earliest,
            targets[p.partition],
            p.earliest,
            p.latest,
        )
        for p in offsets
    ]


async def _targets(
    admin: GroupAdmin, topic: str, offsets: list[PartitionOffsets], spec: ResetSpec
) -> dict[int, int]:
    if spec.to_earliest:
        return {p.partition: p.earliest for p in offsets}
    if spec.to_offset is not None:
        for p in offsets:
            if not p.earliest <= spec.to_offset <= p.latest:
                raise OpsError(
                    f"offset {spec.to_offset} is out of range for partition "
                    f"{p.partition} ({p.earliest}..{p.latest})"
                )
        return {p.partition: spec.to_offset for p in offsets}
    if spec.shift_by is not None:
        targets = {}
        for p in offsets:
            start = p.committed if p.committed is not None else p.earliest
            # clamped, as Kafka's own tool does
            targets[p.partition] = min(p.latest, max(p.earliest, start + spec.shift_by))
        return targets
    when = spec.to_datetime or datetime.now(UTC) - (spec.by_duration or timedelta())
    return await admin.offsets_at(
        topic, [p.partition for p in offsets], int(when.timestamp() * 1000)
    )


async def refuse_if_active(store: OpsRecords, group: str) -> None:
    members = await store.alive_members(group)
    if members:
        names = ", ".join(f"{m.member} (partitions {m.partitions})" for m in members)
        raise OpsError(
            f"group {group!r} has {len(members)} active member(s): {names}; stop "
            "the consumers first (see: calsync status)"
        )


async def execute_replay(
    admin: GroupAdmin, group: str, topic: str, plan: list[PartitionPlan]
) -> None:
    """Commit the new offsets as the group's only member."""
    await admin.commit_as_only_member(group, topic, {p.partition: p.new for p in plan})


async def record_replay(
    store: OpsRecords,
    group: str,
    topic: str,
    spec: ResetSpec,
    plan: list[PartitionPlan],
    executed: bool,
    resync: bool,
    who: str | None,
    resynced: int | None = None,
) -> int:
    return await store.record_replay(
        who_asks(who),
        group,
        topic,
        spec.describe(),
        executed,
        resync,
        [{**asdict(p), "rereads": p.rereads} for p in plan],
        resynced,
    )


async def affected_bookings(admin: GroupAdmin, topic: str, plan: list[PartitionPlan]) -> set[str]:
    """The bookings whose messages the replay re-reads."""
    bookings: set[str] = set()
    ranges = {p.partition: (p.new, p.current) for p in plan if p.rereads}
    async for record in admin.records(topic, ranges):
        parsed = parse_message(record.key, record.value)
        if isinstance(parsed, BookingEvent):
            bookings.add(parsed.booking.id)
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


def _dead_letter(record: DeadLetterRecord) -> DeadLetter:
    return DeadLetter(
        id=record.id,
        recorded_at=record.recorded_at,
        topic=record.topic,
        kafka_partition=record.kafka_partition,
        kafka_offset=record.kafka_offset,
        record_timestamp=record.record_timestamp,
        error_type=record.error_type,
        error=record.error,
        published_at=record.published_at,
        copy_error=record.copy_error,
        replayed_at=record.replayed_at,
        replayed_by=record.replayed_by,
        reprocessed_at=record.reprocessed_at,
    )


async def dead_letters(store: OpsRecords, include_replayed: bool) -> list[DeadLetter]:
    return [_dead_letter(r) for r in await store.dead_letters(include_replayed)]


async def dead_letter(store: OpsRecords, dead_letter_id: int) -> DeadLetterMessage:
    record = await store.dead_letter(dead_letter_id)
    if record is None:
        raise OpsError(f"no dead letter {dead_letter_id} (see: calsync dlq list)")
    return DeadLetterMessage(
        **_dead_letter(record).model_dump(),
        message_key=record.message_key,
        message_value=record.message_value,
        headers=list(record.headers),
    )


async def replay_dead_letters(
    store: OpsRecords,
    admin: GroupAdmin,
    ids: list[int],
    rate: float,
    value: bytes | None,
    who: str | None,
) -> list[int]:
    """Put dead letters back on their topic, each once; returns the ids put back."""
    chosen = [
        await dead_letter(store, i)
        for i in (ids or [r.id for r in await store.dead_letters(False)])
    ]
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
    who = who_asks(who)
    async with admin.publisher() as publisher:
        for number, row in enumerate(chosen):
            if number and rate:
                await asyncio.sleep(1.0 / rate)
            headers = [
                (k, v) for k, v in row.headers if not k.startswith("error") and k != DLQ_REPLAY_OF
            ]
            headers.append((DLQ_REPLAY_OF, str(row.id).encode()))
            await publisher.publish(
                row.topic,
                value if value is not None else row.message_value,
                row.message_key,
                headers,
            )
            await store.mark_dead_letter_replayed(row.id, who)
    return [r.id for r in chosen]
