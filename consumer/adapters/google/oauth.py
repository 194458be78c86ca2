"""Google adapter for the OAuth 2.0 web-server flow: consent URL, code exchange, revocation.

google-auth-oauthlib's `Flow` builds the consent URL (with a PKCE S256 challenge) and
exchanges the code (requests-oauthlib under it); itsdangerous signs the `state` with an
expiry. The state's nonce is also recorded server-side so that a state is used once.

The account's email comes from the OpenID `id_token` of the token answer. It is read without
checking its signature, as Google's OpenID Connect guide allows for a token received
directly from Google's token endpoint over HTTPS with our client secret; its audience,
issuer, expiry and `email_verified` are still checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import google.auth.jwt
import requests
from google_auth_oauthlib.flow import Flow
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from oauthlib.oauth2 import WebApplicationClient
from oauthlib.oauth2.rfc6749.errors import InsecureTransportError, OAuth2Error
from pydantic import SecretStr

from consumer.adapters.crypto import TokenCipher
from consumer.domain.errors import OAuthRefused
from consumer.domain.models import LinkTokens
from consumer.domain.records import GrantedAccount

EVENTS_SCOPE = "https://www.googleapis.com/auth/calendar.events"
CALENDAR_LIST_SCOPE = "https://www.googleapis.com/auth/calendar.calendarlist.readonly"
EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"
# Least privilege: write events, read the calendar list, know who the account is.
SCOPES = ["openid", EMAIL_SCOPE, EVENTS_SCOPE, CALENDAR_LIST_SCOPE]
_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})


@dataclass(frozen=True)
class OAuthConfig:
    """Our OAuth client and Google's endpoints (CALSYNC_GOOGLE_CLIENT_ID, _CLIENT_SECRET,
    _AUTH_URL, _TOKEN_URL, _REVOKE_URL, _CA_BUNDLE, _TIMEOUT_S), where Google sends the browser
    back (CALSYNC_HTTP_PUBLIC_URL + /oauth/callback), and how long a started connection may
    take (CALSYNC_OAUTH_STATE_TTL_S)."""

    client_id: str
    client_secret: SecretStr
    auth_url: str
    token_url: str
    revoke_url: str
    redirect_uri: str
    ca_bundle: str | None
    timeout_s: float
    state_ttl_s: float


class OAuthClient:
    def __init__(self, config: OAuthConfig, cipher: TokenCipher) -> None:
        self._config = config
        # itsdangerous signs with the last key and accepts all: newest last.
        self._signer = URLSafeTimedSerializer(
            list(reversed(cipher.keys)), salt="calsync-oauth-state"
        )
        self._verify: bool | str = config.ca_bundle or True

    def _flow(self, code_verifier: str | None = None) -> Flow:
        c = self._config
        config = {
            "web": {
                "client_id": c.client_id,
                "client_secret": c.client_secret.get_secret_value(),
                "auth_uri": c.auth_url,
                "token_uri": c.token_url,
                "redirect_uris": [c.redirect_uri],
            }
        }
        return Flow.from_client_config(
            config,
            scopes=SCOPES,
            redirect_uri=c.redirect_uri,
            code_verifier=code_verifier,
            autogenerate_code_verifier=True,
        )

    def authorization_url(
        self, nonce: str, login_hint: str | None = None
    ) -> tuple[str, str, datetime]:
        """The consent URL, the PKCE verifier to keep, and when the state expires.
        `login_hint` (an email) lets Google's account chooser offer that account first."""
        flow = self._flow()
        hint = {"login_hint": login_hint} if login_hint else {}
        url, _ = flow.authorization_url(
            access_type="offline", prompt="consent", state=self._signer.dumps(nonce), **hint
        )
        expires_at = datetime.now(UTC) + timedelta(seconds=self._config.state_ttl_s)
        assert flow.code_verifier is not None
        return url, flow.code_verifier, expires_at

    def read_state(self, state: str) -> str:
        """The nonce a state carries, if we signed it and it has not expired."""
        try:
            nonce = self._signer.loads(state, max_age=int(self._config.state_ttl_s))
        except SignatureExpired:
            raise OAuthRefused(
                "state_expired",
                "the connection request expired: start it again (calsync links connect)",
            ) from None
        except BadSignature:
            raise OAuthRefused(
                "state_invalid", "the state parameter was not issued by this service"
            ) from None
        if not isinstance(nonce, str):
            raise OAuthRefused("state_invalid", "the state parameter is malformed")
        return nonce

    def exchange(self, code: str, code_verifier: str) -> GrantedAccount:
        """Trade the authorization code for tokens (blocking: run it in a thread)."""
        flow = self._flow(code_verifier)
        try:
            token: dict[str, Any] = flow.fetch_token(
                code=code, verify=self._verify, timeout=self._config.timeout_s
            )
        except OAuth2Error as exc:
            raise OAuthRefused(
                "code_refused",
                f"Google refused the authorization code: "
                f"{exc.error}{': ' + exc.description if exc.description else ''}",
            ) from None
        except Warning as exc:  # oauthlib: the granted scopes differ from those asked for
            granted = set(getattr(exc, "new_scope", None) or [])
            missing = sorted({EVENTS_SCOPE, CALENDAR_LIST_SCOPE, EMAIL_SCOPE} - granted)
            raise OAuthRefused(
                "scope_not_granted",
                "the account did not grant access to: " + ", ".join(missing or sorted(SCOPES)),
            ) from None
        except requests.RequestException as exc:
            raise OAuthRefused(
                "google_unreachable",
                f"Google's token endpoint did not answer: {type(exc).__name__}",
            ) from None
        refresh_token = token.get("refresh_token")
        if not refresh_token:
            raise OAuthRefused(
                "no_refresh_token", "Google returned no refresh token; start the connection again"
            )
        email = self._email(token.get("id_token"))
        expires_at = datetime.fromtimestamp(float(token.get("expires_at", time.time())), UTC)
        scopes = token.get("scope") or []
        return GrantedAccount(
            email=email,
            tokens=LinkTokens(refresh_token, token.get("access_token"), expires_at),
            scopes=list(scopes) if not isinstance(scopes, str) else scopes.split(),
        )

    def _email(self, id_token: Any) -> str:
        if not isinstance(id_token, str):
            raise OAuthRefused("no_id_token", "Google returned no OpenID id_token")
        try:
            claims: dict[str, Any] = google.auth.jwt.decode(  # type: ignore[no-untyped-call]
                id_token, verify=False
            )
        except ValueError:
            raise OAuthRefused("bad_id_token", "Google's id_token is malformed") from None
        if claims.get("aud") != self._config.client_id:
            raise OAuthRefused("bad_id_token", "the id_token was issued to another client")
        if claims.get("iss") not in _ISSUERS or float(claims.get("exp", 0)) < time.time():
            raise OAuthRefused("bad_id_token", "the id_token is expired or not from Google")
        email = claims.get("email")
        if not email or claims.get("email_verified") is not True:
            raise OAuthRefused("no_verified_email", "the account has no verified email")
        return str(email)

    def revoke(self, token: str) -> bool:
        """Revoke the grant at Google (blocking). True when Google no longer honours it."""
        # oauthlib builds the RFC 7009 request (and refuses a revocation URL without TLS).
        try:
            url, headers, body = WebApplicationClient(
                self._config.client_id
            ).prepare_token_revocation_request(
                self._config.revoke_url, token, token_type_hint="refresh_token"
            )
        except InsecureTransportError:
            raise OAuthRefused(
                "insecure_transport", "CALSYNC_GOOGLE_REVOKE_URL must be https"
            ) from None
        try:
            answer = requests.post(
                url,
                data=body,
                headers=headers,
                verify=self._verify,
                timeout=self._config.timeout_s,
            )
        except requests.RequestException as exc:
            raise OAuthRefused(
                "google_unreachable",
                f"Google's revoke endpoint did not answer: {type(exc).__name__}",
            ) from None
        if answer.status_code == 200:
            return True
        # invalid_token: already revoked or expired, which is what was wanted.
        return answer.status_code == 400 and "invalid_token" in answer.text
