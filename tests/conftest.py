"""The suite's plugins.

Shared builders and fixtures live in pytest plugins (tests/plugins/): the session's stack
(`postgres`, `broker`, `sandbox`: embedded, or containers where Docker runs), `Env` and its
`env` fixture, the one booking-event builder, the one settings -> environment map, the one
way to make a fresh database. Test modules import from those modules, never from here.

The tiers: tests/unit (no server of any kind, seconds), tests/integration (the real broker,
PostgreSQL and the Google sandbox), tests/e2e (whole processes: the CLI, `calsync consume`
and `calsync serve`, the pages in a browser, the deployment files).
"""

from __future__ import annotations

pytest_plugins = [
    "tests.plugins.events",
    "tests.plugins.database",
    "tests.plugins.stack",
    "tests.plugins.environment",
    "tests.plugins.ops_http",
]
