"""Listens for link changes (PostgreSQL NOTIFY on `calsync_links`, sent by a trigger on
calendar_links) so that a consumer stops a link's in-flight work the moment another process
disconnects it; and for grant changes (`calsync_grants`, a trigger on google_grants) so that
it drops an account's cached access token when its grant is replaced, refused or revoked.

A LISTEN connection only ever reads, so a dead one (the server failed over, a NAT or a
firewall forgot the connection, a peer that froze) looks just like a quiet one: waiting on
it would hear nothing more until TCP gave up, hours later. So the connection is checked
every `check_interval_s` with a `SELECT 1` that must answer within `check_timeout_s`; one
that does not is closed and replaced, and the links' states are read again on the new
connection (what was said meanwhile was lost), so a disconnect is acted upon within about
half a minute at worst. TCP keepalives and a user timeout on the connection let the kernel
find a vanished peer too, within about a minute, where nothing answers at all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from consumer.domain.models import LinkState

log = structlog.get_logger(__name__)
CHANNEL = "calsync_links"
GRANTS_CHANNEL = "calsync_grants"
CHECK_INTERVAL_S = 15.0
CHECK_TIMEOUT_S = 5.0
# Connecting, listening and reading every link's state again: bounded too (a peer that
# accepts and then says nothing must not hold the watcher either).
SETUP_TIMEOUT_S = 30.0
# libpq's parameters for the LISTEN connection: give up connecting after 10 s; probe an idle
# connection after 30 s, then every 10 s, and drop it after 3 unanswered probes; drop it when
# data sent is not acknowledged within 30 s.
CONNECTION_PARAMETERS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


class ConnectionDead(Exception):
    """The LISTEN connection did not answer its liveness check in time."""


async def connect(database_url: str) -> psycopg.AsyncConnection[Any]:
    """The watcher's connection: autocommit, with the keepalive parameters above."""
    return await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, **CONNECTION_PARAMETERS
    )


async def watch_links(
    database_url: str,
    changed: Callable[[str, LinkState, float], None],
    grant_changed: Callable[[str], None] | None = None,
    retry_s: float = 1.0,
    check_interval_s: float = CHECK_INTERVAL_S,
    check_timeout_s: float = CHECK_TIMEOUT_S,
) -> None:
    """Run until cancelled; reconnects after a database outage or a dead connection."""
    while True:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                conn = await connect(database_url)
                await conn.execute(f"LISTEN {CHANNEL}")
                if grant_changed is not None:
                    await conn.execute(f"LISTEN {GRANTS_CHANNEL}")
                # Notices sent while this process was not listening are lost: the links
                # that are not active now are told once more, so none of their work goes on.
                cur = await conn.execute(
                    "SELECT id, state, extract(epoch FROM state_changed_at)::float8"
                    " FROM calendar_links"
                )
                rows = await cur.fetchall()
                accounts: list[str] = []
                if grant_changed is not None:  # and cached access tokens are read again
                    grants = await conn.execute("SELECT account_email FROM google_grants")
                    accounts = [account for (account,) in await grants.fetchall()]
            for link_id, state, changed_at in rows:
                changed(link_id, LinkState(state), changed_at)
            for account in accounts:
                assert grant_changed is not None
                grant_changed(account)
            while True:
                async for notice in conn.notifies(timeout=check_interval_s):
                    if notice.channel == GRANTS_CHANNEL:
                        if grant_changed is not None:
                            grant_changed(notice.payload)
                        continue
                    _tell(changed, notice.payload)
                await _check(conn, check_timeout_s)
        except (psycopg.OperationalError, ConnectionDead, TimeoutError) as exc:
            if isinstance(exc, psycopg.OperationalError):
                text = str(exc).strip()
                cause = text.splitlines()[0] if text else type(exc).__name__
                log.info("link_watcher_reconnecting", cause=cause)
            else:
                log.warning(
                    "link_watcher_reconnecting",
                    cause=str(exc) or "the connection did not answer in time",
                )
            await asyncio.sleep(retry_s)
        finally:
            if conn is not None:
                await conn.close()  # no round trip: safe on a dead connection


def _tell(changed: Callable[[str, LinkState, float], None], payload: str) -> None:
    link_id, _, rest = payload.partition(" ")
    state, _, when = rest.partition(" ")
    try:
        changed(link_id, LinkState(state), float(when) if when else math.inf)
    except ValueError:
        log.warning("link_notice_unreadable", payload=payload)


async def _check(conn: psycopg.AsyncConnection[Any], timeout_s: float) -> None:
    """A round trip, bounded: a connection that does not answer is taken for dead."""
    try:
        async with asyncio.timeout(timeout_s):
            await conn.execute("SELECT 1")
    except TimeoutError:
        raise ConnectionDead(
            f"the LISTEN connection did not answer a liveness check within {timeout_s:g} s"
        ) from None
