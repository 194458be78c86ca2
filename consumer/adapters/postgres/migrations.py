"""Migrations: the numbered `sql/*.sql` files, applied once each, in order, by one migrator
at a time. The files are read with importlib.resources, so an installed wheel migrates as well
as a source checkout."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

import psycopg

# The numbered migrations: the project's top-level `sql/`, reached from this package through
# the `sql` symlink beside this module, and shipped in the wheel as package data.
SQL_DIR: Traversable = resources.files("consumer.adapters.postgres") / "sql"
_MIGRATION_LOCK = 7_361_211  # pg_advisory_lock key: one migrator at a time


def migrate(database_url: str, sql_dir: Traversable = SQL_DIR) -> list[str]:
    """Apply the numbered `sql/*.sql` files not applied yet, each in its own transaction."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in _migrations(sql_dir):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8").encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,)
                    )
                applied.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def pending_migrations(database_url: str, sql_dir: Traversable = SQL_DIR) -> list[str]:
    """Migrations in sql/ that the database has not applied."""
    wanted = [path.name for path in _migrations(sql_dir)]
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if not exists or exists[0] is None:
            return wanted
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [name for name in wanted if name not in done]


def _migrations(sql_dir: Traversable) -> list[Traversable]:
    return sorted(
        (entry for entry in sql_dir.iterdir() if entry.is_file() and entry.name.endswith(".sql")),
        key=lambda e: e.name,
    )
