"""The one way to make a fresh database: empty, or a copy of the migrated template (one
`CREATE DATABASE ... TEMPLATE`, far quicker than migrating each test's database)."""

from __future__ import annotations

import uuid
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from consumer.adapters.postgres.migrations import migrate

TEMPLATE_DB = "calsync_template"


class DatabaseServer(Protocol):
    """A PostgreSQL server the tests may create databases on (embedded or a container)."""

    @property
    def uri(self) -> str: ...

    def uri_for(self, database: str) -> str: ...


def fresh_database(server: DatabaseServer | str, name: str, template: str | None = None
                   ) -> str:
    """Create database `name` (empty, or copied from `template`) on `server` (a server, or
    the URL of any database on it); returns its URL. Harmless when it exists."""
    admin = server if isinstance(server, str) else server.uri
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        if not exists:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(statement)
    if isinstance(server, str):
        return _with_database(server, name)
    return server.uri_for(name)


def migrated_template(server: DatabaseServer) -> str:
    """The template every test's database is copied from, migrated once per session."""
    url = fresh_database(server, TEMPLATE_DB)
    migrate(url)
    return url


def _with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def empty_database(postgres: DatabaseServer) -> str:
    """The URL of a fresh, empty (unmigrated) database of the test's own."""
    return fresh_database(postgres, "e" + uuid.uuid4().hex[:12])
