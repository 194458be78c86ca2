"""PostgreSQL queries of the link lifecycle: OAuth states, connect, select, import,
disconnect, single-use forms, keys. (Backfills: backfill_store; the links page's figures:
link_health_store.)

The hot path's queries (what the consumer runs per message) stay in `db.Repository`.

Two rules hold here under row locks, so that concurrent requests cannot break them:
- one live link per calendar of an activity, whatever the account (a calendar shared by
  two accounts has one id for both); the unique index `calendar_links_one_owner_per_calendar`
  has the last word when two selects race;
- one grant per Google account (`google_grants`), revoked at Google only when no live link
  (nor an unfinished disconnect) of the account uses it, checked with the grant's row
  locked, which every connect locks too before it stores a new grant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from psycopg import errors

from consumer.adapters.crypto import TokenCipher
from consumer.adapters.postgres.locks import link_lock_key
from consumer.adapters.postgres.repository import Connection, Repository
from consumer.domain.errors import CalendarTaken, StateRefused
from consumer.domain.models import CalendarLink, LinkRow, LinkState, LinkTokens
from consumer.domain.records import Activation, StoredConnection, TakenState

_INSERT_STATE = (
    "INSERT INTO oauth_states (nonce, activity_id, code_verifier_enc, expires_at)"
    " VALUES (%s, %s, %s, %s)"
)
_TAKE_STATE = (
    "UPDATE oauth_states SET used_at = now() WHERE nonce = %s AND used_at IS NULL"
    " RETURNING activity_id, code_verifier_enc, expires_at <= now() AS expired,"
    " now() AS taken_at"
)
_STATE_EXISTS = "SELECT 1 FROM oauth_states WHERE nonce = %s"
_FORGET_OLD_STATES = "DELETE FROM oauth_states WHERE expires_at < now() - interval '1 day'"
# The account's grant, locked against a revoke (and a revoke against it) until commit.
_LOCK_GRANT = (
    "SELECT refresh_token_enc, state, state_changed_at FROM google_grants"
    " WHERE account_email = %s FOR UPDATE"
)
# A new grant repairs the account's links that Google's refusal stopped, in every activity.
_RECONNECT = (
    "UPDATE calendar_links SET state = 'active', state_reason = NULL, state_changed_at = now(),"
    " updated_at = now() WHERE account_email = %s AND state = 'reauth_required'"
    " RETURNING id, activity_id"
)
_WAIT_FOR_CLAIMS = "SELECT pg_advisory_xact_lock(%s)"
_LOCK_LINK = "SELECT state, activity_id, account_email FROM calendar_links WHERE id = %s FOR UPDATE"
# The activity's other links on the calendar, whatever their account: live ones first.
_ON_CALENDAR = (
    "SELECT id, state, account_email, disconnect_finished_at FROM calendar_links"
    " WHERE activity_id = %s AND calendar_id = %s AND id <> %s"
    " ORDER BY state = 'disconnected', created_at, id"
)
_LIVE_OWNER = (
    "SELECT id, state, account_email FROM calendar_links WHERE activity_id = %s"
    " AND calendar_id = %s AND id <> %s AND state <> 'disconnected'"
)
_HOLDS_EVENTS = (
    "SELECT 1 FROM link_bookings WHERE link_id = %s AND google_event_id IS NOT NULL LIMIT 1"
)
_ACTIVATE = (
    "UPDATE calendar_links SET calendar_id = %s, state = 'active', state_reason = NULL,"
    " state_changed_at = now(), updated_at = now() WHERE id = %s"
)
# The disconnected link takes the new one's account (a calendar shared by two accounts:
# either may write its events).
_REVIVE = (
    "UPDATE calendar_links AS old SET account_email = new.account_email, state = 'active',"
    " state_reason = NULL, state_changed_at = now(), updated_at = now(),"
    " disconnect_finished_at = NULL FROM calendar_links AS new WHERE old.id = %s AND new.id = %s"
)
_DELETE_LINK = "DELETE FROM calendar_links WHERE id = %s"
_DISCONNECT = (
    "UPDATE calendar_links SET state = 'disconnected', state_reason = %s,"
    " state_changed_at = now(), updated_at = now(), disconnect_finished_at = NULL WHERE id = %s"
    " RETURNING extract(epoch FROM state_changed_at)::float8 AS changed_at"
)
_FINISH_DISCONNECT = (
    "UPDATE calendar_links SET state_reason = %s, disconnect_finished_at = now(),"
    " updated_at = now() WHERE id = %s AND state = 'disconnected'"
)
# Who else uses the account's grant: its live links, and its links still being
# disconnected (their events may still have to be removed with it).
_GRANT_USERS = (
    "SELECT id FROM calendar_links WHERE account_email = %s AND id <> %s"
    " AND (state <> 'disconnected' OR disconnect_finished_at IS NULL) ORDER BY id"
)
# After Google revoked it: the tokens wiped, and when (the clock after the revoke: a
# connection whose code was exchanged before that is told to start again).
_REVOKED = (
    "UPDATE google_grants SET state = 'revoked', state_reason = %s, refresh_token_enc = NULL,"
    " access_token_enc = NULL, token_expires_at = NULL, state_changed_at = clock_timestamp(),"
    " updated_at = now() WHERE account_email = %s"
)
_DROP_REPAIRS = "DELETE FROM repairs WHERE link_id = %s"
_RECORDED_ON = (
    "SELECT booking_id, google_event_id FROM link_bookings WHERE link_id = %s"
    " AND google_event_id IS NOT NULL AND coalesce(calendar_id, %s) = %s"
)
# A link's events away from its calendar: recorded on another one, or stranded on one.
_EVENTS_ELSEWHERE = (
    "SELECT booking_id, calendar_id, google_event_id FROM link_bookings WHERE link_id = %s"
    " AND google_event_id IS NOT NULL AND calendar_id IS NOT NULL AND calendar_id <> %s"
    " UNION SELECT booking_id, calendar_id, google_event_id FROM stranded_events"
    " WHERE link_id = %s"
)
_UNSTRAND_LINK = "DELETE FROM stranded_events WHERE link_id = %s"
_STRAND = (
    "INSERT INTO stranded_events (link_id, booking_id, calendar_id, google_event_id, reason)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (calendar_id, google_event_id) DO NOTHING"
)
_FORGET_EVENTS = (
    # The next activation creates fresh events, under ids not used before.
    "UPDATE link_bookings SET applied_version = NULL, google_event_id = NULL, calendar_id = NULL,"
    " generation = generation + 1, updated_at = now()"
    " WHERE link_id = %s AND google_event_id IS NOT NULL"
)
_TOKEN_ROWS = (
    "SELECT account_email, refresh_token_enc, access_token_enc FROM google_grants"
    " WHERE refresh_token_enc IS NOT NULL ORDER BY account_email FOR UPDATE"
)
_REENCRYPT_GRANT = (
    "UPDATE google_grants SET refresh_token_enc = %s, access_token_enc = %s"
    " WHERE account_email = %s"
)
_LINKS_OF_GRANTS = (
    "SELECT count(*) AS n FROM calendar_links WHERE state <> 'disconnected' AND account_email"
    " IN (SELECT account_email FROM google_grants WHERE refresh_token_enc IS NOT NULL)"
)
# --- what the pages write --------------------------------------------------------------
_USE_FORM_TOKEN = (
    "INSERT INTO page_form_tokens (jti, link_id, expires_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (jti) DO NOTHING RETURNING jti"
)
_FORGET_OLD_FORM_TOKENS = "DELETE FROM page_form_tokens WHERE expires_at < now() - interval '1 day'"
_STATE_ROWS = "SELECT nonce, code_verifier_enc FROM oauth_states FOR UPDATE"
_REENCRYPT_STATE = "UPDATE oauth_states SET code_verifier_enc = %s WHERE nonce = %s"


class LinkStore:
    def __init__(self, repository: Repository, cipher: TokenCipher) -> None:
        self.repository = repository
        self.cipher = cipher
        self.pool = repository.pool

    # --- links as stored (the repository's reads) ---------------------------------------

    async def link(self, link_id: str) -> LinkRow | None:
        """The link, with its account's grant's tokens."""
        return await self.repository.link(link_id)

    async def links_of_activity(self, activity_id: str) -> list[LinkRow]:
        """Every link of the activity, without tokens."""
        found = await self.repository.links_of_activities({activity_id})
        return found.get(activity_id, [])

    async def all_links(self) -> list[LinkRow]:
        return await self.repository.all_links()

    # --- the OAuth flow -----------------------------------------------------------------

    async def save_state(
        self, nonce: str, activity_id: str, code_verifier: str, expires_at: datetime
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_OLD_STATES)
            await conn.execute(
                _INSERT_STATE, (nonce, activity_id, self.cipher.encrypt(code_verifier), expires_at)
            )

    async def take_state(self, nonce: str) -> TakenState:
        """Use a state once: its activity and PKCE verifier."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_TAKE_STATE, (nonce,))).fetchone()
            if row is None:
                seen = await (await conn.execute(_STATE_EXISTS, (nonce,))).fetchone()
                if seen:
                    raise StateRefused(
                        "state_replayed",
                        "this connection request was already used: start a new one",
                    )
                raise StateRefused("state_invalid", "unknown connection request")
        if row["expired"]:
            raise StateRefused("state_expired", "the connection request expired: start it again")
        return TakenState(
            row["activity_id"], self.cipher.decrypt(row["code_verifier_enc"]), row["taken_at"]
        )

    async def connect(
        self, pending: CalendarLink, tokens: LinkTokens, asked_at: datetime
    ) -> StoredConnection:
        """Google granted `pending`'s account these tokens: they become the account's one
        grant; the account's `reauth_required` links, in every activity, are active again;
        and unless some of them are the activity's, `pending` is stored (a new link).

        Refused (`disconnect_in_progress`) when the disconnect of the account's last link
        revoked its grant at Google after this connection was asked for: Google revokes an
        account's whole grant, tokens minted just before included."""
        email = pending.account_email
        async with self.pool.connection() as conn, conn.transaction():
            grant = await (await conn.execute(_LOCK_GRANT, (email,))).fetchone()
            if grant and grant["state"] == "revoked" and grant["state_changed_at"] >= asked_at:
                raise StateRefused(
                    "disconnect_in_progress",
                    f"disconnect_in_progress: the disconnect of the last link of {email} "
                    "revoked its access at Google while this connection was under way, "
                    "which voids what Google just granted: connect the account again",
                )
            await self.repository.store_grant(conn, email, tokens)
            rows = await (await conn.execute(_RECONNECT, (email,))).fetchall()
            here = [r["id"] for r in rows if r["activity_id"] == pending.activity_id]
            created = None
            if not here:
                await self.repository.insert_link_row(conn, pending)
                created = pending.id
        reconnected = here + [r["id"] for r in rows if r["id"] not in here]
        return StoredConnection(reconnected=reconnected, here=here, created=created)

    async def import_link(self, link: CalendarLink, tokens: LinkTokens) -> None:
        """A link registered from tokens obtained elsewhere, and its account's grant made
        them. CalendarTaken: another live link of the activity has its calendar."""
        try:
            await self.repository.insert_link(link, tokens)
        except errors.UniqueViolation:
            async with self.pool.connection() as conn:
                winner = await (
                    await conn.execute(_LIVE_OWNER, (link.activity_id, link.calendar_id, link.id))
                ).fetchone()
            if winner is None:
                raise
            raise CalendarTaken(winner["id"], winner["state"], winner["account_email"]) from None

    # --- choosing a calendar ------------------------------------------------------------

    async def activate(self, link_id: str, calendar_id: str) -> Activation:
        """Point the link at the calendar and make it active: refused (CalendarTaken) when
        another live link of the activity has the calendar, through whichever account.
        If a link of the activity synced the calendar and was disconnected since, that link
        is revived instead (its records say which events are already there, so nothing is
        created twice); while its disconnect has not finished (its events are still being
        removed), the choice is refused (`disconnect_in_progress`)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_LOCK_LINK, (link_id,))).fetchone()
            assert row is not None
            if row["state"] == LinkState.DISCONNECTED:  # (a disconnect under way, maybe)
                raise StateRefused(
                    "link_disconnected",
                    f"link {link_id} is disconnected: connect the account again",
                )
            activity = row["activity_id"]
            others = await (
                await conn.execute(_ON_CALENDAR, (activity, calendar_id, link_id))
            ).fetchall()
            live = [o for o in others if o["state"] != LinkState.DISCONNECTED]
            if live:
                raise CalendarTaken(live[0]["id"], live[0]["state"], live[0]["account_email"])
            unfinished = [o for o in others if o["disconnect_finished_at"] is None]
            if unfinished:
                old = unfinished[0]["id"]
                raise StateRefused(
                    "disconnect_in_progress",
                    f"disconnect_in_progress: link {old} of this activity is being "
                    f"disconnected from calendar {calendar_id!r} and its events may still be "
                    "being removed: choose the calendar again once that has finished (if "
                    f"the disconnect was interrupted, run it again: calsync links disconnect "
                    f"{old})",
                )
            # A link whose records hold events (on another calendar: a move) is not folded
            # away: its records would go with it and its events be left unaccounted for.
            # It takes the calendar itself; the kept events of the disconnected link there
            # are then duplicates, which a reconcile removes.
            holds = await (await conn.execute(_HOLDS_EVENTS, (link_id,))).fetchone()
            try:
                if others and holds is None:  # a disconnected link of the calendar: revived
                    old = others[0]["id"]
                    await conn.execute(_LOCK_LINK, (old,))
                    await conn.execute(_REVIVE, (old, link_id))
                    await conn.execute(_DELETE_LINK, (link_id,))
                    return Activation(old, merged_from=link_id)
                await conn.execute(_ACTIVATE, (calendar_id, link_id))
            except errors.UniqueViolation:
                pass  # another select took it meanwhile (the unique index decides)
            else:
                return Activation(link_id, merged_from=None)
        async with self.pool.connection() as conn:
            winner = await (
                await conn.execute(_LIVE_OWNER, (activity, calendar_id, link_id))
            ).fetchone()
        if winner is None:
            raise CalendarTaken("another link")
        raise CalendarTaken(winner["id"], winner["state"], winner["account_email"])

    # --- disconnecting ------------------------------------------------------------------

    async def mark_disconnected(self, link_id: str, reason: str) -> float:
        """Since when the link is disconnected (epoch seconds)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_DISCONNECT, (reason, link_id))).fetchone()
        assert row is not None
        return float(row["changed_at"])

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

    async def recorded_events(self, link_id: str, calendar_id: str) -> list[tuple[str, str]]:
        """(booking, event) the records say are on this calendar."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(_RECORDED_ON, (link_id, calendar_id, calendar_id))
            ).fetchall()
        return [(r["booking_id"], r["google_event_id"]) for r in rows]

    async def events_elsewhere(self, link_id: str, calendar_id: str) -> list[tuple[str, str, str]]:
        """(booking, calendar, event) of the link's events on other calendars."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(_EVENTS_ELSEWHERE, (link_id, calendar_id, link_id))
            ).fetchall()
        return [(r["booking_id"], r["calendar_id"], r["google_event_id"]) for r in rows]

    async def strand(self, link_id: str, left: list[tuple[str, str, str, str]]) -> None:
        """After a removal: the link's stranded events are exactly those still left."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_UNSTRAND_LINK, (link_id,))
            for booking_id, calendar_id, event_id, why in left:
                await conn.execute(_STRAND, (link_id, booking_id, calendar_id, event_id, why))

    async def drop_repairs(self, link_id: str) -> None:
        """A disconnected link is owed nothing (a reconnect backfills it)."""
        async with self.pool.connection() as conn:
            await conn.execute(_DROP_REPAIRS, (link_id,))

    async def forget_events(self, link_id: str) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_FORGET_EVENTS, (link_id,))
            return cur.rowcount

    async def release_grant(
        self, account: str, link_id: str, revoke: Callable[[str], Awaitable[bool]]
    ) -> tuple[bool, list[str]]:
        """The disconnected link no longer uses its account's grant: revoke it at Google
        (`revoke(refresh_token)`) unless another link still uses it, decided with the
        grant's row locked until the revoke is recorded, so that a link connected or
        selected meanwhile is either seen here or stored after (and told). (Whether it was
        revoked, the other links that use it.)"""
        async with self.pool.connection() as conn, conn.transaction():
            grant = await (await conn.execute(_LOCK_GRANT, (account,))).fetchone()
            if grant is None or grant["refresh_token_enc"] is None:
                return False, []
            users = await (await conn.execute(_GRANT_USERS, (account, link_id))).fetchall()
            if users:
                return False, [row["id"] for row in users]
            revoked = await revoke(self.cipher.decrypt(grant["refresh_token_enc"]))
            await conn.execute(
                _REVOKED, (f"revoked at Google by the disconnect of {link_id}", account)
            )
        return revoked, []

    async def finish_disconnect(self, link_id: str, reason: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FINISH_DISCONNECT, (reason, link_id))

    # --- single-use forms ---------------------------------------------------------------

    async def use_form_token(self, jti: str, link_id: str, expires_at: datetime) -> bool:
        """Record the use of a form's token: False when it was used before (a replay)."""
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET_OLD_FORM_TOKENS)
            cur = await conn.execute(_USE_FORM_TOKEN, (jti, link_id, expires_at))
            return await cur.fetchone() is not None

    # --- keys ---------------------------------------------------------------------------

    async def rotate_key(self) -> tuple[int, int, int]:
        """Re-encrypt every stored secret under the first key: (grants, the live links
        that use them, states)."""
        async with self.pool.connection() as conn, conn.transaction():
            grants = await self._rotate(conn, _TOKEN_ROWS, _REENCRYPT_GRANT)
            states = await self._rotate(conn, _STATE_ROWS, _REENCRYPT_STATE)
            row = await (await conn.execute(_LINKS_OF_GRANTS)).fetchone()
        return grants, int(row["n"]) if row else 0, states

    async def _rotate(self, conn: Connection, select: str, update: str) -> int:
        rows = await (await conn.execute(select)).fetchall()
        for row in rows:
            values = list(row.values())
            key, secrets = values[0], values[1:]
            fresh = [self.cipher.rotate(v) if v else None for v in secrets]
            await conn.execute(update, (*fresh, key))
        return len(rows)
