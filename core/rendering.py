"""Jinja2 templates: ``NAME.subject``, ``NAME.txt`` and ``NAME.html``, rendered at enqueue.

Rendering in the producer means a missing variable is refused with ``InvalidEmail``
before anything is published, and the worker sends exactly what was validated.
"""

import re
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    UndefinedError,
    select_autoescape,
)

from emailq.config import get_settings
from emailq.core.errors import ConfigurationError, InvalidEmail

PACKAGED = Path(__file__).with_name("templates")  # the templates this project ships
UNDEFINED = re.compile(r"'(\w+)' is undefined")  # StrictUndefined's words for a missing name


@cache
def environment() -> Environment:
    """TEMPLATES_DIR first, then the packaged templates; HTML autoescaped; strict undefined."""
    own = get_settings().templates_dir
    if own is not None and not own.is_dir():
        raise ConfigurationError(f"TEMPLATES_DIR: {str(own)!r} is not a directory")
    dirs = [str(d) for d in (own, PACKAGED) if d]
    return Environment(
        loader=ChoiceLoader([FileSystemLoader(d) for d in dirs]),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,  # no stat() of three files per message; templates load once
    )


@cache
def _inliner() -> css_inline.CSSInliner:
    # Mail clients strip <style>; inlining keeps the look. No remote stylesheets fetched.
    return css_inline.CSSInliner(load_remote_stylesheets=False)


def _render(name: str, context: dict[str, Any], *, required: bool) -> str | None:
    try:
        return environment().get_template(name).render(context)
    except TemplateNotFound:
        if required:
            raise InvalidEmail(
                f"template: no {name} in TEMPLATES_DIR or the packaged templates"
            ) from None
        return None
    except UndefinedError as exc:
        template = name.rpartition(".")[0]
        if missing := UNDEFINED.fullmatch(exc.message or ""):
            raise InvalidEmail(
                f"context: template '{template}' needs the variable '{missing[1]}', "
                "which is missing"
            ) from None
        raise InvalidEmail(  # e.g. "'dict object' has no attribute 'name'", from user.name
            f"context: template '{template}' cannot render {name}: {exc.message}; "
            "add what it names to the context"
        ) from None
    except TemplateError as exc:
        raise InvalidEmail(f"template: {name} is broken: {exc}") from None


def render(template: str, context: Any) -> dict[str, str]:
    """Subject, text and/or HTML for ``template`` with ``context``."""
    if not isinstance(template, str) or not template.replace("_", "").replace("-", "").isalnum():
        raise InvalidEmail(f"template: {template!r} is not a template name")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidEmail("context: expected a dict of template variables")
    subject = _render(f"{template}.subject", context, required=True) or ""
    rendered = {"subject": " ".join(subject.split())}  # one line, whatever the template holds
    text = _render(f"{template}.txt", context, required=False)
    html = _render(f"{template}.html", context, required=False)
    if text is None and html is None:
        raise InvalidEmail(f"template: {template} has neither {template}.txt nor {template}.html")
    if text is not None:
        rendered["text"] = text
    if html is not None:
        rendered["html"] = _inliner().inline(html)
    return rendered
