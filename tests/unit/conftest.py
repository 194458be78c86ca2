"""The unit tier's one rule, enforced: no server of any kind (broker, PostgreSQL, the Google
sandbox) and so no fixture that starts one. Fakes of our own ports are in tests/unit/fakes.py.
"""

from __future__ import annotations

import pytest

SERVER_FIXTURES = frozenset({"env", "postgres", "broker", "sandbox", "empty_database"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/unit/" not in str(item.path).replace("\\", "/"):
            continue
        used = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} is in the unit tier but uses {sorted(used)}: move it to "
                f"tests/integration (or use the fakes in tests/unit/fakes.py)")
