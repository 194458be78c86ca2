"""The consumer loop: many bookings in flight, strictly ordered per booking, offsets safe.

- Records are dispatched as soon as they are fetched. Records with the same key (booking id)
  on a partition form a chain: each waits for the one before it. Different bookings run
  concurrently, up to `max_in_flight` per process; beyond that, fetching pauses
  (`pause`/`resume`), while the poll loop keeps turning.
- A partition's committed offset is the oldest record not yet fully recorded in
  PostgreSQL (see PartitionOffsets), committed every `commit_interval_s`.
- On revocation or shutdown, in-flight work gets `shutdown_grace_s` to finish; what
  finished is committed, what did not is cancelled and left for the next owner. Past the
  grace every wait is bounded (consumer/service/shutdown.py): cancelled work that does not
  end soon (a statement waiting on a locked table) is left behind uncommitted, so a
  shutdown ends within the grace + 10 s and a revocation within the rebalance timeout.
- Every message ends, in bounded time, as synced or dead-lettered, exactly once. Bad input
  is dead-lettered at once; an infrastructure fault (consumer.adapters.classify.is_retriable:
  database or broker unreachable, a deadlock, a timeout) is retried with backoff without giving up,
  and the offset waits for it; any other failure repeats for the same input (data that
  PostgreSQL refuses, a bug of ours), so it is retried `poison_attempts` times in all and
  then dead-lettered as `internal_error`: one message lost to a bug, never a partition.
- A dead letter is written once: its row first (raw bytes), then its copy on the dead-letter
  topic, then the row is marked published, so a retry or a redelivery never copies it twice.
  The row is known by the record (position, timestamp, digest of key and value), not by its
  position alone: a topic deleted and created again reuses offsets, and a new bad message
  at an old dead letter's position is another dead letter.
- Calls that can hang (offset commits while the broker is away, the membership report's
  database connection) run off the poll loop with timeouts: heartbeats and /healthz go on.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CorruptRecordException, InvalidMessageError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumer.adapters.classify import KAFKA_AUTHORIZATION, is_retriable
from consumer.adapters.kafka import DLQ_REPLAY_OF, dead_letter_copy
from consumer.adapters.metrics import Metrics, PartitionLag
from consumer.adapters.postgres.connections import DatabaseConfig
from consumer.adapters.postgres.members import HEARTBEAT_S, MemberReport
from consumer.adapters.postgres.repository import Repository
from consumer.domain.errors import describe, printable
from consumer.domain.messages import BadMessage, parse_message
from consumer.domain.models import MessagePosition
from consumer.domain.offsets import PartitionOffsets
from consumer.domain.records import Stall
from consumer.service.shutdown import STEPS_AFTER_GRACE_S, Deadline, within
from consumer.service.sync import SyncEngine
from consumer.settings import Settings

log = structlog.get_logger(__name__)
_Chain = tuple[TopicPartition, bytes | None]
# What the Kafka client raises for a record it cannot read (a header key not UTF-8, a
# corrupt batch): never our input's fault to carry, and never a reason to stop.
_UNREADABLE = (UnicodeDecodeError, CorruptRecordException, InvalidMessageError)
_STALL_CHECK_S = 1.0
# Past the grace, what a drain gives cancelled work to end (most ends at once; one waiting
# on the database ends within CALSYNC_DB_LOCK_TIMEOUT_S), then its last commit; the rest of
# the shutdown's steps take what is left of STEPS_AFTER_GRACE_S.
_CANCELLED_WAIT_S = 5.0
_LAST_COMMIT_S = 1.5


@dataclass
class _InFlight:
    """A message taken and not yet recorded: what lag, stall reports and logs say of it."""

    key: str | None
    timestamp_ms: int  # the record's own timestamp
    taken_at: float  # monotonic
    cause: str = "in progress"  # the last failure, while it is being retried
    stall_logged: bool = False


class ConsumerRunner:
    def __init__(
        self,
        settings: Settings,
        engine: SyncEngine,
        repository: Repository,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics | None = None,
    ) -> None:
        # Bootstrap hands in the process's metrics; a runner built alone keeps its own.
        self.metrics = metrics or Metrics()
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.watch_lag(self.lag)
        self.settings = settings
        self.engine = engine
        self.repository = repository
        self.consumer = consumer
        self.producer = producer
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: defaultdict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        self._tails: dict[_Chain, asyncio.Task[None]] = {}
        self._last_commit = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.processed = 0
        # Health: when the loop last turned, and per partition when it last made progress.
        self.started = False
        self.ops_port: int | None = None  # where /metrics and the health checks listen
        self.member = MemberReport(
            DatabaseConfig(
                settings.database_url, settings.db_lock_timeout_s, settings.db_statement_timeout_s
            ).session_conninfo(),
            settings.group_id,
            settings.topic,
            settings.instance_id,
        )
        self._reported_at = 0.0
        self.loop_turned_at = time.monotonic()
        self._progress_at: dict[TopicPartition, float] = {}
        self._in_flight: dict[TopicPartition, dict[int, _InFlight]] = defaultdict(dict)
        self._stall_checked_at = 0.0
        # Off-loop calls: at most one of each at a time, each bounded by a timeout.
        self._commit_task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        # Set when the loop stops: by when the whole shutdown is to be over (the worker
        # closes what is left within it too).
        self.closing: Deadline | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer.subscribe([self.settings.topic], listener=_Rebalance(self))
        await self.producer.start()
        await self.consumer.start()
        log.info("consumer_started", topic=self.settings.topic, group=self.settings.group_id)
        self.started = True
        try:
            while not stop.is_set():
                self.loop_turned_at = time.monotonic()
                self._apply_backpressure()
                # Never more than max_in_flight: at most the room left is taken; with no
                # room, every partition is paused and the poll still turns (and answers).
                room = self.settings.max_in_flight - self.in_flight
                try:
                    batch = await self.consumer.getmany(timeout_ms=200, max_records=max(1, room))
                except _UNREADABLE as exc:
                    await self._skip_unreadable(exc)
                    continue
                for tp, records in batch.items():
                    for record in records:
                        self._dispatch(tp, record)
                self._commit_in_background()
                self._check_stalls()
                self._report_membership()
        finally:
            grace = Deadline.after(self.settings.shutdown_grace_s)
            closing = self.closing = Deadline(grace.at + STEPS_AFTER_GRACE_S)
            if self._report_task is not None:
                await within(self._report_task, grace.left(), "membership_report")
            await self.drain(list(self._offsets), reason="shutdown", grace=grace)
            await within(self.consumer.stop(), closing.left(2.0), "leave_group")
            await within(self.producer.stop(), closing.left(1.0), "dead_letter_producer")
            try:
                async with asyncio.timeout(closing.left(HEARTBEAT_S)):
                    await self.member.leave()
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("member_not_removed", cause=type(exc).__name__)
            log.info("consumer_stopped", processed=self.processed)

    def _report_membership(self) -> None:
        now = time.monotonic()
        if now - self._reported_at < HEARTBEAT_S or (
            self._report_task is not None and not self._report_task.done()
        ):
            return
        self._reported_at = now
        partitions = [tp.partition for tp in self.consumer.assignment()]
        self._report_task = asyncio.create_task(self._report(partitions, self.stalls()))

    async def _report(self, partitions: list[int], stalls: list[Stall]) -> None:
        try:
            async with asyncio.timeout(HEARTBEAT_S):
                await self.member.report(partitions, stalls)
        except (psycopg.Error, TimeoutError) as exc:  # a database outage is seen elsewhere
            log.debug("member_not_reported", cause=type(exc).__name__)

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        offsets = self._offsets.setdefault(tp, PartitionOffsets())
        if not offsets.add(record.offset):
            log.debug("redelivery_skipped", partition=tp.partition, offset=record.offset)
            return
        chain: _Chain = (tp, record.key)
        self._in_flight[tp][record.offset] = _InFlight(
            printable(record.key.decode("utf-8", "backslashreplace"), 200)
            if record.key is not None
            else None,
            record.timestamp,
            time.monotonic(),
        )
        task = asyncio.create_task(self._process(tp, record, self._tails.get(chain), offsets))
        self._tails[chain] = task
        self._tasks[tp].add(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        task.add_done_callback(lambda t: self._forget(chain, t))

    def _forget(self, chain: _Chain, task: asyncio.Task[None]) -> None:
        self.in_flight -= 1
        tasks = self._tasks.get(chain[0])  # None once a drain has forgotten the partition
        if tasks is not None:
            tasks.discard(task)
        if self._tails.get(chain) is task:
            del self._tails[chain]

    async def _process(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        before: asyncio.Task[None] | None,
        taken_into: PartitionOffsets,
    ) -> None:
        """`taken_into`: the partition's bookkeeping the record was taken into. A drain may
        forget it (and a new assignment start another) while this task is left behind: it
        then finishes nothing of the new one."""
        if before is not None:
            await asyncio.wait([before])  # same booking: strictly after the previous record
        position = MessagePosition(tp.topic, tp.partition, record.offset)
        info = self._in_flight[tp].get(record.offset)
        # Every log line of this message's work says which message it is (a task's own context).
        structlog.contextvars.bind_contextvars(
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            key=info.key if info else None,
        )
        poison: BadMessage | None = None  # set once the message is to be dead-lettered
        failures = retries = 0
        delay = 0.2
        while True:
            try:
                if poison is None:
                    await self._handle(record, position)
                else:
                    await self._dead_letter(record, position, poison)
                break
            except Exception as exc:
                retries += 1
                if info is not None:
                    info.cause = describe(exc, 200)
                if is_retriable(exc) or poison is not None:
                    # Infrastructure: retry without limit, the offset must not move on. One
                    # line per doubling of the attempts, not thousands.
                    if retries & (retries - 1) == 0:
                        log.error(
                            "message_processing_failed",
                            cause=type(exc).__name__,
                            error=describe(exc, 300),
                            attempts=retries,
                            retry_in_s=delay,
                        )
                else:
                    failures += 1
                    if failures >= self.settings.poison_attempts:
                        # The same input fails the same way: ours to fix, not the partition's
                        # to carry. The message is dead-lettered with the exception.
                        poison = BadMessage("internal_error", describe(exc))
                        log.warning(
                            "message_failed_repeatedly",
                            error_class=type(exc).__name__,
                            attempts=failures,
                            sqlstate=getattr(exc, "sqlstate", None),
                        )
                        continue
                    log.warning(
                        "message_failed",
                        error_class=type(exc).__name__,
                        attempts=failures,
                        retry_in_s=delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.infra_retry_max_s)
        offsets = self._offsets.get(tp)
        if offsets is not None and offsets is taken_into:
            offsets.finish(record.offset)
            in_flight = self._in_flight.get(tp)
            if in_flight is not None:
                in_flight.pop(record.offset, None)
        self.processed += 1

    async def _handle(self, record: ConsumerRecord[Any, Any], position: MessagePosition) -> None:
        replay_of = next(
            (int(v) for k, v in record.headers or () if k == DLQ_REPLAY_OF and v.isdigit()), None
        )
        if replay_of is not None and await self.repository.dead_letter_reprocessed(replay_of):
            log.info(
                "dead_letter_replay_skipped", dead_letter_id=replay_of, why="already processed"
            )
            self.metrics.messages.labels("skipped").inc()
            return
        await self._handle_message(record, position)
        if replay_of is not None:
            await self.repository.mark_dead_letter_reprocessed(replay_of)

    async def _handle_message(
        self, record: ConsumerRecord[Any, Any], position: MessagePosition
    ) -> None:
        parsed = parse_message(record.key, record.value)
        if isinstance(parsed, BadMessage):
            await self._dead_letter(record, position, parsed)
            return
        await self.engine.handle(parsed, position)
        self.metrics.messages.labels("synced").inc()

    async def _dead_letter(
        self, record: ConsumerRecord[Any, Any], position: MessagePosition, bad: BadMessage
    ) -> None:
        """The row (raw bytes; idempotent on the record: its position, timestamp, key and
        value), then the copy, once."""
        headers = list(record.headers or ())
        letter_id, published = await self.repository.record_dead_letter(
            position,
            record.timestamp,
            record.key,
            record.value,
            headers,
            bad.error_type,
            bad.error,
        )
        if not published:
            key, value, copy_headers = dead_letter_copy(
                record.key,
                record.value,
                headers,
                bad.error_type,
                bad.error,
                position.topic,
                position.partition,
                position.offset,
            )
            copy_error = await self._send_copy(key, value, copy_headers, bad, position)
            # Sent: from here on only the mark is retried, never the copy.
            delay = 0.2
            while True:
                try:
                    await self.repository.mark_dead_letter_published(letter_id, copy_error)
                    break
                except Exception as exc:
                    log.warning(
                        "dead_letter_mark_failed", cause=type(exc).__name__, retry_in_s=delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.infra_retry_max_s)
            self.metrics.messages.labels("dead_lettered").inc()
            self.metrics.dead_letters.labels(bad.error_type).inc()
            log.error(
                "message_dead_lettered",
                topic=position.topic,
                partition=position.partition,
                offset=position.offset,
                error_type=bad.error_type,
                error=bad.error,
                dead_letter_id=letter_id,
            )

    async def _send_copy(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        bad: BadMessage,
        position: MessagePosition,
    ) -> str | None:
        """The copy on the dead-letter topic. A broker that refuses it for what it is (too
        large for the topic) gets a minimal one (no key, value or original headers); one
        that refuses even that, or refuses this client the topic (an ACL missing), gets
        none, and the row says why (None: sent). Only a fault that passes (the broker away,
        a leader moving) is retried, with the offset waiting."""
        try:
            await self.producer.send_and_wait(
                self.settings.dlq_topic, value=value, key=key, headers=headers
            )
            return None
        except KafkaError as exc:
            if is_retriable(exc):
                raise
            first = exc
        if isinstance(first, KAFKA_AUTHORIZATION):
            # A smaller copy would be refused the same way: the refusal is the topic's.
            return self._no_copy(
                f"no copy: the broker refuses this client the dead-letter topic "
                f"{self.settings.dlq_topic!r} ({describe(first, 200)})",
                first,
                position,
            )
        minimal = [(k, v) for k, v in headers if k.startswith("error")]
        try:
            await self.producer.send_and_wait(
                self.settings.dlq_topic, value=b"", key=None, headers=minimal
            )
            return f"only a minimal copy: {describe(first, 200)}"
        except KafkaError as exc:
            if is_retriable(exc):
                raise
            return self._no_copy(f"no copy: {describe(exc, 200)}", exc, position)

    @staticmethod
    def _no_copy(copy_error: str, exc: KafkaError, position: MessagePosition) -> str:
        log.error(
            "dead_letter_copy_refused",
            topic=position.topic,
            partition=position.partition,
            offset=position.offset,
            cause=type(exc).__name__,
            copy_error=copy_error,
        )
        return copy_error

    async def _skip_unreadable(self, exc: BaseException) -> None:
        """The Kafka client could not read a record (a header key that is not UTF-8, a
        corrupt batch): it says neither which partition nor which offset, and the records
        before it in that fetch were not handed out. Every partition is rewound to where it
        stood (nothing is lost), then read one record at a time until the unreadable one is
        met: it is dead-lettered as `record_unreadable` (its bytes could not be read: the
        row and the copy say where it is) and skipped."""
        log.warning("record_unreadable_seen", cause=type(exc).__name__)
        assigned = list(self.consumer.assignment())
        for tp in assigned:
            self.consumer.seek(tp, await self.consumer.position(tp))
        for tp in assigned:
            while True:
                try:
                    got = await self.consumer.getmany(tp, timeout_ms=100, max_records=1)
                except _UNREADABLE as bad:
                    offset = await self.consumer.position(tp)
                    await self._dead_letter_unreadable(tp, offset, bad)
                    self.consumer.seek(tp, offset + 1)
                    break
                records = got.get(tp, [])
                if not records:
                    break
                for record in records:
                    self._dispatch(tp, record)

    async def _dead_letter_unreadable(
        self, tp: TopicPartition, offset: int, exc: BaseException
    ) -> None:
        offsets = self._offsets.setdefault(tp, PartitionOffsets())
        if not offsets.add(offset):
            return
        record: ConsumerRecord[Any, Any] = ConsumerRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=None,
            value=None,
            checksum=None,
            serialized_key_size=-1,
            serialized_value_size=-1,
            headers=(),
        )
        bad = BadMessage(
            "record_unreadable",
            f"the Kafka client could not read the record (its bytes are not kept): {describe(exc)}",
        )
        delay = 0.2
        while True:
            try:
                await self._dead_letter(
                    record, MessagePosition(tp.topic, tp.partition, offset), bad
                )
                break
            except Exception as failure:  # the database or the broker: until they are back
                log.error(
                    "message_processing_failed",
                    cause=type(failure).__name__,
                    offset=offset,
                    partition=tp.partition,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.infra_retry_max_s)
        offsets.finish(offset)

    # --- flow control and offsets ------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        assigned = self.consumer.assignment()
        if self.in_flight >= self.settings.max_in_flight:
            newly = [tp for tp in assigned if tp not in self.consumer.paused()]
            if newly:
                if len(newly) == len(assigned):
                    self.metrics.fetch_flow.labels("paused").inc()
                self.consumer.pause(*newly)
                log.debug("fetch_paused", in_flight=self.in_flight)
        elif self.consumer.paused() and self.in_flight <= self.settings.max_in_flight // 2:
            self.consumer.resume(*self.consumer.paused())
            self.metrics.fetch_flow.labels("resumed").inc()
            log.debug("fetch_resumed", in_flight=self.in_flight)

    def _commit_in_background(self) -> None:
        if self._commit_task is not None and not self._commit_task.done():
            return  # one commit at a time; a slow broker must not hold the poll loop
        if time.monotonic() - self._last_commit < self.settings.commit_interval_s:
            return
        self._commit_task = asyncio.create_task(self._commit(force=True))

    async def _commit(
        self,
        force: bool,
        partitions: Iterable[TopicPartition] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.commit_interval_s:
            return
        self._last_commit = now
        wanted = {}
        for tp in partitions if partitions is not None else list(self._offsets):
            offsets = self._offsets.get(tp)
            point = offsets.commit_point() if offsets is not None else None
            if point is not None:
                wanted[tp] = point
        if not wanted:
            return
        started = time.perf_counter()
        limit = self.settings.commit_timeout_s
        try:
            async with asyncio.timeout(limit if timeout_s is None else min(limit, timeout_s)):
                await self.consumer.commit(wanted)
        except (KafkaError, TimeoutError) as exc:
            log.warning("offset_commit_failed", cause=repr(exc))
            return
        self.metrics.commits.observe(time.perf_counter() - started)
        for tp, point in wanted.items():
            if tp in self._offsets:
                if self._offsets[tp].committed != point:
                    self._progress_at[tp] = now
                self._offsets[tp].committed = point

    # --- what health checks and metrics read --------------------------------------------------

    def lag(self) -> list[PartitionLag]:
        now_ms = time.time() * 1000
        answer = []
        for tp in sorted(self.consumer.assignment(), key=lambda t: t.partition):
            highwater = self.consumer.highwater(tp)
            offsets = self._offsets.get(tp)
            point = offsets.first_unrecorded() if offsets is not None else None
            records = (
                max(0, highwater - point) if highwater is not None and point is not None else 0
            )
            pending = self._in_flight.get(tp)
            oldest = min(m.timestamp_ms for m in pending.values()) if pending else None
            seconds = max(0.0, (now_ms - oldest) / 1000) if oldest is not None else 0.0
            answer.append(PartitionLag(tp.topic, tp.partition, records, seconds))
        return answer

    def stalled(self, threshold_s: float) -> list[int]:
        """Partitions with lag that have not moved their offset for `threshold_s`."""
        now = time.monotonic()
        stalled = []
        for lag in self.lag():
            tp = TopicPartition(lag.topic, lag.partition)
            if lag.records == 0:
                self._progress_at[tp] = now
            elif now - self._progress_at.get(tp, now) > threshold_s:
                stalled.append(lag.partition)
        return stalled

    def stalls(self, threshold_s: float | None = None) -> list[Stall]:
        """Per partition, its oldest unrecorded message when it has waited past the
        threshold: what `calsync status` and the stall log line name."""
        threshold = self.settings.stall_threshold_s if threshold_s is None else threshold_s
        now = time.monotonic()
        answer = []
        for tp, messages in self._in_flight.items():
            if not messages:
                continue
            offset = min(messages)
            oldest = messages[offset]
            waited = now - oldest.taken_at
            if waited > threshold:
                answer.append(
                    Stall(
                        tp.topic, tp.partition, offset, oldest.key, oldest.cause, round(waited, 1)
                    )
                )
        return answer

    def _check_stalls(self) -> None:
        now = time.monotonic()
        if now - self._stall_checked_at < _STALL_CHECK_S:
            return
        self._stall_checked_at = now
        for stall in self.stalls():
            info = self._in_flight[TopicPartition(stall.topic, stall.partition)][stall.offset]
            if not info.stall_logged:
                info.stall_logged = True
                log.warning(
                    "partition_stalled",
                    topic=stall.topic,
                    partition=stall.partition,
                    offset=stall.offset,
                    key=stall.key,
                    cause=stall.cause,
                    waiting_s=stall.waiting_s,
                )

    async def drain(
        self, partitions: list[TopicPartition], reason: str, grace: Deadline | None = None
    ) -> None:
        """Let in-flight work of these partitions finish within the grace, commit, forget.
        Past the grace every wait is bounded: work cancelled that does not end within
        `_CANCELLED_WAIT_S` (a statement waiting for a lock, a Google call outliving its
        cancellation) is left behind, its offset not committed (it is read again)."""
        grace = grace or Deadline.after(self.settings.shutdown_grace_s)
        if self._commit_task is not None and not self._commit_task.done():
            # One commit at a time: the one out ends (it has its own timeout), or is given
            # up when the grace is over.
            await within(self._commit_task, grace.left(), "offset_commit")
        tasks = set().union(*(self._tasks.get(tp, set()) for tp in partitions))
        cancelled = left_behind = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace.left())
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=_CANCELLED_WAIT_S)
                left_behind = len(stuck)
            cancelled = len(pending)
        await self._commit(force=True, partitions=partitions, timeout_s=_LAST_COMMIT_S)
        for tp in partitions:
            self._offsets.pop(tp, None)
            self._tasks.pop(tp, None)
            self._progress_at.pop(tp, None)
            self._in_flight.pop(tp, None)
        for chain in [c for c in self._tails if c[0] in partitions]:
            del self._tails[chain]
        if partitions:
            log.info(
                "partitions_drained",
                reason=reason,
                partitions=len(partitions),
                finished=len(tasks) - cancelled,
                cancelled=cancelled,
            )
        if left_behind:
            log.warning(
                "drain_left_work_behind",
                reason=reason,
                messages=left_behind,
                waited_s=_CANCELLED_WAIT_S,
                why="cancelled work still waiting (the database or Google) past the grace; "
                "its offsets are not committed: the next owner reads it again",
            )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if revoked:
            self.runner.metrics.rebalances.labels("revoked").inc()
        await self.runner.drain(revoked, reason="revoked")

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.runner.metrics.rebalances.labels("assigned").inc()
        now = time.monotonic()
        for tp in assigned:
            self.runner._progress_at.setdefault(tp, now)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
