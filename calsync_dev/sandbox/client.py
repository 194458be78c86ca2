"""A small client of the sandbox's admin API, for tests, the demo and the bench."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class CalendarCaller:
    """Calendar v3 calls as one user makes them (a Bearer access token), over HTTPS with the
    sandbox's CA: what a test uses to speak to the sandbox as Google's clients do, without the
    service's adapter. Answers (status, parsed JSON body or None); never raises for a status."""

    def __init__(self, client: SandboxClient, access_token: str) -> None:
        self._client = client
        self.access_token = access_token

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | list[tuple[str, Any]] | None = None,
    ) -> tuple[int, Any]:
        """`path` below /calendar/v3/, e.g. "calendars/{id}/events" (ids already quoted, or
        use `events_path`); `query` a dict or pairs (repeat a name for repeated params)."""
        url = f"{self._client.base_url}/calendar/v3/{path.lstrip('/')}"
        if query:
            url += "?" + urlencode(query)
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Authorization": f"Bearer {self.access_token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with self._client._opener.open(request, timeout=30) as answer:
                status, raw = int(answer.status), answer.read()
        except urllib.error.HTTPError as exc:
            status, raw = int(exc.code), exc.read()
        return status, (json.loads(raw) if raw else None)

    @staticmethod
    def events_path(calendar_id: str, *rest: str) -> str:
        return "/".join([f"calendars/{quote(calendar_id, safe='')}/events", *rest])


class SandboxClient:
    def __init__(self, base_url: str, ca_file: Path | str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.ca_file = str(ca_file) if ca_file else None
        if self.ca_file:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        else:  # an admin client of a local sandbox whose CA file it was not given
            self._context = ssl._create_unverified_context()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context)
        )
        self._no_redirect = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context), _NoRedirect
        )

    @property
    def api_url(self) -> str:
        return self.base_url + "/"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    @property
    def auth_url(self) -> str:
        return self.base_url + "/o/oauth2/auth"

    @property
    def revoke_url(self) -> str:
        return self.base_url + "/revoke"

    def consent(
        self,
        authorization_url: str,
        account: str,
        *,
        deny: bool = False,
        scopes: list[str] | None = None,
    ) -> str:
        """What a person does on Google's consent page: returns where Google redirects to."""
        extra = {"sandbox_account": account}
        if deny:
            extra["sandbox_decision"] = "deny"
        if scopes is not None:
            extra["sandbox_scopes"] = " ".join(scopes)
        url = authorization_url + ("&" if "?" in authorization_url else "?") + urlencode(extra)
        try:
            with self._no_redirect.open(url, timeout=30) as answer:
                raise RuntimeError(f"consent answered {answer.status}, not a redirect")
        except urllib.error.HTTPError as exc:
            if exc.code != 302:
                raise RuntimeError(f"consent refused: {exc.code} {exc.read().decode()}") from None
            return str(exc.headers["Location"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with self._opener.open(request, timeout=30) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else None

    def add_account(
        self,
        email: str,
        refresh_token: str,
        calendars: list[dict[str, Any]] | None = None,
        rotate_refresh_token: bool = False,
    ) -> None:
        self._call(
            "POST",
            "accounts",
            {
                "email": email,
                "refresh_token": refresh_token,
                "calendars": calendars,
                "rotate_refresh_token": rotate_refresh_token,
            },
        )

    def as_user(self, access_token: str) -> CalendarCaller:
        """Calendar v3 calls with this access token (see CalendarCaller)."""
        return CalendarCaller(self, access_token)

    def revoke(self, email: str) -> None:
        self._call("POST", f"accounts/{quote(email)}/revoke")

    def issue_access_token(self, email: str, lifetime_s: float | None = None) -> tuple[str, float]:
        answer = self._call(
            "POST", f"accounts/{quote(email)}/access-token", {"lifetime_s": lifetime_s}
        )
        return answer["access_token"], answer["expires_at"]

    def known_tokens(self) -> list[str]:
        """Every access and refresh token the sandbox ever issued."""
        return list(self._call("GET", "tokens")["issued"])

    def events(
        self, email: str, calendar_id: str, show_deleted: bool = False
    ) -> list[dict[str, Any]]:
        query = urlencode({"showDeleted": "true" if show_deleted else "false"})
        path = f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}/events?{query}"
        return list(self._call("GET", path)["items"])

    def delete_by_hand(self, email: str, calendar_id: str, event_id: str) -> None:
        self._call(
            "DELETE",
            f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}/events/{event_id}",
        )

    def edit_by_hand(
        self, email: str, calendar_id: str, event_id: str, **fields: Any
    ) -> dict[str, Any]:
        """A person changing the event in Google Calendar's UI."""
        answer: dict[str, Any] = self._call(
            "PATCH",
            f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}/events/{event_id}",
            fields,
        )
        return answer

    def plant_event(self, email: str, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """An event stored as given (an orphan of an old bug, a duplicate)."""
        answer: dict[str, Any] = self._call(
            "POST", f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}/events", event
        )
        return answer

    def set_access_role(self, email: str, calendar_id: str, role: str) -> None:
        self._call(
            "PATCH",
            f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}",
            {"access_role": role},
        )

    def share_calendar(
        self, owner: str, calendar_id: str, with_email: str, access_role: str = "writer"
    ) -> None:
        """The owner shares a calendar with another account (the same id and events for
        both; each with its own access role)."""
        self._call(
            "POST",
            f"accounts/{quote(owner)}/calendars/{quote(calendar_id, safe='')}/share",
            {"with": with_email, "access_role": access_role},
        )

    def remove_calendar(self, email: str, calendar_id: str) -> None:
        self._call("DELETE", f"accounts/{quote(email)}/calendars/{quote(calendar_id, safe='')}")

    def add_fault(self, status: int, count: int = 1, **match: Any) -> None:
        self._call("POST", "faults", {"status": status, "count": count, **match})

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def configure(self, **settings: Any) -> None:
        """latency_s (fixed) or latency_median_s and latency_p99_s (log-normal), latency_seed,
        batch_mode ("sequential" or "parallel"), quota_per_project_per_min,
        quota_per_account_per_min (None: no limit), rate_limit_status (403 or 429),
        token_lifetime_s, refresh_token_limit (refresh tokens an account keeps, Google's
        100; a new one voids the oldest), clients, deleted_event_update_status (403 or 410);
        sync tokens: sync_token_lifetime_s (None: until voided), filtered_sync_token
        ("given" or "withheld"), cancelled_in_list ("minimal" or "full"), max_page_items
        (None: pages fill up to maxResults); channels: channel_max_ttl_s,
        channel_expiration_json ("string" or "number"), notifications (a dict: see
        `configure_notifications`), allow_http_notifications (its allow_http),
        notification_seed."""
        self._call("POST", "config", settings)

    def configure_notifications(self, **faults: Any) -> None:
        """How push notifications are delivered from now on: drop_rate and duplicate_rate
        (0..1), delay_s plus up to delay_spread_s (late, possibly out of order),
        sequential_numbers (False: increasing with gaps, as Google's), retries and
        retry_backoff_s (resends after a 500/502/503/504; 0: none), timeout_s, allow_http
        (plain http:// to a loopback address)."""
        self.configure(notifications=faults)

    # --- sync tokens and push channels ------------------------------------------------------

    def void_sync_tokens(self, email: str, calendar_id: str | None = None) -> int:
        """Google invalidating sync tokens: every token issued so far for the account's
        calendars (or one of them) answers 410 fullSyncRequired. Returns how many calendars."""
        path = f"accounts/{quote(email)}"
        if calendar_id is not None:
            path += f"/calendars/{quote(calendar_id, safe='')}"
        return int(self._call("POST", f"{path}/sync-tokens/void")["calendars"])

    def channels(self, account: str | None = None) -> list[dict[str, Any]]:
        """Every channel made (of one account): id, resourceId, resourceUri, address,
        account, calendar_id, expiration (ms), status ("active", "stopped", "expired"),
        last_number and counts (sync and exists: messages meant; sent, delivered, failed,
        dropped, duplicated, retried, suppressed)."""
        query = f"?{urlencode({'account': account})}" if account is not None else ""
        return list(self._call("GET", f"channels{query}")["channels"])

    def channel(self, channel_id: str) -> dict[str, Any]:
        found = [c for c in self.channels() if c["id"] == channel_id]
        if not found:
            raise KeyError(channel_id)
        return found[0]

    def expire_channel(self, channel_id: str) -> dict[str, Any]:
        """The channel's expiration is now: nothing more is sent on it."""
        answer: dict[str, Any] = self._call("POST", f"channels/{quote(channel_id, safe='')}/expire")
        return answer

    def receiver_certificate(
        self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> tuple[str, str]:
        """A server certificate (chain PEM, key PEM) from the sandbox's CA, the only CA it
        trusts when it delivers a push notification over HTTPS."""
        answer = self._call("POST", "certificates", {"hosts": list(hosts)})
        return str(answer["cert_pem"]), str(answer["key_pem"])

    def config(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "config")
        return answer

    def set_batch_mode(self, mode: str) -> None:
        """ "sequential": a batch's calls one after another (as slow as all of them added up);
        "parallel": side by side (as slow as the slowest)."""
        self.configure(batch_mode=mode)

    def set_latency(
        self, median_s: float, p99_s: float | None = None, seed: int | None = None
    ) -> None:
        """Each call's time at Google: log-normal with this median and 99th percentile, or
        exactly `median_s` when `p99_s` is None."""
        settings: dict[str, Any] = {"latency_median_s": median_s, "latency_p99_s": p99_s}
        if seed is not None:
            settings["latency_seed"] = seed
        self.configure(**settings)

    def calls(self, since: float = 0.0, detail: bool = False) -> Any:
        query = urlencode({"since": since, "detail": "true" if detail else "false"})
        return self._call("GET", f"calls?{query}")

    def quota(self) -> dict[str, Any]:
        """Per account (and "*project*"): calls, refused, max_per_minute, span_s."""
        answer: dict[str, Any] = self._call("GET", "quota")
        return answer

    def reset_quota(self) -> None:
        self._call("DELETE", "quota")

    def reset(self) -> None:
        self._call("POST", "reset")
