"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from consumer.logs import configure_logging
from consumer.settings import Settings


def test_token_like_values_and_keys_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    try:
        structlog.get_logger().warning(
            "something",
            refresh_token="1//abc",
            access_token="ya29.secret",
            cause="401 for Bearer ya29.other-secret",
            client_secret="s3cret",
            link_id="lnk_1",
            token_expires_at="2026-01-01T00:00:00Z",
            url="https://x/oauth/callback?state=abc&code=4/0AbCdEf-123&scope=openid",
            stored="gAAAAABpZ2xvYmFsLXN0b3JlZC10b2tlbi1jaXBoZXJ0ZXh0",
            answer={"id_token": "eyJhbGciOi.eyJzdWIiOiIx.sig", "nested": ["1//nested-refresh"]},
            code_verifier="pkce-verifier-value",
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue())
    text = stream.getvalue()
    for secret in (
        "1//abc",
        "ya29.secret",
        "ya29.other-secret",
        "s3cret",
        "4/0AbCdEf-123",
        "gAAAAABpZ2xvYmFsLXN0b3JlZC10b2tlbi1jaXBoZXJ0ZXh0",
        "eyJhbGciOi",
        "1//nested-refresh",
        "pkce-verifier-value",
    ):
        assert secret not in text
    assert line["link_id"] == "lnk_1"
    assert line["token_expires_at"] == "2026-01-01T00:00:00Z"
    assert line["cause"] == "401 for [redacted]"
    assert line["url"] == "https://x/oauth/callback?state=abc&code=[redacted]&scope=openid"
