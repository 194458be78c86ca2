"""A real package: the wheel built from this checkout, installed into a fresh virtual
environment (no source tree on its path), migrates a fresh database; the dev tooling
(`calsync_dev`: the sandbox, the embedded stack, the demo) is not in it.

Offline: the wheel is built without build isolation (setuptools and wheel come from the
test's own environment), installed without its dependencies, and the fresh environment
finds those dependencies in the test environment's site-packages (a .pth line: a path
only, so no editable install of this project comes with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import psycopg
import pytest

from calsync_dev.stack import EmbeddedPostgres, start_postgres

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "consumer", "calsync_dev", "sql")  # all of it
TABLES = {
    "schema_migrations",
    "bookings",
    "calendar_links",
    "google_grants",
    "link_bookings",
    "sync_results",
    "dead_letters",
    "repairs",
    "backfills",
    "deployment",
    "quota_buckets",
    "consumer_members",
}


def _run(
    *command: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedPostgres:
    return start_postgres(tmp_path_factory.mktemp("postgres"))


def test_the_wheel_installs_and_migrates_a_fresh_database(
    tmp_path: Path, postgres: EmbeddedPostgres
) -> None:
    # Build from a copy, so that build/ and *.egg-info never land in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        dist,
        source,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("calendar_sync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("consumer/") for n in names), names[:10]
    assert not [n for n in names if n.startswith("calsync_dev")], "dev tooling in the wheel"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=tmp_path,
    )
    fresh_site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).stdout.strip()
    )
    (fresh_site / "calsync-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    installed = _run(python, "-c", "import consumer; print(consumer.__file__)", cwd=tmp_path)
    assert installed.stdout.strip().startswith(str(fresh_site)), installed.stdout
    no_dev = subprocess.run(
        [python, "-c", "import calsync_dev"], cwd=tmp_path, capture_output=True, text=True
    )
    assert no_dev.returncode != 0 and "No module named 'calsync_dev'" in no_dev.stderr
    commands = _run(env_dir / "bin" / "calsync", "--help", cwd=tmp_path).stdout
    assert "consume" in commands and "sandbox" not in commands and "demo" not in commands

    url = postgres.create_database("wheel_" + os.urandom(4).hex())
    migrations = sorted(path.name for path in (ROOT / "sql").glob("*.sql"))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CALSYNC_", "PYTHON"))
    }
    env["CALSYNC_DATABASE_URL"] = url
    migrated = _run(env_dir / "bin" / "calsync", "migrate", cwd=tmp_path, env=env)
    assert f"applied {len(migrations)} migration(s)" in migrated.stdout, migrated.stdout

    with psycopg.connect(url) as conn:
        tables = {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        applied = [
            row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        ]
    assert TABLES <= tables, tables
    assert applied == migrations

    again = _run(env_dir / "bin" / "calsync", "migrate", cwd=tmp_path, env=env)
    assert "applied 0 migration(s)" in again.stdout
