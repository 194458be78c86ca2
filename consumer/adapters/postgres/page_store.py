"""What the pages keep in PostgreSQL so that every `calsync serve` process agrees: the
signed-in sessions (signing out deletes one, voiding its cookie everywhere) and the failed
sign-ins per client address (sql/013_edges.sql). Both tables stay small: expired sessions
are deleted whenever one starts, and addresses whose window and block are over whenever a
sign-in fails."""

from __future__ import annotations

import hashlib

from consumer.adapters.postgres.repository import Pool

_FORGET_EXPIRED_SESSIONS = "DELETE FROM page_sessions WHERE expires_at < now()"
_START_SESSION = (
    "INSERT INTO page_sessions (id_digest, expires_at)"
    " VALUES (%s, now() + make_interval(secs => %s))"
)
_SESSION_ALIVE = "SELECT 1 FROM page_sessions WHERE id_digest = %s AND expires_at > now()"
_END_SESSION = "DELETE FROM page_sessions WHERE id_digest = %s"

_BLOCKED = (
    "SELECT extract(epoch FROM blocked_until - now())::float8 AS left_s"
    " FROM page_login_failures WHERE client = %s AND blocked_until > now()"
)
# One failure more for the address: counted within the window that its first failure opened
# (a failure after the window opens a new one); the one that reaches the limit blocks the
# address for a window from now. Every SET expression reads the row as it was.
_FAILED = (
    "INSERT INTO page_login_failures AS f (client, failures, first_failed_at, blocked_until)"
    " VALUES (%(client)s, 1, now(),"
    " CASE WHEN %(limit)s <= 1 THEN now() + make_interval(secs => %(window)s) END)"
    " ON CONFLICT (client) DO UPDATE SET"
    " failures = CASE WHEN f.first_failed_at > now() - make_interval(secs => %(window)s)"
    " THEN f.failures + 1 ELSE 1 END,"
    " first_failed_at = CASE WHEN f.first_failed_at > now() - make_interval(secs => %(window)s)"
    " THEN f.first_failed_at ELSE now() END,"
    " blocked_until = CASE WHEN (CASE WHEN f.first_failed_at > now()"
    " - make_interval(secs => %(window)s) THEN f.failures + 1 ELSE 1 END) >= %(limit)s"
    " THEN now() + make_interval(secs => %(window)s) ELSE f.blocked_until END"
    " RETURNING failures, extract(epoch FROM blocked_until - now())::float8 AS blocked_s"
)
_FORGET_OLD_FAILURES = (
    "DELETE FROM page_login_failures"
    " WHERE first_failed_at < now() - make_interval(secs => %s)"
    " AND (blocked_until IS NULL OR blocked_until < now())"
)
_SUCCEEDED = "DELETE FROM page_login_failures WHERE client = %s"


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class PageStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- sessions ------------------------------------------------------------------------

    async def start_session(self, session_id: str, ttl_s: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_EXPIRED_SESSIONS)
            await conn.execute(_START_SESSION, (_digest(session_id), float(ttl_s)))

    async def session_alive(self, session_id: str) -> bool:
        """Started, not expired, not signed out."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_SESSION_ALIVE, (_digest(session_id),))
            return await cur.fetchone() is not None

    async def end_session(self, session_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_END_SESSION, (_digest(session_id),))

    # --- failed sign-ins -----------------------------------------------------------------

    async def sign_in_blocked(self, client: str) -> float | None:
        """Seconds until `client` may try to sign in again; None: it may now."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_BLOCKED, (client,))).fetchone()
        return float(row["left_s"]) if row else None

    async def sign_in_failed(self, client: str, limit: int, window_s: float) -> tuple[int, float]:
        """Count a failed sign-in of `client`: (its failures in the current window, seconds
        it is now blocked for, 0 when it is not)."""
        params = {"client": client, "limit": limit, "window": float(window_s)}
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_OLD_FAILURES, (float(window_s),))
            row = await (await conn.execute(_FAILED, params)).fetchone()
        assert row is not None
        return int(row["failures"]), max(0.0, float(row["blocked_s"] or 0.0))

    async def sign_in_succeeded(self, client: str) -> None:
        """`client` knew the token: its failures are forgotten (another address's are not)."""
        async with self.pool.connection() as conn:
            await conn.execute(_SUCCEEDED, (client,))
