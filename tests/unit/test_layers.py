"""Imports point down: entrypoints > bootstrap > service > adapters > domain.

A small AST walk over every module of `consumer` and `calsync_dev` (imports inside functions
and under TYPE_CHECKING count too). `consumer.settings` and `consumer.logs` are importable by
every layer; `calsync_dev` may import `consumer`, never the reverse, except the CLI's lazy
imports in its `sandbox` and `demo` commands. The domain imports no I/O library. Nothing
imports a module by its old flat name (those are for code outside, see consumer/_moved.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from consumer._moved import MOVED, SPLIT

ROOT = Path(__file__).resolve().parents[2]

# Rank of each layer: a module may import its own layer and those of a lower rank.
LAYERS = {
    "consumer.domain": 0,
    "consumer.adapters": 1,
    "consumer.service": 2,
    "consumer.bootstrap": 3,
    "consumer.entrypoints": 4,
    "consumer.__main__": 4,
}
# Importable by every layer; they import only each other.
SHARED = ("consumer.settings", "consumer.logs")
# The package's own plumbing: imports nothing of the layers.
PLUMBING = ("consumer", "consumer._moved")
# Libraries that do I/O: never in the domain.
IO_LIBRARIES = (
    "psycopg",
    "psycopg_pool",
    "aiokafka",
    "aiohttp",
    "google",
    "googleapiclient",
    "google_auth_oauthlib",
    "google_auth_httplib2",
    "httplib2",
    "requests",
    "prometheus_client",
    "socket",
    "asyncio",
    "subprocess",
    "urllib.request",
)
# The explicit exceptions, (module, function) -> what that function may import lazily:
# the CLI's dev commands run the dev tooling; LinkError.status (for code written when a
# LinkError carried its HTTP status) asks the edge, which alone maps a kind to a status.
EXCEPTIONS = {
    ("consumer.entrypoints.cli", "_cmd_sandbox"): "calsync_dev.sandbox.server",
    ("consumer.entrypoints.cli", "_cmd_demo"): "calsync_dev.demo",
    ("consumer.domain.errors", "status"): "consumer.entrypoints.problems",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ("consumer", "calsync_dev"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, enclosing function or None, line) for every import statement."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append((base, function, child.lineno))
                # `from consumer import x` imports the module consumer.x
                found.extend(
                    (f"{base}.{alias.name}", function, child.lineno) for alias in child.names
                )
            visit(child, function)

    visit(tree, None)
    return found


def _layer(name: str) -> str | None:
    for layer in LAYERS:
        if name == layer or name.startswith(layer + "."):
            return layer
    return None


def _violation(module: str, imported: str, function: str | None, known: set[str]) -> str | None:
    if (
        imported in MOVED
        or imported in SPLIT
        or any(imported.startswith(old + ".") for old in MOVED)
    ):
        return "imports a module by its old flat name"
    if module.startswith("calsync_dev"):
        return None  # dev tooling may use any layer of the runtime package
    allowed = EXCEPTIONS.get((module, function or ""))
    if allowed is not None and (imported == allowed or imported.startswith(allowed + ".")):
        return None
    if imported == "calsync_dev" or imported.startswith("calsync_dev."):
        return "imports the dev tooling"
    if module.startswith("consumer.domain") and (
        imported.split(".")[0] in IO_LIBRARIES or imported in IO_LIBRARIES
    ):
        return "the domain does no I/O"
    if not (imported == "consumer" or imported.startswith("consumer.")):
        return None
    if imported not in known:  # `from consumer.x import Name`: Name is not a module
        return None
    if module in PLUMBING:
        return None if imported in PLUMBING else "package plumbing imports a layer"
    if imported in SHARED or imported in PLUMBING:
        return None
    if module in SHARED:
        return "settings and logs import nothing of the layers"
    mine, theirs = _layer(module), _layer(imported)
    assert mine is not None, f"{module} is in no layer: add it to LAYERS"
    assert theirs is not None, f"{imported} is in no layer"
    if LAYERS[theirs] > LAYERS[mine]:
        return f"{mine} may not import {theirs}"
    return None


def test_imports_point_down() -> None:
    modules = _modules()
    known = set(modules)
    violations = [
        f"{modules[module].relative_to(ROOT)}:{line}: {module} imports {imported}: {why}"
        for module, path in modules.items()
        for imported, function, line in _imports(module, path)
        if (why := _violation(module, imported, function, known))
    ]
    assert violations == [], "\n".join(violations)


def test_every_layer_says_what_lives_there_and_what_it_may_import() -> None:
    for package in ("domain", "adapters", "service", "entrypoints"):
        init = ROOT / "consumer" / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"consumer/{package}/__init__.py needs its docstring"


def test_the_check_sees_a_wrong_way_import() -> None:
    known = {
        "consumer.bootstrap",
        "consumer.service.sync",
        "consumer.adapters.kafka",
        "consumer.domain.models",
    }
    assert _violation("consumer.service.links", "consumer.bootstrap", None, known)
    assert _violation("consumer.domain.models", "consumer.adapters.kafka", None, known)
    assert _violation("consumer.domain.models", "psycopg", None, known)
    assert _violation("consumer.adapters.kafka", "consumer.service.sync", None, known)
    assert _violation("consumer.service.sync", "calsync_dev.stack", "f", known)
    assert _violation("consumer.service.sync", "consumer.core", None, known)
    assert not _violation("consumer.entrypoints.cli", "calsync_dev.demo", "_cmd_demo", known)
    assert _violation("consumer.entrypoints.cli", "calsync_dev.stack", "_cmd_demo", known)
    assert _violation("consumer.entrypoints.cli", "calsync_dev.demo", None, known)
    assert not _violation("consumer.service.sync", "consumer.domain.models", None, known)


def test_the_flat_layouts_names_are_the_moved_modules_themselves() -> None:
    import importlib

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    import consumer.sandbox.state
    import consumer.sync
    import consumer.web.views
    from calsync_dev.sandbox import state
    from consumer.entrypoints.web import views
    from consumer.service import sync

    assert (consumer.sync, consumer.sandbox.state, consumer.web.views) == (sync, state, views)
    assert consumer.sync.__spec__ is not None and consumer.sync.__spec__.name == sync.__name__


def test_a_split_modules_old_name_reads_and_writes_through_to_its_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import consumer.db
    import consumer.links
    from consumer import bootstrap
    from consumer.adapters.postgres import migrations, repository
    from consumer.service import links

    assert consumer.db.Repository is repository.Repository
    assert consumer.db.migrate is migrations.migrate
    assert consumer.links.LinkService is links.LinkService
    assert consumer.links.link_service is bootstrap.link_service
    monkeypatch.setattr(consumer.db, "migrate", "patched")
    assert migrations.migrate == "patched"
    with pytest.raises(AttributeError):
        consumer.db.no_such_name  # noqa: B018


def test_python_m_with_an_old_name_runs_the_moved_module() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "usage: calsync" in done.stdout, done.stderr
