"""PostgreSQL queries of the link lifecycle: OAuth states, connect, select, disconnect, keys.

The hot path's queries (what the consumer runs per message) stay in `db.Repository`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from psycopg import errors

from consumer.crypto import TokenCipher
from consumer.db import Connection, LinkRow, LinkTokens, Repository
from consumer.models import CalendarLink, LinkState
from consumer.sync_store import link_lock_key

_INSERT_STATE = (
    "INSERT INTO oauth_states (nonce, activity_id, code_verifier_enc, expires_at)"
    " VALUES (%s, %s, %s, %s)"
)
_TAKE_STATE = (
    "UPDATE oauth_states SET used_at = now() WHERE nonce = %s AND used_at IS NULL"
    " RETURNING activity_id, code_verifier_enc, expires_at <= now() AS expired"
)
_STATE_EXISTS = "SELECT 1 FROM oauth_states WHERE nonce = %s"
_FORGET_OLD_STATES = "DELETE FROM oauth_states WHERE expires_at < now() - interval '1 day'"
_RECONNECT = (
    "UPDATE calendar_links SET refresh_token_enc = %s, access_token_enc = %s,"
    " token_expires_at = %s, state = 'active', state_reason = NULL, state_changed_at = now(),"
    " updated_at = now() WHERE activity_id = %s AND account_email = %s"
    " AND state = 'reauth_required' RETURNING id"
)
_WAIT_FOR_CLAIMS = "SELECT pg_advisory_xact_lock(%s)"
_LOCK_LINK = "SELECT state, activity_id, account_email FROM calendar_links WHERE id = %s FOR UPDATE"
_LIVE_ON_CALENDAR = (
    "SELECT id, state FROM calendar_links WHERE activity_id = %s AND account_email = %s"
    " AND calendar_id = %s AND id <> %s ORDER BY state = 'disconnected', created_at"
)
_ACTIVATE = (
    "UPDATE calendar_links SET calendar_id = %s, state = 'active', state_reason = NULL,"
    " state_changed_at = now(), updated_at = now() WHERE id = %s"
)
_REVIVE = (
    "UPDATE calendar_links AS old SET refresh_token_enc = new.refresh_token_enc,"
    " access_token_enc = new.access_token_enc, token_expires_at = new.token_expires_at,"
    " state = 'active', state_reason = NULL, state_changed_at = now(), updated_at = now()"
    " FROM calendar_links AS new WHERE old.id = %s AND new.id = %s"
)
_DELETE_LINK = "DELETE FROM calendar_links WHERE id = %s"
_DISCONNECT = (
    "UPDATE calendar_links SET state = 'disconnected', state_reason = %s,"
    " state_changed_at = now(), updated_at = now() WHERE id = %s"
)
_WIPE_TOKENS = (
    "UPDATE calendar_links SET refresh_token_enc = NULL, access_token_enc = NULL,"
    " token_expires_at = NULL, state_reason = %s, updated_at = now() WHERE id = %s"
)
_OTHER_LIVE_LINKS_OF_ACCOUNT = (
    "SELECT id FROM calendar_links WHERE account_email = %s AND id <> %s"
    " AND state <> 'disconnected' ORDER BY id"
)
_FORGET_EVENTS = (
    # The next activation creates fresh events, under ids not used before.
    "UPDATE link_bookings SET applied_version = NULL, google_event_id = NULL,"
    " generation = generation + 1, updated_at = now()"
    " WHERE link_id = %s AND google_event_id IS NOT NULL"
)
_TOKEN_ROWS = (
    "SELECT id, refresh_token_enc, access_token_enc FROM calendar_links"
    " WHERE refresh_token_enc IS NOT NULL FOR UPDATE"
)
_REENCRYPT_LINK = (
    "UPDATE calendar_links SET refresh_token_enc = %s, access_token_enc = %s WHERE id = %s"
)
_STATE_ROWS = "SELECT nonce, code_verifier_enc FROM oauth_states FOR UPDATE"
_REENCRYPT_STATE = "UPDATE oauth_states SET code_verifier_enc = %s WHERE nonce = %s"


class StateRefused(Exception):
    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class CalendarTaken(Exception):
    """Another live link of the activity already syncs the same account's calendar."""

    def __init__(self, link_id: str, state: str = "active") -> None:
        super().__init__(link_id)
        self.link_id = link_id
        self.state = state


@dataclass(frozen=True)
class Activation:
    link_id: str  # the link that is now active (an earlier one, when revived)
    merged_from: str | None  # the pending link folded into it


class LinkStore:
    def __init__(self, repository: Repository, cipher: TokenCipher) -> None:
        self.repository = repository
        self.cipher = cipher
        self.pool = repository.pool

    # --- the OAuth flow -----------------------------------------------------------------

    async def save_state(self, nonce: str, activity_id: str, code_verifier: str,
                         expires_at: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_OLD_STATES)
            await conn.execute(_INSERT_STATE, (nonce, activity_id,
                                               self.cipher.encrypt(code_verifier), expires_at))

    async def take_state(self, nonce: str) -> tuple[str, str]:
        """Use a state once: its activity and PKCE verifier."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_TAKE_STATE, (nonce,))).fetchone()
            if row is None:
                seen = await (await conn.execute(_STATE_EXISTS, (nonce,))).fetchone()
                if seen:
                    raise StateRefused("state_replayed", "this connection request was already "
                                       "used: start a new one")
                raise StateRefused("state_invalid", "unknown connection request")
        if row["expired"]:
            raise StateRefused("state_expired", "the connection request expired: start it "
                               "again")
        return row["activity_id"], self.cipher.decrypt(row["code_verifier_enc"])

    async def add_pending(self, link: CalendarLink, tokens: LinkTokens) -> None:
        await self.repository.insert_link(link, tokens)

    async def reconnect(self, activity_id: str, email: str, tokens: LinkTokens) -> list[str]:
        """Give the activity's `reauth_required` links of this account their new tokens."""
        refresh, access = self.repository.encrypt_tokens(tokens)
        async with self.pool.connection() as conn:
            cur = await conn.execute(_RECONNECT, (refresh, access, tokens.expires_at,
                                                  activity_id, email))
            return [row["id"] for row in await cur.fetchall()]

    # --- choosing a calendar ------------------------------------------------------------

    async def activate(self, link_id: str, calendar_id: str) -> Activation:
        """Point the link at the calendar and make it active. If the same account's calendar
        was synced by a link that was disconnected since, that link is revived instead (its
        records say which events are already there, so nothing is created twice)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_LOCK_LINK, (link_id,))).fetchone()
            assert row is not None
            others = await (await conn.execute(_LIVE_ON_CALENDAR, (
                row["activity_id"], row["account_email"], calendar_id, link_id))).fetchall()
            live = [o for o in others if o["state"] != LinkState.DISCONNECTED]
            if live:
                raise CalendarTaken(live[0]["id"], live[0]["state"])
            try:
                if others:  # a disconnected link of the same calendar
                    old = others[0]["id"]
                    await conn.execute(_LOCK_LINK, (old,))
                    await conn.execute(_REVIVE, (old, link_id))
                    await conn.execute(_DELETE_LINK, (link_id,))
                    return Activation(old, merged_from=link_id)
                await conn.execute(_ACTIVATE, (calendar_id, link_id))
            except errors.UniqueViolation:
                raise CalendarTaken("another link") from None
        return Activation(link_id, merged_from=None)

    # --- disconnecting ------------------------------------------------------------------

    async def mark_disconnected(self, link_id: str, reason: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_DISCONNECT, (reason, link_id))

    async def wait_for_in_flight(self, link_id: str, timeout_s: float) -> bool:
        """Wait until no work is in flight for the link in any process (each claim holds the
        link's advisory lock shared, see sync_store). Short lock timeouts, and new claims
        are not starved: they see the link's new state once they get in."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '200ms'")
                    await conn.execute(_WAIT_FOR_CLAIMS, (link_lock_key(link_id),))
                return True
            except errors.LockNotAvailable:
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(0.05)

    async def forget_events(self, link_id: str) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_FORGET_EVENTS, (link_id,))
            return cur.rowcount

    async def other_live_links_of_account(self, email: str, link_id: str) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_OTHER_LIVE_LINKS_OF_ACCOUNT, (email, link_id))
            return [row["id"] for row in await cur.fetchall()]

    async def wipe_tokens(self, link_id: str, reason: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_WIPE_TOKENS, (reason, link_id))

    # --- keys ---------------------------------------------------------------------------

    async def rotate_key(self) -> tuple[int, int]:
        """Re-encrypt every stored secret under the first key: (links, states)."""
        async with self.pool.connection() as conn, conn.transaction():
            links = await self._rotate(conn, _TOKEN_ROWS, _REENCRYPT_LINK)
            states = await self._rotate(conn, _STATE_ROWS, _REENCRYPT_STATE)
        return links, states

    async def _rotate(self, conn: Connection, select: str, update: str) -> int:
        rows = await (await conn.execute(select)).fetchall()
        for row in rows:
            values = list(row.values())
            key, secrets = values[0], values[1:]
            fresh = [self.cipher.rotate(v) if v else None for v in secrets]
            await conn.execute(update, (*fresh, key))
        return len(rows)


def link_summary(row: LinkRow) -> dict[str, object]:
    """A link as the CLI and the HTTP API show it: never its tokens."""
    link = row.link
    return {
        "id": link.id,
        "activity_id": link.activity_id,
        "account_email": link.account_email,
        "calendar_id": link.calendar_id,
        "state": link.state.value,
        "state_reason": row.state_reason,
        "state_changed_at": row.state_changed_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "backfilled_at": row.backfilled_at.isoformat() if row.backfilled_at else None,
    }
