"""The one Settings -> environment map: what a process we start (`calsync consume`, `calsync
serve`, a CLI command) must be given to run with a test's settings."""

from __future__ import annotations

import json
from collections.abc import Iterable

from pydantic import SecretStr

from consumer.settings import Settings

ENV_PREFIX = str(Settings.model_config.get("env_prefix", "CALSYNC_"))


def env_name(field: str) -> str:
    """`retry_budget_s` -> `CALSYNC_RETRY_BUDGET_S`."""
    if field not in Settings.model_fields:
        raise KeyError(f"no setting {field!r}")
    return ENV_PREFIX + field.upper()


def env_value(value: object) -> str:
    """A setting's value as pydantic-settings reads it back from the environment."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict | tuple | set):
        return json.dumps(sorted(value) if isinstance(value, set) else value)
    return str(value)


def settings_env(settings: Settings, fields: Iterable[str] | None = None) -> dict[str, str]:
    """`CALSYNC_*` variables for `fields` (default: every setting) of `settings`; a setting
    that is None is left out (the process takes its default, which is None)."""
    names = Settings.model_fields if fields is None else fields
    answer = {}
    for field in names:
        value = getattr(settings, field)
        if value is not None:
            answer[env_name(field)] = env_value(value)
    return answer
