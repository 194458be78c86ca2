"""The repair loop: nothing left off a calendar is forgotten.

Every (link, booking) whose latest state is not on the link's calendar (failed after the
retry budget, deferred while a quota is paused or booked up, the token endpoint down) has a
row in `repairs`, written in the same transaction as the result that left it so. Every
consumer process runs this loop: it leases rows that are due (one process per row; a
process that dies loses its lease after `repair_lease_s`), reads the booking's latest state
and the link, and applies it through the sync engine's claimed, versioned path, exactly as
a message would. The result settles the row (applied, or nothing to do) or schedules the
next attempt (exponential backoff up to `repair_max_backoff_s`, never before a pause or a
Retry-After ends). A link that leaves `active` drops its repairs: reconnecting or
re-selecting a calendar backfills it anyway.

Repairs wait for their account's quota like messages do, but outside the message window:
a throttled account's backlog never holds up another account's bookings.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.repository import Repository
from consumer.domain.models import LinkState, Outcome
from consumer.service.sync import SyncEngine
from consumer.settings import Settings

log = structlog.get_logger(__name__)

# Due rows of active links, the oldest first, at most what each Google account has room
# for in this process (its places not taken by repairs already running here), so that one
# account's thousands of repairs never take every place in the loop.
_CANDIDATES = (
    "SELECT link_id, booking_id, account_email FROM ("
    " SELECT r.link_id, r.booking_id, r.due_at, cl.account_email, row_number() OVER"
    "  (PARTITION BY cl.account_email ORDER BY r.due_at) AS n"
    " FROM repairs r JOIN calendar_links cl ON cl.id = r.link_id AND cl.state = 'active'"
    " WHERE r.due_at <= now() AND (r.leased_until IS NULL OR r.leased_until < now())"
    "  AND (%(link)s::text IS NULL OR r.link_id = %(link)s)"
    ") c LEFT JOIN unnest(%(accounts)s::text[], %(room)s::integer[]) AS a(account, room)"
    " ON a.account = c.account_email"
    " WHERE n <= coalesce(a.room, %(per_account)s) ORDER BY due_at LIMIT %(limit)s"
)
# The lease re-checks what it leases: two processes picking the same candidates get each
# row once (the second waits for the first's row lock, then sees the lease).
_LEASE = (
    "UPDATE repairs r SET leased_by = %(member)s,"
    " leased_until = now() + make_interval(secs => %(lease_s)s)"
    " FROM unnest(%(links)s::text[], %(bookings)s::text[]) AS c(link_id, booking_id)"
    " WHERE r.link_id = c.link_id AND r.booking_id = c.booking_id"
    " AND (r.leased_until IS NULL OR r.leased_until < now()) AND r.due_at <= now()"
    " RETURNING r.link_id, r.booking_id, r.reason"
)
_RELEASE_MINE = "UPDATE repairs SET leased_by = NULL, leased_until = NULL WHERE leased_by = %s"
_DROP_INACTIVE = (
    "DELETE FROM repairs r USING calendar_links cl WHERE cl.id = r.link_id AND cl.state <> 'active'"
)
_SETTLE_GONE_BOOKING = "DELETE FROM repairs WHERE link_id = %s AND booking_id = %s"
_MAKE_DUE = (
    "UPDATE repairs SET due_at = now(), leased_by = NULL, leased_until = NULL"
    " WHERE (%(link)s::text IS NULL OR link_id = %(link)s)"
)
_PER_ACCOUNT = 32
# Work a backfill (or a reconcile) owes a link, written before it starts and leased to the
# process that does it: if that process stops, the group's repair loop finishes the rest
# once the lease ends. A row already there (a failure waiting) is kept and made due now.
_OWE = (
    "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at, leased_by,"
    " leased_until) SELECT %(link)s, b, v, %(reason)s, now(), %(member)s,"
    " now() + make_interval(secs => %(lease_s)s)"
    " FROM unnest(%(bookings)s::text[], %(versions)s::bigint[]) AS t(b, v)"
    " ON CONFLICT (link_id, booking_id) DO UPDATE SET"
    " booking_version = greatest(repairs.booking_version, EXCLUDED.booking_version),"
    " due_at = least(repairs.due_at, now()), leased_by = EXCLUDED.leased_by,"
    " leased_until = EXCLUDED.leased_until, updated_at = now()"
)
_RENEW = (
    "UPDATE repairs SET leased_until = now() + make_interval(secs => %s)"
    " WHERE leased_by = %s AND leased_until > now()"
)


@dataclass(frozen=True)
class Leased:
    link_id: str
    booking_id: str
    reason: str
    account: str


class RepairLoop:
    def __init__(
        self,
        settings: Settings,
        engine: SyncEngine,
        repository: Repository,
        metrics: Metrics,
        member: str,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.repository = repository
        self.metrics = metrics
        self.member = member
        self._tasks: set[asyncio.Task[str]] = set()
        self._running: Counter[str] = Counter()  # per account, repairs running here
        self._working: set[tuple[str, str]] = set()  # (link, booking) running here
        # Places per account: about what its quota allows while a message would wait for
        # it (a repair waiting longer is deferred, so it holds no place for nothing).
        per_min = settings.quota_per_account_per_min
        self._per_account = (
            max(2, math.ceil(per_min / 60 * settings.quota_max_wait_s)) if per_min else _PER_ACCOUNT
        )

    async def run(self) -> None:
        """Until cancelled: take due repairs and work them, `repair_concurrency` at a time."""
        try:
            while True:
                try:
                    await self._drop_inactive()
                    taken = await self.take_due(None)
                except psycopg.Error as exc:  # the database: seen and retried elsewhere too
                    log.info("repairs_not_read", cause=type(exc).__name__)
                    taken = 0
                except Exception as exc:  # a bug of ours must not end the loop for good
                    log.error("repair_loop_failed", cause=type(exc).__name__, error=str(exc)[:300])
                    taken = 0
                room_left = self.settings.repair_concurrency - len(self._tasks)
                if taken == 0 or room_left <= 0:
                    await asyncio.sleep(self.settings.repair_poll_s)
                else:
                    await asyncio.sleep(0.05)  # more may be due: look again soon
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                async with self.repository.pool.connection() as conn:
                    await conn.execute(_RELEASE_MINE, (self.member,))
            except psycopg.Error:
                pass  # the leases expire by themselves

    async def take_due(self, link_id: str | None) -> int:
        """Lease what is due (of one link, or of all) and start working it."""
        room = self.settings.repair_concurrency - len(self._tasks)
        if room <= 0:
            return 0
        leased = await self._lease(link_id, room)
        if not leased:
            return 0
        links = await self.repository.links_by_id({r.link_id for r in leased})
        bookings = await self.repository.latest_bookings({r.booking_id for r in leased})
        started = 0
        for repair in leased:
            pair = (repair.link_id, repair.booking_id)
            if pair in self._working:  # leased again while still at work here
                continue
            self._working.add(pair)
            self._running[repair.account] += 1
            task = asyncio.create_task(self._work(repair, links, bookings))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def drain(self, link_id: str | None = None) -> Counter[str]:
        """Work everything due now (of one link, or of all) until nothing due is left: what
        `calsync repair` does. Each repair is tried once (a failure is due again later)."""
        outcomes: Counter[str] = Counter()
        pending: set[asyncio.Task[str]] = set()
        while True:
            before = set(self._tasks)
            await self.take_due(link_id)
            pending |= set(self._tasks) - before
            if not pending:
                return outcomes
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcomes[task.result()] += 1

    async def _lease(self, link_id: str | None, limit: int) -> list[Leased]:
        async with self.repository.pool.connection() as conn:
            busy = [a for a, n in self._running.items() if n > 0]
            candidates = await (
                await conn.execute(
                    _CANDIDATES,
                    {
                        "link": link_id,
                        "per_account": self._per_account,
                        "limit": limit,
                        "accounts": busy,
                        "room": [max(0, self._per_account - self._running[a]) for a in busy],
                    },
                )
            ).fetchall()
            if not candidates:
                return []
            rows = await (
                await conn.execute(
                    _LEASE,
                    {
                        "member": self.member,
                        "lease_s": self.settings.repair_lease_s,
                        "links": [c["link_id"] for c in candidates],
                        "bookings": [c["booking_id"] for c in candidates],
                    },
                )
            ).fetchall()
        accounts = {(c["link_id"], c["booking_id"]): c["account_email"] for c in candidates}
        return [
            Leased(
                r["link_id"],
                r["booking_id"],
                r["reason"],
                accounts[(r["link_id"], r["booking_id"])],
            )
            for r in rows
        ]

    async def _work(self, repair: Leased, links: dict[str, Any], bookings: dict[str, Any]) -> str:
        """One repair; its outcome (`settled` when there was nothing left to apply)."""
        try:
            return await self._apply(repair, links, bookings)
        finally:
            self._working.discard((repair.link_id, repair.booking_id))
            self._running[repair.account] -= 1
            if self._running[repair.account] <= 0:
                del self._running[repair.account]

    async def _apply(self, repair: Leased, links: dict[str, Any], bookings: dict[str, Any]) -> str:
        row = links.get(repair.link_id)
        event = bookings.get(repair.booking_id)
        try:
            if row is None or event is None or row.link.state is not LinkState.ACTIVE:
                async with self.repository.pool.connection() as conn:
                    await conn.execute(_SETTLE_GONE_BOOKING, (repair.link_id, repair.booking_id))
                return "settled"
            # Deferred again (not waited for) when its account is booked up: a repair
            # holds a place here only while it can go.
            result = await self.engine.sync_link(
                event, row, None, source="repair", latest=True, may_defer=True
            )
        except Exception as exc:  # the lease expires and another try comes; the loop goes on
            log.warning(
                "repair_failed",
                link_id=repair.link_id,
                booking_id=repair.booking_id,
                cause=type(exc).__name__,
            )
            self.metrics.repairs.labels("error").inc()
            return "error"
        self.metrics.repairs.labels(result.outcome.value).inc()
        if result.outcome in (Outcome.APPLIED, Outcome.UNCHANGED):
            log.info(
                "repaired",
                link_id=repair.link_id,
                booking_id=repair.booking_id,
                was=repair.reason,
                op=result.operation.value,
                outcome=result.outcome.value,
            )
        return result.outcome.value

    async def _drop_inactive(self) -> None:
        async with self.repository.pool.connection() as conn:
            await conn.execute(_DROP_INACTIVE)


async def owe(
    repository: Repository,
    link_id: str,
    pairs: list[tuple[str, int]],
    reason: str,
    member: str,
    lease_s: float,
) -> None:
    """Write down what a link is owed (booking, version) before working it: resumable."""
    async with repository.pool.connection() as conn:
        await conn.execute(
            _OWE,
            {
                "link": link_id,
                "reason": reason,
                "member": member,
                "lease_s": lease_s,
                "bookings": [b for b, _ in pairs],
                "versions": [v for _, v in pairs],
            },
        )


async def renew(repository: Repository, member: str, lease_s: float) -> None:
    """The leases a process holds, extended while it still works them."""
    async with repository.pool.connection() as conn:
        await conn.execute(_RENEW, (lease_s, member))


async def make_due(repository: Repository, link_id: str | None) -> int:
    """`calsync repair --now`: every repair (of one link) due at once."""
    async with repository.pool.connection() as conn:
        cur = await conn.execute(_MAKE_DUE, {"link": link_id})
        return cur.rowcount
