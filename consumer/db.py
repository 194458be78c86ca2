"""PostgreSQL adapter: migrations, and the repository the sync engine and the CLI use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from consumer.models import BookingEvent, CalendarLink, LinkState, RecordedEvent, SyncResult

Connection = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Connection]

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_LOCK = 7_361_211  # pg_advisory_lock key: one migrator at a time


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the numbered `sql/*.sql` files not applied yet, each in its own transaction."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in sorted(sql_dir.glob("*.sql")):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text().encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                                 (path.name,))
                applied.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def pending_migrations(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Migrations in sql/ that the database has not applied."""
    wanted = [path.name for path in sorted(sql_dir.glob("*.sql"))]
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if not exists or exists[0] is None:
            return wanted
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [name for name in wanted if name not in done]


@dataclass(frozen=True)
class LinkTokens:
    refresh_token: str
    access_token: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class LinkRow:
    link: CalendarLink
    tokens: LinkTokens
    state_reason: str | None
    state_changed_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class MessagePosition:
    topic: str
    partition: int
    offset: int


_LINK_COLUMNS = (
    "id, activity_id, account_email, calendar_id, state, state_reason, state_changed_at, "
    "refresh_token, access_token, token_expires_at, created_at"
)
_LINKS_FOR_ACTIVITY = f"SELECT {_LINK_COLUMNS} FROM calendar_links WHERE activity_id = %s"
_LINK_BY_ID = f"SELECT {_LINK_COLUMNS} FROM calendar_links WHERE id = %s"
_ALL_LINKS = f"SELECT {_LINK_COLUMNS} FROM calendar_links ORDER BY created_at, id"
_LOCK_LINK_TOKENS = (
    "SELECT refresh_token, access_token, token_expires_at FROM calendar_links "
    "WHERE id = %s FOR NO KEY UPDATE"  # no conflict with FK key-share locks
)
_SAVE_TOKENS = (
    "UPDATE calendar_links SET access_token = %s, token_expires_at = %s, refresh_token = %s,"
    " updated_at = now() WHERE id = %s"
)
_INSERT_LINK = (
    "INSERT INTO calendar_links (id, activity_id, account_email, calendar_id, state,"
    " refresh_token, access_token, token_expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_CALENDAR = (
    "UPDATE calendar_links SET calendar_id = %s, state = 'active', state_reason = NULL,"
    " state_changed_at = now(), updated_at = now() WHERE id = %s"
)
_ENSURE_LINK_BOOKING = (
    "INSERT INTO link_bookings (link_id, booking_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
)
_LOCK_LINK_BOOKING = (
    "SELECT applied_version, google_event_id, generation FROM link_bookings"
    " WHERE link_id = %s AND booking_id = %s FOR UPDATE"
)
_SAVE_LINK_BOOKING = (
    "UPDATE link_bookings SET applied_version = %s, google_event_id = %s, generation = %s,"
    " updated_at = now() WHERE link_id = %s AND booking_id = %s"
)
_INSERT_RESULT = (
    "INSERT INTO sync_results (event_id, event_type, topic, kafka_partition, kafka_offset,"
    " booking_id, booking_version, link_id, operation, outcome, reason, google_event_id, error,"
    " attempts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_BOOKING = (
    "INSERT INTO bookings (booking_id, activity_id, version, event_type, event)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (booking_id) DO UPDATE SET activity_id = EXCLUDED.activity_id,"
    " version = EXCLUDED.version, event_type = EXCLUDED.event_type, event = EXCLUDED.event,"
    " updated_at = now() WHERE bookings.version < EXCLUDED.version"
)
_INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_key,"
    " message_value, headers, error_type, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE SET"
    " error_type = EXCLUDED.error_type, error = EXCLUDED.error, recorded_at = now()"
)


def _link_row(row: dict[str, Any]) -> LinkRow:
    return LinkRow(
        link=CalendarLink(
            id=row["id"],
            activity_id=row["activity_id"],
            account_email=row["account_email"],
            calendar_id=row["calendar_id"],
            state=LinkState(row["state"]),
        ),
        tokens=LinkTokens(row["refresh_token"], row["access_token"], row["token_expires_at"]),
        state_reason=row["state_reason"],
        state_changed_at=row["state_changed_at"],
        created_at=row["created_at"],
    )


class Repository:
    """Named queries over one connection pool. Parameters are always bound."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @classmethod
    def pool_for(cls, database_url: str, size: int, name: str) -> Pool:
        return AsyncConnectionPool(
            database_url, min_size=1, max_size=size, open=False, name=name,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"row_factory": dict_row, "autocommit": True},
        )

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    # --- links ----------------------------------------------------------------------------

    async def links_for_activity(self, activity_id: str) -> list[LinkRow]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LINKS_FOR_ACTIVITY, (activity_id,))
            return [_link_row(row) for row in await cur.fetchall()]

    async def link(self, link_id: str) -> LinkRow | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_LINK_BY_ID, (link_id,))).fetchone()
            return _link_row(row) if row else None

    async def all_links(self) -> list[LinkRow]:
        async with self.pool.connection() as conn:
            return [_link_row(row) for row in await (await conn.execute(_ALL_LINKS)).fetchall()]

    async def insert_link(self, link: CalendarLink, tokens: LinkTokens) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_INSERT_LINK, (
                link.id, link.activity_id, link.account_email, link.calendar_id,
                link.state.value, tokens.refresh_token, tokens.access_token, tokens.expires_at,
            ))

    async def select_calendar(self, link_id: str, calendar_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_SELECT_CALENDAR, (calendar_id, link_id))

    async def lock_link_tokens(self, conn: Connection, link_id: str
                               ) -> LinkTokens | None:
        row = await (await conn.execute(_LOCK_LINK_TOKENS, (link_id,))).fetchone()
        if row is None:
            return None
        return LinkTokens(row["refresh_token"], row["access_token"], row["token_expires_at"])

    async def save_tokens(self, conn: Connection, link_id: str,
                          tokens: LinkTokens) -> None:
        await conn.execute(_SAVE_TOKENS, (tokens.access_token, tokens.expires_at,
                                          tokens.refresh_token, link_id))

    # --- what is applied, and the results ------------------------------------------------------

    async def lock_link_booking(
        self, conn: Connection, link_id: str, booking_id: str
    ) -> RecordedEvent | None:
        """Lock the (link, booking) record for the transaction; None when never applied."""
        await conn.execute(_ENSURE_LINK_BOOKING, (link_id, booking_id))
        row = await (await conn.execute(_LOCK_LINK_BOOKING, (link_id, booking_id))).fetchone()
        assert row is not None
        if row["applied_version"] is None and row["generation"] == 0:
            return None
        return RecordedEvent(applied_version=row["applied_version"],
                             google_event_id=row["google_event_id"],
                             generation=row["generation"])

    async def record_result(
        self,
        conn: Connection,
        event: BookingEvent,
        position: MessagePosition | None,
        result: SyncResult,
    ) -> None:
        booking = event.booking
        if result.recorded is not None:
            rec = result.recorded
            await conn.execute(_SAVE_LINK_BOOKING, (rec.applied_version, rec.google_event_id,
                                                    rec.generation, result.link_id, booking.id))
        await conn.execute(_INSERT_RESULT, (
            event.event_id, event.event_type.value,
            position.topic if position else None,
            position.partition if position else None,
            position.offset if position else None,
            booking.id, booking.version, result.link_id, result.operation.value,
            result.outcome.value, result.reason, result.google_event_id, result.error,
            result.attempts,
        ))

    async def upsert_booking(self, event: BookingEvent) -> None:
        booking = event.booking
        async with self.pool.connection() as conn:
            await conn.execute(_UPSERT_BOOKING, (
                booking.id, booking.activity_id, booking.version, event.event_type.value,
                event.model_dump_json(),
            ))

    async def record_dead_letter(
        self,
        position: MessagePosition,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        error_type: str,
        error: str,
    ) -> None:
        header_json = json.dumps([[k, v.decode("utf-8", "replace")] for k, v in headers])
        async with self.pool.connection() as conn:
            await conn.execute(_INSERT_DEAD_LETTER, (
                position.topic, position.partition, position.offset, key, value, header_json,
                error_type, error,
            ))
