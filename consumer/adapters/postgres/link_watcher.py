"""Listens for link changes (PostgreSQL NOTIFY on `calsync_links`, sent by a trigger on
calendar_links) so that a consumer stops a link's in-flight work the moment another process
disconnects it; and for grant changes (`calsync_grants`, a trigger on google_grants) so that
it drops an account's cached access token when its grant is replaced, refused or revoked."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import psycopg
import structlog

from consumer.domain.models import LinkState

log = structlog.get_logger(__name__)
CHANNEL = "calsync_links"
GRANTS_CHANNEL = "calsync_grants"


async def watch_links(
    database_url: str,
    changed: Callable[[str, LinkState, float], None],
    grant_changed: Callable[[str], None] | None = None,
    retry_s: float = 1.0,
) -> None:
    """Run until cancelled; reconnects after a database outage."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if grant_changed is not None:
                    await conn.execute(f"LISTEN {GRANTS_CHANNEL}")
                # Notices sent while this process was not listening are lost: the links
                # that are not active now are told once more, so none of their work goes on.
                cur = await conn.execute(
                    "SELECT id, state, extract(epoch FROM state_changed_at)::float8"
                    " FROM calendar_links"
                )
                for link_id, state, changed_at in await cur.fetchall():
                    changed(link_id, LinkState(state), changed_at)
                if grant_changed is not None:  # and cached access tokens are read again
                    grants = await conn.execute("SELECT account_email FROM google_grants")
                    for (account,) in await grants.fetchall():
                        grant_changed(account)
                async for notice in conn.notifies():
                    if notice.channel == GRANTS_CHANNEL:
                        if grant_changed is not None:
                            grant_changed(notice.payload)
                        continue
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
