"""JSON API v1 for integrations: /api/v1."""

from flask import Blueprint, request

from leadcrm.database import begin_write
from leadcrm.extensions import db

bp = Blueprint("api", __name__)


@bp.before_request
def start_write_transaction() -> None:
    # Requests that change data take the write lock before their first read.
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        begin_write(db.session)


from leadcrm.api import views  # noqa: E402,F401  (registers the routes)
