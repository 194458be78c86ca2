"""Token adapter: an access token for a link, refreshed per the seed's rules.

- More than `token_refresh_margin_s` (5 minutes) left: used as is.
- Within the margin or expired: refreshed with the stored refresh token (google-auth's
  OAuth refresh against CALSYNC_GOOGLE_TOKEN_URL); new token and expiry saved; the refresh
  token is kept when Google returns none.
- Refresh refused (`invalid_grant`: access revoked): TokenRefreshFailed.

Refreshes are single-flight per link within a process (an asyncio lock) and across the
consumer group (the link row is locked while refreshing, then re-read). A refresh token
Google refused is remembered, so work already queued for the link fails without calling
Google again; a reconnect stores a new refresh token, which is tried afresh.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import google_auth_httplib2
import httplib2
import structlog
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2.credentials import Credentials

from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.repository import Repository
from consumer.domain.errors import TokenRefreshFailed
from consumer.domain.models import LinkTokens
from consumer.settings import Settings

log = structlog.get_logger(__name__)


class TokenProvider:
    def __init__(
        self, settings: Settings, repository: Repository, metrics: Metrics | None = None
    ) -> None:
        # Bootstrap hands in the process's metrics; a provider built alone keeps its own.
        self._metrics = metrics or Metrics()
        self._settings = settings
        self._repository = repository
        self._margin = timedelta(seconds=settings.token_refresh_margin_s)
        self._cache: dict[str, LinkTokens] = {}
        self._refused: dict[str, str] = {}  # link id -> refresh token Google refused
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="oauth")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, link_id: str) -> None:
        """Drop what is cached for a link (it was reconnected or disconnected)."""
        self._cache.pop(link_id, None)
        self._refused.pop(link_id, None)

    def _usable(self, tokens: LinkTokens | None, rejected: str | None) -> str | None:
        if tokens is None or not tokens.access_token or tokens.expires_at is None:
            return None
        if tokens.access_token == rejected:
            return None
        if tokens.expires_at - datetime.now(UTC) > self._margin:
            return tokens.access_token
        return None

    async def access_token(
        self, link_id: str, stored: LinkTokens | None, rejected: str | None = None
    ) -> str:
        """A token with more than the margin left. `rejected`: one Google just refused."""
        for tokens in (self._cache.get(link_id), stored):
            if (token := self._usable(tokens, rejected)) is not None:
                return token
        async with self._locks[link_id]:
            if (token := self._usable(self._cache.get(link_id), rejected)) is not None:
                return token
            return await self._refresh(link_id, rejected)

    async def _refresh(self, link_id: str, rejected: str | None) -> str:
        async with self._repository.pool.connection() as conn, conn.transaction():
            current = await self._repository.lock_link_tokens(conn, link_id)
            if current is None:
                raise TokenRefreshFailed("link_has_no_tokens", permanent=True)
            if (token := self._usable(current, rejected)) is not None:
                self._cache[link_id] = current  # another consumer refreshed it meanwhile
                return token
            if self._refused.get(link_id) == current.refresh_token:
                raise TokenRefreshFailed("invalid_grant", permanent=True)
            loop = asyncio.get_running_loop()
            try:
                fresh = await loop.run_in_executor(self._pool, self._grant, current.refresh_token)
            except TokenRefreshFailed as exc:
                self._metrics.token_refreshes.labels(
                    "unavailable" if exc.retriable else "refused"
                ).inc()
                if not exc.retriable:
                    self._refused[link_id] = current.refresh_token
                raise
            self._metrics.token_refreshes.labels("ok").inc()
            await self._repository.save_tokens(
                conn,
                link_id,
                fresh,
                refresh_token_changed=fresh.refresh_token != current.refresh_token,
            )
        self._cache[link_id] = fresh
        log.info("token_refreshed", link_id=link_id, expires_at=fresh.expires_at)
        assert fresh.access_token is not None
        return fresh.access_token

    def _grant(self, refresh_token: str) -> LinkTokens:
        credentials = Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=refresh_token,
            token_uri=self._settings.google_token_url,
            client_id=self._settings.google_client_id,
            client_secret=self._settings.google_client_secret.get_secret_value(),
        )
        request = google_auth_httplib2.Request(
            httplib2.Http(
                timeout=self._settings.google_timeout_s, ca_certs=self._settings.google_ca_bundle
            )
        )
        try:
            credentials.refresh(request)  # type: ignore[no-untyped-call]
        except RefreshError as exc:
            # args[1] is the token endpoint's JSON answer, e.g. {"error": "invalid_grant"}
            detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            reason = str(detail.get("error") or "refresh_refused")
            # Only `invalid_grant` says the grant itself is gone (revoked, expired, password
            # changed): the link needs its owner. Anything else (a 502, an HTML error page,
            # our own client refused) is an outage of ours or Google's: retried, then
            # repaired, and the link stays active.
            raise TokenRefreshFailed(reason, permanent=reason == "invalid_grant") from None
        except (TransportError, OSError, httplib2.HttpLib2Error) as exc:
            raise TokenRefreshFailed(
                f"token_endpoint_unreachable: {type(exc).__name__}", permanent=False
            ) from None
        expiry = credentials.expiry  # google-auth: naive UTC
        expires_at = expiry.replace(tzinfo=UTC) if expiry else None
        return LinkTokens(
            refresh_token=credentials.refresh_token or refresh_token,
            access_token=credentials.token,
            expires_at=expires_at,
        )
