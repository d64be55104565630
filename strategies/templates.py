"""Jinja2 prompt templates shared by strategies (not HTML, so no autoescaping; undefined names fail)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).parent / "templates"


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=False,  # prompts are plain text for the model; HTML output uses its own autoescaping env
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def load_template(name_or_text: str | None, default: str) -> jinja2.Template:
    """A bundled template by file name, an inline template string, or the default file."""
    if name_or_text is None:
        return _env().get_template(default)
    if name_or_text.endswith(".j2") and (TEMPLATE_DIR / name_or_text).is_file():
        return _env().get_template(name_or_text)
    if name_or_text.endswith(".j2") and Path(name_or_text).is_file():
        return _env().from_string(Path(name_or_text).read_text(encoding="utf-8"))
    return _env().from_string(name_or_text)


def check_template(value: str | None, default: str) -> str | None:
    """Pydantic validator body: ``value`` (a template param) must compile; one-line error if not."""
    if value is not None:
        try:
            load_template(value, default)
        except jinja2.TemplateError as exc:
            raise ValueError(f"template does not compile: {exc}") from None
    return value
