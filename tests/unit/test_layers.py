"""The house's import rules: the contracts in pyproject.toml's `[tool.importlinter]`
(imports point down through the layers; `consumer` never imports `calsync_dev`; the domain
does no I/O; settings and logs import no layer; no import cycles), checked by import-linter
here as `make lint` does, and each layer's `__init__` saying what lives there."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    done = subprocess.run(
        [Path(sys.executable).parent / "lint-imports", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout, done.stdout[-2000:]


def test_every_layer_says_what_lives_there_and_what_it_may_import() -> None:
    for package in ("domain", "adapters", "service", "entrypoints"):
        init = ROOT / "consumer" / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"consumer/{package}/__init__.py needs its docstring"
