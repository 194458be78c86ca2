"""The README's settings table, written from the settings' own descriptions (`make docs`,
`calsync-dev docs --write`); tests/unit/test_settings_docs.py fails when the two differ.

Each field of `consumer.settings.Settings` gives its row: the variable, its default (as the
environment would say it: `none` for unset, `empty` for an empty text; or the field's
`readme_default` where the default is worked out elsewhere: "system CAs", "the database's
own"), and its description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from consumer.settings import Settings, env_name, env_value

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings: written by `make docs` from consumer/settings.py; edit there -->"
END = "<!-- end of settings -->"


def shown_default(value: Any) -> str:
    """A default as the README shows it."""
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    text = env_value(value)
    return "empty" if text == "" else f"`{text}`"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = str(extra.get("readme_default") or shown_default(field.default))
        meaning = " ".join((field.description or "").split())
        rows.append(f"| `{env_name(name)}` | {default} | {meaning} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """The README with its settings table (between the markers) written afresh."""
    start, stop = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + settings_table() + "\n" + readme[stop:]


def write_readme(path: Path = README) -> bool:
    """Write the table into the README; True when it changed."""
    old = path.read_text()
    new = readme_with_table(old)
    if new != old:
        path.write_text(new)
    return new != old
