"""The tests' shared builders and fixtures, as pytest plugins (tests/conftest.py lists them).

- `events`: the one booking-event builder;
- `database`: the one way to make a fresh database (empty, or copied from the migrated
  template);
- `stack`: the session's broker and PostgreSQL (embedded, or containers where Docker
  runs: CALSYNC_TEST_STACK) and the Google sandbox;
- `environment`: `Env`, one test's slice of the stack, and the helpers integration and
  end-to-end tests share (`calsync`, `wait_until`, the `env` fixture);
- `ops_http`: the consumer's /metrics and health checks as tests read them.

Test modules import what they need from these modules, never from `conftest`.
"""

import pytest

# Their assertions are rewritten like the tests' (conftest imports them before pytest_plugins
# would): registered here, before any of them is imported.
pytest.register_assert_rewrite(
    *(
        f"tests.plugins.{name}"
        for name in ("database", "environment", "events", "ops_http", "stack")
    ),
    "tests.oracle",
)
