"""PostgreSQL for the sync's hot path: claim a (link, booking), record its result, release it.

No connection is held while Google is called. Mutual exclusion across the consumer group
comes from session advisory locks on one connection of this process: a claim takes the
(link, booking) lock exclusively and the link's lock shared; a disconnect takes the link's
lock exclusively to wait for work in flight (link_store.wait_for_in_flight). A process that
dies loses its session, and with it its locks, at once.

Everything is batched (consumer.adapters.batching): one flush sends the results recorded since the
last one (one transaction, executemany), then the releases, then the new claims with the
recorded state they read, in one pipeline. If the connection breaks, the locks are gone:
results of claims made on it are refused (ClaimLost), and the work is redone from a claim.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import structlog
from psycopg.rows import DictRow, dict_row

from consumer.adapters.batching import Batcher
from consumer.adapters.classify import is_retriable
from consumer.adapters.postgres.locks import link_lock_key, pair_lock_key
from consumer.domain.errors import ClaimLost, printable
from consumer.domain.models import (
    BookingEvent,
    LinkState,
    MessagePosition,
    Outcome,
    RecordedEvent,
    SyncResult,
)
from consumer.domain.records import Claim

log = structlog.get_logger(__name__)

_TRY_LOCKS = (
    "SELECT pg_try_advisory_lock_shared(l) AS link_ok, pg_try_advisory_lock(p) AS pair_ok"
    " FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS t(l, p, i) ORDER BY i"
)
_UNLOCK = (
    "SELECT bool_and(CASE WHEN t.l THEN pg_advisory_unlock_shared(t.lk) ELSE true END AND"
    " CASE WHEN t.p THEN pg_advisory_unlock(t.pk) ELSE true END) AS released"
    " FROM unnest(%s::bigint[], %s::boolean[], %s::bigint[], %s::boolean[])"
    " AS t(lk, l, pk, p)"
)
_READ_CLAIMED = (
    "SELECT t.i, cl.state, cl.calendar_id AS link_calendar_id,"
    " extract(epoch FROM cl.state_changed_at)::float8 AS state_changed_at, lb.applied_version,"
    " lb.google_event_id, lb.generation, lb.calendar_id,"
    " coalesce(r.attempts, 0) AS repair_attempts, b.version AS latest_version,"
    " (SELECT s.google_event_id FROM stranded_events s WHERE s.link_id = t.link_id"
    "  AND s.booking_id = t.booking_id AND s.calendar_id = cl.calendar_id LIMIT 1)"
    "  AS stranded_event_id"
    " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(link_id, booking_id, i)"
    " LEFT JOIN calendar_links cl ON cl.id = t.link_id"
    " LEFT JOIN link_bookings lb ON lb.link_id = t.link_id AND lb.booking_id = t.booking_id"
    " LEFT JOIN repairs r ON r.link_id = t.link_id AND r.booking_id = t.booking_id"
    " LEFT JOIN bookings b ON b.booking_id = t.booking_id"
    " ORDER BY t.i"
)
# A (link, booking) left off its calendar: kept until a later result applies its version.
_SAVE_REPAIR = (
    "INSERT INTO repairs (link_id, booking_id, booking_version, reason, attempts, due_at,"
    " last_error) VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s)"
    " ON CONFLICT (link_id, booking_id) DO UPDATE SET"
    " booking_version = greatest(repairs.booking_version, EXCLUDED.booking_version),"
    " reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, due_at = EXCLUDED.due_at,"
    " last_error = EXCLUDED.last_error, leased_by = NULL, leased_until = NULL,"
    " updated_at = now()"
)
_SETTLE_REPAIR = (
    "DELETE FROM repairs WHERE link_id = %s AND booking_id = %s AND booking_version <= %s"
)
_SAVE_LINK_BOOKING = (
    "INSERT INTO link_bookings (link_id, booking_id, applied_version, google_event_id,"
    " generation, calendar_id) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (link_id, booking_id) DO UPDATE SET"
    " applied_version = EXCLUDED.applied_version, google_event_id = EXCLUDED.google_event_id,"
    " generation = EXCLUDED.generation, calendar_id = EXCLUDED.calendar_id, updated_at = now()"
)
# An event of ours left on a calendar that could not be reached when its link moved away.
_UNSTRAND = "DELETE FROM stranded_events WHERE calendar_id = %s AND google_event_id = %s"
_SAVE_STRANDED = (
    "INSERT INTO stranded_events (link_id, booking_id, calendar_id, google_event_id, reason)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (calendar_id, google_event_id) DO NOTHING"
)
_INSERT_RESULT = (
    "INSERT INTO sync_results (event_id, event_type, topic, kafka_partition, kafka_offset,"
    " booking_id, booking_version, link_id, operation, outcome, reason, google_event_id, error,"
    " attempts, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass(frozen=True)
class _Record:
    claim: Claim
    event: BookingEvent
    position: MessagePosition | None
    result: SyncResult
    source: str


_Op = (
    tuple[Literal["claim"], tuple[str, str]]
    | tuple[Literal["record"], _Record]
    | tuple[Literal["release"], Claim]
)


class SyncStore:
    def __init__(self, database_url: str, retry_s: float = 0.01) -> None:
        self._database_url = database_url
        self._conn: psycopg.AsyncConnection[DictRow] | None = None
        self._epoch = 0
        self._retry_s = retry_s
        self._batcher: Batcher[_Op, Any] = Batcher(
            self._flush,
            max_size=1000,
            undelivered=self._undelivered,
            split_on=lambda exc: not is_retriable(exc),
        )
        self._local: dict[tuple[str, str], asyncio.Lock] = {}
        self.flushes = 0

    async def close(self) -> None:
        await self._batcher.close()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # --- what the engine calls -----------------------------------------------------------

    async def claim(self, link_id: str, booking_id: str) -> Claim:
        """Wait until this process alone works on (link, booking), group-wide."""
        lock = self._local.setdefault((link_id, booking_id), asyncio.Lock())
        await lock.acquire()
        try:
            delay = self._retry_s
            while True:
                claim: Claim | None = await self._batcher.submit(("claim", (link_id, booking_id)))
                if claim is not None:
                    return claim
                await asyncio.sleep(delay)  # another process holds it (a rebalance overlap)
                delay = min(delay * 2, 0.5)
        except BaseException:
            self._unlock_local(link_id, booking_id)
            raise

    async def record(
        self,
        claim: Claim,
        event: BookingEvent,
        position: MessagePosition | None,
        result: SyncResult,
        source: str,
    ) -> None:
        """Record the result durably (its batch's transaction has committed on return)."""
        await self._batcher.submit(("record", _Record(claim, event, position, result, source)))

    async def release(self, claim: Claim) -> None:
        try:
            await self._batcher.submit(("release", claim))
        finally:
            self._unlock_local(claim.link_id, claim.booking_id)

    def _unlock_local(self, link_id: str, booking_id: str) -> None:
        lock = self._local.get((link_id, booking_id))
        if lock is None:
            return
        lock.release()
        if not lock.locked() and not getattr(lock, "_waiters", None):
            del self._local[(link_id, booking_id)]

    def _undelivered(self, op: _Op, answer: Any) -> None:
        # A claim whose caller was cancelled while its flush was out: give the locks back.
        if op[0] == "claim" and isinstance(answer, Claim):
            asyncio.get_running_loop().create_task(self._batcher.submit(("release", answer)))

    # --- one flush: records, then releases, then claims ----------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[DictRow]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True, row_factory=dict_row
            )
            self._epoch += 1
        return self._conn

    async def _flush(self, ops: list[_Op]) -> list[Any]:
        self.flushes += 1
        try:
            return await self._flush_on(await self._connection(), ops)
        except psycopg.Error as exc:
            # A fault of the connection: the session (and every lock it held) is gone. A
            # refusal of one item's data leaves the session and its locks as they were
            # (the batch is split and flushed again, see Batcher).
            if self._conn is not None and (is_retriable(exc) or self._conn.broken):
                await self._conn.close()
                self._conn = None
            raise

    async def _flush_on(self, conn: psycopg.AsyncConnection[DictRow], ops: list[_Op]) -> list[Any]:
        answers: list[Any] = [None] * len(ops)
        records = [(i, op[1]) for i, op in enumerate(ops) if op[0] == "record"]
        releases = [(i, op[1]) for i, op in enumerate(ops) if op[0] == "release"]
        claims = [(i, op[1]) for i, op in enumerate(ops) if op[0] == "claim"]
        lost = [(i, r) for i, r in records if r.claim.epoch != self._epoch]
        for i, _ in lost:
            answers[i] = ClaimLost()
        kept = [r for _, r in records if r.claim.epoch == self._epoch]
        stale = {i for i, c in releases if c.epoch != self._epoch}  # their locks died
        releases = [(i, c) for i, c in releases if i not in stale]
        async with conn.pipeline():
            if kept:
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        saves = [_save_row(r) for r in kept if r.result.recorded is not None]
                        if saves:
                            await cur.executemany(_SAVE_LINK_BOOKING, saves)
                        await cur.executemany(_INSERT_RESULT, [_result_row(r) for r in kept])
                        repairs = [_repair_row(r) for r in kept if r.result.repair is not None]
                        if repairs:
                            await cur.executemany(_SAVE_REPAIR, repairs)
                        settled = [
                            (r.result.link_id, r.event.booking.id, r.event.booking.version)
                            for r in kept
                            if r.result.outcome in _SETTLES
                        ]
                        if settled:
                            await cur.executemany(_SETTLE_REPAIR, settled)
                        stranded = [
                            (r.result.link_id, r.event.booking.id, *s)
                            for r in kept
                            for s in r.result.stranded
                        ]
                        if stranded:
                            await cur.executemany(_SAVE_STRANDED, stranded)
                        taken_back = [u for r in kept for u in r.result.unstranded]
                        if taken_back:
                            await cur.executemany(_UNSTRAND, taken_back)
            if releases:
                keys = [
                    (link_lock_key(c.link_id), pair_lock_key(c.link_id, c.booking_id))
                    for _, c in releases
                ]
                await conn.execute(
                    _UNLOCK,
                    (
                        [k[0] for k in keys],
                        [True] * len(keys),
                        [k[1] for k in keys],
                        [True] * len(keys),
                    ),
                )
            if claims:
                wanted = [pair for _, pair in claims]
                locks_cur = await conn.execute(
                    _TRY_LOCKS,
                    (
                        [link_lock_key(link) for link, _ in wanted],
                        [pair_lock_key(link, booking) for link, booking in wanted],
                    ),
                )
                read_cur = await conn.execute(
                    _READ_CLAIMED, ([link for link, _ in wanted], [b for _, b in wanted])
                )
        if claims:
            locks = await locks_cur.fetchall()
            reads = await read_cur.fetchall()
            await self._answer_claims(conn, claims, locks, reads, answers)
        for i, op in enumerate(ops):
            if op[0] == "record" and answers[i] is None:
                answers[i] = True
        return answers

    async def _answer_claims(
        self,
        conn: psycopg.AsyncConnection[DictRow],
        claims: list[tuple[int, tuple[str, str]]],
        locks: list[DictRow],
        reads: list[DictRow],
        answers: list[Any],
    ) -> None:
        partial: list[tuple[str, str, bool, bool]] = []
        for (i, (link_id, booking_id)), lock, read in zip(claims, locks, reads, strict=True):
            if not (lock["link_ok"] and lock["pair_ok"]):
                if lock["link_ok"] or lock["pair_ok"]:
                    partial.append((link_id, booking_id, lock["link_ok"], lock["pair_ok"]))
                answers[i] = None  # not now: the caller waits and asks again
                continue
            recorded = None
            if read["applied_version"] is not None or (read["generation"] or 0) > 0:
                recorded = RecordedEvent(
                    applied_version=read["applied_version"],
                    google_event_id=read["google_event_id"],
                    generation=read["generation"],
                    calendar_id=read["calendar_id"],
                )
            state = LinkState(read["state"]) if read["state"] else LinkState.DISCONNECTED
            answers[i] = Claim(
                link_id,
                booking_id,
                recorded,
                state,
                self._epoch,
                read["repair_attempts"],
                read["link_calendar_id"],
                read["state_changed_at"] or 0.0,
                read["latest_version"],
                read["stranded_event_id"],
            )
        if partial:
            await conn.execute(
                _UNLOCK,
                (
                    [link_lock_key(p[0]) for p in partial],
                    [p[2] for p in partial],
                    [pair_lock_key(p[0], p[1]) for p in partial],
                    [p[3] for p in partial],
                ),
            )


# Results that put the booking's version (or a later one) on the calendar, or found nothing
# to do for it: a repair of that version or an older one is settled.
_SETTLES = frozenset({Outcome.APPLIED, Outcome.UNCHANGED})


def _repair_row(r: _Record) -> tuple[Any, ...]:
    plan = r.result.repair
    assert plan is not None
    error = printable(r.result.error, 2000) if r.result.error is not None else None
    return (
        r.result.link_id,
        r.event.booking.id,
        r.event.booking.version,
        printable(plan.reason, 100),
        plan.attempts,
        plan.due_in_s,
        error,
    )


def _save_row(r: _Record) -> tuple[Any, ...]:
    rec = r.result.recorded
    assert rec is not None
    return (
        r.result.link_id,
        r.event.booking.id,
        rec.applied_version,
        rec.google_event_id,
        rec.generation,
        rec.calendar_id if rec.google_event_id is not None else None,
    )


def _result_row(r: _Record) -> tuple[Any, ...]:
    event, position, result = r.event, r.position, r.result
    return (
        event.event_id,
        event.event_type.value,
        position.topic if position else None,
        position.partition if position else None,
        position.offset if position else None,
        event.booking.id,
        event.booking.version,
        result.link_id,
        result.operation.value,
        result.outcome.value,
        printable(result.reason, 200),
        result.google_event_id,
        printable(result.error, 2000) if result.error is not None else None,
        result.attempts,
        r.source,
    )
