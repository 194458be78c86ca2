"""Token adapter: an access token for a Google account, refreshed per the seed's rules.

The tokens are the account's grant's (`google_grants`: one per Google account, shared by
all its links, so that an account connected to many activities depends on one refresh
token, not one per link, of the 100 Google keeps per account and OAuth client).

- More than `token_refresh_margin_s` (5 minutes) left: used as is.
- Within the margin or expired: refreshed with the stored refresh token (google-auth's
  OAuth refresh against CALSYNC_GOOGLE_TOKEN_URL); new token and expiry saved; the refresh
  token is kept when Google returns none.
- Refresh refused (`invalid_grant`: access revoked, expired, unused for six months):
  TokenRefreshFailed with Google's `error_description`, and the grant is marked refused.

Refreshes are single-flight per grant within a process (an asyncio lock per account) and
across the consumer group (the grant row is locked while refreshing, then re-read). A
refresh token Google refused is remembered, in this process and in the grant's row, so
work already queued for any link of the account fails without calling Google again; a
reconnect stores a new refresh token, which is tried afresh.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import google_auth_httplib2
import httplib2
import structlog
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2.credentials import Credentials
from pydantic import SecretStr

from consumer.adapters.metrics import Metrics
from consumer.domain.errors import TokenRefreshFailed, printable
from consumer.domain.models import LinkTokens, StoredGrant

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TokenConfig:
    """Google's token endpoint and our OAuth client (CALSYNC_GOOGLE_TOKEN_URL,
    _GOOGLE_CLIENT_ID, _GOOGLE_CLIENT_SECRET, _GOOGLE_CA_BUNDLE, _GOOGLE_TIMEOUT_S), and how
    close to its expiry a token is refreshed (CALSYNC_TOKEN_REFRESH_MARGIN_S)."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    ca_bundle: str | None
    timeout_s: float
    refresh_margin_s: float


class LockedGrant(Protocol):
    """An account's grant with its row locked (one refresh per grant in the group) until the
    `locked_grant` block ends, and what a refresh writes back under that lock."""

    grant: StoredGrant | None  # None: no grant (or revoked)

    async def save(self, tokens: LinkTokens, refresh_token_changed: bool) -> None: ...

    async def refuse(self, reason: str) -> None: ...


class GrantStore(Protocol):
    def locked_grant(self, account: str) -> AbstractAsyncContextManager[LockedGrant]: ...


class TokenProvider:
    def __init__(self, config: TokenConfig, grants: GrantStore, metrics: Metrics) -> None:
        self._metrics = metrics
        self._config = config
        self._grants = grants
        self._margin = timedelta(seconds=config.refresh_margin_s)
        self._cache: dict[str, LinkTokens] = {}  # per account (its grant)
        self._refused: dict[str, str] = {}  # account -> refresh token Google refused
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="oauth")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, account: str) -> None:
        """Drop what is cached for an account's grant (it was replaced, refused, revoked)."""
        self._cache.pop(account, None)
        self._refused.pop(account, None)

    def _usable(self, tokens: LinkTokens | None, rejected: str | None) -> str | None:
        if tokens is None or not tokens.access_token or tokens.expires_at is None:
            return None
        if tokens.access_token == rejected:
            return None
        if tokens.expires_at - datetime.now(UTC) > self._margin:
            return tokens.access_token
        return None

    async def access_token(
        self, account: str, stored: LinkTokens | None, rejected: str | None = None
    ) -> str:
        """A token of the account's grant with more than the margin left. `stored`: the
        grant's tokens as a caller read them (None: read here). `rejected`: one Google
        just refused."""
        for tokens in (self._cache.get(account), stored):
            if (token := self._usable(tokens, rejected)) is not None:
                return token
        async with self._locks[account]:
            if (token := self._usable(self._cache.get(account), rejected)) is not None:
                return token
            return await self._refresh(account, rejected)

    async def _refresh(self, account: str, rejected: str | None) -> str:
        refused: TokenRefreshFailed | None = None
        async with self._grants.locked_grant(account) as locked:
            grant = locked.grant
            if grant is None:
                raise TokenRefreshFailed("no_grant", permanent=True)
            current = grant.tokens
            if grant.refused is not None:  # refused before, here or in another process
                reason, _, description = grant.refused.partition(": ")
                raise TokenRefreshFailed(reason, permanent=True, description=description or None)
            if (token := self._usable(current, rejected)) is not None:
                self._cache[account] = current  # another consumer refreshed it meanwhile
                return token
            if self._refused.get(account) == current.refresh_token:
                raise TokenRefreshFailed("invalid_grant", permanent=True)
            loop = asyncio.get_running_loop()
            try:
                fresh = await loop.run_in_executor(self._pool, self._grant, current.refresh_token)
            except TokenRefreshFailed as exc:
                self._metrics.token_refreshes.labels(
                    "unavailable" if exc.retriable else "refused"
                ).inc()
                if exc.retriable:
                    raise
                self._refused[account] = current.refresh_token
                # Under the row's lock, committed with it (raised after): a grant stored
                # meanwhile (a reconnect) waits for this, and replaces it after.
                await locked.refuse(exc.explained)
                refused = exc
            else:
                self._metrics.token_refreshes.labels("ok").inc()
                await locked.save(fresh, fresh.refresh_token != current.refresh_token)
        if refused is not None:
            raise refused
        self._cache[account] = fresh
        log.info("token_refreshed", account=account, expires_at=fresh.expires_at)
        assert fresh.access_token is not None
        return fresh.access_token

    def _grant(self, refresh_token: str) -> LinkTokens:
        credentials = Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=refresh_token,
            token_uri=self._config.token_url,
            client_id=self._config.client_id,
            client_secret=self._config.client_secret.get_secret_value(),
        )
        request = google_auth_httplib2.Request(
            httplib2.Http(timeout=self._config.timeout_s, ca_certs=self._config.ca_bundle)
        )
        try:
            credentials.refresh(request)  # type: ignore[no-untyped-call]
        except RefreshError as exc:
            # args[1] is the token endpoint's JSON answer, e.g. {"error": "invalid_grant",
            # "error_description": "Token has been expired or revoked."}
            detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            reason = printable(str(detail.get("error") or "refresh_refused"), 100)
            # Google's words say which (revoked, expired, unused for six months): the
            # person who fixes it needs to know. Plain text from Google, never a token.
            said = detail.get("error_description")
            description = printable(str(said), 300) if said else None
            # Only `invalid_grant` says the grant itself is gone (revoked, expired, password
            # changed): the account's links need their owner. Anything else (a 502, an HTML
            # error page, our own client refused) is an outage of ours or Google's: retried,
            # then repaired, and the links stay active.
            raise TokenRefreshFailed(
                reason, permanent=reason == "invalid_grant", description=description
            ) from None
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
