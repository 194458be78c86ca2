"""structlog set-up: JSON lines in production, pretty in a terminal, secrets never logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from datetime import datetime
from typing import Any

import structlog

from consumer.settings import Settings

_SECRET_KEYS = re.compile(
    r"token|secret|password|authorization|credential|verifier|^code$", re.IGNORECASE
)
# Google access tokens, refresh tokens and authorization codes; bearer headers; JWTs (the
# OpenID id_token); Fernet ciphertexts (stored tokens); `code=` in redirect URLs.
_SECRET_VALUES = re.compile(
    r"ya29\.[\w.-]+|1//[\w.-]+|4/0[\w.-]+|Bearer\s+[\w.-]+|eyJ[\w-]*\.[\w-]+\.[\w-]*"
    r"|gAAAAA[\w=-]{20,}|(?<=[?&]code=)[^&\s]+"
)
REDACTED = "[redacted]"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEYS.search(key)) and key not in _SAFE_KEYS


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop anything token-like, by key name or by shape, from every log line (nested
    values and rendered exceptions included)."""
    for key, value in list(event.items()):
        if key != "event" and _secret_key(key):
            event[key] = REDACTED
        else:
            event[key] = _redact_value(value)
    return event


_SAFE_KEYS = frozenset({"token_expires_at"})


def iso_datetimes(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, datetime):
            event[key] = value.isoformat()
    return event


_level = logging.NOTSET  # the level configure_logging set last (none yet: all lines kept)


def debug_enabled() -> bool:
    """Whether debug lines are kept: a hot path asks this before building one (a lazy
    logger's bind per call costs CPU even when the line is then dropped)."""
    return _level <= logging.DEBUG


def configure_logging(settings: Settings, stream: Any = None) -> None:
    global _level
    stream = stream or sys.stderr
    pretty = settings.log_format == "console" or (
        settings.log_format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelName(settings.log_level.upper())
    _level = level if isinstance(level, int) else logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            iso_datetimes,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            level if isinstance(level, int) else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their warnings, not their chatter.
    logging.basicConfig(stream=stream, level=logging.WARNING)
