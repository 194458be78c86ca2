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

_SECRET_KEYS = re.compile(r"token|secret|password|authorization|credential", re.IGNORECASE)
_SECRET_VALUES = re.compile(r"(ya29\.[\w.-]+|1//[\w.-]+|Bearer\s+[\w.-]+)")
REDACTED = "[redacted]"


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop anything token-like, by key name or by shape, from every log line."""
    for key, value in list(event.items()):
        if key != "event" and _SECRET_KEYS.search(key) and key not in _SAFE_KEYS:
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = _SECRET_VALUES.sub(REDACTED, value)
    return event


_SAFE_KEYS = frozenset({"token_expires_at"})


def iso_datetimes(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, datetime):
            event[key] = value.isoformat()
    return event


def configure_logging(settings: Settings, stream: Any = None) -> None:
    stream = stream or sys.stderr
    pretty = settings.log_format == "console" or (
        settings.log_format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    renderer: Any = (structlog.dev.ConsoleRenderer() if pretty
                     else structlog.processors.JSONRenderer())
    level = logging.getLevelName(settings.log_level.upper())
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
        wrapper_class=structlog.make_filtering_bound_logger(level if isinstance(level, int)
                                                            else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their warnings, not their chatter.
    logging.basicConfig(stream=stream, level=logging.WARNING)
