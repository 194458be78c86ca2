"""Fresh databases for the tests, made the one way (calsync_dev.stack.fresh_database): empty,
or a copy of the migrated template (one `CREATE DATABASE ... TEMPLATE`, far quicker than
migrating each test's database)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from calsync_dev.stack import DatabaseServer, fresh_database
from consumer.adapters.postgres.migrations import migrate

TEMPLATE_DB = "calsync_template"


def migrated_template(server: DatabaseServer) -> str:
    """The template every test's database is copied from, migrated once per session."""
    url = fresh_database(server, TEMPLATE_DB)
    migrate(url)
    return url


def copy_of_template(server: DatabaseServer, name: str) -> str:
    """A test's database: a copy of the migrated template, given a deployment id of its own
    as `calsync migrate` would have made for it (a copy keeps its original's, and every
    test's database would otherwise be one deployment)."""
    url = fresh_database(server, name, template=TEMPLATE_DB)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE deployment SET id = gen_random_uuid()::text")
    return url


@pytest.fixture
def empty_database(postgres: DatabaseServer) -> str:
    """The URL of a fresh, empty (unmigrated) database of the test's own."""
    return fresh_database(postgres, "e" + uuid.uuid4().hex[:12])
