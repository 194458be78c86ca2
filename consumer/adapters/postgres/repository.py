"""PostgreSQL adapter: the repository the sync engine, the link service and the CLI use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from consumer.adapters.crypto import TokenCipher
from consumer.domain.errors import printable
from consumer.domain.models import (
    BookingEvent,
    CalendarLink,
    LinkRow,
    LinkState,
    LinkTokens,
    MessagePosition,
    RecordedEvent,
    StoredGrant,
)

log = structlog.get_logger(__name__)
Connection = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Connection]

# A link's tokens are its account's grant's (one per Google account, shared by all its
# links), until the link's disconnect has finished.
_LINK_WITH_GRANT = (
    "SELECT l.id, l.activity_id, l.account_email, l.calendar_id, l.state, l.state_reason,"
    " l.state_changed_at, l.created_at, l.backfilled_at, l.disconnect_finished_at,"
    " g.refresh_token_enc, g.access_token_enc, g.token_expires_at"
    " FROM calendar_links l LEFT JOIN google_grants g ON g.account_email = l.account_email"
    " AND g.state <> 'revoked'"
    " AND (l.state <> 'disconnected' OR l.disconnect_finished_at IS NULL)"
)
_LINKS_FOR_ACTIVITY = f"{_LINK_WITH_GRANT} WHERE l.activity_id = %s"
# The hot path reads links without their tokens: the token provider caches those per link.
_LINKS_OF_ACTIVITIES = (
    "SELECT id, activity_id, account_email, calendar_id, state, state_reason,"
    " state_changed_at, NULL AS refresh_token_enc, NULL AS access_token_enc,"
    " NULL AS token_expires_at, created_at, backfilled_at"
    " FROM calendar_links WHERE activity_id = ANY(%s)"
)
_LINK_BY_ID = f"{_LINK_WITH_GRANT} WHERE l.id = %s"
_LINKS_BY_IDS = (
    "SELECT id, activity_id, account_email, calendar_id, state, state_reason,"
    " state_changed_at, NULL AS refresh_token_enc, NULL AS access_token_enc,"
    " NULL AS token_expires_at, created_at, backfilled_at"
    " FROM calendar_links WHERE id = ANY(%s)"
)
_LATEST_BOOKINGS = "SELECT booking_id, event FROM bookings WHERE booking_id = ANY(%s)"
# The links whose calendars hold an event of these bookings (wherever the booking is now).
_LINKS_HOLDING = (
    "SELECT lb.booking_id, cl.id, cl.activity_id, cl.account_email, cl.calendar_id, cl.state,"
    " cl.state_reason, cl.state_changed_at, NULL AS refresh_token_enc,"
    " NULL AS access_token_enc, NULL AS token_expires_at, cl.created_at, cl.backfilled_at"
    " FROM link_bookings lb JOIN calendar_links cl ON cl.id = lb.link_id"
    " WHERE lb.booking_id = ANY(%s) AND lb.google_event_id IS NOT NULL"
)
_ALL_LINKS = f"{_LINK_WITH_GRANT} ORDER BY l.created_at, l.id"
# --- grants: one per Google account ---------------------------------------------------------
_LOCK_GRANT = (
    "SELECT refresh_token_enc, access_token_enc, token_expires_at, state, state_reason"
    " FROM google_grants WHERE account_email = %s FOR NO KEY UPDATE"
)
_SAVE_ACCESS_TOKEN = (
    "UPDATE google_grants SET access_token_enc = %s, token_expires_at = %s, updated_at = now()"
    " WHERE account_email = %s"
)
_SAVE_ALL_TOKENS = (
    "UPDATE google_grants SET access_token_enc = %s, token_expires_at = %s,"
    " refresh_token_enc = %s, updated_at = now() WHERE account_email = %s"
)
# Google refused the refresh token: the access tokens it gave are void too.
_REFUSE_GRANT = (
    "UPDATE google_grants SET state = 'refused', state_reason = %s, access_token_enc = NULL,"
    " token_expires_at = NULL, state_changed_at = now(), updated_at = now()"
    " WHERE account_email = %s"
)
# A grant Google just gave (a consent, an import): the account's one grant from now on.
_STORE_GRANT = (
    "INSERT INTO google_grants (account_email, refresh_token_enc, access_token_enc,"
    " token_expires_at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (account_email) DO UPDATE SET refresh_token_enc = EXCLUDED.refresh_token_enc,"
    " access_token_enc = EXCLUDED.access_token_enc,"
    " token_expires_at = EXCLUDED.token_expires_at, state = 'valid', state_reason = NULL,"
    " state_changed_at = CASE WHEN google_grants.state = 'valid'"
    " THEN google_grants.state_changed_at ELSE now() END, updated_at = now()"
)
_GRANT_STATE = "SELECT state FROM google_grants WHERE account_email = %s FOR SHARE"
_LEAVE_ACTIVE_GRANT = (
    "UPDATE calendar_links SET state = 'reauth_required', state_reason = %s,"
    " state_changed_at = now(), updated_at = now() WHERE account_email = %s AND state = 'active'"
    " RETURNING id, activity_id, calendar_id,"
    " extract(epoch FROM state_changed_at)::float8 AS changed_at"
)
_INSERT_LINK = (
    "INSERT INTO calendar_links (id, activity_id, account_email, calendar_id, state)"
    " VALUES (%s, %s, %s, %s, %s)"
)
_UPSERT_BOOKINGS = (
    "INSERT INTO bookings (booking_id, activity_id, version, event_type, event)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::jsonb[])"
    " ON CONFLICT (booking_id) DO UPDATE SET activity_id = EXCLUDED.activity_id,"
    " version = EXCLUDED.version, event_type = EXCLUDED.event_type, event = EXCLUDED.event,"
    " updated_at = now() WHERE bookings.version < EXCLUDED.version"
)
_LEAVE_ACTIVE = (
    "UPDATE calendar_links SET state = %s, state_reason = %s, state_changed_at = now(),"
    " updated_at = now() WHERE id = %s AND state = 'active'"
    " RETURNING extract(epoch FROM state_changed_at)::float8 AS changed_at"
)
# The activity's bookings, and the bookings whose event is still on this link's calendars
# although they moved to another activity since (they must leave).
_BOOKINGS_OF_ACTIVITY = (
    "SELECT b.event, lb.applied_version, lb.google_event_id, lb.generation, lb.calendar_id"
    " FROM bookings b"
    " LEFT JOIN link_bookings lb ON lb.link_id = %(link)s AND lb.booking_id = b.booking_id"
    " WHERE b.activity_id = %(activity)s OR (lb.google_event_id IS NOT NULL)"
    " ORDER BY b.booking_id"
)
_LATEST_BOOKING = "SELECT event FROM bookings WHERE booking_id = %s"
_FORGET_EVENT = (
    "UPDATE link_bookings SET google_event_id = NULL, calendar_id = NULL, applied_version = NULL,"
    " generation = generation + 1, updated_at = now()"
    " WHERE link_id = %s AND booking_id = %s AND google_event_id = %s"
)
# A dead letter is known by its record: position, timestamp, and a digest of key and value
# (sql/013_edges.sql). The first write wins: a retry or a redelivery of the same record
# finds its row (and whether its copy was published) instead of writing another, while a
# different record at the same position (its topic deleted and created again) gets its own.
# A row from before the digest existed has no timestamp: the same position and digest find it.
_FIND_DEAD_LETTER = (
    "SELECT id, published_at FROM dead_letters WHERE topic = %(topic)s"
    " AND kafka_partition = %(partition)s AND kafka_offset = %(offset)s"
    " AND record_digest = calsync_record_digest(%(key)s, %(value)s)"
    " AND (record_timestamp = %(timestamp)s OR record_timestamp IS NULL)"
    " ORDER BY record_timestamp NULLS LAST LIMIT 1"
)
_INSERT_DEAD_LETTER = (
    f"WITH known AS ({_FIND_DEAD_LETTER}),"
    " new AS (INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_timestamp,"
    " record_digest, message_key, message_value, header_keys, header_values, error_type, error)"
    " SELECT %(topic)s, %(partition)s, %(offset)s, %(timestamp)s,"
    " calsync_record_digest(%(key)s, %(value)s), %(key)s, %(value)s, %(header_keys)s,"
    " %(header_values)s, %(error_type)s, %(error)s WHERE NOT EXISTS (SELECT 1 FROM known)"
    " ON CONFLICT (topic, kafka_partition, kafka_offset, record_timestamp, record_digest)"
    " DO NOTHING RETURNING id, published_at)"
    " SELECT id, published_at FROM known UNION ALL SELECT id, published_at FROM new"
)
_MARK_DEAD_LETTER_PUBLISHED = (
    "UPDATE dead_letters SET published_at = now(), copy_error = %s"
    " WHERE id = %s AND published_at IS NULL"
)


_DEAD_LETTER_REPROCESSED = (
    "SELECT reprocessed_at IS NOT NULL AS done FROM dead_letters WHERE id = %s"
)
_MARK_DEAD_LETTER_REPROCESSED = (
    "UPDATE dead_letters SET reprocessed_at = now() WHERE id = %s AND reprocessed_at IS NULL"
)


def _link_row(row: dict[str, Any], cipher: TokenCipher | None) -> LinkRow:
    """(Rows read without tokens carry NULLs in their place.)"""
    tokens: LinkTokens | None = None
    if row["refresh_token_enc"] is not None and cipher is not None:
        access = row["access_token_enc"]
        tokens = LinkTokens(
            cipher.decrypt(row["refresh_token_enc"]),
            cipher.decrypt(access) if access else None,
            row["token_expires_at"],
        )
    return LinkRow(
        link=CalendarLink(
            id=row["id"],
            activity_id=row["activity_id"],
            account_email=row["account_email"],
            calendar_id=row["calendar_id"],
            state=LinkState(row["state"]),
        ),
        tokens=tokens,
        state_reason=row["state_reason"],
        state_changed_at=row["state_changed_at"],
        created_at=row["created_at"],
        backfilled_at=row["backfilled_at"],
        disconnect_finished_at=row.get("disconnect_finished_at"),
    )


def _link_params(link: CalendarLink) -> tuple[str, str, str, str | None, str]:
    return (link.id, link.activity_id, link.account_email, link.calendar_id, link.state.value)


def _stored_event(data: Any, booking_id: str | None) -> BookingEvent | None:
    try:
        return BookingEvent.model_validate(data)
    except ValidationError as exc:
        log.warning("stored_booking_unreadable", booking_id=booking_id, problems=exc.error_count())
        return None


class Repository:
    """Named queries over one connection pool. Parameters are always bound.

    Tokens cross this boundary in clear and are stored encrypted with `cipher`; a repository
    without a cipher reads links without their tokens (tokens=None) and cannot store any.
    """

    def __init__(self, pool: Pool, cipher: TokenCipher | None = None) -> None:
        self.pool = pool
        self.cipher = cipher

    def _cipher(self) -> TokenCipher:
        if self.cipher is None:
            raise RuntimeError("this repository was built without the token key")
        return self.cipher

    def encrypt_tokens(self, tokens: LinkTokens) -> tuple[str, str | None]:
        cipher = self._cipher()
        access = cipher.encrypt(tokens.access_token) if tokens.access_token else None
        return cipher.encrypt(tokens.refresh_token), access

    @classmethod
    def pool_for(cls, database_url: str, size: int, name: str) -> Pool:
        return AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=size,
            open=False,
            name=name,
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
            return [_link_row(row, self.cipher) for row in await cur.fetchall()]

    async def links_of_activities(self, activity_ids: set[str]) -> dict[str, list[LinkRow]]:
        """Every link of these activities, without tokens."""
        answer: dict[str, list[LinkRow]] = {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LINKS_OF_ACTIVITIES, (list(activity_ids),))
            for row in await cur.fetchall():
                answer.setdefault(row["activity_id"], []).append(_link_row(row, None))
        return answer

    async def links_by_id(self, link_ids: set[str]) -> dict[str, LinkRow]:
        """These links, without tokens (the token provider reads those when it needs them)."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_LINKS_BY_IDS, (list(link_ids),))).fetchall()
        return {row["id"]: _link_row(row, None) for row in rows}

    async def links_holding(self, booking_ids: set[str]) -> dict[str, list[LinkRow]]:
        """Per booking, the links whose calendar holds an event of it, without tokens."""
        answer: dict[str, list[LinkRow]] = {}
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_LINKS_HOLDING, (list(booking_ids),))).fetchall()
        for row in rows:
            answer.setdefault(row["booking_id"], []).append(_link_row(row, None))
        return answer

    async def latest_bookings(self, booking_ids: set[str]) -> dict[str, BookingEvent]:
        """The latest recorded state of these bookings (one stored before the contract's
        bounds were tightened, and no longer valid, is left out with a warning)."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_LATEST_BOOKINGS, (list(booking_ids),))).fetchall()
        answer = {}
        for row in rows:
            event = _stored_event(row["event"], row["booking_id"])
            if event is not None:
                answer[row["booking_id"]] = event
        return answer

    async def link(self, link_id: str) -> LinkRow | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_LINK_BY_ID, (link_id,))).fetchone()
            return _link_row(row, self.cipher) if row else None

    async def all_links(self) -> list[LinkRow]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_ALL_LINKS)).fetchall()
            return [_link_row(row, self.cipher) for row in rows]

    async def insert_link(
        self, link: CalendarLink, tokens: LinkTokens, conn: Connection | None = None
    ) -> None:
        """The link, and its account's grant made these tokens (in one transaction)."""
        if conn is not None:
            await self.store_grant(conn, link.account_email, tokens)
            await conn.execute(_INSERT_LINK, _link_params(link))
            return
        async with self.pool.connection() as own, own.transaction():
            await self.store_grant(own, link.account_email, tokens)
            await own.execute(_INSERT_LINK, _link_params(link))

    async def insert_link_row(self, conn: Connection, link: CalendarLink) -> None:
        """The link alone (its account's grant is stored by the caller, in `conn`'s
        transaction)."""
        await conn.execute(_INSERT_LINK, _link_params(link))

    async def store_grant(self, conn: Connection, account: str, tokens: LinkTokens) -> None:
        """The account's one grant is now these tokens (valid)."""
        refresh, access = self.encrypt_tokens(tokens)
        await conn.execute(_STORE_GRANT, (account, refresh, access, tokens.expires_at))

    async def leave_active(self, link_id: str, state: LinkState, reason: str) -> float | None:
        """Move an active link to an unhealthy state: when (epoch seconds), or None if it
        was not active (any more)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LEAVE_ACTIVE, (state.value, reason, link_id))
            row = await cur.fetchone()
            return float(row["changed_at"]) if row else None

    async def bookings_of_activity(
        self, link_id: str, activity_id: str
    ) -> list[tuple[BookingEvent, RecordedEvent | None]]:
        """The latest recorded state of each booking of the activity, with what the link
        holds for it: the whole history in memory (reconcile's, for now). A backfill reads
        keyset pages within the horizon instead (backfill_store)."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    _BOOKINGS_OF_ACTIVITY, {"link": link_id, "activity": activity_id}
                )
            ).fetchall()
        answer: list[tuple[BookingEvent, RecordedEvent | None]] = []
        for row in rows:
            recorded = None
            if row["applied_version"] is not None or (row["generation"] or 0) > 0:
                recorded = RecordedEvent(
                    applied_version=row["applied_version"],
                    google_event_id=row["google_event_id"],
                    generation=row["generation"],
                    calendar_id=row["calendar_id"],
                )
            event = _stored_event(row["event"], None)
            if event is not None:
                answer.append((event, recorded))
        return answer

    async def latest_booking(self, booking_id: str) -> BookingEvent | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_LATEST_BOOKING, (booking_id,))).fetchone()
        return _stored_event(row["event"], booking_id) if row else None

    async def forget_event(self, link_id: str, booking_id: str, event_id: str) -> None:
        """The records of a (link, booking) no longer hold this event (it was removed)."""
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_EVENT, (link_id, booking_id, event_id))

    # --- grants (the token provider's) ------------------------------------------------------

    @asynccontextmanager
    async def locked_grant(self, account: str) -> AsyncIterator[_LockedGrant]:
        """The account's grant with its row locked until the block ends (one refresh per
        grant in the consumer group), and what a refresh writes back under the lock."""
        async with self.pool.connection() as conn, conn.transaction():
            yield _LockedGrant(self, conn, account, await self.lock_grant(conn, account))

    async def lock_grant(self, conn: Connection, account: str) -> StoredGrant | None:
        """The account's grant, its row locked until `conn`'s transaction ends (one refresh
        per grant in the consumer group). None: no grant (or revoked)."""
        row = await (await conn.execute(_LOCK_GRANT, (account,))).fetchone()
        if row is None or row["refresh_token_enc"] is None:
            return None
        cipher = self._cipher()
        access = row["access_token_enc"]
        tokens = LinkTokens(
            cipher.decrypt(row["refresh_token_enc"]),
            cipher.decrypt(access) if access else None,
            row["token_expires_at"],
        )
        refused = (row["state_reason"] or "invalid_grant") if row["state"] == "refused" else None
        return StoredGrant(tokens, refused)

    async def save_tokens(
        self, conn: Connection, account: str, tokens: LinkTokens, refresh_token_changed: bool
    ) -> None:
        refresh, access = self.encrypt_tokens(tokens)
        if refresh_token_changed:
            await conn.execute(_SAVE_ALL_TOKENS, (access, tokens.expires_at, refresh, account))
        else:
            await conn.execute(_SAVE_ACCESS_TOKEN, (access, tokens.expires_at, account))

    async def refuse_grant(self, conn: Connection, account: str, reason: str) -> None:
        """Google refused the grant (`invalid_grant: ...`): no process presents it again."""
        await conn.execute(_REFUSE_GRANT, (printable(reason, 500), account))

    async def leave_active_grant(
        self, account: str, reason: str
    ) -> list[tuple[str, str, str | None, float]]:
        """Every active link of the account becomes `reauth_required`, unless its grant was
        replaced meanwhile (a reconnect, which locks the grant's row first too): of each,
        (link, activity, calendar, since when in epoch seconds)."""
        async with self.pool.connection() as conn, conn.transaction():
            grant = await (await conn.execute(_GRANT_STATE, (account,))).fetchone()
            if grant is not None and grant["state"] == "valid":
                return []
            cur = await conn.execute(_LEAVE_ACTIVE_GRANT, (printable(reason, 500), account))
            return [
                (row["id"], row["activity_id"], row["calendar_id"], float(row["changed_at"]))
                for row in await cur.fetchall()
            ]

    # --- bookings and dead letters ---------------------------------------------------------

    async def upsert_bookings(self, events: list[BookingEvent]) -> None:
        """Keep the latest version of each booking, in one statement."""
        latest: dict[str, BookingEvent] = {}
        for event in events:  # one statement may not touch a row twice
            seen = latest.get(event.booking.id)
            if seen is None or seen.booking.version < event.booking.version:
                latest[event.booking.id] = event
        chosen = list(latest.values())
        async with self.pool.connection() as conn:
            await conn.execute(
                _UPSERT_BOOKINGS,
                (
                    [e.booking.id for e in chosen],
                    [e.booking.activity_id for e in chosen],
                    [e.booking.version for e in chosen],
                    [e.event_type.value for e in chosen],
                    [e.model_dump_json() for e in chosen],
                ),
            )

    async def record_dead_letter(
        self,
        position: MessagePosition,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        error_type: str,
        error: str,
    ) -> tuple[int, bool]:
        """Store the message as it came (raw bytes), known by its position, its timestamp
        and its key and value; (its row's id, whether its copy on the dead-letter topic was
        published already)."""
        params = {
            "topic": position.topic,
            "partition": position.partition,
            "offset": position.offset,
            "timestamp": timestamp_ms,
            "key": key,
            "value": value,
            "header_keys": [k.encode("utf-8", "surrogateescape") for k, _ in headers],
            "header_values": [v if v is not None else b"" for _, v in headers],
            "error_type": printable(error_type, 100),
            "error": printable(error, 4000),
        }
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_INSERT_DEAD_LETTER, params)).fetchone()
            if row is None:
                # Another process wrote the same record's row meanwhile (its insert conflicted,
                # and this statement's snapshot could not see it): a new statement does.
                row = await (await conn.execute(_FIND_DEAD_LETTER, params)).fetchone()
        assert row is not None
        return int(row["id"]), row["published_at"] is not None

    async def mark_dead_letter_published(
        self, dead_letter_id: int, copy_error: str | None = None
    ) -> None:
        """The copy is on the dead-letter topic (or, with `copy_error`, never will be)."""
        async with self.pool.connection() as conn:
            await conn.execute(_MARK_DEAD_LETTER_PUBLISHED, (copy_error, dead_letter_id))

    async def dead_letter_reprocessed(self, dead_letter_id: int) -> bool:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_DEAD_LETTER_REPROCESSED, (dead_letter_id,))).fetchone()
            return bool(row and row["done"])

    async def mark_dead_letter_reprocessed(self, dead_letter_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_MARK_DEAD_LETTER_REPROCESSED, (dead_letter_id,))


class _LockedGrant:
    """A grant's row locked on `conn` (see Repository.locked_grant)."""

    def __init__(
        self, repository: Repository, conn: Connection, account: str, grant: StoredGrant | None
    ) -> None:
        self._repository = repository
        self._conn = conn
        self._account = account
        self.grant = grant

    async def save(self, tokens: LinkTokens, refresh_token_changed: bool) -> None:
        await self._repository.save_tokens(self._conn, self._account, tokens, refresh_token_changed)

    async def refuse(self, reason: str) -> None:
        await self._repository.refuse_grant(self._conn, self._account, reason)
