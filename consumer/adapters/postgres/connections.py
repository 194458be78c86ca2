"""Short PostgreSQL connections on demand, for the few that must not come from a pool.

`consumer.bootstrap` builds one `Connect` from the settings and hands it to what needs a
connection of its own: on-call commands that ask a few queries and end (`calsync status`,
`calsync dlq`, a replay's check for live members and its record), the scheduled reconcile
(it holds a session-level advisory lock for a whole run: taken from the sync's pool, it would
keep one of its connections that long), and the ops endpoints (readiness must see whether a
*new* connection can be opened, and the gauges must not queue behind the intake). Services
never open one from the settings themselves.

Each connection is in autocommit and answers rows as dicts; it is closed when its `async
with` block ends.

`session_conninfo` is the one place that says how every session of ours is opened: the
database URL with `lock_timeout` and `statement_timeout` (CALSYNC_DB_LOCK_TIMEOUT_S,
CALSYNC_DB_STATEMENT_TIMEOUT_S) sent at connection start-up, so that no statement of ours
waits without end on a table someone else locked (a shutdown would wait with it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

DictConnection = psycopg.AsyncConnection[DictRow]


@dataclass(frozen=True)
class DatabaseConfig:
    """Where PostgreSQL is (CALSYNC_DATABASE_URL) and how every session of ours runs there
    (CALSYNC_DB_LOCK_TIMEOUT_S, CALSYNC_DB_STATEMENT_TIMEOUT_S; 0 leaves PostgreSQL's own)."""

    url: str
    lock_timeout_s: float
    statement_timeout_s: float

    def session_conninfo(self) -> str:
        """The URL with the session settings every connection of ours runs with (lock and
        statement timeouts, in the start-up packet: no round trip, no pool hook). Options the
        URL already has are kept."""
        wanted = [
            f"-c {name}={round(seconds * 1000)}"
            for name, seconds in (
                ("lock_timeout", self.lock_timeout_s),
                ("statement_timeout", self.statement_timeout_s),
            )
            if seconds > 0
        ]
        if not wanted:
            return self.url
        given = conninfo_to_dict(self.url).get("options")
        options = " ".join([*([str(given)] if given else []), *wanted])
        return make_conninfo(self.url, options=options)


class Connect(Protocol):
    """`async with connect() as conn:` one new connection; `timeout_s` bounds opening it."""

    def __call__(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[DictConnection]: ...


def connector(database_url: str) -> Connect:
    @asynccontextmanager
    async def connect(timeout_s: float | None = None) -> AsyncIterator[DictConnection]:
        # libpq takes whole seconds (at least 2 are honoured): the caller's own deadline,
        # if it has one, is the precise bound.
        options: dict[str, Any] = (
            {} if timeout_s is None else {"connect_timeout": max(1, int(timeout_s))}
        )
        conn = await psycopg.AsyncConnection.connect(
            database_url, autocommit=True, row_factory=dict_row, **options
        )
        async with conn:
            yield conn

    return connect
