"""The pages' signed tokens and cookies (itsdangerous), keyed by CALSYNC_TOKEN_KEY like the
OAuth `state`. Pure: no I/O; the single use of a form token is recorded by the caller.

- A calendar-choice form carries a token bound to its link, to the browser it was shown to
  (the hash of a random value in the `calsync_choice` cookie: a signed double submit), with
  a unique id (`jti`, recorded when used, so a replay is refused) and a short life.
- A progress page's URL carries a view token naming its backfills (read-only, longer life).
- Signing in to the pages with the admin token sets a signed, expiring session cookie
  holding a CSRF secret that every form of the session repeats; it also carries a digest of
  the admin token, so changing CALSYNC_ADMIN_TOKEN signs every session out, and a random
  session id, which the caller records (`page_sessions`) and deletes on signing out: a
  signature alone does not make a live session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from consumer.domain.errors import TokenRefused

SESSION_COOKIE = "calsync_session"
BINDING_COOKIE = "calsync_choice"
LOGIN_COOKIE = "calsync_login"


@dataclass(frozen=True)
class FormToken:
    link_id: str
    jti: str
    expires_at: datetime


@dataclass(frozen=True)
class Session:
    csrf: str
    id: str  # recorded while the session lives (the caller checks it)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (None never equals anything)."""
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def new_secret() -> str:
    return secrets.token_urlsafe(24)


class PageSigner:
    def __init__(
        self,
        keys: Sequence[str],
        admin_token: str,
        form_ttl_s: float,
        view_ttl_s: float,
        session_ttl_s: float,
    ) -> None:
        newest_last = list(reversed(keys))  # itsdangerous signs with the last key
        self._forms = URLSafeTimedSerializer(newest_last, salt="calsync-calendar-choice")
        self._views = URLSafeTimedSerializer(newest_last, salt="calsync-backfill-view")
        self._sessions = URLSafeTimedSerializer(newest_last, salt="calsync-session")
        self._admin = digest(admin_token)[:32]
        self.form_ttl_s = form_ttl_s
        self.view_ttl_s = view_ttl_s
        self.session_ttl_s = session_ttl_s

    # --- the calendar choice --------------------------------------------------------------

    def form_token(self, link_id: str, binding: str) -> str:
        return self._forms.dumps(
            {"l": link_id, "j": secrets.token_urlsafe(16), "b": digest(binding)}
        )

    def read_form_token(self, token: str | None, link_id: str, binding: str | None) -> FormToken:
        if not token:
            raise TokenRefused(
                "form_invalid", "the form carries no token: open the calendar choice again"
            )
        try:
            payload, signed_at = self._forms.loads(
                token, max_age=int(self.form_ttl_s), return_timestamp=True
            )
        except SignatureExpired:
            raise TokenRefused(
                "form_expired", "this calendar choice expired: open it again"
            ) from None
        except BadSignature:
            raise TokenRefused("form_invalid", "this form was not issued by this service") from None
        if not isinstance(payload, dict) or payload.get("l") != link_id:
            raise TokenRefused("form_invalid", "this form was issued for another link")
        if not same(digest(binding) if binding else None, str(payload.get("b"))):
            raise TokenRefused(
                "form_not_this_browser",
                "this form was shown to another "
                "browser (or this browser's cookies were cleared): open the "
                "calendar choice again",
            )
        expires_at = signed_at.astimezone(UTC) + timedelta(seconds=self.form_ttl_s)
        return FormToken(link_id, str(payload["j"]), expires_at)

    # --- progress pages ------------------------------------------------------------------

    def view_token(self, backfill_ids: Sequence[int]) -> str:
        return self._views.dumps(sorted(backfill_ids))

    def can_view(self, token: str | None, backfill_ids: Sequence[int]) -> bool:
        if not token:
            return False
        try:
            allowed: Any = self._views.loads(token, max_age=int(self.view_ttl_s))
        except BadSignature:
            return False
        return isinstance(allowed, list) and sorted(backfill_ids) == allowed

    # --- sessions ------------------------------------------------------------------------

    def new_session(self) -> tuple[str, Session]:
        session = Session(csrf=new_secret(), id=new_secret())
        return self._sessions.dumps({"c": session.csrf, "a": self._admin, "s": session.id}), session

    def read_session(self, cookie: str | None) -> Session | None:
        """The session a cookie signed by us names (whether it still lives is the caller's
        to ask); None for no cookie, a forged or expired one, one signed before the admin
        token changed, or one from before sessions had ids."""
        if not cookie:
            return None
        try:
            payload: Any = self._sessions.loads(cookie, max_age=int(self.session_ttl_s))
        except BadSignature:  # also expired
            return None
        if not isinstance(payload, dict) or not same(payload.get("a"), self._admin):
            return None
        if not isinstance(payload.get("s"), str) or not payload["s"]:
            return None
        return Session(csrf=str(payload.get("c")), id=payload["s"])
