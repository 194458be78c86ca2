"""Rendering: Jinja2 templates and static files shipped inside the package (package data),
so `calsync serve` serves everything a page needs: no CDN, no external asset."""

from __future__ import annotations

from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from consumer.entrypoints.web import views

STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("consumer.entrypoints.web", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ago=views.ago,
        utc=views.utc,
        duration=views.duration,
        state_label=views.state_label,
        state_help=views.state_help,
    )
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)


@cache
def static_files() -> dict[str, tuple[bytes, str]]:
    """Name -> (content, media type) of every file in the package's static folder."""
    folder = resources.files("consumer.entrypoints.web") / "static"
    answer = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in STATIC_TYPES:
            answer[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return answer
