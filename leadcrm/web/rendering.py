"""Full pages for normal requests, just the asked-for block for htmx requests."""

from typing import Any

from flask import Response, make_response, render_template, request
from jinja2_fragments.flask import render_block


def is_htmx() -> bool:
    # A history restore wants the whole page back, not a fragment.
    return request.headers.get("HX-Request") == "true" and "HX-History-Restore-Request" not in request.headers


def render(template: str, block: str | None = None, status: int = 200, **context: Any) -> Response:
    """Render ``template``, or only its ``block`` when htmx asked; always ``Vary: HX-Request``."""
    if block is not None and is_htmx():
        html = render_block(template, block, **context)
    else:
        html = render_template(template, **context)
    response = make_response(html, status)
    response.vary.add("HX-Request")
    return response


def local_target(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site, else ``default``: no redirect leads elsewhere."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


def changed(response: Response, *events: str) -> Response:
    """Tell the page (live tables listen on body) what changed: an HX-Trigger header."""
    response.headers["HX-Trigger"] = ", ".join(events or ("contacts-changed",))
    return response
