"""The runner's chains and commit points (consumer/service/runner.py, intake.py,
consumer/domain/offsets.py), on fakes: records dispatched as fetched, one chain per
(partition, key), the offset committed only below the oldest unrecorded record, bad input
dead-lettered once, drains that commit what finished, the poison policy, a record the
Kafka client could not read dead-lettered at its place. No broker: the runner's ports (the
group's consumer, the membership report, the dead letters' rows) and the engine are fakes;
the dead-letter copies are the real adapter's over a fake producer.
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from calsync_dev.events import booking_event
from consumer.adapters.kafka import DeadLetterProducer
from consumer.adapters.metrics import Metrics
from consumer.bootstrap import runner_config
from consumer.domain.models import BookingEvent, MessagePosition
from consumer.domain.records import Partition, UnreadableRecord
from consumer.service import retrying
from consumer.service import runner as runner_module
from consumer.service.dead_letters import DeadLetters
from consumer.service.runner import ConsumerRunner
from consumer.settings import Settings
from tests.plugins.environment import wait_until
from tests.unit.fakes import (
    FakeKafkaConsumer,
    FakeMemberReports,
    FakeProducer,
    FakeRepository,
    record,
)

TOPIC = "bookings"
TP = Partition(TOPIC, 0)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GatedEngine:
    """The sync engine's `handle`, held until the test lets each message go (by booking
    id and version): the order of starts and ends is what the chains decide."""

    started: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    gates: dict[tuple[str, int], asyncio.Event] = field(default_factory=dict)
    failures: dict[tuple[str, int], list[BaseException]] = field(default_factory=dict)

    def gate(self, booking_id: str, version: int = 1) -> asyncio.Event:
        return self.gates.setdefault((booking_id, version), asyncio.Event())

    def open(self, booking_id: str, version: int = 1) -> None:
        self.gate(booking_id, version).set()

    async def handle(self, event: BookingEvent, position: MessagePosition | None) -> list[Any]:
        key = (event.booking.id, event.booking.version)
        self.started.append(key)
        await self.gate(*key).wait()
        planned = self.failures.get(key)
        if planned:
            raise planned.pop(0)
        self.finished.append(key)
        return []


@dataclass
class Loop:
    runner: ConsumerRunner
    engine: GatedEngine
    kafka: FakeKafkaConsumer
    producer: FakeProducer
    repository: FakeRepository
    member: FakeMemberReports
    offsets: int = 0

    def take(
        self,
        booking_id: str,
        version: int = 1,
        value: bytes | None = None,
        key: bytes | None = None,
    ) -> int:
        """A record fetched from partition 0 and dispatched, as the poll loop does."""
        offset = self.offsets
        self.offsets += 1
        data = (
            value if value is not None else json.dumps(booking_event(booking_id, version)).encode()
        )
        self.runner._dispatch(record(TOPIC, 0, offset, key or booking_id.encode(), data))
        return offset

    async def settle(self) -> None:
        for _ in range(20):  # let every task that can run, run
            await asyncio.sleep(0)

    async def commit(self) -> int | None:
        await self.runner._commit(force=True)
        return self.kafka.committed_offset(TP)


async def make_loop(
    engine: GatedEngine | None = None, producer: FakeProducer | None = None, **changes: Any
) -> Loop:
    settings = Settings(
        **{
            "topic": TOPIC,
            "dlq_topic": f"{TOPIC}.dlq",
            "commit_interval_s": 0.01,
            "infra_retry_max_s": 0.05,
            **changes,
        }
    )
    engine, repository = engine or GatedEngine(), FakeRepository()
    kafka, producer, member = (
        FakeKafkaConsumer([TP]),
        producer or FakeProducer(),
        FakeMemberReports(),
    )
    metrics = Metrics()
    runner = ConsumerRunner(
        runner_config(settings),
        engine,
        kafka,
        DeadLetters(
            repository,
            DeadLetterProducer(producer, settings.dlq_topic),
            metrics,
            settings.infra_retry_max_s,
        ),
        member,
        metrics,
    )
    return Loop(runner, engine, kafka, producer, repository, member)


@pytest.fixture
async def loop() -> AsyncIterator[Loop]:
    made = await make_loop()
    yield made
    for gate in made.engine.gates.values():
        gate.set()
    await made.runner.drain([TP], reason="test over")


async def test_a_bookings_messages_run_one_after_another_and_others_alongside(loop: Loop) -> None:
    loop.take("bk_a", 1)
    loop.take("bk_b", 1)
    loop.take("bk_a", 2)
    await loop.settle()
    assert loop.engine.started == [("bk_a", 1), ("bk_b", 1)]  # bk_a v2 waits for v1
    loop.engine.open("bk_a", 2)
    await loop.settle()
    assert ("bk_a", 2) not in loop.engine.started  # still: its chain is not done
    loop.engine.open("bk_a", 1)
    await loop.settle()
    assert loop.engine.finished == [("bk_a", 1), ("bk_a", 2)]
    assert loop.runner.in_flight == 1  # bk_b, still held


async def test_the_commit_point_waits_for_the_oldest_unrecorded_message(loop: Loop) -> None:
    for booking in ("bk_0", "bk_1", "bk_2"):
        loop.take(booking)
    loop.engine.open("bk_2")
    await loop.settle()
    assert await loop.commit() is None  # offsets 0 and 1 are still in flight: nothing yet
    loop.engine.open("bk_0")
    await loop.settle()
    assert await loop.commit() == 1  # below the oldest still in flight, never past it
    loop.engine.open("bk_1")
    await loop.settle()
    assert await loop.commit() == 3  # everything taken is recorded: the next to read
    loop.take("bk_3")
    await loop.settle()
    assert await loop.commit() == 3 and len(loop.kafka.commits) == 2  # no move, no commit


async def test_a_redelivered_offset_is_not_handled_twice(loop: Loop) -> None:
    loop.take("bk_1")
    loop.engine.open("bk_1")
    await loop.settle()
    loop.runner._dispatch(record(TOPIC, 0, 0, b"bk_1", json.dumps(booking_event("bk_1")).encode()))
    await loop.settle()
    assert loop.engine.started == [("bk_1", 1)]


async def test_bad_input_is_dead_lettered_once_and_the_offset_moves_on(loop: Loop) -> None:
    bad = loop.take("bk_bad", value=b"{not json")
    loop.take("bk_ok")
    loop.engine.open("bk_ok")
    await loop.settle()
    [letter] = loop.repository.dead_letters.values()
    assert (letter.position.offset, letter.error_type, letter.published) == (bad, "not_json", True)
    [(topic, key, value, headers)] = loop.producer.sent
    assert (topic, key, value) == (f"{TOPIC}.dlq", b"bk_bad", b"{not json")
    assert ("error.type", b"not_json") in headers
    assert await loop.commit() == 2
    assert loop.engine.started == [("bk_ok", 1)]  # the engine never saw it


async def test_a_failure_of_our_own_is_dead_lettered_after_bounded_attempts() -> None:
    loop = await make_loop(poison_attempts=2)
    try:
        loop.engine.failures[("bk_1", 1)] = [ValueError("a bug"), ValueError("a bug")]
        loop.engine.open("bk_1")
        loop.take("bk_1")
        await wait_until(lambda: loop.repository.dead_letters, 5, "the dead letter")
        [letter] = loop.repository.dead_letters.values()
        assert letter.error_type == "internal_error" and "a bug" in letter.error
        assert loop.engine.started == [("bk_1", 1)] * 2 and not loop.engine.finished
        await loop.settle()
        assert await loop.commit() == 1
    finally:
        await loop.runner.drain([TP], reason="test over")


async def test_an_infrastructure_fault_is_retried_without_giving_up(loop: Loop) -> None:
    loop.engine.failures[("bk_1", 1)] = [TimeoutError()] * 4  # more than poison_attempts
    loop.engine.open("bk_1")
    loop.take("bk_1")
    await wait_until(lambda: loop.engine.finished, 5, "the message to finish")
    assert len(loop.engine.started) == 5 and not loop.repository.dead_letters
    assert await loop.commit() == 1


async def test_a_drain_commits_what_finished_and_cancels_the_rest() -> None:
    loop = await make_loop(shutdown_grace_s=0.05)
    for booking in ("bk_0", "bk_1", "bk_2"):
        loop.take(booking)
    loop.engine.open("bk_0")
    loop.engine.open("bk_2")
    await loop.settle()
    await loop.runner.drain([TP], reason="revoked")
    assert loop.kafka.committed_offset(TP) == 1  # bk_1 never finished: the next owner's
    assert loop.engine.finished == [("bk_0", 1), ("bk_2", 1)]
    assert loop.runner.in_flight == 0
    assert await loop.commit() == 1 and len(loop.kafka.commits) == 1  # partition forgotten


@dataclass
class StubbornEngine(GatedEngine):
    """Work that does not end when cancelled (a statement waiting for a locked table, in a
    `finally`): it goes on until its gate opens, then ends as if nothing had happened."""

    async def handle(self, event: BookingEvent, position: MessagePosition | None) -> list[Any]:
        key = (event.booking.id, event.booking.version)
        self.started.append(key)
        try:
            await self.gate(*key).wait()
        except asyncio.CancelledError:
            await self.gate(*key).wait()  # holds on past its cancellation
        self.finished.append(key)
        return []


async def test_a_drain_leaves_behind_work_that_will_not_end_and_commits_below_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module, "_CANCELLED_WAIT_S", 0.1)
    loop = await make_loop(StubbornEngine(), shutdown_grace_s=0.05)
    try:
        for booking in ("bk_0", "bk_1", "bk_2"):
            loop.take(booking)
        loop.engine.open("bk_0")
        loop.engine.open("bk_2")
        await loop.settle()
        # bk_1 does not end: the drain does not wait for it past the grace and the wait after.
        await asyncio.wait_for(loop.runner.drain([TP], reason="revoked"), 5)
        assert loop.kafka.committed_offset(TP) == 1  # never past the message left behind
        # The partition comes back; offset 1 is read again (here another booking's record).
        loop.runner._dispatch(
            record(TOPIC, 0, 1, b"bk_9", json.dumps(booking_event("bk_9")).encode())
        )
        loop.engine.open("bk_1")  # the work left behind ends at last...
        await loop.settle()
        assert ("bk_1", 1) in loop.engine.finished
        assert await loop.commit() == 1  # ...and finishes nothing of the new bookkeeping
        loop.engine.open("bk_9")
        await loop.settle()
        assert await loop.commit() == 2
    finally:  # stubborn work ends only through its gate: none is left waiting
        for gate in loop.engine.gates.values():
            gate.set()
        await loop.runner.drain([TP], reason="test over")


async def test_fetching_pauses_at_max_in_flight_and_resumes_at_half() -> None:
    loop = await make_loop(max_in_flight=4)
    try:
        for n in range(4):
            loop.take(f"bk_{n}")
        await loop.settle()
        loop.runner._apply_backpressure()
        assert loop.kafka.paused() == {TP}
        loop.engine.open("bk_0")
        await loop.settle()
        loop.runner._apply_backpressure()
        assert loop.kafka.paused() == {TP}  # 3 in flight: not yet
        loop.engine.open("bk_1")
        await loop.settle()
        loop.runner._apply_backpressure()
        assert loop.kafka.paused() == set()  # 2: half the window
    finally:
        for gate in loop.engine.gates.values():
            gate.set()
        await loop.runner.drain([TP], reason="test over")


async def test_a_poisoned_message_is_dead_lettered_without_another_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The poison policy drives the one retry helper: a wait (doubling) after each failure
    it retries, none between the last failure and the dead letter."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    # The helper's waits, and only them (the test's own go on).
    monkeypatch.setattr(retrying, "asyncio", SimpleNamespace(sleep=sleep))
    loop = await make_loop(poison_attempts=3, infra_retry_max_s=10.0)
    try:
        loop.engine.failures[("bk_1", 1)] = [TimeoutError()] + [ValueError("a bug")] * 3
        loop.engine.open("bk_1")
        loop.take("bk_1")
        await wait_until(lambda: loop.repository.dead_letters, 5, "the dead letter")
        await loop.settle()
        # An infrastructure fault, then two failures of ours (each waited for, the delay
        # doubling), the third dead-letters at once.
        assert waits == [0.2, 0.4, 0.8]
        assert len(loop.engine.started) == 4
        [letter] = loop.repository.dead_letters.values()
        assert letter.error_type == "internal_error" and letter.published
        assert await loop.commit() == 1
    finally:
        monkeypatch.undo()
        await loop.runner.drain([TP], reason="test over")


def _fetched(offset: int, booking_id: str) -> Any:
    return record(
        TOPIC, 0, offset, booking_id.encode(), json.dumps(booking_event(booking_id)).encode()
    )


async def _running(loop: Loop) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.runner.run(stop))
    await wait_until(lambda: loop.runner.started, 5, "the loop started")
    return stop, task


async def test_a_record_the_client_could_not_read_is_dead_lettered_at_its_place() -> None:
    """The consumer's adapter hands out an unreadable record at its place: the records
    before and after it go, it is dead-lettered (`record_unreadable`, the copy saying where
    it was), and the offset moves past it."""
    loop = await make_loop()
    for booking in ("bk_0", "bk_2"):
        loop.engine.open(booking)
    loop.kafka.fetch(
        _fetched(0, "bk_0"),
        UnreadableRecord(TOPIC, 0, 1, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")),
        _fetched(2, "bk_2"),
    )
    stop, task = await _running(loop)
    try:
        await wait_until(lambda: loop.kafka.committed_offset(TP) == 3, 5, "offsets past it")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert loop.engine.finished == [("bk_0", 1), ("bk_2", 1)]
    [letter] = loop.repository.dead_letters.values()
    assert (letter.position.offset, letter.error_type) == (1, "record_unreadable")
    assert "UnicodeDecodeError" in letter.error and letter.published
    [(topic, key, value, headers)] = loop.producer.sent
    assert (topic, key, value) == (f"{TOPIC}.dlq", None, b"")
    assert ("error.source.offset", b"1") in headers


async def test_the_loop_reports_its_membership_and_closes_what_it_started() -> None:
    loop = await make_loop()
    stop, task = await _running(loop)
    try:
        await wait_until(lambda: loop.member.reports, 5, "the first membership report")
        assert loop.kafka.running and loop.producer.running
        assert loop.member.reports[0] == ([0], [])
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert not loop.kafka.running and not loop.producer.running and loop.member.left


async def test_a_revocation_drains_its_partitions_and_commits_what_finished() -> None:
    """The rebalance listener (the adapter's) calls the runner's hooks."""
    loop = await make_loop(shutdown_grace_s=0.05)
    stop, task = await _running(loop)
    try:
        assert loop.kafka.revoked is not None and loop.kafka.assigned_hook is not None
        await loop.kafka.assigned_hook([TP])
        loop.engine.open("bk_0")
        loop.kafka.fetch(_fetched(0, "bk_0"), _fetched(1, "bk_1"))
        await wait_until(lambda: loop.engine.finished, 5, "bk_0 handled")
        await loop.kafka.revoked([TP])
        assert loop.kafka.committed_offset(TP) == 1  # bk_1 never finished: the next owner's
        assert loop.runner.in_flight == 0 and not loop.runner.intake.offsets
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_commit_the_broker_refuses_is_carried_by_the_next(loop: Loop) -> None:
    loop.take("bk_0")
    loop.engine.open("bk_0")
    await loop.settle()
    loop.kafka.refuse_commits = True
    assert await loop.commit() is None
    assert loop.runner.intake.offsets[TP].committed is None  # not taken as committed
    loop.kafka.refuse_commits = False
    assert await loop.commit() == 1


def test_the_runner_talks_to_its_ports_and_is_cut_by_job() -> None:
    """Issue 21: the runner imports neither the Kafka client nor PostgreSQL's (its ports
    do), no module of it or of the Kafka adapter is over 500 lines, no function over 60."""
    service = [
        ROOT / "consumer" / "service" / n for n in ("runner.py", "intake.py", "dead_letters.py")
    ]
    modules = service + sorted((ROOT / "consumer" / "adapters" / "kafka").glob("*.py"))
    for path in modules:
        text = path.read_text()
        tree = ast.parse(text)
        assert len(text.splitlines()) <= 500, path
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length < 60, f"{path.name}:{node.name} has {length} lines"
        if path in service:
            imported = {
                name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import | ast.ImportFrom)
                for name in (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
            }
            assert not imported & {"aiokafka", "psycopg", "psycopg_pool"}, path
