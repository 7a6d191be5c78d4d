"""Interactive API docs at /docs: Swagger UI, vendored under static/ (no CDN)."""

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from leadcrm.auth import allow
from leadcrm.vocabulary import Role

bp = Blueprint("docs", __name__)
SWAGGER_UI = "vendor/swagger-ui-5.35.0"


@bp.get("/docs")
@allow(Role.SUPERVISOR)
def docs() -> ResponseReturnValue:
    return render_template("docs.html", swagger_ui=SWAGGER_UI)
