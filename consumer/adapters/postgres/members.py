"""Consumer processes report themselves in PostgreSQL (consumer_members), so on-call tooling
knows which members of a group are alive and what they hold, whatever the broker reports
(the on-call side reads them through consumer.adapters.postgres.ops_store)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict

import psycopg
from psycopg.types.json import Jsonb

from consumer.domain.records import Stall

HEARTBEAT_S = 5.0
ALIVE_WITHIN_S = 3 * HEARTBEAT_S
CONNECT_TIMEOUT_S = 3

_REPORT = (
    "INSERT INTO consumer_members (group_id, member, host, pid, topic, partitions, stalls)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (group_id, member) DO UPDATE SET"
    " partitions = EXCLUDED.partitions, stalls = EXCLUDED.stalls, seen_at = now()"
)
_LEAVE = "DELETE FROM consumer_members WHERE group_id = %s AND member = %s"


class MemberReport:
    """This process, as a member of its group (consumer.service.ports.MemberReports), built
    by consumer.bootstrap and reported by the runner every `heartbeat_s`."""

    heartbeat_s = HEARTBEAT_S

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
