"""The README's settings table is the settings' own: written from their descriptions by
`make docs`; this fails when someone changed one and not the other."""

from __future__ import annotations

from calsync_dev.docs import README, readme_with_table, settings_table
from consumer.settings import Settings, env_name


def test_the_readme_settings_table_is_written_from_the_settings() -> None:
    readme = README.read_text()
    assert readme_with_table(readme) == readme, "the README's settings table is stale: make docs"


def test_every_setting_has_a_row_and_says_what_it_is() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{env_name(name)}` |" in table
