"""The sandbox's Google OAuth 2.0 server: consent, code exchange, refresh, revoke.

It follows what Google documents and does for web server applications:
- `GET /o/oauth2/auth` answers with a redirect to `redirect_uri` carrying `code` and `state`
  (or `error=access_denied`). A person picks an account and consents on pages (an account
  chooser, `login_hint` first, then Allow or Deny: links, so a browser test clicks through
  them); a program says who it is with `sandbox_account` (and may refuse with
  `sandbox_decision=deny`, or untick scopes with `sandbox_scopes`, as granular consent
  allows) and is redirected at once.
- A code is single-use, expires after 10 minutes, is bound to the client, the redirect URI and
  the PKCE challenge (S256): anything else is `invalid_grant`.
- A refresh token is returned only for `access_type=offline`, and on a later consent only
  with `prompt=consent`, as Google does; an account keeps at most `refresh_token_limit`
  (Google: 100 per account and client), a new one silently voiding the oldest.
- An OpenID `id_token` (RS256 JWT with iss, aud, sub, email, email_verified) comes with the
  tokens when `openid` was granted.
- `POST /revoke` with any token of a grant revokes the whole grant (all its tokens).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import google.auth.crypt
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://accounts.google.com"
CODE_LIFETIME_S = 600
AUTH_PATH = "/o/oauth2/auth"
_SCOPES = "https://www.googleapis.com/auth/"
_SCOPE_WORDS = {
    "openid": "Associate you with your personal info on Google",
    "email": "See your primary Google Account email address",
    f"{_SCOPES}userinfo.email": "See your primary Google Account email address",
    f"{_SCOPES}calendar.events": "View and edit events on all your calendars",
    f"{_SCOPES}calendar.calendarlist.readonly": (
        "See the list of Google calendars you're subscribed to"
    ),
}
_PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;background:#f0f4f9;color:#1f1f1f}"
    "main{max-width:28rem;margin:2rem auto;background:#fff;border-radius:1rem;padding:1.5rem}"
    "h1{font-size:1.4rem}ul{padding:0;list-style:none}li{margin:.5rem 0}"
    "a.account,a.button{display:block;padding:.75rem 1rem;border:1px solid #747775;"
    "border-radius:.5rem;color:#1f1f1f;text-decoration:none;line-height:1.25}"
    "a.button{display:inline-block;margin-right:.5rem}a.allow{background:#0b57d0;color:#fff;"
    "border-color:#0b57d0}a:focus-visible{outline:3px solid #f9ab00;outline-offset:2px}"
    ".scopes li{list-style:disc;margin-left:1.25rem}.meta{color:#444746;font-size:.9rem}"
)


class ConsentError(Exception):
    """A request Google's consent page would refuse outright (shown as an error page)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass
class AuthorizationCode:
    email: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    offline: bool
    force_consent: bool
    code_challenge: str | None
    expires_at: float


class OAuthError(Exception):
    """An error answer of the OAuth token endpoint (RFC 6749 section 5.2)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class TokenIssuer(Protocol):
    """What the OAuth server needs of the sandbox's state (`SandboxState`): its accounts and
    clients, and issuing and revoking their tokens. (The state builds on this module, not the
    other way round.)"""

    lock: Any
    accounts: dict[str, Any]
    access_tokens: dict[str, tuple[str, float]]
    issued: list[str]
    clients: dict[str, str]
    token_lifetime_s: int
    refresh_token_limit: int

    def issue_access_token(
        self, email: str, lifetime_s: float | None = None
    ) -> tuple[str, float]: ...

    def revoke(self, email: str) -> None: ...


@dataclass
class OAuthServer:
    state: TokenIssuer
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    consented: set[tuple[str, str]] = field(default_factory=set)  # (email, client_id)
    _signer: google.auth.crypt.RSASigner | None = None

    def _id_token_signer(self) -> google.auth.crypt.RSASigner:
        if self._signer is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._signer = google.auth.crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
                pem, key_id="sandbox-1"
            )
        return self._signer

    def consent_page(self, query: dict[str, str]) -> str | None:
        """The page a person sees at this step (the account chooser, then the consent
        screen), or None when the request already says who consents and how (a redirect)."""
        self._check(query)
        email = query.get("sandbox_account", "")
        if email and (query.get("sandbox_step") != "consent" or query.get("sandbox_decision")):
            return None
        original = {k: v for k, v in query.items() if not k.startswith("sandbox_")}
        client = html.escape(query.get("client_id", ""))
        if not email:
            with self.state.lock:
                accounts = sorted(self.state.accounts)
            hint = query.get("login_hint")
            if hint in accounts:
                accounts.remove(hint)
                accounts.insert(0, hint)
            items = "".join(
                f'<li><a class="account" href="{html.escape(_link(original, account))}">'
                f"{html.escape(account)}</a></li>"
                for account in accounts
            )
            return _page(
                "Choose an account",
                f'<p>to continue to <b>{client}</b></p><ul aria-label="Accounts">{items}</ul>',
            )
        with self.state.lock:
            if email not in self.state.accounts:
                raise ConsentError(
                    "invalid_request", f"sandbox: no account {email!r} to sign in with"
                )
        scopes = "".join(
            f"<li>{html.escape(_SCOPE_WORDS.get(s, s))}</li>"
            for s in query.get("scope", "").split()
        )
        allow = _link(original, email, "allow")
        deny = _link(original, email, "deny")
        return _page(
            f"{client} wants to access your Google Account",
            f'<p class="meta">{html.escape(email)}</p>'
            f'<p>This will allow {client} to:</p><ul class="scopes">{scopes}</ul>'
            f'<p><a class="button" id="deny" href="{html.escape(deny)}">Deny</a>'
            f'<a class="button allow" id="allow" href="{html.escape(allow)}">Allow'
            "</a></p>",
        )

    def _check(self, query: dict[str, str]) -> None:
        """What Google refuses before showing anything (an error page)."""
        client_id = query.get("client_id", "")
        if not client_id or (self.state.clients and client_id not in self.state.clients):
            raise ConsentError("invalid_client", "The OAuth client was not found.")
        if not query.get("redirect_uri", ""):
            raise ConsentError("invalid_request", "Missing required parameter: redirect_uri")
        if query.get("response_type") != "code":
            raise ConsentError(
                "unsupported_response_type", f"Invalid response_type: {query.get('response_type')}"
            )
        if not query.get("scope", "").split():
            raise ConsentError("invalid_request", "Missing required parameter: scope")
        if query.get("code_challenge") and query.get("code_challenge_method", "plain") != "S256":
            raise ConsentError("invalid_request", "Only S256 code challenges are accepted here")

    def authorize(self, query: dict[str, str]) -> str:
        """The consent step; returns the URL Google redirects the browser to."""
        client_id = query.get("client_id", "")
        if not client_id or (self.state.clients and client_id not in self.state.clients):
            raise ConsentError("invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri:
            raise ConsentError("invalid_request", "Missing required parameter: redirect_uri")
        if query.get("response_type") != "code":
            raise ConsentError(
                "unsupported_response_type", f"Invalid response_type: {query.get('response_type')}"
            )
        scopes = query.get("scope", "").split()
        if not scopes:
            raise ConsentError("invalid_request", "Missing required parameter: scope")
        challenge = query.get("code_challenge")
        if challenge and query.get("code_challenge_method", "plain") != "S256":
            raise ConsentError("invalid_request", "Only S256 code challenges are accepted here")
        email = query.get("sandbox_account", "")
        with self.state.lock:
            if email not in self.state.accounts:
                raise ConsentError(
                    "invalid_request", f"sandbox: no account {email!r} to sign in with"
                )
            answer: dict[str, str] = {}
            if query.get("state") is not None:
                answer["state"] = query["state"]
            if query.get("sandbox_decision") == "deny":
                answer["error"] = "access_denied"
                return _with_query(redirect_uri, answer)
            granted = query.get("sandbox_scopes", "").split() or scopes
            code = "4/0sandbox-" + secrets.token_urlsafe(32)
            self.codes[code] = AuthorizationCode(
                email=email,
                client_id=client_id,
                redirect_uri=redirect_uri,
                scopes=[s for s in scopes if s in granted],
                offline=query.get("access_type") == "offline",
                force_consent="consent" in query.get("prompt", "").split(),
                code_challenge=challenge,
                expires_at=time.time() + CODE_LIFETIME_S,
            )
            answer.update(code=code, scope=" ".join(self.codes[code].scopes), prompt="consent")
            return _with_query(redirect_uri, answer)

    def exchange_code(self, form: dict[str, str]) -> dict[str, Any]:
        with self.state.lock:
            grant = self.codes.pop(form.get("code", ""), None)  # single use
            if grant is None or grant.expires_at < time.time():
                raise OAuthError(400, "invalid_grant", "Malformed auth code.")
            if grant.client_id != form.get("client_id"):
                raise OAuthError(400, "invalid_grant", "Unauthorized")
            if grant.redirect_uri != form.get("redirect_uri"):
                raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
            if grant.code_challenge is not None:
                verifier = form.get("code_verifier", "")
                if not verifier:
                    raise OAuthError(400, "invalid_grant", "Missing code verifier.")
                if _s256(verifier) != grant.code_challenge:
                    raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
            account = self.state.accounts[grant.email]
            token, _ = self.state.issue_access_token(grant.email)
            answer: dict[str, Any] = {
                "access_token": token,
                "expires_in": self.state.token_lifetime_s,
                "token_type": "Bearer",
                "scope": " ".join(grant.scopes),
            }
            first_consent = (grant.email, grant.client_id) not in self.consented
            if grant.offline and (first_consent or grant.force_consent):
                refresh = "1//sandbox-" + secrets.token_urlsafe(32)
                account.add_refresh_token(refresh, self.state.refresh_token_limit)
                self.state.issued.append(refresh)
                answer["refresh_token"] = refresh
            self.consented.add((grant.email, grant.client_id))
            if "openid" in grant.scopes:
                answer["id_token"] = self._id_token(grant)
            return answer

    def _id_token(self, grant: AuthorizationCode) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": grant.client_id,
            "azp": grant.client_id,
            "sub": str(int(hashlib.sha256(grant.email.encode()).hexdigest()[:15], 16)),
            "iat": now,
            "exp": now + 3600,
        }
        if any(
            s in grant.scopes for s in ("email", "https://www.googleapis.com/auth/userinfo.email")
        ):
            payload.update(email=grant.email, email_verified=True)
        signed: bytes = google.auth.jwt.encode(  # type: ignore[no-untyped-call]
            self._id_token_signer(), payload
        )
        return signed.decode()

    def revoke(self, token: str) -> None:
        with self.state.lock:
            owner = next(
                (a.email for a in self.state.accounts.values() if token in a.refresh_tokens), None
            )
            if owner is None and token in self.state.access_tokens:
                owner = self.state.access_tokens[token][0]
            if owner is None:
                raise OAuthError(400, "invalid_token", "Token expired or revoked")
            self.state.revoke(owner)
            self.consented = {c for c in self.consented if c[0] != owner}


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _with_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _link(original: dict[str, str], account: str, decision: str | None = None) -> str:
    """The consent URL again, with the person's next step in it."""
    step = {"sandbox_account": account, "sandbox_step": "consent"}
    if decision:
        step["sandbox_decision"] = decision
    return AUTH_PATH + "?" + urlencode({**original, **step})


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} - Google (sandbox)</title>"
        f"<style>{_PAGE_STYLE}</style></head><body><main>"
        '<p class="meta">Sign in with Google <i>(the calendar-sync sandbox)</i></p>'
        f"<h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
