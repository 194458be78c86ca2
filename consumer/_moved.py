"""Moved modules, for code written against the flat layout.

Until issue 15 `consumer/` was one flat folder (`consumer.core`, `consumer.sync`,
`consumer.sandbox`, ...). The modules now live in layers (`domain`, `adapters`, `service`,
`entrypoints`, `bootstrap`) and the dev tooling in `calsync_dev`. This table maps every old
dotted name to where the module went, and `MovedModuleFinder` (installed by
`consumer/__init__.py`) answers `import consumer.<old>` with the *same module object* as the
new path: `consumer.sync is consumer.service.sync`, so a monkeypatch through either name is
seen through the other. Old package names cover their submodules too
(`consumer.sandbox.state` is `calsync_dev.sandbox.state`).

A few old modules were split in two (the pure half went down a layer, or the wiring half up
to `bootstrap`). Their old name is a small re-exporting module (`_Reexport`): attribute reads
go to whichever new module holds the name, writes (a monkeypatch) go to that module too. Those
are `consumer.app`, `consumer.db`, `consumer.errors`, `consumer.links`,
`consumer.operations`, `consumer.reconcile` and `consumer.sync_store` (see `SPLIT`).

`python -m consumer.cli` works through the finder as well: the loader hands `runpy` the code
of `consumer/entrypoints/cli.py`. New code imports the new paths; nothing in `consumer` or
`calsync_dev` imports an old one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

# Old dotted name -> the module it became (the same object).
MOVED: dict[str, str] = {
    "consumer.core": "consumer.domain.planning",
    "consumer.models": "consumer.domain.models",
    "consumer.messages": "consumer.domain.messages",
    "consumer.offsets": "consumer.domain.offsets",
    "consumer.refusals": "consumer.domain.refusals",
    "consumer.link_store": "consumer.adapters.postgres.link_store",
    "consumer.members": "consumer.adapters.postgres.members",
    "consumer.link_watcher": "consumer.adapters.postgres.link_watcher",
    "consumer.quota": "consumer.adapters.postgres.quota",
    "consumer.kafka": "consumer.adapters.kafka",
    "consumer.google_calendar": "consumer.adapters.google.calendar",
    "consumer.google_batch": "consumer.adapters.google.batch",
    "consumer.concurrency": "consumer.adapters.google.concurrency",
    "consumer.tokens": "consumer.adapters.google.tokens",
    "consumer.oauth": "consumer.adapters.google.oauth",
    "consumer.crypto": "consumer.adapters.crypto",
    "consumer.batching": "consumer.adapters.batching",
    "consumer.metrics": "consumer.adapters.metrics",
    "consumer.sync": "consumer.service.sync",
    "consumer.runner": "consumer.service.runner",
    "consumer.repairs": "consumer.service.repairs",
    "consumer.status": "consumer.service.status",
    "consumer.progress": "consumer.service.progress",
    "consumer.cli": "consumer.entrypoints.cli",
    "consumer.cli_ops": "consumer.entrypoints.cli_ops",
    "consumer.http_api": "consumer.entrypoints.http_api",
    "consumer.ops_http": "consumer.entrypoints.ops_http",
    "consumer.schema": "consumer.entrypoints.schema",
    # Packages: their submodules follow (consumer.web.pages -> consumer.entrypoints.web.pages).
    "consumer.web": "consumer.entrypoints.web",
    "consumer.sandbox": "calsync_dev.sandbox",
    "consumer.stack": "calsync_dev.stack",
    "consumer.demo": "calsync_dev.demo",
}

# Old modules split in two or more: the old name re-exports the parts, first match wins.
# "module:a,b" takes only those names from the module.
SPLIT: dict[str, tuple[str, ...]] = {
    "consumer.app": ("consumer.bootstrap", "consumer.entrypoints.worker"),
    "consumer.db": (
        "consumer.adapters.postgres.repository",
        "consumer.adapters.postgres.migrations",
    ),
    "consumer.errors": ("consumer.domain.errors", "consumer.adapters.classify"),
    "consumer.reconcile": ("consumer.service.reconcile", "consumer.domain.drift"),
    "consumer.sync_store": (
        "consumer.adapters.postgres.sync_store",
        "consumer.adapters.postgres.locks",
    ),
    "consumer.links": ("consumer.bootstrap:link_service,services", "consumer.service.links"),
    "consumer.operations": ("consumer.bootstrap:resync,services", "consumer.service.operations"),
}


def new_name(old: str) -> str | None:
    """Where the module once called `old` lives now (None: it did not move, or it was split)."""
    if old in MOVED:
        return MOVED[old]
    package, _, rest = old.rpartition(".")
    while package:
        if package in MOVED:
            return f"{MOVED[package]}.{old[len(package) + 1 :]}"
        package, _, more = package.rpartition(".")
        rest = f"{more}.{rest}"
    return None


class _Reexport(ModuleType):
    """The old name of a split module: reads and writes go to the part that holds a name."""

    def __init__(self, name: str, parts: Sequence[str]) -> None:
        super().__init__(name, f"{name} (moved): re-exports {', '.join(parts)}")
        object.__setattr__(self, "_parts", tuple(part.partition(":") for part in parts))

    def _owner(self, attr: str) -> ModuleType | None:
        for module_name, _, only in object.__getattribute__(self, "_parts"):
            if only and attr not in only.split(","):
                continue
            module = importlib.import_module(module_name)
            if hasattr(module, attr):
                return module
        return None

    def __getattr__(self, attr: str) -> Any:
        owner = self._owner(attr)
        if owner is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        return getattr(owner, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        owner = None if attr.startswith("__") else self._owner(attr)
        if owner is None:
            object.__setattr__(self, attr, value)
        else:
            setattr(owner, attr, value)

    def __delattr__(self, attr: str) -> None:
        owner = self._owner(attr)
        if owner is None:
            object.__delattr__(self, attr)
        else:
            delattr(owner, attr)

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for module_name, _, only in object.__getattribute__(self, "_parts"):
            module = importlib.import_module(module_name)
            names |= set(only.split(",")) if only else set(dir(module))
        return sorted(names)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str | None, parts: Sequence[str] = ()) -> None:
        self.target = target
        self.parts = parts

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.target is None:
            return _Reexport(spec.name, self.parts)
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system set the alias spec on the module: give it back its own.
        if self.target is not None:
            module.__spec__ = self._own_spec

    def get_code(self, fullname: str) -> CodeType | None:
        """For `python -m consumer.<old>`: runpy runs the new module's code as __main__."""
        name = self.target or self.parts[0].partition(":")[0]
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec else None
        if not isinstance(loader, importlib.abc.InspectLoader):
            return None
        return loader.get_code(name)

    def is_package(self, fullname: str) -> bool:
        return False


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers the flat layout's module names with the modules they became."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("consumer."):
            return None
        if fullname in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None, SPLIT[fullname]))
        moved = new_name(fullname)
        if moved is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(moved))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
