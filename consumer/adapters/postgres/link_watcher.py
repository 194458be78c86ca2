"""Listens for link changes (PostgreSQL NOTIFY on `calsync_links`, sent by a trigger on
calendar_links) so that a consumer stops a link's in-flight work the moment another process
disconnects it, and drops cached tokens when a link is reconnected."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import psycopg
import structlog

from consumer.domain.models import LinkState

log = structlog.get_logger(__name__)
CHANNEL = "calsync_links"


async def watch_links(
    database_url: str, changed: Callable[[str, LinkState, float], None], retry_s: float = 1.0
) -> None:
    """Run until cancelled; reconnects after a database outage."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                # Notices sent while this process was not listening are lost: the links
                # that are not active now are told once more, so none of their work goes on.
                cur = await conn.execute(
                    "SELECT id, state, extract(epoch FROM state_changed_at)::float8"
                    " FROM calendar_links"
                )
                for link_id, state, changed_at in await cur.fetchall():
                    changed(link_id, LinkState(state), changed_at)
                async for notice in conn.notifies():
                    link_id, _, rest = notice.payload.partition(" ")
                    state, _, when = rest.partition(" ")
                    try:
                        changed(link_id, LinkState(state), float(when) if when else math.inf)
                    except ValueError:
                        log.warning("link_notice_unreadable", payload=notice.payload)
        except psycopg.OperationalError as exc:
            log.info(
                "link_watcher_reconnecting",
                cause=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
            await asyncio.sleep(retry_s)
