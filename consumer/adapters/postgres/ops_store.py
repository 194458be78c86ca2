"""PostgreSQL for on-call work: what `calsync status` and the gauges read, the record of every
replay, and the dead letters as `calsync dlq` shows and replays them.

Each call takes a short connection of its own (`Connect`, see connections.py): on-call
commands ask a few queries and end, and the gauges must not queue behind the sync's pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.adapters.postgres.connections import Connect, DictConnection
from consumer.adapters.postgres.deployment import deployment
from consumer.adapters.postgres.members import ALIVE_WITHIN_S
from consumer.domain.records import (
    Backfill,
    DeadLetterRecord,
    DeadLetterTally,
    Deployment,
    Member,
    ReconcileRunRecord,
    RepairCount,
)

_ALIVE = (
    "SELECT member, host, pid, topic, partitions, stalls, started_at, seen_at"
    " FROM consumer_members"
    " WHERE group_id = %s AND seen_at > now() - make_interval(secs => %s) ORDER BY member"
)
_LINKS_BY_STATE = (
    "SELECT state, count(*) AS links, array_remove(array_agg(DISTINCT state_reason), NULL)"
    " AS reasons FROM calendar_links GROUP BY state ORDER BY state"
)
_LINK_STATE_COUNTS = "SELECT state, count(*) AS n FROM calendar_links GROUP BY state"
_FAILURES_LAST_HOUR = (
    "SELECT reason, outcome, count(*) AS results FROM sync_results WHERE outcome IN"
    " ('failed', 'skipped', 'deferred') AND recorded_at > now() - interval '1 hour'"
    " GROUP BY reason, outcome ORDER BY count(*) DESC"
)
# Backfills under way (or whose process stopped: they show as stalled), with their progress.
_RUNNING_BACKFILLS = (
    "SELECT id, link_id, calendar_id, calendar_name, trigger, total, done, counts,"
    " started_at, updated_at, finished_at, error, now() AS now FROM backfills"
    " WHERE finished_at IS NULL AND started_at > now() - interval '1 day' ORDER BY id"
)
_DEAD_LETTER_TALLY = (
    "SELECT count(*) FILTER (WHERE replayed_at IS NULL) AS waiting, count(*) AS total,"
    " min(recorded_at) FILTER (WHERE replayed_at IS NULL) AS oldest_waiting FROM dead_letters"
)
# Repairs of active links (those of other links are dropped by the repair loop), by reason.
_REPAIR_COUNTS = (
    "SELECT r.reason, count(*) AS waiting, count(*) FILTER (WHERE r.due_at <= now()) AS due,"
    " min(r.first_failed_at) AS oldest, now() AS now"
    " FROM repairs r JOIN calendar_links cl ON cl.id = r.link_id AND cl.state = 'active'"
    " GROUP BY r.reason ORDER BY r.reason"
)
_LATEST_RECONCILE = (
    "SELECT id, trigger, executed, started_at, finished_at, cardinality(links_done) AS links_done,"
    " links_total, events_seen, found, repaired, progress, error"
    " FROM reconcile_runs ORDER BY id DESC LIMIT 1"
)
_RECORD_REPLAY = (
    "INSERT INTO replays (who, group_id, topic, spec, executed, resync, plan, resynced)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_DEAD_LETTER_COLUMNS = (
    "id, recorded_at, topic, kafka_partition, kafka_offset,"
    " CASE WHEN record_timestamp > 0 THEN to_timestamp(record_timestamp / 1000.0) END"
    " AS record_timestamp, error_type, error, published_at, copy_error,"
    " replayed_at, replayed_by, reprocessed_at"
)
_DEAD_LETTERS_WAITING = (
    f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE replayed_at IS NULL ORDER BY id"
)
_DEAD_LETTERS_ALL = f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id"
_DEAD_LETTER = (
    f"SELECT {_DEAD_LETTER_COLUMNS}, message_key, message_value, header_keys, header_values"
    " FROM dead_letters WHERE id = %s"
)
_MARK_REPLAYED = "UPDATE dead_letters SET replayed_at = now(), replayed_by = %s WHERE id = %s"


@dataclass(frozen=True)
class Overview:
    """What the database tells `calsync status`, read on one connection."""

    links: list[dict[str, Any]]  # state, links, reasons
    failures_last_hour: list[dict[str, Any]]  # reason, outcome, results
    repairs: list[RepairCount]
    running_backfills: list[Backfill]
    latest_reconcile: ReconcileRunRecord | None
    dead_letters: DeadLetterTally


class OpsStore:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def ping(self, timeout_s: float) -> None:
        """Whether a new connection opens and answers (readiness)."""
        async with self._connect(timeout_s) as conn:
            await conn.execute("SELECT 1")

    async def deployment(self, configured: str | None) -> Deployment:
        """This deployment: `configured` (CALSYNC_DEPLOYMENT_ID) when set, else the
        database's own id."""
        async with self._connect() as conn:
            return await deployment(conn, configured)

    async def alive_members(self, group_id: str) -> list[Member]:
        """The group's consumer processes that reported themselves lately."""
        async with self._connect() as conn:
            rows = await (await conn.execute(_ALIVE, (group_id, ALIVE_WITHIN_S))).fetchall()
        return [Member(**row) for row in rows]

    async def overview(self) -> Overview:
        async with self._connect() as conn:
            links = await (await conn.execute(_LINKS_BY_STATE)).fetchall()
            failures = await (await conn.execute(_FAILURES_LAST_HOUR)).fetchall()
            repairs = await _repair_counts(conn)
            running = await (await conn.execute(_RUNNING_BACKFILLS)).fetchall()
            latest = await (await conn.execute(_LATEST_RECONCILE)).fetchone()
            tally = await (await conn.execute(_DEAD_LETTER_TALLY)).fetchone()
        assert tally is not None
        return Overview(
            links=list(links),
            failures_last_hour=list(failures),
            repairs=repairs,
            running_backfills=[Backfill(**row) for row in running],
            latest_reconcile=ReconcileRunRecord(**latest) if latest else None,
            dead_letters=DeadLetterTally(**tally),
        )

    async def repair_counts(self) -> list[RepairCount]:
        async with self._connect() as conn:
            return await _repair_counts(conn)

    async def link_state_counts(self) -> dict[str, int]:
        async with self._connect() as conn:
            rows = await (await conn.execute(_LINK_STATE_COUNTS)).fetchall()
        return {row["state"]: int(row["n"]) for row in rows}

    async def record_replay(
        self,
        who: str,
        group: str,
        topic: str,
        spec: str,
        executed: bool,
        resync: bool,
        plan: Sequence[Mapping[str, Any]],
        resynced: int | None,
    ) -> int:
        async with self._connect() as conn:
            cur = await conn.execute(
                _RECORD_REPLAY,
                (who, group, topic, spec, executed, resync, json.dumps(list(plan)), resynced),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["id"])

    async def dead_letters(self, include_replayed: bool) -> list[DeadLetterRecord]:
        query = _DEAD_LETTERS_ALL if include_replayed else _DEAD_LETTERS_WAITING
        async with self._connect() as conn:
            rows = await (await conn.execute(query)).fetchall()
        return [DeadLetterRecord(**row) for row in rows]

    async def dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        """One dead letter with its message: headers as Kafka carried them, in order."""
        async with self._connect() as conn:
            row = await (await conn.execute(_DEAD_LETTER, (dead_letter_id,))).fetchone()
        if row is None:
            return None
        headers = tuple(
            (bytes(k).decode("utf-8", "surrogateescape"), bytes(v))
            for k, v in zip(row.pop("header_keys"), row.pop("header_values"), strict=True)
        )
        return DeadLetterRecord(**row, headers=headers)

    async def mark_dead_letter_replayed(self, dead_letter_id: int, who: str) -> None:
        async with self._connect() as conn:
            await conn.execute(_MARK_REPLAYED, (who, dead_letter_id))


async def _repair_counts(conn: DictConnection) -> list[RepairCount]:
    rows = await (await conn.execute(_REPAIR_COUNTS)).fetchall()
    return [RepairCount(**row) for row in rows]
