"""PostgreSQL for the repair loop: the `repairs` queue (sql/006_repairs.sql,
sql/015_repair_queue.sql) as consumer.service.repairs leases and settles it, and as backfills
and reconciles owe work to it.

A poll is ONE statement (`_LEASE`), whose cost does not grow with the queue: it walks the
accounts that have repairs in turn, `ACCOUNTS_PER_POLL` of them from where the last poll
stopped (a loose scan of the index on (account_email, due_at): one probe per account), keeps
those with a repair due and places left in this process, gives each an equal share of the
poll (at most its places), takes each one's oldest due repairs of active links by the same
index, and leases them with `FOR UPDATE SKIP LOCKED`, re-checking the lease under the row
lock: two processes never lease one row, and neither waits for the other. Walking the
accounts rather than ranking every due row is what keeps one account's thousands of
repairs from taking every place, at the same cost with ten repairs or a million.

Each call takes a connection from the `Connect` it is given (the sync's pool in a consumer,
short connections of their own for on-call commands): no statement is run anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.adapters.postgres.connections import Connect, DictConnection
from consumer.domain.records import Lease, LeasedRepair, LeaseRequest, RepairsDue

ACCOUNTS_PER_POLL = 64  # accounts one poll visits (two index probes each)
DROP_BATCH = 5000  # repairs of links no longer active removed per statement

_DUE_AND_FREE = "r.due_at <= now() AND (r.leased_until IS NULL OR r.leased_until < now())"
_LEASE_THEM = (
    "leased AS ("
    " UPDATE repairs r SET leased_by = %(member)s,"
    "  leased_until = now() + make_interval(secs => %(lease_s)s)"
    " FROM locked l WHERE r.link_id = l.link_id AND r.booking_id = l.booking_id"
    " RETURNING r.link_id, r.booking_id, r.reason, l.account)"
)
# walk: the next ACCOUNTS_PER_POLL accounts with repairs after %(after)s, one index probe
# each; ready: those with a repair due and not leased, and places left here; shares: an
# equal part of the poll each (at most its places); candidates: each one's oldest due
# repairs of active links; locked: those still due and free under their row lock (rows
# another process is leasing are skipped, not waited for). The last row says where the
# walk stopped, leased or not.
_LEASE = (
    "WITH RECURSIVE walk (account, step) AS ("
    " (SELECT r.account_email, 1 FROM repairs r WHERE r.account_email > %(after)s"
    "  ORDER BY r.account_email LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT r.account_email FROM repairs r WHERE r.account_email > w.account"
    "  ORDER BY r.account_email LIMIT 1), w.step + 1"
    " FROM walk w WHERE w.account IS NOT NULL AND w.step < %(window)s"
    "), visited AS (SELECT account FROM walk WHERE account IS NOT NULL"
    "), ready AS ("
    " SELECT v.account, coalesce(p.places, %(per_account)s) AS places FROM visited v"
    " LEFT JOIN unnest(%(accounts)s::text[], %(places)s::integer[]) AS p (account, places)"
    "  ON p.account = v.account"
    " WHERE coalesce(p.places, %(per_account)s) > 0 AND EXISTS ("
    f"  SELECT 1 FROM repairs r WHERE r.account_email = v.account AND {_DUE_AND_FREE})"
    "), shares AS ("
    " SELECT account,"
    "  least(places, ceil(%(limit)s::numeric / count(*) OVER ())::integer) AS share"
    " FROM ready"
    "), candidates AS ("
    " SELECT c.link_id, c.booking_id, c.due_at, s.account FROM shares s CROSS JOIN LATERAL ("
    "  SELECT r.link_id, r.booking_id, r.due_at FROM repairs r"
    "  JOIN calendar_links cl ON cl.id = r.link_id AND cl.state = 'active'"
    f"  WHERE r.account_email = s.account AND {_DUE_AND_FREE}"
    "  ORDER BY r.due_at LIMIT s.share) c"
    " ORDER BY c.due_at LIMIT %(limit)s"
    "), locked AS ("
    " SELECT r.link_id, r.booking_id, c.account FROM repairs r JOIN candidates c"
    "  ON r.link_id = c.link_id AND r.booking_id = c.booking_id"
    f" WHERE {_DUE_AND_FREE} FOR UPDATE OF r SKIP LOCKED"
    f"), {_LEASE_THEM}"
    " SELECT w.last_account, w.visited, l.link_id, l.booking_id, l.reason, l.account"
    " FROM (SELECT coalesce(max(account), '') AS last_account, count(*) AS visited"
    "  FROM visited) w LEFT JOIN leased l ON true"
)
# `calsync repair --link`: that link's due repairs, oldest first (found by the primary key's
# link_id), at most the places its account has here.
_LEASE_OF_LINK = (
    "WITH locked AS ("
    " SELECT r.link_id, r.booking_id, cl.account_email AS account FROM repairs r"
    " JOIN calendar_links cl ON cl.id = r.link_id AND cl.state = 'active'"
    f" WHERE r.link_id = %(link)s AND {_DUE_AND_FREE}"
    " ORDER BY r.due_at LIMIT least(%(limit)s, coalesce(("
    "  SELECT p.places FROM unnest(%(accounts)s::text[], %(places)s::integer[])"
    "  AS p (account, places) JOIN calendar_links l ON l.account_email = p.account"
    "  WHERE l.id = %(link)s), %(per_account)s))"
    " FOR UPDATE OF r SKIP LOCKED"
    f"), {_LEASE_THEM}"
    " SELECT '' AS last_account, 0 AS visited, l.link_id, l.booking_id, l.reason, l.account"
    " FROM leased l"
)
_RELEASE_MINE = "UPDATE repairs SET leased_by = NULL, leased_until = NULL WHERE leased_by = %s"
# In small batches: a link that left `active` with a large backlog never holds a long lock.
_DROP_INACTIVE = (
    "DELETE FROM repairs WHERE ctid = ANY (ARRAY("
    " SELECT r.ctid FROM calendar_links cl JOIN repairs r ON r.link_id = cl.id"
    " WHERE cl.state <> 'active' LIMIT %s))"
)
_SETTLE_GONE = "DELETE FROM repairs WHERE link_id = %s AND booking_id = %s"
_MAKE_DUE = (
    "UPDATE repairs SET due_at = now(), leased_by = NULL, leased_until = NULL"
    " WHERE (%(link)s::text IS NULL OR link_id = %(link)s)"
)
# Work a backfill (or a reconcile) owes a link, written before it starts and leased to the
# process that does it: if that process stops, the group's repair loop finishes the rest
# once the lease ends. A row already there (a failure waiting) is kept and made due now.
# (The account is the link's: filled in by the table's trigger, sql/015_repair_queue.sql.)
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
# The work owed now (issue 22, point 5): repairs of active links due, in all and for the
# accounts with the most. One pass over the due rows (a count: memory by accounts, not rows).
_DUE_BY_ACCOUNT = (
    "SELECT r.account_email AS account, count(*) AS due, sum(count(*)) OVER () AS total"
    " FROM repairs r JOIN calendar_links cl ON cl.id = r.link_id AND cl.state = 'active'"
    " WHERE r.due_at <= now() GROUP BY r.account_email ORDER BY due DESC, account LIMIT %s"
)


@dataclass(frozen=True)
class RepairStoreConfig:
    accounts_per_poll: int = ACCOUNTS_PER_POLL
    drop_batch: int = DROP_BATCH


class RepairStore:
    """The `repairs` queue, over connections from `connect`."""

    def __init__(self, connect: Connect, config: RepairStoreConfig | None = None) -> None:
        self._connect = connect
        self.config = config or RepairStoreConfig()

    @property
    def lease_statement(self) -> str:
        """The one statement of a poll (for its plan: tests and the bench EXPLAIN it)."""
        return _LEASE

    def lease_parameters(self, ask: LeaseRequest) -> dict[str, Any]:
        accounts = [account for account, _ in ask.places]
        return {
            "member": ask.member,
            "lease_s": ask.lease_s,
            "limit": ask.limit,
            "per_account": ask.per_account,
            "accounts": accounts,
            "places": [places for _, places in ask.places],
            "after": ask.after,
            "window": self.config.accounts_per_poll,
            "link": ask.link_id,
        }

    async def lease(self, ask: LeaseRequest) -> Lease:
        """One poll: lease what is due (see the module's docstring)."""
        async with self._connect() as conn:
            return await self.lease_on(conn, ask)

    async def lease_on(self, conn: DictConnection, ask: LeaseRequest) -> Lease:
        """One poll on a connection the caller holds (in autocommit): what `make bench`
        times alone, without a connection's opening in the figure."""
        statement = _LEASE if ask.link_id is None else _LEASE_OF_LINK
        rows = await (await conn.execute(statement, self.lease_parameters(ask))).fetchall()
        leased = tuple(
            LeasedRepair(row["link_id"], row["booking_id"], row["reason"], row["account"])
            for row in rows
            if row["link_id"] is not None
        )
        if ask.link_id is not None:
            return Lease(leased, "", True)
        last = rows[0]["last_account"] if rows else ""
        visited = int(rows[0]["visited"]) if rows else 0
        return Lease(leased, last, visited < self.config.accounts_per_poll)

    async def release(self, member: str) -> None:
        """The leases `member` holds, given back (it stops)."""
        async with self._connect() as conn:
            await conn.execute(_RELEASE_MINE, (member,))

    async def drop_inactive(self) -> int:
        """Repairs of links no longer active removed (reconnecting or re-selecting a
        calendar backfills the link anyway), a batch at a time until none is left."""
        dropped = 0
        while True:
            async with self._connect() as conn:
                cur = await conn.execute(_DROP_INACTIVE, (self.config.drop_batch,))
            dropped += cur.rowcount
            if cur.rowcount < self.config.drop_batch:
                return dropped

    async def settle_gone(self, link_id: str, booking_id: str) -> None:
        """A repair with nothing left to apply (its link or booking gone)."""
        async with self._connect() as conn:
            await conn.execute(_SETTLE_GONE, (link_id, booking_id))

    async def make_due(self, link_id: str | None) -> int:
        """`calsync repair --now`: every repair (of one link) due at once."""
        async with self._connect() as conn:
            cur = await conn.execute(_MAKE_DUE, {"link": link_id})
            return cur.rowcount

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None:
        """Write down what a link is owed (booking, version) before working it: resumable."""
        async with self._connect() as conn:
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

    async def renew(self, member: str, lease_s: float) -> None:
        """The leases `member` holds, extended while it still works them."""
        async with self._connect() as conn:
            await conn.execute(_RENEW, (lease_s, member))

    async def due(self, top: int) -> RepairsDue:
        """Repairs of active links due now: in all, and for the `top` accounts with most."""
        async with self._connect() as conn:
            rows = await (await conn.execute(_DUE_BY_ACCOUNT, (top,))).fetchall()
        total = int(rows[0]["total"]) if rows else 0
        return RepairsDue(total, tuple((row["account"], int(row["due"])) for row in rows))
