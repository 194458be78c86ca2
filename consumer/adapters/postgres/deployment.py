"""Which deployment this is: CALSYNC_DEPLOYMENT_ID when set, else the id `calsync migrate`
made for the database (sql/012_deployment.sql) and keeps there. Any process can read it
(the consumer, `calsync serve`, every command)."""

from __future__ import annotations

import psycopg
from psycopg.rows import DictRow

from consumer.domain.errors import StartupError
from consumer.domain.records import Deployment

_STORED = "SELECT id FROM deployment"


async def deployment(conn: psycopg.AsyncConnection[DictRow], configured: str | None) -> Deployment:
    """The deployment this process works for (the setting wins over the database's id)."""
    if configured is not None:
        return Deployment(configured, "setting")
    try:
        row = await (await conn.execute(_STORED)).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None:
        raise StartupError(
            "the database has no deployment id yet (sql/012_deployment.sql not applied): "
            "run `calsync migrate` first, or set CALSYNC_DEPLOYMENT_ID"
        )
    return Deployment(str(row["id"]), "database")
