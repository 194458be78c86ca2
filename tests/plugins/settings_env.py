"""The one Settings -> environment map (consumer.settings.settings_env), under the name the
tests have always used."""

from __future__ import annotations

from consumer.settings import ENV_PREFIX, env_name, env_value, settings_env

__all__ = ["ENV_PREFIX", "env_name", "env_value", "settings_env"]
