"""Full pages for normal requests, just the asked-for block for htmx requests."""

import unicodedata
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from flask import Response, make_response, render_template, request
from jinja2_fragments.flask import render_block, render_blocks
from werkzeug.wrappers import Response as BaseResponse


def is_htmx() -> bool:
    # A history restore wants the whole page back, not a fragment.
    return request.headers.get("HX-Request") == "true" and "HX-History-Restore-Request" not in request.headers


def render(template: str, block: str | list[str] | None = None, status: int = 200, **context: Any) -> Response:
    """Render ``template``, or only its ``block`` (or blocks, one after the other) when htmx asked;
    always ``Vary: HX-Request``."""
    if isinstance(block, list) and is_htmx():
        html = render_blocks(template, block, **context)
    elif isinstance(block, str) and is_htmx():
        html = render_block(template, block, **context)
    else:
        html = render_template(template, **context)
    response = make_response(html, status)
    response.vary.add("HX-Request")
    return response


# Longer than any path of ours with its filters; a longer target is not one of ours.
TARGET_MAX = 2000


def _has_unsafe_character(text: str) -> bool:
    # Browsers drop tabs and newlines from a Location and read a backslash as a
    # slash; other whitespace and invisible characters have no place in our paths.
    return any(char == "\\" or char.isspace() or unicodedata.category(char)[0] in "CZ" for char in text)


def local_target(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site, rebuilt from its parsed parts; else ``default``.

    No redirect leads elsewhere: the target must parse as a path only (no
    scheme, no host), start with one slash, and hold no whitespace, control
    character or backslash (nor may its path once percent-decoded). The answer is rebuilt
    from the parsed path and query, so what the browser gets is what was checked.
    """
    if not target or len(target) > TARGET_MAX or _has_unsafe_character(target):
        return default
    try:
        parts = urlsplit(target)
    except ValueError:
        return default
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//"):
        return default
    if _has_unsafe_character(path):
        return default
    return urlunsplit(("", "", parts.path, parts.query, ""))


# A rendered page (flask.Response) or a redirect (werkzeug's Response).
R = TypeVar("R", bound=BaseResponse)


def changed(response: R, *events: str) -> R:
    """Tell the page (live tables listen on body) what changed: an HX-Trigger header."""
    response.headers["HX-Trigger"] = ", ".join(events or ("contacts-changed",))
    return response
