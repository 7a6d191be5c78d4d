"""Interactive API docs at /docs, served from the swagger-ui-bundle package (no CDN)."""

from flask import Blueprint, render_template, send_from_directory
from flask.typing import ResponseReturnValue
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint("docs", __name__)


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    return render_template("docs.html")


@bp.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> ResponseReturnValue:
    return send_from_directory(swagger_ui_path, filename)
