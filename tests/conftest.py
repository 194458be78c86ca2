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

import shutil
import tempfile

import pytest

pytest_plugins = [
    "tests.plugins.events",
    "tests.plugins.database",
    "tests.plugins.stack",
    "tests.plugins.environment",
    "tests.plugins.ops_http",
]


def pytest_configure(config: pytest.Config) -> None:
    """A session's temporary files in a directory of its own: pytest's shared
    /tmp/pytest-of-<user> numbering, with several sessions at once on a machine (engineers'
    runs beside CI's), let one session clean up another's embedded PostgreSQL data directory
    under it. xdist workers take theirs under the controller's."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="calsync-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()
