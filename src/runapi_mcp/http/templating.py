"""The HTML pages' templates (``http/templates/``), rendered by Jinja2 with autoescaping on.

Every ``{{ value }}`` in an ``.html`` template is HTML-escaped, in text and in (always quoted) attribute
values alike, so a field added to a page later is escaped without anyone having to remember it; a value
passes unescaped only as ``markupsafe.Markup``, which nothing here makes from user or upstream text. The
``.css`` and ``.js`` files are included as they are: they are static and take no values (the pages'
scripts read what they show from the page's own elements, as text). A value a template names but is not
given is an error (``StrictUndefined``), never an empty string.

Starlette's :class:`Jinja2Templates` holds the environment (``TemplateResponse`` for a route, :func:`render`
for a page as text). This is the one module that imports jinja2 (``tests/test_imports.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.templating import Jinja2Templates

templates = Jinja2Templates(
    env=Environment(
        loader=PackageLoader("runapi_mcp.http", "templates"),
        # Escaped unless a template is plain CSS or JavaScript (a template of any other kind is escaped too).
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("css", "js"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # the templates ship with the package: no stat() per page
    )
)


def render(name: str, context: Mapping[str, Any]) -> str:
    """The template ``name`` rendered with ``context``, as text."""
    return templates.get_template(name).render(context)
