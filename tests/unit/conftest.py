"""The unit tier's rules, enforced: no server of any kind (broker, PostgreSQL, the Google
sandbox), so no fixture that starts one; and no network (a connection to anything but this
machine's loopback is refused). Fakes of our own ports are in tests/unit/fakes.py.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

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
                f"tests/integration (or use the fakes in tests/unit/fakes.py)"
            )


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test that reaches past the loopback fails, saying where it tried to go."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse_remote(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            try:
                loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise OSError(f"the unit tier has no network: a connection to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        refuse_remote(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        refuse_remote(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
