"""What can be checked of the production deployment without Docker: the compose file and the
Dockerfile only use settings and commands that exist; static membership works."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import yaml

from consumer.entrypoints.cli import build_parser
from consumer.settings import Settings
from tests.plugins.environment import ROOT, Env, wait_until
from tests.plugins.events import booking_event

SETTING_NAMES = {f"CALSYNC_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_every_calsync_variable_in_compose_is_a_real_setting() -> None:
    services = compose()["services"]
    used: set[str] = set()
    for service in services.values():
        environment = service.get("environment") or {}
        names = (
            environment
            if isinstance(environment, dict)
            else [item.split("=", 1)[0] for item in environment]
        )
        used |= {name for name in names if name.startswith("CALSYNC_")}
    assert used, "the compose file configures no CALSYNC_* setting"
    assert used <= SETTING_NAMES, f"not settings: {sorted(used - SETTING_NAMES)}"
    # The required secrets are asked for, not defaulted.
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("CALSYNC_GOOGLE_CLIENT_SECRET", "CALSYNC_TOKEN_KEY", "CALSYNC_ADMIN_TOKEN"):
        assert re.search(rf"{secret}: \$\{{{secret}:\?", text), secret


def test_the_image_commands_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    default = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["calsync"] and "calsync" in scripts
    parser = build_parser()
    commands = [default] + [
        service["command"]
        for service in compose()["services"].values()
        if service.get("build") == "."
    ]
    assert len(commands) >= 4  # migrate, consume, serve, and the image's default
    for command in commands:
        parser.parse_args(command)  # exits (fails the test) on an unknown command


async def test_a_consumer_with_a_static_instance_id_syncs(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    async with env.consumer(instance_id=f"{env.name}-0"):
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: len(env.events(email)) == 1, what="the event")
        await wait_until(env.all_committed, what="offsets committed")
