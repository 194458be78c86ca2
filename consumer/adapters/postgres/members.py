"""Consumer processes report themselves in PostgreSQL (consumer_members), so on-call tooling
knows which members of a group are alive and what they hold, whatever the broker reports."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from consumer.adapters.postgres.connections import Connect

HEARTBEAT_S = 5.0
ALIVE_WITHIN_S = 3 * HEARTBEAT_S
CONNECT_TIMEOUT_S = 3

_REPORT = (
    "INSERT INTO consumer_members (group_id, member, host, pid, topic, partitions, stalls)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (group_id, member) DO UPDATE SET"
    " partitions = EXCLUDED.partitions, stalls = EXCLUDED.stalls, seen_at = now()"
)
_LEAVE = "DELETE FROM consumer_members WHERE group_id = %s AND member = %s"
_ALIVE = (
    "SELECT member, host, pid, topic, partitions, stalls, started_at, seen_at"
    " FROM consumer_members"
    " WHERE group_id = %s AND seen_at > now() - make_interval(secs => %s) ORDER BY member"
)


@dataclass(frozen=True)
class Stall:
    """A partition held back by its oldest unrecorded message (kept in consumer_members)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    cause: str  # the last failure of the message, or "in progress"
    waiting_s: float


@dataclass(frozen=True)
class Member:
    member: str
    host: str
    pid: int
    topic: str
    partitions: list[int]
    stalls: list[dict[str, Any]]
    started_at: datetime
    seen_at: datetime


class MemberReport:
    """This process, as a member of its group."""

    def __init__(
        self, database_url: str, group_id: str, topic: str, instance_id: str | None
    ) -> None:
        self.database_url = database_url
        self.group_id = group_id
        self.topic = topic
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.member = instance_id or f"{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"

    async def report(self, partitions: list[int], stalls: list[Stall] | None = None) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            await conn.execute(
                _REPORT,
                (
                    self.group_id,
                    self.member,
                    self.host,
                    self.pid,
                    self.topic,
                    sorted(partitions),
                    Jsonb([asdict(s) for s in stalls or []]),
                ),
            )

    async def leave(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            await conn.execute(_LEAVE, (self.group_id, self.member))


async def alive_members(connect: Connect, group_id: str) -> list[Member]:
    async with connect() as conn:
        rows = await (await conn.execute(_ALIVE, (group_id, ALIVE_WITHIN_S))).fetchall()
    return [Member(**row) for row in rows]
