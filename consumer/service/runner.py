"""The consumer loop: many bookings in flight, strictly ordered per booking, offsets safe.

- Records are dispatched as soon as they are fetched. Records with the same key (booking id)
  on a partition form a chain: each waits for the one before it (consumer.service.intake).
  Different bookings run concurrently, up to `max_in_flight` per process; beyond that,
  fetching pauses (`pause`/`resume`), while the poll loop keeps turning.
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
- A dead letter is written once (consumer.service.dead_letters): its row, then its copy,
  then the row marked published. A record the Kafka client cannot read comes from the
  consumer's adapter at its place and is dead-lettered as `record_unreadable`.
- Calls that can hang (offset commits while the broker is away, the membership report's
  database connection) run off the poll loop with timeouts: heartbeats and /healthz go on.

The runner talks to its ports (consumer.service.ports): the group's consumer (the Kafka
mechanics are the adapter's: the rebalance listener, rewinds past an unreadable record, a
commit bounded by its timeout), the dead letters' rows and copies, the membership report,
and the sync engine. consumer.bootstrap builds them and the runner's config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from consumer.adapters.classify import is_retriable
from consumer.adapters.kafka.dead_letters import DLQ_REPLAY_OF
from consumer.adapters.metrics import Metrics, PartitionLag
from consumer.domain.errors import describe
from consumer.domain.messages import BadMessage, parse_message
from consumer.domain.offsets import PartitionOffsets
from consumer.domain.records import ConsumedRecord, Partition, Stall, UnreadableRecord
from consumer.service.dead_letters import DeadLetters
from consumer.service.intake import InFlight, Intake
from consumer.service.ports import BookingHandler, KafkaConsumerPort, MemberReports
from consumer.service.retrying import first_of_a_doubling, until_done
from consumer.service.shutdown import STEPS_AFTER_GRACE_S, Deadline, within

log = structlog.get_logger(__name__)
_POLL_MS = 200
_RETRY_INITIAL_S = 0.2
_STALL_CHECK_S = 1.0
# Past the grace, what a drain gives cancelled work to end (most ends at once; one waiting
# on the database ends within CALSYNC_DB_LOCK_TIMEOUT_S), then its last commit; the rest of
# the shutdown's steps take what is left of STEPS_AFTER_GRACE_S.
_CANCELLED_WAIT_S = 5.0
_LAST_COMMIT_S = 1.5


@dataclass(frozen=True)
class RunnerConfig:
    """What the runner reads of the settings (consumer.bootstrap slices it from them)."""

    topic: str
    dlq_topic: str
    group_id: str
    max_in_flight: int
    commit_interval_s: float
    commit_timeout_s: float
    shutdown_grace_s: float
    stall_threshold_s: float
    poison_attempts: int
    infra_retry_max_s: float


@dataclass
class _Attempts:
    """One message's failures, as the poison policy counts them (`until_done`'s `failed`)."""

    poison_attempts: int
    in_flight: InFlight | None
    poison: BadMessage | None = None  # set once the message is to be dead-lettered
    failures: int = 0  # failures that are not infrastructure's

    def failed(self, exc: BaseException, attempts: int, retry_in_s: float) -> bool:
        """Note the cause; True when the message is given up on (dead-lettered at once)."""
        if self.in_flight is not None:
            self.in_flight.cause = describe(exc, 200)
        if is_retriable(exc) or self.poison is not None:
            # Infrastructure: retry without limit, the offset must not move on. One line
            # per doubling of the attempts, not thousands.
            if first_of_a_doubling(attempts):
                log.error(
                    "message_processing_failed",
                    cause=type(exc).__name__,
                    error=describe(exc, 300),
                    attempts=attempts,
                    retry_in_s=retry_in_s,
                )
            return False
        self.failures += 1
        if self.failures >= self.poison_attempts:
            # The same input fails the same way: ours to fix, not the partition's to carry.
            # The message is dead-lettered with the exception.
            self.poison = BadMessage("internal_error", describe(exc))
            log.warning(
                "message_failed_repeatedly",
                error_class=type(exc).__name__,
                attempts=self.failures,
                sqlstate=getattr(exc, "sqlstate", None),
            )
            return True
        log.warning(
            "message_failed",
            error_class=type(exc).__name__,
            attempts=self.failures,
            retry_in_s=retry_in_s,
        )
        return False


class ConsumerRunner:
    def __init__(
        self,
        config: RunnerConfig,
        engine: BookingHandler,
        consumer: KafkaConsumerPort,
        dead_letters: DeadLetters,
        member: MemberReports,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.engine = engine
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.member = member
        self.metrics = metrics
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.watch_lag(self.lag)
        self.intake = Intake()
        self._last_commit = 0.0
        # Health: when the loop last turned, and per partition when it last made progress.
        self.started = False
        self.ops_port: int | None = None  # where /metrics and the health checks listen
        self.loop_turned_at = time.monotonic()
        self._progress_at: dict[Partition, float] = {}
        self._reported_at = 0.0
        self._stall_checked_at = 0.0
        # Off-loop calls: at most one of each at a time, each bounded by a timeout.
        self._commit_task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        # Set when the loop stops: by when the whole shutdown is to be over (the worker
        # closes what is left within it too).
        self.closing: Deadline | None = None

    @property
    def in_flight(self) -> int:
        return self.intake.in_flight

    @property
    def peak_in_flight(self) -> int:
        return self.intake.peak_in_flight

    @property
    def processed(self) -> int:
        return self.intake.processed

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer.subscribe(
            self.config.topic, self.partitions_revoked, self.partitions_assigned
        )
        await self.dead_letters.copies.start()
        await self.consumer.start()
        log.info("consumer_started", topic=self.config.topic, group=self.config.group_id)
        self.started = True
        try:
            while not stop.is_set():
                await self._turn()
        finally:
            await self._shut_down()

    async def _turn(self) -> None:
        self.loop_turned_at = time.monotonic()
        self._apply_backpressure()
        # Never more than max_in_flight: at most the room left is taken; with no room,
        # every partition is paused and the poll still turns (and answers).
        room = self.config.max_in_flight - self.in_flight
        for fetched in await self.consumer.getmany(timeout_ms=_POLL_MS, max_records=max(1, room)):
            if isinstance(fetched, UnreadableRecord):
                await self._dead_letter_unreadable(fetched)
            else:
                self._dispatch(fetched)
        self._commit_in_background()
        self._check_stalls()
        self._report_membership()

    async def _shut_down(self) -> None:
        grace = Deadline.after(self.config.shutdown_grace_s)
        closing = self.closing = Deadline(grace.at + STEPS_AFTER_GRACE_S)
        if self._report_task is not None:
            await within(self._report_task, grace.left(), "membership_report")
        await self.drain(list(self.intake.offsets), reason="shutdown", grace=grace)
        await within(self.consumer.stop(), closing.left(2.0), "leave_group")
        await within(self.dead_letters.copies.stop(), closing.left(1.0), "dead_letter_producer")
        try:
            async with asyncio.timeout(closing.left(self.member.heartbeat_s)):
                await self.member.leave()
        except Exception as exc:  # a report: its row ages out when it cannot be removed
            log.warning("member_not_removed", cause=type(exc).__name__)
        log.info("consumer_stopped", processed=self.processed)

    def _report_membership(self) -> None:
        now = time.monotonic()
        if now - self._reported_at < self.member.heartbeat_s or (
            self._report_task is not None and not self._report_task.done()
        ):
            return
        self._reported_at = now
        partitions = [at.partition for at in self.consumer.assignment()]
        self._report_task = asyncio.create_task(self._report(partitions, self.stalls()))

    async def _report(self, partitions: list[int], stalls: list[Stall]) -> None:
        try:
            async with asyncio.timeout(self.member.heartbeat_s):
                await self.member.report(partitions, stalls)
        except Exception as exc:  # a database outage is seen elsewhere
            log.debug("member_not_reported", cause=type(exc).__name__)

    # --- one message ---------------------------------------------------------------------

    def _dispatch(self, record: ConsumedRecord) -> None:
        self.intake.take(record, self._process)

    async def _process(
        self,
        record: ConsumedRecord,
        before: asyncio.Task[None] | None,
        taken_into: PartitionOffsets,
    ) -> None:
        """`before`: the work of the booking's record before this one; `taken_into`: the
        partition's bookkeeping the record was taken into (see Intake.done)."""
        if before is not None:
            await asyncio.wait([before])  # same booking: strictly after the previous record
        in_flight = self.intake.in_flight_of(record)
        # Every log line of this message's work says which message it is (a task's own context).
        structlog.contextvars.bind_contextvars(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=in_flight.key if in_flight else None,
        )
        attempts = _Attempts(self.config.poison_attempts, in_flight)

        async def attempt() -> None:
            if attempts.poison is None:
                await self._handle(record)
            else:
                await self.dead_letters.dead_letter(record, attempts.poison)

        await until_done(
            attempt,
            initial_s=_RETRY_INITIAL_S,
            max_s=self.config.infra_retry_max_s,
            failed=attempts.failed,
        )
        self.intake.done(record, taken_into)

    async def _handle(self, record: ConsumedRecord) -> None:
        replay_of = next(
            (int(v) for k, v in record.headers if k == DLQ_REPLAY_OF and v.isdigit()), None
        )
        rows = self.dead_letters.rows
        if replay_of is not None and await rows.dead_letter_reprocessed(replay_of):
            log.info(
                "dead_letter_replay_skipped", dead_letter_id=replay_of, why="already processed"
            )
            self.metrics.messages.labels("skipped").inc()
            return
        parsed = parse_message(record.key, record.value)
        if isinstance(parsed, BadMessage):
            await self.dead_letters.dead_letter(record, parsed)
        else:
            await self.engine.handle(parsed, record.position)
            self.metrics.messages.labels("synced").inc()
        if replay_of is not None:
            await rows.mark_dead_letter_reprocessed(replay_of)

    async def _dead_letter_unreadable(self, found: UnreadableRecord) -> None:
        """Dead-lettered here, in the poll loop: the records after it in its partition wait
        (they are fetched already, and not yet taken in)."""
        offsets = self.intake.take_unreadable(found.at, found.offset)
        if offsets is None:
            return
        await self.dead_letters.unreadable(found)
        offsets.finish(found.offset)

    # --- flow control and offsets --------------------------------------------------------

    def _apply_backpressure(self) -> None:
        assigned = self.consumer.assignment()
        if self.in_flight >= self.config.max_in_flight:
            newly = [at for at in assigned if at not in self.consumer.paused()]
            if newly:
                if len(newly) == len(assigned):
                    self.metrics.fetch_flow.labels("paused").inc()
                self.consumer.pause(*newly)
                log.debug("fetch_paused", in_flight=self.in_flight)
        elif self.consumer.paused() and self.in_flight <= self.config.max_in_flight // 2:
            self.consumer.resume(*self.consumer.paused())
            self.metrics.fetch_flow.labels("resumed").inc()
            log.debug("fetch_resumed", in_flight=self.in_flight)

    def _commit_in_background(self) -> None:
        if self._commit_task is not None and not self._commit_task.done():
            return  # one commit at a time; a slow broker must not hold the poll loop
        if time.monotonic() - self._last_commit < self.config.commit_interval_s:
            return
        self._commit_task = asyncio.create_task(self._commit(force=True))

    async def _commit(
        self,
        force: bool,
        partitions: Iterable[Partition] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.config.commit_interval_s:
            return
        self._last_commit = now
        wanted = self.intake.commit_points(partitions)
        if not wanted:
            return
        started = time.perf_counter()
        limit = self.config.commit_timeout_s
        if not await self.consumer.commit(
            wanted, limit if timeout_s is None else min(limit, timeout_s)
        ):
            return
        self.metrics.commits.observe(time.perf_counter() - started)
        for at, point in wanted.items():
            offsets = self.intake.offsets.get(at)
            if offsets is not None:
                if offsets.committed != point:
                    self._progress_at[at] = now
                offsets.committed = point

    # --- what health checks and metrics read ---------------------------------------------

    def lag(self) -> list[PartitionLag]:
        now_ms = time.time() * 1000
        answer = []
        for at in sorted(self.consumer.assignment(), key=lambda a: a.partition):
            highwater = self.consumer.highwater(at)
            offsets = self.intake.offsets.get(at)
            point = offsets.first_unrecorded() if offsets is not None else None
            records = (
                max(0, highwater - point) if highwater is not None and point is not None else 0
            )
            pending = self.intake.pending.get(at)
            oldest = min(m.timestamp_ms for m in pending.values()) if pending else None
            seconds = max(0.0, (now_ms - oldest) / 1000) if oldest is not None else 0.0
            answer.append(PartitionLag(at.topic, at.partition, records, seconds))
        return answer

    def stalled(self, threshold_s: float) -> list[int]:
        """Partitions with lag that have not moved their offset for `threshold_s`."""
        now = time.monotonic()
        stalled = []
        for lag in self.lag():
            at = Partition(lag.topic, lag.partition)
            if lag.records == 0:
                self._progress_at[at] = now
            elif now - self._progress_at.get(at, now) > threshold_s:
                stalled.append(lag.partition)
        return stalled

    def stalls(self, threshold_s: float | None = None) -> list[Stall]:
        """Per partition, its oldest unrecorded message when it has waited past the
        threshold: what `calsync status` and the stall log line name."""
        return self.intake.stalls(
            self.config.stall_threshold_s if threshold_s is None else threshold_s
        )

    def _check_stalls(self) -> None:
        now = time.monotonic()
        if now - self._stall_checked_at < _STALL_CHECK_S:
            return
        self._stall_checked_at = now
        for stall in self.stalls():
            info = self.intake.pending[Partition(stall.topic, stall.partition)][stall.offset]
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

    # --- rebalances and drains -----------------------------------------------------------

    async def partitions_revoked(self, partitions: list[Partition]) -> None:
        if partitions:
            self.metrics.rebalances.labels("revoked").inc()
        await self.drain(partitions, reason="revoked")

    async def partitions_assigned(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        now = time.monotonic()
        for at in partitions:
            self._progress_at.setdefault(at, now)
        log.info("partitions_assigned", partitions=sorted(at.partition for at in partitions))

    async def drain(
        self, partitions: list[Partition], reason: str, grace: Deadline | None = None
    ) -> None:
        """Let in-flight work of these partitions finish within the grace, commit, forget.
        Past the grace every wait is bounded: work cancelled that does not end within
        `_CANCELLED_WAIT_S` (a statement waiting for a lock, a Google call outliving its
        cancellation) is left behind, its offset not committed (it is read again)."""
        grace = grace or Deadline.after(self.config.shutdown_grace_s)
        if self._commit_task is not None and not self._commit_task.done():
            # One commit at a time: the one out ends (it has its own timeout), or is given
            # up when the grace is over.
            await within(self._commit_task, grace.left(), "offset_commit")
        tasks = self.intake.tasks_of(partitions)
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
        self.intake.forget(partitions)
        for at in partitions:
            self._progress_at.pop(at, None)
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
